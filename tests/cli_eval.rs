//! `modelspec eval` end to end on HF fixtures: the output file's names, shapes and values.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelspec::runtime::weights::{self, FileTensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn out_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelspec-cli-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .arg("eval")
        .args(args)
        .output()
        .expect("run modelspec")
}

fn floats(path: &Path) -> std::collections::BTreeMap<String, weights::HostTensor> {
    weights::read_tensors(path)
        .expect("read")
        .into_iter()
        .filter_map(|(k, t)| match t {
            FileTensor::Float(t) => Some((k, t)),
            FileTensor::Int { .. } => None,
        })
        .collect()
}

/// Runs eval on a fixture and compares every output with transformers' (loosely: the parity
/// test holds the exact tolerances).
fn check(name: &str, args: &[&str]) {
    let dir = fixture(name);
    let out = out_path(&format!("{name}.safetensors"));
    let input = dir.join("input.safetensors");
    let mut all: Vec<&str> = vec![
        "--input",
        input.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    all.extend(args);
    let output = eval(&all);
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got = floats(&out);
    let want = floats(&dir.join("expected.safetensors"));
    let with_grads = args.contains(&"--grads");
    let want_names: Vec<&String> = want
        .keys()
        .filter(|k| with_grads || !k.starts_with("grad."))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want_names,
        "{name}: output names"
    );
    for (k, w) in &want {
        let Some(g) = got.get(k) else { continue };
        assert_eq!(g.shape, w.shape, "{name}: {k} shape");
        let diff = g
            .data
            .iter()
            .zip(&w.data)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let scale = w.data.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        assert!(
            diff <= 1e-3 * scale.max(1.0),
            "{name}: {k} differs by {diff}"
        );
    }
}

#[test]
fn eval_hf_dir_with_grads_writes_checkpoint_names() {
    let dir = fixture("gpt2");
    check("gpt2", &["--hf", dir.to_str().expect("utf-8"), "--grads"]);
}

#[test]
fn eval_spec_and_weights_with_a_checkpoint_policy() {
    let dir = fixture("mixtral");
    let config = dir.join("config.json");
    let model = dir.join("model.safetensors");
    check(
        "mixtral",
        &[
            "--spec",
            config.to_str().expect("utf-8"),
            "--weights",
            model.to_str().expect("utf-8"),
            "--grads",
            "--checkpoint",
            "full",
        ],
    );
}

#[test]
fn eval_without_grads_writes_logits_and_loss() {
    let dir = fixture("falcon");
    check("falcon", &["--hf", dir.to_str().expect("utf-8")]);
}

#[test]
fn eval_errors_are_clean() {
    let dir = fixture("llama");
    let out = out_path("bad.safetensors");
    let (d, o) = (dir.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    // The checkpoint itself is not an input: it has no input_ids.
    let not_input = dir.join("model.safetensors");
    let output = eval(&[
        "--hf",
        d,
        "--input",
        not_input.to_str().expect("utf-8"),
        "--out",
        o,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("input_ids"));
    // A truncated checkpoint.
    let broken = out_path("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::copy(dir.join("config.json"), broken.join("config.json")).expect("copy");
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
    std::fs::write(broken.join("model.safetensors"), &bytes[..bytes.len() / 2]).expect("write");
    let input = dir.join("input.safetensors");
    let output = eval(&[
        "--hf",
        broken.to_str().expect("utf-8"),
        "--input",
        input.to_str().expect("utf-8"),
        "--out",
        o,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a valid safetensors file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // --spec without --weights is a usage error.
    let output = eval(&["--spec", "x.mspec", "--input", "a", "--out", o]);
    assert_eq!(output.status.code(), Some(2));
    assert!(!out.exists(), "nothing is written on failure");
}
