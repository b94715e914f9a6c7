//! Lowering: the syntax tree, read against the schema of keys, resolved into the IR.
//!
//! Reading happens in two stages. First every key is read into a *written* description
//! ([`LayerW`] and friends: only what the user wrote, as `Option`s), the model-level settings form
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

use std::collections::BTreeMap;

use super::ast::{File, Node, NodeKind, Span};
use crate::check::{MAX_LAYERS, did_you_mean};
use crate::diag::{Diagnostic, Issue};
use crate::ir::*;

// ---------------------------------------------------------------------------------------------
// Written settings: what the user wrote, before defaults.

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NormW {
    pub kind: Option<NormKind>,
    pub eps: Option<f64>,
    pub offset: Option<f64>,
    pub weight: Option<bool>,
    pub bias: Option<bool>,
}

impl NormW {
    fn merge(&mut self, d: &NormW) {
        if d.kind.is_some() && d.kind != self.kind {
            *self = d.clone();
            return;
        }
        merge_opt(&mut self.eps, d.eps);
        merge_opt(&mut self.offset, d.offset);
        merge_opt(&mut self.weight, d.weight);
        merge_opt(&mut self.bias, d.bias);
    }
    fn resolve(&self) -> Norm {
        let kind = self.kind.unwrap_or(NormKind::Rms);
        Norm {
            kind,
            eps: self.eps.unwrap_or(1e-5),
            offset: self.offset.unwrap_or(0.0),
            weight: self.weight.unwrap_or(true),
            bias: self.bias.unwrap_or(kind == NormKind::Layer),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QkW {
    pub norm: NormW,
    pub scope: Option<QkNormScope>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AttnW {
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub qkv_bias: Option<bool>,
    pub out_bias: Option<bool>,
    pub qk_norm: Option<Option<QkW>>,
    pub softcap: Option<Option<f64>>,
    pub scale: Option<f64>,
    pub window: Option<Option<u64>>,
}

impl AttnW {
    fn merge(&mut self, d: &AttnW) {
        merge_opt(&mut self.heads, d.heads);
        merge_opt(&mut self.kv_heads, d.kv_heads);
        merge_opt(&mut self.head_dim, d.head_dim);
        merge_opt(&mut self.qkv_bias, d.qkv_bias);
        merge_opt(&mut self.out_bias, d.out_bias);
        match (&mut self.qk_norm, &d.qk_norm) {
            (Some(Some(cur)), Some(Some(new))) => {
                cur.norm.merge(&new.norm);
                merge_opt(&mut cur.scope, new.scope);
            }
            (cur, Some(new)) => *cur = Some(new.clone()),
            (_, None) => {}
        }
        merge_opt(&mut self.softcap, d.softcap);
        merge_opt(&mut self.scale, d.scale);
        merge_opt(&mut self.window, d.window);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScalingW {
    pub scaling: RopeScaling,
    /// Longrope without an explicit `attention_factor`: resolved from the context ratio.
    pub longrope_default_attention: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RopeW {
    pub theta: Option<f64>,
    pub fraction: Option<f64>,
    pub rotary_dims: Option<u64>,
    pub style: Option<RopeStyle>,
    pub scaling: Option<ScalingW>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PosW {
    None,
    Learned,
    Alibi,
    Rope(RopeW),
}

impl PosW {
    fn merge(&mut self, d: &PosW) {
        match (self, d) {
            (PosW::Rope(cur), PosW::Rope(new)) => {
                merge_opt(&mut cur.theta, new.theta);
                merge_opt(&mut cur.fraction, new.fraction);
                merge_opt(&mut cur.rotary_dims, new.rotary_dims);
                merge_opt(&mut cur.style, new.style);
                if new.scaling.is_some() {
                    cur.scaling = new.scaling.clone();
                }
            }
            (cur, new) => *cur = new.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MlpW {
    pub kind: MlpKind,
    pub hidden: Option<u64>,
    pub bias: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SharedW {
    pub count: Option<u64>,
    pub hidden: Option<u64>,
    pub gate: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MoeW {
    pub experts: Option<u64>,
    pub top_k: Option<u64>,
    pub expert: Option<MlpW>,
    pub router: Option<RouterOrder>,
    pub renormalize: Option<bool>,
    pub shared: Option<Option<SharedW>>,
    pub aux_loss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FfnW {
    Mlp(MlpW),
    Moe(MoeW),
}

impl FfnW {
    fn merge(&mut self, d: &FfnW) {
        match (self, d) {
            (FfnW::Mlp(cur), FfnW::Mlp(new)) => {
                cur.kind = new.kind;
                merge_opt(&mut cur.hidden, new.hidden);
                merge_opt(&mut cur.bias, new.bias);
            }
            (FfnW::Moe(cur), FfnW::Moe(new)) => {
                merge_opt(&mut cur.experts, new.experts);
                merge_opt(&mut cur.top_k, new.top_k);
                if new.expert.is_some() {
                    cur.expert = new.expert.clone();
                }
                merge_opt(&mut cur.router, new.router);
                merge_opt(&mut cur.renormalize, new.renormalize);
                if new.shared.is_some() {
                    cur.shared = new.shared.clone();
                }
                merge_opt(&mut cur.aux_loss, new.aux_loss);
            }
            (cur, new) => *cur = new.clone(),
        }
    }
}

/// Per-layer settings as written (model level: the base; a rule: a delta).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LayerW {
    pub attn: AttnW,
    pub pos: Option<PosW>,
    pub norm: Option<NormW>,
    pub placement: Option<NormPlacement>,
    pub parallel_residual: Option<bool>,
    pub shared_norm: Option<bool>,
    pub ffn: Option<FfnW>,
    pub ckpt: Option<LayerCheckpoint>,
}

impl LayerW {
    fn merge(&mut self, d: &LayerW) {
        self.attn.merge(&d.attn);
        match (&mut self.pos, &d.pos) {
            (Some(cur), Some(new)) => cur.merge(new),
            (cur, Some(new)) => *cur = Some(new.clone()),
            _ => {}
        }
        match (&mut self.norm, &d.norm) {
            (Some(cur), Some(new)) => cur.merge(new),
            (cur, Some(new)) => *cur = Some(new.clone()),
            _ => {}
        }
        merge_opt(&mut self.placement, d.placement);
        merge_opt(&mut self.parallel_residual, d.parallel_residual);
        merge_opt(&mut self.shared_norm, d.shared_norm);
        match (&mut self.ffn, &d.ffn) {
            (Some(cur), Some(new)) => cur.merge(new),
            (cur, Some(new)) => *cur = Some(new.clone()),
            _ => {}
        }
        if d.ckpt.is_some() {
            self.ckpt = d.ckpt.clone();
        }
    }
}

fn merge_opt<T: Clone>(cur: &mut Option<T>, new: Option<T>) {
    if new.is_some() {
        *cur = new;
    }
}

/// One item of a layer selector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SelItem {
    Index(u64),
    Range(u64, u64),
    Every { step: u64, offset: u64 },
    Even,
    Odd,
    All,
}

#[derive(Debug, Clone)]
struct Rule {
    items: Vec<SelItem>,
    span: Span,
    delta: LayerW,
}

// ---------------------------------------------------------------------------------------------
// Provenance: where each field was written, to place IR issues back in the source.

#[derive(Debug, Clone)]
struct ProvEntry {
    field: String,
    rule: Option<usize>,
    span: Span,
}

/// Where each IR field was written, so that [`Issue`]s can be shown at the user's text.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    header: Span,
    n_layers: u64,
    entries: Vec<ProvEntry>,
    rule_layers: Vec<Vec<u64>>,
}

impl Provenance {
    /// The span where `field` (an IR path without the layer prefix) was written for `layer`, or
    /// the model header when it was a default.
    pub fn span_of(&self, field: &str, layer: Option<u64>) -> Span {
        let mut candidates = vec![field.to_string()];
        let aliases: &[(&str, &[&str])] = &[
            ("vocab_padded", &["vocab_pad_multiple", "vocab"]),
            ("attention.head_dim", &["attention.heads"]),
            ("attention.scale", &["attention.head_dim"]),
            ("position.rotary_dims", &["position.fraction"]),
            ("layers", &["n_layers"]),
        ];
        for (from, to) in aliases {
            if field == *from {
                candidates.extend(to.iter().map(|s| s.to_string()));
            }
        }
        for cand in candidates {
            let mut f = cand.as_str();
            loop {
                if let Some(span) = self.find(f, layer) {
                    return span;
                }
                match f.rfind('.') {
                    Some(dot) => f = &f[..dot],
                    None => break,
                }
            }
        }
        self.header.clone()
    }

    /// Number of layers of the model.
    pub fn n_layers(&self) -> u64 {
        self.n_layers
    }

    /// Whether the user wrote `field` (at model level or in a rule).
    pub fn wrote(&self, field: &str) -> bool {
        self.entries.iter().any(|e| e.field == field)
    }

    fn find(&self, field: &str, layer: Option<u64>) -> Option<Span> {
        self.entries.iter().rev().find_map(|e| {
            if e.field != field {
                return None;
            }
            match (e.rule, layer) {
                (None, _) => Some(e.span.clone()),
                (Some(r), Some(l)) => self
                    .rule_layers
                    .get(r)
                    .filter(|ls| ls.contains(&l))
                    .map(|_| e.span.clone()),
                (Some(_), None) => None,
            }
        })
    }
}

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
    "heads", "kv_heads", "head_dim", "qkv_bias", "out_bias", "bias", "qk_norm", "softcap", "scale",
    "window",
];
const MOE_KEYS: &[&str] = &[
    "experts",
    "top_k",
    "expert",
    "router",
    "renormalize",
    "shared",
    "aux_loss",
];
const EMBED_KEYS: &[&str] = &["tied", "scale", "learned_positions"];
const LOGITS_KEYS: &[&str] = &["softcap", "bias"];
const WEIGHTS_KEYS: &[&str] = &["naming", "qkv", "fused_gate_up"];
const DROPOUT_KEYS: &[&str] = &["embedding", "attention", "residual"];
const CKPT_KEYS: &[&str] = &["default", "layers", "budget"];
/// Keys that may be written as a call: `qk_norm(rms(), scope = full)`, `budget(0.5)`, `shared(...)`.
const CALL_KEYS: &[&str] = &["qk_norm", "budget", "shared"];
const MLP_KINDS: &[&str] = &[
    "gelu",
    "gelu_tanh",
    "relu_squared",
    "swiglu",
    "geglu",
    "geglu_tanh",
];

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
    if let Some(rest) = path.strip_prefix("ffn.") {
        let head = rest.split('.').next().unwrap_or(rest);
        let moe = MOE_KEYS.contains(&head) || head == "shared";
        return format!("{}.{rest}", if moe { "moe" } else { "mlp" });
    }
    path.to_string()
}

fn mlp_kind(name: &str) -> Option<MlpKind> {
    Some(match name {
        "gelu" => MlpKind::Gelu,
        "gelu_tanh" => MlpKind::GeluTanh,
        "relu_squared" => MlpKind::ReluSquared,
        "swiglu" => MlpKind::Swiglu,
        "geglu" => MlpKind::Geglu,
        "geglu_tanh" => MlpKind::GegluTanh,
        _ => return None,
    })
}

impl<'a> Reader<'a> {
    fn error(&mut self, span: Span, field: &str, message: String, hint: Option<String>) {
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

    fn record(&mut self, field: &str, span: Span) {
        self.prov.push(ProvEntry {
            field: field.to_string(),
            rule: self.rule,
            span,
        });
    }

    /// Marks `path` as written in the current scope; reports a duplicate.
    fn mark(&mut self, path: &str, span: &Span) {
        if let Some(first) = self.seen.get(path).cloned() {
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

    fn unknown_key(&mut self, key: &str, span: Span, scope: &str, keys: &[&str]) {
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
    fn skip_value(&mut self, cur: &mut Cursor<'_>) {
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

    fn missing(&mut self, cur: &Cursor<'_>, key_span: &Span, field: &str, what: &str) {
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
    fn number(
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

    fn no_unit(&mut self, n: &Num, span: &Span, field: &str) -> bool {
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
    fn uint(&mut self, cur: &mut Cursor<'_>, key_span: &Span, field: &str) -> Option<u64> {
        let (n, span) = self.number(cur, key_span, field)?;
        self.record(field, key_span.start..span.end);
        self.as_uint(&n, &span, field)
    }

    fn as_uint(&mut self, n: &Num, span: &Span, field: &str) -> Option<u64> {
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
    fn real(&mut self, cur: &mut Cursor<'_>, key_span: &Span, field: &str) -> Option<f64> {
        let (n, span) = self.number(cur, key_span, field)?;
        self.record(field, key_span.start..span.end);
        if !self.no_unit(&n, &span, field) {
            return None;
        }
        Some(n.value)
    }

    /// A flag: `tied`, `tied = false`, `tied true`.
    fn flag(&mut self, cur: &mut Cursor<'_>, key_span: &Span, field: &str) -> Option<bool> {
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
    fn word<T: Copy>(
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
                self.choose(w, span, field, choices, &names)
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

    fn choose<T: Copy>(
        &mut self,
        w: &str,
        span: &Span,
        field: &str,
        choices: &[(&str, T)],
        names: &[&str],
    ) -> Option<T> {
        if let Some((_, v)) = choices.iter().find(|c| c.0 == w) {
            return Some(*v);
        }
        let hint = match did_you_mean(w, names) {
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
    fn call_args<'n>(
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

    fn dup_arg(&mut self, name: &str, key: &str, first: &Span, span: &Span) {
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
    fn arg_single<'n>(&mut self, key: &str, span: &Span, vals: &[&'n Node]) -> Option<&'n Node> {
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
    fn arg_num(
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

    fn arg_real(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<f64> {
        let (num, at) = self.arg_num(field, span, vals, "a number")?;
        self.no_unit(&num, &at, field).then_some(num.value)
    }

    fn arg_uint(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<u64> {
        let (num, at) = self.arg_num(field, span, vals, "an integer")?;
        self.as_uint(&num, &at, field)
    }

    fn arg_bool(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<bool> {
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

    fn arg_word<T: Copy>(
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
            Some(w) => self.choose(w, &n.span, field, choices, &names),
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

    fn arg_list(&mut self, field: &str, span: &Span, vals: &[&Node]) -> Option<Vec<f64>> {
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
    fn call_parts<'n>(
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
    fn norm_value(&mut self, n: &Node, field: &str) -> Option<NormW> {
        let (name, name_span, args) = self.call_parts(
            n,
            field,
            format!("`{field}` expects `rms(...)` or `layer(...)`"),
        )?;
        self.record(field, n.span.clone());
        let kinds = [("rms", NormKind::Rms), ("layer", NormKind::Layer)];
        let kind = self.choose(name, name_span, field, &kinds, &["rms", "layer"])?;
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

    fn model_body(&mut self, nodes: &[Node], end: Span) -> ModelW {
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
    fn next_key(&mut self, cur: &mut Cursor<'_>) -> Option<(String, Span)> {
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
    fn global_block(
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
        match cur.peek() {
            Some(Node {
                kind: NodeKind::Block(inner),
                span: bspan,
            }) => {
                cur.next();
                let mut inner_cur = Cursor::new(inner, bspan.end - 1..bspan.end);
                while let Some((k, kspan)) = self.next_key(&mut inner_cur) {
                    self.global_entry(head, &k, &kspan, &mut inner_cur, m);
                }
            }
            _ if head == "dropout" => {
                self.mark("dropout", span);
                if let Some(p) = self.real(cur, span, "dropout") {
                    m.dropout = [Some(p); 3];
                    for f in ["dropout.embedding", "dropout.attention", "dropout.residual"] {
                        self.record(f, span.clone());
                    }
                }
            }
            _ if head == "logits" => {
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

    fn global_entry(
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
                let choices = [
                    ("llama", Naming::Llama),
                    ("gpt2", Naming::Gpt2),
                    ("gpt_neox", Naming::GptNeox),
                    ("falcon", Naming::Falcon),
                    ("phi", Naming::Phi),
                ];
                m.naming = self.word(cur, span, &field, &choices);
            }
            (_, "qkv") => {
                let choices = [
                    ("separate", QkvLayout::Separate),
                    ("fused", QkvLayout::Fused),
                    ("fused_per_head", QkvLayout::FusedPerHead),
                ];
                m.qkv = self.word(cur, span, &field, &choices);
            }
            _ => m.fused_gate_up = self.flag(cur, span, &field),
        }
    }

    /// A per-layer key, at model level (into the base) or in a rule; false if `k` is not one.
    fn layer_entry(&mut self, k: &str, span: &Span, cur: &mut Cursor<'_>, w: &mut LayerW) -> bool {
        let (head, rest) = match k.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (k, None),
        };
        match head {
            "attention" => match rest {
                Some(sub) => self.attn_entry(sub, span, cur, &mut w.attn),
                None => match cur.peek() {
                    Some(Node {
                        kind: NodeKind::Block(inner),
                        span: bspan,
                    }) => {
                        cur.next();
                        self.record("attention", span.clone());
                        let mut ic = Cursor::new(inner, bspan.end - 1..bspan.end);
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
                    None => match cur.peek() {
                        Some(Node {
                            kind: NodeKind::Block(inner),
                            span: bspan,
                        }) => {
                            cur.next();
                            self.mark("ffn", span);
                            self.record("ffn", span.clone());
                            let mut ic = Cursor::new(inner, bspan.end - 1..bspan.end);
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
                    None => self.missing(cur, span, "norm", "`rms(...)` or `layer(...)`"),
                }
            }
            "placement" => {
                self.mark("block.placement", span);
                let choices = [
                    ("pre", NormPlacement::Pre),
                    ("post", NormPlacement::Post),
                    ("sandwich", NormPlacement::Sandwich),
                ];
                w.placement = self.word(cur, span, "block.placement", &choices);
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

    fn attn_entry(&mut self, key: &str, span: &Span, cur: &mut Cursor<'_>, a: &mut AttnW) {
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
            "softcap" | "window" if cur.peek_ident() == Some("none") => {
                cur.next();
                self.record(&field, span.clone());
                if key == "softcap" {
                    a.softcap = Some(None);
                } else {
                    a.window = Some(None);
                }
            }
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
                    let (named, pos) = self.call_args("qk_norm", args, &n.span, &["scope"], true);
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
                        let choices = [("head", QkNormScope::Head), ("full", QkNormScope::Full)];
                        qk.scope = self.arg_word("attention.qk_norm.scope", sspan, vals, &choices);
                    }
                    a.qk_norm = Some(Some(qk));
                    return;
                }
                if let Some(nw) = self.norm_value(n, "attention.qk_norm.norm") {
                    self.record(&field, span.start..n.span.end);
                    a.qk_norm = Some(Some(QkW {
                        norm: nw,
                        scope: None,
                    }));
                }
            }
        }
    }

    /// `rope(...)`, `rope`, `learned`, `alibi`, `none`.
    fn position_value(&mut self, n: &Node) -> Option<PosW> {
        self.record("position", n.span.clone());
        let (name, name_span, args) = self.call_parts(
            n,
            "position",
            "`position` expects rope(...), learned, alibi or none".into(),
        )?;
        let kinds = [("rope", 0), ("learned", 1), ("alibi", 2), ("none", 3)];
        let kind = self.choose(
            name,
            name_span,
            "position",
            &kinds,
            &["rope", "learned", "alibi", "none"],
        )?;
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
                    let choices = [
                        ("half_split", RopeStyle::HalfSplit),
                        ("interleaved", RopeStyle::Interleaved),
                    ];
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

    fn scaling_value(&mut self, n: &Node) -> Option<ScalingW> {
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
        let kind = self.choose(name, name_span, field, &kinds.map(|k| (k, k)), &kinds)?;
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
        let mut ok = true;
        for (k, (span, vals)) in &named {
            let f = format!("{field}.{k}");
            match k.as_str() {
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
                    "yarn" => RopeScaling::Yarn {
                        factor,
                        original_context,
                        beta_fast: reals.get("beta_fast").copied().unwrap_or(32.0),
                        beta_slow: reals.get("beta_slow").copied().unwrap_or(1.0),
                        attention_factor: reals
                            .get("attention_factor")
                            .copied()
                            .unwrap_or_else(|| 0.1 * factor.ln() + 1.0),
                    },
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

    /// `swiglu(hidden = 11008, bias = false)` or a bare kind.
    fn mlp_value(&mut self, n: &Node, field: &str) -> Option<MlpW> {
        self.record(field, n.span.clone());
        let (name, name_span, args) = self.call_parts(
            n,
            field,
            "expected an MLP kind such as `swiglu(hidden = 11008)`".into(),
        )?;
        let kinds: Vec<(&str, MlpKind)> = MLP_KINDS
            .iter()
            .filter_map(|k| mlp_kind(k).map(|v| (*k, v)))
            .collect();
        let kind = self.choose(name, name_span, field, &kinds, MLP_KINDS)?;
        let gated_gelu = matches!(kind, MlpKind::Geglu | MlpKind::GegluTanh);
        let allowed: &[&str] = if gated_gelu {
            &["hidden", "bias", "act"]
        } else {
            &["hidden", "bias"]
        };
        let (named, _) = self.call_args(name, args, &n.span, allowed, false);
        let mut m = MlpW {
            kind,
            hidden: None,
            bias: None,
        };
        for (k, (span, vals)) in &named {
            let f = format!("{field}.{k}");
            match k.as_str() {
                "hidden" => m.hidden = self.arg_uint(&f, span, vals),
                "bias" => m.bias = self.arg_bool(&f, span, vals),
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

    fn moe_entry(&mut self, key: &str, span: &Span, cur: &mut Cursor<'_>, m: &mut MoeW) {
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
            "router" => {
                let choices = [
                    ("softmax_topk", RouterOrder::SoftmaxTopk),
                    ("topk_softmax", RouterOrder::TopkSoftmax),
                ];
                m.router = self.word(cur, span, &field, &choices);
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

    /// `none`, `full`, `auto`, `save(a, b)`, `recompute(a, b)`.
    fn policy(&mut self, n: &Node) -> Option<LayerCheckpoint> {
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

    fn checkpoint(&mut self, cur: &mut Cursor<'_>, span: &Span, m: &mut ModelW) {
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

    fn budget(&mut self, cur: &mut Cursor<'_>, span: &Span) -> Option<Option<Budget>> {
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

    /// `layers[SEL] { ... }` at model level.
    fn rule(&mut self, cur: &mut Cursor<'_>, key_span: &Span, m: &mut ModelW) {
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
        match cur.peek() {
            Some(Node {
                kind: NodeKind::Block(inner),
                span: bspan,
            }) => {
                cur.next();
                let mut ic = Cursor::new(inner, bspan.end - 1..bspan.end);
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
        self.seen = saved_seen;
        self.rule = saved_rule;
        m.rules.push(Rule {
            items: sel.unwrap_or_default(),
            span: key_span.start..lspan.end,
            delta,
        });
    }

    fn selector(&mut self, items: &[Node], span: &Span) -> Option<Vec<SelItem>> {
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
pub(crate) fn select(items: &[SelItem], n: u64) -> Result<Vec<u64>, u64> {
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
    if !r.diags.is_empty() {
        return Err(LowerError::Diagnostics(r.diags));
    }
    let (Some(vocab), Some(d_model), Some(n_layers), Some(context)) =
        (vocab, d_model, n_layers, context)
    else {
        return Err(LowerError::Diagnostics(r.diags));
    };
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

fn resolve_layer(i: u64, w: &LayerW, d_model: u64, context: u64, issues: &mut Issues) -> Layer {
    let a = &w.attn;
    let heads = match a.heads {
        Some(h) => h,
        None => {
            issues.push(
                "attention.heads",
                Some(i),
                "missing `attention.heads`".into(),
                Some("add `attention { heads N }`".into()),
            );
            1
        }
    };
    let kv_heads = a.kv_heads.unwrap_or(heads);
    let head_dim = match a.head_dim {
        Some(hd) => hd,
        None if heads == 0 => 0,
        None if !d_model.is_multiple_of(heads) => {
            issues.push(
                "attention.heads",
                Some(i),
                format!("d_model ({d_model}) is not divisible by attention.heads ({heads})"),
                Some(
                    "set `attention.head_dim` explicitly, or choose heads that divide d_model"
                        .into(),
                ),
            );
            1
        }
        None => d_model / heads,
    };
    let attention = Attention {
        heads,
        kv_heads,
        head_dim,
        qkv_bias: a.qkv_bias.unwrap_or(false),
        out_bias: a.out_bias.unwrap_or(false),
        qk_norm: a.qk_norm.clone().flatten().map(|q| QkNorm {
            norm: q.norm.resolve(),
            scope: q.scope.unwrap_or(QkNormScope::Head),
        }),
        softcap: a.softcap.flatten(),
        scale: a.scale.unwrap_or_else(|| (head_dim as f64).sqrt().recip()),
        window: a.window.flatten(),
    };
    let position = match w.pos.clone().unwrap_or(PosW::Rope(RopeW::default())) {
        PosW::None => Position::None,
        PosW::Learned => Position::Learned,
        PosW::Alibi => Position::Alibi,
        PosW::Rope(r) => {
            let fraction = r.fraction.unwrap_or(1.0);
            let rotary_dims = match r.rotary_dims {
                Some(d) => d,
                None => {
                    let x = head_dim as f64 * fraction;
                    if fraction > 0.0 && fraction <= 1.0 && x.fract() != 0.0 {
                        issues.push(
                            "position.fraction",
                            Some(i),
                            format!("head_dim ({head_dim}) × fraction ({fraction}) = {x} is not a whole number of dimensions"),
                            Some("choose a fraction that gives an even integer, or set `rotary_dims`".into()),
                        );
                    }
                    if fraction > 0.0 && fraction <= 1.0 {
                        x as u64
                    } else {
                        head_dim
                    }
                }
            };
            let scaling = match r.scaling {
                None => RopeScaling::None,
                Some(s) => {
                    let mut scaling = s.scaling;
                    if s.longrope_default_attention
                        && let RopeScaling::Longrope {
                            original_context,
                            attention_factor,
                            ..
                        } = &mut scaling
                    {
                        let ratio = context as f64 / *original_context as f64;
                        *attention_factor = if ratio <= 1.0 || *original_context <= 1 {
                            1.0
                        } else {
                            (1.0 + ratio.ln() / (*original_context as f64).ln()).sqrt()
                        };
                    }
                    scaling
                }
            };
            Position::Rope(Rope {
                theta: r.theta.unwrap_or(10_000.0),
                fraction,
                rotary_dims,
                style: r.style.unwrap_or(RopeStyle::HalfSplit),
                scaling,
            })
        }
    };
    let block = Block {
        norm: w.norm.clone().unwrap_or_default().resolve(),
        placement: w.placement.unwrap_or(NormPlacement::Pre),
        parallel_residual: w.parallel_residual.unwrap_or(false),
        shared_norm: w.shared_norm.unwrap_or(false),
    };
    let default_hidden = d_model.saturating_mul(4);
    let mlp = |m: &MlpW| Mlp {
        activation: m.kind,
        hidden: m.hidden.unwrap_or(default_hidden),
        bias: m.bias.unwrap_or(false),
    };
    let ffn = match &w.ffn {
        None => Ffn::Mlp(Mlp {
            activation: MlpKind::Gelu,
            hidden: default_hidden,
            bias: false,
        }),
        Some(FfnW::Mlp(m)) => Ffn::Mlp(mlp(m)),
        Some(FfnW::Moe(m)) => {
            let mut need = |what: &str, present: bool| {
                if !present {
                    issues.push(
                        &format!("ffn.{what}"),
                        Some(i),
                        format!("missing `moe.{what}`"),
                        Some(format!("add `{what}` to the `moe {{ ... }}` block")),
                    );
                }
            };
            need("experts", m.experts.is_some());
            need("top_k", m.top_k.is_some());
            need("expert", m.expert.is_some());
            let expert = m.expert.as_ref().map(mlp).unwrap_or(Mlp {
                activation: MlpKind::Swiglu,
                hidden: 1,
                bias: false,
            });
            Ffn::Moe(Moe {
                experts: m.experts.unwrap_or(1),
                top_k: m.top_k.unwrap_or(1),
                expert,
                router: m.router.unwrap_or(RouterOrder::SoftmaxTopk),
                renormalize: m.renormalize.unwrap_or(false),
                shared: m.shared.clone().flatten().map(|s| SharedExperts {
                    count: s.count.unwrap_or(1),
                    hidden: s.hidden.unwrap_or(expert.hidden),
                    gate: s.gate.unwrap_or(false),
                }),
                aux_loss: m.aux_loss.unwrap_or(0.0),
            })
        }
    };
    Layer {
        index: i,
        attention,
        position,
        block,
        ffn,
        checkpoint: w.ckpt.clone().unwrap_or(LayerCheckpoint::Auto),
    }
}
