//! The executor's per-layer step API ([`Run`]): calling the steps by hand, each layer with its own
//! policy, gives the executor's results bit for bit; wrong inputs are errors, not panics.

mod common;

use common::*;
use modelspec_dsl::ir::*;
use modelspec_runtime::exec::{Executor, Mode, Policy, Run, Saved};
use modelspec_runtime::{Error, Params};

fn spec() -> ModelSpec {
    let mut s = tiny();
    s.dropout = modelspec_dsl::ir::Dropout {
        embedding: 0.1,
        attention: 0.1,
        residual: 0.1,
    };
    s
}

fn forward(run: &mut Run<'_, f64>, policies: &[LayerCheckpoint]) -> Vec<Saved<f64>> {
    let mut x = run.embed();
    let mut saved = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let (y, s) = run.layer(i, x, p).unwrap();
        saved.push(s);
        x = y;
    }
    saved
}

#[test]
fn steps_by_hand_match_the_executor_bit_for_bit() {
    let spec = spec();
    let mut exec = Executor::new(&spec).unwrap();
    exec.set_dropout_seed(Some(11));
    let params: Params<f64> = random_params(&spec, 3, 0.2);
    let toks = tokens(2 * 6, spec.vocab, 5);
    let n = spec.layers.len();
    let policies: Vec<LayerCheckpoint> = (0..n)
        .map(|i| match i % 3 {
            0 => LayerCheckpoint::Full,
            1 => LayerCheckpoint::Save(vec!["q".into(), "attn".into()]),
            _ => LayerCheckpoint::None,
        })
        .collect();

    let mut run = exec.run(&params, &toks, 2, Mode::Train).unwrap();
    let mut x = run.embed();
    let mut saved = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let (y, s) = run.layer(i, x, p).unwrap();
        assert_eq!(s.layer(), i);
        saved.push(s);
        x = y;
    }
    assert_eq!(saved[0].names(), ["input"]);
    if n > 1 {
        // `save(q, attn)`: q before RoPE is read by no backward op, so the planner (and with it
        // the executor) keeps only attn besides the input.
        assert_eq!(saved[1].names(), ["input", "attn"]);
    }
    let head = run.head(x).unwrap();
    let mut dx = run.head_backward(&head).unwrap();
    for (i, s) in saved.into_iter().enumerate().rev() {
        dx = run.layer_backward(i, s, dx).unwrap();
    }
    run.embed_backward(dx).unwrap();
    let ours = run.finish(head).unwrap();

    let reference = exec
        .loss_and_grads(&params, &toks, 2, &Policy::Uniform(LayerCheckpoint::None))
        .unwrap();
    assert_eq!(ours.loss.to_bits(), reference.loss.to_bits());
    assert_eq!(ours.logits, reference.logits);
    assert_eq!(ours.grads, reference.grads);

    // The evaluation steps give the executor's logits.
    let mut run = exec.run(&params, &toks, 2, Mode::Eval).unwrap();
    let saved = forward(&mut run, &policies);
    assert!(saved.iter().all(|s| s.names().is_empty()));
    let logits = {
        let mut run = exec.run(&params, &toks, 2, Mode::Eval).unwrap();
        let mut x = run.embed();
        for (i, p) in policies.iter().enumerate() {
            x = run.layer(i, x, p).unwrap().0;
        }
        let head = run.head(x).unwrap();
        run.logits(head).unwrap()
    };
    assert_eq!(logits, exec.forward(&params, &toks, 2).unwrap());
}

#[test]
fn wrong_inputs_are_errors() {
    let spec = spec();
    let exec = Executor::new(&spec).unwrap();
    let params: Params<f64> = random_params(&spec, 1, 0.2);
    let toks = tokens(8, spec.vocab, 2);
    let n = spec.layers.len();
    let policies = vec![LayerCheckpoint::Auto; n];
    let is_run_error = |e: Error| matches!(e, Error::Run(_));

    let mut run = exec.run(&params, &toks, 1, Mode::Train).unwrap();
    let x = run.embed();
    assert!(is_run_error(
        run.layer(n, x.clone(), &LayerCheckpoint::Full).unwrap_err()
    ));
    let (y, s0) = run.layer(0, x, &LayerCheckpoint::Full).unwrap();
    // The hidden state of another run's shape.
    let other_toks = tokens(4, spec.vocab, 3);
    let mut other = exec.run(&params, &other_toks, 1, Mode::Train).unwrap();
    assert!(is_run_error(other.head(y.clone()).unwrap_err()));
    // Backward before the head's backward, and with another layer's saved state.
    assert!(is_run_error(
        run.layer_backward(0, forward(&mut other, &policies).remove(0), y.clone())
            .unwrap_err()
    ));
    let mut rest = forward(&mut run, &policies);
    let head = run.head(y.clone()).unwrap();
    let dx = run.head_backward(&head).unwrap();
    if n > 1 {
        let s1 = rest.remove(1);
        assert!(is_run_error(
            run.layer_backward(0, s1, dx.clone()).unwrap_err()
        ));
    }
    run.layer_backward(0, s0, dx).unwrap();
    // An unknown tensor in a policy names the layer.
    let mut run = exec.run(&params, &toks, 1, Mode::Train).unwrap();
    let x = run.embed();
    let bad = LayerCheckpoint::Save(vec!["nope".into()]);
    assert!(matches!(
        run.layer(0, x, &bad).unwrap_err(),
        Error::Program(modelspec_runtime::program::ProgramError::UnknownTensor { layer: 0, .. })
    ));
    // Evaluation runs have no backward.
    let mut run = exec.run(&params, &toks, 1, Mode::Eval).unwrap();
    let saved = forward(&mut run, &policies);
    let head = run.head(run.embed()).unwrap();
    assert!(is_run_error(run.head_backward(&head).unwrap_err()));
    assert!(is_run_error(run.finish(head).unwrap_err()));
    drop(saved);
}
