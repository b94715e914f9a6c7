//! HF parity: the CPU executor against transformers, on every fixture under `tests/fixtures/`.
//!
//! Each `tests/fixtures/<model_type>/` holds a tiny random HF model written by
//! `tests/fixtures/make_fixtures.py` (transformers 5.17, float32, eager attention): `config.json`,
//! `model.safetensors`, `input.safetensors` (`input_ids`) and `expected.safetensors` (`logits`,
//! `loss`, and `grad.<checkpoint name>` for every checkpoint tensor). The config goes through the HF
//! importer, the weights through the weights loader, and the executor computes logits, loss and
//! gradients; gradients are mapped back to checkpoint names and layouts before comparing, and the
//! loaded parameters, saved again, must reproduce `model.safetensors` exactly.
//!
//! Tolerances: logits max |diff| ≤ 1e-4 × max(1, max |ref|); loss within 1e-5 relative; every
//! gradient within 1e-4 relative L2. Adding a case is adding a directory.
//!
//! `tests/fixtures/KNOWN_FAILURES` lists fixtures (`model_type: why`) that are known not to pass
//! yet, each with the reason; every other fixture must pass (a listed fixture that passes is only
//! reported, so fixing the cause elsewhere never breaks this test).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modelspec::dsl::hf;
use modelspec::runtime::exec::{Executor, Policy};
use modelspec::runtime::weights::{self, FileTensor, HostTensor};

const LOGITS_TOL: f64 = 1e-4;
const LOSS_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

/// What one fixture measured.
struct Measured {
    logits_diff: f64,
    logits_scale: f64,
    loss_rel: f64,
    worst_grad: (f64, String),
}

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn floats(tensors: &BTreeMap<String, FileTensor>, name: &str) -> Result<HostTensor, String> {
    match tensors.get(name) {
        Some(FileTensor::Float(t)) => Ok(t.clone()),
        Some(FileTensor::Int { .. }) => Err(format!("`{name}` is an integer tensor")),
        None => Err(format!("`{name}` is missing")),
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    diff.sqrt() / norm.sqrt().max(1e-30)
}

/// Runs one fixture; `Err` says what could not be run or what is out of tolerance.
fn run_fixture(dir: &Path) -> Result<Measured, String> {
    let config = dir.join("config.json");
    let src = std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let spec = hf::import(&src, &config.display().to_string()).map_err(|diags| {
        let msgs: Vec<String> = diags
            .iter()
            .map(|d| format!("`{}`: {}", d.field, d.message))
            .collect();
        format!("import: {}", msgs.join("; "))
    })?;
    let loaded = weights::load_hf_dir_detailed(&spec, dir).map_err(|e| format!("weights: {e}"))?;
    let params = &loaded.params;
    // Writing the parameters back gives the checkpoint's tensors exactly (names, layouts, values).
    let resaved =
        weights::to_checkpoint(&spec, params, loaded.dialect).map_err(|e| format!("save: {e}"))?;
    let original =
        weights::read_float_tensors(&dir.join("model.safetensors")).map_err(|e| e.to_string())?;
    if resaved != original {
        let differ: Vec<&String> = original
            .keys()
            .filter(|k| resaved.get(*k) != original.get(*k))
            .collect();
        return Err(format!(
            "re-saving does not reproduce model.safetensors: {differ:?}"
        ));
    }

    let input = weights::read_tensors(&dir.join("input.safetensors")).map_err(|e| e.to_string())?;
    let Some(FileTensor::Int { shape, data }) = input.get("input_ids") else {
        return Err("input.safetensors has no integer `input_ids`".into());
    };
    let [batch, seq] = shape[..] else {
        return Err(format!("input_ids has shape {shape:?}, expected [B, T]"));
    };
    let tokens: Vec<u32> = data
        .iter()
        .map(|&t| u32::try_from(t).map_err(|_| format!("token {t}")))
        .collect::<Result<_, _>>()?;

    let mut exec = Executor::new(&spec).map_err(|e| format!("executor: {e}"))?;
    // transformers adds the MoE load-balancing loss only with output_router_logits (off here).
    exec.set_aux_loss(false);
    let step = exec
        .loss_and_grads(params, &tokens, batch, &Policy::FromSpec)
        .map_err(|e| format!("run: {e}"))?;

    let expected =
        weights::read_tensors(&dir.join("expected.safetensors")).map_err(|e| e.to_string())?;
    let want_logits = floats(&expected, "logits")?;
    let vocab = *want_logits.shape.last().ok_or("logits have no shape")?;
    let padded = spec.vocab_padded as usize;
    if step.logits.shape() != [batch, seq, padded]
        || want_logits.shape != [batch, seq, vocab]
        || padded < vocab
    {
        return Err(format!(
            "logits shape {:?} vs expected {:?}",
            step.logits.shape(),
            want_logits.shape
        ));
    }
    let mut logits_diff = 0.0f64;
    for (row, want_row) in step
        .logits
        .data()
        .chunks(padded)
        .zip(want_logits.data.chunks(vocab))
    {
        for (&g, &w) in row.iter().zip(want_row) {
            let d = (g as f64 - w as f64).abs();
            // f64::max drops NaN: count a NaN as an infinite difference.
            logits_diff = logits_diff.max(if d.is_nan() { f64::INFINITY } else { d });
        }
    }
    let logits_scale = want_logits
        .data
        .iter()
        .fold(1.0f64, |m, &x| m.max((x as f64).abs()));

    let want_loss = floats(&expected, "loss")?.data[0] as f64;
    let loss_rel = (step.loss - want_loss).abs() / want_loss.abs().max(1e-30);

    let named = weights::grad_tensors(&spec, &step.grads, loaded.dialect)
        .map_err(|e| format!("grads: {e}"))?;
    let want_names: Vec<&String> = expected.keys().filter(|k| k.starts_with("grad.")).collect();
    let got_names: Vec<&String> = named.keys().collect();
    if want_names != got_names {
        return Err(format!(
            "gradient names differ:\n  modelspec: {got_names:?}\n  reference: {want_names:?}"
        ));
    }
    let mut worst_grad = (0.0f64, String::new());
    for (name, got) in &named {
        let want = floats(&expected, name)?;
        if got.shape != want.shape {
            return Err(format!(
                "{name}: shape {:?} vs expected {:?}",
                got.shape, want.shape
            ));
        }
        let rel = rel_l2(&got.data, &want.data);
        let rel = if rel.is_nan() { f64::INFINITY } else { rel };
        if rel > worst_grad.0 || worst_grad.1.is_empty() {
            worst_grad = (rel, name.clone());
        }
    }
    Ok(Measured {
        logits_diff,
        logits_scale,
        loss_rel,
        worst_grad,
    })
}

/// `model_type -> reason` of the fixtures known not to pass yet.
fn known_failures() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/KNOWN_FAILURES");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(':') {
            Some((name, why)) => (name.trim().to_string(), why.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

#[test]
fn every_fixture_matches_transformers() {
    let dirs = fixture_dirs();
    assert!(!dirs.is_empty(), "no fixtures under tests/fixtures");
    let known = known_failures();
    let mut problems = Vec::new();
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut failures = Vec::new();
        match run_fixture(dir) {
            Ok(m) => {
                println!(
                    "{name:<12} logits max|diff| {:.2e} (tol {:.2e})  loss rel {:.2e}  worst grad rel L2 {:.2e} ({})",
                    m.logits_diff,
                    LOGITS_TOL * m.logits_scale,
                    m.loss_rel,
                    m.worst_grad.0,
                    m.worst_grad.1
                );
                if m.logits_diff.is_nan() || m.logits_diff > LOGITS_TOL * m.logits_scale {
                    failures.push(format!(
                        "{name}: logits max |diff| {:.3e} > {:.3e}",
                        m.logits_diff,
                        LOGITS_TOL * m.logits_scale
                    ));
                }
                if m.loss_rel.is_nan() || m.loss_rel > LOSS_TOL {
                    failures.push(format!(
                        "{name}: loss relative error {:.3e} > {LOSS_TOL:e}",
                        m.loss_rel
                    ));
                }
                if m.worst_grad.0.is_nan() || m.worst_grad.0 > GRAD_TOL {
                    failures.push(format!(
                        "{name}: {} relative L2 error {:.3e} > {GRAD_TOL:e}",
                        m.worst_grad.1, m.worst_grad.0
                    ));
                }
            }
            Err(e) => {
                let short: String = e.chars().take(400).collect();
                println!("{name:<12} FAILED: {short}");
                failures.push(format!("{name}: {short}"));
            }
        }
        match (known.get(&name), failures.is_empty()) {
            (None, _) => problems.extend(failures),
            (Some(why), false) => println!("{name:<12} known failure: {why}"),
            // Not an error, so that fixing the cause elsewhere never breaks this test.
            (Some(_), true) => {
                println!("{name:<12} listed in KNOWN_FAILURES but passes now: remove the line")
            }
        }
    }
    for name in known.keys() {
        if !dirs.iter().any(|d| d.ends_with(name)) {
            problems.push(format!(
                "KNOWN_FAILURES names `{name}`, which is not a fixture"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) over {} fixtures:\n{}",
        problems.len(),
        dirs.len(),
        problems.join("\n")
    );
}

#[test]
fn fixtures_are_small_and_complete() {
    for dir in fixture_dirs() {
        let mut total = 0;
        for file in [
            "config.json",
            "model.safetensors",
            "input.safetensors",
            "expected.safetensors",
            "meta.json",
        ] {
            let path = dir.join(file);
            let meta =
                std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            total += meta.len();
        }
        assert!(total <= 300 * 1024, "{}: {total} bytes", dir.display());
        let meta = std::fs::read_to_string(dir.join("meta.json")).expect("meta.json");
        assert!(
            meta.contains("\"transformers_version\""),
            "{}: meta.json lacks the transformers version",
            dir.display()
        );
    }
}
