//! Per-layer settings: the keys a layer row or a `layers[SEL] { ... }` rule may set, the rules
//! themselves and their selectors.

use super::*;

impl Reader<'_> {
    /// A per-layer key, at model level (into the base) or in a rule; false if `k` is not one.
    pub(super) fn layer_entry(
        &mut self,
        k: &str,
        span: &Span,
        cur: &mut Cursor<'_>,
        w: &mut LayerW,
    ) -> bool {
        let (head, rest) = match k.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (k, None),
        };
        match head {
            "attention" => match rest {
                Some(sub) => self.attn_entry(sub, span, cur, &mut w.attn),
                None => match cur.open_block() {
                    Some(mut ic) => {
                        self.record("attention", span.clone());
                        while let Some((k, kspan)) = self.next_key(&mut ic) {
                            self.attn_entry(&k, &kspan, &mut ic, &mut w.attn);
                        }
                    }
                    _ => self.missing(cur, span, "attention", "a `{ ... }` block"),
                },
            },
            "moe" => {
                let mut moe = match &w.ffn {
                    Some(FfnW::Moe(m)) => m.clone(),
                    _ => MoeW::default(),
                };
                match rest {
                    Some(sub) => self.moe_entry(sub, span, cur, &mut moe),
                    None => match cur.open_block() {
                        Some(mut ic) => {
                            self.mark("ffn", span);
                            self.record("ffn", span.clone());
                            while let Some((k, kspan)) = self.next_key(&mut ic) {
                                self.moe_entry(&k, &kspan, &mut ic, &mut moe);
                            }
                        }
                        _ => self.missing(cur, span, "moe", "a `{ ... }` block"),
                    },
                }
                w.ffn = Some(FfnW::Moe(moe));
            }
            _ if rest.is_some() => return false,
            "norm" => {
                self.mark("block.norm", span);
                cur.eat_eq();
                match cur.next() {
                    Some(n) => {
                        if let Some(nw) = self.norm_value(n, "block.norm") {
                            w.norm = Some(nw);
                        }
                    }
                    None => self.missing(cur, span, "norm", &values::norm_calls()),
                }
            }
            "placement" => {
                self.mark("block.placement", span);
                w.placement = self.word(cur, span, "block.placement", &NormPlacement::choices());
            }
            "parallel_residual" => {
                self.mark("block.parallel_residual", span);
                w.parallel_residual = self.flag(cur, span, "block.parallel_residual");
            }
            "shared_norm" => {
                self.mark("block.shared_norm", span);
                w.shared_norm = self.flag(cur, span, "block.shared_norm");
            }
            "position" => {
                self.mark("position", span);
                cur.eat_eq();
                match cur.next() {
                    Some(n) => {
                        if let Some(p) = self.position_value(n) {
                            w.pos = Some(p);
                        }
                    }
                    None => {
                        self.missing(cur, span, "position", "rope(...), learned, alibi or none")
                    }
                }
            }
            "mlp" => {
                self.mark("ffn", span);
                cur.eat_eq();
                match cur.next() {
                    Some(n) => {
                        if let Some(m) = self.mlp_value(n, "ffn") {
                            w.ffn = Some(FfnW::Mlp(m));
                        }
                    }
                    None => self.missing(cur, span, "mlp", "e.g. `swiglu(hidden = 11008)`"),
                }
            }
            "checkpoint" if self.rule.is_some() => {
                self.mark("checkpoint", span);
                cur.eat_eq();
                match cur.next() {
                    Some(n) => w.ckpt = self.policy(n),
                    None => self.missing(cur, span, "checkpoint", "a policy"),
                }
            }
            _ => return false,
        }
        true
    }

    /// `layers[SEL] { ... }` at model level.
    pub(super) fn rule(&mut self, cur: &mut Cursor<'_>, key_span: &Span, m: &mut ModelW) {
        let Some(Node {
            kind: NodeKind::List(items),
            span: lspan,
        }) = cur.next()
        else {
            return;
        };
        let sel = self.selector(items, lspan);
        let rule_index = m.rules.len();
        let saved_rule = self.rule.replace(rule_index);
        let saved_seen = std::mem::take(&mut self.seen);
        let mut delta = LayerW::default();
        match cur.open_block() {
            Some(mut ic) => {
                while let Some((k, kspan)) = self.next_key(&mut ic) {
                    if !self.layer_entry(&k, &kspan, &mut ic, &mut delta) {
                        let hint_keys: Vec<&str> = RULE_KEYS.to_vec();
                        if MODEL_KEYS.contains(&k.as_str()) {
                            self.error(
                                kspan.clone(),
                                &k,
                                format!("`{k}` is a model-wide setting and cannot vary per layer"),
                                Some("move it out of the `layers[...]` block".into()),
                            );
                        } else {
                            self.unknown_key(&k, kspan, "a `layers[...]` block", &hint_keys);
                        }
                        self.skip_value(&mut ic);
                    }
                }
            }
            _ => self.missing(
                cur,
                key_span,
                "layers",
                "a `{ ... }` block after the selector",
            ),
        }
        let keys = std::mem::replace(&mut self.seen, saved_seen);
        self.rule = saved_rule;
        m.rules.push(Rule {
            items: sel.unwrap_or_default(),
            span: key_span.start..lspan.end,
            delta,
            keys,
        });
    }

    pub(super) fn selector(&mut self, items: &[Node], span: &Span) -> Option<Vec<SelItem>> {
        let mut out = Vec::new();
        let mut cur = Cursor::new(items, span.clone());
        let mut ok = true;
        let field = "layers";
        while cur.peek().is_some() {
            cur.skip_commas();
            let Some(n) = cur.next() else { break };
            match &n.kind {
                NodeKind::Number(t) => match parse_number(t) {
                    Some(num) => match self.as_uint(&num, &n.span, field) {
                        Some(i) => out.push(SelItem::Index(i)),
                        None => ok = false,
                    },
                    None => ok = false,
                },
                NodeKind::Range(t) => {
                    let (a, b) = t.split_once("..").unwrap_or((t, t));
                    let parse = |s: &str| s.replace('_', "").parse::<u64>().ok();
                    match (parse(a), parse(b)) {
                        (Some(a), Some(b)) => out.push(SelItem::Range(a, b)),
                        _ => {
                            self.error(
                                n.span.clone(),
                                field,
                                format!("range bound in `{t}` is too large"),
                                None,
                            );
                            ok = false;
                        }
                    }
                }
                NodeKind::Ident(w) if w == "even" => out.push(SelItem::Even),
                NodeKind::Ident(w) if w == "odd" => out.push(SelItem::Odd),
                NodeKind::Ident(w) if w == "all" => out.push(SelItem::All),
                NodeKind::Ident(w) if w == "every" => {
                    let step = self.uint(&mut cur, &n.span, field);
                    let mut offset = Some(0);
                    if cur.peek_ident() == Some("offset") {
                        let os = cur.next().map(|o| o.span.clone()).unwrap_or(n.span.clone());
                        offset = self.uint(&mut cur, &os, field);
                    }
                    match (step, offset) {
                        (Some(0), _) => {
                            self.error(
                                n.span.clone(),
                                field,
                                "`every 0` selects nothing".into(),
                                Some("the step must be at least 1".into()),
                            );
                            ok = false;
                        }
                        (Some(step), Some(offset)) => out.push(SelItem::Every { step, offset }),
                        _ => ok = false,
                    }
                }
                _ => {
                    let hint = match n.ident().and_then(|w| did_you_mean(w, &["even", "odd", "every", "all"])) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "selectors: `3`, `0..8`, `1, 5, 9`, `even`, `odd`, `every 4 offset 1`, `all`".into(),
                    };
                    self.error(
                        n.span.clone(),
                        field,
                        format!("expected a layer selector, found {}", n.describe()),
                        Some(hint),
                    );
                    ok = false;
                }
            }
        }
        if out.is_empty() && ok {
            self.error(
                span.clone(),
                field,
                "empty layer selector".into(),
                Some("e.g. `layers[0..4]`".into()),
            );
            ok = false;
        }
        ok.then_some(out)
    }
}

/// The layers (in order) that `items` select among `n` layers, or the first out-of-range index.
pub(super) fn select(items: &[SelItem], n: u64) -> Result<Vec<u64>, u64> {
    let mut hit = vec![false; n as usize];
    for item in items {
        match *item {
            SelItem::Index(i) => {
                if i >= n {
                    return Err(i);
                }
                hit[i as usize] = true;
            }
            SelItem::Range(a, b) => {
                if b > n {
                    return Err(b - 1);
                }
                for i in a..b {
                    hit[i as usize] = true;
                }
            }
            SelItem::Every { step, offset } => {
                let mut i = offset;
                while i < n {
                    hit[i as usize] = true;
                    i = match i.checked_add(step.max(1)) {
                        Some(v) => v,
                        None => break,
                    };
                }
            }
            SelItem::Even => (0..n).step_by(2).for_each(|i| hit[i as usize] = true),
            SelItem::Odd => (1..n).step_by(2).for_each(|i| hit[i as usize] = true),
            SelItem::All => hit.iter_mut().for_each(|h| *h = true),
        }
    }
    Ok((0..n).filter(|i| hit[*i as usize]).collect())
}

/// The IR fields a rule key sets outright, so that a later rule writing the same field replaces
/// it whole. Call-valued keys (`position`, `norm`, `mlp`, `moe`, `qk_norm`) merge argument by
/// argument and are left out: a later `position rope(theta = ...)` keeps an earlier `fraction`.
fn plain_fields(key: &str) -> &'static [&'static str] {
    match key {
        "attention.heads" => &["attention.heads"],
        "attention.kv_heads" => &["attention.kv_heads"],
        "attention.head_dim" => &["attention.head_dim"],
        "attention.qkv_bias" => &["attention.qkv_bias"],
        "attention.out_bias" => &["attention.out_bias"],
        "attention.bias" => &["attention.qkv_bias", "attention.out_bias"],
        "attention.softcap" => &["attention.softcap"],
        "attention.scale" => &["attention.scale"],
        "attention.window" => &["attention.window"],
        "block.placement" => &["block.placement"],
        "block.parallel_residual" => &["block.parallel_residual"],
        "block.shared_norm" => &["block.shared_norm"],
        "checkpoint" => &["checkpoint"],
        _ => &[],
    }
}

/// Warnings for the settings of a `layers[...]` rule that never take effect: on every layer the
/// rule selects, a later rule sets the same field again (the last matching rule wins, so the
/// earlier value is dead). Each warning points at the earlier setting and names the later one.
pub(super) fn overridden_settings(
    rules: &[Rule],
    rule_layers: &[Vec<u64>],
    src: &str,
    file: &str,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, (rule, layers)) in rules.iter().zip(rule_layers).enumerate() {
        if layers.is_empty() {
            continue;
        }
        for (key, span) in &rule.keys {
            let fields = plain_fields(key);
            if fields.is_empty() {
                continue;
            }
            // For each layer, the last later rule that sets each field; dead when every layer
            // has one for every field.
            let mut last_override: Option<&Span> = None;
            let dead = layers.iter().all(|l| {
                fields.iter().all(|field| {
                    let later = rules
                        .iter()
                        .zip(rule_layers)
                        .skip(i + 1)
                        .filter(|(_, ls)| ls.binary_search(l).is_ok())
                        .filter_map(|(r, _)| {
                            r.keys
                                .iter()
                                .find(|(k, _)| plain_fields(k).contains(field))
                                .map(|(_, s)| s)
                        })
                        .next_back();
                    if let Some(s) = later {
                        last_override = Some(s);
                    }
                    later.is_some()
                })
            });
            let Some(later) = last_override.filter(|_| dead) else {
                continue;
            };
            let (line, col) = crate::diag::line_col(src, later.start);
            let which = match layers.as_slice() {
                [one] => format!("layer {one}"),
                _ => format!("all {} layers it selects", layers.len()),
            };
            let user = user_path(key);
            out.push(Diagnostic {
                file: file.to_string(),
                span: span.clone(),
                field: user.clone(),
                message: format!(
                    "`{user}` here never takes effect: a later rule sets it again on {which} \
                     (last at line {line}, column {col}); the last matching rule wins"
                ),
                hint: Some(
                    "remove one of the two settings, or narrow the earlier rule's selector".into(),
                ),
            });
        }
    }
    out
}
