//! Human-readable plan tables and the memory/recompute curve over budgets.

use super::{Dtype, Plan, PlanError, PolicyOverride, Solver, plan_with_solver};
use crate::ir::{Budget, ModelSpec};
use std::fmt::Write;

/// Bytes as a short human string (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// FLOPs as a short human string.
pub fn human_flops(flops: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut value = flops as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}FLOP", UNITS[unit])
}

/// The plan as a table: one row per layer, then totals.
pub fn render_table(p: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "checkpoint plan for {} at batch {} × seq {} ({:?}), policy {}",
        p.model, p.batch, p.seq, p.dtype, p.policy
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<12} {:>12} {:>14}  {:<40} recomputed",
        "layer", "policy", "saved", "recompute", "saved tensors"
    );
    for l in &p.layers {
        let _ = writeln!(
            out,
            "{:>5}  {:<12} {:>12} {:>14}  {:<40} {}",
            l.index,
            l.policy,
            human_bytes(l.saved_bytes),
            human_flops(l.recompute_flops),
            if l.saved.is_empty() {
                "(input only)".to_string()
            } else {
                l.saved.join(",")
            },
            if l.recomputed.is_empty() {
                "-".to_string()
            } else {
                l.recomputed.join(",")
            },
        );
    }
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let _ = writeln!(
        out,
        "saved activations: {} ({:.1}% of none's {}); recompute transient: {}",
        human_bytes(p.activation_bytes),
        pct(p.activation_bytes, p.none_activation_bytes),
        human_bytes(p.none_activation_bytes),
        human_bytes(p.recompute_peak_bytes)
    );
    let _ = writeln!(
        out,
        "recompute: {} ({:.1}% of full's {})",
        human_flops(p.recompute_flops),
        pct(p.recompute_flops, p.full_recompute_flops),
        human_flops(p.full_recompute_flops)
    );
    out
}

/// One point of the memory/recompute curve.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    /// The budget fraction.
    pub budget: f64,
    /// `None` where the budget is infeasible.
    pub activation_bytes: Option<u64>,
    /// Recomputed FLOPs at that budget.
    pub recompute_flops: Option<u64>,
}

/// Plans at `steps + 1` evenly spaced budget fractions in [0, 1].
pub fn curve(spec: &ModelSpec, batch: u64, seq: u64, dtype: Dtype, steps: u32) -> Vec<CurvePoint> {
    // Every point has the same items: one knapsack table answers all their budgets.
    let mut solver = Solver::default();
    (0..=steps)
        .map(|i| {
            let budget = f64::from(i) / f64::from(steps.max(1));
            let policy = PolicyOverride::Budget(Budget::Fraction(budget));
            match plan_with_solver(spec, batch, seq, dtype, Some(&policy), &mut solver) {
                Ok(p) => CurvePoint {
                    budget,
                    activation_bytes: Some(p.activation_bytes),
                    recompute_flops: Some(p.recompute_flops),
                },
                Err(PlanError::Infeasible { .. } | PlanError::Shape(_)) => CurvePoint {
                    budget,
                    activation_bytes: None,
                    recompute_flops: None,
                },
            }
        })
        .collect()
}
