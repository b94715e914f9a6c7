//! `modelspec import-hf CONFIG.json [-o OUT.mspec]`: an HF config.json as a spec.

use std::path::PathBuf;

use modelspec_dsl::load::{Format, LoadError, SourceFile};
use modelspec_dsl::{hf, mspec, yaml};

use super::{Reported, report_load_error, write_output};

/// Arguments of `modelspec import-hf`.
#[derive(Debug, clap::Args)]
pub struct ImportHfArgs {
    /// The HF config.json.
    pub config: PathBuf,
    /// Where to write: `.mspec` (default form), `.yaml`/`.yml` (the IR) or `.json` (the IR);
    /// stdout (.mspec) when absent.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Reads the config and writes the spec.
pub fn run(args: ImportHfArgs) -> anyhow::Result<()> {
    let shown = args.config.display().to_string();
    let text = read_text(&args.config)?;
    let spec = match hf::import(&text, &shown) {
        Ok(spec) => spec,
        Err(diagnostics) => {
            let file = Box::new(SourceFile {
                path: shown,
                text,
                format: Format::HfConfig,
            });
            report_load_error(&LoadError::Invalid { diagnostics, file });
            return Err(Reported.into());
        }
    };
    let ext = args
        .output
        .as_ref()
        .and_then(|p| p.extension())
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let out = match ext.as_deref() {
        Some("yaml" | "yml") => yaml::to_string(&spec),
        Some("json") => yaml::to_json_string(&spec) + "\n",
        _ => mspec::print(&spec),
    };
    write_output(args.output.as_deref(), &out, &[&args.config])
}

/// Reads a file as UTF-8 with the same checks (and messages) as the spec loader.
fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    let shown = path.display().to_string();
    let fail = |e: LoadError| -> anyhow::Error {
        report_load_error(&e);
        Reported.into()
    };
    let meta = std::fs::metadata(path).map_err(|source| {
        fail(LoadError::Io {
            path: shown.clone(),
            source,
        })
    })?;
    if meta.is_dir() {
        return Err(fail(LoadError::Directory { path: shown }));
    }
    if !meta.is_file() {
        return Err(fail(LoadError::NotAFile { path: shown }));
    }
    if meta.len() > modelspec_dsl::load::MAX_FILE_BYTES {
        return Err(fail(LoadError::TooLarge {
            path: shown,
            size: meta.len(),
        }));
    }
    let bytes = std::fs::read(path).map_err(|source| {
        fail(LoadError::Io {
            path: shown.clone(),
            source,
        })
    })?;
    String::from_utf8(bytes).map_err(|e| {
        fail(LoadError::NotUtf8 {
            path: shown,
            offset: e.utf8_error().valid_up_to(),
        })
    })
}
