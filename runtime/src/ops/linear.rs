//! Linear map: `y[n, out] = x[n, in] · Wᵀ + b`, with `W: [out, in]` as `torch.nn.Linear` stores it.
//!
//! Backward accumulates: `dx += dy · W`, `dW += dyᵀ · x`, `db += Σ_rows dy`.

use super::matmul::{mm_nn, mm_nt, mm_tn};
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
        for row in y.chunks_exact_mut(out_dim) {
            for (v, &bias) in row.iter_mut().zip(b) {
                *v += bias;
            }
        }
    }
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
