//! Diagnostics shared by every front end.
//!
//! A front end produces [`Diagnostic`]s that point into its source text (a byte span), name the
//! field at fault, say why, and give a hint. IR-level checks (`check`) produce [`Issue`]s that name
//! a field path instead of a span; each front end maps the path back to where the user wrote it.

use std::ops::Range;

/// A problem located in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// Byte range in the source (empty range for a position; `0..0` when unknown).
    pub span: Range<usize>,
    /// The field at fault, as the user would write it (e.g. `attention.kv_heads`, `num_key_value_heads`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What would fix it.
    pub hint: Option<String>,
}

/// A problem found in the IR, located by field path rather than by span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted field path in the IR's serde form, without the layer prefix
    /// (e.g. `attention.kv_heads`, `ffn.top_k`, `vocab`).
    pub field: String,
    /// The layers concerned (empty: a global field).
    pub layers: Vec<u64>,
    /// What is wrong.
    pub message: String,
    /// What would fix it.
    pub hint: Option<String>,
}

/// 1-based line and column (in chars) of byte offset `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let mut line = 1;
    let mut line_start = 0;
    for (i, b) in src.bytes().enumerate().take(offset) {
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
        }
    }
    let col = src
        .get(line_start..offset)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// At most this many diagnostics are kept and shown; the rest are counted. A front end stops
/// collecting there (an 80 KB file repeating one key made 6,600 of them, and 800 KB ran out of
/// memory), and [`crate::render::render`] shows the first ones and the count.
pub const MAX_DIAGNOSTICS: usize = 50;

/// The `field` of the diagnostic [`more`] makes.
const MORE_FIELD: &str = "(more)";

/// The diagnostic that stands for `n` more that were not kept: "and N more".
pub fn more(file: &str, n: usize) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        span: 0..0,
        field: MORE_FIELD.to_string(),
        message: format!("and {n} more (the first {MAX_DIAGNOSTICS} are shown)"),
        hint: None,
    }
}

/// How many diagnostics `d` stands for, if it is one that [`more`] made.
pub fn more_count(d: &Diagnostic) -> Option<usize> {
    if d.field != MORE_FIELD {
        return None;
    }
    d.message
        .strip_prefix("and ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Keeps the first [`MAX_DIAGNOSTICS`] distinct diagnostics of `diags` (an exact repeat is
/// dropped) and replaces the rest by one [`more`] that counts them (and any `more` already there).
pub fn cap(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = std::collections::BTreeSet::new();
    let mut kept = Vec::new();
    let mut hidden = 0;
    let mut file = String::new();
    for d in diags {
        if let Some(n) = more_count(&d) {
            hidden += n;
            file = d.file;
            continue;
        }
        if !seen.insert((d.span.start, d.span.end, d.message.clone(), d.field.clone())) {
            continue;
        }
        if kept.len() < MAX_DIAGNOSTICS {
            kept.push(d);
        } else {
            file = d.file;
            hidden += 1;
        }
    }
    if hidden > 0 {
        kept.push(more(&file, hidden));
    }
    kept
}
