//! Per-tensor cost model of a layer's named activations.
//!
//! For every named activation of a layer (see [`crate::tensors::layer_tensors`]) at batch `B` and
//! sequence `T` (`N = B·T` tokens), this gives:
//! - `bytes`: the memory it occupies when saved for backward, at the activation dtype (softmax
//!   statistics and router outputs are f32 whatever the dtype);
//! - `flops`: the forward FLOPs of the op that produces it, which is what recomputing it costs;
//! - `fusible`: whether the op is a cheap pointwise op that fuses into a kernel which runs anyway
//!   (norms, RoPE, activations, residual adds): what the `auto` policy recomputes.
//!
//! - `unit`: the unit it is kept in (`LayerProgram::unit_of`): tensors that share one buffer in
//!   the executors (the fused `[q; k; v]` after qk-norm and RoPE, a dense `[gate; up]`, a
//!   mixture-of-experts block's routed state) are saved or recomputed together, so the policies
//!   and the budget decide per unit.
//!
//! A norm's f32 statistics (mean and reciprocal standard deviation per row, 8 bytes a row) are
//! kept, and counted, with one tensor: the norm's output for `attn_norm` and `mlp_norm`, the
//! norm's input for the qk-norms (`q`, `k`) and the post-norms (`attn_out`, `mlp_out`), whose
//! outputs are needed only in some layers or never.
//!
//! - `needed`: whether any backward op reads it. A tensor consumed only by ops whose backward
//!   needs no input (a residual add, RoPE, which is a rotation) is never saved under any policy:
//!   `attn_out` and `mlp_out` under pre-norm (their only consumer is the residual add), the outputs
//!   of post-norms, and `q`/`k` before RoPE when no qk-norm reads them.
//!
//! Recomputation cost is additive: every needed tensor is the input of a matmul, a norm, an
//! activation or attention backward, so an unsaved needed tensor is recomputed exactly once from
//! the nearest saved tensors, at the cost of its own producing op. That makes the budget problem a
//! 0/1 knapsack over the needed (layer, tensor) items.

use crate::ir::{Ffn, Layer, ModelSpec, Position, QkNormScope};
use crate::program::LayerProgram;
use serde::Serialize;

/// Element type of activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// 4 bytes.
    F32,
    /// 2 bytes.
    Bf16,
}

impl std::str::FromStr for Dtype {
    type Err = String;

    /// `f32` or `bf16`, the spelling of every `--dtype` flag.
    fn from_str(s: &str) -> Result<Dtype, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            other => Err(format!("unknown dtype `{other}`: use f32 or bf16")),
        }
    }
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// The cost of one named activation of one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorCost {
    /// The tensor's name (as in checkpoint clauses).
    pub name: &'static str,
    /// Bytes when saved.
    pub bytes: u64,
    /// FLOPs to recompute it from its inputs.
    pub flops: u64,
    /// A cheap pointwise op that fuses into a kernel that runs anyway.
    pub fusible: bool,
    /// Some backward op reads it (else it is never saved nor recomputed).
    pub needed: bool,
    /// The unit it is saved or recomputed with (the name of the unit's first tensor; itself
    /// when alone).
    pub unit: &'static str,
}

/// Average number of keys a query attends to under a causal mask (and sliding window).
pub fn mean_keys(seq: u64, window: Option<u64>) -> f64 {
    let t = seq as f64;
    match window {
        Some(w) if w < seq => {
            // Queries 0..w see i+1 keys, the rest see w.
            let w = w as f64;
            (w * (w + 1.0) / 2.0 + (t - w) * w) / t
        }
        _ => (t + 1.0) / 2.0,
    }
}

/// Costs of every named activation of `layer` at `batch` × `seq`, in forward order: lowers the
/// layer's structure ([`LayerProgram::structure`]), then [`program_costs`] over it. A caller
/// that holds the structure already calls [`program_costs`] and lowers nothing.
pub fn layer_costs(
    spec: &ModelSpec,
    layer: &Layer,
    batch: u64,
    seq: u64,
    dtype: Dtype,
) -> Vec<TensorCost> {
    program_costs(
        spec,
        layer,
        &LayerProgram::structure(layer),
        batch,
        seq,
        dtype,
    )
}

/// [`layer_costs`] over `program`, the structure of `layer` the caller already lowered
/// (`LayerProgram::structure(layer)`; its `costs` are not read): what
/// [`LayerProgram::lower`] calls, so that lowering a layer walks its structure once.
pub fn program_costs(
    spec: &ModelSpec,
    layer: &Layer,
    program: &LayerProgram,
    batch: u64,
    seq: u64,
    dtype: Dtype,
) -> Vec<TensorCost> {
    debug_assert_eq!(
        program.index as u64, layer.index,
        "the program is another layer's"
    );
    // In u128 (no product of the sizes the spec limits allow overflows it); each figure is then
    // saturated to u64::MAX, which `plan` reports as too large to count.
    let n = u128::from(batch) * u128::from(seq);
    let d = u128::from(spec.d_model);
    let a = &layer.attention;
    let (heads, kv_heads) = (u128::from(a.heads), u128::from(a.kv_heads));
    let (qd, kvd) = (
        heads * u128::from(a.head_dim),
        kv_heads * u128::from(a.head_dim),
    );
    let e = u128::from(dtype.size());
    let keys = mean_keys(seq, a.window);
    let rope_dims = match &layer.position {
        Position::Rope(r) => u128::from(r.rotary_dims),
        _ => 0,
    };
    let norm_flops = |width: u128| 5 * n * width;
    let (hidden, experts_per_token, experts) = match &layer.ffn {
        Ffn::Mlp(m) => (u128::from(m.hidden), 1, 1),
        Ffn::Moe(m) => (
            u128::from(m.expert.hidden),
            u128::from(m.top_k),
            u128::from(m.experts),
        ),
    };
    let gated_act_flops = 8 * n * experts_per_token * hidden;
    let post = layer.block.placement.post();
    // Norm statistics (f32 mean and rstd per row) and who keeps them (see the module docs).
    let stats = |rows: u128| rows * 8;
    let qk_rows = |heads: u128| match a.qk_norm.map(|q| q.scope) {
        Some(QkNormScope::Head) => n * heads,
        _ => n,
    };
    // The qk-norms' inputs (q and k, or q_rope and k_rope when the norm follows RoPE).
    let norm_input = |act: crate::program::Act| program.node(act).map(|n| n.inputs[0].name());
    let (q_norm_in, k_norm_in) = (
        norm_input(crate::program::Act::QNormed),
        norm_input(crate::program::Act::KNormed),
    );
    let stats_of = |name: &str| -> u128 {
        match name {
            "attn_norm" | "mlp_norm" | "q_latent_norm" | "kv_latent_norm" => stats(n),
            "attn_out" | "mlp_out" if post => stats(n),
            _ if q_norm_in == Some(name) => stats(qk_rows(heads)),
            _ if k_norm_in == Some(name) => stats(qk_rows(kv_heads)),
            _ => 0,
        }
    };
    // Needed: some node's backward reads it (every op but RoPE, a rotation, and the residual add
    // reads its inputs). So attn_out/mlp_out only under post-norm, never a post-norm's output,
    // q/k only under qk-norm or when attention reads them, and whichever of q_rope/q_normed
    // attention reads.
    let needed = |act: crate::program::Act| {
        program.nodes.iter().any(|n| {
            n.inputs.contains(&act)
                && !matches!(
                    n.op,
                    crate::program::OpKind::Rope
                        | crate::program::OpKind::Residual
                        | crate::program::OpKind::Split
                )
        })
    };
    let mut out = Vec::new();
    for name in program.tensor_names() {
        let pointwise = |bytes: u128, flops: u128| (bytes, flops, true);
        let matmul = |width: u128, flops: u128| (n * width * e, flops, false);
        if let Some(m) = &a.mla {
            // Latent attention's tensors (the q/k/v names mean its own shapes here).
            let (h, qk, v) = (heads, u128::from(a.head_dim), u128::from(m.v_dim));
            let (q_rank, kv_rank, rope) = (
                u128::from(m.q_rank.unwrap_or(0)),
                u128::from(m.kv_rank),
                u128::from(m.rope_dim),
            );
            let q_in = if m.q_rank.is_some() { q_rank } else { d };
            let mla_cost = match name {
                "q_latent" => Some(matmul(q_rank, 2 * n * d * q_rank)),
                "q_latent_norm" => Some(pointwise(n * q_rank * e, norm_flops(q_rank))),
                "q" => Some(matmul(h * qk, 2 * n * q_in * h * qk)),
                "kv_latent" => Some(matmul(kv_rank + rope, 2 * n * d * (kv_rank + rope))),
                "kv_latent_norm" => Some(pointwise(n * kv_rank * e, norm_flops(kv_rank))),
                "kv" => Some(matmul(
                    h * (qk - rope + v),
                    2 * n * kv_rank * h * (qk - rope + v),
                )),
                "k_rope" => Some(pointwise(n * rope * e, 3 * n * rope)),
                // Copies into the per-head layout attention reads.
                "k" => Some(pointwise(n * h * qk * e, n * h * qk)),
                "v" => Some(pointwise(n * h * v * e, n * h * v)),
                "attn" => Some((
                    n * h * v * e + n * h * 4,
                    (2.0 * n as f64 * keys * (h * (qk + v)) as f64) as u128,
                    false,
                )),
                "attn_out" => Some(matmul(d, 2 * n * h * v * d)),
                _ => None,
            };
            if let Some(cost) = mla_cost {
                let act = program
                    .act_named(name)
                    .expect("tensor_names lists the program's own activations");
                out.push(TensorCost {
                    name,
                    bytes: u64::try_from(cost.0 + stats_of(name)).unwrap_or(u64::MAX),
                    flops: u64::try_from(cost.1).unwrap_or(u64::MAX),
                    fusible: cost.2,
                    needed: needed(act),
                    unit: program.unit_of(act).name(),
                });
                continue;
            }
        }
        let (bytes, flops, fusible) = match name {
            "attn_norm" | "mlp_norm" | "attn_post_norm" | "mlp_post_norm" => {
                pointwise(n * d * e, norm_flops(d))
            }
            "q" => matmul(qd, 2 * n * d * qd),
            "k" | "v" => matmul(kvd, 2 * n * d * kvd),
            "q_normed" => pointwise(n * qd * e, norm_flops(qd)),
            "k_normed" => pointwise(n * kvd * e, norm_flops(kvd)),
            "q_rope" => pointwise(n * qd * e, 3 * n * heads * rope_dims),
            "k_rope" => pointwise(n * kvd * e, 3 * n * kv_heads * rope_dims),
            // The attention output plus its f32 log-sum-exp per (token, head).
            "attn" => (
                n * qd * e + n * heads * 4,
                (4.0 * n as f64 * keys * qd as f64) as u128,
                false,
            ),
            "attn_out" => matmul(d, 2 * n * qd * d),
            "resid_mid" => pointwise(n * d * e, n * d),
            "gate" | "up" => matmul(
                experts_per_token * hidden,
                2 * n * experts_per_token * d * hidden,
            ),
            "act" => pointwise(n * experts_per_token * hidden * e, gated_act_flops),
            "router_logits" => (n * experts * 4, 2 * n * d * experts, false),
            // Top-k weights (f32) and indices (u32).
            "router_weights" => pointwise(n * experts_per_token * 8, 5 * n * experts),
            "expert_in" => pointwise(n * experts_per_token * d * e, n * experts_per_token * d),
            "expert_out" => matmul(
                experts_per_token * d,
                2 * n * experts_per_token * hidden * d,
            ),
            "shared_out" => {
                let shared = match &layer.ffn {
                    Ffn::Moe(m) => m
                        .shared
                        .map(|s| u128::from(s.count) * u128::from(s.hidden))
                        .unwrap_or(0),
                    Ffn::Mlp(_) => 0,
                };
                matmul(d, 6 * n * d * shared + 8 * n * shared)
            }
            "mlp_out" => match &layer.ffn {
                Ffn::Mlp(_) => matmul(d, 2 * n * hidden * d),
                Ffn::Moe(_) => pointwise(n * d * e, 2 * n * experts_per_token * d),
            },
            other => unreachable!("tensor {other} has no cost rule"),
        };
        let act = program
            .act_named(name)
            .expect("tensor_names lists the program's own activations");
        out.push(TensorCost {
            name,
            bytes: u64::try_from(bytes + stats_of(name)).unwrap_or(u64::MAX),
            flops: u64::try_from(flops).unwrap_or(u64::MAX),
            fusible,
            needed: needed(act),
            unit: program.unit_of(act).name(),
        });
    }
    // An unneeded tensor is still recomputed when the tensor that consumes it is: fold its FLOPs
    // (and its being a matmul) into that consumer (a consumer that is the next layer's input,
    // always saved, takes none). So `auto` keeps q/k after RoPE and the residual after attention,
    // whose recomputation would re-run the q/k and output projections.
    let fold = |from: &str| -> Option<&'static str> {
        match from {
            "attn_out" | "attn_post_norm" if !layer.block.parallel_residual => Some("resid_mid"),
            "q" | "q_normed" => Some("q_rope"),
            // Latent attention: the per-head keys are assembled from both.
            "kv" | "k_rope" if a.mla.is_some() => Some("k"),
            "k" | "k_normed" => Some("k_rope"),
            _ => None,
        }
    };
    for i in 0..out.len() {
        if out[i].needed {
            continue;
        }
        if let Some(to) = fold(out[i].name) {
            let (flops, fusible) = (out[i].flops, out[i].fusible);
            if let Some(target) = out.iter_mut().find(|t| t.name == to && t.needed) {
                target.flops = target.flops.saturating_add(flops);
                // Recomputing it now re-runs a matmul too: no longer a cheap fusible op.
                target.fusible &= fusible;
            }
        }
    }
    out
}
