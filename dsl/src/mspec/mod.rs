//! The `.mspec` front end: a small declarative language for transformer architectures.
//!
//! ```text
//! model llama_3_2_1b {
//!     vocab 128256   d_model 2048   layers 16   context 131072
//!     embedding { tied }
//!     norm rms(eps = 1e-5)
//!     attention { heads 32  kv_heads 8 }
//!     position rope(theta = 500000, scaling = llama3(factor = 32, original_context = 8192))
//!     mlp swiglu(hidden = 8192)
//!     layers[0..4] { attention.window 4096 }   # half-open: layers 0, 1, 2, 3
//!     checkpoint { default auto  budget 0.5 }
//! }
//! ```
//! # Language reference
//!
//! A file holds one `model NAME { ... }`. Inside, settings are `key value` pairs separated by
//! whitespace (commas and `=` are optional: `heads 8`, `heads = 8`, `tied, scale = 2`). Comments
//! start with `#` or `//`. Numbers: `4096`, `1_000_000`, `1e-6`, `0.25`, `-1`; byte sizes take a
//! unit (`24GiB`, `512MiB`, `8GB`, `100B`). Flags are written alone (`tied`) or with a value
//! (`tied = false`). A dotted key sets one field of a block: `attention.window 4096`.
//!
//! | key | value |
//! |---|---|
//! | `vocab` | `N`, or `N pad M` to pad the embedding rows to a multiple of M |
//! | `d_model`, `layers`, `context` | integers |
//! | `dropout` | `p` (all three), or `{ embedding p  attention p  residual p }` |
//! | `embedding` | `{ tied  scale = sqrt(d_model) \| number  learned_positions }` |
//! | `norm` | `rms(eps, offset, weight, bias)` or `layer(...)`; `offset = 1` is Gemma's `1 + w` |
//! | `placement` | `pre`, `post` or `sandwich` |
//! | `parallel_residual`, `shared_norm` | flags (GPT-NeoX / Phi-2, Falcon) |
//! | `final_norm` | a norm, or `none` |
//! | `attention` | `{ heads  kv_heads  head_dim  qkv_bias  out_bias  bias  qk_norm  softcap  scale  window }` |
//! | `attention.qk_norm` | `none`, a norm (per head), or `qk_norm(rms(...), scope = head \| full)` |
//! | `position` | `rope(theta, fraction, rotary_dims, style = half_split \| interleaved, scaling)`, `learned`, `alibi`, `none` |
//! | rope `scaling` | `linear(factor)`, `dynamic_ntk(factor, original_context)`, `yarn(factor, original_context, beta_fast, beta_slow, attention_factor)`, `llama3(factor, low_freq_factor, high_freq_factor, original_context)`, `longrope(short = [..], long = [..], original_context, attention_factor)` |
//! | `mlp` | `gelu`, `gelu_tanh`, `relu_squared`, `swiglu`, `geglu`, `geglu_tanh` with `(hidden = N, bias)`; `geglu(act = gelu_tanh)` is `geglu_tanh` |
//! | `moe` | `{ experts  top_k  expert swiglu(hidden = N)  router softmax_topk \| topk_softmax  renormalize  shared(count, hidden, gate)  aux_loss }` |
//! | `logits` | `{ softcap X  bias }` (or inline: `logits softcap 30`) |
//! | `weights` | `{ naming llama \| gpt2 \| gpt_neox \| falcon \| phi  qkv separate \| fused \| fused_per_head  fused_gate_up }` |
//! | `checkpoint` | a policy, or `{ default POLICY  layers[SEL] POLICY  budget 0.5 \| 24GiB \| none }`; policies: `none`, `full`, `auto`, `save(names)`, `recompute(names)` over [`crate::tensors::layer_tensors`]; read by the one parser of `--checkpoint` too (units: [`crate::plan::BYTE_UNITS`]) |
//! | `layers[SEL] { ... }` | per-layer overrides of `attention`, `position`, `norm`, `placement`, `parallel_residual`, `shared_norm`, `mlp`, `moe`, `checkpoint` |
//!
//! Selectors `SEL`: `3`, `0..8` (**half-open**: layers 0 to 7), `1, 5, 9`, `0..4, 10`, `even`,
//! `odd`, `every 4`, `every 4 offset 1`, `all`. Rules apply in file order and the last matching
//! rule wins; a rule that selects no layer, or a layer index past the end, is an error. A rule
//! overrides only what it writes: `layers[odd] { position rope(theta = 1e6) }` keeps the model
//! level fraction, style and scaling. Every default is listed in [`lower`].
//!
//! Pipeline: `grammar.pest` (pest) → [`ast`] (atoms with spans) → [`lower`] (schema, defaults,
//! per-layer rules, derived sizes) → [`crate::check::check`] → diagnostics mapped back to spans.
//! The default of every setting is listed in [`lower`]. [`print()`] writes any IR back as `.mspec`.
//!
//! ```
//! let spec = modelspec_dsl::mspec::parse(
//!     "model tiny { vocab 256 d_model 64 layers 2 context 128 attention { heads 4 } }",
//!     "tiny.mspec",
//! )
//! .expect("valid");
//! assert_eq!(spec.layers[1].attention.head_dim, 16);
//! let text = modelspec_dsl::mspec::print(&spec);
//! assert_eq!(modelspec_dsl::mspec::parse(&text, "x.mspec"), Ok(spec));
//! ```

pub mod ast;
pub mod lower;
pub mod parse;
mod print;

pub use print::{format_selector, print};

use crate::diag::{Diagnostic, Issue};
use crate::ir::{Ffn, ModelSpec};
use lower::{LowerError, Provenance};

/// Parses, lowers and checks `.mspec` source text. `file` names the source in diagnostics.
///
/// Returns the resolved IR, or every diagnostic found (syntax errors stop at the first one;
/// schema, lowering and check errors are all collected). Never panics.
pub fn parse(src: &str, file: &str) -> Result<ModelSpec, Vec<Diagnostic>> {
    let ast = parse::parse_file(src, file)?;
    let (spec, prov) = match lower::lower(&ast, src, file) {
        Ok(ok) => ok,
        Err(LowerError::Diagnostics(d)) => return Err(d),
        Err(LowerError::Issues(issues, prov)) => {
            return Err(diagnostics(&issues, None, &prov, file));
        }
    };
    let issues = crate::check::check(&spec);
    if issues.is_empty() {
        Ok(spec)
    } else {
        Err(diagnostics(&issues, Some(&spec), &prov, file))
    }
}

/// Non-fatal findings in `.mspec` source text that parses: today, a `layers[...]` setting that
/// later rules override on every layer it selects (the last matching rule wins, so it never takes
/// effect). Empty for text that does not parse (its errors come from [`parse()`]).
///
/// ```
/// let src = "model m { vocab 8 d_model 8 layers 2 context 8 attention { heads 2 }
///     layers[1] { attention.window 64 }
///     layers[1] { attention.window 32 } }";
/// let warnings = modelspec_dsl::mspec::warnings(src, "m.mspec");
/// assert_eq!(warnings.len(), 1);
/// assert_eq!(warnings[0].field, "attention.window");
/// ```
pub fn warnings(src: &str, file: &str) -> Vec<Diagnostic> {
    let Ok(ast) = parse::parse_file(src, file) else {
        return Vec::new();
    };
    match lower::lower(&ast, src, file) {
        Ok((_, prov)) => prov.warnings().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Maps issues to diagnostics, dropping echoes: a defaulted final norm repeats the block norm's
/// problem, and one statement (`dropout 1`) can set several IR fields.
fn diagnostics(
    issues: &[Issue],
    spec: Option<&ModelSpec>,
    prov: &Provenance,
    file: &str,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let mut more = 0;
    for issue in issues {
        if out.len() >= crate::diag::MAX_DIAGNOSTICS {
            more += 1;
            continue;
        }
        if let Some(rest) = issue.field.strip_prefix("final_norm")
            && !prov.wrote("final_norm")
            && issues
                .iter()
                .any(|j| j.field == format!("block.norm{rest}"))
        {
            continue;
        }
        let d = to_diagnostic(issue, spec, prov, file);
        if out
            .iter()
            .any(|o| o.span == d.span && o.message == d.message)
        {
            continue;
        }
        out.push(d);
    }
    if more > 0 {
        out.push(crate::diag::more(file, more));
    }
    out
}

/// Places an IR issue at the text where the user wrote the field.
fn to_diagnostic(
    issue: &Issue,
    spec: Option<&ModelSpec>,
    prov: &Provenance,
    file: &str,
) -> Diagnostic {
    let layer = issue.layers.first().copied();
    let span = prov.span_of(&issue.field, layer);
    let user = user_field(&issue.field, spec, layer);
    let message = issue
        .message
        .replace(&format!("`{}`", issue.field), &format!("`{user}`"));
    let mut field = user;
    let n_layers = prov.n_layers();
    let mut ls = issue.layers.clone();
    ls.sort_unstable();
    ls.dedup();
    if let Some(&last) = ls.last()
        && ls.len() as u64 != n_layers
    {
        field = format!(
            "layers[{}].{field}",
            format_selector(&ls, n_layers.max(last + 1))
        );
    }
    Diagnostic {
        file: file.to_string(),
        span,
        field,
        message,
        hint: issue.hint.clone(),
    }
}

/// The IR path as written in `.mspec` (`block.norm.eps` → `norm.eps`, `ffn.top_k` → `moe.top_k`).
fn user_field(path: &str, spec: Option<&ModelSpec>, layer: Option<u64>) -> String {
    if path == "n_layers" {
        return "layers".into();
    }
    if let Some(rest) = path.strip_prefix("block.") {
        return rest.to_string();
    }
    // The MoE options written under other names: the clamp inside `expert swiglu(...)`, the
    // groups as `groups` / `top_groups`.
    if let Some(rest) = path.strip_prefix("ffn.clamp.") {
        return format!("moe.expert.{rest}");
    }
    match path {
        "ffn.clamp" => return "moe.expert".into(),
        "ffn.groups" | "ffn.groups.count" => return "moe.groups".into(),
        "ffn.groups.top" => return "moe.top_groups".into(),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("ffn.") {
        let moe = spec
            .zip(layer)
            .and_then(|(s, l)| s.layers.get(l as usize))
            .is_some_and(|l| matches!(l.ffn, Ffn::Moe(_)));
        return format!(
            "{}.{rest}",
            if moe || spec.is_none() { "moe" } else { "mlp" }
        );
    }
    path.to_string()
}
