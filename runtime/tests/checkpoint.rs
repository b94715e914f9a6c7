//! Activation checkpointing is exact: under every policy, with dropout on, the loss, logits and
//! every gradient are bit-identical to the run that saves everything.

mod common;

use common::*;
use modelspec_dsl::ir::*;
use modelspec_dsl::tensors::layer_tensors;
use modelspec_runtime::exec::{Executor, Policy, StepOutput};
use modelspec_runtime::program::{Act, Program, ProgramError};
use modelspec_runtime::{Error, Params};

fn dropout_on(s: &mut ModelSpec) {
    s.dropout = modelspec_dsl::ir::Dropout {
        embedding: 0.1,
        attention: 0.2,
        residual: 0.1,
    };
}

fn dense() -> ModelSpec {
    let mut s = tiny();
    dropout_on(&mut s);
    each_layer(&mut s, |l| {
        l.attention.qk_norm = Some(QkNorm {
            norm: rms(),
            scope: QkNormScope::Head,
            after_rope: false,
        })
    });
    s.layers[1].attention.window = Some(3);
    s
}

fn moe_spec() -> ModelSpec {
    let mut s = tiny();
    dropout_on(&mut s);
    each_layer(&mut s, |l| {
        l.ffn = moe(
            RouterOrder::SoftmaxTopk,
            true,
            Some(SharedExperts {
                count: 1,
                hidden: 4,
                gate: true,
            }),
        )
    });
    s
}

fn parallel() -> ModelSpec {
    let mut s = tiny();
    dropout_on(&mut s);
    each_layer(&mut s, |l| {
        l.block.parallel_residual = true;
        l.block.shared_norm = true;
        l.block.norm = layer_norm();
        l.ffn = Ffn::Mlp(Mlp {
            activation: MlpKind::Gelu,
            hidden: 16,
            bias: true,
        });
        l.position = Position::Rope(Rope {
            rotary_dims: 2,
            fraction: 0.5,
            ..rope(4)
        });
    });
    s
}

fn sandwich() -> ModelSpec {
    let mut s = tiny();
    dropout_on(&mut s);
    s.logits.softcap = Some(5.0);
    s.embedding.tied = true;
    s.embedding.scale = 8f64.sqrt();
    each_layer(&mut s, |l| {
        l.block.placement = NormPlacement::Sandwich;
        l.block.norm.offset = 1.0;
        l.attention.softcap = Some(3.0);
        l.ffn = Ffn::Mlp(Mlp {
            activation: MlpKind::GegluTanh,
            hidden: 12,
            bias: false,
        });
    });
    s
}

fn bits(p: &Params<f32>) -> Vec<(String, Vec<u32>)> {
    p.iter()
        .map(|(k, t)| (k.clone(), t.data().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn assert_identical(what: &str, a: &StepOutput<f32>, b: &StepOutput<f32>) {
    assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{what}: loss");
    assert_eq!(a.logits, b.logits, "{what}: logits");
    let (ga, gb) = (bits(&a.grads), bits(&b.grads));
    assert_eq!(ga.len(), gb.len());
    for ((na, va), (_, vb)) in ga.iter().zip(&gb) {
        assert!(va == vb, "{what}: gradient of {na} differs");
    }
}

/// Every uniform policy, per-layer mixes, and save/recompute of each single tensor.
fn policies(spec: &ModelSpec) -> Vec<(String, Policy)> {
    let names: Vec<String> = layer_tensors(&spec.layers[0])
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut out = vec![
        ("full".to_string(), Policy::Uniform(LayerCheckpoint::Full)),
        ("auto".to_string(), Policy::Uniform(LayerCheckpoint::Auto)),
        (
            "save(q,v,mlp_out)".to_string(),
            Policy::Uniform(LayerCheckpoint::Save(vec![
                "q".into(),
                "v".into(),
                "mlp_out".into(),
            ])),
        ),
        (
            "recompute(attn,up)".to_string(),
            Policy::Uniform(LayerCheckpoint::Recompute(vec!["attn".into(), "up".into()])),
        ),
        (
            "mixed".to_string(),
            Policy::PerLayer(vec![LayerCheckpoint::Full, LayerCheckpoint::Auto]),
        ),
    ];
    for n in &names {
        out.push((
            format!("save({n})"),
            Policy::Uniform(LayerCheckpoint::Save(vec![n.clone()])),
        ));
        out.push((
            format!("recompute({n})"),
            Policy::Uniform(LayerCheckpoint::Recompute(vec![n.clone()])),
        ));
    }
    out
}

fn check_spec(kind: &str, spec: &ModelSpec) {
    let mut exec = Executor::new(spec).unwrap();
    exec.set_dropout_seed(Some(42));
    let params: Params<f32> = random_params(spec, 7, 0.3);
    let toks = tokens(2 * 7, spec.vocab, 3);
    let reference = exec
        .loss_and_grads(&params, &toks, 2, &Policy::Uniform(LayerCheckpoint::None))
        .unwrap();
    assert!(reference.loss.is_finite());
    // Dropout is really on: another seed changes the loss.
    let mut other = exec.clone();
    other.set_dropout_seed(Some(43));
    let changed = other
        .loss_and_grads(&params, &toks, 2, &Policy::Uniform(LayerCheckpoint::None))
        .unwrap();
    assert_ne!(
        changed.loss, reference.loss,
        "{kind}: dropout had no effect"
    );
    let list = policies(spec);
    for (name, policy) in &list {
        let out = exec.loss_and_grads(&params, &toks, 2, policy).unwrap();
        assert_identical(&format!("{kind} {name}"), &reference, &out);
    }
    println!("{kind}: {} policies bit-identical to none", list.len());
}

#[test]
fn dense_every_policy_is_bit_identical() {
    check_spec("dense", &dense());
}

#[test]
fn moe_every_policy_is_bit_identical() {
    check_spec("moe", &moe_spec());
}

#[test]
fn parallel_residual_every_policy_is_bit_identical() {
    check_spec("parallel", &parallel());
}

#[test]
fn sandwich_every_policy_is_bit_identical() {
    check_spec("sandwich", &sandwich());
}

/// The names a save set keeps, in forward order (the layer input aside).
fn kept_names(lp: &modelspec_runtime::program::LayerProgram, keep: &[bool]) -> Vec<&'static str> {
    lp.nodes
        .iter()
        .filter(|n| n.output.owner() == n.output && keep[n.output as usize])
        .map(|n| n.output.name())
        .collect()
}

#[test]
fn program_names_match_the_ir_and_policies_save_what_the_planner_says() {
    let policies = [
        LayerCheckpoint::None,
        LayerCheckpoint::Full,
        LayerCheckpoint::Auto,
        LayerCheckpoint::Save(vec!["q".into(), "attn".into()]),
        LayerCheckpoint::Recompute(vec!["attn".into(), "act".into()]),
    ];
    let mut specs = vec![dense(), moe_spec(), parallel(), sandwich()];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    for entry in std::fs::read_dir(&dir).expect("specs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "mspec") {
            let text = std::fs::read_to_string(&path).expect("read spec");
            let file = path.display().to_string();
            specs.push(modelspec_dsl::mspec::parse(&text, &file).expect("spec is valid"));
        }
    }
    assert!(specs.len() > 10, "the specs directory was read");
    for spec in &specs {
        let program = Program::lower(spec);
        for policy in &policies {
            let planned = modelspec_dsl::plan::plan(
                spec,
                1,
                8,
                modelspec_dsl::plan::Dtype::F32,
                Some(&modelspec_dsl::plan::PolicyOverride::Layer(policy.clone())),
            );
            for (i, (lp, layer)) in program.layers.iter().zip(&spec.layers).enumerate() {
                assert_eq!(lp.tensor_names(), layer_tensors(layer));
                let keep = lp
                    .save_set(policy)
                    .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
                assert!(keep[Act::Input as usize]);
                let planned = planned.as_ref().expect("plan");
                assert_eq!(
                    kept_names(lp, &keep),
                    planned.layers[i].saved,
                    "{} layer {i} under {policy:?}",
                    spec.name
                );
                if *policy == LayerCheckpoint::Full {
                    assert!(kept_names(lp, &keep).is_empty());
                }
            }
        }
        for lp in &program.layers {
            let save = lp
                .save_set(&LayerCheckpoint::Save(vec!["attn".into()]))
                .unwrap();
            assert!(save[Act::Attn as usize] && !save[Act::V as usize]);
            assert!(matches!(
                lp.save_set(&LayerCheckpoint::Recompute(vec!["zz".into()])),
                Err(ProgramError::UnknownTensor { .. })
            ));
        }
    }
}

#[test]
fn spec_policies_are_used() {
    let mut spec = dense();
    spec.layers[0].checkpoint = LayerCheckpoint::Full;
    spec.layers[1].checkpoint = LayerCheckpoint::Recompute(vec!["attn".into()]);
    let mut exec = Executor::new(&spec).unwrap();
    exec.set_dropout_seed(Some(1));
    let params: Params<f32> = random_params(&spec, 1, 0.3);
    let toks = tokens(10, spec.vocab, 2);
    let a = exec
        .loss_and_grads(&params, &toks, 2, &Policy::FromSpec)
        .unwrap();
    let b = exec
        .loss_and_grads(&params, &toks, 2, &Policy::Uniform(LayerCheckpoint::None))
        .unwrap();
    assert_identical("from spec", &a, &b);
    assert!(matches!(
        exec.loss_and_grads(
            &params,
            &toks,
            2,
            &Policy::PerLayer(vec![LayerCheckpoint::None])
        ),
        Err(Error::PolicyLayers {
            got: 1,
            expected: 2
        })
    ));
}

#[test]
fn long_sequences_with_attention_dropout_are_bit_identical() {
    // Longer than one attention block (64 rows), with a window that crosses blocks.
    let mut spec = dense();
    spec.context = 80;
    spec.layers[0].attention.window = Some(50);
    let mut exec = Executor::new(&spec).unwrap();
    exec.set_dropout_seed(Some(9));
    let params: Params<f32> = random_params(&spec, 3, 0.3);
    let toks = tokens(2 * 70, spec.vocab, 5);
    let reference = exec
        .loss_and_grads(&params, &toks, 2, &Policy::Uniform(LayerCheckpoint::None))
        .unwrap();
    for policy in [
        LayerCheckpoint::Full,
        LayerCheckpoint::Auto,
        LayerCheckpoint::Save(vec!["q_rope".into(), "v".into()]),
    ] {
        let out = exec
            .loss_and_grads(&params, &toks, 2, &Policy::Uniform(policy.clone()))
            .unwrap();
        assert_identical(&format!("long {policy:?}"), &reference, &out);
    }
}

#[test]
fn a_spec_budget_is_planned_and_exact() {
    for spec in [dense(), moe_spec()] {
        let mut budgeted = spec.clone();
        each_layer(&mut budgeted, |l| l.checkpoint = LayerCheckpoint::Auto);
        budgeted.checkpoint.budget = Some(Budget::Fraction(0.3));
        let mut exec = Executor::new(&budgeted).unwrap();
        let resolved = exec.layer_policies(&Policy::FromSpec, 2, 6).unwrap();
        let plan =
            modelspec_dsl::plan::plan(&budgeted, 2, 6, modelspec_dsl::plan::Dtype::F32, None)
                .unwrap();
        for (r, l) in resolved.iter().zip(&plan.layers) {
            assert_eq!(
                r,
                &LayerCheckpoint::Save(l.saved.iter().map(|s| s.to_string()).collect())
            );
        }
        assert_ne!(
            resolved,
            vec![LayerCheckpoint::Auto; 2],
            "the budget changed nothing"
        );
        exec.set_dropout_seed(Some(11));
        let params: Params<f32> = random_params(&budgeted, 4, 0.3);
        let toks = tokens(12, budgeted.vocab, 6);
        let planned = exec
            .loss_and_grads(&params, &toks, 2, &Policy::FromSpec)
            .unwrap();
        let none = exec
            .loss_and_grads(&params, &toks, 2, &Policy::Uniform(LayerCheckpoint::None))
            .unwrap();
        assert_identical("budget(0.3)", &none, &planned);
    }
}
