//! `modelspec check FILE...`: validate spec files.

use std::path::PathBuf;

use super::{Reported, load_or_report, print_stdout};

/// Arguments of `modelspec check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Spec files: .mspec, .yaml/.yml, or HF config.json.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Checks every file (all of them, even after a failure); exit 1 if any is invalid.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let mut failed = 0usize;
    for path in &args.files {
        match load_or_report(path) {
            Ok((spec, source)) => {
                if source.format == modelspec_dsl::load::Format::Mspec {
                    let warnings = modelspec_dsl::mspec::warnings(&source.text, &source.path);
                    if !warnings.is_empty() {
                        let text = modelspec_dsl::render::render_warnings(&warnings, &source.text);
                        eprintln!("{}", text.trim_end());
                    }
                }
                let layers = spec.layers.len();
                print_stdout(&format!(
                    "{}: ok ({}, {layers} layers)\n",
                    path.display(),
                    spec.name
                ))?;
            }
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} file(s) invalid", args.files.len());
        return Err(Reported.into());
    }
    Ok(())
}
