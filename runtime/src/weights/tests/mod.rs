//! Unit tests with small synthetic checkpoints for every naming family.
//!
//! The synthetic specs and parameters are here; the tests are in `families` (names and layouts
//! per naming family) and `checks` (errors, dtypes, shards, saving).

mod checks;
mod families;

use std::path::PathBuf;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::*;

use super::*;

fn norm(kind: NormKind, bias: bool) -> Norm {
    Norm {
        kind,
        eps: 1e-5,
        offset: 0.0,
        weight: true,
        bias,
    }
}

/// A 2-layer spec of naming family `naming` with GQA (6 heads, 2 kv heads, head_dim 4 ≠ 16/6).
fn spec(naming: Naming) -> ModelSpec {
    let layer = |index| Layer {
        index,
        attention: Attention {
            heads: 6,
            kv_heads: 2,
            head_dim: 4,
            qkv_bias: true,
            out_bias: false,
            qk_norm: None,
            softcap: None,
            scale: 0.5,
            window: None,
            chunk: None,
            sinks: false,
            temperature: None,
            mla: None,
        },
        position: Position::None,
        block: Block {
            norm: norm(NormKind::Rms, false),
            placement: NormPlacement::Pre,
            parallel_residual: false,
            shared_norm: false,
        },
        ffn: Ffn::Mlp(Mlp {
            activation: MlpKind::Swiglu,
            hidden: 12,
            bias: false,
        }),
        checkpoint: LayerCheckpoint::Auto,
    };
    ModelSpec {
        name: "tiny".into(),
        vocab: 10,
        vocab_padded: 10,
        vocab_pad_multiple: 1,
        d_model: 16,
        n_layers: 2,
        context: 8,
        dropout: Dropout::default(),
        embedding: Embedding {
            tied: false,
            scale: 1.0,
            scale_expr: ScaleExpr::Literal,
            learned_positions: false,
        },
        final_norm: Some(norm(NormKind::Rms, false)),
        logits: Logits {
            softcap: None,
            bias: false,
        },
        weights: WeightLayout {
            naming,
            qkv: QkvLayout::Separate,
            fused_gate_up: false,
        },
        checkpoint: CheckpointGlobal::default(),
        layers: vec![layer(0), layer(1)],
    }
}

fn gpt2() -> ModelSpec {
    let mut s = spec(Naming::Gpt2);
    s.embedding.tied = true;
    s.embedding.learned_positions = true;
    s.weights.qkv = QkvLayout::Fused;
    s.final_norm = Some(norm(NormKind::Layer, true));
    for l in &mut s.layers {
        l.attention.kv_heads = 6;
        l.attention.out_bias = true;
        l.block.norm = norm(NormKind::Layer, true);
        l.ffn = Ffn::Mlp(Mlp {
            activation: MlpKind::GeluTanh,
            hidden: 20,
            bias: true,
        });
    }
    s
}

fn neox() -> ModelSpec {
    let mut s = spec(Naming::GptNeox);
    s.weights.qkv = QkvLayout::FusedPerHead;
    s.final_norm = Some(norm(NormKind::Layer, true));
    for l in &mut s.layers {
        l.attention.kv_heads = 6;
        l.attention.out_bias = true;
        l.block.parallel_residual = true;
        l.block.norm = norm(NormKind::Layer, true);
        l.ffn = Ffn::Mlp(Mlp {
            activation: MlpKind::Gelu,
            hidden: 20,
            bias: true,
        });
    }
    s
}

fn falcon(new_arch: bool) -> ModelSpec {
    let mut s = spec(Naming::Falcon);
    s.weights.qkv = QkvLayout::FusedPerHead;
    s.embedding.tied = true;
    for l in &mut s.layers {
        l.attention.qkv_bias = false;
        l.block.parallel_residual = true;
        l.block.shared_norm = !new_arch;
        l.block.norm = norm(NormKind::Layer, true);
        l.ffn = Ffn::Mlp(Mlp {
            activation: MlpKind::Gelu,
            hidden: 20,
            bias: false,
        });
    }
    s
}

fn phi() -> ModelSpec {
    let mut s = spec(Naming::Phi);
    s.logits.bias = true;
    s.final_norm = Some(norm(NormKind::Layer, true));
    for l in &mut s.layers {
        l.attention.kv_heads = 6;
        l.attention.out_bias = true;
        l.block.parallel_residual = true;
        l.block.shared_norm = true;
        l.block.norm = norm(NormKind::Layer, true);
        l.ffn = Ffn::Mlp(Mlp {
            activation: MlpKind::GeluTanh,
            hidden: 20,
            bias: true,
        });
    }
    s
}

fn moe(shared: bool) -> ModelSpec {
    let mut s = spec(Naming::Llama);
    for l in &mut s.layers {
        l.ffn = Ffn::Moe(Moe {
            experts: 3,
            top_k: 2,
            expert: Mlp {
                activation: MlpKind::Swiglu,
                hidden: 8,
                bias: false,
            },
            router: RouterOrder::SoftmaxTopk,
            renormalize: true,
            shared: shared.then_some(SharedExperts {
                count: 1,
                hidden: 10,
                gate: true,
            }),
            aux_loss: 0.0,
            ..Default::default()
        });
    }
    s
}

fn sandwich(placement: NormPlacement) -> ModelSpec {
    let mut s = spec(Naming::Llama);
    s.embedding.tied = true;
    for l in &mut s.layers {
        l.block.placement = placement;
        l.attention.qk_norm = Some(QkNorm {
            norm: norm(NormKind::Rms, false),
            scope: QkNormScope::Head,
            after_rope: false,
        });
    }
    s
}

fn phi3() -> ModelSpec {
    let mut s = spec(Naming::Llama);
    s.weights.qkv = QkvLayout::Fused;
    s.weights.fused_gate_up = true;
    s
}

/// Deterministic distinct values for every parameter.
fn host_params(spec: &ModelSpec) -> Weights {
    let mut state = 0x9e37_79b9_u32;
    canonical_shapes(spec)
        .into_iter()
        .map(|(name, shape)| {
            let data = (0..shape.iter().product::<usize>())
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            (name, HostTensor { shape, data })
        })
        .collect()
}

/// [`host_params`] as the runtime's [`Params`].
fn params_for(spec: &ModelSpec) -> Params {
    to_params(host_params(spec)).expect("consistent shapes")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelspec-weights-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn all_specs() -> Vec<(&'static str, ModelSpec)> {
    vec![
        ("llama", spec(Naming::Llama)),
        ("gemma2", sandwich(NormPlacement::Sandwich)),
        ("olmo2", sandwich(NormPlacement::Post)),
        ("phi3", phi3()),
        ("qwen_moe", moe(true)),
        ("mixtral", moe(false)),
        ("gpt2", gpt2()),
        ("gpt_neox", neox()),
        ("falcon", falcon(false)),
        ("falcon_new", falcon(true)),
        ("phi", phi()),
    ]
}

fn spec_llama() -> ModelSpec {
    spec(Naming::Llama)
}
