//! Checks of a [`ModelSpec`] that every front end shares (the `.mspec` DSL, YAML, HF config.json).
//!
//! [`check`] returns [`Issue`]s located by field path (the IR's serde path without the layer
//! prefix, e.g. `attention.kv_heads`) and the layers concerned; each front end maps a path back to
//! where the user wrote it. A spec without issues is safe for every consumer: no size is zero, no
//! product of sizes the parameter table forms overflows `u64`, and every per-layer derived size is
//! consistent.
//!
//! ```
//! use modelspec_dsl::check::check;
//! let spec = modelspec_dsl::mspec::parse(
//!     "model m { vocab 256 d_model 64 layers 2 context 128 attention { heads 4 kv_heads 3 } }",
//!     "m.mspec",
//! );
//! assert!(spec.is_err());
//! ```

use crate::diag::Issue;
use crate::ir::*;
use crate::tensors::layer_tensors;

mod attention;
mod mla;
mod moe;

/// Most routed experts a layer may have (bounds the parameter table on hostile input).
pub const MAX_EXPERTS: u64 = 1 << 16;
/// Most layers a model may have.
pub const MAX_LAYERS: u64 = 10_000;
/// The softcaps accepted (attention and logits), inclusive.
pub const SOFTCAP_RANGE: (f64, f64) = (1e-3, 1e6);

/// Every problem found in `spec`, in a deterministic order (global fields, then per-layer fields
/// by first layer). Issues that are identical across layers are merged into one with all layers.
pub fn check(spec: &ModelSpec) -> Vec<Issue> {
    let mut c = Checker { issues: Vec::new() };
    c.global(spec);
    for layer in &spec.layers {
        c.layer(spec, layer);
    }
    c.overflow(spec);
    c.issues
}

/// Longest model name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that a model name is an identifier: non-empty, at most [`MAX_NAME_LEN`] characters, ASCII
/// letters, digits, `_`, `-` and `.`, not starting with `-` or `.` (the `.mspec` grammar's rule).
/// Names are written into generated Rust and CUDA source and into file names, so nothing else is
/// allowed. On failure, says why.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "has {} bytes, more than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!("contains {c:?}, which is not allowed in a name"));
    }
    if name.starts_with(['-', '.']) {
        return Err("starts with `-` or `.`".into());
    }
    Ok(())
}

/// `name` in the characters a model name may hold (ASCII letters, digits, `_`, `-`, `.`): every
/// run of other characters becomes one `_`. Leading and trailing characters are left as they are
/// (the callers trim to their own rules: model names here, run folders in the CLI).
pub fn name_chars(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out
}

/// A valid name close to `name`: every run of other characters becomes one `_`.
fn suggest_name(name: &str) -> String {
    let out = name_chars(name);
    let out = out
        .trim_start_matches(['-', '.', '_'])
        .trim_end_matches('_');
    let out: String = out.chars().take(MAX_NAME_LEN).collect();
    if out.is_empty() { "model".into() } else { out }
}

/// At most `max` characters of `s`, with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).chain(std::iter::once('…')).collect()
    }
}

struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn push(&mut self, field: &str, layer: Option<u64>, message: String, hint: Option<String>) {
        if let Some(l) = layer
            && let Some(existing) = self
                .issues
                .iter_mut()
                .find(|i| i.field == field && i.message == message && !i.layers.is_empty())
        {
            // Layers are checked in order, so a repeat can only be the last one pushed.
            if existing.layers.last() != Some(&l) {
                existing.layers.push(l);
            }
            return;
        }
        self.issues.push(Issue {
            field: field.to_string(),
            layers: layer.into_iter().collect(),
            message,
            hint,
        });
    }

    fn positive(&mut self, field: &str, layer: Option<u64>, v: u64) {
        if v == 0 {
            self.push(
                field,
                layer,
                format!("`{field}` must be positive, found 0"),
                None,
            );
        }
    }

    fn positive_real(&mut self, field: &str, layer: Option<u64>, v: f64) {
        if !(v > 0.0 && v.is_finite()) {
            self.push(
                field,
                layer,
                format!("`{field}` must be a positive number, found {v}"),
                None,
            );
        }
    }

    /// A softcap `c` maps a logit `x` to `c·tanh(x/c)`, computed in f32: outside
    /// [`SOFTCAP_RANGE`] it is no longer a number there (1e300 is infinite in f32, so `eval`
    /// returned NaN) and far from any use (Gemma 2 caps at 30 and 50).
    fn softcap(&mut self, field: &str, layer: Option<u64>, v: f64) {
        let (lo, hi) = SOFTCAP_RANGE;
        if !(v > 0.0 && v.is_finite()) {
            self.positive_real(field, layer, v);
        } else if !(lo..=hi).contains(&v) {
            self.push(
                field,
                layer,
                format!("`{field}` must be between {lo:e} and {hi:e}, found {v:e}"),
                Some(
                    "a softcap bounds scores to ±cap (Gemma 2: 50 for attention, 30 for the logits); leave it out for no cap".into(),
                ),
            );
        }
    }

    fn global(&mut self, s: &ModelSpec) {
        if let Err(why) = check_name(&s.name) {
            let suggestion = suggest_name(&s.name);
            self.push(
                "name",
                None,
                format!("the model name {:?} {why}", truncate(&s.name, 60)),
                Some(format!(
                    "a name is an identifier: ASCII letters, digits, `_`, `-` and `.`, starting with a letter, digit or `_` (at most {MAX_NAME_LEN} characters); e.g. `{suggestion}`"
                )),
            );
        }
        self.positive("vocab", None, s.vocab);
        self.positive("d_model", None, s.d_model);
        self.positive("n_layers", None, s.n_layers);
        self.positive("context", None, s.context);
        self.positive("vocab_pad_multiple", None, s.vocab_pad_multiple);
        if s.n_layers > MAX_LAYERS {
            self.push(
                "n_layers",
                None,
                format!(
                    "{} layers is more than the supported {MAX_LAYERS}",
                    s.n_layers
                ),
                None,
            );
        }
        if s.n_layers != s.layers.len() as u64 {
            self.push(
                "n_layers",
                None,
                format!(
                    "n_layers is {} but {} layer rows are given",
                    s.n_layers,
                    s.layers.len()
                ),
                Some("give exactly one row per layer".into()),
            );
        }
        for (i, l) in s.layers.iter().enumerate() {
            if l.index != i as u64 {
                self.push(
                    "index",
                    Some(i as u64),
                    format!("layer row {i} has index {}", l.index),
                    Some("rows must be in order, numbered from 0".into()),
                );
            }
        }
        if s.vocab_pad_multiple > 0 {
            let expected = s
                .vocab
                .div_ceil(s.vocab_pad_multiple)
                .checked_mul(s.vocab_pad_multiple);
            match expected {
                None => self.push(
                    "vocab_padded",
                    None,
                    "vocab rounded up to vocab_pad_multiple overflows u64".into(),
                    None,
                ),
                Some(e) if e != s.vocab_padded => self.push(
                    "vocab_padded",
                    None,
                    format!(
                        "vocab_padded is {} but vocab {} rounded up to a multiple of {} is {e}",
                        s.vocab_padded, s.vocab, s.vocab_pad_multiple
                    ),
                    Some(format!("set vocab_padded to {e}")),
                ),
                Some(_) => {}
            }
        }
        for (field, p) in [
            ("dropout.embedding", s.dropout.embedding),
            ("dropout.attention", s.dropout.attention),
            ("dropout.residual", s.dropout.residual),
        ] {
            if !(0.0..1.0).contains(&p) {
                self.push(
                    field,
                    None,
                    format!("dropout must be in [0, 1), found {p}"),
                    Some("0 turns dropout off".into()),
                );
            }
        }
        self.positive_real("embedding.scale", None, s.embedding.scale);
        if let Some(n) = &s.final_norm {
            self.norm("final_norm", None, n);
        }
        if let Some(cap) = s.logits.softcap {
            self.softcap("logits.softcap", None, cap);
        }
        match s.checkpoint.budget {
            Some(Budget::Fraction(f)) if !(0.0..=1.0).contains(&f) => self.push(
                "checkpoint.budget",
                None,
                format!("a budget fraction must be in [0, 1], found {f}"),
                Some("write a byte size with a unit (e.g. `24GiB`) for an absolute budget".into()),
            ),
            Some(Budget::Bytes(0)) => self.push(
                "checkpoint.budget",
                None,
                "a budget of 0 bytes cannot hold the layer inputs".into(),
                None,
            ),
            _ => {}
        }
        let any_learned = s
            .layers
            .iter()
            .any(|l| matches!(l.position, Position::Learned));
        if any_learned && !s.embedding.learned_positions {
            let layers = s
                .layers
                .iter()
                .filter(|l| matches!(l.position, Position::Learned))
                .map(|l| l.index)
                .collect();
            self.issues.push(Issue {
                field: "position".into(),
                layers,
                message: "learned positions are used but the embedding has no position table"
                    .into(),
                hint: Some("set `embedding.learned_positions`".into()),
            });
        }
    }

    fn norm(&mut self, prefix: &str, layer: Option<u64>, n: &Norm) {
        self.positive_real(&format!("{prefix}.eps"), layer, n.eps);
        if !n.offset.is_finite() {
            self.push(
                &format!("{prefix}.offset"),
                layer,
                "norm offset must be finite".into(),
                None,
            );
        }
        if n.bias && !n.kind.centred() {
            let with_bias: Vec<String> = NormKind::ALL
                .iter()
                .filter(|k| k.centred())
                .map(|k| format!("`{}(...)`", k.name()))
                .collect();
            self.push(
                &format!("{prefix}.bias"),
                layer,
                format!("a `{}` norm has no bias", n.kind.name()),
                Some(format!(
                    "use {} for a norm with a bias",
                    with_bias.join(" or ")
                )),
            );
        }
    }

    fn layer(&mut self, s: &ModelSpec, l: &Layer) {
        let i = Some(l.index);
        let a = &l.attention;
        self.positive("attention.heads", i, a.heads);
        self.positive("attention.kv_heads", i, a.kv_heads);
        self.positive("attention.head_dim", i, a.head_dim);
        if a.heads > 0 && a.kv_heads > 0 && !a.heads.is_multiple_of(a.kv_heads) {
            self.push(
                "attention.kv_heads",
                i,
                format!(
                    "attention.heads ({}) is not divisible by attention.kv_heads ({})",
                    a.heads, a.kv_heads
                ),
                Some(format!(
                    "kv_heads must divide heads; divisors of {}: {}",
                    a.heads,
                    divisors(a.heads)
                )),
            );
        }
        self.positive_real("attention.scale", i, a.scale);
        if let Some(cap) = a.softcap {
            self.softcap("attention.softcap", i, cap);
        }
        if a.window == Some(0) {
            self.push(
                "attention.window",
                i,
                "a sliding window must be positive, found 0".into(),
                Some("write `window none` for full attention".into()),
            );
        }
        if let Some(q) = &a.qk_norm {
            self.norm("attention.qk_norm.norm", i, &q.norm);
        }
        self.attention_options(s, l);
        self.mla(l);
        self.norm("block.norm", i, &l.block.norm);
        if l.block.shared_norm && !l.block.parallel_residual {
            self.push(
                "block.shared_norm",
                i,
                "shared_norm needs parallel_residual".into(),
                Some("a sequential block normalises attention and MLP inputs separately".into()),
            );
        }
        if let Position::Rope(r) = &l.position {
            self.positive_real("position.theta", i, r.theta);
            if !(r.fraction > 0.0 && r.fraction <= 1.0) {
                self.push(
                    "position.fraction",
                    i,
                    format!(
                        "the rotary fraction must be in (0, 1], found {}",
                        r.fraction
                    ),
                    None,
                );
            }
            // Latent attention reports its own rotary width (`mla.rope_dim`).
            if (r.rotary_dims == 0 || r.rotary_dims % 2 != 0) && a.mla.is_none() {
                self.push(
                    "position.rotary_dims",
                    i,
                    format!(
                        "rotary_dims must be even and positive, found {}",
                        r.rotary_dims
                    ),
                    Some("rotary dimensions are rotated in pairs".into()),
                );
            }
            if r.rotary_dims > a.head_dim {
                self.push(
                    "position.rotary_dims",
                    i,
                    format!(
                        "rotary_dims ({}) exceeds head_dim ({})",
                        r.rotary_dims, a.head_dim
                    ),
                    None,
                );
            }
            self.scaling(i, r);
        }
        match &l.ffn {
            Ffn::Mlp(m) => self.positive("ffn.hidden", i, m.hidden),
            Ffn::Moe(m) => {
                self.positive("ffn.experts", i, m.experts);
                self.positive("ffn.expert.hidden", i, m.expert.hidden);
                if m.experts > MAX_EXPERTS {
                    self.push(
                        "ffn.experts",
                        i,
                        format!(
                            "{} experts is more than the supported {MAX_EXPERTS}",
                            m.experts
                        ),
                        None,
                    );
                }
                if m.top_k == 0 || m.top_k > m.experts {
                    self.push(
                        "ffn.top_k",
                        i,
                        format!(
                            "top_k ({}) must be between 1 and experts ({})",
                            m.top_k, m.experts
                        ),
                        None,
                    );
                }
                if let Some(sh) = &m.shared {
                    self.positive("ffn.shared.count", i, sh.count);
                    self.positive("ffn.shared.hidden", i, sh.hidden);
                }
                self.moe_routing(i, m);
                if !(m.aux_loss >= 0.0 && m.aux_loss.is_finite()) {
                    self.push(
                        "ffn.aux_loss",
                        i,
                        format!(
                            "aux_loss must be a non-negative number, found {}",
                            m.aux_loss
                        ),
                        None,
                    );
                }
            }
        }
        let names = match &l.checkpoint {
            LayerCheckpoint::Save(n) | LayerCheckpoint::Recompute(n) => n,
            _ => return,
        };
        let known = layer_tensors(l);
        for name in names {
            if !known.contains(&name.as_str()) {
                let hint = match did_you_mean(name, &known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("this layer's tensors: {}", known.join(", ")),
                };
                self.push(
                    "checkpoint",
                    i,
                    format!("no tensor named `{name}` in this layer"),
                    Some(hint),
                );
            }
        }
        let _ = s;
    }

    fn scaling(&mut self, i: Option<u64>, r: &Rope) {
        let factor = match &r.scaling {
            RopeScaling::None => return,
            RopeScaling::Linear { factor } => *factor,
            RopeScaling::DynamicNtk {
                factor,
                original_context,
            } => {
                self.positive("position.scaling.original_context", i, *original_context);
                *factor
            }
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                self.positive("position.scaling.original_context", i, *original_context);
                self.positive_real("position.scaling.attention_factor", i, *attention_factor);
                if !(beta_fast.is_finite() && beta_slow.is_finite() && beta_fast > beta_slow) {
                    self.push(
                        "position.scaling.beta_fast",
                        i,
                        format!(
                            "yarn needs beta_fast > beta_slow, found {beta_fast} and {beta_slow}"
                        ),
                        None,
                    );
                }
                *factor
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                self.positive("position.scaling.original_context", i, *original_context);
                self.positive_real("position.scaling.low_freq_factor", i, *low_freq_factor);
                // Equal factors (Llama 4 Scout's 1 and 1) leave no smoothed band.
                if !(high_freq_factor >= low_freq_factor && high_freq_factor.is_finite()) {
                    self.push(
                        "position.scaling.high_freq_factor",
                        i,
                        format!(
                            "llama3 scaling needs high_freq_factor >= low_freq_factor, found {high_freq_factor} and {low_freq_factor}"
                        ),
                        None,
                    );
                }
                *factor
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_context,
                attention_factor,
            } => {
                self.positive("position.scaling.original_context", i, *original_context);
                self.positive_real("position.scaling.attention_factor", i, *attention_factor);
                let want = r.rotary_dims / 2;
                for (field, list) in [
                    ("position.scaling.short_factor", short_factor),
                    ("position.scaling.long_factor", long_factor),
                ] {
                    if list.len() as u64 != want {
                        self.push(
                            field,
                            i,
                            format!(
                                "longrope needs rotary_dims / 2 = {want} factors, found {}",
                                list.len()
                            ),
                            None,
                        );
                    }
                    if list.iter().any(|f| !(*f > 0.0 && f.is_finite())) {
                        self.push(field, i, "longrope factors must be positive".into(), None);
                    }
                }
                return;
            }
        };
        self.positive_real("position.scaling.factor", i, factor);
    }

    /// Every product the parameter table and the cost model form must fit in `u64`.
    fn overflow(&mut self, s: &ModelSpec) {
        let d = s.d_model;
        let mut total: Option<u64> = Some(0);
        let add = |total: &mut Option<u64>, v: Option<u64>| {
            *total = total.and_then(|t| v.and_then(|v| t.checked_add(v)))
        };
        add(&mut total, s.vocab_padded.checked_mul(d));
        add(&mut total, s.context.checked_mul(d));
        add(&mut total, s.vocab_padded.checked_mul(2));
        for l in &s.layers {
            let i = Some(l.index);
            let a = &l.attention;
            let q = a.heads.checked_mul(a.head_dim);
            let kv = a.kv_heads.checked_mul(a.head_dim);
            if q.is_none() || kv.is_none() {
                self.push(
                    "attention.head_dim",
                    i,
                    "heads × head_dim overflows u64".into(),
                    Some("check the attention sizes".into()),
                );
                total = None;
                continue;
            }
            let (q, kv) = (q.unwrap_or(0), kv.unwrap_or(0));
            add(&mut total, q.checked_mul(d).and_then(|x| x.checked_mul(2)));
            add(&mut total, kv.checked_mul(d).and_then(|x| x.checked_mul(2)));
            add(&mut total, q.checked_add(kv.saturating_mul(2)));
            add(
                &mut total,
                Some(q.saturating_add(kv).saturating_add(d.saturating_mul(8))),
            );
            let mlp = |m: &Mlp| m.hidden.checked_mul(d).and_then(|x| x.checked_mul(3));
            match &l.ffn {
                Ffn::Mlp(m) => add(&mut total, mlp(m)),
                Ffn::Moe(m) => {
                    add(&mut total, m.experts.checked_mul(d));
                    add(
                        &mut total,
                        mlp(&m.expert).and_then(|x| x.checked_mul(m.experts)),
                    );
                    if let Some(sh) = &m.shared {
                        add(
                            &mut total,
                            sh.count
                                .checked_mul(sh.hidden)
                                .and_then(|h| h.checked_mul(d).and_then(|x| x.checked_mul(3))),
                        );
                    }
                }
            }
        }
        if total.is_none() {
            self.push(
                "d_model",
                None,
                "the parameter count overflows u64".into(),
                Some("some size is far too large".into()),
            );
        }
    }
}

fn divisors(n: u64) -> String {
    // Bounded: the hint is built per layer and `heads` can be anything on hostile input.
    if n > 4096 {
        return "(too many to list)".into();
    }
    let mut out: Vec<String> = (1..=n)
        .filter(|k| n.is_multiple_of(*k))
        .map(|k| k.to_string())
        .collect();
    if out.len() > 12 {
        out.truncate(12);
        out.push("...".into());
    }
    out.join(", ")
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars (bounded inputs: keys and tensor names).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_identifiers() {
        for ok in ["tiny", "llama_3_1_8b", "qwen2.5-7b", "_x", "7b"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "x\npub fn injected() {}\n//",
            "../../escaped_run",
            "/abs/path",
            "a b",
            "a/b",
            "-x",
            "é",
            "x*/",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert_eq!(
            suggest_name("x\npub fn injected() {}\n//"),
            "x_pub_fn_injected"
        );
        assert_eq!(suggest_name("../../escaped_run"), "escaped_run");
        assert_eq!(suggest_name("\n"), "model");
    }
}
