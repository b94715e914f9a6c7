//! Checkpoint policies as written on the command line (`--checkpoint POLICY`), in the spec's own
//! syntax: `none`, `full`, `auto`, `save(a, b)`, `recompute(a, b)`, `budget(0.5)`, `budget(24GiB)`.

use super::TensorCost;
use crate::ir::{Budget, LayerCheckpoint};

/// A policy that replaces the spec's own for every layer, or a global budget.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOverride {
    /// The same per-layer policy everywhere.
    Layer(LayerCheckpoint),
    /// A global budget over the layers whose policy is `auto`.
    Budget(Budget),
}

/// Parse a policy string. Errors say what was expected.
pub fn parse_policy(text: &str) -> Result<PolicyOverride, String> {
    let t = text.trim();
    let (head, args) = match t.find('(') {
        Some(open) => {
            let Some(inner) = t[open + 1..].strip_suffix(')') else {
                return Err(format!("`{t}`: missing closing `)`"));
            };
            (t[..open].trim(), Some(inner.trim()))
        }
        None => (t, None),
    };
    let names = |inner: &str| -> Vec<String> {
        inner
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    match (head, args) {
        ("none", None) => Ok(PolicyOverride::Layer(LayerCheckpoint::None)),
        ("full", None) => Ok(PolicyOverride::Layer(LayerCheckpoint::Full)),
        ("auto", None) => Ok(PolicyOverride::Layer(LayerCheckpoint::Auto)),
        ("save", Some(a)) => Ok(PolicyOverride::Layer(LayerCheckpoint::Save(names(a)))),
        ("recompute", Some(a)) => Ok(PolicyOverride::Layer(LayerCheckpoint::Recompute(names(a)))),
        ("budget", Some(a)) => parse_budget(a).map(PolicyOverride::Budget),
        _ => Err(format!(
            "unknown checkpoint policy `{t}`; expected none, full, auto, save(names...), recompute(names...), budget(0.5) or budget(24GiB)"
        )),
    }
}

/// Parse a budget: a fraction in [0, 1] or a byte size with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB).
pub fn parse_budget(text: &str) -> Result<Budget, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let value: f64 = number
        .parse()
        .map_err(|_| format!("budget `{t}`: `{number}` is not a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("budget `{t}` must be a non-negative number"));
    }
    let scale: u64 = match unit {
        "" => {
            if value > 1.0 {
                return Err(format!(
                    "budget fraction {value} must be in [0, 1]; for bytes add a unit such as GiB"
                ));
            }
            return Ok(Budget::Fraction(value));
        }
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "budget `{t}`: unknown unit `{other}`; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ));
        }
    };
    let bytes = value * scale as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("budget `{t}` is too large"));
    }
    Ok(Budget::Bytes(bytes.round() as u64))
}

/// The policy's name in plans.
pub fn name(p: &LayerCheckpoint) -> String {
    match p {
        LayerCheckpoint::None => "none".into(),
        LayerCheckpoint::Full => "full".into(),
        LayerCheckpoint::Auto => "auto".into(),
        LayerCheckpoint::Save(n) => format!("save({})", n.join(", ")),
        LayerCheckpoint::Recompute(n) => format!("recompute({})", n.join(", ")),
    }
}

/// The budget's name in plans.
pub fn budget_name(b: &Budget) -> String {
    match b {
        Budget::Fraction(f) => format!("budget({f})"),
        Budget::Bytes(n) => format!("budget({n}B)"),
    }
}

/// Which tensors a fixed per-layer policy saves (never one that no backward op reads).
pub fn fixed_saves(p: &LayerCheckpoint, costs: &[TensorCost]) -> Vec<bool> {
    costs
        .iter()
        .map(|t| {
            t.needed
                && match p {
                    LayerCheckpoint::None => true,
                    LayerCheckpoint::Full => false,
                    LayerCheckpoint::Auto => !t.fusible,
                    LayerCheckpoint::Save(names) => names.iter().any(|n| n == t.name),
                    LayerCheckpoint::Recompute(names) => !names.iter().any(|n| n == t.name),
                }
        })
        .collect()
}
