//! Plain-text rendering of diagnostics, for the CLI and for snapshots.
//!
//! The output is deterministic (no colour, no terminal-width dependence):
//! ```text
//! error: attention.heads (32) is not divisible by attention.kv_heads (5)
//!  --> specs/x.mspec:4:26
//!   = field: attention.kv_heads
//!    |
//!  4 |     attention { heads 32 kv_heads 5 }
//!    |                          ^^^^^^^^^^
//!   = help: kv_heads must divide heads; divisors of 32: 1, 2, 4, 8, 16, 32
//! ```

use crate::diag::{Diagnostic, line_col};

/// Renders `diags` against `src` (the text they point into), one block per diagnostic,
/// separated by blank lines.
pub fn render(diags: &[Diagnostic], src: &str) -> String {
    render_as(diags, src, "error")
}

/// Renders non-fatal `diags` as [`render`] does, each headed `warning:`.
pub fn render_warnings(diags: &[Diagnostic], src: &str) -> String {
    render_as(diags, src, "warning")
}

/// At most [`crate::diag::MAX_DIAGNOSTICS`] distinct diagnostics are rendered, then one line
/// counts the rest.
fn render_as(diags: &[Diagnostic], src: &str, severity: &str) -> String {
    let mut out = String::new();
    for (k, d) in crate::diag::cap(diags.to_vec()).iter().enumerate() {
        if k > 0 {
            out.push('\n');
        }
        if crate::diag::more_count(d).is_some() {
            out.push_str(&format!("{severity}: {}\n", d.message));
            continue;
        }
        render_one(&mut out, d, src, severity);
    }
    out
}

fn render_one(out: &mut String, d: &Diagnostic, src: &str, severity: &str) {
    let start = floor_boundary(src, d.span.start.min(src.len()));
    let end = floor_boundary(src, d.span.end.clamp(start, src.len()));
    let (line, col) = line_col(src, start);
    out.push_str(&format!("{severity}: {}\n", d.message));
    out.push_str(&format!(" --> {}:{line}:{col}\n", d.file));
    if !d.field.is_empty() {
        out.push_str(&format!("  = field: {}\n", d.field));
    }
    let line_start = src[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = src[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(src.len());
    let text = src[line_start..line_end].trim_end_matches('\r');
    if !src.is_empty() {
        let number = line.to_string();
        let pad = " ".repeat(number.len());
        let caret_col = src[line_start..start].chars().count();
        let caret_len = src[start..end.min(line_end).max(start)]
            .chars()
            .count()
            .max(1);
        let chars: Vec<char> = text
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let (shown, caret_col, caret_len) = window(&chars, caret_col, caret_len);
        out.push_str(&format!(" {pad} |\n"));
        out.push_str(&format!(" {number} | {shown}\n"));
        out.push_str(&format!(
            " {pad} | {}{}\n",
            " ".repeat(caret_col),
            "^".repeat(caret_len)
        ));
    }
    if let Some(h) = &d.hint {
        out.push_str(&format!("  = help: {h}\n"));
    }
}

/// A line longer than [`LINE_WIDTH`] characters is shown as the part around the caret, cut ends
/// marked `…` (a one-line file of 100 KB printed whole for each diagnostic). Returns the text and
/// the caret's column and length in it.
fn window(chars: &[char], caret_col: usize, caret_len: usize) -> (String, usize, usize) {
    if chars.len() <= LINE_WIDTH {
        return (chars.iter().collect(), caret_col, caret_len);
    }
    let from = caret_col.min(chars.len()).saturating_sub(LINE_WIDTH / 3);
    let to = (from + LINE_WIDTH).min(chars.len());
    let mut shown = String::new();
    let mut col = caret_col - from;
    if from > 0 {
        shown.push('…');
        col += 1;
    }
    shown.extend(&chars[from..to]);
    if to < chars.len() {
        shown.push('…');
    }
    let len = caret_len.min(to.saturating_sub(caret_col)).max(1);
    (shown, col, len)
}

/// Longest source line shown whole.
const LINE_WIDTH: usize = 160;

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
