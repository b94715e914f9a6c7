//! What loading and saving check: mismatched and unnameable parameters, tied heads, corrupt and
//! truncated files, dtypes, shards, gradient names and large (mapped) files.

use std::collections::BTreeMap;

use super::*;

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
