//! The IR's serde forms as files: YAML (read and written with `serde_norway`) and JSON.
//!
//! A YAML or JSON file is the fully resolved IR exactly as `modelspec expand` prints it: every
//! default explicit, one row per layer. Reading one reports syntax and type errors at their
//! line:col, then runs the IR checks and points each issue at the key that holds the value.
//!
//! ```
//! # use modelspec_dsl::{hf, yaml};
//! let src = r#"{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
//!               "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100}"#;
//! let spec = hf::import(src, "config.json").expect("valid");
//! let text = yaml::to_string(&spec);
//! assert_eq!(yaml::from_str(&text, "x.yaml").expect("round trip"), spec);
//! ```

use crate::diag::{Diagnostic, Issue};
use crate::ir::ModelSpec;

/// Reads a YAML IR file. `file` is the path as the user named it.
///
/// Besides the IR's own serde form, a policy or a budget may be written as the spec writes it,
/// read by the one parser of [`crate::plan`]: `checkpoint: save(q, attn)` in a layer row,
/// `budget: 24GiB` or `budget: 0.5` under the model's `checkpoint`.
pub fn from_str(src: &str, file: &str) -> Result<ModelSpec, Vec<Diagnostic>> {
    if let Some(d) = too_deep(src, file) {
        return Err(vec![d]);
    }
    let spec: ModelSpec = match serde_norway::from_str(src) {
        Ok(spec) => spec,
        Err(e) => {
            let offset = e.location().map_or(0, |l| l.index().min(src.len()));
            let original = || vec![serde_diagnostic(file, offset, &e.to_string(), src)];
            // Policies written as text: parse them, then read the document again.
            let Ok(mut value) = serde_norway::from_str::<serde_norway::Value>(src) else {
                return Err(original());
            };
            match policies_from_text(&mut value) {
                Ok(0) => return Err(original()),
                Ok(_) => serde_norway::from_value(value).map_err(|_| original())?,
                Err((layer, field, e)) => {
                    let issue = Issue {
                        field: field.into(),
                        layers: layer.into_iter().collect(),
                        message: e.message(),
                        hint: e.hint(),
                    };
                    return Err(vec![locate_issue(&issue, src, file)]);
                }
            }
        }
    };
    checked(spec, src, file)
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before the YAML reader sees
/// them: its scanner does work proportional to the nesting at every token, so 200 KB of `[[[...`
/// took 55 s. The IR nests five levels; JSON files have the same limit.
pub const MAX_FLOW_DEPTH: usize = 128;

/// A diagnostic at the bracket that opens level [`MAX_FLOW_DEPTH`] + 1, if any. Brackets inside
/// quoted scalars and comments do not count; one in a plain scalar (`a[b`) counts, which only
/// makes the limit a little stricter for such text.
fn too_deep(src: &str, file: &str) -> Option<Diagnostic> {
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(Diagnostic {
                        file: file.to_string(),
                        span: i..i + 1,
                        field: "(document)".into(),
                        message: format!(
                            "YAML nested more than {MAX_FLOW_DEPTH} levels deep (`[` and `{{`)"
                        ),
                        hint: Some(
                            "a spec nests a few levels: `modelspec expand` prints a complete file"
                                .into(),
                        ),
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'#' if i == 0 || bytes[i - 1].is_ascii_whitespace() => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A quote inside a plain scalar (`it's`) is no quote: only one that starts a scalar.
            b'\'' if i == 0 || b" \t\n[{,:-".contains(&bytes[i - 1]) => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A policy error and where it stands: the layer row, if any, and the field.
type PolicyTextError = (Option<u64>, &'static str, crate::plan::PolicyError);

/// Replaces text policies (`checkpoint: full` in a layer row, `budget: 1GiB` under the model's
/// `checkpoint`) by their serde form, through [`crate::plan`]'s parser; counts the replacements.
fn policies_from_text(doc: &mut serde_norway::Value) -> Result<usize, PolicyTextError> {
    use crate::plan::{PolicyOverride, parse_budget, parse_policy};
    use serde_norway::Value;
    let mut replaced = 0;
    if let Some(slot) = doc.get_mut("checkpoint").and_then(|c| c.get_mut("budget")) {
        let text = match &*slot {
            Value::String(text) => Some(text.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if let Some(text) = text {
            let budget = parse_budget(&text).map_err(|e| (None, "checkpoint.budget", e))?;
            *slot = serde_norway::to_value(budget).unwrap_or(Value::Null);
            replaced += 1;
        }
    }
    let Some(Value::Sequence(layers)) = doc.get_mut("layers") else {
        return Ok(replaced);
    };
    for (row, layer) in layers.iter_mut().enumerate() {
        let Some(slot) = layer.get_mut("checkpoint") else {
            continue;
        };
        let Value::String(text) = &*slot else {
            continue;
        };
        let policy = match parse_policy(text) {
            Ok(PolicyOverride::Layer(p)) => p,
            Ok(PolicyOverride::Budget(_)) => {
                let e = crate::plan::PolicyError::UnknownPolicy {
                    name: "budget".into(),
                    budget_allowed: false,
                };
                return Err((Some(row as u64), "checkpoint", e));
            }
            Err(e) => return Err((Some(row as u64), "checkpoint", e)),
        };
        *slot = serde_norway::to_value(policy).unwrap_or(Value::Null);
        replaced += 1;
    }
    Ok(replaced)
}

/// Reads an IR JSON file (the form `modelspec expand --format json` prints).
pub fn from_json_str(src: &str, file: &str) -> Result<ModelSpec, Vec<Diagnostic>> {
    // serde_json locates errors; its default float parsing is not exact, so a valid document is
    // read again through the exact reader to keep every f64 bit for bit.
    if let Err(e) = serde_json::from_str::<ModelSpec>(src) {
        let offset = offset_of(src, e.line(), e.column());
        return Err(vec![serde_diagnostic(file, offset, &e.to_string(), src)]);
    }
    let exact = crate::hf::json_spans::parse(src)
        .map(|root| to_value(&root))
        .map_err(|e| vec![serde_diagnostic(file, e.span.start, &e.message, src)])?;
    let spec: ModelSpec = serde_json::from_value(exact)
        .map_err(|e| vec![serde_diagnostic(file, 0, &e.to_string(), src)])?;
    checked(spec, src, file)
}

/// A span-recorded JSON value as a `serde_json::Value`, numbers parsed exactly.
fn to_value(v: &crate::hf::json_spans::JsonValue) -> serde_json::Value {
    use crate::hf::json_spans::JsonKind;
    use serde_json::Value;
    match &v.kind {
        JsonKind::Null => Value::Null,
        JsonKind::Bool(b) => Value::Bool(*b),
        JsonKind::Number(text) => {
            if let Ok(u) = text.parse::<u64>() {
                Value::from(u)
            } else if let Ok(i) = text.parse::<i64>() {
                Value::from(i)
            } else {
                text.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        JsonKind::String(s) => Value::String(s.clone()),
        JsonKind::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        JsonKind::Object(members) => Value::Object(
            members
                .iter()
                .map(|m| (m.key.clone(), to_value(&m.value)))
                .collect(),
        ),
    }
}

/// The IR as YAML.
pub fn to_string(spec: &ModelSpec) -> String {
    serde_norway::to_string(spec).unwrap_or_else(|e| format!("# cannot write YAML: {e}\n"))
}

/// The IR as pretty-printed JSON.
pub fn to_json_string(spec: &ModelSpec) -> String {
    serde_json::to_string_pretty(spec).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Runs the checks the IR must pass, pointing issues into `src`.
fn checked(spec: ModelSpec, src: &str, file: &str) -> Result<ModelSpec, Vec<Diagnostic>> {
    let mut issues = crate::cost::limit_issues(&spec);
    if issues.is_empty() {
        issues = structural_issues(&spec);
    }
    if issues.is_empty() {
        issues = crate::check::check(&spec);
    }
    if issues.is_empty() {
        return Ok(spec);
    }
    Err(issues
        .iter()
        .map(|issue| locate_issue(issue, src, file))
        .collect())
}

/// Consistency the serde form cannot enforce by itself.
fn structural_issues(spec: &ModelSpec) -> Vec<Issue> {
    let mut issues = Vec::new();
    if spec.n_layers != spec.layers.len() as u64 {
        issues.push(Issue {
            field: "n_layers".into(),
            layers: vec![],
            message: format!(
                "n_layers is {} but there are {} layer rows",
                spec.n_layers,
                spec.layers.len()
            ),
            hint: Some("give one row per layer".into()),
        });
    }
    if let Some(layer) = spec
        .layers
        .iter()
        .enumerate()
        .find(|(i, l)| l.index != *i as u64)
    {
        issues.push(Issue {
            field: "index".into(),
            layers: vec![layer.1.index],
            message: format!("layer row {} has index {}", layer.0, layer.1.index),
            hint: Some("rows are listed in order, indices from 0".into()),
        });
    }
    issues
}

/// Byte offset of 1-based `line`, `column` (in chars).
fn offset_of(src: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col = l
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(l.len(), |(b, _)| b);
            return offset + col;
        }
        offset += l.len();
    }
    src.len()
}

/// A diagnostic from a serde error message such as `layers[0].attention: unknown field ...`.
fn serde_diagnostic(file: &str, offset: usize, message: &str, src: &str) -> Diagnostic {
    // serde_norway puts the path first ("a.b[0].c: msg at line L column C"); drop the location,
    // which the span carries.
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    let (field, why) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => ("(document)".to_string(), message.to_string()),
    };
    let field = match why.split_once("unknown field `") {
        Some((_, rest)) => rest.split('`').next().unwrap_or(&field).to_string(),
        None => field,
    };
    let hint = if why.contains("unknown field") {
        let expected: Vec<&str> = why
            .split_once("expected")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        // Swapped letters count as one slip here (`haeds` → `heads`).
        let swapped = || {
            let mut sorted: Vec<char> = field.chars().collect();
            sorted.sort_unstable();
            expected.iter().copied().find(|c| {
                let mut other: Vec<char> = c.chars().collect();
                other.sort_unstable();
                other == sorted && crate::check::edit_distance(&field, c) <= 2
            })
        };
        match crate::check::did_you_mean(&field, &expected).or_else(swapped) {
            Some(near) => Some(format!("did you mean `{near}`?")),
            None => Some(
                "remove the key or fix its spelling; the expected keys are listed above".into(),
            ),
        }
    } else if why.contains("missing field") {
        Some("every field of the IR is explicit: `modelspec expand` prints a complete file".into())
    } else {
        None
    };
    let end = src[offset.min(src.len())..]
        .find('\n')
        .map_or(src.len(), |n| offset + n);
    Diagnostic {
        file: file.to_string(),
        span: offset.min(src.len())..end.max(offset.min(src.len())),
        field,
        message: why,
        hint,
    }
}

/// Byte offset of the first key `key` at or after `from`: `key:` (YAML) or `"key":` (JSON) with
/// only indentation, `- ` or `{`/`,` before it on its line.
fn key_position(src: &str, from: usize, key: &str) -> Option<usize> {
    let from = from.min(src.len());
    let mut offset = from;
    for line in src[from..].split_inclusive('\n') {
        let trimmed = line.trim_start_matches([' ', '\t', '-', '{', ',']);
        let start = offset + (line.len() - trimmed.len());
        if trimmed.starts_with(&format!("{key}:")) {
            return Some(start);
        }
        if trimmed.starts_with(&format!("\"{key}\":")) {
            return Some(start + 1);
        }
        offset += line.len();
    }
    None
}

/// Points an IR issue at the key that holds the value: inside the layer row for a per-layer field.
pub(crate) fn locate_issue(issue: &Issue, src: &str, file: &str) -> Diagnostic {
    let last = issue.field.rsplit('.').next().unwrap_or(&issue.field);
    let mut from = 0;
    if let Some(layer) = issue.layers.first() {
        for marker in [format!("index: {layer}\n"), format!("\"index\": {layer},")] {
            if let Some(p) = src.find(&marker) {
                from = p;
                break;
            }
        }
    }
    let span = key_position(src, from, last).map_or(0..0, |p| p..p + last.len());
    let mut message = issue.message.clone();
    let mut field = issue.field.clone();
    if let Some(first) = issue.layers.first() {
        field = format!("layers[{first}].{field}");
        if issue.layers.len() > 1 {
            message = if issue.layers.len() < 8 {
                let list: Vec<String> = issue.layers.iter().map(u64::to_string).collect();
                format!("{message} (layers {})", list.join(", "))
            } else {
                format!("{message} ({} layers)", issue.layers.len())
            };
        }
    }
    Diagnostic {
        file: file.to_string(),
        span,
        field,
        message,
        hint: issue.hint.clone(),
    }
}
