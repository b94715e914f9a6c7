//! The help of `bench` and `train` says what the GPU trainer runs today: every layer kind, and
//! checkpoint plans (it once saved every activation and covered dense GPT-2/Llama-style specs).

use std::process::Command;

fn help(command: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args([command, "--help"])
        .output()
        .expect("run modelspec");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn bench_and_train_help_describe_the_gpu_trainer_of_today() {
    for command in ["bench", "train"] {
        let text = help(command);
        assert!(
            !text.contains("saves every activation"),
            "{command}: {text}"
        );
        assert!(!text.contains("GPT-2/Llama-style"), "{command}: {text}");
        assert!(text.contains("MoE"), "{command}: {text}");
    }
    assert!(help("bench").contains("budget(0.5)"));
    // The in-step timeline is one flag away.
    assert!(help("bench").contains("--timeline"));
}

#[test]
fn bench_reads_its_checkpoint_policy_before_the_device() {
    // A bad policy is a usage error on any machine, with or without a GPU.
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/tiny.mspec");
    let output = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args([
            "bench",
            spec,
            "--batch",
            "1",
            "--seq",
            "8",
            "--checkpoint",
            "budget(2)",
        ])
        .output()
        .expect("run modelspec");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--checkpoint budget(2)"), "{stderr}");
    assert!(!stderr.contains("saves every activation"), "{stderr}");
}
