//! The `checkpoint` setting: per-layer policies and the global budget, read through
//! [`crate::plan`]'s one policy parser.

use super::*;

impl Reader<'_> {
    /// `none`, `full`, `auto`, `save(a, b)`, `recompute(a, b)`.
    pub(super) fn policy(&mut self, n: &Node) -> Option<LayerCheckpoint> {
        self.record("checkpoint", n.span.clone());
        let (name, name_span, args): (&str, &Span, Option<&[Node]>) = match &n.kind {
            NodeKind::Ident(w) => (w, &n.span, None),
            NodeKind::Call {
                name,
                name_span,
                args,
            } => (name, name_span, Some(args)),
            _ => {
                self.error(
                    n.span.clone(),
                    "checkpoint",
                    format!("expected a checkpoint policy, found {}", n.describe()),
                    Some("policies: none, full, auto, save(names...), recompute(names...)".into()),
                );
                return None;
            }
        };
        // Tensor names are read only where the policy takes them (one error for `fulll(...)`).
        let takes_tensors = matches!(name, "save" | "recompute");
        let tensors = args.map(|args| {
            let mut tensors = Vec::new();
            for a in args.iter().filter(|_| takes_tensors) {
                match &a.kind {
                    NodeKind::Comma => {}
                    NodeKind::Ident(t) => tensors.push(t.clone()),
                    _ => self.error(
                        a.span.clone(),
                        "checkpoint",
                        format!("expected a tensor name, found {}", a.describe()),
                        None,
                    ),
                }
            }
            tensors
        });
        match crate::plan::layer_policy(name, tensors) {
            Ok(p) => Some(p),
            Err(e) => {
                let at = match e {
                    crate::plan::PolicyError::UnknownPolicy { .. } => name_span.clone(),
                    _ => n.span.clone(),
                };
                self.error(at, "checkpoint", e.message(), e.hint());
                None
            }
        }
    }

    pub(super) fn checkpoint(&mut self, cur: &mut Cursor<'_>, span: &Span, m: &mut ModelW) {
        cur.eat_eq();
        let Some(n) = cur.peek() else {
            self.missing(cur, span, "checkpoint", "a policy or a `{ ... }` block");
            return;
        };
        let NodeKind::Block(inner) = &n.kind else {
            cur.next();
            self.mark("checkpoint.default", span);
            m.base.ckpt = self.policy(n);
            return;
        };
        cur.next();
        let mut ic = Cursor::new(inner, n.span.end - 1..n.span.end);
        while let Some((k, kspan)) = self.next_key(&mut ic) {
            match k.as_str() {
                "default" => {
                    self.mark("checkpoint.default", &kspan);
                    ic.eat_eq();
                    match ic.next() {
                        Some(p) => m.base.ckpt = self.policy(p),
                        None => self.missing(&ic, &kspan, "checkpoint.default", "a policy"),
                    }
                }
                "layers" => {
                    let Some(Node {
                        kind: NodeKind::List(items),
                        span: lspan,
                    }) = ic.peek()
                    else {
                        self.missing(&ic, &kspan, "checkpoint.layers", "a selector `[...]`");
                        continue;
                    };
                    ic.next();
                    let sel = self.selector(items, lspan);
                    let rule_index = m.rules.len();
                    let saved = self.rule.replace(rule_index);
                    let mut delta = LayerW::default();
                    match ic.next() {
                        Some(p) => delta.ckpt = self.policy(p),
                        None => self.missing(&ic, &kspan, "checkpoint", "a policy"),
                    }
                    self.rule = saved;
                    m.rules.push(Rule {
                        items: sel.unwrap_or_default(),
                        span: kspan.start..lspan.end,
                        delta,
                        keys: BTreeMap::from([("checkpoint".to_string(), kspan.clone())]),
                    });
                }
                "budget" => {
                    self.mark("checkpoint.budget", &kspan);
                    // `budget(0.5)`, as the CLI's --checkpoint takes it, or `budget 0.5`.
                    match self.call_key.take() {
                        Some(Node {
                            kind: NodeKind::Call { args, .. },
                            span: cspan,
                        }) => {
                            let mut inner_cur = Cursor::new(&args, cspan.clone());
                            m.budget = self.budget(&mut inner_cur, &cspan);
                            if let Some(extra) = inner_cur.peek() {
                                self.error(
                                    extra.span.clone(),
                                    "checkpoint.budget",
                                    format!("unexpected {} in `budget(...)`", extra.describe()),
                                    None,
                                );
                            }
                        }
                        _ => m.budget = self.budget(&mut ic, &kspan),
                    }
                }
                _ => {
                    self.unknown_key(&k, kspan, "`checkpoint`", CKPT_KEYS);
                    self.skip_value(&mut ic);
                }
            }
        }
    }

    pub(super) fn budget(&mut self, cur: &mut Cursor<'_>, span: &Span) -> Option<Option<Budget>> {
        let field = "checkpoint.budget";
        if cur.peek_ident() == Some("none") {
            cur.next();
            self.record(field, span.clone());
            return Some(None);
        }
        cur.eat_eq();
        let text = match cur.peek() {
            Some(Node {
                kind: NodeKind::Number(text),
                ..
            }) => text.clone(),
            _ => String::new(),
        };
        let (_, nspan) = self.number(cur, span, field)?;
        self.record(field, span.start..nspan.end);
        match crate::plan::parse_budget(&text) {
            Ok(b) => Some(Some(b)),
            Err(e) => {
                // A fraction's range concerns the whole `budget VALUE`; a unit, the number.
                let at = match e {
                    crate::plan::PolicyError::FractionOutOfRange { .. } => span.start..nspan.end,
                    _ => nspan,
                };
                self.error(at, field, e.message(), e.hint());
                None
            }
        }
    }
}
