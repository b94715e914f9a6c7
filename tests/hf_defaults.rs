//! The HF importer's defaults are transformers' own: a config.json that names only its
//! `model_type` imports as the config class instantiated with no arguments.
//!
//! tests/fixtures/config_defaults.json holds each class's `to_dict()` (written by
//! tests/fixtures/make_config_defaults.py from transformers 5.17). Every field that shapes the
//! model is compared: sizes, heads, head_dim, context, norm eps, tying, RoPE base and rotary
//! fraction, sliding windows, Gemma's attention scale and softcaps, and the MoE settings.

use modelspec::dsl::hf;
use modelspec::dsl::ir::{Ffn, ModelSpec, Position};
use serde_json::Value;

const DEFAULTS: &str = include_str!("fixtures/config_defaults.json");

/// The first of `keys` that `config` has with a non-null value.
fn first<'a>(config: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .filter_map(|k| config.get(*k))
        .find(|v| !v.is_null())
}

fn int(config: &Value, keys: &[&str]) -> Option<u64> {
    first(config, keys).and_then(Value::as_u64)
}

fn float(config: &Value, keys: &[&str]) -> Option<f64> {
    first(config, keys).and_then(Value::as_f64)
}

/// What transformers' defaults say each compared field is.
fn expected(model_type: &str, c: &Value) -> Vec<(&'static str, String)> {
    let hidden = int(c, &["hidden_size", "n_embd"]).unwrap();
    let heads = int(c, &["num_attention_heads", "n_head"]).unwrap();
    let kv_heads = match model_type {
        "falcon" if c["multi_query"] == true && c["new_decoder_architecture"] == false => 1,
        _ => int(c, &["num_key_value_heads", "num_kv_heads"]).unwrap_or(heads),
    };
    // Multi-head latent attention (DeepSeek V2/V3): a query/key head is its no-RoPE part plus
    // its RoPE part; `head_dim` in these configs is the RoPE part alone.
    let head_dim = match (
        int(c, &["qk_nope_head_dim"]),
        int(c, &["qk_rope_head_dim"]),
        c.get("kv_lora_rank").filter(|v| !v.is_null()),
    ) {
        (Some(nope), Some(rope), Some(_)) => nope + rope,
        _ => int(c, &["head_dim"]).unwrap_or(hidden / heads),
    };
    let rope = &c["rope_parameters"];
    // Gemma 3: local (sliding) layers and global layers have their own RoPE parameters.
    let local_rope = rope.get("sliding_attention").unwrap_or(rope);
    let fraction = float(local_rope, &["partial_rotary_factor"])
        .or_else(|| float(c, &["partial_rotary_factor"]))
        .unwrap_or(1.0);
    let window = match model_type {
        _ if c.get("use_sliding_window") == Some(&Value::Bool(false)) => None,
        _ => int(c, &["sliding_window"]),
    };
    let scale = match float(c, &["query_pre_attn_scalar"]) {
        Some(q) => 1.0 / q.sqrt(),
        None => 1.0 / (head_dim as f64).sqrt(),
    };
    let experts = int(c, &["num_local_experts", "num_experts"]);
    let expert_hidden = match experts {
        Some(_) => int(c, &["moe_intermediate_size", "intermediate_size"]),
        None => int(c, &["intermediate_size", "ffn_hidden_size", "n_inner"]).or(Some(4 * hidden)),
    };
    let mut out = vec![
        ("vocab", int(c, &["vocab_size"]).unwrap().to_string()),
        ("d_model", hidden.to_string()),
        (
            "layers",
            int(c, &["num_hidden_layers", "n_layer"])
                .unwrap()
                .to_string(),
        ),
        ("heads", heads.to_string()),
        ("kv_heads", kv_heads.to_string()),
        ("head_dim", head_dim.to_string()),
        (
            "context",
            int(c, &["max_position_embeddings", "n_positions"])
                .unwrap()
                .to_string(),
        ),
        (
            "eps",
            float(c, &["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"])
                .unwrap()
                .to_string(),
        ),
        ("tied", c["tie_word_embeddings"].to_string()),
        ("window (layer 0)", format!("{window:?}")),
        ("scale", format!("{scale:.9}")),
        (
            "attention softcap",
            format!("{:?}", float(c, &["attn_logit_softcapping"])),
        ),
        (
            "logits softcap",
            format!("{:?}", float(c, &["final_logit_softcapping"])),
        ),
        ("ffn hidden", format!("{expert_hidden:?}")),
        ("experts", format!("{experts:?}")),
    ];
    if model_type != "gpt2" {
        out.push((
            "rope theta (layer 0)",
            float(local_rope, &["rope_theta"]).unwrap().to_string(),
        ));
        out.push(("rotary fraction", fraction.to_string()));
    }
    if experts.is_some() {
        out.push(("top_k", format!("{:?}", int(c, &["num_experts_per_tok"]))));
        // transformers adds the auxiliary loss only with `output_router_logits` (false by
        // default), and every importer follows that.
        let aux = if c["output_router_logits"] == true {
            float(c, &["router_aux_loss_coef"])
        } else {
            Some(0.0)
        };
        out.push(("aux loss", format!("{aux:?}")));
        // Llama 4's one shared expert is as wide as a routed expert.
        let shared = match model_type {
            "llama4_text" => int(c, &["intermediate_size"]),
            _ => int(c, &["shared_expert_intermediate_size"]),
        };
        out.push(("shared expert hidden", format!("{shared:?}")));
    }
    out
}

/// The same fields of the imported spec.
fn actual(spec: &ModelSpec) -> Vec<(&'static str, String)> {
    let l = &spec.layers[0];
    let a = &l.attention;
    let (expert_hidden, experts) = match &l.ffn {
        Ffn::Mlp(m) => (m.hidden, None),
        Ffn::Moe(m) => (m.expert.hidden, Some(m.experts)),
    };
    let mut out = vec![
        ("vocab", spec.vocab.to_string()),
        ("d_model", spec.d_model.to_string()),
        ("layers", spec.n_layers.to_string()),
        ("heads", a.heads.to_string()),
        ("kv_heads", a.kv_heads.to_string()),
        ("head_dim", a.head_dim.to_string()),
        ("context", spec.context.to_string()),
        ("eps", l.block.norm.eps.to_string()),
        ("tied", spec.embedding.tied.to_string()),
        ("window (layer 0)", format!("{:?}", a.window)),
        ("scale", format!("{:.9}", a.scale)),
        ("attention softcap", format!("{:?}", a.softcap)),
        ("logits softcap", format!("{:?}", spec.logits.softcap)),
        ("ffn hidden", format!("{:?}", Some(expert_hidden))),
        ("experts", format!("{experts:?}")),
    ];
    if let Position::Rope(r) = &l.position {
        out.push(("rope theta (layer 0)", r.theta.to_string()));
        out.push(("rotary fraction", r.fraction.to_string()));
    }
    if let Ffn::Moe(m) = &l.ffn {
        out.push(("top_k", format!("{:?}", Some(m.top_k))));
        out.push(("aux loss", format!("{:?}", Some(m.aux_loss))));
        out.push((
            "shared expert hidden",
            format!("{:?}", m.shared.map(|s| s.count * s.hidden)),
        ));
    }
    out
}

#[test]
fn every_family_imports_with_transformers_class_defaults() {
    let defaults: Value = serde_json::from_str(DEFAULTS).expect("fixture JSON");
    let configs = defaults["configs"].as_object().expect("configs");
    let mut wrong = Vec::new();
    for family in hf::families::ALL {
        let model_type = family.model_type();
        let Some(c) = configs.get(model_type) else {
            wrong.push(format!("{model_type}: missing from the fixture"));
            continue;
        };
        let bare = format!("{{\"model_type\": \"{model_type}\"}}");
        // Class defaults that do not make a model: GLM-4-MoE's 4096 / 96 heads (transformers
        // floors head_dim to 42; the importer asks for an explicit head_dim), DeepSeek-V2's
        // missing experts per token (transformers' default is None). Refused, naming the field.
        let refused = match model_type {
            "glm4_moe" => Some("not divisible by 96 attention heads"),
            "deepseek_v2" => Some("num_experts_per_tok"),
            _ => None,
        };
        let spec = match (hf::import(&bare, "config.json"), refused) {
            (Err(d), Some(why)) if format!("{d:?}").contains(why) => continue,
            (Ok(_), Some(why)) => {
                wrong.push(format!("{model_type}: imports, expected a refusal ({why})"));
                continue;
            }
            (Ok(spec), None) => spec,
            (Err(d), _) => {
                wrong.push(format!("{model_type}: does not import: {d:?}"));
                continue;
            }
        };
        let want = expected(model_type, c);
        let got = actual(&spec);
        for (field, value) in &want {
            match got.iter().find(|(f, _)| f == field) {
                Some((_, v)) if v == value => {}
                Some((_, v)) => wrong.push(format!(
                    "{model_type} {field}: ours {v}, transformers {value}"
                )),
                None => wrong.push(format!(
                    "{model_type} {field}: ours none, transformers {value}"
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "defaults differ from transformers {}:\n{}",
        defaults["transformers"],
        wrong.join("\n")
    );
}

/// Gemma 2's attention scale is 256^-1/2 by default whatever head_dim is, and Gemma 3's global
/// layers take the full-attention RoPE base.
#[test]
fn gemma_defaults_beyond_layer_zero() {
    let spec = hf::import(
        r#"{"model_type": "gemma2", "head_dim": 128}"#,
        "config.json",
    )
    .unwrap();
    assert_eq!(spec.layers[0].attention.scale, 1.0 / 16.0);
    let defaults: Value = serde_json::from_str(DEFAULTS).unwrap();
    let c = &defaults["configs"]["gemma3_text"];
    let spec = hf::import(r#"{"model_type": "gemma3_text"}"#, "config.json").unwrap();
    let types = c["layer_types"].as_array().unwrap();
    let global = &c["rope_parameters"]["full_attention"]["rope_theta"];
    for (layer, kind) in spec.layers.iter().zip(types) {
        let Position::Rope(r) = &layer.position else {
            panic!("RoPE expected");
        };
        if kind == "full_attention" {
            assert_eq!(layer.attention.window, None);
            assert_eq!(r.theta, global.as_f64().unwrap());
        } else {
            assert_eq!(layer.attention.window, int(c, &["sliding_window"]));
        }
    }
}
