//! The feed-forward part: `mlp KIND(...)` and the `moe { ... }` block.

use super::*;

impl Reader<'_> {
    /// `swiglu(hidden = 11008, bias = false)` or a bare kind.
    pub(super) fn mlp_value(&mut self, n: &Node, field: &str) -> Option<MlpW> {
        self.record(field, n.span.clone());
        let (name, name_span, args) = self.call_parts(
            n,
            field,
            "expected an MLP kind such as `swiglu(hidden = 11008)`".into(),
        )?;
        let kind = self.choose(name, name_span, field, &MlpKind::choices())?;
        let gated_gelu = matches!(kind, MlpKind::Geglu | MlpKind::GegluTanh);
        let allowed: &[&str] = if gated_gelu {
            &["hidden", "bias", "act"]
        } else if kind == MlpKind::Swiglu {
            &["hidden", "bias", "limit", "alpha"]
        } else {
            &["hidden", "bias"]
        };
        let (named, _) = self.call_args(name, args, &n.span, allowed, false);
        let mut m = MlpW {
            kind,
            hidden: None,
            bias: None,
            limit: None,
            alpha: None,
        };
        for (k, (span, vals)) in &named {
            let f = format!("{field}.{k}");
            match k.as_str() {
                "hidden" => m.hidden = self.arg_uint(&f, span, vals),
                "bias" => m.bias = self.arg_bool(&f, span, vals),
                // GPT-OSS's clamped SwiGLU: `ffn.clamp.limit` / `ffn.clamp.alpha` in the IR.
                "limit" | "alpha" => {
                    let f = format!("ffn.clamp.{k}");
                    self.record(&f, span.clone());
                    let v = self.arg_real(&f, span, vals);
                    if k == "limit" {
                        m.limit = v;
                    } else {
                        m.alpha = v;
                    }
                }
                // The sketch's `geglu(act = gelu_tanh)`: the GELU flavour of a gated GELU.
                _ => {
                    let choices = [("gelu", MlpKind::Geglu), ("gelu_tanh", MlpKind::GegluTanh)];
                    if let Some(kind) = self.arg_word(&f, span, vals, &choices) {
                        m.kind = kind;
                    }
                }
            }
        }
        Some(m)
    }

    pub(super) fn moe_entry(&mut self, key: &str, span: &Span, cur: &mut Cursor<'_>, m: &mut MoeW) {
        if !MOE_KEYS.contains(&key) {
            self.unknown_key(key, span.clone(), "`moe`", MOE_KEYS);
            self.skip_value(cur);
            return;
        }
        let field = format!("ffn.{key}");
        self.mark(&field, span);
        match key {
            "experts" => m.experts = self.uint(cur, span, &field),
            "top_k" => m.top_k = self.uint(cur, span, &field),
            "aux_loss" => m.aux_loss = self.real(cur, span, &field),
            "renormalize" => m.renormalize = self.flag(cur, span, &field),
            "router_bias" => m.router_bias = self.flag(cur, span, &field),
            "correction_bias" => m.correction_bias = self.flag(cur, span, &field),
            "groups" => m.groups = self.uint(cur, span, "ffn.groups.count"),
            "top_groups" => m.top_groups = self.uint(cur, span, "ffn.groups.top"),
            "routed_scale" => m.routed_scale = self.real(cur, span, &field),
            "weighting" => {
                m.weighting = self.word(cur, span, &field, &Weighting::choices());
            }
            "router" => {
                m.router = self.word(cur, span, &field, &RouterOrder::choices());
            }
            "expert" => {
                cur.eat_eq();
                match cur.next() {
                    Some(n) => {
                        if let Some(e) = self.mlp_value(n, "ffn.expert") {
                            m.expert = Some(e);
                        }
                    }
                    None => self.missing(cur, span, &field, "e.g. `swiglu(hidden = 14336)`"),
                }
            }
            _ => {
                cur.eat_eq();
                let owned;
                let next = match self.call_key.take() {
                    Some(c) => {
                        owned = c;
                        Some(&owned)
                    }
                    None => cur.next(),
                };
                match next {
                    Some(n) if n.ident() == Some("none") => {
                        self.record(&field, span.start..n.span.end);
                        m.shared = Some(None);
                    }
                    Some(Node { kind: NodeKind::Call { name, args, .. }, span: cspan })
                        if name == "shared" =>
                    {
                        self.record(&field, span.start..cspan.end);
                        let (named, _) =
                            self.call_args("shared", args, cspan, &["count", "hidden", "gate"], false);
                        let mut s = SharedW::default();
                        for (k, (aspan, vals)) in &named {
                            let f = format!("ffn.shared.{k}");
                            match k.as_str() {
                                "count" => s.count = self.arg_uint(&f, aspan, vals),
                                "hidden" => s.hidden = self.arg_uint(&f, aspan, vals),
                                _ => s.gate = self.arg_bool(&f, aspan, vals),
                            }
                        }
                        m.shared = Some(Some(s));
                    }
                    Some(n) => self.error(
                        n.span.clone(),
                        &field,
                        format!(
                            "`shared` expects `shared(count = 1, hidden = 5632, gate = true)` or `none`, found {}",
                            n.describe()
                        ),
                        None,
                    ),
                    None => self.missing(cur, span, &field, "`shared(...)` or `none`"),
                }
            }
        }
    }
}
