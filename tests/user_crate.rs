//! The example user crate (examples/user_crate), built and run the way a user would: a crate of
//! its own outside this workspace that depends on `modelspec` by path. `cargo run` inits a
//! `model!` model, runs logits, trains five steps and generates; `cargo run -- <llama fixture>`
//! loads HF weights and compares the logits with transformers'; `cargo test` expands the 16
//! imported specs with `model_file!` and checks counts and logits against the fixtures.
//!
//! It builds in the workspace's target directory (the one this test binary lives in), so the
//! third-party dependencies already compiled for the workspace are reused rather than compiled
//! again in a target directory of its own (that took 10 of CI's 26 minutes). The two share what
//! they can safely: both lock files pin the same versions, both profiles are the same
//! (`[profile.dev]` line tables, dependencies at opt-level 2), and cargo keys every artifact by
//! package, version, features and profile, so a dependency that the user crate resolves with other
//! features is compiled beside the workspace's rather than over it; the modelspec crates
//! themselves are dependencies there (opt-level 2), and keep their own artifacts. Cargo's lock on
//! the directory serialises the nested build with any other; `cargo test` holds none while its
//! test binaries run (trybuild's UI tests build in the same directory the same way).
//!
//! Measured on the shared 2-core machine (busy): the three cargo commands in a fresh target
//! directory of their own took 617 s; in the workspace's target directory, 178 s the first time
//! (the modelspec crates at opt-level 2, the dependencies reused) and 49 s after a change to the
//! modelspec crates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target directory this test binary was built in (`<target>/<profile>/deps/<binary>`), or
/// the workspace's `target/` when that cannot be told.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.join("CACHEDIR.TAG").is_file() || dir.join("debug").is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[test]
fn the_user_crate_builds_runs_and_passes_its_tests() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/user_crate");
    let target = target_dir();
    let runs: [&[&str]; 3] = [
        &["run", "--quiet"],
        &["run", "--quiet", "--", "../../tests/fixtures/llama"],
        &["test", "--quiet"],
    ];
    for args in runs {
        let out = Command::new(&cargo)
            .args(args)
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
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
