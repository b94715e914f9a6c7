//! Each naming family's names and layouts: round trips through a file, split and fuse, and the
//! dialects' particular names (GPT-2's Conv1D, GPT-NeoX's and Falcon's fused QKV, Phi, MoE).

use std::collections::BTreeMap;

use super::*;

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
