//! Linear map: `y[n, out] = x[n, in] · Wᵀ + b`, with `W: [out, in]` as `torch.nn.Linear` stores it.
//!
//! Backward accumulates: `dx += dy · W`, `dW += dyᵀ · x`, `db += Σ_rows dy`.

use super::matmul::{mm_nn, mm_nt, mm_nt_new, mm_tn};
use crate::tensor::Float;

/// `y = x · Wᵀ + b` (overwrites `y`).
pub fn forward<T: Float>(
    x: &[T],
    rows: usize,
    in_dim: usize,
    w: &[T],
    b: Option<&[T]>,
    out_dim: usize,
    y: &mut [T],
) {
    debug_assert_eq!(x.len(), rows * in_dim);
    debug_assert_eq!(w.len(), out_dim * in_dim);
    debug_assert_eq!(y.len(), rows * out_dim);
    mm_nt(rows, out_dim, in_dim, x, w, y, false, T::ONE);
    if let Some(b) = b {
        add_bias(y, b);
    }
}

/// `y[r, j] += b[j]` over the rows of `y` (`b.len()` columns).
fn add_bias<T: Float>(y: &mut [T], b: &[T]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (v, &bias) in row.iter_mut().zip(b) {
            *v += bias;
        }
    }
}

/// [`forward`] into a new `[rows, out_dim]` buffer, which the product fills without zeroing it
/// first (same bits).
pub fn forward_new<T: Float>(
    x: &[T],
    rows: usize,
    in_dim: usize,
    w: &[T],
    b: Option<&[T]>,
    out_dim: usize,
) -> Vec<T> {
    debug_assert_eq!(x.len(), rows * in_dim);
    debug_assert_eq!(w.len(), out_dim * in_dim);
    let mut y = mm_nt_new(rows, out_dim, in_dim, x, w);
    if let Some(b) = b {
        add_bias(&mut y, b);
    }
    y
}

/// Gradients of [`forward`], accumulated into `dx` (when given), `dw` and `db` (when given).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    x: &[T],
    dy: &[T],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    w: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    if let Some(dx) = dx {
        mm_nn(rows, in_dim, out_dim, dy, w, dx, true, T::ONE);
    }
    mm_tn(out_dim, in_dim, rows, dy, x, dw, true, T::ONE);
    if let Some(db) = db {
        for row in dy.chunks_exact(out_dim) {
            for (g, &d) in db.iter_mut().zip(row) {
                *g += d;
            }
        }
    }
}
