//! What `model!` and `model_file!` do, as plain functions over `proc_macro2` tokens (so they are
//! testable without a compiler): rebuild or read the spec text, parse it, generate, and on errors
//! emit `compile_error!`s at the right place plus a stub of the expected struct.

use std::ops::Range;
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};

use super::{Options, expand, stub, type_name_of};
use crate::diag::{Diagnostic, line_col};

/// The spec text rebuilt from a macro's tokens, with the span of every token.
#[derive(Debug, Clone)]
pub struct SourceMap {
    /// The text the parser reads.
    pub text: String,
    /// Byte range of each token in `text`, with the token's span, in order.
    pub tokens: Vec<(Range<usize>, Span)>,
}

impl SourceMap {
    /// The span of the token at or after byte `offset` (the last token when past the end).
    pub fn span_at(&self, offset: usize) -> Span {
        self.tokens
            .iter()
            .find(|(r, _)| r.end > offset)
            .or(self.tokens.last())
            .map(|(_, s)| *s)
            .unwrap_or_else(Span::call_site)
    }
}

fn leaf_text(tt: &TokenTree) -> String {
    match tt {
        TokenTree::Literal(l) => l.span().source_text().unwrap_or_else(|| l.to_string()),
        other => other.to_string(),
    }
}

struct Builder {
    map: SourceMap,
    positional: bool,
    line: usize,
    col: usize,
}

impl Builder {
    fn place(&mut self, span: Span, text: &str, glue: bool) {
        if self.positional {
            let start = span.start();
            while self.line < start.line {
                self.map.text.push('\n');
                self.line += 1;
                self.col = 0;
            }
            if self.col < start.column {
                self.map.text.push_str(&" ".repeat(start.column - self.col));
                self.col = start.column;
            } else if self.col > start.column && !self.map.text.is_empty() {
                self.map.text.push(' ');
                self.col += 1;
            }
        } else if !glue && !self.map.text.is_empty() && !self.map.text.ends_with(['\n', ' ']) {
            self.map.text.push(' ');
        }
        let begin = self.map.text.len();
        self.map.text.push_str(text);
        self.map.tokens.push((begin..self.map.text.len(), span));
        match text.rfind('\n') {
            Some(nl) => {
                self.line += text.matches('\n').count();
                self.col = text[nl + 1..].chars().count();
            }
            None => self.col += text.chars().count(),
        }
    }

    fn walk(&mut self, tokens: TokenStream) {
        let mut prev_dot = false;
        for tt in tokens {
            match &tt {
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        Delimiter::Brace => ("{", "}"),
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Bracket => ("[", "]"),
                        Delimiter::None => ("", ""),
                    };
                    if !open.is_empty() {
                        self.place(g.span_open(), open, false);
                    }
                    self.walk(g.stream());
                    if !close.is_empty() {
                        self.place(g.span_close(), close, false);
                    }
                    prev_dot = false;
                }
                TokenTree::Punct(p) => {
                    // `.` joins dotted keys and ranges; `-` a negative number.
                    let is_dot = p.as_char() == '.';
                    self.place(p.span(), &p.as_char().to_string(), is_dot || prev_dot);
                    prev_dot = is_dot || p.as_char() == '-';
                }
                other => {
                    self.place(other.span(), &leaf_text(other), prev_dot);
                    prev_dot = false;
                }
            }
        }
    }
}

/// Rebuild the spec text from a macro's tokens. Where the compiler reports token positions (Rust
/// 1.88+), each token goes back to its line and column, so the text reads as written (comments
/// become blanks); otherwise tokens are joined with single spaces, without spaces around `.`.
pub fn source_of(tokens: TokenStream) -> SourceMap {
    let positional = first_span(&tokens).is_some_and(|s| s.start().line > 0);
    let base = first_span(&tokens)
        .map(|s| s.start())
        .filter(|_| positional);
    let mut b = Builder {
        map: SourceMap {
            text: String::new(),
            tokens: Vec::new(),
        },
        positional,
        line: base.map(|p| p.line).unwrap_or(1),
        col: base.map(|p| p.column).unwrap_or(0),
    };
    b.walk(tokens);
    b.map
}

fn first_span(tokens: &TokenStream) -> Option<Span> {
    tokens.clone().into_iter().next().map(|tt| match tt {
        TokenTree::Group(g) => g.span_open(),
        other => other.span(),
    })
}

/// The model's name in spec text (`model NAME {`), for the stub when the spec does not parse.
pub fn model_name(text: &str) -> Option<String> {
    let mut words = text
        .lines()
        .map(|l| {
            l.split("//")
                .next()
                .unwrap_or("")
                .split('#')
                .next()
                .unwrap_or("")
        })
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w == "model" {
            return words.next().map(String::from);
        }
    }
    None
}

fn diagnostic_message(d: &Diagnostic) -> String {
    let mut m = if d.field.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.field, d.message)
    };
    if let Some(h) = &d.hint {
        m.push_str(&format!("\n  = hint: {h}"));
    }
    m
}

fn stub_for(text: &str) -> TokenStream {
    stub(model_name(text).map(|n| type_name_of(&n)).as_deref())
}

/// `model! { ... }`: parse the inline spec; errors point at the offending token.
pub fn expand_inline(tokens: TokenStream) -> TokenStream {
    let map = source_of(tokens);
    let file = "model! input";
    match crate::mspec::parse(&map.text, file) {
        Ok(spec) => match expand(&spec, &Options::default()) {
            Ok(out) => out,
            Err(e) => {
                let msg = format!("modelspec: cannot generate code for `{}`: {e}", spec.name);
                let mut out = quote!(::core::compile_error! { #msg });
                out.extend(stub(Some(&spec.rust_type())));
                out
            }
        },
        Err(diags) => {
            let mut out = TokenStream::new();
            for d in &diags {
                let span = map.span_at(d.span.start);
                let msg = diagnostic_message(d);
                out.extend(quote_spanned!(span=> ::core::compile_error! { #msg }));
            }
            out.extend(stub_for(&map.text));
            out
        }
    }
}

/// Resolve a `model_file!` path: absolute, or relative to the crate's manifest directory.
pub fn resolve(path: &str, manifest_dir: &Path) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        manifest_dir.join(p)
    }
}

/// `model_file!("path")`: `input` is the macro's tokens (one string literal), `manifest_dir` the
/// user crate's `CARGO_MANIFEST_DIR`. Emits `include_str!` of the file so editing it rebuilds.
pub fn expand_file(input: TokenStream, manifest_dir: &Path) -> TokenStream {
    let lit: syn::LitStr = match syn::parse2(input.clone()) {
        Ok(l) => l,
        Err(_) => {
            let span = first_span(&input).unwrap_or_else(Span::call_site);
            return quote_spanned!(span=> ::core::compile_error! {
                "model_file! takes one string literal: the path of a .mspec file, relative to CARGO_MANIFEST_DIR or absolute"
            });
        }
    };
    let span = lit.span();
    let path = resolve(&lit.value(), manifest_dir);
    let shown = lit.value();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "modelspec: cannot read `{}` ({}): {e}",
                shown,
                path.display()
            );
            return quote_spanned!(span=> ::core::compile_error! { #msg });
        }
    };
    // `include_str!` resolves a relative path against the invoking source file, not the manifest.
    let abs = std::fs::canonicalize(&path)
        .unwrap_or_else(|_| path.clone())
        .to_string_lossy()
        .into_owned();
    let include = quote!(
        const _: &str = ::core::include_str!(#abs);
    );
    // The front end by extension, as everywhere else: .mspec, .yaml/.yml, or an HF config.json.
    let format = crate::load::format_of(&path).unwrap_or(crate::load::Format::Mspec);
    match crate::load::load_str(&text, &shown, format) {
        Ok(spec) => match expand(&spec, &Options::default()) {
            Ok(mut out) => {
                out.extend(include);
                out
            }
            Err(e) => {
                let msg = format!(
                    "modelspec: {shown}: cannot generate code for `{}`: {e}",
                    spec.name
                );
                let mut out = quote_spanned!(span=> ::core::compile_error! { #msg });
                out.extend(stub(Some(&spec.rust_type())));
                out.extend(include);
                out
            }
        },
        Err(diags) => {
            let mut out = TokenStream::new();
            for d in &diags {
                let (line, col) = line_col(&text, d.span.start);
                let msg = format!("{}:{line}:{col}: {}", shown, diagnostic_message(d));
                out.extend(quote_spanned!(span=> ::core::compile_error! { #msg }));
            }
            out.extend(stub_for(&text));
            out.extend(include);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(src: &str) -> TokenStream {
        src.parse().expect("tokenizes")
    }

    #[test]
    fn rebuilt_text_keeps_lines_columns_and_atomic_tokens() {
        let src = "model tiny {\n    vocab 64 d_model 16 layers 2 context 8\n    layers[0..1] { attention.window 4 }\n}";
        let map = source_of(tokens(src));
        assert_eq!(map.text, src);
    }

    #[test]
    fn joined_text_without_positions_glues_dots_and_minus() {
        let mut b = Builder {
            map: SourceMap {
                text: String::new(),
                tokens: Vec::new(),
            },
            positional: false,
            line: 1,
            col: 0,
        };
        b.walk(tokens("layers[0..8] { attention.window 4 x -0.5 }"));
        assert_eq!(b.map.text, "layers [ 0..8 ] { attention.window 4 x -0.5 }");
    }

    #[test]
    fn inline_error_points_at_the_offending_token() {
        let src = "model tiny {\n    vocab 64 d_model 16 layers 1 context 8\n    attention { heads 2 kv_head 1 }\n}";
        let out = expand_inline(tokens(src));
        let text = out.to_string();
        assert!(text.contains("compile_error"), "{text}");
        assert!(text.contains("kv_head"), "{text}");
        assert!(
            text.contains("pub struct Tiny"),
            "the stub is emitted: {text}"
        );
        let map = source_of(tokens(src));
        let at = src.find("kv_head").unwrap();
        let span = map.span_at(at);
        assert_eq!((span.start().line, span.start().column), (3, 24));
    }

    #[test]
    fn valid_inline_spec_expands() {
        let out = expand_inline(tokens(
            "model tiny { vocab 64 d_model 16 layers 1 context 8 attention { heads 2 } }",
        ));
        let text = out.to_string();
        assert!(!text.contains("compile_error"), "{text}");
        assert!(
            text.contains("impl :: modelspec :: Model for Tiny"),
            "{text}"
        );
    }

    #[test]
    fn file_errors_name_file_line_col_and_include_the_file() {
        let dir = std::env::temp_dir().join(format!("modelspec-expand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.mspec"), "model bad {\n  vocab 64 d_model 16 layers 1 context 8\n  attention { heads 2 kv_heads 3 }\n}\n").unwrap();
        let out = expand_file(tokens("\"bad.mspec\""), &dir).to_string();
        assert!(out.contains("bad.mspec:3:"), "{out}");
        assert!(out.contains("include_str"), "{out}");
        assert!(out.contains("pub struct Bad"), "{out}");
        let missing = expand_file(tokens("\"nope.mspec\""), &dir).to_string();
        assert!(missing.contains("cannot read `nope.mspec`"), "{missing}");
        let not_lit = expand_file(tokens("nope"), &dir).to_string();
        assert!(not_lit.contains("one string literal"), "{not_lit}");
    }

    #[test]
    fn model_name_skips_comments() {
        assert_eq!(
            model_name("# model old\n// model older\nmodel new_one {"),
            Some("new_one".into())
        );
        assert_eq!(model_name("{ }"), None);
    }
}

#[cfg(test)]
mod file_format_tests {
    use super::*;

    #[test]
    fn model_file_reads_an_hf_config_json() {
        let dir =
            std::env::temp_dir().join(format!("modelspec-expand-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = r#"{
  "model_type": "llama", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
  "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32,
  "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
  "tie_word_embeddings": false
}"#;
        std::fs::write(dir.join("config.json"), config).unwrap();
        let out = expand_file("\"config.json\"".parse().unwrap(), &dir).to_string();
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains("impl :: modelspec :: Model for"), "{out}");
    }
}
