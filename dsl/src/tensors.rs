//! Named activations of a layer: the vocabulary of `save(...)` / `recompute(...)` clauses.
//!
//! The tensor program (runtime) names the intermediate tensors of each block with exactly these
//! names, and `check` rejects a checkpoint clause naming a tensor the layer does not have.
//! The layer input (`input`) is always saved and is not listed.

use crate::ir::{Ffn, Layer};

/// The named intermediate activations of `layer`, in forward order.
pub fn layer_tensors(layer: &Layer) -> Vec<&'static str> {
    let mut names = Vec::new();
    let block = &layer.block;
    let pre = block.placement.pre();
    let post = block.placement.post();
    if pre {
        names.push("attn_norm");
    }
    names.extend(["q", "k", "v"]);
    if layer.attention.qk_norm.is_some() {
        names.extend(["q_normed", "k_normed"]);
    }
    if matches!(layer.position, crate::ir::Position::Rope(_)) {
        names.extend(["q_rope", "k_rope"]);
    }
    names.extend(["attn", "attn_out"]);
    if post {
        names.push("attn_post_norm");
    }
    if !block.parallel_residual {
        names.push("resid_mid");
    }
    if pre && !(block.parallel_residual && block.shared_norm) {
        names.push("mlp_norm");
    }
    match &layer.ffn {
        Ffn::Mlp(mlp) => {
            if mlp.activation.is_gated() {
                names.push("gate");
            }
            names.extend(["up", "act", "mlp_out"]);
        }
        Ffn::Moe(moe) => {
            names.extend(["router_logits", "router_weights", "expert_in"]);
            if moe.expert.activation.is_gated() {
                names.push("gate");
            }
            names.extend(["up", "act", "expert_out"]);
            if moe.shared.is_some() {
                names.push("shared_out");
            }
            names.push("mlp_out");
        }
    }
    if post {
        names.push("mlp_post_norm");
    }
    names
}
