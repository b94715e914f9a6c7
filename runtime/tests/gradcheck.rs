//! Finite-difference gradient checks in f64: every op on its own against central differences,
//! then whole tiny models of every variant the IR expresses.
//!
//! One module per topic: `ops` (single ops), `rope`, `attention`, `models` (whole models) and
//! `executor` (its entry points, errors and initialisation); the finite-difference helpers are
//! here.

mod common;

#[path = "gradcheck/attention.rs"]
mod attention;
#[path = "gradcheck/executor.rs"]
mod executor;
#[path = "gradcheck/models.rs"]
mod models;
#[path = "gradcheck/ops.rs"]
mod ops;
#[path = "gradcheck/rope.rs"]
mod rope;

use modelspec_runtime::rng;

const EPS: f64 = 1e-6;

fn randn(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let s = rng::key(&[seed, 777]);
    (0..n).map(|i| scale * rng::normal(s, i as u64)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares `analytic` with central differences of `f` at `x` (every coordinate).
fn check(what: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut worst = 0.0f64;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + EPS;
        let fp = f(&xp);
        xp[i] = x[i] - EPS;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * EPS);
        let err = (fd - analytic[i]).abs() / (1e-3 + fd.abs().max(analytic[i].abs()));
        worst = worst.max(err);
        assert!(
            (fd - analytic[i]).abs() <= 1e-7 + 1e-5 * fd.abs().max(analytic[i].abs()),
            "{what}[{i}]: finite difference {fd} vs analytic {}",
            analytic[i]
        );
    }
    println!(
        "{what}: {} coordinates, worst relative error {worst:.2e}",
        x.len()
    );
}
