//! Checks of the newer attention options: chunked local attention (Llama 4), the query
//! temperature (Llama 4's NoPE layers), attention sinks (GPT-OSS) and the qk-norm's order
//! relative to RoPE.

use super::Checker;
use crate::ir::{Layer, ModelSpec, Position};

impl Checker {
    /// The chunk, temperature, sink and qk-norm-order options of layer `l`.
    pub(super) fn attention_options(&mut self, s: &ModelSpec, l: &Layer) {
        let i = Some(l.index);
        let a = &l.attention;
        if let Some(chunk) = a.chunk {
            if chunk == 0 {
                self.push(
                    "attention.chunk",
                    i,
                    "an attention chunk must be positive, found 0".into(),
                    Some("write `chunk none` for attention over the whole prefix".into()),
                );
            } else if chunk > s.context {
                self.push(
                    "attention.chunk",
                    i,
                    format!(
                        "the attention chunk ({chunk}) is longer than the context ({})",
                        s.context
                    ),
                    Some(
                        "a chunk longer than the context never cuts anything: write `chunk none`, or a chunk of at most the context"
                            .into(),
                    ),
                );
            }
            if a.window.is_some() {
                self.push(
                    "attention.chunk",
                    i,
                    "a layer cannot have both a sliding window and attention chunks".into(),
                    Some(
                        "keep one of `window` and `chunk` (write `window none` or `chunk none`)"
                            .into(),
                    ),
                );
            }
        }
        if let Some(t) = &a.temperature {
            if t.floor == 0 {
                self.push(
                    "attention.temperature.floor",
                    i,
                    "the temperature's floor must be at least 1 position, found 0".into(),
                    Some("Llama 4 uses `temperature(floor = 8192, scale = 0.1)`".into()),
                );
            }
            if !(t.scale.is_finite() && t.scale > 0.0) {
                self.push(
                    "attention.temperature.scale",
                    i,
                    format!(
                        "the temperature's scale must be a positive number, found {}",
                        t.scale
                    ),
                    Some("write `temperature none` to leave the queries unscaled".into()),
                );
            }
        }
        if a.qk_norm.is_some_and(|q| q.after_rope) && !matches!(l.position, Position::Rope(_)) {
            self.push(
                "attention.qk_norm.order",
                i,
                "`order = after_rope` on a layer without RoPE".into(),
                Some("the layer has no rotation to order the norm after: write `order = before_rope` or drop it".into()),
            );
        }
    }
}
