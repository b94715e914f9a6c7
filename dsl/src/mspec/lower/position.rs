//! Positional encodings: `rope(...)` with its scaling variants, `learned`, `alibi`, `none`.

use super::*;

impl Reader<'_> {
    /// `rope(...)`, `rope`, `learned`, `alibi`, `none`.
    pub(super) fn position_value(&mut self, n: &Node) -> Option<PosW> {
        self.record("position", n.span.clone());
        let (name, name_span, args) = self.call_parts(
            n,
            "position",
            "`position` expects rope(...), learned, alibi or none".into(),
        )?;
        let kinds = [("rope", 0), ("learned", 1), ("alibi", 2), ("none", 3)];
        let kind = self.choose(name, name_span, "position", &kinds)?;
        if kind != 0 {
            if !args.is_empty() {
                self.error(
                    n.span.clone(),
                    "position",
                    format!("`{name}` takes no arguments"),
                    None,
                );
            }
            return Some(match kind {
                1 => PosW::Learned,
                2 => PosW::Alibi,
                _ => PosW::None,
            });
        }
        let allowed = ["theta", "fraction", "rotary_dims", "style", "scaling"];
        let (named, _) = self.call_args("rope", args, &n.span, &allowed, false);
        let mut r = RopeW::default();
        for (k, (span, vals)) in &named {
            let f = format!("position.{k}");
            match k.as_str() {
                "theta" => r.theta = self.arg_real(&f, span, vals),
                "fraction" => r.fraction = self.arg_real(&f, span, vals),
                "rotary_dims" => r.rotary_dims = self.arg_uint(&f, span, vals),
                "style" => {
                    let choices = RopeStyle::choices();
                    r.style = self.arg_word(&f, span, vals, &choices);
                }
                _ => {
                    self.record("position.scaling", span.clone());
                    if let Some(v) = self.arg_single("position.scaling", span, vals) {
                        r.scaling = self.scaling_value(v);
                    }
                }
            }
        }
        Some(PosW::Rope(r))
    }

    pub(super) fn scaling_value(&mut self, n: &Node) -> Option<ScalingW> {
        let field = "position.scaling";
        let (name, name_span, args) = self.call_parts(
            n,
            field,
            "`scaling` expects e.g. `linear(factor = 2)`".into(),
        )?;
        let kinds = [
            "none",
            "linear",
            "dynamic_ntk",
            "yarn",
            "llama3",
            "longrope",
        ];
        let kind = self.choose(name, name_span, field, &kinds.map(|k| (k, k)))?;
        let allowed: &[&str] = match kind {
            "none" => &[],
            "linear" => &["factor"],
            "dynamic_ntk" => &["factor", "original_context"],
            "yarn" => &[
                "factor",
                "original_context",
                "beta_fast",
                "beta_slow",
                "attention_factor",
                "truncate",
                "mscale",
                "mscale_all_dim",
            ],
            "llama3" => &[
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_context",
            ],
            _ => &["short", "long", "original_context", "attention_factor"],
        };
        let (named, _) = self.call_args(kind, args, &n.span, allowed, false);
        let mut reals: BTreeMap<&str, f64> = BTreeMap::new();
        let mut original = None;
        let mut lists: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut truncate = true;
        let mut ok = true;
        for (k, (span, vals)) in &named {
            let f = format!("{field}.{k}");
            match k.as_str() {
                "truncate" => match self.arg_bool(&f, span, vals) {
                    Some(b) => truncate = b,
                    None => ok = false,
                },
                "original_context" => {
                    original = self.arg_uint(&f, span, vals);
                    ok &= original.is_some();
                }
                "short" | "long" => {
                    let f = format!("{field}.{k}_factor");
                    match self.arg_list(&f, span, vals) {
                        Some(l) => {
                            lists.insert(if k == "short" { "short" } else { "long" }, l);
                        }
                        None => ok = false,
                    }
                }
                other => {
                    let key = allowed
                        .iter()
                        .find(|a| **a == other)
                        .copied()
                        .unwrap_or("factor");
                    match self.arg_real(&f, span, vals) {
                        Some(v) => {
                            reals.insert(key, v);
                        }
                        None => ok = false,
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        let mut required = |what: &str, present: bool| {
            if !present {
                self.error(
                    n.span.clone(),
                    field,
                    format!("`{kind}` scaling needs `{what}`"),
                    Some(format!("arguments of `{kind}`: {}", allowed.join(", "))),
                );
            }
            present
        };
        let factor = reals.get("factor").copied();
        let scaling = match kind {
            "none" => RopeScaling::None,
            "linear" => {
                if !required("factor", factor.is_some()) {
                    return None;
                }
                RopeScaling::Linear {
                    factor: factor.unwrap_or(1.0),
                }
            }
            "dynamic_ntk" | "yarn" | "llama3" => {
                let has_f = required("factor", factor.is_some());
                let has_o = required("original_context", original.is_some());
                if !(has_f && has_o) {
                    return None;
                }
                let (factor, original_context) = (factor.unwrap_or(1.0), original.unwrap_or(1));
                match kind {
                    "dynamic_ntk" => RopeScaling::DynamicNtk {
                        factor,
                        original_context,
                    },
                    "yarn" => {
                        // DeepSeek's pair: both written, or neither.
                        let (m, m_all) = (
                            reals.get("mscale").copied(),
                            reals.get("mscale_all_dim").copied(),
                        );
                        if m.is_some() != m_all.is_some() {
                            self.error(
                                n.span.clone(),
                                field,
                                "`yarn` takes `mscale` and `mscale_all_dim` together".into(),
                                Some("write both (DeepSeek-V3: `mscale = 1.0, mscale_all_dim = 1.0`), or neither".into()),
                            );
                            return None;
                        }
                        let mscale = m.zip(m_all).map(|(a, b)| [a, b]);
                        RopeScaling::Yarn {
                            factor,
                            original_context,
                            beta_fast: reals.get("beta_fast").copied().unwrap_or(32.0),
                            beta_slow: reals.get("beta_slow").copied().unwrap_or(1.0),
                            attention_factor: reals
                                .get("attention_factor")
                                .copied()
                                .unwrap_or_else(|| yarn_attention_factor(factor, mscale)),
                            truncate,
                            mscale,
                        }
                    }
                    _ => RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: reals.get("low_freq_factor").copied().unwrap_or(1.0),
                        high_freq_factor: reals.get("high_freq_factor").copied().unwrap_or(4.0),
                        original_context,
                    },
                }
            }
            _ => {
                let has_s = required("short", lists.contains_key("short"));
                let has_l = required("long", lists.contains_key("long"));
                let has_o = required("original_context", original.is_some());
                if !(has_s && has_l && has_o) {
                    return None;
                }
                let explicit = reals.get("attention_factor").copied();
                return Some(ScalingW {
                    scaling: RopeScaling::Longrope {
                        short_factor: lists.remove("short").unwrap_or_default(),
                        long_factor: lists.remove("long").unwrap_or_default(),
                        original_context: original.unwrap_or(1),
                        attention_factor: explicit.unwrap_or(1.0),
                    },
                    longrope_default_attention: explicit.is_none(),
                });
            }
        };
        Some(ScalingW {
            scaling,
            longrope_default_attention: false,
        })
    }
}
