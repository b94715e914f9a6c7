//! [`ModelSpec`] → config.json.
//!
//! The family is chosen from the IR's checkpoint naming and features; each candidate family writes
//! its config, and the first whose config imports back into the same IR wins. So an export either
//! round-trips exactly or fails saying which IR field no family can express.

use serde_json::{Map, Value, json};

use super::families::Family;
use super::import::import_unchecked;
use crate::ir::*;

mod attn_options;
mod mla;

/// Why a spec has no config.json form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// No supported model_type expresses the spec; the string says what differs for each tried.
    #[error("this spec cannot be written as an HF config.json of any supported model_type:\n{0}")]
    NotExpressible(String),
    /// The spec has no layers.
    #[error("the spec has no layers")]
    NoLayers,
}

/// Which generation of config.json to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generation {
    /// Top-level `rope_theta` / `rope_scaling` (the files on the Hub, transformers 4).
    #[default]
    Hub,
    /// transformers 5: everything RoPE in `rope_parameters` (per layer type for Gemma-3).
    Transformers5,
}

/// The config.json (as a JSON object) of the model_type that expresses `spec` exactly, in the
/// Hub generation.
pub fn export(spec: &ModelSpec) -> Result<Value, ExportError> {
    export_generation(spec, Generation::Hub)
}

/// Like [`export`], in the chosen config generation. Either form imports back into `spec`.
pub fn export_generation(spec: &ModelSpec, generation: Generation) -> Result<Value, ExportError> {
    let hub = export_hub(spec)?;
    if generation == Generation::Hub {
        return Ok(hub);
    }
    let v5 = to_transformers5(hub);
    let text = serde_json::to_string_pretty(&v5).unwrap_or_default();
    let back = import_unchecked(&text, "config.json").map_err(|d| {
        ExportError::NotExpressible(format!(
            "  transformers-5 form: {:?}",
            d.first().map(|d| &d.message)
        ))
    })?;
    let (mut a, b) = (comparable(spec), comparable(&back.spec));
    a.name.clone_from(&b.name);
    match first_difference(&a, &b) {
        None => Ok(v5),
        Some(diff) => Err(ExportError::NotExpressible(format!(
            "  transformers-5 form: {diff}"
        ))),
    }
}

/// Moves the RoPE keys of a Hub-generation config into transformers-5 `rope_parameters`.
fn to_transformers5(hub: Value) -> Value {
    let Value::Object(mut c) = hub else {
        return hub;
    };
    let model_type = c
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let theta = c
        .remove("rope_theta")
        .or_else(|| c.remove("rotary_emb_base"))
        .unwrap_or(json!(10000));
    let fraction = c
        .remove("partial_rotary_factor")
        .or_else(|| c.remove("rotary_pct"));
    let mut params = match c.remove("rope_scaling") {
        Some(Value::Object(m)) => m,
        _ => {
            let mut m = Map::new();
            m.insert("rope_type".into(), json!("default"));
            m
        }
    };
    params.insert("rope_theta".into(), theta);
    if let Some(f) = fraction {
        params.insert("partial_rotary_factor".into(), f);
    }
    let rope = if model_type == "gemma3_text" {
        let local = c.remove("rope_local_base_freq").unwrap_or(json!(10000));
        json!({
            "full_attention": Value::Object(params),
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        })
    } else {
        Value::Object(params)
    };
    c.insert("rope_parameters".into(), rope);
    c.insert("transformers_version".into(), json!("5.0.0"));
    Value::Object(c)
}

fn export_hub(spec: &ModelSpec) -> Result<Value, ExportError> {
    if spec.layers.is_empty() {
        return Err(ExportError::NoLayers);
    }
    let target = comparable(spec);
    let mut tried = Vec::new();
    for family in candidates(spec) {
        let config = write(family, spec);
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        match import_unchecked(&text, "config.json") {
            Ok(imported) => {
                let mut back = comparable(&imported.spec);
                back.name.clone_from(&target.name);
                match first_difference(&target, &back) {
                    None => return Ok(config),
                    Some(diff) => tried.push(format!("  {}: {diff}", family.model_type())),
                }
            }
            Err(diags) => {
                let why = diags
                    .first()
                    .map(|d| format!("{}: {}", d.field, d.message))
                    .unwrap_or_default();
                tried.push(format!("  {}: {why}", family.model_type()));
            }
        }
    }
    if tried.is_empty() {
        tried.push(format!(
            "  no family uses the {:?} checkpoint naming with these features",
            spec.weights.naming
        ));
    }
    Err(ExportError::NotExpressible(tried.join("\n")))
}

/// The spec with the parts config.json does not carry made neutral (checkpoint policies, vocab
/// padding, how the embedding scale was written).
fn comparable(spec: &ModelSpec) -> ModelSpec {
    let mut s = spec.clone();
    s.vocab = s.vocab_padded;
    s.vocab_pad_multiple = 1;
    s.checkpoint = CheckpointGlobal::default();
    s.embedding.scale_expr = ScaleExpr::Literal;
    for layer in &mut s.layers {
        layer.checkpoint = LayerCheckpoint::Auto;
    }
    s
}

/// The first IR field where `a` and `b` differ, as `path: a vs b`: the model-wide fields first,
/// then the first layer row that differs. Only what differs is turned into JSON, so a table of
/// thousands of layers costs comparisons, not serialisations (each failed candidate family of
/// [`export`] used to serialise both whole specs).
fn first_difference(a: &ModelSpec, b: &ModelSpec) -> Option<String> {
    if a == b {
        return None;
    }
    // A clone costs far less than the JSON of thousands of layer rows.
    let globals = |s: &ModelSpec| {
        let mut g = s.clone();
        g.layers.clear();
        serde_json::to_value(&g).ok()
    };
    if let Some(d) = walk("", &globals(a)?, &globals(b)?) {
        return Some(d);
    }
    if a.layers.len() != b.layers.len() {
        return Some(format!(
            "layers: {} layers but the family gives {}",
            a.layers.len(),
            b.layers.len()
        ));
    }
    let i = a.layers.iter().zip(&b.layers).position(|(x, y)| x != y)?;
    let (va, vb) = (
        serde_json::to_value(&a.layers[i]).ok()?,
        serde_json::to_value(&b.layers[i]).ok()?,
    );
    walk(&format!("layers[{i}]"), &va, &vb).or_else(|| Some("the specs differ".into()))
}

/// The first place where two JSON values differ, as `path is a but the family gives b`.
fn walk(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            for (k, x) in ma {
                let y = mb.get(k).unwrap_or(&Value::Null);
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(d) = walk(&p, x, y) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(xa), Value::Array(xb)) if xa.len() == xb.len() => xa
            .iter()
            .zip(xb)
            .enumerate()
            .find_map(|(i, (x, y))| walk(&format!("{path}[{i}]"), x, y)),
        _ if a == b => None,
        _ => Some(format!("{path} is {a} but the family gives {b}")),
    }
}

/// Families worth trying for `spec`, most natural first.
fn candidates(spec: &ModelSpec) -> Vec<Family> {
    let l0 = &spec.layers[0];
    let moe = spec.layers.iter().any(|l| matches!(l.ffn, Ffn::Moe(_)));
    let shared = spec
        .layers
        .iter()
        .any(|l| matches!(&l.ffn, Ffn::Moe(m) if m.shared.is_some()));
    match spec.weights.naming {
        Naming::Gpt2 => vec![Family::Gpt2],
        Naming::GptNeox => vec![Family::GptNeox],
        Naming::Falcon => vec![Family::Falcon],
        Naming::Phi => vec![Family::Phi],
        Naming::Llama => {
            if spec.weights.fused_gate_up || spec.weights.qkv != QkvLayout::Separate {
                return vec![Family::Phi3];
            }
            if let Some(families) = mla::candidates(spec) {
                return families;
            }
            if let Some(family) = attn_options::candidate(spec) {
                return vec![family];
            }
            let sigmoid = spec
                .layers
                .iter()
                .any(|l| matches!(&l.ffn, Ffn::Moe(m) if m.router == RouterOrder::SigmoidTopk));
            if sigmoid {
                return vec![Family::Glm4Moe];
            }
            if moe {
                return if shared {
                    vec![Family::Qwen2Moe]
                } else {
                    vec![Family::Mixtral, Family::Qwen3Moe, Family::Qwen2Moe]
                };
            }
            if spec.embedding.scale != 1.0 || l0.block.norm.offset != 0.0 {
                return vec![Family::Gemma, Family::Gemma2, Family::Gemma3Text];
            }
            if l0.block.placement == NormPlacement::Post {
                return vec![Family::Olmo2];
            }
            if l0.attention.qk_norm.is_some() {
                return vec![Family::Qwen3, Family::Olmo2];
            }
            let windows = spec.layers.iter().any(|l| l.attention.window.is_some());
            let qkv_bias_only = l0.attention.qkv_bias && !l0.attention.out_bias;
            match (windows, qkv_bias_only) {
                (_, true) => vec![Family::Qwen2, Family::Llama],
                (true, false) => vec![Family::Mistral, Family::Qwen2, Family::Phi3],
                (false, false) => vec![Family::Llama, Family::Mistral, Family::Qwen2],
            }
        }
    }
}

fn architecture(family: Family) -> &'static str {
    match family {
        Family::Llama => "LlamaForCausalLM",
        Family::Mistral => "MistralForCausalLM",
        Family::Mixtral => "MixtralForCausalLM",
        Family::Qwen2 => "Qwen2ForCausalLM",
        Family::Qwen2Moe => "Qwen2MoeForCausalLM",
        Family::Qwen3 => "Qwen3ForCausalLM",
        Family::Qwen3Moe => "Qwen3MoeForCausalLM",
        Family::Gemma => "GemmaForCausalLM",
        Family::Gemma2 => "Gemma2ForCausalLM",
        Family::Gemma3Text => "Gemma3ForCausalLM",
        Family::Phi => "PhiForCausalLM",
        Family::Phi3 => "Phi3ForCausalLM",
        Family::Gpt2 => "GPT2LMHeadModel",
        Family::GptNeox => "GPTNeoXForCausalLM",
        Family::Falcon => "FalconForCausalLM",
        Family::Olmo2 => "Olmo2ForCausalLM",
        Family::Glm4Moe => "Glm4MoeForCausalLM",
        Family::GptOss => "GptOssForCausalLM",
        Family::Llama4Text => "Llama4ForCausalLM",
        Family::SmolLm3 => "SmolLM3ForCausalLM",
        Family::DeepseekV3 => "DeepseekV3ForCausalLM",
        Family::DeepseekV2 => "DeepseekV2ForCausalLM",
    }
}

/// An f64 as JSON, written as an integer when it is one (so `1e6` reads back as `1000000`).
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn hf_activation(kind: MlpKind) -> &'static str {
    match kind {
        MlpKind::Swiglu => "silu",
        MlpKind::Geglu | MlpKind::Gelu => "gelu",
        MlpKind::GegluTanh => "gelu_pytorch_tanh",
        MlpKind::GeluTanh => "gelu_new",
        MlpKind::ReluSquared => "relu2",
    }
}

/// The rope dict of a scaling variant (`None` for plain RoPE).
fn rope_scaling_value(scaling: &RopeScaling) -> Value {
    match scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": num(*factor)}),
        RopeScaling::DynamicNtk {
            factor,
            original_context,
        } => json!({
            "rope_type": "dynamic", "factor": num(*factor), "original_max_position_embeddings": original_context
        }),
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
            mscale,
        } => {
            let mut dict = json!({
                "rope_type": "yarn",
                "factor": num(*factor),
                "original_max_position_embeddings": original_context,
                "beta_fast": num(*beta_fast),
                "beta_slow": num(*beta_slow),
                "attention_factor": attention_factor,
            });
            if !truncate {
                dict["truncate"] = Value::Bool(false);
            }
            if let Some([m, all]) = mscale {
                dict["mscale"] = num(*m);
                dict["mscale_all_dim"] = num(*all);
            }
            dict
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => json!({
            "rope_type": "llama3",
            "factor": num(*factor),
            "low_freq_factor": num(*low_freq_factor),
            "high_freq_factor": num(*high_freq_factor),
            "original_max_position_embeddings": original_context,
        }),
        RopeScaling::Longrope {
            short_factor,
            long_factor,
            original_context,
            attention_factor,
        } => json!({
            "rope_type": "longrope",
            "short_factor": short_factor,
            "long_factor": long_factor,
            "original_max_position_embeddings": original_context,
            "attention_factor": attention_factor,
        }),
    }
}

/// Writes `spec` as `family`'s config (not checked; [`export`] checks by importing it back).
fn write(family: Family, spec: &ModelSpec) -> Value {
    let l0 = &spec.layers[0];
    let a = &l0.attention;
    let block = &l0.block;
    let norm = block.norm;
    let mut c = Map::new();
    let mut set = |k: &str, v: Value| {
        c.insert(k.to_string(), v);
    };
    set("_name_or_path", json!(spec.name));
    set("architectures", json!([architecture(family)]));
    set("model_type", json!(family.model_type()));
    set("vocab_size", json!(spec.vocab_padded));
    let dense = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Mlp(m) => Some(*m),
        Ffn::Moe(_) => None,
    });
    let first_moe = spec.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe(m) => Some(*m),
        Ffn::Mlp(_) => None,
    });
    let mlp = dense.or(first_moe.map(|m| m.expert)).unwrap_or(Mlp {
        activation: MlpKind::Swiglu,
        hidden: spec.d_model * 4,
        bias: false,
    });
    let rope = spec.layers.iter().find_map(|l| match &l.position {
        Position::Rope(r) if l.attention.window.is_none() || family != Family::Gemma3Text => {
            Some(r.clone())
        }
        _ => None,
    });
    let any_rope = spec.layers.iter().find_map(|l| match &l.position {
        Position::Rope(r) => Some(r.clone()),
        _ => None,
    });
    let rope = rope.or(any_rope);
    let theta = rope.as_ref().map_or(10000.0, |r| r.theta);
    let fraction = rope.as_ref().map_or(1.0, |r| r.fraction);
    let scaling = rope
        .as_ref()
        .map_or(Value::Null, |r| rope_scaling_value(&r.scaling));
    let window = spec.layers.iter().find_map(|l| l.attention.window);

    match family {
        Family::Gpt2 => {
            set("n_embd", json!(spec.d_model));
            set("n_layer", json!(spec.n_layers));
            set("n_head", json!(a.heads));
            set("n_positions", json!(spec.context));
            set("n_inner", json!(mlp.hidden));
            set("activation_function", json!(hf_activation(mlp.activation)));
            set("layer_norm_epsilon", json!(norm.eps));
            set("resid_pdrop", json!(spec.dropout.residual));
            set("embd_pdrop", json!(spec.dropout.embedding));
            set("attn_pdrop", json!(spec.dropout.attention));
            let unscaled = a.scale == 1.0 && a.head_dim != 1;
            set("scale_attn_weights", json!(!unscaled));
            let by_layer = spec.layers.len() > 1 && spec.layers[1].attention.scale != a.scale;
            set("scale_attn_by_inverse_layer_idx", json!(by_layer));
            set("tie_word_embeddings", json!(spec.embedding.tied));
        }
        Family::GptNeox => {
            set("hidden_size", json!(spec.d_model));
            set("num_hidden_layers", json!(spec.n_layers));
            set("num_attention_heads", json!(a.heads));
            set("intermediate_size", json!(mlp.hidden));
            set("hidden_act", json!(hf_activation(mlp.activation)));
            set("max_position_embeddings", json!(spec.context));
            set("layer_norm_eps", json!(norm.eps));
            set("rotary_pct", json!(fraction));
            set("rotary_emb_base", num(theta));
            set("rope_scaling", scaling);
            set("use_parallel_residual", json!(block.parallel_residual));
            set("attention_bias", json!(a.qkv_bias));
            set("attention_dropout", json!(spec.dropout.attention));
            set("hidden_dropout", json!(spec.dropout.residual));
            set("tie_word_embeddings", json!(spec.embedding.tied));
        }
        Family::Falcon => {
            set("hidden_size", json!(spec.d_model));
            set("num_hidden_layers", json!(spec.n_layers));
            set("num_attention_heads", json!(a.heads));
            let old_mq =
                a.kv_heads == 1 && block.shared_norm && spec.weights.qkv == QkvLayout::Fused;
            let old_mha =
                a.kv_heads == a.heads && (!block.parallel_residual || block.shared_norm) && !old_mq;
            if old_mq || old_mha {
                set("new_decoder_architecture", json!(false));
                set("multi_query", json!(old_mq));
                set("parallel_attn", json!(block.parallel_residual));
            } else {
                set("new_decoder_architecture", json!(true));
                set("multi_query", json!(a.kv_heads == 1));
                set("num_kv_heads", json!(a.kv_heads));
                set("parallel_attn", json!(true));
                set(
                    "num_ln_in_parallel_attn",
                    json!(if block.shared_norm { 1 } else { 2 }),
                );
            }
            set("bias", json!(a.qkv_bias));
            set("alibi", json!(matches!(l0.position, Position::Alibi)));
            set("layer_norm_epsilon", json!(norm.eps));
            set("ffn_hidden_size", json!(mlp.hidden));
            set("activation", json!(hf_activation(mlp.activation)));
            set("rope_theta", num(theta));
            set("rope_scaling", scaling);
            set("max_position_embeddings", json!(spec.context));
            set("attention_dropout", json!(spec.dropout.attention));
            set("hidden_dropout", json!(spec.dropout.residual));
            set("tie_word_embeddings", json!(spec.embedding.tied));
        }
        _ => {
            // The Llama-style and Phi configs share these keys.
            set("hidden_size", json!(spec.d_model));
            set("num_hidden_layers", json!(spec.n_layers));
            set("num_attention_heads", json!(a.heads));
            set("num_key_value_heads", json!(a.kv_heads));
            if family != Family::Phi && !family.is_mla() {
                set("head_dim", json!(a.head_dim));
            }
            set("intermediate_size", json!(mlp.hidden));
            set("max_position_embeddings", json!(spec.context));
            set("tie_word_embeddings", json!(spec.embedding.tied));
            set("rope_theta", num(theta));
            set("rope_scaling", scaling);
            if fraction != 1.0 || matches!(family, Family::Phi | Family::Glm4Moe) {
                set("partial_rotary_factor", json!(fraction));
            }
            set("attention_dropout", json!(spec.dropout.attention));
            if family.is_gemma() {
                set("hidden_activation", json!(hf_activation(mlp.activation)));
                set("hidden_act", json!(hf_activation(mlp.activation)));
            } else {
                set("hidden_act", json!(hf_activation(mlp.activation)));
            }
            if family == Family::Phi {
                set("layer_norm_eps", json!(norm.eps));
                set("qk_layernorm", json!(a.qk_norm.is_some()));
                set("resid_pdrop", json!(spec.dropout.residual));
                set("embd_pdrop", json!(spec.dropout.embedding));
            } else {
                set("rms_norm_eps", json!(norm.eps));
            }
            if family == Family::Phi3 {
                set("resid_pdrop", json!(spec.dropout.residual));
                set("embd_pdrop", json!(spec.dropout.embedding));
                if let Some(RopeScaling::Longrope {
                    original_context, ..
                }) = rope.as_ref().map(|r| &r.scaling)
                {
                    set("original_max_position_embeddings", json!(original_context));
                }
            }
            if matches!(
                family,
                Family::Llama | Family::Qwen3 | Family::Qwen3Moe | Family::Gemma | Family::Gemma2
            ) || matches!(family, Family::Gemma3Text | Family::Olmo2 | Family::Glm4Moe)
            {
                set("attention_bias", json!(a.qkv_bias));
            }
            if family == Family::Glm4Moe {
                set("use_qk_norm", json!(a.qk_norm.is_some()));
            }
            if family == Family::Llama {
                set("mlp_bias", json!(mlp.bias));
            }
            if family == Family::Qwen2Moe {
                set("qkv_bias", json!(a.qkv_bias));
            }
            if matches!(family, Family::Gemma2 | Family::Gemma3Text) {
                set("query_pre_attn_scalar", query_pre_attn_scalar(a.scale));
                set("attn_logit_softcapping", a.softcap.map_or(Value::Null, num));
                set(
                    "final_logit_softcapping",
                    spec.logits.softcap.map_or(Value::Null, num),
                );
            }
            if family == Family::Gemma3Text {
                let local =
                    spec.layers
                        .iter()
                        .find_map(|l| match (&l.position, l.attention.window) {
                            (Position::Rope(r), Some(_)) => Some(r.theta),
                            _ => None,
                        });
                set("rope_local_base_freq", num(local.unwrap_or(10000.0)));
            }
            write_windows(family, spec, window, &mut set);
            attn_options::write(family, spec, &mut set);
            mla::write(family, spec, &mut set);
            if let Some(moe) = first_moe {
                write_moe(family, spec, &moe, &mut set);
            }
        }
    }
    Value::Object(c)
}

/// Sliding-window keys of the families that have them.
fn write_windows(
    family: Family,
    spec: &ModelSpec,
    window: Option<u64>,
    set: &mut impl FnMut(&str, Value),
) {
    let sliding: Vec<bool> = spec
        .layers
        .iter()
        .map(|l| l.attention.window.is_some())
        .collect();
    match family {
        Family::Mistral | Family::Mixtral | Family::Phi3 => {
            set("sliding_window", window.map_or(Value::Null, |w| json!(w)));
        }
        Family::Gemma2 | Family::Gemma3Text => {
            set("sliding_window", json!(window.unwrap_or(4096)));
            set(
                "layer_types",
                attn_options::sliding_layer_types(&spec.layers),
            );
        }
        f if f.qwen_windows() => {
            let first = sliding.iter().position(|s| *s);
            set("use_sliding_window", json!(first.is_some()));
            set("sliding_window", window.map_or(Value::Null, |w| json!(w)));
            set(
                "max_window_layers",
                json!(first.unwrap_or(spec.layers.len())),
            );
        }
        _ => {}
    }
}

/// MoE keys.
fn write_moe(family: Family, spec: &ModelSpec, moe: &Moe, set: &mut impl FnMut(&str, Value)) {
    set("num_experts_per_tok", json!(moe.top_k));
    if family == Family::DeepseekV2 {
        mla::write_v2_moe(spec, moe, set);
        return;
    }
    if matches!(family, Family::Glm4Moe | Family::DeepseekV3) {
        set("n_routed_experts", json!(moe.experts));
        set("moe_intermediate_size", json!(moe.expert.hidden));
        set("norm_topk_prob", json!(moe.renormalize));
        // A float even when whole: transformers' strict config refuses an int here.
        set("routed_scaling_factor", json!(moe.routed_scale));
        let (groups, top) = moe.groups.map_or((1, 1), |g| (g.count, g.top));
        set("n_group", json!(groups));
        set("topk_group", json!(top));
        set("n_shared_experts", json!(moe.shared.map_or(0, |s| s.count)));
        mla::write_first_dense(spec, set);
        return;
    }
    set("router_aux_loss_coef", json!(moe.aux_loss));
    if family == Family::Mixtral {
        set("num_local_experts", json!(moe.experts));
        set("intermediate_size", json!(moe.expert.hidden));
        return;
    }
    set("num_experts", json!(moe.experts));
    set("moe_intermediate_size", json!(moe.expert.hidden));
    set("norm_topk_prob", json!(moe.renormalize));
    set("decoder_sparse_step", json!(1));
    let dense: Vec<u64> = spec
        .layers
        .iter()
        .filter(|l| matches!(l.ffn, Ffn::Mlp(_)))
        .map(|l| l.index)
        .collect();
    set("mlp_only_layers", json!(dense));
    if let Some(shared) = &moe.shared {
        set(
            "shared_expert_intermediate_size",
            json!(shared.count * shared.hidden),
        );
        if dense.is_empty() {
            set("intermediate_size", json!(shared.count * shared.hidden));
        }
    }
}

/// Gemma's `query_pre_attn_scalar` from the resolved scale, as an integer when it is one.
fn query_pre_attn_scalar(scale: f64) -> Value {
    let q = 1.0 / (scale * scale);
    let r = q.round();
    if (q - r).abs() < 1e-6 * r.max(1.0) && (1.0 / r.sqrt() == scale) {
        json!(r as u64)
    } else {
        json!(q)
    }
}
