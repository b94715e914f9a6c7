//! The executor's entry points: forward against loss_and_grads, typed errors for bad input, and
//! parameter initialisation.

use super::common::*;
use modelspec_dsl::ir::*;
use modelspec_runtime::exec::{Executor, Policy};
use modelspec_runtime::{Error, Params};

#[test]
fn forward_matches_loss_and_grads_logits() {
    let spec = tiny();
    let exec = Executor::new(&spec).unwrap();
    let params: Params<f32> = random_params(&spec, 2, 0.3);
    let toks = tokens(12, spec.vocab, 4);
    let logits = exec.forward(&params, &toks, 2).unwrap();
    assert_eq!(logits.shape(), &[2, 6, 12]);
    let out = exec
        .loss_and_grads(&params, &toks, 2, &Policy::FromSpec)
        .unwrap();
    assert_eq!(out.logits, logits);
    let loss = exec.loss(&params, &toks, 2).unwrap();
    assert_eq!(loss, out.loss);
}

#[test]
fn bad_input_is_a_typed_error() {
    let spec = tiny();
    let exec = Executor::new(&spec).unwrap();
    let params = Params::<f32>::init(&spec, 0);
    assert!(matches!(
        exec.forward(&params, &[1, 2, 11], 1),
        Err(Error::TokenOutOfRange {
            token: 11,
            position: 2,
            vocab: 11
        })
    ));
    let long = vec![1u32; 17];
    assert!(matches!(
        exec.forward(&params, &long, 1),
        Err(Error::SequenceTooLong {
            seq: 17,
            context: 16
        })
    ));
    assert!(matches!(
        exec.forward(&params, &[1, 2, 3], 2),
        Err(Error::BadBatch { .. })
    ));
    assert!(matches!(
        exec.forward(&params, &[], 1),
        Err(Error::BadBatch { .. })
    ));
    let mut missing = params.clone();
    missing.tensors.remove("layers.1.attn.q.weight");
    assert!(matches!(
        exec.forward(&missing, &[1, 2], 1),
        Err(Error::MissingParam(_))
    ));
    let mut zero_window = tiny();
    zero_window.layers[1].attention.window = Some(0);
    assert!(matches!(
        Executor::new(&zero_window),
        Err(Error::BadSpec(_))
    ));
    let mut odd_rotary = tiny();
    odd_rotary.layers[0].position = Position::Rope(Rope {
        rotary_dims: 3,
        ..rope(4)
    });
    assert!(matches!(Executor::new(&odd_rotary), Err(Error::BadSpec(_))));
    let bad_policy = Policy::Uniform(LayerCheckpoint::Save(vec!["nope".into()]));
    assert!(matches!(
        exec.loss_and_grads(&params, &[1, 2], 1, &bad_policy),
        Err(Error::Program(_))
    ));
}

#[test]
fn init_is_deterministic_and_follows_the_conventions() {
    let mut spec = tiny();
    spec.layers[1].block.norm.offset = 1.0;
    spec.layers[0].attention.qkv_bias = true;
    let a = Params::<f32>::init(&spec, 7);
    let b = Params::<f32>::init(&spec, 7);
    let c = Params::<f32>::init(&spec, 8);
    assert_eq!(a, b);
    assert_ne!(a.get("embed.weight"), c.get("embed.weight"));
    a.check(&spec).unwrap();
    assert!(
        a.get("layers.0.attn_norm.weight")
            .unwrap()
            .data()
            .iter()
            .all(|&v| v == 1.0)
    );
    assert!(
        a.get("layers.1.attn_norm.weight")
            .unwrap()
            .data()
            .iter()
            .all(|&v| v == 0.0)
    );
    assert!(
        a.get("layers.0.attn.q.bias")
            .unwrap()
            .data()
            .iter()
            .all(|&v| v == 0.0)
    );
    let w = a.get("layers.0.mlp.up.weight").unwrap().data();
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        mean.abs() < 0.01 && (std - 0.02).abs() < 0.006,
        "mean {mean} std {std}"
    );
    let mut wrong = a.clone();
    wrong.insert("final_norm.weight", modelspec_runtime::Tensor::zeros(&[3]));
    assert!(matches!(wrong.check(&spec), Err(Error::ParamShape { .. })));
    // f32 and f64 run the same code: the f64 loss of f32-representable parameters is close.
    let exec = Executor::new(&spec).unwrap();
    let toks = tokens(8, spec.vocab, 1);
    let l32 = exec.loss(&a, &toks, 2).unwrap();
    let l64 = exec.loss(&a.cast::<f64>(), &toks, 2).unwrap();
    assert!((l32 - l64).abs() < 1e-5, "{l32} vs {l64}");
}
