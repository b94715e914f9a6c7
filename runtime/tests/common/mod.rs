//! Tiny specs built directly as IR values, and helpers shared by the runtime's tests.
#![allow(dead_code)]

use modelspec_dsl::ir::*;
use modelspec_runtime::{Float, Params, Tensor, rng};

pub mod gpu;

/// RMS norm with eps 1e-5, weight, no bias, offset 0.
pub fn rms() -> Norm {
    Norm {
        kind: NormKind::Rms,
        eps: 1e-5,
        offset: 0.0,
        weight: true,
        bias: false,
    }
}

/// LayerNorm with weight and bias.
pub fn layer_norm() -> Norm {
    Norm {
        kind: NormKind::Layer,
        eps: 1e-5,
        offset: 0.0,
        weight: true,
        bias: true,
    }
}

/// Plain half-split RoPE over the whole head.
pub fn rope(head_dim: u64) -> Rope {
    Rope {
        theta: 10000.0,
        fraction: 1.0,
        rotary_dims: head_dim,
        style: RopeStyle::HalfSplit,
        scaling: RopeScaling::None,
    }
}

/// One layer: GQA 4 heads / 2 kv heads, head_dim 4, RoPE, pre RMS norm, SwiGLU hidden 12.
pub fn layer(index: u64) -> Layer {
    Layer {
        index,
        attention: Attention {
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            qkv_bias: false,
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
        position: Position::Rope(rope(4)),
        block: Block {
            norm: rms(),
            placement: NormPlacement::Pre,
            parallel_residual: false,
            shared_norm: false,
        },
        ffn: Ffn::Mlp(Mlp {
            activation: MlpKind::Swiglu,
            hidden: 12,
            bias: false,
        }),
        checkpoint: LayerCheckpoint::None,
    }
}

/// A tiny dense spec: vocab 11 (padded to 12), d_model 8, 2 layers, context 16.
pub fn tiny() -> ModelSpec {
    ModelSpec {
        name: "tiny".into(),
        vocab: 11,
        vocab_padded: 12,
        vocab_pad_multiple: 4,
        d_model: 8,
        n_layers: 2,
        context: 16,
        dropout: Dropout::default(),
        embedding: Embedding {
            tied: false,
            scale: 1.0,
            scale_expr: ScaleExpr::Literal,
            learned_positions: false,
        },
        final_norm: Some(rms()),
        logits: Logits {
            softcap: None,
            bias: false,
        },
        weights: WeightLayout {
            naming: Naming::Llama,
            qkv: QkvLayout::Separate,
            fused_gate_up: false,
        },
        checkpoint: CheckpointGlobal::default(),
        layers: vec![layer(0), layer(1)],
    }
}

/// Applies `f` to every layer.
pub fn each_layer(spec: &mut ModelSpec, f: impl Fn(&mut Layer)) {
    for l in &mut spec.layers {
        f(l);
    }
}

/// A small MoE: 4 experts, top 2, SwiGLU hidden 6.
pub fn moe(router: RouterOrder, renormalize: bool, shared: Option<SharedExperts>) -> Ffn {
    Ffn::Moe(Moe {
        experts: 4,
        top_k: 2,
        expert: Mlp {
            activation: MlpKind::Swiglu,
            hidden: 6,
            bias: false,
        },
        router,
        renormalize,
        shared,
        aux_loss: 0.01,
        ..Default::default()
    })
}

/// Parameters with values far from init (so every term of the gradient matters): weights
/// ~ normal(0, scale), norm weights 1 ± 0.3 (minus the offset), biases ~ normal(0, 0.1).
pub fn random_params<T: Float>(spec: &ModelSpec, seed: u64, scale: f64) -> Params<T> {
    let init = Params::<f64>::init(spec, seed);
    let mut out = Params::new();
    for (name, t) in init.iter() {
        let stream = rng::key(&[seed, rng::hash_str(name), 99]);
        let is_norm = name.contains("norm");
        let data: Vec<T> = (0..t.numel())
            .map(|j| {
                let z = rng::normal(stream, j as u64);
                let v = if name.ends_with(".bias") {
                    0.1 * z
                } else if is_norm {
                    t.data()[j] + 0.3 * z
                } else {
                    scale * z
                };
                T::from_f64(v)
            })
            .collect();
        out.insert(name.clone(), Tensor::from_vec(t.shape(), data).unwrap());
    }
    out
}

/// Deterministic tokens in `0..vocab`.
pub fn tokens(n: usize, vocab: u64, seed: u64) -> Vec<u32> {
    let s = rng::key(&[seed, 12345]);
    (0..n)
        .map(|i| (rng::bits(s, i as u64) % vocab) as u32)
        .collect()
}
