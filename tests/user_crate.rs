//! The example user crate (examples/user_crate), built and run the way a user would: a crate of
//! its own outside this workspace that depends on `modelspec` by path. `cargo run` inits a
//! `model!` model, runs logits, trains five steps and generates; `cargo run -- <llama fixture>`
//! loads HF weights and compares the logits with transformers'; `cargo test` expands the 16
//! imported specs with `model_file!` and checks counts and logits against the fixtures. It builds
//! in its own target directory (the first run compiles its dependencies once more).

use std::path::Path;
use std::process::Command;

#[test]
fn the_user_crate_builds_runs_and_passes_its_tests() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/user_crate");
    let runs: [&[&str]; 3] = [
        &["run", "--quiet"],
        &["run", "--quiet", "--", "../../tests/fixtures/llama"],
        &["test", "--quiet"],
    ];
    for args in runs {
        let out = Command::new(&cargo)
            .args(args)
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .output()
            .expect("cargo runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "cargo {args:?} in examples/user_crate failed:\n{stdout}\n{stderr}"
        );
        println!("cargo {args:?}:\n{stdout}");
    }
}
