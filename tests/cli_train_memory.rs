//! `modelspec train` on the CPU refuses a run the machine cannot hold, before claiming its
//! folder (an 8B spec grew until the kernel killed it).

use std::path::Path;
use std::process::Command;

#[test]
fn an_8b_spec_is_refused_before_the_run_folder_is_claimed() {
    let dir = std::env::temp_dir().join(format!("modelspec-train-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = dir.join("run");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/llama-3.1-8b.mspec");
    let output = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args([
            "train",
            spec.to_str().unwrap(),
            "--steps",
            "1",
            "--batch",
            "64",
        ])
        .args(["--seq", "8192", "--save"])
        .arg(&run)
        .env_remove("MODELSPEC_NO_MEMORY_CHECK")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 8B parameters, their gradients and two AdamW moments alone are 120 GiB in f32, and 64 × 8192
    // tokens of activations several TiB: more than any machine this runs on.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("on the CPU needs"), "{stderr}");
    assert!(stderr.contains("GiB, this machine has"), "{stderr}");
    assert!(
        stderr.contains("try a smaller --batch or --seq"),
        "{stderr}"
    );
    assert!(!run.exists(), "the run folder is not claimed");
}
