//! Which layers attend through a sliding window, and how wide: `sliding_window` with
//! `layer_types`, `sliding_window_pattern`, `use_sliding_window` / `max_window_layers`.

use super::*;

/// Which layers use a sliding window, and its size.
pub(super) struct Sliding {
    pub(super) window: Option<u64>,
    /// `layer_types[i]` is sliding.
    pub(super) per_layer: Vec<bool>,
    /// Sliding layers use their own RoPE settings (Gemma-3's local base frequency).
    pub(super) separate_rope: bool,
}

impl Sliding {
    pub(super) fn window(&self, i: u64) -> Option<u64> {
        if self.per_layer.get(i as usize).copied().unwrap_or(false) {
            self.window
        } else {
            None
        }
    }
}

pub(super) fn sliding_layers(cfg: &mut Cfg<'_>, family: Family, n_layers: u64) -> Sliding {
    let count = n_layers.min(crate::check::MAX_LAYERS) as usize;
    let none = Sliding {
        window: None,
        per_layer: Vec::new(),
        separate_rope: false,
    };
    // transformers' class defaults (MistralConfig, Gemma2Config, Gemma3TextConfig: 4096; Mixtral
    // and Phi-3: none), checked against tests/fixtures/config_defaults.json.
    let window_default = match family {
        Family::Mistral | Family::Gemma2 | Family::Gemma3Text => Some(4096),
        f if f.qwen_windows() => Some(4096),
        Family::GptOss => Some(128),
        _ => None,
    };
    let supports = matches!(
        family,
        Family::Mistral
            | Family::Mixtral
            | Family::Phi3
            | Family::Gemma2
            | Family::Gemma3Text
            | Family::GptOss
            | Family::SmolLm3
    ) || family.qwen_windows();
    if !supports {
        return none;
    }
    let use_window = if family.qwen_windows() || family == Family::SmolLm3 {
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
        // GPT-OSS: sliding, full, sliding, ...
        Family::Gemma2 | Family::GptOss => (0..count).map(|i| (i + 1) % 2 != 0).collect(),
        // SmolLM3 without `layer_types`: its NoPE layers slide.
        Family::SmolLm3 => {
            let interval = cfg
                .opt_u64("attention.window", "no_rope_layer_interval")
                .unwrap_or(4)
                .max(1);
            (0..count)
                .map(|i| (i as u64 + 1).is_multiple_of(interval))
                .collect()
        }
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
