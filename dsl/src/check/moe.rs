//! Checks of the routing options of newer mixtures of experts: DeepSeek-V3's sigmoid router with
//! its correction bias, expert groups and routed scale; GPT-OSS's clamped SwiGLU.

use super::Checker;
use crate::ir::{MlpKind, Moe, RouterOrder};

impl Checker {
    /// The routing options of MoE layer `i` (sizes and top-k are checked by the caller).
    pub(super) fn moe_routing(&mut self, i: Option<u64>, m: &Moe) {
        let sigmoid = m.router == RouterOrder::SigmoidTopk;
        if m.correction_bias && !sigmoid {
            self.push(
                "ffn.correction_bias",
                i,
                "a correction bias needs the `sigmoid_topk` router".into(),
                Some("the bias is added to sigmoid scores to choose experts: write `router sigmoid_topk`".into()),
            );
        }
        if let Some(g) = &m.groups {
            if !sigmoid {
                self.push(
                    "ffn.groups",
                    i,
                    "group-limited routing is supported with the `sigmoid_topk` router only".into(),
                    Some("write `router sigmoid_topk`, or remove `groups`/`top_groups`".into()),
                );
            }
            if g.count == 0 || !m.experts.is_multiple_of(g.count) {
                self.push(
                    "ffn.groups.count",
                    i,
                    format!(
                        "{} experts cannot be cut into {} equal groups",
                        m.experts, g.count
                    ),
                    Some("`groups` must divide the number of experts".into()),
                );
            } else if m.experts / g.count < 2 {
                self.push(
                    "ffn.groups.count",
                    i,
                    format!(
                        "groups of {} expert are too small: a group scores the sum of its two best experts",
                        m.experts / g.count
                    ),
                    Some(format!(
                        "use at most {} groups for {} experts",
                        m.experts / 2,
                        m.experts
                    )),
                );
            } else if g.top == 0 || g.top > g.count {
                self.push(
                    "ffn.groups.top",
                    i,
                    format!(
                        "top_groups ({}) must be between 1 and groups ({})",
                        g.top, g.count
                    ),
                    None,
                );
            } else if g.top * (m.experts / g.count) < m.top_k {
                self.push(
                    "ffn.groups.top",
                    i,
                    format!(
                        "{} groups of {} experts hold fewer than the top_k {} experts a token needs",
                        g.top,
                        m.experts / g.count,
                        m.top_k
                    ),
                    Some("raise `top_groups` or lower `top_k`".into()),
                );
            }
        }
        if !(m.routed_scale > 0.0 && m.routed_scale.is_finite()) {
            self.push(
                "ffn.routed_scale",
                i,
                format!(
                    "routed_scale must be a positive number, found {}",
                    m.routed_scale
                ),
                Some("it multiplies the router weights; 1 leaves them as they are".into()),
            );
        }
        if sigmoid && m.aux_loss != 0.0 {
            self.push(
                "ffn.aux_loss",
                i,
                "the load-balancing loss is defined over a softmax router, not `sigmoid_topk`"
                    .into(),
                Some(
                    "set `aux_loss 0` (DeepSeek-V3 balances with the correction bias instead)"
                        .into(),
                ),
            );
        }
        if let Some(c) = &m.clamp {
            if m.expert.activation != MlpKind::Swiglu {
                self.push(
                    "ffn.clamp",
                    i,
                    "`limit` and `alpha` belong to the clamped SwiGLU: the expert must be `swiglu`"
                        .into(),
                    None,
                );
            }
            if m.shared.is_some() {
                self.push(
                    "ffn.clamp",
                    i,
                    "the clamped SwiGLU with shared experts is not supported".into(),
                    Some("remove `shared`, or the expert's `limit`/`alpha`".into()),
                );
            }
            for (field, v, what) in [
                ("ffn.clamp.limit", c.limit, "limit"),
                ("ffn.clamp.alpha", c.alpha, "alpha"),
            ] {
                if !(v > 0.0 && v.is_finite()) {
                    self.push(
                        field,
                        i,
                        format!("the clamped SwiGLU's {what} must be a positive number, found {v}"),
                        Some("GPT-OSS uses `limit = 7, alpha = 1.702`".into()),
                    );
                }
            }
        }
    }
}
