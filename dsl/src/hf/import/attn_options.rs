//! The attention options of the newest families: which layers skip RoPE (`no_rope_layers`,
//! Llama 4 and SmolLM3), Llama 4's chunked attention, L2 qk-norm and query temperature, and
//! GPT-OSS's attention sinks.

use super::*;

/// Per-layer attention choices read from a config (all off for the older families).
pub(super) struct AttnOptions {
    /// `rope[i]`: layer `i` rotates queries and keys (`None`: every layer does).
    pub(super) rope: Option<Vec<bool>>,
    /// `chunked[i]`: layer `i` attends within chunks of `chunk` positions.
    pub(super) chunked: Vec<bool>,
    pub(super) chunk: Option<u64>,
    /// Llama 4's weightless L2 norm of the rotated queries and keys, on RoPE layers.
    pub(super) l2_qk_norm: Option<QkNorm>,
    /// Llama 4's query temperature, on NoPE layers.
    pub(super) temperature: Option<QueryTemperature>,
    /// GPT-OSS's per-head sink logits, on every layer.
    pub(super) sinks: bool,
}

impl AttnOptions {
    /// Whether layer `i` uses RoPE.
    pub(super) fn uses_rope(&self, i: u64) -> bool {
        self.rope
            .as_ref()
            .is_none_or(|r| r.get(i as usize).copied().unwrap_or(true))
    }

    /// Layer `i`'s chunk.
    pub(super) fn chunk(&self, i: u64) -> Option<u64> {
        self.chunked
            .get(i as usize)
            .copied()
            .unwrap_or(false)
            .then_some(self.chunk)
            .flatten()
    }
}

pub(super) fn attn_options(
    cfg: &mut Cfg<'_>,
    family: Family,
    n_layers: u64,
    eps: f64,
) -> AttnOptions {
    let count = n_layers.min(crate::check::MAX_LAYERS) as usize;
    let mut out = AttnOptions {
        rope: None,
        chunked: Vec::new(),
        chunk: None,
        l2_qk_norm: None,
        temperature: None,
        sinks: family == Family::GptOss,
    };
    if !matches!(family, Family::Llama4Text | Family::SmolLm3) {
        return out;
    }
    let rope = no_rope_layers(cfg, count);
    if family == Family::Llama4Text {
        // `attention_chunk_size` (class default 8192; null: no chunking) on the layers whose
        // `layer_types` entry is "chunked_attention" (by default the RoPE layers).
        out.chunk = match cfg.root.get("attention_chunk_size") {
            Some(m) if m.value.is_null() => None,
            Some(_) => cfg.opt_u64("attention.chunk", "attention_chunk_size"),
            None => Some(8192),
        };
        cfg.origin("attention.chunk", "attention_chunk_size");
        out.chunked = match llama4_layer_types(cfg, count) {
            Some(types) => types,
            None => rope.clone(),
        };
        if cfg.flag("attention.qk_norm", "use_qk_norm", true) {
            out.l2_qk_norm = Some(QkNorm {
                norm: Norm {
                    kind: NormKind::Rms,
                    eps,
                    offset: 0.0,
                    weight: false,
                    bias: false,
                },
                scope: QkNormScope::Head,
                after_rope: true,
            });
        }
        if cfg.flag("attention.temperature", "attn_temperature_tuning", true) {
            let floor = cfg.size("attention.temperature.floor", &["floor_scale"], 8192);
            let scale = cfg.float("attention.temperature.scale", &["attn_scale"], 0.1);
            out.temperature = Some(QueryTemperature { floor, scale });
        }
    }
    out.rope = Some(rope);
    out
}

/// `no_rope_layers` (1: RoPE, 0: NoPE, one entry per layer at least), else a NoPE layer every
/// `no_rope_layer_interval` layers (class default 4): layers 3, 7, 11, ...
fn no_rope_layers(cfg: &mut Cfg<'_>, count: usize) -> Vec<bool> {
    cfg.origin("position", "no_rope_layers");
    if let Some(m) = cfg.root.get("no_rope_layers")
        && !m.value.is_null()
    {
        let items = match m.value.as_array() {
            Ok(items) => items.to_vec(),
            Err(e) => {
                cfg.error("no_rope_layers", e.message, None);
                return vec![true; count];
            }
        };
        // transformers uses the list only when it is non-empty.
        if !items.is_empty() {
            if items.len() < count {
                cfg.error(
                    "no_rope_layers",
                    format!("{} entries for {count} layers", items.len()),
                    Some("give one entry per layer: 1 for a RoPE layer, 0 for a NoPE layer".into()),
                );
                return vec![true; count];
            }
            let mut out = Vec::with_capacity(count);
            for item in items.iter().take(count) {
                match item.as_u64() {
                    Ok(0) => out.push(false),
                    Ok(1) => out.push(true),
                    _ => {
                        cfg.diags.push(Diagnostic {
                            file: cfg.file.to_string(),
                            span: item.span.clone(),
                            field: "no_rope_layers".into(),
                            message: "each entry must be 1 (RoPE) or 0 (NoPE)".into(),
                            hint: Some("transformers reads a 1 as \"this layer uses RoPE\"".into()),
                        });
                        return vec![true; count];
                    }
                }
            }
            return out;
        }
    }
    let interval = cfg.size("position", &["no_rope_layer_interval"], 4);
    (0..count)
        .map(|i| !(i as u64 + 1).is_multiple_of(interval))
        .collect()
}

/// Llama 4's explicit `layer_types`: `chunked_attention` / `full_attention` per layer.
fn llama4_layer_types(cfg: &mut Cfg<'_>, count: usize) -> Option<Vec<bool>> {
    let m = cfg.root.get("layer_types")?;
    if m.value.is_null() {
        return None;
    }
    cfg.origins
        .insert("attention.chunk".into(), "layer_types".into());
    let items = match m.value.as_array() {
        Ok(items) => items.to_vec(),
        Err(e) => {
            cfg.error("layer_types", e.message, None);
            return None;
        }
    };
    if items.len() != count {
        cfg.error(
            "layer_types",
            format!("{} layer types for {count} layers", items.len()),
            Some("give one entry per layer".into()),
        );
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for item in &items {
        match item.as_str() {
            Ok("chunked_attention") => out.push(true),
            Ok("full_attention") => out.push(false),
            other => {
                cfg.diags.push(Diagnostic {
                    file: cfg.file.to_string(),
                    span: item.span.clone(),
                    field: "layer_types".into(),
                    message: match other {
                        Ok(t) => format!("unknown layer type \"{t}\""),
                        Err(e) => e.message,
                    },
                    hint: Some("use \"full_attention\" or \"chunked_attention\"".into()),
                });
                return None;
            }
        }
    }
    Some(out)
}
