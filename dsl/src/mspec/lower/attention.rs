//! The `attention { ... }` block.

use super::*;

impl Reader<'_> {
    pub(super) fn attn_entry(
        &mut self,
        key: &str,
        span: &Span,
        cur: &mut Cursor<'_>,
        a: &mut AttnW,
    ) {
        let field = format!("attention.{key}");
        if !ATTN_KEYS.contains(&key) {
            self.unknown_key(key, span.clone(), "`attention`", ATTN_KEYS);
            self.skip_value(cur);
            return;
        }
        self.mark(&field, span);
        match key {
            "heads" => a.heads = self.uint(cur, span, &field),
            "kv_heads" => a.kv_heads = self.uint(cur, span, &field),
            "head_dim" => a.head_dim = self.uint(cur, span, &field),
            "qkv_bias" => a.qkv_bias = self.flag(cur, span, &field),
            "out_bias" => a.out_bias = self.flag(cur, span, &field),
            "bias" => {
                let b = self.flag(cur, span, &field);
                self.record("attention.qkv_bias", span.clone());
                self.record("attention.out_bias", span.clone());
                a.qkv_bias = b;
                a.out_bias = b;
            }
            "scale" => a.scale = self.real(cur, span, &field),
            "softcap" | "window" | "chunk" if cur.peek_ident() == Some("none") => {
                cur.next();
                self.record(&field, span.clone());
                match key {
                    "softcap" => a.softcap = Some(None),
                    "window" => a.window = Some(None),
                    _ => a.chunk = Some(None),
                }
            }
            "chunk" => {
                if let Some(v) = self.uint(cur, span, &field) {
                    a.chunk = Some(Some(v));
                }
            }
            "sinks" => a.sinks = self.flag(cur, span, &field),
            "temperature" => self.temperature(cur, span, a),
            "mla" => self.mla(cur, span, a),
            "softcap" => {
                if let Some(v) = self.real(cur, span, &field) {
                    a.softcap = Some(Some(v));
                }
            }
            "window" => {
                if let Some(v) = self.uint(cur, span, &field) {
                    a.window = Some(Some(v));
                }
            }
            _ => {
                // qk_norm none | qk_norm rms(...) | qk_norm(rms(...), scope = head|full)
                let owned;
                let n: &Node = match self.call_key.take() {
                    Some(c) => {
                        owned = c;
                        &owned
                    }
                    None => match cur.next() {
                        Some(n) => n,
                        None => {
                            self.missing(cur, span, &field, "a norm or `none`");
                            return;
                        }
                    },
                };
                if n.ident() == Some("none") {
                    self.record(&field, span.start..n.span.end);
                    a.qk_norm = Some(None);
                    return;
                }
                if let NodeKind::Call { name, args, .. } = &n.kind
                    && name == "qk_norm"
                {
                    self.record(&field, n.span.clone());
                    let (named, pos) =
                        self.call_args("qk_norm", args, &n.span, &["scope", "order"], true);
                    let mut qk = QkW::default();
                    match pos.as_slice() {
                        [norm] => {
                            if let Some(nw) = self.norm_value(norm, "attention.qk_norm.norm") {
                                qk.norm = nw;
                            }
                        }
                        _ => self.error(
                            n.span.clone(),
                            &field,
                            "`qk_norm(...)` takes one norm, e.g. `qk_norm(rms(eps = 1e-6), scope = full)`"
                                .into(),
                            None,
                        ),
                    }
                    if let Some((sspan, vals)) = named.get("scope") {
                        let choices = QkNormScope::choices();
                        qk.scope = self.arg_word("attention.qk_norm.scope", sspan, vals, &choices);
                    }
                    if let Some((ospan, vals)) = named.get("order") {
                        let choices = [("before_rope", false), ("after_rope", true)];
                        qk.after_rope =
                            self.arg_word("attention.qk_norm.order", ospan, vals, &choices);
                    }
                    a.qk_norm = Some(Some(qk));
                    return;
                }
                if let Some(nw) = self.norm_value(n, "attention.qk_norm.norm") {
                    self.record(&field, span.start..n.span.end);
                    a.qk_norm = Some(Some(QkW {
                        norm: nw,
                        scope: None,
                        after_rope: None,
                    }));
                }
            }
        }
    }

    /// `temperature none` or `temperature(floor = N, scale = x)`.
    fn temperature(&mut self, cur: &mut Cursor<'_>, span: &Span, a: &mut AttnW) {
        let field = "attention.temperature";
        let Some(n) = self.call_key.take() else {
            if cur.peek_ident() == Some("none") {
                cur.next();
                self.record(field, span.clone());
                a.temperature = Some(None);
            } else {
                self.missing(
                    cur,
                    span,
                    field,
                    "`none` or `temperature(floor = 8192, scale = 0.1)`",
                );
                self.skip_value(cur);
            }
            return;
        };
        let NodeKind::Call { args, .. } = &n.kind else {
            return;
        };
        self.record(field, n.span.clone());
        let (named, _) = self.call_args("temperature", args, &n.span, &["floor", "scale"], false);
        let floor = named
            .get("floor")
            .and_then(|(s, v)| self.arg_uint("attention.temperature.floor", s, v));
        let scale = named
            .get("scale")
            .and_then(|(s, v)| self.arg_real("attention.temperature.scale", s, v));
        for (what, present) in [
            ("floor", named.contains_key("floor")),
            ("scale", named.contains_key("scale")),
        ] {
            if !present {
                self.error(
                    n.span.clone(),
                    field,
                    format!("`temperature(...)` needs `{what}`"),
                    Some("write `temperature(floor = 8192, scale = 0.1)`".into()),
                );
            }
        }
        if let (Some(floor), Some(scale)) = (floor, scale) {
            a.temperature = Some(Some(TempW { floor, scale }));
        }
    }

    /// `mla none` or `mla(q_rank = N, kv_rank = N, nope_dim = N, rope_dim = N, v_dim = N,
    /// norm = rms(...))` (`q_rank` and `norm` optional).
    fn mla(&mut self, cur: &mut Cursor<'_>, span: &Span, a: &mut AttnW) {
        let field = "attention.mla";
        let example =
            "`mla(q_rank = 1536, kv_rank = 512, nope_dim = 128, rope_dim = 64, v_dim = 128)`";
        let Some(n) = self.call_key.take() else {
            if cur.peek_ident() == Some("none") {
                cur.next();
                self.record(field, span.clone());
                a.mla = Some(None);
            } else {
                self.missing(cur, span, field, &format!("`none` or {example}"));
                self.skip_value(cur);
            }
            return;
        };
        let NodeKind::Call { args, .. } = &n.kind else {
            return;
        };
        self.record(field, n.span.clone());
        let keys = ["q_rank", "kv_rank", "nope_dim", "rope_dim", "v_dim", "norm"];
        let (named, _) = self.call_args("mla", args, &n.span, &keys, false);
        let mut size = |key: &str| {
            named
                .get(key)
                .and_then(|(s, v)| self.arg_uint(&format!("{field}.{key}"), s, v))
        };
        let q_rank = size("q_rank");
        let (kv_rank, nope_dim, rope_dim, v_dim) = (
            size("kv_rank"),
            size("nope_dim"),
            size("rope_dim"),
            size("v_dim"),
        );
        let norm = match named.get("norm") {
            Some((nspan, vals)) => match vals.as_slice() {
                [v] => self.norm_value(v, "attention.mla.norm"),
                _ => {
                    self.error(
                        nspan.clone(),
                        "attention.mla.norm",
                        "`norm` takes one norm, e.g. `norm = rms(eps = 1e-6)`".into(),
                        None,
                    );
                    None
                }
            },
            None => None,
        };
        for key in ["kv_rank", "nope_dim", "rope_dim", "v_dim"] {
            if !named.contains_key(key) {
                self.error(
                    n.span.clone(),
                    field,
                    format!("`mla(...)` needs `{key}`"),
                    Some(format!("write {example}")),
                );
            }
        }
        if let (Some(kv_rank), Some(nope_dim), Some(rope_dim), Some(v_dim)) =
            (kv_rank, nope_dim, rope_dim, v_dim)
        {
            a.mla = Some(Some(MlaW {
                q_rank,
                kv_rank,
                nope_dim,
                rope_dim,
                v_dim,
                norm,
            }));
        }
    }
}
