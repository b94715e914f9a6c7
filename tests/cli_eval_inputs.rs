//! `modelspec eval` is honest about what it computes: rows without a target, input tensors it
//! would not use, a NaN loss and a run the machine cannot hold are errors (exit 1), not figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modelspec::runtime::weights::{self, FileTensor, HostTensor, StoreDtype};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelspec-eval-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .arg("eval")
        .args(args)
        .env_remove("MODELSPEC_NO_MEMORY_CHECK")
        .output()
        .expect("run modelspec")
}

/// Writes an input file of integer tensors `[batch, seq]`.
fn input(name: &str, tensors: &[(&str, usize, usize, Vec<i64>)]) -> PathBuf {
    let path = temp(name);
    let ints: BTreeMap<String, (Vec<usize>, Vec<i64>)> = tensors
        .iter()
        .map(|(n, b, t, d)| (n.to_string(), (vec![*b, *t], d.clone())))
        .collect();
    weights::write_tensors(&path, &BTreeMap::new(), &ints, StoreDtype::F32).expect("write input");
    path
}

fn eval_llama(input: &Path, out: &Path) -> (Output, String) {
    let dir = fixture();
    let output = eval(&[
        "--hf",
        dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

#[test]
fn a_row_of_one_token_has_no_target() {
    // It reported loss 0 and zero gradients.
    let one = input("one.safetensors", &[("input_ids", 2, 1, vec![3, 4])]);
    let out = temp("one_out.safetensors");
    let (output, stderr) = eval_llama(&one, &out);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a row needs at least 2"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn extra_input_tensors_are_used_as_computed_or_refused_by_name() {
    let ids: Vec<i64> = (0..8).map(|i| i % 5 + 1).collect();
    let out = temp("extra_out.safetensors");
    // A mask of ones and labels equal to input_ids are what eval computes anyway.
    let same = input(
        "same.safetensors",
        &[
            ("input_ids", 2, 4, ids.clone()),
            ("attention_mask", 2, 4, vec![1; 8]),
            ("labels", 2, 4, ids.clone()),
        ],
    );
    let (output, stderr) = eval_llama(&same, &out);
    assert!(output.status.success(), "{stderr}");
    // Masked labels, padding, or a tensor eval does not know would change the loss: refused.
    let mut masked = ids.clone();
    masked[0] = -100;
    for (name, data) in [
        ("labels", masked),
        ("attention_mask", vec![1, 1, 1, 0, 1, 1, 1, 1]),
        ("token_type_ids", vec![0; 8]),
    ] {
        let path = input(
            &format!("{name}.safetensors"),
            &[("input_ids", 2, 4, ids.clone()), (name, 2, 4, data)],
        );
        let out = temp(&format!("{name}_out.safetensors"));
        let (output, stderr) = eval_llama(&path, &out);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("tensor `{name}` is not supported")),
            "{stderr}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn a_nan_loss_exits_non_zero() {
    // Weights with a NaN: the loss is NaN, which used to exit 0.
    let dir = temp("nan_model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let mut floats: BTreeMap<String, HostTensor> = BTreeMap::new();
    for (name, t) in weights::read_tensors(&fixture().join("model.safetensors")).unwrap() {
        if let FileTensor::Float(mut t) = t {
            if name == "model.norm.weight" {
                t.data[0] = f32::NAN;
            }
            floats.insert(name, t);
        }
    }
    weights::write_tensors(
        &dir.join("model.safetensors"),
        &floats,
        &BTreeMap::new(),
        StoreDtype::F32,
    )
    .unwrap();
    let out = temp("nan_out.safetensors");
    let output = eval(&[
        "--hf",
        dir.to_str().unwrap(),
        "--input",
        fixture().join("input.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the loss is NaN"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn a_model_larger_than_memory_is_refused_before_loading() {
    // A 16M-token vocabulary at width 8192: ~1 TiB of f32 parameters (it tried 256 GiB). The
    // weights file does not even exist: the estimate comes first.
    let spec = temp("huge.mspec");
    std::fs::write(
        &spec,
        "model huge {\n    vocab 16777216 d_model 8192 layers 2 context 64\n    attention { heads 64 }\n    mlp swiglu(hidden = 16384)\n}\n",
    )
    .unwrap();
    let ids = input(
        "huge_in.safetensors",
        &[("input_ids", 1, 4, vec![1, 2, 3, 4])],
    );
    let out = temp("huge_out.safetensors");
    let output = eval(&[
        "--spec",
        spec.to_str().unwrap(),
        "--weights",
        temp("absent.safetensors").to_str().unwrap(),
        "--input",
        ids.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("GiB, this machine has"), "{stderr}");
    assert!(stderr.contains("try "), "{stderr}");
    assert!(!stderr.contains("absent.safetensors"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn a_checkpoint_that_is_no_regular_file_is_named_as_such() {
    // A FIFO or a symbolic-link loop as model.safetensors read "holds neither model.safetensors
    // nor model.safetensors.index.json".
    let ids = fixture().join("input.safetensors");
    for (name, make) in [
        (
            "fifo",
            &(|p: &Path| {
                let ok = Command::new("mkfifo").arg(p).status().map(|s| s.success());
                assert_eq!(ok.ok(), Some(true), "mkfifo");
            }) as &dyn Fn(&Path),
        ),
        ("loop", &|p: &Path| {
            std::os::unix::fs::symlink(p, p).unwrap()
        }),
        ("dangling", &|p: &Path| {
            std::os::unix::fs::symlink(p.with_file_name("absent"), p).unwrap()
        }),
    ] {
        let dir = temp(&format!("ckpt_{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
        make(&dir.join("model.safetensors"));
        let out = temp(&format!("ckpt_{name}_out.safetensors"));
        let output = eval(&[
            "--hf",
            dir.to_str().unwrap(),
            "--input",
            ids.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(!stderr.contains("holds neither"), "{name}: {stderr}");
        assert!(stderr.contains("model.safetensors:"), "{name}: {stderr}");
        let why = match name {
            "fifo" => "is a FIFO, not a regular file",
            "loop" => "symbolic links",
            _ => "a symbolic link to a missing file",
        };
        assert!(stderr.contains(why), "{name}: {stderr}");
    }
}
