//! RoPE from a config: the rotated fraction, θ, and the scaling variants (linear, dynamic, YaRN,
//! llama3, longrope), from top-level `rope_theta`/`rope_scaling` or transformers-5
//! `rope_parameters` (one dict, or one per layer type).

use super::*;

/// Per-layer-type RoPE settings.
#[derive(Clone)]
pub(super) struct RopeCfg {
    pub(super) theta: f64,
    pub(super) scaling: RopeScaling,
}

/// The fraction of head_dim that is rotated.
pub(super) fn rotary_fraction(cfg: &mut Cfg<'_>, family: Family) -> f64 {
    // Class defaults: PhiConfig 0.5, GPTNeoXConfig 0.25 (`rotary_pct`), the others 1.
    let default = match family {
        Family::Phi => 0.5,
        Family::GptNeox => 0.25,
        // Glm4MoeConfig sets 0.5 when neither the config nor its rope parameters say.
        Family::Glm4Moe => 0.5,
        _ => 1.0,
    };
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

/// θ of sliding-window layers that do not set their own.
const LOCAL_THETA: f64 = 10000.0;

/// Reads RoPE theta and scaling: (full-attention layers, sliding-window layers).
pub(super) fn rope_settings(
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
                    LOCAL_THETA,
                    context,
                ),
                None => full.clone(),
            };
            return (full, sliding);
        }
        let full = rope_dict(cfg, "rope_parameters", &params, default_theta, context);
        let sliding = sliding_rope(cfg, family, &full);
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
        _ => default_scaling(family),
    };
    let full = RopeCfg { theta, scaling };
    let sliding = sliding_rope(cfg, family, &full);
    (full, sliding)
}

/// The scaling of a config without `rope_scaling` / `rope_parameters`: GptOssConfig's YaRN
/// (factor 32 over 4096 positions, not truncated), none elsewhere.
fn default_scaling(family: Family) -> RopeScaling {
    if family == Family::GptOss {
        RopeScaling::Yarn {
            factor: 32.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 0.1 * 32f64.ln() + 1.0,
            truncate: false,
            mscale: None,
        }
    } else {
        RopeScaling::None
    }
}

/// θ of the sliding-window layers: Gemma-3's own unscaled `rope_local_base_freq`, elsewhere the
/// full layers' settings.
fn sliding_rope(cfg: &mut Cfg<'_>, family: Family, full: &RopeCfg) -> RopeCfg {
    if family == Family::Gemma3Text {
        RopeCfg {
            theta: cfg.float("position.theta", &["rope_local_base_freq"], LOCAL_THETA),
            scaling: RopeScaling::None,
        }
    } else {
        full.clone()
    }
}

/// One transformers-5 `rope_parameters` dict: theta plus scaling.
pub(super) fn rope_dict(
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
pub(super) fn rope_scaling(
    cfg: &mut Cfg<'_>,
    path: &str,
    v: &JsonValue,
    context: u64,
) -> RopeScaling {
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
            // DeepSeek's `mscale` / `mscale_all_dim` (transformers reads them only together).
            let opt = |cfg: &mut Cfg<'_>, key: &str| match v.get(key) {
                Some(m) if !m.value.is_null() => Some(num(cfg, key, Some(0.0))),
                _ => None,
            };
            let (m, m_all) = (opt(cfg, "mscale"), opt(cfg, "mscale_all_dim"));
            let mscale = match (m, m_all) {
                (None, None) => None,
                (m, all) => Some([m.unwrap_or(0.0), all.unwrap_or(0.0)]),
            };
            let default_attention = yarn_attention_factor(factor, mscale);
            RopeScaling::Yarn {
                factor,
                original_context: original(cfg, top_original),
                beta_fast: num(cfg, "beta_fast", Some(32.0)),
                beta_slow: num(cfg, "beta_slow", Some(1.0)),
                attention_factor: num(cfg, "attention_factor", Some(default_attention)),
                truncate: match v.get("truncate") {
                    Some(m) if !m.value.is_null() => match m.value.as_bool() {
                        Ok(b) => b,
                        Err(e) => {
                            cfg.error(&format!("{path}.truncate"), e.message, None);
                            true
                        }
                    },
                    _ => true,
                },
                mscale,
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
