//! The activation-checkpoint planner: per-layer policies and a global memory budget, resolved
//! statically into what each layer saves and recomputes.
//!
//! Input: a [`ModelSpec`] (whose layers carry their [`LayerCheckpoint`] policies and whose
//! `checkpoint.budget` may set a global budget), a batch and sequence length, the activation dtype,
//! and optionally a [`PolicyOverride`] from the command line. Output: a [`Plan`]: one
//! [`LayerPlan`] per layer (saved and recomputed tensors, bytes, recompute FLOPs) and totals.
//!
//! Policies:
//! - `none`: save every named tensor; `full`: save only the layer input;
//! - `save(a, b)` / `recompute(a, b)`: exactly those;
//! - `auto`: recompute the cheap fusible pointwise tensors (norms, RoPE, activations, residual
//!   adds), save every matmul and attention output (like torch.compile's min-cut partitioner);
//! - `budget(f)` / `budget(bytes)`: the layers whose policy is `auto` become free choices; a 0/1
//!   knapsack (exact dynamic programme over byte units) picks the saved set that minimises
//!   recompute FLOPs within the budget, ties broken towards fewer bytes, which makes the saved
//!   bytes monotone in the budget. Layers with an explicit other policy keep it, and their bytes
//!   count against the budget.
//!
//! `activation_bytes` is the predicted peak of saved activations: the layer inputs plus every
//! saved tensor of every layer. Recomputation also needs, transiently, the recomputed tensors of
//! the one layer being back-propagated: `recompute_peak_bytes`.

mod costs;
mod knapsack;
#[cfg(test)]
use knapsack::knapsack;
mod policy;
mod report;

pub use costs::{Dtype, TensorCost, layer_costs, mean_keys, program_costs};
pub use policy::{
    BYTE_UNITS, LAYER_POLICIES, PolicyError, PolicyOverride, fixed_saves, layer_policy,
    parse_budget, parse_policy,
};
pub use report::{CurvePoint, curve, human_bytes, human_flops, render_table};

use crate::ir::{Budget, LayerCheckpoint, ModelSpec};
use serde::Serialize;
use thiserror::Error;

/// What one layer saves and recomputes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerPlan {
    /// Layer index.
    pub index: u64,
    /// The policy that decided it (`none`, `full`, `auto`, `save`, `recompute`, `budget`).
    pub policy: String,
    /// Saved named tensors, in forward order (the layer input is always saved besides these).
    pub saved: Vec<&'static str>,
    /// Recomputed named tensors, in forward order.
    pub recomputed: Vec<&'static str>,
    /// Named tensors no backward op reads: neither saved nor recomputed.
    pub unneeded: Vec<&'static str>,
    /// Bytes saved by this layer, its input included.
    pub saved_bytes: u64,
    /// Bytes of the tensors recomputed in backward (transient).
    pub recomputed_bytes: u64,
    /// FLOPs spent recomputing.
    pub recompute_flops: u64,
}

/// A resolved checkpoint plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Model name.
    pub model: String,
    /// Batch size.
    pub batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Activation dtype.
    pub dtype: Dtype,
    /// The global policy as written (`per-layer` when the spec's own policies apply).
    pub policy: String,
    /// The byte budget the knapsack solved for, if any.
    pub budget_bytes: Option<u64>,
    /// Predicted peak of saved activations (all layers).
    pub activation_bytes: u64,
    /// Saved activations under `none`, for reference.
    pub none_activation_bytes: u64,
    /// Largest per-layer transient of recomputed tensors.
    pub recompute_peak_bytes: u64,
    /// FLOPs recomputed in backward (all layers).
    pub recompute_flops: u64,
    /// FLOPs `full` would recompute (the layers' whole forward).
    pub full_recompute_flops: u64,
    /// One row per layer.
    pub layers: Vec<LayerPlan>,
}

impl Plan {
    /// Each layer's resolved save set as the per-layer policy `save(...)` that an executor runs.
    pub fn layer_checkpoints(&self) -> Vec<LayerCheckpoint> {
        self.layers
            .iter()
            .map(|l| LayerCheckpoint::Save(l.saved.iter().map(|s| s.to_string()).collect()))
            .collect()
    }
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    /// The budget is below what must be saved anyway.
    #[error(
        "checkpoint budget of {budget_bytes} bytes is infeasible: the layer inputs and fixed per-layer policies alone need {needed_bytes} bytes; the smallest feasible budget is budget({min_fraction:.4}) or budget({needed_bytes}B)"
    )]
    Infeasible {
        /// The requested budget in bytes.
        budget_bytes: u64,
        /// What must be saved anyway.
        needed_bytes: u64,
        /// `needed_bytes` as a fraction of the no-checkpoint activation bytes.
        min_fraction: f64,
    },
    /// Batch or sequence is zero or too large.
    #[error("invalid plan shape: {0}")]
    Shape(String),
}

/// Resolve the checkpoint plan of `spec` at `batch` × `seq`.
pub fn plan(
    spec: &ModelSpec,
    batch: u64,
    seq: u64,
    dtype: Dtype,
    policy: Option<&PolicyOverride>,
) -> Result<Plan, PlanError> {
    plan_with_solver(spec, batch, seq, dtype, policy, &mut Solver::default())
}

/// [`plan`], its knapsack solved by `solver`: the budgets of one curve share one table.
fn plan_with_solver(
    spec: &ModelSpec,
    batch: u64,
    seq: u64,
    dtype: Dtype,
    policy: Option<&PolicyOverride>,
    solver: &mut Solver,
) -> Result<Plan, PlanError> {
    if batch == 0 || seq == 0 {
        return Err(PlanError::Shape("batch and seq must be positive".into()));
    }
    if batch
        .checked_mul(seq)
        .and_then(|n| n.checked_mul(spec.d_model * 64))
        .is_none()
    {
        return Err(PlanError::Shape(format!(
            "batch {batch} × seq {seq} overflows byte counts"
        )));
    }
    let input_bytes = batch * seq * spec.d_model * dtype.size();
    let costs: Vec<Vec<TensorCost>> = spec
        .layers
        .iter()
        .map(|l| layer_costs(spec, l, batch, seq, dtype))
        .collect();
    check_totals(&costs, input_bytes, batch, seq)?;
    let none_activation_bytes: u64 = costs
        .iter()
        .map(|c| input_bytes + c.iter().filter(|t| t.needed).map(|t| t.bytes).sum::<u64>())
        .sum();
    let full_recompute_flops: u64 = costs
        .iter()
        .flat_map(|c| c.iter().filter(|t| t.needed).map(|t| t.flops))
        .sum();

    // The per-layer policy each layer starts from, and the budget if any.
    let (budget, policy_name) = match policy {
        Some(PolicyOverride::Layer(p)) => (None, policy::name(p)),
        Some(PolicyOverride::Budget(b)) => (Some(*b), policy::budget_name(b)),
        None => (
            spec.checkpoint.budget,
            spec.checkpoint
                .budget
                .map_or("per-layer".into(), |b| policy::budget_name(&b)),
        ),
    };
    let layer_policy = |i: usize| -> LayerCheckpoint {
        match policy {
            Some(PolicyOverride::Layer(p)) => p.clone(),
            _ => spec.layers[i].checkpoint.clone(),
        }
    };

    // Saved flags per layer per tensor; `None` marks a free (budgeted) layer.
    let mut saved: Vec<Option<Vec<bool>>> = Vec::with_capacity(costs.len());
    for (i, layer_cost) in costs.iter().enumerate() {
        let p = layer_policy(i);
        let free = budget.is_some() && matches!(p, LayerCheckpoint::Auto);
        saved.push(if free {
            None
        } else {
            Some(policy::fixed_saves(&p, layer_cost))
        });
    }

    let mut budget_bytes = None;
    if let Some(b) = budget {
        let cap = match b {
            Budget::Fraction(f) => (f * none_activation_bytes as f64).floor() as u64,
            Budget::Bytes(bytes) => bytes,
        };
        budget_bytes = Some(cap);
        let fixed: u64 = costs
            .iter()
            .zip(&saved)
            .map(|(c, s)| {
                input_bytes
                    + s.as_ref().map_or(0, |s| {
                        c.iter()
                            .zip(s)
                            .filter(|(_, k)| **k)
                            .map(|(t, _)| t.bytes)
                            .sum()
                    })
            })
            .sum();
        if fixed > cap {
            return Err(PlanError::Infeasible {
                budget_bytes: cap,
                needed_bytes: fixed,
                min_fraction: fixed as f64 / none_activation_bytes as f64,
            });
        }
        // The knapsack's items are the free layers' units (tensors kept in one buffer go
        // together): weight their bytes, value the FLOPs their recomputation would cost.
        let mut items: Vec<(usize, &'static str)> = Vec::new();
        for (l, s) in saved.iter().enumerate() {
            if s.is_none() {
                let first = items.len();
                for t in costs[l].iter().filter(|t| t.needed) {
                    if !items[first..].contains(&(l, t.unit)) {
                        items.push((l, t.unit));
                    }
                }
            }
        }
        let members = |l: usize, unit: &'static str| {
            costs[l]
                .iter()
                .enumerate()
                .filter(move |(_, t)| t.needed && t.unit == unit)
        };
        let weights: Vec<u64> = items
            .iter()
            .map(|&(l, u)| members(l, u).map(|(_, t)| t.bytes).sum())
            .collect();
        let values: Vec<u64> = items
            .iter()
            .map(|&(l, u)| members(l, u).map(|(_, t)| t.flops).sum())
            .collect();
        let chosen = solver.solve(&weights, &values, cap - fixed);
        for (l, s) in saved.iter_mut().enumerate() {
            if s.is_none() {
                *s = Some(vec![false; costs[l].len()]);
            }
        }
        for (&(l, u), _) in items.iter().zip(&chosen).filter(|(_, keep)| **keep) {
            if let Some(s) = saved[l].as_mut() {
                for (t, _) in members(l, u) {
                    s[t] = true;
                }
            }
        }
    }

    let mut layers = Vec::with_capacity(costs.len());
    for (i, (layer_cost, flags)) in costs.iter().zip(&saved).enumerate() {
        let flags = flags
            .clone()
            .unwrap_or_else(|| vec![true; layer_cost.len()]);
        let free = budget.is_some() && matches!(layer_policy(i), LayerCheckpoint::Auto);
        let mut row = LayerPlan {
            index: spec.layers[i].index,
            policy: if free {
                "budget".into()
            } else {
                policy::name(&layer_policy(i))
            },
            saved: Vec::new(),
            recomputed: Vec::new(),
            unneeded: Vec::new(),
            saved_bytes: input_bytes,
            recomputed_bytes: 0,
            recompute_flops: 0,
        };
        for (t, keep) in layer_cost.iter().zip(flags) {
            if !t.needed {
                row.unneeded.push(t.name);
            } else if keep {
                row.saved.push(t.name);
                row.saved_bytes += t.bytes;
            } else {
                row.recomputed.push(t.name);
                row.recomputed_bytes += t.bytes;
                row.recompute_flops += t.flops;
            }
        }
        layers.push(row);
    }
    Ok(Plan {
        model: spec.name.clone(),
        batch,
        seq,
        dtype,
        policy: policy_name,
        budget_bytes,
        activation_bytes: layers.iter().map(|l| l.saved_bytes).sum(),
        none_activation_bytes,
        recompute_peak_bytes: layers.iter().map(|l| l.recomputed_bytes).max().unwrap_or(0),
        recompute_flops: layers.iter().map(|l| l.recompute_flops).sum(),
        full_recompute_flops,
        layers,
    })
}

/// The knapsack of the last item list planned for, kept for the next budget: a table answers
/// every capacity, so the points of a curve (same spec and shape, so the same items) solve once.
#[derive(Default)]
struct Solver {
    last: Option<(Vec<u64>, Vec<u64>, knapsack::Table)>,
}

impl Solver {
    fn solve(&mut self, weights: &[u64], values: &[u64], cap: u64) -> Vec<bool> {
        match &self.last {
            Some((w, v, _)) if w == weights && v == values => {}
            _ => {
                let table = knapsack::Table::new(weights, values);
                self.last = Some((weights.to_vec(), values.to_vec(), table));
            }
        }
        let (.., table) = self.last.as_ref().expect("set above");
        table.choose(cap)
    }
}

/// Refuses a shape whose byte or FLOP totals (over every tensor of every layer, so every sum the
/// plan takes) do not fit in u64, instead of reporting wrapped figures.
fn check_totals(
    costs: &[Vec<TensorCost>],
    input_bytes: u64,
    batch: u64,
    seq: u64,
) -> Result<(), PlanError> {
    let (mut bytes, mut flops) = (0u128, 0u128);
    for layer in costs {
        bytes += u128::from(input_bytes);
        for t in layer {
            bytes += u128::from(t.bytes);
            flops += u128::from(t.flops);
        }
    }
    let max = u128::from(u64::MAX);
    if bytes >= max || flops >= max {
        return Err(PlanError::Shape(format!(
            "batch {batch} × seq {seq} gives more than 2^64 activation bytes or FLOPs ({:.3e} bytes, {:.3e} FLOPs): too large to count",
            bytes as f64, flops as f64
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
