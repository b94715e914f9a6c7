//! `modelspec generate FILE -o DIR`: the Rust module and the CUDA source that `model!` /
//! `model_file!` expand to, as readable files (`DIR/model.rs`, `DIR/kernels.cu`).
//!
//! `model.rs` is the same expansion the macros emit, prettyplease-formatted. Include it in a crate
//! that depends on `modelspec` with `mod model;` (or `include!`). `kernels.cu` is the one kernel
//! library instantiated for the spec: the text NVRTC compiles for this model, whether it runs
//! through `--device cuda` or through the generated code (its `{Type}Kernels::source()`).

use std::path::PathBuf;

use anyhow::Context;
use modelspec_dsl::codegen::{self, Options};

use super::load_or_report;

/// Arguments of `modelspec generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A spec file: .mspec, .yaml/.yml, or HF config.json.
    pub file: PathBuf,
    /// The directory to write `model.rs` and `kernels.cu` into (created when missing).
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

/// Writes `model.rs` and `kernels.cu`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let (spec, _) = load_or_report(&args.file)?;
    let generated = codegen::generate(&spec, &Options::default())
        .with_context(|| format!("generating code for {}", args.file.display()))?;
    let kernels = modelspec::__private::v1::kernel_source(&generated.kernels);
    let files = [("model.rs", &generated.rust), ("kernels.cu", &kernels)];
    // Both outputs are checked before either is written: no special file, not the spec itself.
    for (name, _) in files {
        modelspec_runtime::io::check_output(&args.out.join(name), &[&args.file])?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, text) in files {
        modelspec_runtime::io::write_atomic(&args.out.join(name), text.as_bytes())?;
    }
    eprintln!(
        "wrote {} ({} lines) and {} ({} lines): struct `{}`",
        args.out.join("model.rs").display(),
        generated.rust.lines().count(),
        args.out.join("kernels.cu").display(),
        kernels.lines().count(),
        generated.type_name
    );
    Ok(())
}
