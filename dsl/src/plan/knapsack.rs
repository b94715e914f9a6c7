//! Exact 0/1 knapsack over byte units: choose items with total weight ≤ a capacity maximising
//! total value, ties broken towards less weight.
//!
//! One [`Table`] answers every capacity ([`Table::choose`]): its dynamic programme's entry at
//! capacity `x` is the best choice of weight ≤ `x`, so a curve of budgets over the same items
//! solves once. Weights are divided by their gcd first; when the total weight in those units is
//! still too large for a table, weights are rounded *up* to a coarser unit, which keeps every
//! returned choice feasible (and is exact whenever the sizes share a large common factor, as
//! activation sizes of B·T·width do). The unit depends on the items only, never on the capacity,
//! so a plan at one budget and the same budget's point of a curve choose alike.
//!
//! Items of equal (weight, value) are solved as one bounded item: identical layers repeat the
//! same tensors, so a model of L layers has a few dozen distinct items, each split into
//! `O(log L)` bundles of 1, 2, 4, ... copies (every count 0..=k is a sum of bundles), which keeps
//! the table `O(distinct · log L · units)` instead of `O(L · units)`. Of a kind, the first items
//! (in input order) are the ones taken.

use std::collections::BTreeMap;

/// The most capacity units a table holds.
const MAX_UNITS: u64 = 1 << 18;

/// A solved knapsack over fixed items, for any capacity.
pub(super) struct Table {
    /// Bytes per unit.
    unit: u64,
    /// Capacities `0..=c` units.
    c: usize,
    /// Item indices of each kind (equal weight in units and value), in input order.
    kinds: Vec<Vec<usize>>,
    /// Bundles: (kind, copies, weight in units).
    bundles: Vec<(usize, usize, usize)>,
    /// `keep[b * row + x / 64]` bit `x % 64`: bundle `b` is taken at capacity `x`.
    keep: Vec<u64>,
    row: usize,
    n: usize,
}

impl Table {
    /// Solves the programme for `weights` (bytes) and `values` over every capacity up to the
    /// items' total weight.
    pub(super) fn new(weights: &[u64], values: &[u64]) -> Table {
        let n = weights.len();
        let mut unit = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        let total: u64 = weights.iter().fold(0u64, |a, &w| a.saturating_add(w));
        if total / unit > MAX_UNITS {
            unit = total.div_ceil(MAX_UNITS);
        }
        // Kinds of item: (weight in units, value) → the items of that kind, in input order.
        let mut by_kind: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
        for i in 0..n {
            by_kind
                .entry((weights[i].div_ceil(unit), values[i]))
                .or_default()
                .push(i);
        }
        // Every item fits at the largest capacity: the sum of the rounded weights.
        let c = by_kind
            .iter()
            .fold(0u64, |a, (&(w, _), items)| {
                a.saturating_add(w.saturating_mul(items.len() as u64))
            })
            .min(MAX_UNITS + n as u64) as usize;
        // Bundles of 1, 2, 4, ... copies; a bundle heavier than the table is useless.
        let mut bundles = Vec::new();
        let mut bundle_values = Vec::new();
        for (k, (&(w, v), items)) in by_kind.iter().enumerate() {
            let mut left = items.len();
            let mut size = 1;
            while left > 0 {
                let copies = size.min(left);
                left -= copies;
                size *= 2;
                let weight = w.saturating_mul(copies as u64);
                if weight <= c as u64 {
                    bundles.push((k, copies, weight as usize));
                    bundle_values.push(v.saturating_mul(copies as u64));
                }
            }
        }
        // dp[x] = best (value, -weight) within capacity x.
        let mut dp: Vec<(u64, i64)> = vec![(0, 0); c + 1];
        let row = (c + 1).div_ceil(64);
        let mut keep = vec![0u64; bundles.len() * row];
        for (b, (&(_, _, wb), &vb)) in bundles.iter().zip(&bundle_values).enumerate() {
            for x in (wb..=c).rev() {
                let cand = (dp[x - wb].0 + vb, dp[x - wb].1 - wb as i64);
                if cand > dp[x] {
                    dp[x] = cand;
                    keep[b * row + x / 64] |= 1 << (x % 64);
                }
            }
        }
        Table {
            unit,
            c,
            kinds: by_kind.into_values().collect(),
            bundles,
            keep,
            row,
            n,
        }
    }

    /// The best choice of total weight ≤ `cap` bytes (one flag per item).
    pub(super) fn choose(&self, cap: u64) -> Vec<bool> {
        let mut taken = vec![0usize; self.kinds.len()];
        let mut x = (cap / self.unit).min(self.c as u64) as usize;
        for (b, &(k, copies, wb)) in self.bundles.iter().enumerate().rev() {
            if self.keep[b * self.row + x / 64] & (1 << (x % 64)) != 0 {
                taken[k] += copies;
                x -= wb;
            }
        }
        let mut chosen = vec![false; self.n];
        for (items, &m) in self.kinds.iter().zip(&taken) {
            for &i in &items[..m] {
                chosen[i] = true;
            }
        }
        chosen
    }
}

/// [`Table::choose`] of a table for these items alone.
#[cfg(test)]
pub(super) fn knapsack(weights: &[u64], values: &[u64], cap: u64) -> Vec<bool> {
    Table::new(weights, values).choose(cap)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
