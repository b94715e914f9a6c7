//! config.json → [`ModelSpec`].
//!
//! Each family's behaviour (norm offsets, sandwich norms, qk-norm, parallel residuals, routers...) is
//! spelled out as named IR choices; field defaults come from [`super::families`]. Every value read
//! remembers the JSON field it came from, so that problems, whether found while reading or later by
//! the IR checks, point at that field's line.

use std::collections::BTreeMap;
use std::ops::Range;

use super::families::{Defaults, Family};
use super::json_spans::{self, JsonKind, JsonValue};
use crate::diag::{Diagnostic, Issue};
use crate::ir::*;

/// The result of reading a config: the IR plus where each IR field came from.
pub(crate) struct Imported {
    pub spec: ModelSpec,
    /// IR field path (as in [`Issue::field`]) → the config key that produced it.
    pub origins: BTreeMap<String, String>,
}

/// Reads a config.json into the IR. `file` is the path as the user named it (for diagnostics).
pub fn import(src: &str, file: &str) -> Result<ModelSpec, Vec<Diagnostic>> {
    let imported = import_unchecked(src, file)?;
    let mut issues = crate::cost::limit_issues(&imported.spec);
    if issues.is_empty() {
        issues = crate::check::check(&imported.spec);
    }
    if issues.is_empty() {
        issues = validate(&imported.spec);
    }
    if issues.is_empty() {
        return Ok(imported.spec);
    }
    let root = json_spans::parse(src).ok();
    Err(issues
        .iter()
        .map(|issue| issue_to_diagnostic(issue, &imported.origins, root.as_ref(), file))
        .collect())
}

/// Checks the import relies on beyond the shared ones (kept as a second line of defence).
fn validate(spec: &ModelSpec) -> Vec<Issue> {
    let mut issues = Vec::new();
    for layer in &spec.layers {
        let a = &layer.attention;
        if a.kv_heads > 0 && a.heads % a.kv_heads != 0 {
            issues.push(Issue {
                field: "attention.kv_heads".into(),
                layers: vec![layer.index],
                message: format!(
                    "{} query heads cannot be split into {} key/value groups",
                    a.heads, a.kv_heads
                ),
                hint: Some("kv heads must divide the number of attention heads".into()),
            });
            break;
        }
        if let Position::Rope(rope) = &layer.position
            && rope.rotary_dims % 2 != 0
        {
            issues.push(Issue {
                field: "position.fraction".into(),
                layers: vec![layer.index],
                message: format!("{} rotary dimensions per head is odd", rope.rotary_dims),
                hint: Some("choose a rotary fraction that makes head_dim × fraction even".into()),
            });
            break;
        }
        if let Ffn::Moe(moe) = &layer.ffn
            && moe.top_k > moe.experts
        {
            issues.push(Issue {
                field: "ffn.top_k".into(),
                layers: vec![layer.index],
                message: format!(
                    "top_k {} is more than the {} experts",
                    moe.top_k, moe.experts
                ),
                hint: Some("top_k must be at most the number of experts".into()),
            });
            break;
        }
    }
    issues
}

/// Turns an IR issue into a diagnostic pointing at the config field that produced it.
pub(crate) fn issue_to_diagnostic(
    issue: &Issue,
    origins: &BTreeMap<String, String>,
    root: Option<&JsonValue>,
    file: &str,
) -> Diagnostic {
    // The longest recorded path that is a prefix of the issue's path.
    let mut path = issue.field.as_str();
    let key = loop {
        if let Some(k) = origins.get(path) {
            break Some(k.clone());
        }
        match path.rfind('.') {
            Some(dot) => path = &path[..dot],
            None => break None,
        }
    };
    let mut key = key.unwrap_or_else(|| "model_type".to_string());
    // Inside a rope dict, name the entry itself (`rope_scaling.factor`).
    let rest = issue.field[path.len()..].trim_start_matches('.');
    if !rest.is_empty()
        && let Some(node) = root.and_then(|r| lookup(r, &key))
        && let Some(hf_key) = rope_key(rest)
    {
        for sub in ["", "full_attention", "sliding_attention"] {
            let dict = if sub.is_empty() {
                Some(node)
            } else {
                node.get(sub).map(|m| &m.value)
            };
            if dict.and_then(|d| d.get(hf_key)).is_some() {
                key = if sub.is_empty() {
                    format!("{key}.{hf_key}")
                } else {
                    format!("{key}.{sub}.{hf_key}")
                };
                break;
            }
        }
    }
    let span = root
        .and_then(|r| lookup(r, &key))
        .map(|v| v.span.clone())
        .unwrap_or(0..0);
    let mut message = issue.message.clone();
    if !issue.layers.is_empty() && issue.layers.len() < 8 {
        let list: Vec<String> = issue.layers.iter().map(u64::to_string).collect();
        message = format!("{message} (layer {})", list.join(", "));
    }
    Diagnostic {
        file: file.to_string(),
        span,
        field: key,
        message,
        hint: issue.hint.clone(),
    }
}

/// The value at a dotted key path.
fn lookup<'v>(root: &'v JsonValue, dotted: &str) -> Option<&'v JsonValue> {
    let mut node = root;
    for part in dotted.split('.') {
        node = &node.get(part)?.value;
    }
    Some(node)
}

/// The HF name of a RoPE IR field inside `rope_scaling` / `rope_parameters`.
fn rope_key(ir: &str) -> Option<&'static str> {
    Some(match ir.rsplit('.').next()? {
        "theta" => "rope_theta",
        "factor" => "factor",
        "original_context" => "original_max_position_embeddings",
        "beta_fast" => "beta_fast",
        "beta_slow" => "beta_slow",
        "attention_factor" => "attention_factor",
        "low_freq_factor" => "low_freq_factor",
        "high_freq_factor" => "high_freq_factor",
        "short_factor" => "short_factor",
        "long_factor" => "long_factor",
        "fraction" | "rotary_dims" => "partial_rotary_factor",
        _ => return None,
    })
}

/// Reads the config into the IR without the IR checks.
pub(crate) fn import_unchecked(src: &str, file: &str) -> Result<Imported, Vec<Diagnostic>> {
    let root = json_spans::parse(src).map_err(|e| {
        vec![Diagnostic {
            file: file.to_string(),
            span: e.span,
            field: "(json)".into(),
            message: e.message,
            hint: Some("config.json must be one well-formed JSON object".into()),
        }]
    })?;
    if !matches!(root.kind, JsonKind::Object(_)) {
        return Err(vec![Diagnostic {
            file: file.to_string(),
            span: root.span.clone(),
            field: "(json)".into(),
            message: format!("expected a JSON object, found {}", root.kind.describe()),
            hint: Some(
                "config.json is an object of fields such as \"model_type\" and \"hidden_size\""
                    .into(),
            ),
        }]);
    }
    let mut cfg = Cfg {
        root: &root,
        file,
        diags: Vec::new(),
        origins: BTreeMap::new(),
    };
    let family = match root.get("model_type") {
        None => {
            return Err(vec![Diagnostic {
                file: file.to_string(),
                span: 0..0,
                field: "model_type".into(),
                message: "config.json has no \"model_type\"".into(),
                hint: Some(format!(
                    "add \"model_type\", one of: {}",
                    Family::supported_list()
                )),
            }]);
        }
        Some(m) => match m.value.as_str() {
            Err(e) => {
                return Err(vec![cfg.diag_at(
                    "model_type",
                    m.value.span.clone(),
                    e.message,
                    None,
                )]);
            }
            Ok(t) => match Family::from_model_type(t) {
                Some(f) => f,
                None => {
                    return Err(vec![cfg.diag_at(
                        "model_type",
                        m.value.span.clone(),
                        format!("unsupported model_type \"{t}\""),
                        Some(format!(
                            "supported model_types: {}",
                            Family::supported_list()
                        )),
                    )]);
                }
            },
        },
    };
    let spec = build(&mut cfg, family, file);
    if !cfg.diags.is_empty() {
        return Err(cfg.diags);
    }
    match spec {
        Some(spec) => Ok(Imported {
            spec,
            origins: cfg.origins,
        }),
        None => Err(vec![Diagnostic {
            file: file.to_string(),
            span: 0..0,
            field: "model_type".into(),
            message: "the config could not be read".into(),
            hint: None,
        }]),
    }
}

/// A typed, span-aware view of the config object that collects diagnostics.
pub(crate) struct Cfg<'a> {
    root: &'a JsonValue,
    file: &'a str,
    diags: Vec<Diagnostic>,
    origins: BTreeMap<String, String>,
}

impl<'a> Cfg<'a> {
    fn diag_at(
        &self,
        field: &str,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            span,
            field: field.to_string(),
            message,
            hint,
        }
    }

    fn error(&mut self, field: &str, message: String, hint: Option<String>) {
        let span = self.span_of(field);
        let d = self.diag_at(field, span, message, hint);
        self.diags.push(d);
    }

    /// The span of `key`'s value, or of `model_type` when the key is absent.
    fn span_of(&self, key: &str) -> Range<usize> {
        let path: Vec<&str> = key.split('.').collect();
        let mut node = self.root;
        for part in &path {
            match node.get(part) {
                Some(m) => node = &m.value,
                None => {
                    return self
                        .root
                        .get("model_type")
                        .map_or(0..0, |m| m.value.span.clone());
                }
            }
        }
        node.span.clone()
    }

    /// The first of `keys` present with a non-null value.
    fn find(&self, keys: &[&str]) -> Option<(&'a str, &'a JsonValue)> {
        let root: &'a JsonValue = self.root;
        for key in keys {
            if let Some(m) = root.get(key)
                && !m.value.is_null()
            {
                return Some((m.key.as_str(), &m.value));
            }
        }
        None
    }

    /// Records that IR field `ir` came from config key `key`.
    fn origin(&mut self, ir: &str, key: &str) {
        self.origins
            .entry(ir.to_string())
            .or_insert_with(|| key.to_string());
    }

    /// A positive integer: the first present key, else `default`.
    fn size(&mut self, ir: &str, keys: &[&str], default: u64) -> u64 {
        self.origin(ir, keys[0]);
        let Some((key, v)) = self.find(keys) else {
            return default;
        };
        self.origins.insert(ir.to_string(), key.to_string());
        match v.as_u64() {
            Ok(0) => {
                let key = key.to_string();
                self.error(
                    &key,
                    "a size must be positive, found 0".into(),
                    Some("sizes are at least 1".into()),
                );
                default
            }
            Ok(n) => n,
            Err(e) => {
                let key = key.to_string();
                let message = match &v.kind {
                    JsonKind::Number(text) if text.starts_with('-') => {
                        format!("a size must be a positive integer, found {text}")
                    }
                    _ => e.message,
                };
                self.error(&key, message, Some("sizes are positive integers".into()));
                default
            }
        }
    }

    /// An optional non-negative integer (`None` when absent or null).
    fn opt_u64(&mut self, ir: &str, key: &str) -> Option<u64> {
        let (key, v) = self.find(&[key])?;
        self.origin(ir, key);
        match v.as_u64() {
            Ok(n) => Some(n),
            Err(e) => {
                let key = key.to_string();
                self.error(&key, e.message, None);
                None
            }
        }
    }

    fn float(&mut self, ir: &str, keys: &[&str], default: f64) -> f64 {
        self.origin(ir, keys[0]);
        let Some((key, v)) = self.find(keys) else {
            return default;
        };
        self.origins.insert(ir.to_string(), key.to_string());
        self.float_value(key, v).unwrap_or(default)
    }

    fn float_value(&mut self, key: &str, v: &JsonValue) -> Option<f64> {
        match v.as_f64() {
            Ok(f) => Some(f),
            Err(e) => {
                self.error(key, e.message, None);
                None
            }
        }
    }

    fn opt_float(&mut self, ir: &str, key: &str) -> Option<f64> {
        let (key, v) = self.find(&[key])?;
        self.origin(ir, key);
        self.float_value(key, v)
    }

    fn flag(&mut self, ir: &str, key: &str, default: bool) -> bool {
        if !ir.is_empty() {
            self.origin(ir, key);
        }
        let Some((key, v)) = self.find(&[key]) else {
            return default;
        };
        match v.as_bool() {
            Ok(b) => b,
            Err(e) => {
                let key = key.to_string();
                self.error(&key, e.message, None);
                default
            }
        }
    }

    fn string(&mut self, ir: &str, keys: &[&str], default: &str) -> String {
        self.origin(ir, keys[0]);
        let Some((key, v)) = self.find(keys) else {
            return default.to_string();
        };
        self.origins.insert(ir.to_string(), key.to_string());
        match v.as_str() {
            Ok(s) => s.to_string(),
            Err(e) => {
                let key = key.to_string();
                self.error(&key, e.message, None);
                default.to_string()
            }
        }
    }

    /// A probability in [0, 1).
    fn rate(&mut self, ir: &str, key: &str) -> f64 {
        let p = self.float(ir, &[key], 0.0);
        if !(0.0..1.0).contains(&p) {
            self.error(key, format!("dropout rate {p} is outside [0, 1)"), None);
            return 0.0;
        }
        p
    }
}

/// Per-layer-type RoPE settings.
#[derive(Clone)]
struct RopeCfg {
    theta: f64,
    scaling: RopeScaling,
}

fn build(cfg: &mut Cfg<'_>, family: Family, file: &str) -> Option<ModelSpec> {
    let d: Defaults = family.defaults();
    let gpt2 = family == Family::Gpt2;

    let vocab = cfg.size("vocab", &["vocab_size"], d.vocab);
    let hidden = cfg.size("d_model", &["hidden_size", "n_embd", "d_model"], d.hidden);
    let n_layers = cfg.size("n_layers", &["num_hidden_layers", "n_layer"], d.layers);
    let heads = cfg.size(
        "attention.heads",
        &["num_attention_heads", "n_head"],
        d.heads,
    );
    let context = cfg.size(
        "context",
        &["max_position_embeddings", "n_positions"],
        d.context,
    );

    // Key/value heads.
    let kv_heads = match family {
        Family::Gpt2 | Family::GptNeox => heads,
        Family::Falcon => {
            let new_arch = cfg.flag("", "new_decoder_architecture", false);
            let multi_query = cfg.flag("", "multi_query", true);
            if new_arch {
                cfg.size("attention.kv_heads", &["num_kv_heads"], heads)
            } else if multi_query {
                cfg.origin("attention.kv_heads", "multi_query");
                1
            } else {
                heads
            }
        }
        _ => cfg.size(
            "attention.kv_heads",
            &["num_key_value_heads"],
            d.kv_heads.unwrap_or(heads),
        ),
    };
    if !cfg.origins.contains_key("attention.kv_heads") {
        cfg.origin("attention.kv_heads", "num_attention_heads");
    }

    // head_dim: explicit, the class default, or hidden / heads.
    let head_dim = match cfg.find(&["head_dim"]) {
        Some(_) if family.llama_like() => cfg.size("attention.head_dim", &["head_dim"], 1),
        _ => match d.head_dim {
            Some(hd) => hd,
            None => {
                cfg.origin("attention.head_dim", "num_attention_heads");
                if !hidden.is_multiple_of(heads) {
                    let key = cfg
                        .origins
                        .get("attention.heads")
                        .cloned()
                        .unwrap_or_default();
                    cfg.error(
                        &key,
                        format!("hidden size {hidden} is not divisible by {heads} attention heads"),
                        Some("head_dim is derived as hidden_size / num_attention_heads: make it divide, or set \"head_dim\"".into()),
                    );
                }
                (hidden / heads).max(1)
            }
        },
    };

    let eps = cfg.float(
        "block.norm.eps",
        &["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"],
        d.eps,
    );
    if eps <= 0.0 {
        let key = cfg
            .origins
            .get("block.norm.eps")
            .cloned()
            .unwrap_or_default();
        cfg.error(
            &key,
            format!("norm epsilon must be positive, found {eps}"),
            None,
        );
    }
    let tied = cfg.flag("embedding.tied", "tie_word_embeddings", d.tied);

    // Dropout.
    let dropout = match family {
        Family::Gpt2 => Dropout {
            embedding: cfg.rate("dropout.embedding", "embd_pdrop"),
            attention: cfg.rate("dropout.attention", "attn_pdrop"),
            residual: cfg.rate("dropout.residual", "resid_pdrop"),
        },
        Family::Phi | Family::Phi3 => Dropout {
            embedding: cfg.rate("dropout.embedding", "embd_pdrop"),
            attention: cfg.rate("dropout.attention", "attention_dropout"),
            residual: cfg.rate("dropout.residual", "resid_pdrop"),
        },
        Family::GptNeox | Family::Falcon => Dropout {
            embedding: 0.0,
            attention: cfg.rate("dropout.attention", "attention_dropout"),
            residual: cfg.rate("dropout.residual", "hidden_dropout"),
        },
        _ => Dropout {
            embedding: 0.0,
            attention: cfg.rate("dropout.attention", "attention_dropout"),
            residual: 0.0,
        },
    };

    // Norms.
    let rms = Norm {
        kind: NormKind::Rms,
        eps,
        offset: 0.0,
        weight: true,
        bias: false,
    };
    let layer_norm = Norm {
        kind: NormKind::Layer,
        eps,
        offset: 0.0,
        weight: true,
        bias: true,
    };
    let norm = match family {
        Family::Gpt2 | Family::GptNeox | Family::Falcon | Family::Phi => layer_norm,
        f if f.is_gemma() => Norm { offset: 1.0, ..rms },
        _ => rms,
    };

    // Activation and MLP widths.
    let act_name = match family {
        f if f.is_gemma() => cfg.string("ffn.activation", &["hidden_activation"], d.act),
        Family::Gpt2 => cfg.string("ffn.activation", &["activation_function"], d.act),
        Family::Falcon => cfg.string("ffn.activation", &["activation"], d.act),
        _ => cfg.string("ffn.activation", &["hidden_act"], d.act),
    };
    let gated = family.llama_like();
    let activation = match activation_kind(&act_name, gated) {
        Some(a) => a,
        None => {
            let key = cfg
                .origins
                .get("ffn.activation")
                .cloned()
                .unwrap_or_default();
            let known = if gated {
                "silu, gelu, gelu_pytorch_tanh, gelu_new"
            } else {
                "gelu, gelu_new, gelu_pytorch_tanh, relu2"
            };
            cfg.error(
                &key,
                format!("unsupported activation \"{act_name}\""),
                Some(format!("supported: {known}")),
            );
            if gated {
                MlpKind::Swiglu
            } else {
                MlpKind::Gelu
            }
        }
    };
    let intermediate = match family {
        Family::Gpt2 => cfg.size("ffn.hidden", &["n_inner"], hidden.saturating_mul(4)),
        Family::Falcon => cfg.size("ffn.hidden", &["ffn_hidden_size"], hidden.saturating_mul(4)),
        _ => cfg.size(
            "ffn.hidden",
            &["intermediate_size"],
            d.intermediate.unwrap_or(hidden.saturating_mul(4)),
        ),
    };

    // Biases.
    let (qkv_bias, out_bias, mlp_bias) = match family {
        Family::Gpt2 | Family::Phi => (true, true, true),
        Family::GptNeox => {
            let b = cfg.flag("attention.qkv_bias", "attention_bias", true);
            (b, b, true)
        }
        Family::Falcon => {
            let b = cfg.flag("attention.qkv_bias", "bias", false);
            (b, b, b)
        }
        Family::Qwen2 => (true, false, false),
        // transformers 5 names the switch; earlier versions always use q/k/v biases.
        Family::Qwen2Moe => (
            cfg.flag("attention.qkv_bias", "qkv_bias", true),
            false,
            false,
        ),
        Family::Mistral | Family::Mixtral | Family::Phi3 => (false, false, false),
        _ => {
            let b = cfg.flag("attention.qkv_bias", "attention_bias", false);
            let m = if matches!(family, Family::Llama) {
                cfg.flag("ffn.bias", "mlp_bias", false)
            } else {
                false
            };
            (b, b, m)
        }
    };

    // Attention scale.
    let base_scale = match family {
        Family::Gemma2 | Family::Gemma3Text => {
            let q = cfg.float(
                "attention.scale",
                &["query_pre_attn_scalar"],
                head_dim as f64,
            );
            if q <= 0.0 {
                cfg.error(
                    "query_pre_attn_scalar",
                    format!("must be positive, found {q}"),
                    None,
                );
                1.0
            } else {
                1.0 / q.sqrt()
            }
        }
        Family::Gpt2 if !cfg.flag("attention.scale", "scale_attn_weights", true) => 1.0,
        _ => 1.0 / (head_dim as f64).sqrt(),
    };
    let scale_by_layer =
        gpt2 && cfg.flag("attention.scale", "scale_attn_by_inverse_layer_idx", false);

    // Softcaps.
    let (attn_softcap, logit_softcap) = match family {
        Family::Gemma2 | Family::Gemma3Text => {
            let attn_default = if family == Family::Gemma2 {
                Some(50.0)
            } else {
                None
            };
            let final_default = if family == Family::Gemma2 {
                Some(30.0)
            } else {
                None
            };
            let attn = optional_float_with_default(
                cfg,
                "attention.softcap",
                "attn_logit_softcapping",
                attn_default,
            );
            let logits = optional_float_with_default(
                cfg,
                "logits.softcap",
                "final_logit_softcapping",
                final_default,
            );
            (attn, logits)
        }
        _ => (None, None),
    };

    // qk-norm.
    let qk_norm = match family {
        Family::Qwen3 | Family::Qwen3Moe => Some(QkNorm {
            norm: rms,
            scope: QkNormScope::Head,
        }),
        Family::Gemma3Text => Some(QkNorm {
            norm,
            scope: QkNormScope::Head,
        }),
        Family::Olmo2 => Some(QkNorm {
            norm: rms,
            scope: QkNormScope::Full,
        }),
        Family::Phi if cfg.flag("attention.qk_norm", "qk_layernorm", false) => Some(QkNorm {
            norm: layer_norm,
            scope: QkNormScope::Head,
        }),
        _ => None,
    };

    // Block structure.
    let (placement, parallel, shared_norm) = match family {
        Family::Gemma2 | Family::Gemma3Text => (NormPlacement::Sandwich, false, false),
        Family::Olmo2 => (NormPlacement::Post, false, false),
        Family::Phi => (NormPlacement::Pre, true, true),
        Family::GptNeox => {
            let p = cfg.flag("block.parallel_residual", "use_parallel_residual", true);
            (NormPlacement::Pre, p, false)
        }
        Family::Falcon => {
            let new_arch = cfg.flag("", "new_decoder_architecture", false);
            if new_arch {
                let lns = cfg
                    .opt_u64("block.shared_norm", "num_ln_in_parallel_attn")
                    .unwrap_or(2);
                if lns != 1 && lns != 2 {
                    cfg.error(
                        "num_ln_in_parallel_attn",
                        format!("must be 1 or 2, found {lns}"),
                        None,
                    );
                }
                (NormPlacement::Pre, true, lns == 1)
            } else {
                let p = cfg.flag("block.parallel_residual", "parallel_attn", true);
                (NormPlacement::Pre, p, p)
            }
        }
        _ => (NormPlacement::Pre, false, false),
    };
    let block = Block {
        norm,
        placement,
        parallel_residual: parallel,
        shared_norm,
    };

    if family == Family::Falcon && cfg.flag("", "apply_residual_connection_post_layernorm", false) {
        cfg.error(
            "apply_residual_connection_post_layernorm",
            "a residual taken after the layer norm is not supported".into(),
            Some("set it to false (every released Falcon model uses false)".into()),
        );
    }

    // Positions.
    let alibi = family == Family::Falcon && cfg.flag("position", "alibi", false);
    let fraction = rotary_fraction(cfg, family);
    let (rope_full, rope_sliding) = rope_settings(cfg, family, d.rope_theta, context);
    let rotary_dims = (head_dim as f64 * fraction) as u64;
    let make_rope = |r: &RopeCfg| {
        Position::Rope(Rope {
            theta: r.theta,
            fraction,
            rotary_dims,
            style: RopeStyle::HalfSplit,
            scaling: r.scaling.clone(),
        })
    };
    if let RopeScaling::Longrope {
        short_factor,
        long_factor,
        ..
    } = &rope_full.scaling
        && (short_factor.len() as u64 != rotary_dims / 2
            || long_factor.len() as u64 != rotary_dims / 2)
    {
        let key = cfg
            .origins
            .get("position.scaling")
            .cloned()
            .unwrap_or_else(|| "rope_scaling".into());
        cfg.error(
            &key,
            format!(
                "longrope needs {} short and long factors (rotary dims / 2), found {} and {}",
                rotary_dims / 2,
                short_factor.len(),
                long_factor.len()
            ),
            None,
        );
    }

    // Sliding windows: which layers slide, and how far.
    let sliding = sliding_layers(cfg, family, n_layers);

    // MoE.
    let moe_plan = moe_settings(cfg, family, activation, intermediate, n_layers);

    if !cfg.diags.is_empty() {
        return None;
    }

    // Cap sizes before allocating a row per layer.
    if n_layers > crate::check::MAX_LAYERS {
        cfg.error(
            "num_hidden_layers",
            format!(
                "{n_layers} layers is more than the {} supported",
                crate::check::MAX_LAYERS
            ),
            None,
        );
        return None;
    }

    let mlp = Mlp {
        activation,
        hidden: intermediate,
        bias: mlp_bias,
    };
    let mut layers = Vec::with_capacity(n_layers as usize);
    for i in 0..n_layers {
        let window = sliding.window(i);
        let position = if alibi {
            Position::Alibi
        } else if gpt2 {
            Position::Learned
        } else if window.is_some() && sliding.separate_rope {
            make_rope(&rope_sliding)
        } else {
            make_rope(&rope_full)
        };
        let scale = if scale_by_layer {
            base_scale / (i + 1) as f64
        } else {
            base_scale
        };
        let ffn = match &moe_plan {
            Some(plan) if plan.is_moe_layer(i) => Ffn::Moe(plan.moe),
            _ => Ffn::Mlp(mlp),
        };
        layers.push(Layer {
            index: i,
            attention: Attention {
                heads,
                kv_heads,
                head_dim,
                qkv_bias,
                out_bias,
                qk_norm,
                softcap: attn_softcap,
                scale,
                window,
            },
            position,
            block,
            ffn,
            checkpoint: LayerCheckpoint::Auto,
        });
    }

    let lm_bias = family == Family::Phi;
    let scale_sqrt = family.is_gemma();
    let weights = WeightLayout {
        naming: match family {
            Family::Gpt2 => Naming::Gpt2,
            Family::GptNeox => Naming::GptNeox,
            Family::Falcon => Naming::Falcon,
            Family::Phi => Naming::Phi,
            _ => Naming::Llama,
        },
        qkv: match family {
            Family::Gpt2 | Family::Phi3 => QkvLayout::Fused,
            Family::GptNeox => QkvLayout::FusedPerHead,
            Family::Falcon => {
                if kv_heads == 1 && heads > 1 && !cfg.flag("", "new_decoder_architecture", false) {
                    QkvLayout::Fused
                } else {
                    QkvLayout::FusedPerHead
                }
            }
            _ => QkvLayout::Separate,
        },
        fused_gate_up: family == Family::Phi3,
    };
    cfg.origin("name", "_name_or_path");
    // Fallbacks for derived IR fields, so that check issues point at the field they derive from.
    for (ir, from) in [
        ("embedding.scale", "d_model"),
        ("attention.scale", "attention.head_dim"),
        ("block.norm", "block.norm.eps"),
        ("final_norm", "block.norm.eps"),
        ("ffn.shared", "ffn.shared.hidden"),
        ("ffn.expert", "ffn.expert.hidden"),
    ] {
        if let Some(key) = cfg.origins.get(from).cloned() {
            cfg.origin(ir, &key);
        }
    }
    let name = spec_name(cfg, file, family);
    Some(ModelSpec {
        name,
        vocab,
        vocab_padded: vocab,
        vocab_pad_multiple: 1,
        d_model: hidden,
        n_layers,
        context,
        dropout,
        embedding: Embedding {
            tied,
            scale: if scale_sqrt {
                (hidden as f64).sqrt()
            } else {
                1.0
            },
            scale_expr: if scale_sqrt {
                ScaleExpr::SqrtDModel
            } else {
                ScaleExpr::Literal
            },
            learned_positions: gpt2,
        },
        final_norm: Some(norm),
        logits: Logits {
            softcap: logit_softcap,
            bias: lm_bias,
        },
        weights,
        checkpoint: CheckpointGlobal::default(),
        layers,
    })
}

/// A float that may be present, null (off), or absent (the class default).
fn optional_float_with_default(
    cfg: &mut Cfg<'_>,
    ir: &str,
    key: &str,
    default: Option<f64>,
) -> Option<f64> {
    cfg.origin(ir, key);
    match cfg.root.get(key) {
        None => default,
        Some(m) if m.value.is_null() => None,
        Some(_) => {
            let v = cfg.opt_float(ir, key)?;
            if v <= 0.0 {
                cfg.error(
                    key,
                    format!("softcap must be positive, found {v}"),
                    Some("use null to turn it off".into()),
                );
                return None;
            }
            Some(v)
        }
    }
}

/// Maps an HF activation name onto the MLP structure.
pub(crate) fn activation_kind(name: &str, gated: bool) -> Option<MlpKind> {
    Some(match (name, gated) {
        ("silu" | "swish", true) => MlpKind::Swiglu,
        ("gelu", true) => MlpKind::Geglu,
        ("gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh", true) => MlpKind::GegluTanh,
        ("gelu", false) => MlpKind::Gelu,
        ("gelu_new" | "gelu_pytorch_tanh" | "gelu_tanh", false) => MlpKind::GeluTanh,
        ("relu2", false) => MlpKind::ReluSquared,
        _ => return None,
    })
}

/// The fraction of head_dim that is rotated.
fn rotary_fraction(cfg: &mut Cfg<'_>, family: Family) -> f64 {
    let default = if family == Family::Phi { 0.5 } else { 1.0 };
    let mut keys: Vec<&str> = vec!["partial_rotary_factor"];
    if family == Family::GptNeox {
        keys.push("rotary_pct");
    }
    let mut fraction = default;
    let mut key_used = "partial_rotary_factor".to_string();
    if let Some((key, _)) = cfg.find(&keys) {
        key_used = key.to_string();
        fraction = cfg.float("position.fraction", &keys, default);
    } else if let Some(m) = cfg.root.get("rope_parameters")
        && let Some(p) = m.value.get("partial_rotary_factor")
    {
        key_used = "rope_parameters.partial_rotary_factor".into();
        cfg.origin("position.fraction", "rope_parameters");
        let v = p.value.clone();
        fraction = cfg.float_value(&key_used, &v).unwrap_or(default);
    }
    cfg.origin("position.fraction", &key_used);
    cfg.origin("position.rotary_dims", &key_used);
    if !(fraction > 0.0 && fraction <= 1.0) {
        cfg.error(
            &key_used,
            format!("rotary fraction must be in (0, 1], found {fraction}"),
            None,
        );
        return default;
    }
    fraction
}

/// Reads RoPE theta and scaling: (full-attention layers, sliding-window layers).
fn rope_settings(
    cfg: &mut Cfg<'_>,
    family: Family,
    default_theta: f64,
    context: u64,
) -> (RopeCfg, RopeCfg) {
    let theta_keys: &[&str] = if family == Family::GptNeox {
        &["rope_theta", "rotary_emb_base"]
    } else {
        &["rope_theta"]
    };
    let local_default = 10000.0;
    if let Some(m) = cfg.root.get("rope_parameters")
        && !m.value.is_null()
    {
        cfg.origin("position", "rope_parameters");
        let params = m.value.clone();
        if params.get("full_attention").is_some() || params.get("sliding_attention").is_some() {
            let full = match params.get("full_attention") {
                Some(f) => rope_dict(
                    cfg,
                    "rope_parameters.full_attention",
                    &f.value,
                    default_theta,
                    context,
                ),
                None => RopeCfg {
                    theta: default_theta,
                    scaling: RopeScaling::None,
                },
            };
            let sliding = match params.get("sliding_attention") {
                Some(s) => rope_dict(
                    cfg,
                    "rope_parameters.sliding_attention",
                    &s.value,
                    local_default,
                    context,
                ),
                None => full.clone(),
            };
            return (full, sliding);
        }
        let full = rope_dict(cfg, "rope_parameters", &params, default_theta, context);
        let sliding = if family == Family::Gemma3Text {
            RopeCfg {
                theta: cfg.float("position.theta", &["rope_local_base_freq"], local_default),
                scaling: RopeScaling::None,
            }
        } else {
            full.clone()
        };
        return (full, sliding);
    }
    let theta = cfg.float("position.theta", theta_keys, default_theta);
    if theta <= 0.0 {
        let key = cfg
            .origins
            .get("position.theta")
            .cloned()
            .unwrap_or_default();
        cfg.error(
            &key,
            format!("rope theta must be positive, found {theta}"),
            None,
        );
    }
    let scaling = match cfg.root.get("rope_scaling") {
        Some(m) if !m.value.is_null() => {
            cfg.origin("position.scaling", "rope_scaling");
            let v = m.value.clone();
            rope_scaling(cfg, "rope_scaling", &v, context)
        }
        _ => RopeScaling::None,
    };
    let full = RopeCfg { theta, scaling };
    let sliding = if family == Family::Gemma3Text {
        RopeCfg {
            theta: cfg.float("position.theta", &["rope_local_base_freq"], local_default),
            scaling: RopeScaling::None,
        }
    } else {
        full.clone()
    };
    (full, sliding)
}

/// One transformers-5 `rope_parameters` dict: theta plus scaling.
fn rope_dict(
    cfg: &mut Cfg<'_>,
    path: &str,
    v: &JsonValue,
    default_theta: f64,
    context: u64,
) -> RopeCfg {
    if let Err(e) = v.as_object() {
        cfg.error(path, e.message, None);
        return RopeCfg {
            theta: default_theta,
            scaling: RopeScaling::None,
        };
    }
    let theta = match v.get("rope_theta") {
        Some(m) => {
            let key = format!("{path}.rope_theta");
            let val = m.value.clone();
            cfg.float_value(&key, &val).unwrap_or(default_theta)
        }
        None => default_theta,
    };
    if theta <= 0.0 {
        cfg.error(
            &format!("{path}.rope_theta"),
            format!("rope theta must be positive, found {theta}"),
            None,
        );
    }
    RopeCfg {
        theta,
        scaling: rope_scaling(cfg, path, v, context),
    }
}

/// A `rope_scaling` (or `rope_parameters`) dict's scaling variant.
fn rope_scaling(cfg: &mut Cfg<'_>, path: &str, v: &JsonValue, context: u64) -> RopeScaling {
    if let Err(e) = v.as_object() {
        cfg.error(path, e.message, None);
        return RopeScaling::None;
    }
    let kind = match v.get("rope_type").or_else(|| v.get("type")) {
        Some(m) => match m.value.as_str() {
            Ok(s) => s.to_string(),
            Err(e) => {
                cfg.error(&format!("{path}.{}", m.key), e.message, None);
                return RopeScaling::None;
            }
        },
        None => "default".into(),
    };
    let num = |cfg: &mut Cfg<'_>, key: &str, default: Option<f64>| -> f64 {
        match v.get(key) {
            Some(m) if !m.value.is_null() => {
                let field = format!("{path}.{key}");
                let val = m.value.clone();
                cfg.float_value(&field, &val).unwrap_or(1.0)
            }
            _ => match default {
                Some(d) => d,
                None => {
                    cfg.error(
                        path,
                        format!("rope scaling \"{kind}\" needs \"{key}\""),
                        None,
                    );
                    1.0
                }
            },
        }
    };
    let original = |cfg: &mut Cfg<'_>, top_default: u64| -> u64 {
        match v.get("original_max_position_embeddings") {
            Some(m) if !m.value.is_null() => match m.value.as_u64() {
                Ok(n) if n > 0 => n,
                Ok(_) => {
                    cfg.error(
                        &format!("{path}.original_max_position_embeddings"),
                        "must be positive".into(),
                        None,
                    );
                    1
                }
                Err(e) => {
                    cfg.error(
                        &format!("{path}.original_max_position_embeddings"),
                        e.message,
                        None,
                    );
                    1
                }
            },
            _ => top_default,
        }
    };
    let top_original = cfg
        .opt_u64("position.scaling", "original_max_position_embeddings")
        .unwrap_or(context);
    match kind.as_str() {
        "default" | "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num(cfg, "factor", None),
        },
        "dynamic" => RopeScaling::DynamicNtk {
            factor: num(cfg, "factor", None),
            original_context: original(cfg, top_original),
        },
        "yarn" => {
            let factor = num(cfg, "factor", None);
            let default_attention = if factor > 1.0 {
                0.1 * factor.ln() + 1.0
            } else {
                1.0
            };
            RopeScaling::Yarn {
                factor,
                original_context: original(cfg, top_original),
                beta_fast: num(cfg, "beta_fast", Some(32.0)),
                beta_slow: num(cfg, "beta_slow", Some(1.0)),
                attention_factor: num(cfg, "attention_factor", Some(default_attention)),
            }
        }
        "llama3" => RopeScaling::Llama3 {
            factor: num(cfg, "factor", None),
            low_freq_factor: num(cfg, "low_freq_factor", None),
            high_freq_factor: num(cfg, "high_freq_factor", None),
            original_context: original(cfg, top_original),
        },
        "longrope" | "su" => {
            let list = |cfg: &mut Cfg<'_>, key: &str| -> Vec<f64> {
                let field = format!("{path}.{key}");
                match v.get(key) {
                    None => {
                        cfg.error(path, format!("longrope needs \"{key}\""), None);
                        Vec::new()
                    }
                    Some(m) => match m.value.as_array() {
                        Ok(items) => items
                            .iter()
                            .map(|it| cfg.float_value(&field, it).unwrap_or(1.0))
                            .collect(),
                        Err(e) => {
                            cfg.error(&field, e.message, None);
                            Vec::new()
                        }
                    },
                }
            };
            let short_factor = list(cfg, "short_factor");
            let long_factor = list(cfg, "long_factor");
            let original_context = original(cfg, top_original);
            let ratio = context as f64 / original_context as f64;
            let default_attention = if ratio <= 1.0 {
                1.0
            } else {
                (1.0 + ratio.ln() / (original_context as f64).ln()).sqrt()
            };
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_context,
                attention_factor: num(cfg, "attention_factor", Some(default_attention)),
            }
        }
        other => {
            let key = v
                .get("rope_type")
                .or_else(|| v.get("type"))
                .map(|m| m.key.clone())
                .unwrap_or_default();
            cfg.error(
                &format!("{path}.{key}"),
                format!("unsupported rope scaling \"{other}\""),
                Some("supported: default, linear, dynamic, yarn, llama3, longrope".into()),
            );
            RopeScaling::None
        }
    }
}

/// Which layers use a sliding window, and its size.
struct Sliding {
    window: Option<u64>,
    /// `layer_types[i]` is sliding.
    per_layer: Vec<bool>,
    /// Sliding layers use their own RoPE settings (Gemma-3's local base frequency).
    separate_rope: bool,
}

impl Sliding {
    fn window(&self, i: u64) -> Option<u64> {
        if self.per_layer.get(i as usize).copied().unwrap_or(false) {
            self.window
        } else {
            None
        }
    }
}

fn sliding_layers(cfg: &mut Cfg<'_>, family: Family, n_layers: u64) -> Sliding {
    let count = n_layers.min(crate::check::MAX_LAYERS) as usize;
    let none = Sliding {
        window: None,
        per_layer: Vec::new(),
        separate_rope: false,
    };
    let window_default = match family {
        Family::Gemma2 | Family::Gemma3Text => Some(4096),
        f if f.qwen_windows() => Some(4096),
        _ => None,
    };
    let supports = matches!(
        family,
        Family::Mistral | Family::Mixtral | Family::Phi3 | Family::Gemma2 | Family::Gemma3Text
    ) || family.qwen_windows();
    if !supports {
        return none;
    }
    let use_window = if family.qwen_windows() {
        cfg.flag("attention.window", "use_sliding_window", false)
    } else {
        true
    };
    if !use_window {
        // Qwen ignores `sliding_window` (transformers 5 may write 0 there) unless switched on.
        cfg.origin("attention.window", "use_sliding_window");
        return none;
    }
    let window = match cfg.root.get("sliding_window") {
        Some(m) if m.value.is_null() => None,
        Some(_) => cfg.opt_u64("attention.window", "sliding_window"),
        None => window_default,
    };
    cfg.origin("attention.window", "sliding_window");
    if window == Some(0) {
        cfg.error(
            "sliding_window",
            "a sliding window must be positive".into(),
            Some("use null for no window".into()),
        );
        return none;
    }
    // Explicit layer_types (transformers ≥ 4.53 writes them).
    if let Some(m) = cfg.root.get("layer_types")
        && !m.value.is_null()
    {
        cfg.origins
            .insert("attention.window".into(), "layer_types".into());
        let items = match m.value.as_array() {
            Ok(items) => items,
            Err(e) => {
                cfg.error("layer_types", e.message, None);
                return none;
            }
        };
        if items.len() != count {
            cfg.error(
                "layer_types",
                format!("{} layer types for {} layers", items.len(), n_layers),
                Some("give one entry per layer".into()),
            );
            return none;
        }
        let mut per_layer = Vec::with_capacity(count);
        for item in items {
            match item.as_str() {
                Ok("sliding_attention") => per_layer.push(true),
                Ok("full_attention") => per_layer.push(false),
                Ok(other) => {
                    cfg.diags.push(Diagnostic {
                        file: cfg.file.to_string(),
                        span: item.span.clone(),
                        field: "layer_types".into(),
                        message: format!("unknown layer type \"{other}\""),
                        hint: Some("use \"full_attention\" or \"sliding_attention\"".into()),
                    });
                    return none;
                }
                Err(e) => {
                    cfg.diags.push(Diagnostic {
                        file: cfg.file.to_string(),
                        span: item.span.clone(),
                        field: "layer_types".into(),
                        message: e.message,
                        hint: None,
                    });
                    return none;
                }
            }
        }
        return Sliding {
            window,
            per_layer,
            separate_rope: family == Family::Gemma3Text,
        };
    }
    let per_layer: Vec<bool> = match family {
        Family::Gemma2 => (0..count).map(|i| (i + 1) % 2 != 0).collect(),
        Family::Gemma3Text => {
            let pattern = cfg
                .opt_u64("attention.window", "sliding_window_pattern")
                .or_else(|| cfg.opt_u64("attention.window", "_sliding_window_pattern"))
                .unwrap_or(6);
            if pattern == 0 {
                cfg.error("sliding_window_pattern", "must be positive".into(), None);
                return none;
            }
            (0..count)
                .map(|i| !(i as u64 + 1).is_multiple_of(pattern))
                .collect()
        }
        f if f.qwen_windows() => {
            let from = cfg
                .opt_u64("attention.window", "max_window_layers")
                .unwrap_or(28);
            (0..count).map(|i| i as u64 >= from).collect()
        }
        _ => vec![true; count],
    };
    Sliding {
        window,
        per_layer,
        separate_rope: family == Family::Gemma3Text,
    }
}

/// MoE settings and which layers are sparse.
struct MoePlan {
    moe: Moe,
    sparse_step: u64,
    mlp_only: std::collections::BTreeSet<u64>,
}

impl MoePlan {
    fn is_moe_layer(&self, i: u64) -> bool {
        !self.mlp_only.contains(&i) && (i + 1).is_multiple_of(self.sparse_step)
    }
}

fn moe_settings(
    cfg: &mut Cfg<'_>,
    family: Family,
    activation: MlpKind,
    intermediate: u64,
    _n: u64,
) -> Option<MoePlan> {
    match family {
        Family::Mixtral => {
            let experts = cfg.size("ffn.experts", &["num_local_experts", "num_experts"], 8);
            let top_k = cfg.size("ffn.top_k", &["num_experts_per_tok"], 2);
            let aux_loss = cfg.float("ffn.aux_loss", &["router_aux_loss_coef"], 0.001);
            Some(MoePlan {
                moe: Moe {
                    experts,
                    top_k,
                    expert: Mlp {
                        activation,
                        hidden: intermediate,
                        bias: false,
                    },
                    router: RouterOrder::SoftmaxTopk,
                    renormalize: true,
                    shared: None,
                    aux_loss,
                },
                sparse_step: 1,
                mlp_only: Default::default(),
            })
        }
        Family::Qwen2Moe | Family::Qwen3Moe => {
            let qwen2 = family == Family::Qwen2Moe;
            let experts = cfg.size(
                "ffn.experts",
                &["num_experts", "num_local_experts"],
                if qwen2 { 60 } else { 128 },
            );
            let top_k = cfg.size(
                "ffn.top_k",
                &["num_experts_per_tok"],
                if qwen2 { 4 } else { 8 },
            );
            let hidden = cfg.size(
                "ffn.expert.hidden",
                &["moe_intermediate_size"],
                if qwen2 { 1408 } else { 768 },
            );
            let renormalize = cfg.flag("ffn.renormalize", "norm_topk_prob", false);
            let aux_loss = cfg.float("ffn.aux_loss", &["router_aux_loss_coef"], 0.001);
            let sparse_step = cfg.size("ffn", &["decoder_sparse_step"], 1);
            let shared = if qwen2 {
                let h = cfg.size(
                    "ffn.shared.hidden",
                    &["shared_expert_intermediate_size"],
                    5632,
                );
                Some(SharedExperts {
                    count: 1,
                    hidden: h,
                    gate: true,
                })
            } else {
                None
            };
            let mut mlp_only = std::collections::BTreeSet::new();
            if let Some(m) = cfg.root.get("mlp_only_layers")
                && !m.value.is_null()
            {
                match m.value.as_array() {
                    Ok(items) => {
                        for item in items {
                            match item.as_u64() {
                                Ok(n) => {
                                    mlp_only.insert(n);
                                }
                                Err(e) => cfg.diags.push(Diagnostic {
                                    file: cfg.file.to_string(),
                                    span: item.span.clone(),
                                    field: "mlp_only_layers".into(),
                                    message: e.message,
                                    hint: Some("list layer indices".into()),
                                }),
                            }
                        }
                    }
                    Err(e) => cfg.error("mlp_only_layers", e.message, None),
                }
            }
            Some(MoePlan {
                moe: Moe {
                    experts,
                    top_k,
                    expert: Mlp {
                        activation,
                        hidden,
                        bias: false,
                    },
                    router: RouterOrder::SoftmaxTopk,
                    renormalize,
                    shared,
                    aux_loss,
                },
                sparse_step,
                mlp_only,
            })
        }
        _ => None,
    }
}

/// The spec's name: `_name_or_path`'s last component, else the folder holding config.json, else
/// the file stem, else the model_type; in snake_case.
fn spec_name(cfg: &Cfg<'_>, file: &str, family: Family) -> String {
    let from_config = cfg
        .root
        .get("_name_or_path")
        .and_then(|m| m.value.as_str().ok())
        .map(|s| s.to_string());
    let candidate = from_config
        .as_deref()
        .and_then(|s| {
            s.trim_end_matches('/')
                .rsplit('/')
                .next()
                .map(str::to_string)
        })
        .or_else(|| {
            let path = std::path::Path::new(file);
            let stem = path.file_stem()?.to_str()?.to_string();
            if stem == "config" {
                let parent = path.parent()?.file_name()?.to_str()?.to_string();
                Some(parent)
            } else {
                Some(stem)
            }
        })
        .unwrap_or_default();
    let name = snake_name(&candidate);
    if name.is_empty() {
        family.model_type().to_string()
    } else {
        name
    }
}

/// Lowercase ASCII alphanumerics separated by single underscores.
pub(crate) fn snake_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}
