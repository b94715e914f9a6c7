//! `modelspec export-hf FILE [-o config.json]`: the HF config.json of a spec.

use std::path::PathBuf;

use modelspec_dsl::hf;

use super::{load_or_report, write_output};

/// Arguments of `modelspec export-hf`.
#[derive(Debug, clap::Args)]
pub struct ExportHfArgs {
    /// A spec file: .mspec, .yaml/.yml, or HF config.json.
    pub file: PathBuf,
    /// Where to write the config.json (stdout when absent).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Config generation: 4 (top-level rope_theta/rope_scaling, as on the Hub) or 5
    /// (transformers-5 rope_parameters).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub generation: u8,
}

/// Writes the config.json, or says why no supported model_type expresses the spec.
pub fn run(args: ExportHfArgs) -> anyhow::Result<()> {
    let (spec, _) = load_or_report(&args.file)?;
    let generation = if args.generation == 5 {
        hf::Generation::Transformers5
    } else {
        hf::Generation::Hub
    };
    let config = hf::export_generation(&spec, generation)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let text = serde_json::to_string_pretty(&config)? + "\n";
    write_output(args.output.as_deref(), &text, &[&args.file])
}
