//! `modelspec inspect FILE [--json]`: parameter counts, FLOPs and a per-layer table.

use std::path::PathBuf;

use modelspec_dsl::cost::{self, LayerCost};
use modelspec_dsl::plan::human_bytes as bytes;
use serde_json::json;

use super::{load_or_report, print_stdout};

/// Arguments of `modelspec inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A spec file: .mspec, .yaml/.yml, or HF config.json.
    pub file: PathBuf,
    /// Print JSON (keys: name, rust_type, params_total, params_active, flops_per_token,
    /// kv_cache_bytes_per_token_bf16, layers...).
    #[arg(long)]
    pub json: bool,
}

/// Prints the summary.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let (spec, _) = load_or_report(&args.file)?;
    let summary = cost::summarize(&spec);
    // bf16 keys and values (or latents) per token, and what every query head's would take.
    let (cached, per_head) = cost::kv_cache_per_token(&spec);
    let (kv_bytes, kv_bytes_per_head) = (cached.saturating_mul(2), per_head.saturating_mul(2));
    if args.json {
        let value = json!({
            "name": spec.name,
            "rust_type": spec.rust_type(),
            "params_total": summary.params_total,
            "params_active": summary.params_active,
            "flops_per_token": summary.flops_per_token,
            "context": spec.context,
            "vocab": spec.vocab,
            "d_model": spec.d_model,
            "n_layers": spec.n_layers,
            "params_outside_layers": summary.params_outside_layers,
            "weight_bytes_f32": summary.params_total.saturating_mul(4),
            "weight_bytes_bf16": summary.params_total.saturating_mul(2),
            "kv_cache_bytes_per_token_bf16": kv_bytes,
            "kv_cache_bytes_per_token_per_head_bf16": kv_bytes_per_head,
            "layers": summary.layers,
        });
        return print_stdout(&(serde_json::to_string_pretty(&value)? + "\n"));
    }
    let mut out = String::new();
    out.push_str(&format!("{} (struct {})\n", spec.name, spec.rust_type()));
    out.push_str(&format!(
        "  vocab {}  d_model {}  layers {}  context {}\n",
        spec.vocab, spec.d_model, spec.n_layers, spec.context
    ));
    out.push_str(&format!(
        "  params total    {:>20}\n",
        group(summary.params_total)
    ));
    out.push_str(&format!(
        "  params active   {:>20}\n",
        group(summary.params_active)
    ));
    out.push_str(&format!(
        "  FLOPs/token     {:>20}  (forward, at context {})\n",
        group(summary.flops_per_token),
        spec.context
    ));
    out.push_str(&format!(
        "  weights         {:>20}  bf16, {} f32\n",
        bytes(summary.params_total.saturating_mul(2)),
        bytes(summary.params_total.saturating_mul(4))
    ));
    out.push_str(&format!(
        "  KV cache        {:>20}  bf16 a token ({} for every query head's keys and values)\n",
        bytes(kv_bytes),
        bytes(kv_bytes_per_head)
    ));
    out.push_str(&format!(
        "  outside layers  {:>20}  (embeddings, final norm, head)\n\n",
        group(summary.params_outside_layers)
    ));
    out.push_str(&table(&summary.layers));
    print_stdout(&out)
}

/// The per-layer table; runs of identical rows are collapsed into one `a-b` row.
fn table(rows: &[LayerCost]) -> String {
    let mut groups: Vec<[String; 6]> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let r = &rows[i];
        let mut j = i + 1;
        while j < rows.len() && same(&rows[j], r) {
            j += 1;
        }
        let label = if j - i == 1 {
            format!("{}", r.index)
        } else {
            format!("{}-{}", r.index, rows[j - 1].index)
        };
        groups.push([
            label,
            r.attention.clone(),
            r.ffn.clone(),
            group(r.params),
            group(r.params_active),
            bytes(r.weight_bytes_bf16),
        ]);
        i = j;
    }
    let header = ["layers", "attention", "ffn", "params", "active", "bf16"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&groups) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&groups) {
        let mut line = String::new();
        for (k, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if k >= 3 {
                line.push_str(&" ".repeat(pad + 2));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn same(a: &LayerCost, b: &LayerCost) -> bool {
    a.attention == b.attention
        && a.ffn == b.ffn
        && a.params == b.params
        && a.params_active == b.params_active
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
