//! Loading a spec file of any supported kind, chosen by extension.
//!
//! `.mspec` is the DSL, `.yaml`/`.yml` the IR in YAML, and `.json` either an HF `config.json`
//! (it has a `model_type`) or the IR in JSON (it has `n_layers`). Every failure is a
//! [`LoadError`]; invalid content carries its diagnostics and the source they point into.

use std::path::Path;

use crate::diag::Diagnostic;
use crate::ir::ModelSpec;

/// Largest file accepted (specs and configs are a few KiB; this bounds reads of odd files).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Which front end reads a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The `.mspec` DSL.
    Mspec,
    /// The IR as YAML.
    Yaml,
    /// An HF transformers config.json.
    HfConfig,
    /// The IR as JSON.
    IrJson,
}

/// A file's text and how it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as the user named it.
    pub path: String,
    /// The whole text.
    pub text: String,
    /// The front end used.
    pub format: Format,
}

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read the file: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{path}: is a directory, expected a .mspec, .yaml/.yml or config.json file")]
    Directory {
        /// The path as given.
        path: String,
    },
    /// Not a regular file (a FIFO, a device...).
    #[error("{path}: is not a regular file")]
    NotAFile {
        /// The path as given.
        path: String,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{path}: is {size} bytes, larger than the {MAX_FILE_BYTES} bytes accepted for a spec")]
    TooLarge {
        /// The path as given.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The file is not UTF-8 text.
    #[error("{path}: is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// The path as given.
        path: String,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The extension names no front end.
    #[error("{path}: unknown file type; expected .mspec, .yaml, .yml or .json")]
    UnknownExtension {
        /// The path as given.
        path: String,
    },
    /// The content is invalid; render the diagnostics against `file.text`.
    #[error("{}: {} problem(s) found", file.path, diagnostics.len())]
    Invalid {
        /// What is wrong, with spans into `source.text`.
        diagnostics: Vec<Diagnostic>,
        /// The file read.
        file: Box<SourceFile>,
    },
}

/// The front end for a path, by extension.
pub fn format_of(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "mspec" => Some(Format::Mspec),
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::HfConfig),
        _ => None,
    }
}

/// Reads, parses and checks a spec file.
pub fn load_file(path: impl AsRef<Path>) -> Result<(ModelSpec, SourceFile), LoadError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: shown.clone(),
        source,
    })?;
    if meta.is_dir() {
        return Err(LoadError::Directory { path: shown });
    }
    if !meta.is_file() {
        return Err(LoadError::NotAFile { path: shown });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: shown,
            size: meta.len(),
        });
    }
    let format = format_of(path).ok_or_else(|| LoadError::UnknownExtension {
        path: shown.clone(),
    })?;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| LoadError::NotUtf8 {
        path: shown.clone(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let text = normalize_text(text);
    let format = if format == Format::HfConfig && looks_like_ir_json(&text) {
        Format::IrJson
    } else {
        format
    };
    let source = SourceFile {
        path: shown,
        text,
        format,
    };
    match load_str(&source.text, &source.path, format) {
        Ok(spec) => Ok((spec, source)),
        Err(diagnostics) => Err(LoadError::Invalid {
            diagnostics,
            file: Box::new(source),
        }),
    }
}

/// The text every front end reads: without a leading UTF-8 byte-order mark (which editors on
/// Windows write and the YAML reader took for part of the first key), and with old Mac line
/// endings (a lone `\r`) made `\n`, so comments end at the line's end and diagnostics count lines.
/// `\r\n` stays as it is.
pub fn normalize_text(text: String) -> String {
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };
    if !text.contains('\r') {
        return text;
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            out.push_str(&text[last..i]);
            out.push('\n');
            last = i + 1;
        }
    }
    out.push_str(&text[last..]);
    out
}

/// Parses and checks `text` with the front end for `format`.
pub fn load_str(text: &str, file: &str, format: Format) -> Result<ModelSpec, Vec<Diagnostic>> {
    match format {
        Format::Mspec => crate::mspec::parse(text, file),
        Format::Yaml => crate::yaml::from_str(text, file),
        Format::HfConfig => crate::hf::import(text, file),
        Format::IrJson => crate::yaml::from_json_str(text, file),
    }
}

/// An IR JSON document has `n_layers` and `layers` at the top and no `model_type`.
fn looks_like_ir_json(text: &str) -> bool {
    match crate::hf::json_spans::parse(text) {
        Ok(root) => {
            root.get("model_type").is_none()
                && root.get("n_layers").is_some()
                && root.get("layers").is_some()
        }
        Err(_) => false,
    }
}
