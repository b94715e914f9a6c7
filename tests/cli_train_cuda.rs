//! `modelspec train --device cuda` end to end: the tiny spec's loss falls on the GPU, the first
//! steps in f32 follow the CPU run, the checkpoint resumes and samples like a CPU one. Without a
//! CUDA device those tests print "skipping" and pass; the errors a machine without a driver (or
//! with a spec the GPU trainer does not cover) must give are checked everywhere.

mod gpu_bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modelspec::runtime::train::checkpoint;

/// The binary under test ([`gpu_bin::modelspec_bin`]).
fn bin() -> PathBuf {
    gpu_bin::modelspec_bin()
}

fn modelspec(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run modelspec")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "modelspec-cli-train-cuda-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A bundled spec: under `specs/` of the working directory when there is one (the GPU machine
/// runs the packed test binary from a copy of the tree), else of the crate it was built from.
fn spec(name: &str) -> String {
    let local = Path::new("specs").join(name);
    if local.is_file() {
        return local.display().to_string();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("specs")
        .join(name)
        .display()
        .to_string()
}

fn losses(dir: &Path) -> Vec<f32> {
    checkpoint::load(&dir.join("ckpt"))
        .expect("checkpoint written")
        .losses
}

const RUN: [&str; 12] = [
    "--batch",
    "8",
    "--seq",
    "64",
    "--seed",
    "5",
    "--sample-tokens",
    "16",
    "--save-every",
    "10",
    "--steps",
    "20",
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn tiny_trains_on_the_gpu() {
    if let Err(e) = modelspec::runtime::cuda::probe(0) {
        println!("skipping: no CUDA device ({e})");
        return;
    }
    let tiny = spec("tiny.mspec");

    // bf16 (the default): 20 steps, the loss falls, checkpoint + plot + sample as on the CPU.
    let dir = temp_dir("bf16");
    let d = dir.to_str().unwrap();
    let out = ok(&modelspec(
        &[
            &["train", &tiny, "--device", "cuda", "--save", d][..],
            &RUN[..],
        ]
        .concat(),
    ));
    assert!(out.contains("unigram entropy"), "{out}");
    assert!(out.contains("sample"), "{out}");
    let png = std::fs::read(dir.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let bf16 = losses(&dir);
    assert_eq!(bf16.len(), 20);
    let first = bf16[0];
    let last = bf16[15..].iter().sum::<f32>() / 5.0;
    assert!(
        first.is_finite() && last < 0.85 * first,
        "the loss did not fall: {bf16:?}"
    );
    let text = ok(&modelspec(&[
        "sample",
        d,
        "--prompt",
        "Mr. Darcy",
        "--tokens",
        "10",
    ]));
    assert!(text.starts_with("Mr. Darcy"), "{text}");

    // f32 on the GPU follows the CPU's first steps (same init, data and AdamW rule).
    let gpu = temp_dir("f32");
    let cpu = temp_dir("cpu");
    for (dir, device) in [(&gpu, "cuda"), (&cpu, "cpu")] {
        ok(&modelspec(
            &[
                &[
                    "train",
                    &tiny,
                    "--device",
                    device,
                    "--dtype",
                    "f32",
                    "--stop-after",
                    "3",
                    "--save",
                    dir.to_str().unwrap(),
                ][..],
                &RUN[..],
            ]
            .concat(),
        ));
    }
    let (g, c) = (losses(&gpu), losses(&cpu));
    assert_eq!(g.len(), 3);
    for (step, (a, b)) in g.iter().zip(&c).enumerate() {
        assert!(
            (a - b).abs() <= 2e-3 * b.abs(),
            "step {step}: gpu {a} vs cpu {b}"
        );
    }

    // A run stopped on the GPU resumes there to its planned end.
    ok(&modelspec(&[
        "train",
        "--resume",
        gpu.to_str().unwrap(),
        "--device",
        "cuda",
        "--dtype",
        "f32",
        "--sample-tokens",
        "0",
    ]));
    let resumed = losses(&gpu);
    assert_eq!(resumed.len(), 20);
    assert_eq!(&resumed[..3], &g[..]);

    // Checkpoints move between the devices: the CPU run's 3 steps continue on the GPU to step 6,
    // then on the CPU to step 9, each step near the CPU-only run's.
    let straight = temp_dir("straight");
    ok(&modelspec(
        &[
            &[
                "train",
                &tiny,
                "--device",
                "cpu",
                "--stop-after",
                "9",
                "--save",
                straight.to_str().unwrap(),
            ][..],
            &RUN[..],
        ]
        .concat(),
    ));
    let cpu_only = losses(&straight);
    for (device, stop) in [("cuda", "6"), ("cpu", "9")] {
        let mut args = vec![
            "train",
            "--resume",
            cpu.to_str().unwrap(),
            "--device",
            device,
            "--stop-after",
            stop,
            "--sample-tokens",
            "0",
        ];
        if device == "cuda" {
            args.extend(["--dtype", "f32"]);
        }
        ok(&modelspec(&args));
    }
    let moved = losses(&cpu);
    assert_eq!(moved.len(), 9);
    assert_eq!(&moved[..3], &c[..]);
    for (step, (a, b)) in moved.iter().zip(&cpu_only).enumerate() {
        assert!(
            (a - b).abs() <= 5e-3 * b.abs(),
            "step {step}: moved between devices {a} vs cpu {b}"
        );
    }
    for dir in [dir, gpu, cpu, straight] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn no_driver_is_a_clean_error() {
    if modelspec::runtime::cuda::probe(0).is_ok() {
        println!("skipping: this machine has a CUDA device");
        return;
    }
    let dir = temp_dir("nodriver");
    let err = failed(&modelspec(&[
        "train",
        "--device",
        "cuda",
        "--steps",
        "2",
        "--save",
        dir.to_str().unwrap(),
    ]));
    assert!(err.contains("--device cuda:"), "{err}");
    assert!(
        err.contains("CUDA is not available") || err.contains("no CUDA device"),
        "{err}"
    );
    assert!(!dir.join("ckpt").join(checkpoint::FILE_NAME).exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unsupported_specs_and_flags_are_clean_errors() {
    // The spec is checked before any device is touched: the same error with or without a GPU.
    // (Mixture-of-experts and mixed-layer specs run on the GPU; a spec without a final norm
    // does not.)
    let dir = temp_dir("nofinal");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("no_final_norm.mspec");
    std::fs::write(
        &file,
        "model no_final_norm {
            vocab 256   d_model 32   layers 1   context 16
            attention { heads 2 }
            position rope(theta = 10000)
            mlp swiglu(hidden = 64)
            final_norm none
        }",
    )
    .expect("write spec");
    let err = failed(&modelspec(&[
        "train",
        file.to_str().unwrap(),
        "--device",
        "cuda",
        "--steps",
        "1",
        "--save",
        dir.join("run").to_str().unwrap(),
    ]));
    assert!(
        err.contains("without a final norm") && err.contains("--device cpu"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let err = failed(&modelspec(&["train", "--dtype", "bf16", "--steps", "1"]));
    assert!(err.contains("--device cuda"), "{err}");
    let err = failed(&modelspec(&["train", "--device", "cuda", "--bench"]));
    assert!(err.contains("modelspec bench"), "{err}");
    let err = failed(&modelspec(&["train", "--device", "tpu"]));
    assert!(err.contains("--device cpu or --device cuda"), "{err}");
}
