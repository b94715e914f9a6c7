//! Small IR values built in Rust, for doc examples and tests that must not depend on a front end.

use crate::ir::*;

/// A spec with no layers and neutral defaults (the base of the others).
pub fn empty_spec() -> ModelSpec {
    ModelSpec {
        name: "empty".into(),
        vocab: 1,
        vocab_padded: 1,
        vocab_pad_multiple: 1,
        d_model: 1,
        n_layers: 0,
        context: 1,
        dropout: Dropout::default(),
        embedding: Embedding {
            tied: true,
            scale: 1.0,
            scale_expr: ScaleExpr::Literal,
            learned_positions: false,
        },
        final_norm: None,
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
        layers: Vec::new(),
    }
}

fn rms() -> Norm {
    Norm {
        kind: NormKind::Rms,
        eps: 1e-6,
        offset: 0.0,
        weight: true,
        bias: false,
    }
}

/// A llama-style layer with the given sizes.
pub fn llama_layer(index: u64, heads: u64, kv_heads: u64, head_dim: u64, hidden: u64) -> Layer {
    Layer {
        index,
        attention: Attention {
            heads,
            kv_heads,
            head_dim,
            qkv_bias: false,
            out_bias: false,
            qk_norm: None,
            softcap: None,
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: None,
            chunk: None,
            sinks: false,
            temperature: None,
            mla: None,
        },
        position: Position::Rope(Rope {
            theta: 10000.0,
            fraction: 1.0,
            rotary_dims: head_dim,
            style: RopeStyle::HalfSplit,
            scaling: RopeScaling::None,
        }),
        block: Block {
            norm: rms(),
            placement: NormPlacement::Pre,
            parallel_residual: false,
            shared_norm: false,
        },
        ffn: Ffn::Mlp(Mlp {
            activation: MlpKind::Swiglu,
            hidden,
            bias: false,
        }),
        checkpoint: LayerCheckpoint::Auto,
    }
}

/// `tiny`: 2 llama-style layers, d_model 32, GQA 4/2, SwiGLU 64, untied head.
pub fn tiny_spec() -> ModelSpec {
    ModelSpec {
        name: "tiny".into(),
        vocab: 97,
        vocab_padded: 128,
        vocab_pad_multiple: 64,
        d_model: 32,
        n_layers: 2,
        context: 64,
        embedding: Embedding {
            tied: false,
            scale: 1.0,
            scale_expr: ScaleExpr::Literal,
            learned_positions: false,
        },
        final_norm: Some(rms()),
        layers: (0..2).map(|i| llama_layer(i, 4, 2, 8, 64)).collect(),
        ..empty_spec()
    }
}

/// `tiny_moe`: a dense first layer, then MoE layers with a gated shared expert, sliding windows on
/// even layers, qk-norm, tied embeddings and a logit softcap.
pub fn tiny_moe_spec() -> ModelSpec {
    let mut layers: Vec<Layer> = (0..4).map(|i| llama_layer(i, 4, 2, 8, 64)).collect();
    for layer in layers.iter_mut().skip(1) {
        layer.ffn = Ffn::Moe(Moe {
            experts: 4,
            top_k: 2,
            expert: Mlp {
                activation: MlpKind::Swiglu,
                hidden: 16,
                bias: false,
            },
            router: RouterOrder::SoftmaxTopk,
            renormalize: true,
            shared: Some(SharedExperts {
                count: 1,
                hidden: 32,
                gate: true,
            }),
            aux_loss: 0.0,
            ..Default::default()
        });
        layer.attention.qk_norm = Some(QkNorm {
            norm: rms(),
            scope: QkNormScope::Head,
            after_rope: false,
        });
    }
    for layer in layers.iter_mut().step_by(2) {
        layer.attention.window = Some(16);
        layer.checkpoint = LayerCheckpoint::Full;
    }
    ModelSpec {
        name: "tiny_moe".into(),
        vocab: 100,
        vocab_padded: 100,
        d_model: 32,
        n_layers: 4,
        context: 64,
        final_norm: Some(rms()),
        logits: Logits {
            softcap: Some(30.0),
            bias: false,
        },
        layers,
        ..empty_spec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::{Options, generate, model_impl::spec_parts};

    #[test]
    fn dump_for_inspection() {
        for spec in [tiny_spec(), tiny_moe_spec()] {
            let g = generate(&spec, &Options::default()).unwrap();
            if let Ok(dir) = std::env::var("MODELSPEC_DUMP") {
                std::fs::write(format!("{dir}/{}.rs", spec.name), &g.rust).unwrap();
                std::fs::write(format!("{dir}/{}.cu", spec.name), g.kernels.header()).unwrap();
            }
            let (_, rows) = spec_parts(&spec).unwrap();
            assert!(!rows.is_empty());
        }
    }
}
