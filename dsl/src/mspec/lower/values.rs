//! The reader's primitives: diagnostics, provenance records, and the values a key takes
//! (numbers, flags, words, call arguments, norms).

use super::*;

impl Reader<'_> {
    pub(super) fn error(&mut self, span: Span, field: &str, message: String, hint: Option<String>) {
        if self.diags.len() >= crate::diag::MAX_DIAGNOSTICS {
            self.more += 1;
            return;
        }
        let user = user_path(field);
        let message = if user != field {
            message.replace(&format!("`{field}`"), &format!("`{user}`"))
        } else {
            message
        };
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            span,
            field: user,
            message,
            hint,
        });
    }

    pub(super) fn record(&mut self, field: &str, span: Span) {
        self.prov.push(ProvEntry {
            field: field.to_string(),
            rule: self.rule,
            span,
        });
    }

    /// Marks `path` as written in the current scope; reports a duplicate.
    pub(super) fn mark(&mut self, path: &str, span: &Span) {
        if let Some(first) = self.seen.get(path).cloned() {
            if self.diags.len() >= crate::diag::MAX_DIAGNOSTICS {
                self.more += 1;
                return;
            }
            let (line, col) = crate::diag::line_col(self.src, first.start);
            self.error(
                span.clone(),
                path,
                format!("duplicate key `{path}`"),
                Some(format!(
                    "`{path}` is first set at line {line}, column {col}; keep one of them"
                )),
            );
        } else {
            self.seen.insert(path.to_string(), span.clone());
        }
    }

    pub(super) fn unknown_key(&mut self, key: &str, span: Span, scope: &str, keys: &[&str]) {
        let hint = match did_you_mean(key, keys) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("known keys here: {}", keys.join(", ")),
        };
        // `attention` scope: the field is `attention.kv_head`, as the user would write it.
        let field = match scope.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
            Some(block) => format!("{block}.{key}"),
            None => key.to_string(),
        };
        self.error(
            span,
            &field,
            format!("unknown key `{key}` in {scope}"),
            Some(hint),
        );
    }

    /// Skips the value atoms of an unknown key (anything up to the next identifier).
    pub(super) fn skip_value(&mut self, cur: &mut Cursor<'_>) {
        cur.eat_eq();
        while let Some(n) = cur.peek() {
            if matches!(n.kind, NodeKind::Ident(_)) {
                break;
            }
            cur.next();
            if matches!(
                n.kind,
                NodeKind::Block(_) | NodeKind::Call { .. } | NodeKind::Comma
            ) {
                break;
            }
        }
    }

    pub(super) fn missing(&mut self, cur: &Cursor<'_>, key_span: &Span, field: &str, what: &str) {
        let (span, found) = match cur.peek() {
            Some(n) => (n.span.clone(), n.describe()),
            None => (cur.end.clone(), "the end of the block".to_string()),
        };
        let span = if span == cur.end {
            key_span.clone()
        } else {
            span
        };
        self.error(
            span,
            field,
            format!("`{field}` expects {what}, found {found}"),
            None,
        );
    }

    /// Reads a number value (after an optional `=`).
    pub(super) fn number(
        &mut self,
        cur: &mut Cursor<'_>,
        key_span: &Span,
        field: &str,
    ) -> Option<(Num, Span)> {
        cur.eat_eq();
        match cur.peek() {
            Some(Node {
                kind: NodeKind::Number(text),
                span,
            }) => {
                cur.next();
                match parse_number(text) {
                    Some(n) => Some((n, span.clone())),
                    None => {
                        self.error(
                            span.clone(),
                            field,
                            format!("`{text}` is not a number"),
                            None,
                        );
                        None
                    }
                }
            }
            _ => {
                self.missing(cur, key_span, field, "a number");
                // Consume a stray value so it is not read again as a key; keep real keys.
                match cur.peek().map(|n| &n.kind) {
                    Some(NodeKind::Range(_) | NodeKind::Eq | NodeKind::List(_)) => {
                        cur.next();
                    }
                    Some(NodeKind::Ident(w)) if !is_any_key(w) => {
                        cur.next();
                    }
                    _ => {}
                }
                None
            }
        }
    }

    pub(super) fn no_unit(&mut self, n: &Num, span: &Span, field: &str) -> bool {
        if n.unit.is_empty() {
            true
        } else {
            self.error(
                span.clone(),
                field,
                format!("unexpected unit `{}` on `{field}`", n.unit),
                Some("units (GiB, MiB, GB...) are only allowed on `checkpoint.budget`".into()),
            );
            false
        }
    }

    /// A non-negative integer.
    pub(super) fn uint(
        &mut self,
        cur: &mut Cursor<'_>,
        key_span: &Span,
        field: &str,
    ) -> Option<u64> {
        let (n, span) = self.number(cur, key_span, field)?;
        self.record(field, key_span.start..span.end);
        self.as_uint(&n, &span, field)
    }

    pub(super) fn as_uint(&mut self, n: &Num, span: &Span, field: &str) -> Option<u64> {
        if !self.no_unit(n, span, field) {
            return None;
        }
        if n.too_large {
            self.error(
                span.clone(),
                field,
                format!("`{field}` is too large: integers must fit in 64 bits"),
                Some(format!("the largest value is {}", u64::MAX)),
            );
            return None;
        }
        if let Some(v) = n.int {
            return Some(v);
        }
        if n.negative {
            self.error(
                span.clone(),
                field,
                format!("`{field}` must not be negative"),
                None,
            );
            return None;
        }
        if n.value.fract() == 0.0 && n.value < 9.007_199_254_740_992e15 {
            return Some(n.value as u64);
        }
        self.error(
            span.clone(),
            field,
            format!("`{field}` expects an integer, found `{}`", n.value),
            None,
        );
        None
    }

    /// A real number.
    pub(super) fn real(
        &mut self,
        cur: &mut Cursor<'_>,
        key_span: &Span,
        field: &str,
    ) -> Option<f64> {
        let (n, span) = self.number(cur, key_span, field)?;
        self.record(field, key_span.start..span.end);
        if !self.no_unit(&n, &span, field) {
            return None;
        }
        Some(n.value)
    }

    /// A flag: `tied`, `tied = false`, `tied true`.
    pub(super) fn flag(
        &mut self,
        cur: &mut Cursor<'_>,
        key_span: &Span,
        field: &str,
    ) -> Option<bool> {
        let had_eq = cur.eat_eq();
        let value = match cur.peek() {
            Some(Node {
                kind: NodeKind::Ident(w),
                span,
            }) if w == "true" || w == "false" => {
                cur.next();
                self.record(field, key_span.start..span.end);
                return Some(w == "true");
            }
            _ if had_eq => {
                self.missing(cur, key_span, field, "`true` or `false`");
                cur.next();
                return None;
            }
            _ => true,
        };
        self.record(field, key_span.clone());
        Some(value)
    }

    /// One of a fixed set of words.
    pub(super) fn word<T: Copy>(
        &mut self,
        cur: &mut Cursor<'_>,
        key_span: &Span,
        field: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        cur.eat_eq();
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        match cur.peek() {
            Some(Node {
                kind: NodeKind::Ident(w),
                span,
            }) => {
                cur.next();
                self.record(field, key_span.start..span.end);
                self.choose(w, span, field, choices)
            }
            _ => {
                self.missing(
                    cur,
                    key_span,
                    field,
                    &format!("one of {}", names.join(", ")),
                );
                None
            }
        }
    }

    /// The value named `w` among `choices`, or an error that suggests the nearest name.
    pub(super) fn choose<T: Copy>(
        &mut self,
        w: &str,
        span: &Span,
        field: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        if let Some((_, v)) = choices.iter().find(|c| c.0 == w) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let hint = match did_you_mean(w, &names) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of {}", names.join(", ")),
        };
        self.error(
            span.clone(),
            field,
            format!("unknown value `{w}` for `{field}`"),
            Some(hint),
        );
        None
    }

    /// Reads `key = value, ...` arguments of a call into a map, reporting duplicates and unknowns.
    pub(super) fn call_args<'n>(
        &mut self,
        name: &str,
        args: &'n [Node],
        end: &Span,
        allowed: &[&str],
        positional: bool,
    ) -> (Args<'n>, Vec<&'n Node>) {
        let mut out: Args<'n> = BTreeMap::new();
        let mut pos = Vec::new();
        let mut cur = Cursor::new(args, end.clone());
        while cur.peek().is_some() {
            cur.skip_commas();
            let Some(n) = cur.next() else { break };
            let key = match (&n.kind, cur.peek().map(|n| &n.kind)) {
                (NodeKind::Ident(k), Some(NodeKind::Eq)) => k.clone(),
                _ if positional => {
                    pos.push(n);
                    continue;
                }
                (NodeKind::Ident(k), _) if allowed.contains(&k.as_str()) => {
                    // A bare flag argument: `bias` means `bias = true`.
                    if let Some(first) = out.get(k) {
                        self.dup_arg(name, k, &first.0.clone(), &n.span);
                    }
                    out.insert(k.clone(), (n.span.clone(), Vec::new()));
                    continue;
                }
                _ => {
                    self.error(
                        n.span.clone(),
                        name,
                        format!(
                            "expected `key = value` in `{name}(...)`, found {}",
                            n.describe()
                        ),
                        Some(format!("arguments of `{name}`: {}", allowed.join(", "))),
                    );
                    continue;
                }
            };
            cur.next();
            let mut vals = Vec::new();
            while let Some(v) = cur.peek() {
                if matches!(v.kind, NodeKind::Comma) {
                    break;
                }
                if matches!(v.kind, NodeKind::Ident(_))
                    && matches!(
                        cur.nodes.get(cur.pos + 1).map(|n| &n.kind),
                        Some(NodeKind::Eq)
                    )
                {
                    break;
                }
                vals.push(v);
                cur.next();
            }
            if !allowed.contains(&key.as_str()) {
                let hint = match did_you_mean(&key, allowed) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("arguments of `{name}`: {}", allowed.join(", ")),
                };
                self.error(
                    n.span.clone(),
                    &key,
                    format!("unknown argument `{key}` of `{name}`"),
                    Some(hint),
                );
                continue;
            }
            let span = match vals.last() {
                Some(last) => n.span.start..last.span.end,
                None => n.span.clone(),
            };
            if let Some(first) = out.get(&key) {
                self.dup_arg(name, &key, &first.0.clone(), &span);
                continue;
            }
            out.insert(key, (span, vals));
        }
        (out, pos)
    }

    pub(super) fn dup_arg(&mut self, name: &str, key: &str, first: &Span, span: &Span) {
        let (line, col) = crate::diag::line_col(self.src, first.start);
        self.error(
            span.clone(),
            key,
            format!("duplicate argument `{key}` of `{name}`"),
            Some(format!(
                "`{key}` is first given at line {line}, column {col}; keep one of them"
            )),
        );
    }

    /// Interprets the value atoms of one call argument.
    pub(super) fn arg_single<'n>(
        &mut self,
        key: &str,
        span: &Span,
        vals: &[&'n Node],
    ) -> Option<&'n Node> {
        match vals {
            [one] => Some(one),
            [] => {
                self.error(span.clone(), key, format!("`{key}` needs a value"), None);
                None
            }
            [_, second, ..] => {
                self.error(
                    second.span.clone(),
                    key,
                    format!(
                        "unexpected {} after the value of `{key}`",
                        second.describe()
                    ),
                    Some("separate arguments with `,`".into()),
                );
                None
            }
        }
    }

    /// The single numeric argument of `field`, parsed; anything else is an error saying it
    /// expects `what`.
    pub(super) fn arg_num(
        &mut self,
        field: &str,
        span: &Span,
        vals: &[&Node],
        what: &str,
    ) -> Option<(Num, Span)> {
        self.record(field, span.clone());
        let n = self.arg_single(field, span, vals)?;
        match &n.kind {
            NodeKind::Number(t) => parse_number(t).map(|num| (num, n.span.clone())),
            _ => {
                self.error(
                    n.span.clone(),
                    field,
                    format!("`{field}` expects {what}, found {}", n.describe()),
                    None,
                );
                None
            }
        }
    }

    pub(super) fn arg_real(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<f64> {
        let (num, at) = self.arg_num(field, span, vals, "a number")?;
        self.no_unit(&num, &at, field).then_some(num.value)
    }

    pub(super) fn arg_uint(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<u64> {
        let (num, at) = self.arg_num(field, span, vals, "an integer")?;
        self.as_uint(&num, &at, field)
    }

    pub(super) fn arg_bool(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<bool> {
        self.record(field, span.clone());
        if vals.is_empty() {
            return Some(true);
        }
        let n = self.arg_single(field, span, vals)?;
        match n.ident() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => {
                self.error(
                    n.span.clone(),
                    field,
                    format!(
                        "`{field}` expects `true` or `false`, found {}",
                        n.describe()
                    ),
                    None,
                );
                None
            }
        }
    }

    pub(super) fn arg_word<T: Copy>(
        &mut self,
        field: &str,
        span: &Span,
        vals: &[&Node],
        choices: &[(&str, T)],
    ) -> Option<T> {
        self.record(field, span.clone());
        let n = self.arg_single(field, span, vals)?;
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        match n.ident() {
            Some(w) => self.choose(w, &n.span, field, choices),
            None => {
                self.error(
                    n.span.clone(),
                    field,
                    format!(
                        "`{field}` expects one of {}, found {}",
                        names.join(", "),
                        n.describe()
                    ),
                    None,
                );
                None
            }
        }
    }

    pub(super) fn arg_list(
        &mut self,
        field: &str,
        span: &Span,
        vals: &[&Node],
    ) -> Option<Vec<f64>> {
        self.record(field, span.clone());
        let n = self.arg_single(field, span, vals)?;
        let NodeKind::List(items) = &n.kind else {
            self.error(
                n.span.clone(),
                field,
                format!(
                    "`{field}` expects a list `[a, b, ...]`, found {}",
                    n.describe()
                ),
                None,
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match &item.kind {
                NodeKind::Comma => {}
                NodeKind::Number(t) => match parse_number(t) {
                    Some(num) if num.unit.is_empty() => out.push(num.value),
                    _ => {
                        self.error(
                            item.span.clone(),
                            field,
                            format!("`{t}` is not a number"),
                            None,
                        );
                        ok = false;
                    }
                },
                _ => {
                    self.error(
                        item.span.clone(),
                        field,
                        format!("`{field}` holds numbers, found {}", item.describe()),
                        None,
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A value that is a bare word or a call: its name, the name's span and the arguments
    /// (none for a bare word). Anything else is an error: `{expects}, found ...`.
    pub(super) fn call_parts<'n>(
        &mut self,
        n: &'n Node,
        field: &str,
        expects: String,
    ) -> Option<(&'n str, &'n Span, &'n [Node])> {
        match &n.kind {
            NodeKind::Ident(w) => Some((w, &n.span, &[])),
            NodeKind::Call {
                name,
                name_span,
                args,
            } => Some((name, name_span, args)),
            _ => {
                self.error(
                    n.span.clone(),
                    field,
                    format!("{expects}, found {}", n.describe()),
                    None,
                );
                None
            }
        }
    }

    // -- norms ----------------------------------------------------------------------------------

    /// `rms`, `rms(eps = 1e-6, offset = 1, weight = true, bias = false)`, `layer(...)`.
    pub(super) fn norm_value(&mut self, n: &Node, field: &str) -> Option<NormW> {
        let (name, name_span, args) =
            self.call_parts(n, field, format!("`{field}` expects {}", norm_calls()))?;
        self.record(field, n.span.clone());
        let kind = self.choose(name, name_span, field, &NormKind::choices())?;
        let (args, _) = self.call_args(
            name,
            args,
            &n.span,
            &["eps", "offset", "weight", "bias"],
            false,
        );
        let mut w = NormW {
            kind: Some(kind),
            ..Default::default()
        };
        for (k, (span, vals)) in &args {
            let f = format!("{field}.{k}");
            match k.as_str() {
                "eps" => w.eps = self.arg_real(&f, span, vals),
                "offset" => w.offset = self.arg_real(&f, span, vals),
                "weight" => w.weight = self.arg_bool(&f, span, vals),
                _ => w.bias = self.arg_bool(&f, span, vals),
            }
        }
        Some(w)
    }

    // -- model body -----------------------------------------------------------------------------
}

/// "`rms(...)` or `layer(...)`": the norm kinds as the DSL writes them, for messages.
pub(super) fn norm_calls() -> String {
    let calls = NormKind::ALL.map(|k| format!("`{}(...)`", k.name()));
    calls.join(" or ")
}
