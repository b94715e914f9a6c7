//! The `modelspec` binary the CLI's GPU tests run (shared by `cli_train_cuda`, `cli_sample_cuda`
//! and `cuda_eval`).

use std::path::PathBuf;

/// `MODELSPEC_BIN` when set; else the binary cargo built for these tests, where it still is; else
/// a `modelspec` beside the test executable: the GPU machine runs the tests from an unpacked
/// archive (`bench/gpu_pack.sh`), without cargo and away from the path cargo baked in.
pub fn modelspec_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELSPEC_BIN") {
        return path.into();
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_modelspec"));
    if built.exists() {
        return built;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("modelspec")))
        .filter(|beside| beside.exists())
        .unwrap_or(built)
}
