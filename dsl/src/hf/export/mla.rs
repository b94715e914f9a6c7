//! Export of multi-head latent attention: DeepSeek-V3 (`deepseek_v3`) and DeepSeek-V2
//! (`deepseek_v2`) configs.

use serde_json::{Value, json};

use super::super::families::Family;
use crate::ir::*;

/// The families a spec with latent attention can be written as, most natural first (`None`: the
/// spec has none). A softmax router is DeepSeek-V2's; a sigmoid one, or none, DeepSeek-V3's.
pub(super) fn candidates(spec: &ModelSpec) -> Option<Vec<Family>> {
    if !spec.layers.iter().any(|l| l.attention.mla.is_some()) {
        return None;
    }
    let softmax = spec
        .layers
        .iter()
        .any(|l| matches!(&l.ffn, Ffn::Moe(m) if m.router == RouterOrder::SoftmaxTopk));
    Some(if softmax {
        vec![Family::DeepseekV2, Family::DeepseekV3]
    } else {
        vec![Family::DeepseekV3, Family::DeepseekV2]
    })
}

/// The latent attention keys of `family` (nothing for the other families).
pub(super) fn write(family: Family, spec: &ModelSpec, set: &mut impl FnMut(&str, Value)) {
    if !family.is_mla() {
        return;
    }
    let l0 = &spec.layers[0];
    let Some(m) = l0.attention.mla else {
        return;
    };
    set("q_lora_rank", m.q_rank.map_or(Value::Null, |r| json!(r)));
    set("kv_lora_rank", json!(m.kv_rank));
    set("qk_nope_head_dim", json!(m.nope_dim));
    set("qk_rope_head_dim", json!(m.rope_dim));
    set("v_head_dim", json!(m.v_dim));
    set("attention_bias", json!(l0.attention.qkv_bias));
    if family == Family::DeepseekV3 {
        let interleaved = spec
            .layers
            .iter()
            .any(|l| matches!(&l.position, Position::Rope(r) if r.style == RopeStyle::Interleaved));
        set("rope_interleave", json!(interleaved));
    }
    // Without experts every layer is dense: the dense prefix covers the model.
    if !spec.layers.iter().any(|l| matches!(l.ffn, Ffn::Moe(_))) {
        set("first_k_dense_replace", json!(spec.n_layers));
        if family == Family::DeepseekV2 {
            set("num_experts_per_tok", json!(1));
        }
    }
}

/// DeepSeek-V2's MoE keys (its greedy softmax router).
pub(super) fn write_v2_moe(spec: &ModelSpec, moe: &Moe, set: &mut impl FnMut(&str, Value)) {
    set("n_routed_experts", json!(moe.experts));
    set("moe_intermediate_size", json!(moe.expert.hidden));
    set("routed_scaling_factor", json!(moe.routed_scale));
    set("topk_method", json!("greedy"));
    set("n_shared_experts", json!(moe.shared.map_or(0, |s| s.count)));
    write_first_dense(spec, set);
}

/// `first_k_dense_replace`: how many layers lead with a dense MLP before the first MoE layer
/// (the DeepSeek and GLM-4-MoE families).
pub(super) fn write_first_dense(spec: &ModelSpec, set: &mut impl FnMut(&str, Value)) {
    let first_dense = spec
        .layers
        .iter()
        .take_while(|l| matches!(l.ffn, Ffn::Mlp(_)))
        .count();
    set("first_k_dense_replace", json!(first_dense));
}
