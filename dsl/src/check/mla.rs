//! Checks of multi-head latent attention (DeepSeek-V2/V3): the latent sizes, the split of each
//! query/key head into its no-RoPE and RoPE parts, and the options latent attention does not take.

use super::Checker;
use crate::ir::{Layer, Position};

impl Checker {
    /// The latent attention of layer `l`, if it has one.
    pub(super) fn mla(&mut self, l: &Layer) {
        let a = &l.attention;
        let Some(m) = &a.mla else { return };
        let i = Some(l.index);
        for (field, size) in [
            ("attention.mla.kv_rank", m.kv_rank),
            ("attention.mla.nope_dim", m.nope_dim),
            ("attention.mla.rope_dim", m.rope_dim),
            ("attention.mla.v_dim", m.v_dim),
        ] {
            if size == 0 {
                self.push(
                    field,
                    i,
                    format!(
                        "`{}` must be positive, found 0",
                        &field["attention.mla.".len()..]
                    ),
                    Some("DeepSeek-V3: kv_rank 512, nope_dim 128, rope_dim 64, v_dim 128".into()),
                );
            }
        }
        if m.q_rank == Some(0) {
            self.push(
                "attention.mla.q_rank",
                i,
                "`q_rank` must be positive, found 0".into(),
                Some("leave `q_rank` out for a direct query projection (DeepSeek-V2-Lite)".into()),
            );
        }
        if m.rope_dim % 2 != 0 {
            self.push(
                "attention.mla.rope_dim",
                i,
                format!("the rotary part of each head ({} dims) is odd", m.rope_dim),
                Some("RoPE rotates dimensions in pairs: make `rope_dim` even".into()),
            );
        }
        self.norm("attention.mla.norm", i, &m.norm);
        let qk = m.nope_dim.saturating_add(m.rope_dim);
        if a.head_dim != qk {
            self.push(
                "attention.head_dim",
                i,
                format!(
                    "head_dim ({}) must be latent attention's query/key width nope_dim + rope_dim = {qk}",
                    a.head_dim
                ),
                Some("leave `head_dim` out with `mla(...)`".into()),
            );
        }
        if a.kv_heads != a.heads {
            self.push(
                "attention.kv_heads",
                i,
                format!(
                    "latent attention expands its latent into one key and value per query head: kv_heads ({}) must equal heads ({})",
                    a.kv_heads, a.heads
                ),
                Some("leave `kv_heads` out with `mla(...)`".into()),
            );
        }
        match &l.position {
            Position::Rope(r) if r.rotary_dims != m.rope_dim => self.push(
                "position.rotary_dims",
                i,
                format!(
                    "latent attention rotates all {} dims of its rotary part, but rotary_dims is {}",
                    m.rope_dim, r.rotary_dims
                ),
                Some("leave `fraction` and `rotary_dims` out of `rope(...)` with `mla(...)`".into()),
            ),
            Position::Rope(_) => {}
            other => self.push(
                "position",
                i,
                format!(
                    "latent attention needs RoPE for its rotary key, found `{}`",
                    match other {
                        Position::None => "none",
                        Position::Learned => "learned",
                        _ => "alibi",
                    }
                ),
                Some("write `position rope(...)`".into()),
            ),
        }
        let unsupported = [
            ("attention.qk_norm", a.qk_norm.is_some(), "a qk-norm"),
            ("attention.sinks", a.sinks, "attention sinks"),
            (
                "attention.temperature",
                a.temperature.is_some(),
                "a query temperature",
            ),
        ];
        for (field, on, what) in unsupported {
            if on {
                self.push(
                    field,
                    i,
                    format!("latent attention with {what} is not supported"),
                    Some(format!(
                        "remove it, or write `mla none` for q/k/v attention with {what}"
                    )),
                );
            }
        }
    }
}
