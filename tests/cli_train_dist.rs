//! `modelspec train --ranks N`: CPU data parallelism through the CLI follows the one-rank run, and
//! the data-parallel flags that cannot run on a device say what to use instead.

use std::path::PathBuf;
use std::process::{Command, Output};

use modelspec_runtime::train::checkpoint;

fn modelspec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .output()
        .expect("run modelspec")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "modelspec-cli-train-dist-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn train(ranks: usize) -> Vec<f32> {
    let dir = temp_dir(&format!("r{ranks}"));
    let ranks_arg = ranks.to_string();
    let out = modelspec(&[
        "train",
        "--steps",
        "3",
        "--batch",
        "4",
        "--seq",
        "16",
        "--sample-tokens",
        "0",
        "--ranks",
        &ranks_arg,
        "--save",
        dir.to_str().expect("utf-8 temp dir"),
    ]);
    assert!(
        out.status.success(),
        "--ranks {ranks}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = checkpoint::load(&dir.join("ckpt")).expect("checkpoint written");
    let _ = std::fs::remove_dir_all(&dir);
    ckpt.losses
}

#[test]
fn ranks_follow_the_one_rank_curve() {
    let one = train(1);
    assert_eq!(one.len(), 3);
    for ranks in [2, 4] {
        let many = train(ranks);
        for (step, (a, b)) in many.iter().zip(&one).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5,
                "--ranks {ranks}, step {step}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn data_parallel_flags_name_the_right_device() {
    let out = modelspec(&["train", "--device", "cpu", "--gpus", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ranks 2"), "{err}");
    let out = modelspec(&["train", "--device", "cuda", "--ranks", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gpus"), "{err}");
    let out = modelspec(&["train", "--ranks", "3", "--batch", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch 2"), "{err}");
}
