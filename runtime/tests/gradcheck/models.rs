//! Whole tiny models of every variant the IR expresses: every parameter's gradient against
//! central differences of the loss.

use super::EPS;
use super::common::*;
use super::rope::rope_variants;
use modelspec_dsl::ir::*;
use modelspec_runtime::exec::{Executor, Policy};
use modelspec_runtime::{Params, rng};

/// Checks every parameter's gradient of `spec` (a few coordinates per tensor) against central
/// differences of the loss, with dropout keyed by a fixed seed when the spec has any.
fn check_model(what: &str, spec: &ModelSpec, seq: usize) {
    let mut exec = Executor::new(spec).unwrap();
    exec.set_dropout_seed(Some(5));
    let params: Params<f64> = random_params(spec, 3, 0.4);
    let batch = 2;
    let tokens = tokens(batch * seq, spec.vocab, 1);
    let out = exec
        .loss_and_grads(
            &params,
            &tokens,
            batch,
            &Policy::Uniform(LayerCheckpoint::None),
        )
        .unwrap();
    assert!(out.loss.is_finite());
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (name, t) in params.iter() {
        let grad = out
            .grads
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        assert_eq!(grad.shape(), t.shape(), "{what}: {name}");
        let n = t.numel();
        let picks: Vec<usize> = if n <= 4 {
            (0..n).collect()
        } else {
            (0..4)
                .map(|j| (rng::bits(rng::hash_str(name), j) % n as u64) as usize)
                .collect()
        };
        for j in picks {
            let mut p = params.clone();
            let at = |p: &mut Params<f64>, v: f64| p.get_mut(name).unwrap().data_mut()[j] = v;
            let x0 = t.data()[j];
            at(&mut p, x0 + EPS);
            let lp = exec
                .loss_and_grads(&p, &tokens, batch, &Policy::Uniform(LayerCheckpoint::None))
                .unwrap()
                .loss;
            at(&mut p, x0 - EPS);
            let lm = exec
                .loss_and_grads(&p, &tokens, batch, &Policy::Uniform(LayerCheckpoint::None))
                .unwrap()
                .loss;
            let fd = (lp - lm) / (2.0 * EPS);
            let an = grad.data()[j];
            let scale = fd.abs().max(an.abs());
            worst = worst.max((fd - an).abs() / (1e-4 + scale));
            assert!(
                (fd - an).abs() <= 1e-7 + 1e-5 * scale,
                "{what}: {name}[{j}]: finite difference {fd} vs analytic {an}"
            );
            checked += 1;
        }
    }
    println!(
        "{what}: {checked} coordinates over {} tensors, worst relative error {worst:.2e}",
        params.tensors.len()
    );
}

fn with(f: impl Fn(&mut ModelSpec)) -> ModelSpec {
    let mut s = tiny();
    f(&mut s);
    s
}

#[test]
fn model_attention_variants() {
    check_model("gqa", &tiny(), 5);
    check_model(
        "mqa",
        &with(|s| each_layer(s, |l| l.attention.kv_heads = 1)),
        5,
    );
    check_model(
        "mha_biases",
        &with(|s| {
            each_layer(s, |l| {
                l.attention.kv_heads = 4;
                l.attention.qkv_bias = true;
                l.attention.out_bias = true;
            })
        }),
        5,
    );
    check_model(
        "sliding_window_even_layers",
        &with(|s| s.layers[0].attention.window = Some(2)),
        6,
    );
    check_model(
        "softcaps",
        &with(|s| {
            each_layer(s, |l| l.attention.softcap = Some(1.5));
            s.logits.softcap = Some(2.0);
        }),
        5,
    );
    check_model(
        "alibi",
        &with(|s| each_layer(s, |l| l.position = Position::Alibi)),
        5,
    );
    check_model(
        "no_position",
        &with(|s| each_layer(s, |l| l.position = Position::None)),
        5,
    );
    let head_dim_not_d_over_heads = with(|s| {
        each_layer(s, |l| {
            l.attention.head_dim = 3;
            l.attention.heads = 3;
            l.attention.kv_heads = 1;
            l.position = Position::Rope(Rope {
                rotary_dims: 2,
                fraction: 2.0 / 3.0,
                ..rope(3)
            });
        })
    });
    check_model("head_dim_3_partial_rotary", &head_dim_not_d_over_heads, 5);
}

#[test]
fn model_qk_norm_both_scopes() {
    check_model(
        "qk_norm_head",
        &with(|s| {
            each_layer(s, |l| {
                l.attention.qk_norm = Some(QkNorm {
                    norm: rms(),
                    scope: QkNormScope::Head,
                    after_rope: false,
                })
            })
        }),
        5,
    );
    check_model(
        "qk_norm_full_layernorm",
        &with(|s| {
            each_layer(s, |l| {
                l.attention.qk_norm = Some(QkNorm {
                    norm: layer_norm(),
                    scope: QkNormScope::Full,
                    after_rope: false,
                })
            })
        }),
        5,
    );
}

#[test]
fn model_every_rope_scaling() {
    for (name, r) in rope_variants() {
        // head_dim 6 to match the variants' rotary dims.
        let spec = with(|s| {
            each_layer(s, |l| {
                l.attention.heads = 2;
                l.attention.kv_heads = 1;
                l.attention.head_dim = 6;
                l.position = Position::Rope(r.clone());
            })
        });
        check_model(&format!("rope_{name}"), &spec, 4);
    }
}

#[test]
fn model_norms_and_placements() {
    check_model(
        "layernorm_offset1",
        &with(|s| {
            let n = Norm {
                offset: 1.0,
                ..layer_norm()
            };
            each_layer(s, |l| l.block.norm = n);
            s.final_norm = Some(n);
        }),
        5,
    );
    check_model(
        "rms_offset1_no_final_norm",
        &with(|s| {
            each_layer(s, |l| l.block.norm.offset = 1.0);
            s.final_norm = None;
        }),
        5,
    );
    check_model(
        "norm_without_weight",
        &with(|s| each_layer(s, |l| l.block.norm.weight = false)),
        5,
    );
    check_model(
        "post",
        &with(|s| each_layer(s, |l| l.block.placement = NormPlacement::Post)),
        5,
    );
    check_model(
        "sandwich",
        &with(|s| each_layer(s, |l| l.block.placement = NormPlacement::Sandwich)),
        5,
    );
    check_model(
        "parallel_shared_norm",
        &with(|s| {
            each_layer(s, |l| {
                l.block.parallel_residual = true;
                l.block.shared_norm = true;
                l.block.norm = layer_norm();
            })
        }),
        5,
    );
    check_model(
        "parallel_two_norms",
        &with(|s| each_layer(s, |l| l.block.parallel_residual = true)),
        5,
    );
    check_model(
        "parallel_post",
        &with(|s| {
            each_layer(s, |l| {
                l.block.parallel_residual = true;
                l.block.placement = NormPlacement::Post;
            })
        }),
        5,
    );
}

#[test]
fn model_every_mlp_kind() {
    for kind in MlpKind::ALL {
        check_model(
            &format!("mlp_{kind:?}_bias"),
            &with(|s| {
                each_layer(s, |l| {
                    l.ffn = Ffn::Mlp(Mlp {
                        activation: kind,
                        hidden: 10,
                        bias: true,
                    })
                })
            }),
            5,
        );
    }
}

#[test]
fn model_moe_every_router_and_shared_experts() {
    let shared_gated = Some(SharedExperts {
        count: 2,
        hidden: 3,
        gate: true,
    });
    let shared_plain = Some(SharedExperts {
        count: 1,
        hidden: 5,
        gate: false,
    });
    check_model(
        "moe_softmax_topk_renorm",
        &with(|s| each_layer(s, |l| l.ffn = moe(RouterOrder::SoftmaxTopk, true, None))),
        5,
    );
    check_model(
        "moe_softmax_topk_plain_shared_gate",
        &with(|s| {
            each_layer(s, |l| {
                l.ffn = moe(RouterOrder::SoftmaxTopk, false, shared_gated)
            })
        }),
        5,
    );
    check_model(
        "moe_topk_softmax_shared",
        &with(|s| {
            each_layer(s, |l| {
                l.ffn = moe(RouterOrder::TopkSoftmax, false, shared_plain)
            })
        }),
        5,
    );
    check_model(
        "moe_dense_first_layer_gelu_experts",
        &with(|s| {
            let mut m = moe(RouterOrder::SoftmaxTopk, true, shared_gated);
            if let Ffn::Moe(x) = &mut m {
                x.expert = Mlp {
                    activation: MlpKind::Gelu,
                    hidden: 4,
                    bias: true,
                };
            }
            s.layers[1].ffn = m;
        }),
        5,
    );
}

#[test]
fn model_embeddings_and_head() {
    check_model(
        "learned_positions",
        &with(|s| {
            s.embedding.learned_positions = true;
            each_layer(s, |l| l.position = Position::Learned);
        }),
        5,
    );
    check_model(
        "tied_scaled_logit_bias",
        &with(|s| {
            s.embedding.tied = true;
            s.embedding.scale = (8.0f64).sqrt();
            s.embedding.scale_expr = ScaleExpr::SqrtDModel;
            s.logits.bias = true;
        }),
        5,
    );
    check_model("untied_lm_head_bias", &with(|s| s.logits.bias = true), 5);
}

#[test]
fn model_with_dropout_everywhere() {
    check_model(
        "dropout",
        &with(|s| {
            s.dropout = modelspec_dsl::ir::Dropout {
                embedding: 0.1,
                attention: 0.2,
                residual: 0.15,
            }
        }),
        5,
    );
    check_model(
        "dropout_moe_parallel",
        &with(|s| {
            s.dropout = modelspec_dsl::ir::Dropout {
                embedding: 0.1,
                attention: 0.2,
                residual: 0.15,
            };
            each_layer(s, |l| {
                l.block.parallel_residual = true;
                l.ffn = moe(
                    RouterOrder::TopkSoftmax,
                    false,
                    Some(SharedExperts {
                        count: 1,
                        hidden: 4,
                        gate: true,
                    }),
                );
            });
        }),
        5,
    );
}
