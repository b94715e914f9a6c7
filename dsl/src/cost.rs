//! The cost model: parameters, active parameters, forward FLOPs per token and weight bytes.
//!
//! Parameter counts are sums over [`crate::params::parameters`], the one table of learned tensors,
//! so they match what the runtime allocates and what a checkpoint holds. FLOPs count a multiply-add
//! as 2: every matmul weight the token passes through (lm_head included, the embedding lookup
//! excluded), plus attention's scores and weighted values over the keys a query attends to.
//!
//! ```
//! # use modelspec_dsl::cost;
//! # fn demo(spec: &modelspec_dsl::ModelSpec) {
//! let summary = cost::summarize(spec);
//! assert_eq!(summary.params_total, cost::params_total(spec));
//! # }
//! ```

use serde::Serialize;

use crate::diag::Issue;
use crate::ir::{Attention, Ffn, Layer, Mlp, ModelSpec, Position, RopeScaling};
use crate::params::{self, Param};

/// Most layers a spec may have (keeps the per-layer table and the cost sums bounded).
pub const MAX_LAYERS: u64 = 100_000;
/// Longest context accepted (2^40 positions).
pub const MAX_CONTEXT: u64 = 1 << 40;
/// Most routed experts per layer.
pub const MAX_EXPERTS: u64 = 65_536;
/// Most parameter tensors in a spec (layers × experts × tensors per expert).
pub const MAX_TENSORS: u64 = 50_000_000;

/// Cost of one layer, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerCost {
    /// Layer index.
    pub index: u64,
    /// One-line summary of the attention (heads, kv heads, head_dim, window, position).
    pub attention: String,
    /// One-line summary of the feed-forward part.
    pub ffn: String,
    /// Learned parameters of the layer.
    pub params: u64,
    /// Parameters a token passes through (MoE: router, top-k experts, shared experts).
    pub params_active: u64,
    /// Forward FLOPs per token at the context length.
    pub flops_per_token: u64,
    /// Bytes of the layer's weights stored as f32.
    pub weight_bytes_f32: u64,
    /// Bytes of the layer's weights stored as bf16.
    pub weight_bytes_bf16: u64,
}

/// The whole model's costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// All learned parameters (tied matrices once).
    pub params_total: u64,
    /// Parameters a token passes through.
    pub params_active: u64,
    /// Forward FLOPs per token at the context length.
    pub flops_per_token: u64,
    /// Parameters outside the layers (embeddings, final norm, head).
    pub params_outside_layers: u64,
    /// One row per layer.
    pub layers: Vec<LayerCost>,
}

/// Exactly the sum of [`params::parameters`]' counted elements (buffers excluded, as HF's
/// `num_parameters()` excludes them).
pub fn params_total(spec: &ModelSpec) -> u64 {
    params::parameters(spec).iter().map(Param::counted).sum()
}

/// Parameters a token passes through: everything except the experts it is not routed to.
pub fn params_active(spec: &ModelSpec) -> u64 {
    let table = params::parameters(spec);
    table.iter().map(Param::counted).sum::<u64>() - inactive_expert_params(spec, &table)
}

/// Forward FLOPs per token when the sequence is `spec.context` long.
pub fn flops_per_token(spec: &ModelSpec) -> u64 {
    summarize(spec).flops_per_token
}

/// Elements of the routed experts a token skips, over all MoE layers.
fn inactive_expert_params(spec: &ModelSpec, table: &[Param]) -> u64 {
    spec.layers
        .iter()
        .map(|layer| match &layer.ffn {
            Ffn::Moe(moe) => {
                let per_expert = expert_numel(table, layer.index);
                moe.experts.saturating_sub(moe.top_k) * per_expert
            }
            Ffn::Mlp(_) => 0,
        })
        .sum()
}

/// Elements of expert 0 of layer `index` (all experts have the same shape).
fn expert_numel(table: &[Param], index: u64) -> u64 {
    table
        .iter()
        .filter(|p| p.layer == Some(index) && p.expert == Some(0))
        .map(Param::numel)
        .sum()
}

/// Average number of keys a query attends to over positions 1..=t with an optional window.
/// Returned as the total over all positions (divide by `t` for the mean).
fn attended_keys_total(t: u64, window: Option<u64>) -> u128 {
    let t = t as u128;
    match window {
        Some(w) if (w as u128) < t => {
            let w = w as u128;
            w * (w + 1) / 2 + (t - w) * w
        }
        _ => t * (t + 1) / 2,
    }
}

/// Matmul elements of the parameters in `table` a token passes through (weights only, no biases
/// or norms), excluding embeddings.
fn active_matmul(table: &[&Param], moe_top_k: Option<u64>) -> u64 {
    table
        .iter()
        .filter(|p| p.shape.len() == 2 && p.expert.is_none_or(|e| moe_top_k.is_some_and(|k| e < k)))
        .map(|p| p.numel())
        .sum()
}

/// Costs of every layer and of the whole model.
pub fn summarize(spec: &ModelSpec) -> Summary {
    let table = params::parameters(spec);
    let t = spec.context.max(1);
    let mut layers = Vec::with_capacity(spec.layers.len());
    let mut rows: Vec<Vec<&Param>> = vec![Vec::new(); spec.layers.len()];
    let mut outside = Vec::new();
    for p in &table {
        match p.layer.and_then(|i| rows.get_mut(i as usize)) {
            Some(row) => row.push(p),
            None => outside.push(p),
        }
    }
    let mut total_flops: u128 = 0;
    for (layer, row) in spec.layers.iter().zip(&rows) {
        let params: u64 = row.iter().map(|p| p.counted()).sum();
        let top_k = match &layer.ffn {
            Ffn::Moe(moe) => Some(moe.top_k),
            Ffn::Mlp(_) => None,
        };
        let inactive = match &layer.ffn {
            Ffn::Moe(moe) => {
                let per_expert: u64 = row
                    .iter()
                    .filter(|p| p.expert == Some(0))
                    .map(|p| p.numel())
                    .sum();
                moe.experts.saturating_sub(moe.top_k) * per_expert
            }
            Ffn::Mlp(_) => 0,
        };
        let a = &layer.attention;
        let keys = attended_keys_total(t, a.window);
        // Scores over the query/key width, the weighted sum over the value width.
        let attn_flops = 2u128
            .saturating_mul(a.heads as u128)
            .saturating_mul((a.head_dim as u128).saturating_add(a.v_head_dim() as u128))
            .saturating_mul(keys)
            / (t as u128);
        let flops = (2 * active_matmul(row, top_k) as u128).saturating_add(attn_flops);
        total_flops = total_flops.saturating_add(flops);
        layers.push(LayerCost {
            index: layer.index,
            attention: attention_summary(layer),
            ffn: ffn_summary(&layer.ffn),
            params,
            params_active: params - inactive,
            flops_per_token: flops.min(u64::MAX as u128) as u64,
            weight_bytes_f32: params * 4,
            weight_bytes_bf16: params * 2,
        });
    }
    // The head: the embedding matrix again when tied.
    let head: u64 = outside
        .iter()
        .filter(|p| p.name == "lm_head.weight" || (spec.embedding.tied && p.name == "embed.weight"))
        .map(|p| p.numel())
        .sum();
    total_flops = total_flops.saturating_add(2 * head as u128);
    let params_outside_layers: u64 = outside.iter().map(|p| p.numel()).sum();
    let params_total = params_outside_layers + layers.iter().map(|l| l.params).sum::<u64>();
    let params_active = params_outside_layers + layers.iter().map(|l| l.params_active).sum::<u64>();
    Summary {
        params_total,
        params_active,
        flops_per_token: total_flops.min(u64::MAX as u128) as u64,
        params_outside_layers,
        layers,
    }
}

/// Elements a decoder caches per token, summed over the layers: `(cached, per_head)`. `cached`
/// is what the cache holds (each kv head's key and value, or latent attention's normalised latent
/// and rotary key); `per_head` is what keys and values of every query head would take (multi-head
/// attention without grouping or a latent), the comparison GQA and MLA are made against.
pub fn kv_cache_per_token(spec: &ModelSpec) -> (u64, u64) {
    spec.layers.iter().fold((0u64, 0u64), |(cached, full), l| {
        let a = &l.attention;
        let per_head = a
            .heads
            .saturating_mul(a.head_dim.saturating_add(a.v_head_dim()));
        (
            cached.saturating_add(a.cache_width()),
            full.saturating_add(per_head),
        )
    })
}

/// "gqa 32q/8kv hd128 · window 4096 · rope θ=500000 llama3".
pub fn attention_summary(layer: &Layer) -> String {
    let a: &Attention = &layer.attention;
    let kind = if a.kv_heads == a.heads {
        "mha"
    } else if a.kv_heads == 1 {
        "mqa"
    } else {
        "gqa"
    };
    let mut s = match &a.mla {
        Some(m) => format!(
            "mla {}h {}kv-rank{} qk{}+{} v{}",
            a.heads,
            m.kv_rank,
            m.q_rank.map_or(String::new(), |r| format!(" q-rank{r}")),
            m.nope_dim,
            m.rope_dim,
            m.v_dim
        ),
        None => format!("{kind} {}q/{}kv hd{}", a.heads, a.kv_heads, a.head_dim),
    };
    if let Some(w) = a.window {
        s.push_str(&format!(" window {w}"));
    }
    if a.qk_norm.is_some() {
        s.push_str(" qk-norm");
    }
    if let Some(c) = a.softcap {
        s.push_str(&format!(" softcap {c}"));
    }
    match &layer.position {
        Position::None => s.push_str(" nope"),
        Position::Learned => s.push_str(" learned-pos"),
        Position::Alibi => s.push_str(" alibi"),
        Position::Rope(r) => {
            s.push_str(&format!(" rope θ={}", r.theta));
            if r.fraction < 1.0 {
                s.push_str(&format!(" ({} dims)", r.rotary_dims));
            }
            let scaling = match &r.scaling {
                RopeScaling::None => "",
                RopeScaling::Linear { .. } => " linear",
                RopeScaling::DynamicNtk { .. } => " dynamic",
                RopeScaling::Yarn { .. } => " yarn",
                RopeScaling::Llama3 { .. } => " llama3",
                RopeScaling::Longrope { .. } => " longrope",
            };
            s.push_str(scaling);
        }
    }
    s
}

fn mlp_summary(mlp: &Mlp) -> String {
    format!(
        "{} {}{}",
        mlp.activation.name(),
        mlp.hidden,
        if mlp.bias { " +bias" } else { "" }
    )
}

/// "swiglu 14336" or "moe 8×swiglu 14336 top2 (+1 shared 5632)".
pub fn ffn_summary(ffn: &Ffn) -> String {
    match ffn {
        Ffn::Mlp(mlp) => mlp_summary(mlp),
        Ffn::Moe(moe) => {
            let mut s = format!(
                "moe {}×{} top{}",
                moe.experts,
                mlp_summary(&moe.expert),
                moe.top_k
            );
            if let Some(shared) = &moe.shared {
                s.push_str(&format!(" +{} shared {}", shared.count, shared.hidden));
            }
            s
        }
    }
}

/// Sizes too large to count without overflow or to tabulate in memory. Front ends run this
/// before anything builds the parameter table.
pub fn limit_issues(spec: &ModelSpec) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut push = |field: &str, layers: Vec<u64>, message: String| {
        issues.push(Issue {
            field: field.into(),
            layers,
            message,
            hint: Some("use realistic sizes".into()),
        });
    };
    if spec.layers.len() as u64 > MAX_LAYERS {
        push(
            "n_layers",
            vec![],
            format!(
                "{} layers is more than the {MAX_LAYERS} supported",
                spec.layers.len()
            ),
        );
        return issues;
    }
    let mut tensors: u64 = 0;
    // Saturating u128 arithmetic: any product of two u64 sizes fits, sums saturate.
    let mul = |a: u128, b: u128| a.saturating_mul(b);
    let d = spec.d_model as u128 + 1;
    let rows = spec.vocab_padded.max(spec.vocab) as u128;
    if spec.context > MAX_CONTEXT {
        push(
            "context",
            vec![],
            format!(
                "context {} is more than the {MAX_CONTEXT} supported",
                spec.context
            ),
        );
        return issues;
    }
    let positions = if spec.embedding.learned_positions {
        spec.context as u128
    } else {
        0
    };
    let mut total: u128 = mul(2, mul(rows, d)).saturating_add(mul(positions, d));
    for layer in &spec.layers {
        let a = &layer.attention;
        let q = mul(a.heads as u128, a.head_dim as u128);
        let kv = mul(a.kv_heads as u128, a.head_dim as u128);
        let width = q.saturating_add(kv).saturating_add(1);
        total = total
            .saturating_add(mul(mul(2, width), d))
            .saturating_add(mul(8, d));
        if let Some(m) = &a.mla {
            // The latents: q_a and q_b, kv_a, kv_b, and the output from heads · v_dim.
            let q_rank = m.q_rank.unwrap_or(0) as u128;
            let kv_a = (m.kv_rank as u128).saturating_add(m.rope_dim as u128);
            let kv_b = mul(
                a.heads as u128,
                (m.nope_dim as u128).saturating_add(m.v_dim as u128),
            );
            total = total
                .saturating_add(mul(q_rank, d.saturating_add(q)))
                .saturating_add(mul(kv_a, d))
                .saturating_add(mul(kv_b, m.kv_rank as u128))
                .saturating_add(mul(mul(a.heads as u128, m.v_dim as u128), d));
        }
        let mlp_elems = |hidden: u128| mul(3, mul(hidden.saturating_add(1), d));
        match &layer.ffn {
            Ffn::Mlp(m) => {
                total = total.saturating_add(mlp_elems(m.hidden as u128));
                tensors += 8;
            }
            Ffn::Moe(moe) => {
                if moe.experts > MAX_EXPERTS {
                    push(
                        "ffn.experts",
                        vec![layer.index],
                        format!(
                            "{} experts is more than the {MAX_EXPERTS} supported",
                            moe.experts
                        ),
                    );
                    return issues;
                }
                total = total.saturating_add(mul(
                    moe.experts as u128 + 1,
                    mlp_elems(moe.expert.hidden as u128),
                ));
                if let Some(shared) = &moe.shared {
                    let width = mul(shared.count as u128, shared.hidden as u128);
                    total = total.saturating_add(mlp_elems(width));
                }
                tensors += 8 + 6 * moe.experts;
            }
        }
        tensors += 24;
        if total > u64::MAX as u128 / 8 {
            break;
        }
    }
    if total > u64::MAX as u128 / 8 {
        push(
            "d_model",
            vec![],
            "the sizes give more parameters than can be counted".into(),
        );
        return issues;
    }
    if tensors > MAX_TENSORS {
        push(
            "n_layers",
            vec![],
            format!(
                "the spec has {tensors} parameter tensors, more than the {MAX_TENSORS} supported"
            ),
        );
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attended_keys() {
        // Causal, no window: 1 + 2 + 3 + 4.
        assert_eq!(attended_keys_total(4, None), 10);
        // Window 2: 1 + 2 + 2 + 2.
        assert_eq!(attended_keys_total(4, Some(2)), 7);
        // A window wider than the sequence changes nothing.
        assert_eq!(attended_keys_total(4, Some(100)), 10);
    }
}
