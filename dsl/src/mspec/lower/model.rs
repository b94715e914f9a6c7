//! The model body and its model-wide blocks (`embedding`, `logits`, `weights`, `dropout`, ...).

use super::*;

impl Reader<'_> {
    pub(super) fn model_body(&mut self, nodes: &[Node], end: Span) -> ModelW {
        let mut m = ModelW::default();
        let mut cur = Cursor::new(nodes, end);
        while let Some(key) = self.next_key(&mut cur) {
            let (k, span) = key;
            if self.layer_entry(&k, &span, &mut cur, &mut m.base) {
                continue;
            }
            match k.as_str() {
                "vocab" => {
                    self.mark("vocab", &span);
                    m.vocab = self.uint(&mut cur, &span, "vocab");
                    if cur.peek_ident() == Some("pad") {
                        let pad_span = cur.next().map(|n| n.span.clone()).unwrap_or(span.clone());
                        self.mark("vocab_pad_multiple", &pad_span);
                        m.pad = self.uint(&mut cur, &pad_span, "vocab_pad_multiple");
                    }
                }
                "vocab_pad_multiple" => {
                    self.mark(&k, &span);
                    m.pad = self.uint(&mut cur, &span, "vocab_pad_multiple");
                }
                "d_model" => {
                    self.mark(&k, &span);
                    m.d_model = self.uint(&mut cur, &span, "d_model");
                }
                "context" => {
                    self.mark(&k, &span);
                    m.context = self.uint(&mut cur, &span, "context");
                }
                "layers" => {
                    if matches!(cur.peek().map(|n| &n.kind), Some(NodeKind::List(_))) {
                        self.rule(&mut cur, &span, &mut m);
                    } else {
                        self.mark("layers", &span);
                        m.n_layers = self.uint(&mut cur, &span, "n_layers");
                    }
                }
                "final_norm" => {
                    self.mark(&k, &span);
                    cur.eat_eq();
                    match cur.next() {
                        Some(n) if n.ident() == Some("none") => {
                            self.record("final_norm", span.start..n.span.end);
                            m.final_norm = Some(None);
                        }
                        Some(n) => {
                            if let Some(w) = self.norm_value(n, "final_norm") {
                                m.final_norm = Some(Some(w));
                            }
                        }
                        None => self.missing(&cur, &span, "final_norm", "a norm or `none`"),
                    }
                }
                "checkpoint" => self.checkpoint(&mut cur, &span, &mut m),
                _ => {
                    let (head, rest) = match k.split_once('.') {
                        Some((h, r)) => (h, Some(r)),
                        None => (k.as_str(), None),
                    };
                    match head {
                        "dropout" | "embedding" | "logits" | "weights" => {
                            self.global_block(head, rest, &span, &mut cur, &mut m)
                        }
                        _ => {
                            self.unknown_key(&k, span, "the model block", MODEL_KEYS);
                            self.skip_value(&mut cur);
                        }
                    }
                }
            }
        }
        m
    }

    /// The next key of a block: an identifier (or `qk_norm(...)`-style call keys are handled by
    /// their block); reports and skips anything else.
    pub(super) fn next_key(&mut self, cur: &mut Cursor<'_>) -> Option<(String, Span)> {
        self.call_key = None;
        loop {
            cur.skip_commas();
            let n = cur.next()?;
            match &n.kind {
                NodeKind::Ident(k) => return Some((k.clone(), n.span.clone())),
                NodeKind::Call {
                    name, name_span, ..
                } if CALL_KEYS.contains(&name.as_str()) => {
                    self.call_key = Some(n.clone());
                    return Some((name.clone(), name_span.clone()));
                }
                NodeKind::Call { name, .. } => self.error(
                    n.span.clone(),
                    name,
                    format!("unexpected `{name}(...)`: a key is followed by its value"),
                    Some(format!("write `{name} VALUE`")),
                ),
                _ => self.error(
                    n.span.clone(),
                    "",
                    format!("expected a key, found {}", n.describe()),
                    Some("each setting is a key followed by its value, e.g. `d_model 4096`".into()),
                ),
            }
        }
    }

    /// A global block (`dropout`, `embedding`, `logits`, `weights`) or one dotted entry of it.
    pub(super) fn global_block(
        &mut self,
        head: &str,
        rest: Option<&str>,
        span: &Span,
        cur: &mut Cursor<'_>,
        m: &mut ModelW,
    ) {
        if let Some(sub) = rest {
            self.global_entry(head, sub, span, cur, m);
            return;
        }
        if let Some(mut inner_cur) = cur.open_block() {
            while let Some((k, kspan)) = self.next_key(&mut inner_cur) {
                self.global_entry(head, &k, &kspan, &mut inner_cur, m);
            }
            return;
        }
        match head {
            "dropout" => {
                self.mark("dropout", span);
                if let Some(p) = self.real(cur, span, "dropout") {
                    m.dropout = [Some(p); 3];
                    for f in ["dropout.embedding", "dropout.attention", "dropout.residual"] {
                        self.record(f, span.clone());
                    }
                }
            }
            "logits" => {
                // `logits softcap 30 bias`: inline entries.
                let mut any = false;
                while let Some(w) = cur.peek_ident() {
                    if !LOGITS_KEYS.contains(&w) {
                        break;
                    }
                    let n = cur.next().map(|n| n.span.clone()).unwrap_or(span.clone());
                    self.global_entry("logits", w, &n, cur, m);
                    any = true;
                }
                if !any {
                    self.missing(cur, span, "logits", "a `{ ... }` block");
                }
            }
            _ => self.missing(cur, span, head, "a `{ ... }` block"),
        }
    }

    pub(super) fn global_entry(
        &mut self,
        head: &str,
        key: &str,
        span: &Span,
        cur: &mut Cursor<'_>,
        m: &mut ModelW,
    ) {
        let field = format!("{head}.{key}");
        let keys = match head {
            "dropout" => DROPOUT_KEYS,
            "embedding" => EMBED_KEYS,
            "logits" => LOGITS_KEYS,
            _ => WEIGHTS_KEYS,
        };
        if !keys.contains(&key) {
            self.unknown_key(key, span.clone(), &format!("`{head}`"), keys);
            self.skip_value(cur);
            return;
        }
        self.mark(&field, span);
        match (head, key) {
            ("dropout", k) => {
                let i = DROPOUT_KEYS.iter().position(|d| *d == k).unwrap_or(0);
                m.dropout[i] = self.real(cur, span, &field);
            }
            ("embedding", "tied") => m.tied = self.flag(cur, span, &field),
            ("embedding", "learned_positions") => {
                m.learned_positions = self.flag(cur, span, &field)
            }
            ("embedding", _) => {
                cur.eat_eq();
                match cur.peek() {
                    Some(Node {
                        kind: NodeKind::Call { name, args, .. },
                        span: cspan,
                    }) if name == "sqrt" => {
                        cur.next();
                        self.record(&field, span.start..cspan.end);
                        if let [a] = args.as_slice()
                            && a.ident() == Some("d_model")
                        {
                            m.scale = Some((f64::NAN, ScaleExpr::SqrtDModel));
                        } else {
                            self.error(
                                cspan.clone(),
                                &field,
                                "`sqrt(...)` takes only `d_model`".into(),
                                Some("write `scale = sqrt(d_model)` or a number".into()),
                            );
                        }
                    }
                    _ => {
                        if let Some(v) = self.real(cur, span, &field) {
                            m.scale = Some((v, ScaleExpr::Literal));
                        }
                    }
                }
            }
            ("logits", "softcap") => {
                if cur.peek_ident() == Some("none") {
                    cur.next();
                    self.record(&field, span.clone());
                    m.logits_softcap = Some(None);
                } else if let Some(v) = self.real(cur, span, &field) {
                    m.logits_softcap = Some(Some(v));
                }
            }
            ("logits", _) => m.logits_bias = self.flag(cur, span, &field),
            (_, "naming") => {
                let choices = Naming::choices();
                m.naming = self.word(cur, span, &field, &choices);
            }
            (_, "qkv") => {
                let choices = QkvLayout::choices();
                m.qkv = self.word(cur, span, &field, &choices);
            }
            _ => m.fused_gate_up = self.flag(cur, span, &field),
        }
    }
}
