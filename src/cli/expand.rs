//! `modelspec expand FILE [--format yaml|json]`: the resolved per-layer IR.

use std::path::PathBuf;

use modelspec_dsl::yaml;

use super::{load_or_report, print_stdout};

/// Output formats of `expand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpandFormat {
    /// The IR as YAML.
    Yaml,
    /// The IR as JSON.
    Json,
}

/// Arguments of `modelspec expand`.
#[derive(Debug, clap::Args)]
pub struct ExpandArgs {
    /// A spec file: .mspec, .yaml/.yml, or HF config.json.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: ExpandFormat,
}

/// Prints the IR.
pub fn run(args: ExpandArgs) -> anyhow::Result<()> {
    let (spec, _) = load_or_report(&args.file)?;
    let mut text = match args.format {
        ExpandFormat::Yaml => yaml::to_string(&spec),
        ExpandFormat::Json => yaml::to_json_string(&spec),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    print_stdout(&text)
}
