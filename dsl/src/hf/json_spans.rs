//! A small JSON reader that remembers where every value and key sits in the source.
//!
//! `serde_json` reports where a syntax error is, but not where a well-formed field is; the HF import
//! needs the latter to point a diagnostic at `"num_key_value_heads": 3`. This reader builds a tree
//! of [`JsonValue`]s, each with its byte span, keeps object members in source order, and never
//! panics: nesting is bounded, numbers are kept as text and converted on request.

use std::ops::Range;

/// Deepest nesting accepted; deeper input is an error rather than a stack overflow.
const MAX_DEPTH: usize = 128;

/// A JSON value with the byte range it spans in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonValue {
    /// Byte range of the whole value (for strings, including the quotes).
    pub span: Range<usize>,
    /// The value itself.
    pub kind: JsonKind,
}

/// The kinds of JSON values.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonKind {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written (converted by [`JsonValue::as_u64`] / [`JsonValue::as_f64`]).
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<JsonValue>),
    /// An object, members in source order.
    Object(Vec<Member>),
}

/// One `"key": value` member of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The key, unescaped.
    pub key: String,
    /// Byte range of the key, including its quotes.
    pub key_span: Range<usize>,
    /// The value.
    pub value: JsonValue,
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte range of the offending text (empty at end of input).
    pub span: Range<usize>,
    /// What was expected or found.
    pub message: String,
}

/// Why a value could not be read as the requested type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    /// A sentence saying what was expected and what was found.
    pub message: String,
}

impl JsonKind {
    /// A short name of the kind for messages ("a string", "null"...).
    pub fn describe(&self) -> String {
        match self {
            JsonKind::Null => "null".into(),
            JsonKind::Bool(b) => format!("the boolean {b}"),
            JsonKind::Number(n) => format!("the number {n}"),
            JsonKind::String(s) => {
                let short: String = s.chars().take(40).collect();
                format!("the string \"{short}\"")
            }
            JsonKind::Array(_) => "an array".into(),
            JsonKind::Object(_) => "an object".into(),
        }
    }
}

impl JsonValue {
    /// The member `key` of an object (the last one if repeated), or `None`.
    pub fn get(&self, key: &str) -> Option<&Member> {
        match &self.kind {
            JsonKind::Object(members) => members.iter().rev().find(|m| m.key == key),
            _ => None,
        }
    }

    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self.kind, JsonKind::Null)
    }

    /// A non-negative integer that fits in `u64` (`8.0` is accepted as 8, as Python writes it).
    pub fn as_u64(&self) -> Result<u64, TypeError> {
        let JsonKind::Number(text) = &self.kind else {
            return Err(TypeError {
                message: format!(
                    "expected a non-negative integer, found {}",
                    self.kind.describe()
                ),
            });
        };
        if text.starts_with('-') {
            return Err(TypeError {
                message: format!("expected a non-negative integer, found {text}"),
            });
        }
        if let Ok(v) = text.parse::<u64>() {
            return Ok(v);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TypeError {
                message: format!(
                    "{text} is too large (the largest integer accepted is {})",
                    u64::MAX
                ),
            });
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() && f.fract() == 0.0 && f < 9.007_199_254_740_992e15 => {
                Ok(f as u64)
            }
            Ok(f) if f.is_finite() && f.fract() == 0.0 => Err(TypeError {
                message: format!("{text} is too large to be an exact integer"),
            }),
            _ => Err(TypeError {
                message: format!("expected a non-negative integer, found {text}"),
            }),
        }
    }

    /// A finite number.
    pub fn as_f64(&self) -> Result<f64, TypeError> {
        let JsonKind::Number(text) = &self.kind else {
            return Err(TypeError {
                message: format!("expected a number, found {}", self.kind.describe()),
            });
        };
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            _ => Err(TypeError {
                message: format!("{text} is not a finite number"),
            }),
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Result<bool, TypeError> {
        match &self.kind {
            JsonKind::Bool(b) => Ok(*b),
            other => Err(TypeError {
                message: format!("expected true or false, found {}", other.describe()),
            }),
        }
    }

    /// A string.
    pub fn as_str(&self) -> Result<&str, TypeError> {
        match &self.kind {
            JsonKind::String(s) => Ok(s),
            other => Err(TypeError {
                message: format!("expected a string, found {}", other.describe()),
            }),
        }
    }

    /// An array's elements.
    pub fn as_array(&self) -> Result<&[JsonValue], TypeError> {
        match &self.kind {
            JsonKind::Array(items) => Ok(items),
            other => Err(TypeError {
                message: format!("expected an array, found {}", other.describe()),
            }),
        }
    }

    /// An object's members.
    pub fn as_object(&self) -> Result<&[Member], TypeError> {
        match &self.kind {
            JsonKind::Object(members) => Ok(members),
            other => Err(TypeError {
                message: format!("expected an object, found {}", other.describe()),
            }),
        }
    }
}

/// Parses a complete JSON document (one value, surrounded only by whitespace).
pub fn parse(src: &str) -> Result<JsonValue, SyntaxError> {
    let mut p = Parser {
        src: src.as_bytes(),
        text: src,
        pos: 0,
    };
    p.skip_ws();
    if p.pos >= p.src.len() {
        return Err(SyntaxError {
            span: p.pos..p.pos,
            message: "the file is empty: expected a JSON object".into(),
        });
    }
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos < p.src.len() {
        return Err(p.err_here("unexpected text after the end of the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn err_here(&self, message: &str) -> SyntaxError {
        if self.pos >= self.src.len() {
            return SyntaxError {
                span: self.src.len()..self.src.len(),
                message: format!("unexpected end of file: {message} (is the file truncated?)"),
            };
        }
        let end = self.text[self.pos..]
            .chars()
            .next()
            .map_or(self.pos + 1, |c| self.pos + c.len_utf8());
        SyntaxError {
            span: self.pos..end,
            message: message.to_string(),
        }
    }

    fn value(&mut self, depth: usize) -> Result<JsonValue, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err_here(&format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let start = self.pos;
        let kind = match self.src.get(self.pos) {
            None => return Err(self.err_here("expected a value")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => JsonKind::String(self.string()?),
            Some(b't') => self.literal("true", JsonKind::Bool(true))?,
            Some(b'f') => self.literal("false", JsonKind::Bool(false))?,
            Some(b'n') => self.literal("null", JsonKind::Null)?,
            Some(b'N') => self.literal("NaN", JsonKind::Number("NaN".into()))?,
            Some(b'I') => self.literal("Infinity", JsonKind::Number("Infinity".into()))?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => {
                return Err(self.err_here(
                    "expected a value (object, array, string, number, true, false or null)",
                ));
            }
        };
        Ok(JsonValue {
            span: start..self.pos,
            kind,
        })
    }

    fn literal(&mut self, word: &str, kind: JsonKind) -> Result<JsonKind, SyntaxError> {
        if self.src[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(kind)
        } else {
            Err(self.err_here(&format!("expected `{word}`")))
        }
    }

    fn number(&mut self) -> Result<JsonKind, SyntaxError> {
        let start = self.pos;
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
            // Python's json writes -Infinity.
            if self.src[self.pos..].starts_with(b"Infinity") {
                self.pos += "Infinity".len();
                return Ok(JsonKind::Number("-Infinity".into()));
            }
        }
        let digits = |p: &mut Self| {
            let s = p.pos;
            while p.src.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
            p.pos - s
        };
        if digits(self) == 0 {
            return Err(self.err_here("expected a digit"));
        }
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err_here("expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.src.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.src.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.err_here("expected a digit in the exponent"));
            }
        }
        Ok(JsonKind::Number(self.text[start..self.pos].to_string()))
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        // Caller checked the opening quote.
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.err_here("unterminated string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&esc) = self.src.get(self.pos) else {
                        return Err(self.err_here("unterminated escape"));
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi)
                                && self.src[self.pos..].starts_with(b"\\u")
                            {
                                self.pos += 2;
                                let lo = self.hex4()?;
                                char::from_u32(
                                    0x10000
                                        + ((hi - 0xD800) << 10)
                                        + (lo.wrapping_sub(0xDC00) & 0x3FF),
                                )
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.err_here("invalid escape in string"));
                        }
                    }
                }
                0..=0x1f => {
                    return Err(self.err_here("control character in string (is a quote missing?)"));
                }
                _ => {
                    // Copy one UTF-8 char; `text` is valid UTF-8 and pos is on a char boundary.
                    let c = self.text[self.pos..].chars().next().unwrap_or('\u{FFFD}');
                    out.push(c);
                    self.pos += c.len_utf8().max(1);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let Some(h) = self.text.get(self.pos..self.pos + 4) else {
            return Err(self.err_here("expected four hex digits after \\u"));
        };
        let v = u32::from_str_radix(h, 16)
            .map_err(|_| self.err_here("expected four hex digits after \\u"))?;
        self.pos += 4;
        Ok(v)
    }

    fn array(&mut self, depth: usize) -> Result<JsonKind, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(JsonKind::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(JsonKind::Array(items));
                }
                _ => return Err(self.err_here("expected `,` or `]` in array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<JsonKind, SyntaxError> {
        self.pos += 1;
        let mut members: Vec<Member> = Vec::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(JsonKind::Object(members));
        }
        loop {
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b'"') {
                return Err(self.err_here("expected a quoted key"));
            }
            let key_start = self.pos;
            let key = self.string()?;
            let key_span = key_start..self.pos;
            if members.iter().any(|m| m.key == key) {
                return Err(SyntaxError {
                    span: key_span,
                    message: format!("duplicate key \"{key}\""),
                });
            }
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b':') {
                return Err(self.err_here("expected `:` after the key"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push(Member {
                key,
                key_span,
                value,
            });
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(JsonKind::Object(members));
                }
                _ => return Err(self.err_here("expected `,` or `}` in object")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_values_and_keys() {
        let src = "{\n  \"a\": 12,\n  \"b\": [true, null]\n}";
        let v = parse(src).expect("valid json");
        let a = v.get("a").expect("a");
        assert_eq!(&src[a.key_span.clone()], "\"a\"");
        assert_eq!(&src[a.value.span.clone()], "12");
        assert_eq!(a.value.as_u64(), Ok(12));
        let b = v.get("b").expect("b");
        assert_eq!(&src[b.value.span.clone()], "[true, null]");
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for src in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\": 1,",
            "[1,]",
            "\"\\u12",
            "{\"a\":1}x",
            "-",
            "1e",
            "\"\\x\"",
        ] {
            assert!(parse(src).is_err(), "{src:?} should fail");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn number_conversions() {
        let v = parse("[-3, 1e400, 18446744073709551616, 8.0, 2.5]").expect("valid");
        let items = v.as_array().expect("array");
        assert!(items[0].as_u64().is_err());
        assert!(items[1].as_f64().is_err());
        assert!(items[2].as_u64().is_err());
        assert_eq!(items[3].as_u64(), Ok(8));
        assert!(items[4].as_u64().is_err());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("{\"a\": 1, \"a\": 2}").expect_err("duplicate");
        assert!(err.message.contains("duplicate"));
    }
}
