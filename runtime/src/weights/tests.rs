//! Unit tests with small synthetic checkpoints for every naming family.

use std::collections::BTreeMap;
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

#[test]
fn every_family_round_trips_through_a_file() {
    for (label, spec) in all_specs() {
        let params = params_for(&spec);
        let path = tmp("roundtrip").join(format!("{label}.safetensors"));
        save_file(&spec, &params, &path).unwrap_or_else(|e| panic!("{label}: {e}"));
        let loaded = load_file(&spec, &path).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(loaded, params, "{label}");
    }
}

#[test]
fn split_then_fuse_is_the_identity_for_every_layout() {
    for (label, spec) in all_specs() {
        for moe_naming in [MoeNaming::Qwen, MoeNaming::Mixtral, MoeNaming::Stacked] {
            let dialect = Dialect {
                base_prefix: true,
                moe: moe_naming,
            };
            let layout = checkpoint_layout(&spec, dialect).expect("layout");
            let shapes = canonical_shapes(&spec);
            let mut state = 7u32;
            for ct in &layout {
                let n: usize = ct.shape.iter().product();
                let stored: Vec<f32> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (state >> 9) as f32
                    })
                    .collect();
                let mut canon = BTreeMap::new();
                split(ct, &stored, &shapes, &mut canon);
                // Pieces that only partly fill a canonical tensor leave the rest zero: fill it
                // from the pieces of this tensor alone, then re-fuse.
                let fused = fuse(ct, &canon).expect("fuse");
                assert_eq!(fused.shape, ct.shape, "{label} {}", ct.name);
                assert_eq!(fused.data, stored, "{label} {}", ct.name);
            }
        }
    }
}

#[test]
fn llama_names_follow_transformers() {
    let spec = sandwich(NormPlacement::Sandwich);
    let names: Vec<String> = checkpoint_layout(&spec, Dialect::default())
        .expect("layout")
        .into_iter()
        .map(|c| c.name)
        .collect();
    let mut layer0: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("model.layers.0."))
        .collect();
    layer0.sort();
    let mut expected = vec![
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.weight",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.weight",
        "self_attn.v_proj.bias",
        "self_attn.q_norm.weight",
        "self_attn.k_norm.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "pre_feedforward_layernorm.weight",
        "post_feedforward_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    expected.sort();
    assert_eq!(layer0, expected);
    // Sandwich: post_attention_layernorm is the attention *post* norm.
    assert_eq!(
        hf_name(&spec, "layers.1.attn_post_norm.weight").as_deref(),
        Some("model.layers.1.post_attention_layernorm.weight")
    );
    assert_eq!(
        hf_name(&spec, "layers.1.mlp_norm.weight").as_deref(),
        Some("model.layers.1.pre_feedforward_layernorm.weight")
    );
    assert!(
        !names.iter().any(|n| n.starts_with("lm_head")),
        "tied: no head"
    );
    let olmo = sandwich(NormPlacement::Post);
    assert_eq!(
        hf_name(&olmo, "layers.0.attn_post_norm.weight").as_deref(),
        Some("model.layers.0.post_attention_layernorm.weight")
    );
    assert_eq!(
        hf_name(&olmo, "layers.0.mlp_post_norm.weight").as_deref(),
        Some("model.layers.0.post_feedforward_layernorm.weight")
    );
    assert_eq!(hf_name(&olmo, "layers.0.attn_norm.weight"), None);
    let pre = spec_llama();
    assert_eq!(
        hf_name(&pre, "layers.0.mlp_norm.weight").as_deref(),
        Some("model.layers.0.post_attention_layernorm.weight")
    );
    assert_eq!(
        hf_name(&pre, "final_norm.weight").as_deref(),
        Some("model.norm.weight")
    );
    assert_eq!(
        hf_name(&pre, "lm_head.weight").as_deref(),
        Some("lm_head.weight")
    );
}

fn spec_llama() -> ModelSpec {
    spec(Naming::Llama)
}

#[test]
fn gpt2_conv1d_weights_are_stored_in_out_and_fused() {
    let spec = gpt2();
    let params = params_for(&spec);
    let host = from_params(&params);
    let ckpt = to_checkpoint(&spec, &params, Dialect::default()).expect("ckpt");
    let c_attn = &ckpt["transformer.h.0.attn.c_attn.weight"];
    assert_eq!(c_attn.shape, vec![16, 72]);
    // c_attn[i, j] = [q; k; v][j, i]
    let q = &host["layers.0.attn.q.weight"];
    let k = &host["layers.0.attn.k.weight"];
    assert_eq!(c_attn.data[3 * 72 + 5], q.data[5 * 16 + 3]);
    assert_eq!(c_attn.data[2 * 72 + 24 + 7], k.data[7 * 16 + 2]);
    assert_eq!(ckpt["transformer.h.0.attn.c_attn.bias"].shape, vec![72]);
    assert_eq!(ckpt["transformer.h.1.mlp.c_fc.weight"].shape, vec![16, 20]);
    assert_eq!(
        ckpt["transformer.h.1.mlp.c_proj.weight"].shape,
        vec![20, 16]
    );
    assert_eq!(ckpt["transformer.wpe.weight"].shape, vec![8, 16]);
    assert!(ckpt.contains_key("transformer.ln_f.bias"));
    assert!(!ckpt.contains_key("lm_head.weight"));
}

#[test]
fn gpt2_files_without_the_transformer_prefix_load_and_mask_buffers_are_skipped() {
    let spec = gpt2();
    let params = params_for(&spec);
    let dialect = Dialect {
        base_prefix: false,
        moe: MoeNaming::Qwen,
    };
    let mut ckpt = to_checkpoint(&spec, &params, dialect).expect("ckpt");
    assert!(ckpt.contains_key("h.0.ln_1.weight"));
    ckpt.insert(
        "h.0.attn.bias".into(),
        HostTensor {
            shape: vec![1, 1, 8, 8],
            data: vec![1.0; 64],
        },
    );
    ckpt.insert(
        "h.1.attn.masked_bias".into(),
        HostTensor {
            shape: vec![],
            data: vec![-1e4],
        },
    );
    let loaded = from_checkpoint(&spec, ckpt).expect("load");
    assert!(!loaded.dialect.base_prefix);
    assert_eq!(loaded.params, params);
}

#[test]
fn gpt_neox_interleaves_q_k_v_per_head() {
    let spec = neox();
    let params = params_for(&spec);
    let host = from_params(&params);
    let ckpt = to_checkpoint(&spec, &params, Dialect::default()).expect("ckpt");
    let qkv = &ckpt["gpt_neox.layers.0.attention.query_key_value.weight"];
    assert_eq!(qkv.shape, vec![72, 16]);
    let (q, k, v) = (
        &host["layers.0.attn.q.weight"],
        &host["layers.0.attn.k.weight"],
        &host["layers.0.attn.v.weight"],
    );
    let hd = 4;
    for head in 0..6 {
        for r in 0..hd {
            let row = |block: usize| &qkv.data[((head * 3 + block) * hd + r) * 16..][..16];
            assert_eq!(row(0), &q.data[(head * hd + r) * 16..][..16]);
            assert_eq!(row(1), &k.data[(head * hd + r) * 16..][..16]);
            assert_eq!(row(2), &v.data[(head * hd + r) * 16..][..16]);
        }
    }
    assert_eq!(
        hf_name(&spec, "lm_head.weight").as_deref(),
        Some("embed_out.weight")
    );
    assert_eq!(
        hf_name(&spec, "final_norm.bias").as_deref(),
        Some("gpt_neox.final_layer_norm.bias")
    );
}

#[test]
fn falcon_groups_queries_with_their_kv_head() {
    let spec = falcon(true);
    let params = params_for(&spec);
    let host = from_params(&params);
    let ckpt = to_checkpoint(&spec, &params, Dialect::default()).expect("ckpt");
    let qkv = &ckpt["transformer.h.1.self_attention.query_key_value.weight"];
    // 2 groups of (3 query heads, k, v), head_dim 4.
    assert_eq!(qkv.shape, vec![(6 + 2 + 2) * 4, 16]);
    let (q, k, v) = (
        &host["layers.1.attn.q.weight"],
        &host["layers.1.attn.k.weight"],
        &host["layers.1.attn.v.weight"],
    );
    let row = |t: &HostTensor, r: usize| t.data[r * 16..(r + 1) * 16].to_vec();
    let fused_row = |r: usize| qkv.data[r * 16..(r + 1) * 16].to_vec();
    // group 1 starts at row 20: q heads 3,4,5 then k head 1 then v head 1
    assert_eq!(fused_row(20), row(q, 12));
    assert_eq!(fused_row(20 + 12), row(k, 4));
    assert_eq!(fused_row(20 + 16 + 3), row(v, 7));
    assert!(ckpt.contains_key("transformer.h.0.ln_attn.weight"));
    assert!(ckpt.contains_key("transformer.h.0.ln_mlp.bias"));
    let old = falcon(false);
    let names: Vec<String> = checkpoint_layout(&old, Dialect::default())
        .expect("layout")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&"transformer.h.0.input_layernorm.weight".to_string()));
    assert!(
        !names
            .iter()
            .any(|n| n.contains("ln_attn") || n.contains("post_attention"))
    );
}

#[test]
fn phi_and_phi3_names() {
    let spec = phi();
    assert_eq!(
        hf_name(&spec, "layers.0.attn.o.bias").as_deref(),
        Some("model.layers.0.self_attn.dense.bias")
    );
    assert_eq!(
        hf_name(&spec, "layers.0.mlp.up.weight").as_deref(),
        Some("model.layers.0.mlp.fc1.weight")
    );
    assert_eq!(
        hf_name(&spec, "final_norm.bias").as_deref(),
        Some("model.final_layernorm.bias")
    );
    assert_eq!(
        hf_name(&spec, "lm_head.bias").as_deref(),
        Some("lm_head.bias")
    );
    let p3 = phi3();
    let params = params_for(&p3);
    let host = from_params(&params);
    let ckpt = to_checkpoint(&p3, &params, Dialect::default()).expect("ckpt");
    assert_eq!(
        ckpt["model.layers.0.self_attn.qkv_proj.weight"].shape,
        vec![24 + 8 + 8, 16]
    );
    assert_eq!(
        ckpt["model.layers.0.self_attn.qkv_proj.bias"].shape,
        vec![40]
    );
    let gate_up = &ckpt["model.layers.0.mlp.gate_up_proj.weight"];
    assert_eq!(gate_up.shape, vec![24, 16]);
    assert_eq!(
        gate_up.data[..12 * 16],
        host["layers.0.mlp.gate.weight"].data[..]
    );
    assert_eq!(
        gate_up.data[12 * 16..],
        host["layers.0.mlp.up.weight"].data[..]
    );
}

#[test]
fn moe_dialects_are_detected_and_round_trip() {
    let spec = moe(true);
    let params = params_for(&spec);
    let qwen_names = Dialect {
        base_prefix: true,
        moe: MoeNaming::Qwen,
    };
    let qwen = to_checkpoint(&spec, &params, qwen_names).expect("qwen");
    for name in [
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.2.down_proj.weight",
        "model.layers.1.mlp.shared_expert.up_proj.weight",
        "model.layers.1.mlp.shared_expert_gate.weight",
    ] {
        assert!(qwen.contains_key(name), "{name}");
    }
    let plain = moe(false);
    let params = params_for(&plain);
    let host = from_params(&params);
    let mixtral = Dialect {
        base_prefix: true,
        moe: MoeNaming::Mixtral,
    };
    let ckpt = to_checkpoint(&plain, &params, mixtral).expect("mixtral");
    assert_eq!(
        ckpt["model.layers.0.block_sparse_moe.experts.1.w1.weight"],
        host["layers.0.moe.experts.1.gate.weight"]
    );
    assert_eq!(
        ckpt["model.layers.0.block_sparse_moe.experts.1.w3.weight"],
        host["layers.0.moe.experts.1.up.weight"]
    );
    assert_eq!(
        ckpt["model.layers.0.block_sparse_moe.experts.1.w2.weight"],
        host["layers.0.moe.experts.1.down.weight"]
    );
    let loaded = from_checkpoint(&plain, ckpt).expect("load");
    assert_eq!(loaded.dialect.moe, MoeNaming::Mixtral);
    assert_eq!(loaded.params, params);
    let stacked = Dialect {
        base_prefix: true,
        moe: MoeNaming::Stacked,
    };
    let ckpt = to_checkpoint(&plain, &params, stacked).expect("stacked");
    assert_eq!(
        ckpt["model.layers.0.mlp.experts.gate_up_proj"].shape,
        vec![3, 16, 16]
    );
    assert_eq!(
        ckpt["model.layers.0.mlp.experts.down_proj"].shape,
        vec![3, 16, 8]
    );
    let loaded = from_checkpoint(&plain, ckpt).expect("load");
    assert_eq!(loaded.dialect.moe, MoeNaming::Stacked);
    assert_eq!(loaded.params, params);
    // Saving defaults to the stacked layout (what transformers 5 loads for every MoE family), and
    // gate_up_proj holds each expert's gate rows, then its up rows.
    let default = to_checkpoint(&plain, &params, Dialect::default()).expect("default");
    let gate_up = &default["model.layers.1.mlp.experts.gate_up_proj"];
    let e2 = &gate_up.data[2 * 16 * 16..3 * 16 * 16];
    assert_eq!(
        e2[..8 * 16],
        host["layers.1.moe.experts.2.gate.weight"].data[..]
    );
    assert_eq!(
        e2[8 * 16..],
        host["layers.1.moe.experts.2.up.weight"].data[..]
    );
    assert_eq!(
        hf_name(&plain, "layers.0.moe.router.weight").as_deref(),
        Some("model.layers.0.mlp.gate.weight")
    );
}

#[test]
fn a_mismatch_lists_every_problem_sorted() {
    let spec = spec_llama();
    let params = params_for(&spec);
    let mut ckpt = to_checkpoint(&spec, &params, Dialect::default()).expect("ckpt");
    ckpt.remove("model.layers.1.mlp.up_proj.weight");
    ckpt.remove("model.layers.0.self_attn.k_proj.bias");
    ckpt.insert(
        "model.layers.0.extra.weight".into(),
        HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    ckpt.insert(
        "a.b".into(),
        HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let w = ckpt.get_mut("model.norm.weight").expect("norm");
    *w = HostTensor {
        shape: vec![15],
        data: vec![0.0; 15],
    };
    match from_checkpoint(&spec, ckpt) {
        Err(WeightsError::Mismatch(m)) => {
            assert_eq!(
                m.missing,
                [
                    "model.layers.0.self_attn.k_proj.bias",
                    "model.layers.1.mlp.up_proj.weight"
                ]
            );
            assert_eq!(m.unexpected, ["a.b", "model.layers.0.extra.weight"]);
            assert_eq!(
                m.wrong_shape,
                [WrongShape {
                    name: "model.norm.weight".into(),
                    expected: vec![16],
                    found: vec![15]
                }]
            );
            let text = WeightsError::Mismatch(m).to_string();
            assert!(
                text.contains("missing (2)")
                    && text.contains("unexpected (2)")
                    && text.contains("wrong shape (1)"),
                "{text}"
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn tied_head_may_be_absent_or_equal_but_not_different() {
    let spec = sandwich(NormPlacement::Sandwich);
    let params = params_for(&spec);
    let mut ckpt = to_checkpoint(&spec, &params, Dialect::default()).expect("ckpt");
    let embed = ckpt["model.embed_tokens.weight"].clone();
    ckpt.insert("lm_head.weight".into(), embed.clone());
    assert_eq!(
        from_checkpoint(&spec, ckpt.clone())
            .expect("equal head")
            .params,
        params
    );
    let mut other = embed;
    other.data[3] += 1.0;
    ckpt.insert("lm_head.weight".into(), other);
    assert!(matches!(
        from_checkpoint(&spec, ckpt),
        Err(WeightsError::TiedDiffers { .. })
    ));
}

#[test]
fn an_unnameable_parameter_is_an_error() {
    let mut spec = gpt2();
    for l in &mut spec.layers {
        l.attention.qk_norm = Some(QkNorm {
            norm: norm(NormKind::Rms, false),
            scope: QkNormScope::Head,
            after_rope: false,
        });
    }
    match checkpoint_layout(&spec, Dialect::default()) {
        Err(WeightsError::Unsupported { params, .. }) => {
            assert_eq!(
                params,
                [
                    "layers.0.attn.k_norm.weight",
                    "layers.0.attn.q_norm.weight",
                    "layers.1.attn.k_norm.weight",
                    "layers.1.attn.q_norm.weight"
                ]
            );
        }
        other => panic!("expected unsupported, got {other:?}"),
    }
}

#[test]
fn corrupt_and_truncated_files_are_clean_errors() {
    let spec = spec_llama();
    let params = params_for(&spec);
    let dir = tmp("corrupt");
    let path = dir.join("model.safetensors");
    save_file(&spec, &params, &path).expect("save");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("write");
    assert!(matches!(
        load_file(&spec, &path),
        Err(WeightsError::Corrupt { .. })
    ));
    std::fs::write(&path, &bytes[..5]).expect("write");
    assert!(matches!(
        load_file(&spec, &path),
        Err(WeightsError::Corrupt { .. })
    ));
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").expect("write");
    assert!(matches!(
        load_file(&spec, &path),
        Err(WeightsError::Corrupt { .. })
    ));
    assert!(matches!(
        load_file(&spec, dir.join("absent.safetensors")),
        Err(WeightsError::Io { .. })
    ));
    assert!(matches!(
        load_hf_dir(&spec, tmp("empty-dir")),
        Err(WeightsError::NoCheckpoint { .. })
    ));
}

#[test]
fn bf16_files_load_as_f32() {
    let spec = phi();
    let params = params_for(&spec);
    let path = tmp("bf16").join("model.safetensors");
    let options = SaveOptions {
        dtype: StoreDtype::Bf16,
        ..SaveOptions::default()
    };
    save_file_with(&spec, &params, &path, options).expect("save");
    let loaded = load_file(&spec, &path).expect("load");
    let loaded = from_params(&loaded);
    for (name, t) in &from_params(&params) {
        let back = &loaded[name];
        for (a, b) in t.data.iter().zip(&back.data) {
            assert!((a - b).abs() <= a.abs() / 128.0, "{name}: {a} vs {b}");
            assert_eq!(*b, bf16_to_f32(f32_to_bf16(*a)));
        }
    }
}

#[test]
fn half_precision_conversions() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    assert!(f16_to_f32(0x7e00).is_nan());
    assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
    assert_eq!(bf16_to_f32(f32_to_bf16(1.0)), 1.0);
    // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: round to even (1).
    assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 2f32.powi(-8))), 1.0);
    assert_eq!(
        bf16_to_f32(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
        1.0 + 2f32.powi(-6)
    );
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let spec = falcon(true);
    let params = params_for(&spec);
    let ckpt = to_checkpoint(&spec, &params, Dialect::default()).expect("ckpt");
    let dir = tmp("sharded");
    let (first, second): (BTreeMap<_, _>, BTreeMap<_, _>) = ckpt
        .into_iter()
        .partition(|(n, _)| n.contains(".h.0.") || n.contains("word_"));
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &first),
        ("model-00002-of-00002.safetensors", &second),
    ] {
        write_tensors(&dir.join(file), part, &BTreeMap::new(), StoreDtype::F32)
            .expect("write shard");
        for name in part.keys() {
            map.insert(name.clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    assert_eq!(load_hf_dir(&spec, &dir).expect("load"), params);
    // An index that places a tensor in the wrong shard is an error.
    map.insert(
        "transformer.ln_f.weight".into(),
        serde_json::Value::String("model-00001-of-00002.safetensors".into()),
    );
    let index = serde_json::json!({ "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    assert!(matches!(
        load_hf_dir(&spec, &dir),
        Err(WeightsError::Index { .. })
    ));
}

#[test]
fn gradients_are_named_as_in_the_checkpoint() {
    let spec = gpt2();
    let grads = params_for(&spec);
    let named = grad_tensors(&spec, &grads, Dialect::default()).expect("grads");
    assert_eq!(
        named["grad.transformer.h.0.attn.c_attn.weight"].shape,
        vec![16, 72]
    );
    assert_eq!(
        named.len(),
        checkpoint_layout(&spec, Dialect::default())
            .expect("layout")
            .len()
    );
    assert!(named.keys().all(|k| k.starts_with("grad.")));
}

#[test]
fn saving_checks_the_parameter_map() {
    let spec = spec_llama();
    let mut params = params_for(&spec);
    params.tensors.remove("embed.weight");
    params.insert(
        "bogus",
        crate::Tensor::from_vec(&[1], vec![0.0]).expect("tensor"),
    );
    let path = tmp("bad-save").join("x.safetensors");
    match save_file(&spec, &params, &path) {
        Err(WeightsError::Mismatch(m)) => {
            assert_eq!(m.missing, ["embed.weight"]);
            assert_eq!(m.unexpected, ["bogus"]);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(!path.exists());
}

#[test]
fn large_files_are_mapped_and_read_like_small_ones() {
    // Above FileBytes::MAP_FROM (1 MiB) the file is memory-mapped: the same values come back,
    // and a truncated large file is still a clean error.
    let dir = tmp("mapped");
    let path = dir.join("big.safetensors");
    let n = 400_000; // 1.6 MB of f32
    let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut floats = BTreeMap::new();
    floats.insert(
        "w".to_string(),
        HostTensor {
            shape: vec![n / 4, 4],
            data: data.clone(),
        },
    );
    write_tensors(&path, &floats, &BTreeMap::new(), StoreDtype::F32).expect("write");
    assert!(std::fs::metadata(&path).unwrap().len() > 1 << 20);
    let back = read_tensors(&path).expect("read");
    match &back["w"] {
        FileTensor::Float(t) => {
            assert_eq!(t.shape, vec![n / 4, 4]);
            assert_eq!(t.data, data);
        }
        other => panic!("not a float tensor: {other:?}"),
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
    assert!(matches!(
        read_tensors(&path),
        Err(WeightsError::Corrupt { .. })
    ));
}
