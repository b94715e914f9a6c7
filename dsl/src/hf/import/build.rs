//! The IR from a config: model-wide sizes and each layer's attention, position, block and FFN,
//! with each family's behaviour spelled out as named choices.

use super::*;

pub(super) fn build(cfg: &mut Cfg<'_>, family: Family, file: &str) -> Option<ModelSpec> {
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

    // Latent attention (DeepSeek): its own head sizes; transformers' `head_dim` there is the
    // rotary width, not the attention's.
    let mla = mla_settings(cfg, family, heads);
    // head_dim: explicit, the class default, or hidden / heads.
    let head_dim = match cfg.find(&["head_dim"]) {
        _ if mla.is_some() => {
            cfg.origin("attention.head_dim", "qk_nope_head_dim");
            mla.as_ref()
                .map_or(1, |p| p.mla.nope_dim.saturating_add(p.mla.rope_dim))
        }
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
        Family::GptOss => {
            let b = cfg.flag("attention.qkv_bias", "attention_bias", true);
            (b, b, false)
        }
        // GLM-4.5: `attention_bias` is on q/k/v only, never on o_proj.
        Family::Glm4Moe => (
            cfg.flag("attention.qkv_bias", "attention_bias", false),
            false,
            false,
        ),
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
            // The class default is 256 whatever head_dim is (Gemma2Config, Gemma3TextConfig).
            let q = cfg.float("attention.scale", &["query_pre_attn_scalar"], 256.0);
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
            after_rope: false,
        }),
        Family::Gemma3Text => Some(QkNorm {
            norm,
            scope: QkNormScope::Head,
            after_rope: false,
        }),
        Family::Glm4Moe if cfg.flag("attention.qk_norm", "use_qk_norm", false) => Some(QkNorm {
            norm: rms,
            scope: QkNormScope::Head,
            after_rope: false,
        }),
        Family::Olmo2 => Some(QkNorm {
            norm: rms,
            scope: QkNormScope::Full,
            after_rope: false,
        }),
        Family::Phi if cfg.flag("attention.qk_norm", "qk_layernorm", false) => Some(QkNorm {
            norm: layer_norm,
            scope: QkNormScope::Head,
            after_rope: false,
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
    let rotary_dims = (mla.as_ref().map_or(head_dim, |p| p.mla.rope_dim) as f64 * fraction) as u64;
    // Llama 4 rotates (2i, 2i+1) pairs as complex numbers; DeepSeek says per family.
    let style = match &mla {
        Some(plan) => plan.style,
        None if family == Family::Llama4Text => RopeStyle::Interleaved,
        None => RopeStyle::HalfSplit,
    };
    let base_scale = match &mla {
        Some(plan) => {
            cfg.origin("attention.scale", "qk_nope_head_dim");
            mla_scale(&plan.mla, &rope_full.scaling)
        }
        None => base_scale,
    };
    let make_rope = |r: &RopeCfg| {
        Position::Rope(Rope {
            theta: r.theta,
            fraction,
            rotary_dims,
            style,
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

    // NoPE layers, chunks, Llama 4's L2 qk-norm and query temperature, GPT-OSS's sinks.
    let opts = attn_options(cfg, family, n_layers, eps);
    // Llama 4's dense layers have their own width.
    let dense_hidden = if family == Family::Llama4Text {
        cfg.size("ffn.hidden", &["intermediate_size_mlp"], 16384)
    } else {
        intermediate
    };

    // MoE.
    let moe_plan = moe_settings(cfg, family, activation, intermediate, n_layers);
    if moe_plan.is_none() && has_moe_layers(cfg, family, n_layers) {
        cfg.error(
            "model_type",
            format!(
                "the mixture of experts of `{}` is not supported yet",
                family.model_type()
            ),
            Some("only its dense layers can be read for now (Llama 4: \"moe_layers\": [])".into()),
        );
    }

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
        hidden: dense_hidden,
        bias: mlp_bias,
    };
    let mut layers = Vec::with_capacity(n_layers as usize);
    for i in 0..n_layers {
        let window = sliding.window(i);
        let position = if alibi {
            Position::Alibi
        } else if gpt2 {
            Position::Learned
        } else if !opts.uses_rope(i) {
            Position::None
        } else if window.is_some() && sliding.separate_rope {
            make_rope(&rope_sliding)
        } else {
            make_rope(&rope_full)
        };
        let rope_layer = matches!(position, Position::Rope(_));
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
                qk_norm: match opts.l2_qk_norm {
                    Some(l2) => rope_layer.then_some(l2),
                    None => qk_norm,
                },
                softcap: attn_softcap,
                scale,
                window,
                chunk: opts.chunk(i),
                sinks: opts.sinks,
                temperature: opts.temperature.filter(|_| !rope_layer),
                mla: mla.as_ref().map(|p| p.mla),
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
pub(super) fn optional_float_with_default(
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

/// Whether a GPT-OSS or Llama 4 config has MoE layers (every GPT-OSS layer; Llama 4's
/// `moe_layers`, else every `interleave_moe_layer_step`-th layer).
fn has_moe_layers(cfg: &mut Cfg<'_>, family: Family, n_layers: u64) -> bool {
    match family {
        Family::GptOss => true,
        Family::Llama4Text => match cfg.root.get("moe_layers") {
            Some(m) if !m.value.is_null() => m.value.as_array().is_ok_and(|a| !a.is_empty()),
            _ => {
                let step = cfg.opt_u64("ffn", "interleave_moe_layer_step").unwrap_or(1);
                step >= 1 && step <= n_layers
            }
        },
        _ => false,
    }
}
