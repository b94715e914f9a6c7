//! Lowering: the syntax tree, read against the schema of keys, resolved into the IR.
//!
//! Reading happens in two stages. First every key is read into a *written* description
//! (`LayerW` and friends: only what the user wrote, as `Option`s), the model-level settings form
//! the base row and each `layers[...] { ... }` rule a delta. Then the base is copied to every layer,
//! the rules are applied in source order (the last matching rule wins), and each layer is resolved:
//! every default filled in, every derived size computed from that layer's final settings.
//!
//! A rule's settings override only what it writes: `layers[odd] { position rope(theta = 10000) }`
//! keeps the fraction, style and scaling of the model-level rope. A rule that changes a kind (mlp
//! to moe, rope to alibi, rms to layer norm) starts that part from its defaults.
//!
//! # Defaults
//!
//! | setting | default |
//! |---|---|
//! | `vocab ... pad M` / `vocab_pad_multiple` | 1 (no padding) |
//! | `dropout` | 0 everywhere |
//! | `embedding.tied` | false (separate lm_head) |
//! | `embedding.scale` | 1 |
//! | `embedding.learned_positions` | true iff some layer has `position learned` |
//! | `norm` | `rms(eps = 1e-5)` |
//! | norm `eps` / `offset` / `weight` | 1e-5 / 0 / true |
//! | norm `bias` | false for `rms`, true for `layer` |
//! | `placement` | `pre` |
//! | `parallel_residual` / `shared_norm` | false / false |
//! | `final_norm` | the model-level `norm` |
//! | `attention.heads` | required |
//! | `attention.kv_heads` | `heads` (MHA) |
//! | `attention.head_dim` | `d_model / heads` (must divide) |
//! | `attention.qkv_bias` / `out_bias` | false / false |
//! | `attention.qk_norm` | none; its `scope` is `head` |
//! | `attention.softcap` / `window` | none / none |
//! | `attention.scale` | `head_dim^-0.5` |
//! | `position` | `rope` |
//! | `rope` `theta` / `fraction` / `style` / `scaling` | 10000 / 1 / `half_split` / none |
//! | `rope` `rotary_dims` | `head_dim * fraction` (must be an integer) |
//! | `yarn` `beta_fast` / `beta_slow` / `attention_factor` | 32 / 1 / `0.1 ln(factor) + 1` |
//! | `llama3` `low_freq_factor` / `high_freq_factor` | 1 / 4 |
//! | `longrope` `attention_factor` | `sqrt(1 + ln(context / original_context) / ln(original_context))` |
//! | `mlp` | `gelu(hidden = 4 * d_model)` |
//! | mlp `hidden` / `bias` | `4 * d_model` / false |
//! | `moe` `experts`, `top_k`, `expert` | required |
//! | `moe` `router` / `renormalize` / `aux_loss` | `softmax_topk` / false / 0 |
//! | `moe.shared` | none; `count` 1, `hidden` the expert's, `gate` false |
//! | `logits` `softcap` / `bias` | none / false |
//! | `weights` `naming` / `qkv` / `fused_gate_up` | `llama` / `separate` / false |
//! | `checkpoint` `default` / `budget` | `auto` / none |
//!
//! Layer selectors: `layers[3]`, `layers[0..8]` (half-open: layers 0 to 7), `layers[1, 5, 9]`,
//! `layers[0..4, 10]`, `layers[even]`, `layers[odd]`, `layers[every 4]`, `layers[every 4 offset 1]`,
//! `layers[all]`. A rule that selects no layer, or an index past the last layer, is an error.
//!
//! # Layout
//!
//! This file holds the reader's state and [`lower`]; one file per concept beside it: `values`
//! (numbers, flags, words, call arguments), `model` (the model body and model-wide blocks),
//! `layers` (per-layer keys, rules, selectors), `attention`, `position`, `ffn` (MLP and MoE),
//! `checkpoint`, `written` (the written rows and their merge), `provenance` and `resolve`
//! (defaults and derived sizes of one layer).

use std::collections::BTreeMap;

use super::ast::{File, Node, NodeKind, Span};
use crate::check::{MAX_LAYERS, did_you_mean};
use crate::diag::{Diagnostic, Issue};
use crate::ir::*;

mod attention;
mod checkpoint;
mod ffn;
mod layers;
mod model;
mod position;
mod provenance;
mod resolve;
mod values;
mod written;

use layers::select;
use provenance::ProvEntry;
pub use provenance::Provenance;
use resolve::resolve_layer;
pub(crate) use written::*;

// ---------------------------------------------------------------------------------------------
// Numbers.

struct Num {
    value: f64,
    /// Exact integer value when written as a plain integer.
    int: Option<u64>,
    negative: bool,
    unit: String,
    /// Written as a plain integer that does not fit in u64.
    too_large: bool,
}

fn parse_number(text: &str) -> Option<Num> {
    let split = text
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .len();
    let (digits, unit) = text.split_at(split);
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let negative = clean.starts_with('-');
    let value: f64 = clean.parse().ok()?;
    let plain = !clean.contains(['.', 'e', 'E', '-']);
    let (int, too_large) = if plain {
        match clean.parse::<u64>() {
            Ok(v) => (Some(v), false),
            Err(_) => (None, true),
        }
    } else {
        (None, false)
    };
    Some(Num {
        value,
        int,
        negative,
        unit: unit.to_string(),
        too_large,
    })
}

// ---------------------------------------------------------------------------------------------
// The reader.

/// The model-level settings as written.
#[derive(Default)]
struct ModelW {
    vocab: Option<u64>,
    pad: Option<u64>,
    d_model: Option<u64>,
    n_layers: Option<u64>,
    context: Option<u64>,
    dropout: [Option<f64>; 3],
    tied: Option<bool>,
    scale: Option<(f64, ScaleExpr)>,
    learned_positions: Option<bool>,
    final_norm: Option<Option<NormW>>,
    logits_softcap: Option<Option<f64>>,
    logits_bias: Option<bool>,
    naming: Option<Naming>,
    qkv: Option<QkvLayout>,
    fused_gate_up: Option<bool>,
    budget: Option<Option<Budget>>,
    base: LayerW,
    rules: Vec<Rule>,
}

/// Named call arguments: name → (span of `name = value`, the value atoms).
type Args<'n> = BTreeMap<String, (Span, Vec<&'n Node>)>;

struct Reader<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
    /// Diagnostics past [`crate::diag::MAX_DIAGNOSTICS`], counted instead of kept.
    more: usize,
    prov: Vec<ProvEntry>,
    /// The rule being read (None: model level).
    rule: Option<usize>,
    /// Keys seen in the current scope, for duplicate detection.
    seen: BTreeMap<String, Span>,
    src: &'a str,
    /// The key just read was written as a call (`qk_norm(...)`): the call itself.
    call_key: Option<Node>,
}

struct Cursor<'n> {
    nodes: &'n [Node],
    pos: usize,
    /// Where "missing value" errors point when the cursor is exhausted.
    end: Span,
}

impl<'n> Cursor<'n> {
    fn new(nodes: &'n [Node], end: Span) -> Self {
        Cursor { nodes, pos: 0, end }
    }
    fn peek(&self) -> Option<&'n Node> {
        self.nodes.get(self.pos)
    }
    fn next(&mut self) -> Option<&'n Node> {
        let n = self.nodes.get(self.pos);
        if n.is_some() {
            self.pos += 1;
        }
        n
    }
    fn skip_commas(&mut self) {
        while matches!(self.peek().map(|n| &n.kind), Some(NodeKind::Comma)) {
            self.pos += 1;
        }
    }
    fn eat_eq(&mut self) -> bool {
        if matches!(self.peek().map(|n| &n.kind), Some(NodeKind::Eq)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn peek_ident(&self) -> Option<&'n str> {
        self.peek().and_then(|n| n.ident())
    }
    /// Consumes a `{ ... }` block if one comes next and returns a cursor over its contents.
    fn open_block(&mut self) -> Option<Cursor<'n>> {
        let Some(Node {
            kind: NodeKind::Block(inner),
            span,
        }) = self.peek()
        else {
            return None;
        };
        self.next();
        Some(Cursor::new(inner, span.end - 1..span.end))
    }
}

const MODEL_KEYS: &[&str] = &[
    "vocab",
    "vocab_pad_multiple",
    "d_model",
    "layers",
    "context",
    "dropout",
    "embedding",
    "norm",
    "placement",
    "parallel_residual",
    "shared_norm",
    "final_norm",
    "attention",
    "position",
    "mlp",
    "moe",
    "logits",
    "weights",
    "checkpoint",
];
const RULE_KEYS: &[&str] = &[
    "norm",
    "placement",
    "parallel_residual",
    "shared_norm",
    "attention",
    "position",
    "mlp",
    "moe",
    "checkpoint",
];
const ATTN_KEYS: &[&str] = &[
    "heads",
    "kv_heads",
    "head_dim",
    "qkv_bias",
    "out_bias",
    "bias",
    "qk_norm",
    "softcap",
    "scale",
    "window",
    "chunk",
    "sinks",
    "temperature",
    "mla",
];
const MOE_KEYS: &[&str] = &[
    "experts",
    "top_k",
    "expert",
    "router",
    "renormalize",
    "shared",
    "aux_loss",
    "router_bias",
    "correction_bias",
    "groups",
    "top_groups",
    "routed_scale",
    "weighting",
];
const EMBED_KEYS: &[&str] = &["tied", "scale", "learned_positions"];
const LOGITS_KEYS: &[&str] = &["softcap", "bias"];
const WEIGHTS_KEYS: &[&str] = &["naming", "qkv", "fused_gate_up"];
const DROPOUT_KEYS: &[&str] = &["embedding", "attention", "residual"];
const CKPT_KEYS: &[&str] = &["default", "layers", "budget"];
/// Keys that may be written as a call: `qk_norm(rms(), scope = full)`, `budget(0.5)`, `shared(...)`,
/// `temperature(floor = 8192, scale = 0.1)`.
const CALL_KEYS: &[&str] = &["qk_norm", "budget", "shared", "temperature", "mla"];

/// Whether `word` is a key in any scope (so a value reader must not swallow it).
fn is_any_key(word: &str) -> bool {
    let head = word.split('.').next().unwrap_or(word);
    [
        MODEL_KEYS,
        ATTN_KEYS,
        MOE_KEYS,
        EMBED_KEYS,
        LOGITS_KEYS,
        WEIGHTS_KEYS,
        DROPOUT_KEYS,
        CKPT_KEYS,
    ]
    .iter()
    .any(|keys| keys.contains(&head))
}

/// The IR field path as the user writes it in `.mspec` (`block.placement` → `placement`,
/// `ffn.top_k` → `moe.top_k`, `ffn.hidden` → `mlp.hidden`).
pub(crate) fn user_path(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("block.") {
        return rest.to_string();
    }
    if path == "n_layers" {
        return "layers".into();
    }
    if path == "ffn" {
        return "mlp".into();
    }
    if let Some(rest) = path.strip_prefix("ffn.clamp.") {
        return format!("moe.expert.{rest}");
    }
    if let Some(rest) = path.strip_prefix("ffn.groups.") {
        return if rest == "top" {
            "moe.top_groups".into()
        } else {
            "moe.groups".into()
        };
    }
    if let Some(rest) = path.strip_prefix("ffn.") {
        let head = rest.split('.').next().unwrap_or(rest);
        let moe = MOE_KEYS.contains(&head) || head == "shared";
        return format!("{}.{rest}", if moe { "moe" } else { "mlp" });
    }
    path.to_string()
}

// ---------------------------------------------------------------------------------------------
// Resolution.

/// Issues found while resolving layers, merged across layers.
#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn push(&mut self, field: &str, layer: Option<u64>, message: String, hint: Option<String>) {
        if let Some(existing) = self
            .0
            .iter_mut()
            .find(|i| i.field == field && i.message == message)
        {
            if let Some(l) = layer {
                existing.layers.push(l);
            }
            return;
        }
        self.0.push(Issue {
            field: field.to_string(),
            layers: layer.into_iter().collect(),
            message,
            hint,
        });
    }
}

/// Lowers a parsed file into the IR. On success also returns where each field was written.
pub fn lower(file: &File, src: &str, path: &str) -> Result<(ModelSpec, Provenance), LowerError> {
    let mut r = Reader {
        file: path,
        diags: Vec::new(),
        more: 0,
        prov: Vec::new(),
        rule: None,
        seen: BTreeMap::new(),
        src,
        call_key: None,
    };
    let end = src.len().saturating_sub(1)..src.len();
    let m = r.model_body(&file.body, end);
    let mut prov = Provenance {
        header: file.header_span.clone(),
        n_layers: 0,
        entries: r.prov.clone(),
        rule_layers: Vec::new(),
        warnings: Vec::new(),
    };

    let missing = |what: &str, field: &str, v: Option<u64>, r: &mut Reader<'_>| {
        if v.is_none() && !r.prov.iter().any(|e| e.field == field) {
            r.error(
                file.header_span.clone(),
                field,
                format!("missing `{what}`"),
                Some(format!("add `{what} N` to the model block")),
            );
        }
        v
    };
    let vocab = missing("vocab", "vocab", m.vocab, &mut r);
    let d_model = missing("d_model", "d_model", m.d_model, &mut r);
    let n_layers = missing("layers", "n_layers", m.n_layers, &mut r);
    let context = missing("context", "context", m.context, &mut r);
    if let Some(n) = n_layers
        && n > MAX_LAYERS
    {
        let span = prov_span(&r.prov, "n_layers").unwrap_or(file.header_span.clone());
        r.error(
            span,
            "layers",
            format!("{n} layers is more than the supported {MAX_LAYERS}"),
            None,
        );
    }

    // Rules: which layers each selects.
    let mut rule_layers = Vec::new();
    if let Some(n) = n_layers.filter(|n| *n <= MAX_LAYERS) {
        for rule in &m.rules {
            if rule.items.is_empty() {
                rule_layers.push(Vec::new());
                continue;
            }
            match select(&rule.items, n) {
                Ok(ls) if ls.is_empty() => {
                    let hint = if rule.items.iter().any(|i| matches!(i, SelItem::Range(..))) {
                        "ranges are half-open: `a..b` selects layers a to b-1".to_string()
                    } else {
                        format!("the model has layers 0..{n}")
                    };
                    r.error(
                        rule.span.clone(),
                        "layers",
                        "this rule matches no layer".into(),
                        Some(hint),
                    );
                    rule_layers.push(ls);
                }
                Ok(ls) => rule_layers.push(ls),
                Err(i) => {
                    r.error(
                        rule.span.clone(),
                        "layers",
                        format!("layer {i} is out of range: the model has {n} layers (0..{n})"),
                        Some("ranges are half-open: `a..b` selects layers a to b-1".into()),
                    );
                    rule_layers.push(Vec::new());
                }
            }
        }
    }
    if r.more > 0 {
        r.diags.push(crate::diag::more(path, r.more));
    }
    if !r.diags.is_empty() {
        return Err(LowerError::Diagnostics(r.diags));
    }
    let (Some(vocab), Some(d_model), Some(n_layers), Some(context)) =
        (vocab, d_model, n_layers, context)
    else {
        return Err(LowerError::Diagnostics(r.diags));
    };
    prov.warnings = layers::overridden_settings(&m.rules, &rule_layers, src, path);
    prov.rule_layers = rule_layers.clone();
    prov.n_layers = n_layers;

    let mut issues = Issues::default();
    let pad = m.pad.unwrap_or(1);
    let vocab_padded = if pad == 0 {
        vocab
    } else {
        match vocab.div_ceil(pad).checked_mul(pad) {
            Some(v) => v,
            None => {
                issues.push(
                    "vocab_padded",
                    None,
                    "vocab rounded up to the pad multiple overflows u64".into(),
                    None,
                );
                vocab
            }
        }
    };

    // Per-layer written settings.
    let mut rows: Vec<LayerW> = vec![m.base.clone(); n_layers as usize];
    for (rule, layers) in m.rules.iter().zip(&rule_layers) {
        for &l in layers {
            rows[l as usize].merge(&rule.delta);
        }
    }
    let base_norm = m.base.norm.clone().unwrap_or_default().resolve();
    let layers: Vec<Layer> = rows
        .iter()
        .enumerate()
        .map(|(i, w)| resolve_layer(i as u64, w, d_model, context, &mut issues))
        .collect();
    if !issues.0.is_empty() {
        return Err(LowerError::Issues(issues.0, prov));
    }
    let any_learned = layers
        .iter()
        .any(|l| matches!(l.position, Position::Learned));
    let (scale, scale_expr) = match m.scale {
        Some((_, ScaleExpr::SqrtDModel)) => ((d_model as f64).sqrt(), ScaleExpr::SqrtDModel),
        Some((v, e)) => (v, e),
        None => (1.0, ScaleExpr::Literal),
    };
    let spec = ModelSpec {
        name: file.name.clone(),
        vocab,
        vocab_padded,
        vocab_pad_multiple: pad,
        d_model,
        n_layers,
        context,
        dropout: Dropout {
            embedding: m.dropout[0].unwrap_or(0.0),
            attention: m.dropout[1].unwrap_or(0.0),
            residual: m.dropout[2].unwrap_or(0.0),
        },
        embedding: Embedding {
            tied: m.tied.unwrap_or(false),
            scale,
            scale_expr,
            learned_positions: m.learned_positions.unwrap_or(any_learned),
        },
        final_norm: match &m.final_norm {
            Some(None) => None,
            Some(Some(w)) => Some(w.resolve()),
            None => Some(base_norm),
        },
        logits: Logits {
            softcap: m.logits_softcap.flatten(),
            bias: m.logits_bias.unwrap_or(false),
        },
        weights: WeightLayout {
            naming: m.naming.unwrap_or(Naming::Llama),
            qkv: m.qkv.unwrap_or(QkvLayout::Separate),
            fused_gate_up: m.fused_gate_up.unwrap_or(false),
        },
        checkpoint: CheckpointGlobal {
            budget: m.budget.flatten(),
        },
        layers,
    };
    Ok((spec, prov))
}

fn prov_span(entries: &[ProvEntry], field: &str) -> Option<Span> {
    entries
        .iter()
        .rev()
        .find(|e| e.field == field)
        .map(|e| e.span.clone())
}

/// Why lowering failed.
#[derive(Debug)]
pub enum LowerError {
    /// Errors located in the source.
    Diagnostics(Vec<Diagnostic>),
    /// Errors found while resolving, located by field path (mapped through the provenance).
    Issues(Vec<Issue>, Provenance),
}
