//! IR to `.mspec` text, such that parsing the text gives back the same IR.
//!
//! The model block holds the most common value of each per-layer part (attention, position, norms,
//! feed-forward, checkpoint policy); layers that differ get `layers[...]` rules with compact
//! selectors (`even`, `every 6 offset 5`, `0..3`). The printer first writes a compact form that
//! leaves out defaults; if that does not parse back to exactly the same IR (an unusual combination
//! of derived sizes), it writes every field explicitly instead.

use std::fmt::Write;

use crate::ir::*;

mod text;
use text::{mla, scaling};

/// A readable `.mspec` for `spec`; `parse(&print(spec), _) == Ok(spec)` for every valid spec.
pub fn print(spec: &ModelSpec) -> String {
    let compact = Printer { explicit: false }.model(spec);
    if matches!(super::parse(&compact, "<print>"), Ok(ref back) if back == spec) {
        return compact;
    }
    Printer { explicit: true }.model(spec)
}

/// Formats a number so that it reads well and parses back to the same `f64`.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || (1e-3..1e6).contains(&a) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// Compact selector text (without `layers[` `]`) for the sorted layer indices `set` of `n` layers.
pub fn format_selector(set: &[u64], n: u64) -> String {
    let len = set.len() as u64;
    if len == n && len > 0 {
        return "all".into();
    }
    if let (Some(&first), Some(&last)) = (set.first(), set.last()) {
        if last - first + 1 == len {
            return if len == 1 {
                first.to_string()
            } else {
                format!("{first}..{}", last + 1)
            };
        }
        if len >= 2 {
            let step = set[1] - set[0];
            let progression = set.windows(2).all(|w| w[1] - w[0] == step);
            if progression && first < step && last + step >= n {
                return match (step, first) {
                    (2, 0) => "even".into(),
                    (2, 1) => "odd".into(),
                    (_, 0) => format!("every {step}"),
                    _ => format!("every {step} offset {first}"),
                };
            }
        }
    }
    let mut parts = Vec::new();
    let mut k = 0;
    while k < set.len() {
        let mut j = k;
        while j + 1 < set.len() && set[j + 1] == set[j] + 1 {
            j += 1;
        }
        if j - k >= 2 {
            parts.push(format!("{}..{}", set[k], set[j] + 1));
        } else {
            for v in &set[k..=j] {
                parts.push(v.to_string());
            }
        }
        k = j + 1;
    }
    parts.join(", ")
}

/// The most common value (ties: the one that appears first).
fn mode<T: PartialEq + Clone>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(c, _)| *c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(v, _)| v)
}

/// The width a rotary fraction applies to: the head, or latent attention's rotary part.
fn rope_width(a: &Attention) -> u64 {
    a.mla.map_or(a.head_dim, |m| m.rope_dim)
}

fn default_scale(head_dim: u64) -> f64 {
    (head_dim as f64).sqrt().recip()
}

fn derived_head_dim(d_model: u64, heads: u64) -> Option<u64> {
    if heads == 0 {
        Some(0)
    } else if d_model.is_multiple_of(heads) {
        Some(d_model / heads)
    } else {
        None
    }
}

fn derived_rotary(head_dim: u64, fraction: f64) -> Option<u64> {
    let x = head_dim as f64 * fraction;
    if fraction > 0.0 && fraction <= 1.0 {
        (x.fract() == 0.0).then_some(x as u64)
    } else {
        Some(head_dim)
    }
}

struct Printer {
    explicit: bool,
}

/// The per-layer parts the printer factors into a base and rules.
struct Base {
    attention: Attention,
    position: Position,
    block: Block,
    ffn: Ffn,
    checkpoint: LayerCheckpoint,
}

impl Printer {
    fn model(&self, s: &ModelSpec) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "model {} {{", s.name);
        let mut sizes = format!("    vocab {}", s.vocab);
        if s.vocab_pad_multiple != 1 || self.explicit {
            let _ = write!(sizes, " pad {}", s.vocab_pad_multiple);
        }
        let _ = writeln!(
            o,
            "{sizes}   d_model {}   layers {}   context {}",
            s.d_model, s.n_layers, s.context
        );
        self.dropout(&mut o, &s.dropout);

        let Some(base) = self.base(s) else {
            // No layers: only global settings can be written.
            self.globals_tail(&mut o, s, None);
            o.push_str("}\n");
            return o;
        };
        self.embedding(&mut o, s);
        self.block_base(&mut o, &base.block);
        if s.final_norm != Some(base.block.norm) || self.explicit {
            match &s.final_norm {
                None => o.push_str("    final_norm none\n"),
                Some(n) => {
                    let _ = writeln!(o, "    final_norm {}", self.norm(n, true));
                }
            }
        }
        let _ = writeln!(
            o,
            "    attention {{ {} }}",
            self.attention_base(s, &base.attention)
        );
        let _ = writeln!(
            o,
            "    position {}",
            self.position(&base.position, rope_width(&base.attention), None)
        );
        let _ = writeln!(o, "    {}", self.ffn(&base.ffn, self.explicit));
        self.globals_tail(&mut o, s, Some(&base));
        self.rules(&mut o, s, &base);
        self.checkpoint(&mut o, s, &base);
        o.push_str("}\n");
        o
    }

    fn base(&self, s: &ModelSpec) -> Option<Base> {
        let ls = &s.layers;
        Some(Base {
            attention: mode(ls.iter().map(|l| l.attention))?,
            position: mode(ls.iter().map(|l| l.position.clone()))?,
            block: mode(ls.iter().map(|l| l.block))?,
            ffn: mode(ls.iter().map(|l| l.ffn.clone()))?,
            checkpoint: mode(ls.iter().map(|l| l.checkpoint.clone()))?,
        })
    }

    fn dropout(&self, o: &mut String, d: &Dropout) {
        if d.embedding == d.attention && d.attention == d.residual {
            if d.embedding != 0.0 || self.explicit {
                let _ = writeln!(o, "    dropout {}", num(d.embedding));
            }
        } else {
            let _ = writeln!(
                o,
                "    dropout {{ embedding {} attention {} residual {} }}",
                num(d.embedding),
                num(d.attention),
                num(d.residual)
            );
        }
    }

    fn embedding(&self, o: &mut String, s: &ModelSpec) {
        let e = &s.embedding;
        let mut parts = Vec::new();
        if e.tied || self.explicit {
            parts.push(if e.tied {
                "tied".to_string()
            } else {
                "tied = false".to_string()
            });
        }
        match e.scale_expr {
            ScaleExpr::SqrtDModel => parts.push("scale = sqrt(d_model)".into()),
            ScaleExpr::Literal if e.scale != 1.0 || self.explicit => {
                parts.push(format!("scale = {}", num(e.scale)))
            }
            ScaleExpr::Literal => {}
        }
        let any_learned = s
            .layers
            .iter()
            .any(|l| matches!(l.position, Position::Learned));
        if e.learned_positions != any_learned || self.explicit {
            parts.push(format!("learned_positions = {}", e.learned_positions));
        }
        if !parts.is_empty() {
            let _ = writeln!(o, "    embedding {{ {} }}", parts.join(", "));
        }
    }

    fn block_base(&self, o: &mut String, b: &Block) {
        let default_norm = Norm {
            kind: NormKind::Rms,
            eps: 1e-5,
            offset: 0.0,
            weight: true,
            bias: false,
        };
        let mut line = Vec::new();
        if b.norm != default_norm || self.explicit {
            line.push(format!("norm {}", self.norm(&b.norm, self.explicit)));
        }
        if b.placement != NormPlacement::Pre || self.explicit {
            line.push(format!("placement {}", b.placement.name()));
        }
        if b.parallel_residual || self.explicit {
            line.push(flag("parallel_residual", b.parallel_residual));
        }
        if b.shared_norm || self.explicit {
            line.push(flag("shared_norm", b.shared_norm));
        }
        if !line.is_empty() {
            let _ = writeln!(o, "    {}", line.join("  "));
        }
    }

    fn norm(&self, n: &Norm, full: bool) -> String {
        let kind = n.kind.name();
        let mut args = Vec::new();
        if n.eps != 1e-5 || full {
            args.push(format!("eps = {}", num(n.eps)));
        }
        if n.offset != 0.0 || full {
            args.push(format!("offset = {}", num(n.offset)));
        }
        if !n.weight || full {
            args.push(format!("weight = {}", n.weight));
        }
        if n.bias != n.kind.centred() || full {
            args.push(format!("bias = {}", n.bias));
        }
        if args.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}({})", args.join(", "))
        }
    }

    /// `qk_norm ...`; `order` forces the `order = ...` argument (a rule overriding an
    /// after-RoPE norm).
    fn qk_norm(&self, q: &Option<QkNorm>, full: bool, order: bool) -> String {
        match q {
            None => "qk_norm none".into(),
            Some(q) if q.scope == QkNormScope::Head && !full && !q.after_rope && !order => {
                format!("qk_norm {}", self.norm(&q.norm, false))
            }
            Some(q) => {
                let scope = q.scope.name();
                let mut text = format!("qk_norm({}, scope = {scope}", self.norm(&q.norm, full));
                if q.after_rope {
                    text.push_str(", order = after_rope");
                } else if order {
                    text.push_str(", order = before_rope");
                }
                text.push(')');
                text
            }
        }
    }

    /// `temperature ...`.
    fn temperature(t: &Option<QueryTemperature>) -> String {
        match t {
            None => "temperature none".into(),
            Some(t) => format!("temperature(floor = {}, scale = {})", t.floor, num(t.scale)),
        }
    }

    fn attention_base(&self, s: &ModelSpec, a: &Attention) -> String {
        let x = self.explicit;
        let mut p = vec![format!("heads {}", a.heads)];
        if a.kv_heads != a.heads || x {
            p.push(format!("kv_heads {}", a.kv_heads));
        }
        // Latent attention's head_dim is its nope_dim + rope_dim.
        if (derived_head_dim(s.d_model, a.heads) != Some(a.head_dim) && a.mla.is_none()) || x {
            p.push(format!("head_dim {}", a.head_dim));
        }
        if a.qkv_bias && a.out_bias && !x {
            p.push("bias".into());
        } else {
            if a.qkv_bias || x {
                p.push(flag("qkv_bias", a.qkv_bias));
            }
            if a.out_bias || x {
                p.push(flag("out_bias", a.out_bias));
            }
        }
        if a.qk_norm.is_some() || x {
            p.push(self.qk_norm(&a.qk_norm, x, false));
        }
        match a.softcap {
            Some(c) => p.push(format!("softcap {}", num(c))),
            None if x => p.push("softcap none".into()),
            None => {}
        }
        if a.scale.to_bits() != default_scale(a.head_dim).to_bits() || x {
            p.push(format!("scale {}", num(a.scale)));
        }
        match a.window {
            Some(w) => p.push(format!("window {w}")),
            None if x => p.push("window none".into()),
            None => {}
        }
        if let Some(c) = a.chunk {
            p.push(format!("chunk {c}"));
        }
        if a.sinks {
            p.push("sinks".into());
        }
        if a.temperature.is_some() {
            p.push(Self::temperature(&a.temperature));
        }
        if a.mla.is_some() || x {
            p.push(mla(&a.mla, |n| self.norm(n, x)));
        }
        p.join("  ")
    }

    /// The attention settings a rule must write so that layer `l` ends up with `a`.
    fn attention_diff(&self, s: &ModelSpec, b: &Attention, a: &Attention) -> Vec<String> {
        let mut p = Vec::new();
        let x = self.explicit;
        if a.heads != b.heads {
            p.push(format!("heads {}", a.heads));
        }
        // What the parser would derive for a field the rule leaves out.
        let base_wrote_kv = x || b.kv_heads != b.heads;
        let kv = if base_wrote_kv { b.kv_heads } else { a.heads };
        if a.kv_heads != kv {
            p.push(format!("kv_heads {}", a.kv_heads));
        }
        let base_wrote_hd = x || derived_head_dim(s.d_model, b.heads) != Some(b.head_dim);
        let hd = if base_wrote_hd {
            Some(b.head_dim)
        } else {
            derived_head_dim(s.d_model, a.heads)
        };
        if Some(a.head_dim) != hd {
            p.push(format!("head_dim {}", a.head_dim));
        }
        if a.qkv_bias != b.qkv_bias {
            p.push(flag("qkv_bias", a.qkv_bias));
        }
        if a.out_bias != b.out_bias {
            p.push(flag("out_bias", a.out_bias));
        }
        if a.qk_norm != b.qk_norm {
            let base_after = b.qk_norm.is_some_and(|q| q.after_rope);
            p.push(self.qk_norm(&a.qk_norm, true, base_after));
        }
        if a.softcap != b.softcap {
            p.push(match a.softcap {
                Some(c) => format!("softcap {}", num(c)),
                None => "softcap none".into(),
            });
        }
        let base_wrote_scale = x || b.scale.to_bits() != default_scale(b.head_dim).to_bits();
        let scale = if base_wrote_scale {
            b.scale
        } else {
            default_scale(a.head_dim)
        };
        if a.scale.to_bits() != scale.to_bits() {
            p.push(format!("scale {}", num(a.scale)));
        }
        if a.window != b.window {
            p.push(match a.window {
                Some(w) => format!("window {w}"),
                None => "window none".into(),
            });
        }
        if a.chunk != b.chunk {
            p.push(match a.chunk {
                Some(c) => format!("chunk {c}"),
                None => "chunk none".into(),
            });
        }
        if a.sinks != b.sinks {
            p.push(flag("sinks", a.sinks));
        }
        if a.temperature != b.temperature {
            p.push(Self::temperature(&a.temperature));
        }
        if a.mla != b.mla {
            p.push(mla(&a.mla, |n| self.norm(n, x)));
        }
        p
    }

    /// `position ...` text. With `base` (a rope the rule merges onto), only what differs.
    fn position(&self, p: &Position, head_dim: u64, base: Option<(&Rope, u64)>) -> String {
        let r = match p {
            Position::None => return "none".into(),
            Position::Learned => return "learned".into(),
            Position::Alibi => return "alibi".into(),
            Position::Rope(r) => r,
        };
        let x = self.explicit;
        let mut args = Vec::new();
        let (theta0, frac0, style0, scaling0) = match base {
            Some((b, _)) => (b.theta, b.fraction, b.style, b.scaling.clone()),
            None => (10_000.0, 1.0, RopeStyle::HalfSplit, RopeScaling::None),
        };
        if r.theta != theta0 || (x && base.is_none()) {
            args.push(format!("theta = {}", num(r.theta)));
        }
        if r.fraction != frac0 || (x && base.is_none()) {
            args.push(format!("fraction = {}", num(r.fraction)));
        }
        let rotary_written = match base {
            None => x || derived_rotary(head_dim, r.fraction) != Some(r.rotary_dims),
            Some((b, b_hd)) => {
                let base_wrote = x || derived_rotary(b_hd, b.fraction) != Some(b.rotary_dims);
                let would = if base_wrote {
                    Some(b.rotary_dims)
                } else {
                    derived_rotary(head_dim, r.fraction)
                };
                would != Some(r.rotary_dims)
            }
        };
        if rotary_written {
            args.push(format!("rotary_dims = {}", r.rotary_dims));
        }
        if r.style != style0 || (x && base.is_none()) {
            args.push(format!("style = {}", r.style.name()));
        }
        if r.scaling != scaling0 || (x && base.is_none()) {
            args.push(format!("scaling = {}", scaling(&r.scaling)));
        }
        if args.is_empty() {
            "rope".into()
        } else {
            format!("rope({})", args.join(", "))
        }
    }

    fn ffn(&self, f: &Ffn, full: bool) -> String {
        match f {
            Ffn::Mlp(m) => format!("mlp {}", mlp(m, full)),
            Ffn::Moe(m) => {
                let mut expert = mlp(&m.expert, full);
                if let Some(c) = &m.clamp {
                    expert.pop();
                    expert.push_str(&format!(
                        ", limit = {}, alpha = {})",
                        num(c.limit),
                        num(c.alpha)
                    ));
                }
                let mut p = vec![
                    format!("experts {}", m.experts),
                    format!("top_k {}", m.top_k),
                    format!("expert {expert}"),
                ];
                if m.router != RouterOrder::SoftmaxTopk || full {
                    p.push(format!("router {}", m.router.name()));
                }
                // The routing options of newer models are printed only when used, so that the
                // text of older specs stays as it was.
                if m.router_bias {
                    p.push("router_bias".into());
                }
                if m.correction_bias {
                    p.push("correction_bias".into());
                }
                if let Some(g) = &m.groups {
                    p.push(format!("groups {}  top_groups {}", g.count, g.top));
                }
                if m.routed_scale != 1.0 {
                    p.push(format!("routed_scale {}", num(m.routed_scale)));
                }
                if m.weighting == Weighting::Input {
                    p.push("weighting input".into());
                }
                if m.renormalize || full {
                    p.push(flag("renormalize", m.renormalize));
                }
                match &m.shared {
                    Some(s) => p.push(format!(
                        "shared(count = {}, hidden = {}, gate = {})",
                        s.count, s.hidden, s.gate
                    )),
                    None if full => p.push("shared none".into()),
                    None => {}
                }
                if m.aux_loss != 0.0 || full {
                    p.push(format!("aux_loss {}", num(m.aux_loss)));
                }
                format!("moe {{ {} }}", p.join("  "))
            }
        }
    }

    fn globals_tail(&self, o: &mut String, s: &ModelSpec, _base: Option<&Base>) {
        let x = self.explicit;
        let mut lg = Vec::new();
        match s.logits.softcap {
            Some(c) => lg.push(format!("softcap {}", num(c))),
            None if x => lg.push("softcap none".into()),
            None => {}
        }
        if s.logits.bias || x {
            lg.push(flag("bias", s.logits.bias));
        }
        if !lg.is_empty() {
            let _ = writeln!(o, "    logits {{ {} }}", lg.join("  "));
        }
        let w = &s.weights;
        let mut wp = Vec::new();
        if w.naming != Naming::Llama || x {
            let n = w.naming.name();
            wp.push(format!("naming {n}"));
        }
        if w.qkv != QkvLayout::Separate || x {
            let q = w.qkv.name();
            wp.push(format!("qkv {q}"));
        }
        if w.fused_gate_up || x {
            wp.push(flag("fused_gate_up", w.fused_gate_up));
        }
        if !wp.is_empty() {
            let _ = writeln!(o, "    weights {{ {} }}", wp.join("  "));
        }
    }

    fn rules(&self, o: &mut String, s: &ModelSpec, b: &Base) {
        let mut groups: Vec<(Vec<String>, Vec<u64>)> = Vec::new();
        for l in &s.layers {
            let mut st = Vec::new();
            let attn = self.attention_diff(s, &b.attention, &l.attention);
            if !attn.is_empty() {
                st.push(format!("attention {{ {} }}", attn.join("  ")));
            }
            let pos = match (&b.position, &l.position) {
                (Position::Rope(br), Position::Rope(_)) => {
                    let t = self.position(
                        &l.position,
                        rope_width(&l.attention),
                        Some((br, rope_width(&b.attention))),
                    );
                    (t != "rope").then_some(t)
                }
                (bp, lp) if bp == lp => None,
                (_, lp) => Some(self.position(lp, rope_width(&l.attention), None)),
            };
            if let Some(p) = pos {
                st.push(format!("position {p}"));
            }
            let (bb, lb) = (&b.block, &l.block);
            if lb.norm != bb.norm {
                st.push(format!("norm {}", self.norm(&lb.norm, true)));
            }
            if lb.placement != bb.placement {
                st.push(format!("placement {}", lb.placement.name()));
            }
            if lb.parallel_residual != bb.parallel_residual {
                st.push(flag("parallel_residual", lb.parallel_residual));
            }
            if lb.shared_norm != bb.shared_norm {
                st.push(flag("shared_norm", lb.shared_norm));
            }
            if l.ffn != b.ffn {
                st.push(self.ffn(&l.ffn, true));
            }
            if st.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == st) {
                Some((_, ls)) => ls.push(l.index),
                None => groups.push((st, vec![l.index])),
            }
        }
        for (st, ls) in groups {
            let sel = format_selector(&ls, s.n_layers);
            if st.len() == 1 {
                let _ = writeln!(o, "    layers[{sel}] {{ {} }}", st[0]);
            } else {
                let _ = writeln!(o, "    layers[{sel}] {{");
                for line in st {
                    let _ = writeln!(o, "        {line}");
                }
                o.push_str("    }\n");
            }
        }
    }

    fn checkpoint(&self, o: &mut String, s: &ModelSpec, b: &Base) {
        let mut groups: Vec<(LayerCheckpoint, Vec<u64>)> = Vec::new();
        for l in s.layers.iter().filter(|l| l.checkpoint != b.checkpoint) {
            match groups.iter_mut().find(|(p, _)| *p == l.checkpoint) {
                Some((_, ls)) => ls.push(l.index),
                None => groups.push((l.checkpoint.clone(), vec![l.index])),
            }
        }
        let mut parts = Vec::new();
        if b.checkpoint != LayerCheckpoint::Auto || self.explicit {
            parts.push(format!("default {}", policy(&b.checkpoint)));
        }
        for (p, ls) in &groups {
            parts.push(format!(
                "layers[{}] {}",
                format_selector(ls, s.n_layers),
                policy(p)
            ));
        }
        match s.checkpoint.budget {
            Some(Budget::Fraction(f)) => parts.push(format!("budget {}", num(f))),
            Some(Budget::Bytes(bytes)) => parts.push(format!("budget {}", byte_size(bytes))),
            None if self.explicit => parts.push("budget none".into()),
            None => {}
        }
        if parts.is_empty() {
            return;
        }
        if parts.len() <= 2 && parts.iter().map(|p| p.len()).sum::<usize>() < 60 {
            let _ = writeln!(o, "    checkpoint {{ {} }}", parts.join("  "));
        } else {
            o.push_str("    checkpoint {\n");
            for p in parts {
                let _ = writeln!(o, "        {p}");
            }
            o.push_str("    }\n");
        }
    }
}

fn flag(name: &str, v: bool) -> String {
    if v {
        name.to_string()
    } else {
        format!("{name} = false")
    }
}

fn mlp(m: &Mlp, full: bool) -> String {
    let kind = m.activation.name();
    if m.bias || full {
        format!("{kind}(hidden = {}, bias = {})", m.hidden, m.bias)
    } else {
        format!("{kind}(hidden = {})", m.hidden)
    }
}

fn policy(p: &LayerCheckpoint) -> String {
    match p {
        LayerCheckpoint::None => "none".into(),
        LayerCheckpoint::Full => "full".into(),
        LayerCheckpoint::Auto => "auto".into(),
        LayerCheckpoint::Save(t) => format!("save({})", t.join(", ")),
        LayerCheckpoint::Recompute(t) => format!("recompute({})", t.join(", ")),
    }
}

fn byte_size(b: u64) -> String {
    for (unit, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{unit}", b / m);
        }
    }
    format!("{b}B")
}
