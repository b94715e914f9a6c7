//! `modelspec generate FILE -o DIR`: the Rust module and the CUDA source that `model!` /
//! `model_file!` expand to, as readable files (`DIR/model.rs`, `DIR/kernels.cu`).
//!
//! `model.rs` is the same expansion the macros emit, prettyplease-formatted, except that it reads
//! the CUDA source with `include_str!("kernels.cu")` instead of carrying it as a string literal.
//! Include it in a crate that depends on `modelspec` with `mod model;` (or `include!`).

use std::path::PathBuf;

use anyhow::Context;
use modelspec_dsl::codegen::{self, CudaSource, Options};

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
    let options = Options {
        cuda: CudaSource::IncludeStr("kernels.cu".into()),
    };
    let generated = codegen::generate(&spec, &options)
        .with_context(|| format!("generating code for {}", args.file.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, text) in [
        ("model.rs", &generated.rust),
        ("kernels.cu", &generated.cuda),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "wrote {} ({} lines) and {} ({} lines): struct `{}`",
        args.out.join("model.rs").display(),
        generated.rust.lines().count(),
        args.out.join("kernels.cu").display(),
        generated.cuda.lines().count(),
        generated.type_name
    );
    Ok(())
}
