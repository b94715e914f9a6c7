//! Resolution of one layer's written row: every default filled in, every derived size computed.

use super::*;

pub(super) fn resolve_layer(
    i: u64,
    w: &LayerW,
    d_model: u64,
    context: u64,
    issues: &mut Issues,
) -> Layer {
    let a = &w.attn;
    let heads = match a.heads {
        Some(h) => h,
        None => {
            issues.push(
                "attention.heads",
                Some(i),
                "missing `attention.heads`".into(),
                Some("add `attention { heads N }`".into()),
            );
            1
        }
    };
    let kv_heads = a.kv_heads.unwrap_or(heads);
    let mla = a.mla.clone().flatten().map(|m| Mla {
        q_rank: m.q_rank,
        kv_rank: m.kv_rank,
        nope_dim: m.nope_dim,
        rope_dim: m.rope_dim,
        v_dim: m.v_dim,
        norm: m.norm.map_or(
            Norm {
                kind: NormKind::Rms,
                eps: 1e-6,
                offset: 0.0,
                weight: true,
                bias: false,
            },
            |n| n.resolve(),
        ),
    });
    let head_dim = match a.head_dim {
        // Latent attention's query/key width (check reports a written head_dim that differs).
        Some(hd) if mla.is_none() => hd,
        _ if mla.is_some() => mla.map_or(0, |m| m.nope_dim.saturating_add(m.rope_dim)),
        Some(hd) => hd,
        None if heads == 0 => 0,
        None if !d_model.is_multiple_of(heads) => {
            issues.push(
                "attention.heads",
                Some(i),
                format!("d_model ({d_model}) is not divisible by attention.heads ({heads})"),
                Some(
                    "set `attention.head_dim` explicitly, or choose heads that divide d_model"
                        .into(),
                ),
            );
            1
        }
        None => d_model / heads,
    };
    if let (Some(hd), Some(m)) = (a.head_dim, &mla)
        && hd != m.nope_dim.saturating_add(m.rope_dim)
    {
        issues.push(
            "attention.head_dim",
            Some(i),
            format!(
                "head_dim {hd} differs from latent attention's query/key width nope_dim + rope_dim = {}",
                m.nope_dim.saturating_add(m.rope_dim)
            ),
            Some("leave `head_dim` out with `mla(...)`: it is nope_dim + rope_dim".into()),
        );
    }
    let mut attention = Attention {
        heads,
        kv_heads,
        head_dim,
        qkv_bias: a.qkv_bias.unwrap_or(false),
        out_bias: a.out_bias.unwrap_or(false),
        qk_norm: a.qk_norm.clone().flatten().map(|q| QkNorm {
            norm: q.norm.resolve(),
            scope: q.scope.unwrap_or(QkNormScope::Head),
            after_rope: q.after_rope.unwrap_or(false),
        }),
        softcap: a.softcap.flatten(),
        scale: a.scale.unwrap_or_else(|| (head_dim as f64).sqrt().recip()),
        window: a.window.flatten(),
        chunk: a.chunk.flatten(),
        sinks: a.sinks.unwrap_or(false),
        temperature: a.temperature.flatten().map(|t| QueryTemperature {
            floor: t.floor,
            scale: t.scale,
        }),
        mla,
    };
    let position = match w.pos.clone().unwrap_or(PosW::Rope(RopeW::default())) {
        PosW::None => Position::None,
        PosW::Learned => Position::Learned,
        PosW::Alibi => Position::Alibi,
        PosW::Rope(r) => {
            let fraction = r.fraction.unwrap_or(1.0);
            // Latent attention rotates its own `rope_dim` part of each head.
            let head_dim = mla.map_or(head_dim, |m| m.rope_dim);
            let rotary_dims = match r.rotary_dims {
                Some(d) => d,
                None => {
                    let x = head_dim as f64 * fraction;
                    if fraction > 0.0 && fraction <= 1.0 && x.fract() != 0.0 {
                        issues.push(
                            "position.fraction",
                            Some(i),
                            format!("head_dim ({head_dim}) × fraction ({fraction}) = {x} is not a whole number of dimensions"),
                            Some("choose a fraction that gives an even integer, or set `rotary_dims`".into()),
                        );
                    }
                    if fraction > 0.0 && fraction <= 1.0 {
                        x as u64
                    } else {
                        head_dim
                    }
                }
            };
            let scaling = match r.scaling {
                None => RopeScaling::None,
                Some(s) => {
                    let mut scaling = s.scaling;
                    if s.longrope_default_attention
                        && let RopeScaling::Longrope {
                            original_context,
                            attention_factor,
                            ..
                        } = &mut scaling
                    {
                        let ratio = context as f64 / *original_context as f64;
                        *attention_factor = if ratio <= 1.0 || *original_context <= 1 {
                            1.0
                        } else {
                            (1.0 + ratio.ln() / (*original_context as f64).ln()).sqrt()
                        };
                    }
                    scaling
                }
            };
            Position::Rope(Rope {
                theta: r.theta.unwrap_or(10_000.0),
                fraction,
                rotary_dims,
                style: r.style.unwrap_or(RopeStyle::HalfSplit),
                scaling,
            })
        }
    };
    // Latent attention's default scale is transformers': `qk_head_dim ** -0.5` (pow, as Python
    // computes it), times m(mscale_all_dim)² under DeepSeek's YaRN (`yarn_apply_mscale`).
    if a.scale.is_none() && attention.mla.is_some() {
        let m = match &position {
            Position::Rope(Rope {
                scaling:
                    RopeScaling::Yarn {
                        factor,
                        mscale: Some([_, all]),
                        ..
                    },
                ..
            }) if *all != 0.0 => yarn_mscale(*factor, *all),
            _ => 1.0,
        };
        attention.scale = (attention.head_dim as f64).powf(-0.5) * m * m;
    }
    let block = Block {
        norm: w.norm.clone().unwrap_or_default().resolve(),
        placement: w.placement.unwrap_or(NormPlacement::Pre),
        parallel_residual: w.parallel_residual.unwrap_or(false),
        shared_norm: w.shared_norm.unwrap_or(false),
    };
    let default_hidden = d_model.saturating_mul(4);
    let mlp = |m: &MlpW| Mlp {
        activation: m.kind,
        hidden: m.hidden.unwrap_or(default_hidden),
        bias: m.bias.unwrap_or(false),
    };
    let ffn = match &w.ffn {
        None => Ffn::Mlp(Mlp {
            activation: MlpKind::Gelu,
            hidden: default_hidden,
            bias: false,
        }),
        Some(FfnW::Mlp(m)) => {
            if m.limit.is_some() || m.alpha.is_some() {
                issues.push(
                    "ffn.clamp",
                    Some(i),
                    "the clamped SwiGLU (`limit`, `alpha`) is supported in MoE experts only".into(),
                    Some("write it as `moe { expert swiglu(hidden = .., limit = 7, alpha = 1.702) }`".into()),
                );
            }
            Ffn::Mlp(mlp(m))
        }
        Some(FfnW::Moe(m)) => {
            let mut need = |what: &str, present: bool| {
                if !present {
                    issues.push(
                        &format!("ffn.{what}"),
                        Some(i),
                        format!("missing `moe.{what}`"),
                        Some(format!("add `{what}` to the `moe {{ ... }}` block")),
                    );
                }
            };
            need("experts", m.experts.is_some());
            need("top_k", m.top_k.is_some());
            need("expert", m.expert.is_some());
            if m.groups.is_some() != m.top_groups.is_some() {
                let (have, missing) = if m.groups.is_some() {
                    ("groups", "top_groups")
                } else {
                    ("top_groups", "groups")
                };
                issues.push(
                    "ffn.groups",
                    Some(i),
                    format!("`moe.{have}` without `moe.{missing}`"),
                    Some("group-limited routing needs both `groups N` and `top_groups K`".into()),
                );
            }
            let clamp = match m.expert.as_ref().map(|e| (e.limit, e.alpha)) {
                Some((Some(limit), Some(alpha))) => Some(SwigluClamp { alpha, limit }),
                Some((None, None)) | None => None,
                Some((limit, _)) => {
                    let missing = if limit.is_some() { "alpha" } else { "limit" };
                    issues.push(
                        &format!("ffn.clamp.{missing}"),
                        Some(i),
                        format!("the clamped SwiGLU needs both `limit` and `alpha`: `{missing}` is missing"),
                        Some("GPT-OSS uses `swiglu(hidden = .., limit = 7, alpha = 1.702)`".into()),
                    );
                    None
                }
            };
            let expert = m.expert.as_ref().map(mlp).unwrap_or(Mlp {
                activation: MlpKind::Swiglu,
                hidden: 1,
                bias: false,
            });
            Ffn::Moe(Moe {
                experts: m.experts.unwrap_or(1),
                top_k: m.top_k.unwrap_or(1),
                expert,
                router: m.router.unwrap_or(RouterOrder::SoftmaxTopk),
                renormalize: m.renormalize.unwrap_or(false),
                shared: m.shared.clone().flatten().map(|s| SharedExperts {
                    count: s.count.unwrap_or(1),
                    hidden: s.hidden.unwrap_or(expert.hidden),
                    gate: s.gate.unwrap_or(false),
                }),
                aux_loss: m.aux_loss.unwrap_or(0.0),
                router_bias: m.router_bias.unwrap_or(false),
                correction_bias: m.correction_bias.unwrap_or(false),
                groups: match (m.groups, m.top_groups) {
                    (Some(count), Some(top)) => Some(ExpertGroups { count, top }),
                    _ => None,
                },
                routed_scale: m.routed_scale.unwrap_or(1.0),
                weighting: m.weighting.unwrap_or_default(),
                clamp,
            })
        }
    };
    Layer {
        index: i,
        attention,
        position,
        block,
        ffn,
        checkpoint: w.ckpt.clone().unwrap_or(LayerCheckpoint::Auto),
    }
}
