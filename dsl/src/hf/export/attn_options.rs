//! Export of the newest attention options: GPT-OSS's sinks and alternating windows, Llama 4's
//! NoPE layers, chunks, L2 qk-norm and query temperature, SmolLM3's NoPE layers.

use serde_json::{Value, json};

use super::super::families::Family;
use crate::ir::*;

/// The family a spec with one of these options must be written as (`None`: none of them).
pub(super) fn candidate(spec: &ModelSpec) -> Option<Family> {
    let layers = &spec.layers;
    if layers.iter().any(|l| l.attention.sinks) {
        return Some(Family::GptOss);
    }
    let llama4 = layers.iter().any(|l| {
        let a = &l.attention;
        a.chunk.is_some()
            || a.temperature.is_some()
            || a.qk_norm.is_some_and(|q| q.after_rope)
            || matches!(&l.position, Position::Rope(r) if r.style == RopeStyle::Interleaved)
    });
    if llama4 {
        return Some(Family::Llama4Text);
    }
    let rope = layers
        .iter()
        .any(|l| matches!(l.position, Position::Rope(_)));
    let nope = layers.iter().any(|l| l.position == Position::None);
    (rope && nope).then_some(Family::SmolLm3)
}

/// The keys of these options for `family` (nothing for the other families).
pub(super) fn write(family: Family, spec: &ModelSpec, set: &mut impl FnMut(&str, Value)) {
    let layers = &spec.layers;
    let a = &layers[0].attention;
    let first_moe = layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(m) => Some(*m),
        Ffn::Mlp(_) => None,
    });
    // The expert keys these two families read under their own names (the generic MoE writer,
    // which runs after this, adds keys they ignore).
    if let Some(m) = first_moe
        && matches!(family, Family::GptOss | Family::Llama4Text)
    {
        set("num_local_experts", json!(m.experts));
        set("intermediate_size", json!(m.expert.hidden));
        if family == Family::GptOss {
            set("output_router_logits", json!(m.aux_loss > 0.0));
        }
    }
    let no_rope_layers = || -> Value {
        json!(
            layers
                .iter()
                .map(|l| u64::from(matches!(l.position, Position::Rope(_))))
                .collect::<Vec<_>>()
        )
    };
    match family {
        Family::GptOss => {
            set("attention_bias", json!(a.qkv_bias));
            let window = layers.iter().find_map(|l| l.attention.window);
            set("sliding_window", window.map_or(Value::Null, |w| json!(w)));
            set("layer_types", sliding_layer_types(layers));
        }
        Family::Llama4Text => {
            set("attention_bias", json!(a.qkv_bias));
            set("no_rope_layers", no_rope_layers());
            let chunk = layers.iter().find_map(|l| l.attention.chunk);
            set(
                "attention_chunk_size",
                chunk.map_or(Value::Null, |c| json!(c)),
            );
            set(
                "layer_types",
                layer_types(layers, "chunked_attention", |l| l.attention.chunk.is_some()),
            );
            let qk = layers.iter().any(|l| l.attention.qk_norm.is_some());
            set("use_qk_norm", json!(qk));
            let temperature = layers.iter().find_map(|l| l.attention.temperature);
            set("attn_temperature_tuning", json!(temperature.is_some()));
            if let Some(t) = temperature {
                set("floor_scale", json!(t.floor));
                set("attn_scale", json!(t.scale));
            }
            let dense = layers.iter().find_map(|l| match &l.ffn {
                Ffn::Mlp(m) => Some(m.hidden),
                Ffn::Moe(_) => None,
            });
            if let Some(h) = dense {
                set("intermediate_size_mlp", json!(h));
            }
            let moe: Vec<u64> = layers
                .iter()
                .filter(|l| matches!(l.ffn, Ffn::Moe(_)))
                .map(|l| l.index)
                .collect();
            set("moe_layers", json!(moe));
        }
        Family::SmolLm3 => {
            set("attention_bias", json!(a.qkv_bias));
            set("no_rope_layers", no_rope_layers());
            let window = layers.iter().find_map(|l| l.attention.window);
            set("use_sliding_window", json!(window.is_some()));
            set("sliding_window", window.map_or(Value::Null, |w| json!(w)));
            if window.is_some() {
                set("layer_types", sliding_layer_types(layers));
            }
            let mlp_bias = layers
                .iter()
                .any(|l| matches!(&l.ffn, Ffn::Mlp(m) if m.bias));
            set("mlp_bias", json!(mlp_bias));
        }
        _ => {}
    }
}

/// HF's `layer_types`: `kind` for the layers `is_kind` picks, `"full_attention"` for the others.
fn layer_types(layers: &[Layer], kind: &str, is_kind: impl Fn(&Layer) -> bool) -> Value {
    json!(
        layers
            .iter()
            .map(|l| if is_kind(l) { kind } else { "full_attention" })
            .collect::<Vec<_>>()
    )
}

/// `layer_types` of sliding-window layers among full ones.
pub(super) fn sliding_layer_types(layers: &[Layer]) -> Value {
    layer_types(layers, "sliding_attention", |l| {
        l.attention.window.is_some()
    })
}
