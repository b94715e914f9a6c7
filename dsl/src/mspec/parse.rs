//! Source text to syntax tree: the pest parser and its error reporting.

use pest::Parser;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;

use super::ast::{File, Node, NodeKind};
use crate::diag::Diagnostic;

#[derive(pest_derive::Parser)]
#[grammar = "mspec/grammar.pest"]
struct MspecParser;

/// Deeper nesting than this is rejected before pest runs, so no input can exhaust the stack.
const MAX_NESTING: usize = 64;

/// Parses `src` into a syntax tree, or returns the syntax error.
pub fn parse_file(src: &str, file: &str) -> Result<File, Vec<Diagnostic>> {
    if let Some(diag) = check_nesting(src, file) {
        return Err(vec![diag]);
    }
    let mut pairs = match MspecParser::parse(Rule::file, src) {
        Ok(pairs) => pairs,
        Err(err) => return Err(vec![syntax_error(src, file, &err)]),
    };
    let Some(file_pair) = pairs.next() else {
        return Err(vec![Diagnostic {
            file: file.to_string(),
            span: 0..0,
            field: String::new(),
            message: "empty input".into(),
            hint: Some("a spec starts with `model NAME {`".into()),
        }]);
    };
    let mut name = String::new();
    let mut name_span = 0..0;
    let mut header_span = 0..0;
    let mut body = Vec::new();
    for model in file_pair
        .into_inner()
        .filter(|p| p.as_rule() == Rule::model)
    {
        for part in model.into_inner() {
            match part.as_rule() {
                Rule::kw_model => header_span = span(&part),
                Rule::name => {
                    name = part.as_str().to_string();
                    name_span = span(&part);
                    header_span.end = name_span.end;
                }
                Rule::body => body = children(part),
                _ => {}
            }
        }
    }
    Ok(File {
        name,
        name_span,
        header_span,
        body,
    })
}

fn span(pair: &Pair<'_, Rule>) -> std::ops::Range<usize> {
    let s = pair.as_span();
    s.start()..s.end()
}

/// The atoms inside a `{}`, `()` or `[]` pair, without the delimiters.
fn children(pair: Pair<'_, Rule>) -> Vec<Node> {
    pair.into_inner().filter_map(node).collect()
}

fn node(pair: Pair<'_, Rule>) -> Option<Node> {
    let span = span(&pair);
    let kind = match pair.as_rule() {
        Rule::ident => NodeKind::Ident(pair.as_str().to_string()),
        Rule::number => NodeKind::Number(pair.as_str().to_string()),
        Rule::range => NodeKind::Range(pair.as_str().to_string()),
        Rule::eq => NodeKind::Eq,
        Rule::comma => NodeKind::Comma,
        Rule::body => NodeKind::Block(children(pair)),
        Rule::list => NodeKind::List(children(pair)),
        Rule::call => {
            let mut inner = pair.into_inner();
            let head = inner.next()?;
            let name = head.as_str().to_string();
            let name_span = self::span(&head);
            let args = inner.filter_map(node).collect();
            NodeKind::Call {
                name,
                name_span,
                args,
            }
        }
        _ => return None,
    };
    Some(Node { kind, span })
}

/// Rejects inputs nested deeper than [`MAX_NESTING`] (comments are skipped).
fn check_nesting(src: &str, file: &str) -> Option<Diagnostic> {
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'{' | b'(' | b'[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(Diagnostic {
                        file: file.to_string(),
                        span: i..i + 1,
                        field: String::new(),
                        message: format!("nesting deeper than {MAX_NESTING} levels"),
                        hint: Some("a spec needs only a few levels of `{}`, `()` and `[]`".into()),
                    });
                }
            }
            b'}' | b')' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The most recent unclosed opening delimiter before `offset`, if any (for "unterminated" hints).
fn unclosed_before(src: &str, offset: usize) -> Option<(usize, u8)> {
    let bytes = src.as_bytes();
    let mut stack: Vec<(usize, u8)> = Vec::new();
    let mut i = 0;
    let end = offset.min(bytes.len());
    while i < end {
        match bytes[i] {
            b'#' => {
                while i < end && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < end && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b @ (b'{' | b'(' | b'[') => stack.push((i, b)),
            b'}' | b')' | b']' => {
                stack.pop();
            }
            _ => {}
        }
        i += 1;
    }
    stack.pop()
}

fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::lbrace | Rule::body => "`{`",
        Rule::rbrace => "`}`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::lbrack | Rule::list => "`[`",
        Rule::rbrack => "`]`",
        Rule::eq => "`=`",
        Rule::comma => "`,`",
        Rule::kw_model | Rule::model => "`model`",
        Rule::name => "a model name",
        Rule::ident | Rule::call => "a key or a value",
        Rule::number | Rule::range => "a number",
        Rule::EOI => "end of input",
        _ => return None,
    })
}

fn syntax_error(src: &str, file: &str, err: &pest::error::Error<Rule>) -> Diagnostic {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let pos = pos.min(src.len());
    let found = found_at(src, pos);
    let mut expected: Vec<&'static str> = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().filter_map(|r| rule_name(*r)).collect()
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    // A closing delimiter is the most useful thing to name when a block is left open.
    for close in ["`}`", "`)`", "`]`"] {
        if expected.contains(&close) {
            expected = vec![close];
        }
    }
    expected.sort_unstable();
    expected.dedup();
    let expected_text = match expected.as_slice() {
        [] => "valid syntax".to_string(),
        [one] => (*one).to_string(),
        many => {
            let (last, rest) = many.split_last().unwrap_or((&"", &[]));
            format!("{} or {}", rest.join(", "), last)
        }
    };
    let message = if src.trim().is_empty() {
        "empty input: expected `model`".to_string()
    } else {
        format!("expected {expected_text}, found {found}")
    };
    let hint = if src.trim().is_empty() {
        Some("a spec starts with `model NAME {`".to_string())
    } else if pos >= src.trim_end().len() {
        match unclosed_before(src, pos) {
            Some((at, open)) => {
                let (line, col) = crate::diag::line_col(src, at);
                Some(format!(
                    "the `{}` at line {line}, column {col} is never closed",
                    open as char
                ))
            }
            None => Some("the input ends too early".to_string()),
        }
    } else if matches!(found.as_str(), "`}`" | "`)`" | "`]`") {
        Some("this closing delimiter does not match the one opened before it".to_string())
    } else {
        None
    };
    let end = src[pos..]
        .chars()
        .next()
        .map(|c| pos + c.len_utf8())
        .unwrap_or(pos);
    Diagnostic {
        file: file.to_string(),
        span: pos..end,
        field: String::new(),
        message,
        hint,
    }
}

fn found_at(src: &str, pos: usize) -> String {
    let rest = &src[pos..];
    match rest.chars().next() {
        None => "end of input".to_string(),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect();
            format!("`{word}`")
        }
        Some(c) if c.is_control() => format!("{:?}", c),
        Some(c) => format!("`{c}`"),
    }
}
