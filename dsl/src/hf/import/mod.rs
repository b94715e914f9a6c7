//! config.json → [`ModelSpec`].
//!
//! Each family's behaviour (norm offsets, sandwich norms, qk-norm, parallel residuals, routers...) is
//! spelled out as named IR choices; field defaults come from [`super::families`]. Every value read
//! remembers the JSON field it came from, so that problems, whether found while reading or later by
//! the IR checks, point at that field's line.
//!
//! Layout: this file reads the config and places diagnostics; `cfg` reads typed keys, `build`
//! assembles the IR, `rope`, `sliding` and `moe` read those parts of a config.

use std::collections::BTreeMap;
use std::ops::Range;

use super::families::{Defaults, Family};
use super::json_spans::{self, JsonKind, JsonValue};
use crate::diag::{Diagnostic, Issue};
use crate::ir::*;

mod attn_options;
mod build;
mod cfg;
mod mla;
mod moe;
mod rope;
mod sliding;

use attn_options::attn_options;
use build::build;
use mla::{mla_scale, mla_settings};
use moe::moe_settings;
use rope::{RopeCfg, rope_settings, rotary_fraction};
use sliding::sliding_layers;

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
