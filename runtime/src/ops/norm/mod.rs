//! RMSNorm and LayerNorm over the last `width` elements of each row, with an optional affine
//! weight and offset (Gemma's `x̂ · (1 + w)` is offset 1) and an optional bias.
//!
//! RMS:   `y = x · r · g`,               `r = 1 / sqrt(mean(x²) + eps)`
//! Layer: `y = (x - μ) · r · g + b`,     `r = 1 / sqrt(mean((x - μ)²) + eps)`
//! with `g = offset + w` when the norm has a weight, else 1. Statistics are recomputed in backward
//! (cheap, and bit-identical to forward). Per-head qk-norm is this op with `width = head_dim`.
//!
//! The op's CUDA side sits beside this CPU code: `cuda.rs` (the launchers, methods of
//! [`Kernels`](crate::cuda::Kernels)) and `norm.cu` (the kernels).

pub(crate) mod cuda;

use rayon::prelude::*;

use modelspec_dsl::ir::{Norm, NormKind};

use crate::tensor::Float;

/// Row statistics: (mean subtracted, reciprocal std).
#[inline]
fn stats<T: Float>(x: &[T], kind: NormKind, eps: T) -> (T, T) {
    let n = T::from_f64(x.len() as f64);
    match kind {
        NormKind::Rms => {
            let ms = x.iter().map(|&v| v * v).sum::<T>() / n;
            (T::ZERO, T::ONE / (ms + eps).sqrt())
        }
        NormKind::Layer => {
            let mean = x.iter().copied().sum::<T>() / n;
            let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
            (mean, T::ONE / (var + eps).sqrt())
        }
    }
}

const PAR_MIN_ELEMENTS: usize = 1 << 14;

/// Normalises each `width`-row of `x` into `y`. `w` and `b` have `width` elements.
pub fn forward<T: Float>(
    x: &[T],
    width: usize,
    norm: &Norm,
    w: Option<&[T]>,
    b: Option<&[T]>,
    y: &mut [T],
) {
    let eps = T::from_f64(norm.eps);
    let offset = T::from_f64(norm.offset);
    let row = |(xr, yr): (&[T], &mut [T])| {
        let (mean, r) = stats(xr, norm.kind, eps);
        for c in 0..width {
            let mut v = (xr[c] - mean) * r;
            if let Some(w) = w {
                v *= offset + w[c];
            }
            if let Some(b) = b {
                v += b[c];
            }
            yr[c] = v;
        }
    };
    if x.len() >= PAR_MIN_ELEMENTS {
        x.par_chunks_exact(width)
            .zip(y.par_chunks_exact_mut(width))
            .for_each(row);
    } else {
        x.chunks_exact(width)
            .zip(y.chunks_exact_mut(width))
            .for_each(row);
    }
}

/// Accumulates `dx`, and `dw` / `db` when given, from `dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    x: &[T],
    dy: &[T],
    width: usize,
    norm: &Norm,
    w: Option<&[T]>,
    dx: &mut [T],
    dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    let eps = T::from_f64(norm.eps);
    let offset = T::from_f64(norm.offset);
    let n = T::from_f64(width as f64);
    let kind = norm.kind;
    let row = |((xr, dyr), dxr): ((&[T], &[T]), &mut [T])| {
        let (mean, r) = stats(xr, kind, eps);
        // dx̂ = dy·g;  dx = r·(dx̂ − mean(dx̂)[layer] − x̂·mean(dx̂·x̂))
        let mut sum_dxh = T::ZERO;
        let mut sum_dxh_xh = T::ZERO;
        for c in 0..width {
            let xh = (xr[c] - mean) * r;
            let g = w.map_or(T::ONE, |w| offset + w[c]);
            let dxh = dyr[c] * g;
            sum_dxh += dxh;
            sum_dxh_xh += dxh * xh;
        }
        let m1 = if kind.centred() { sum_dxh / n } else { T::ZERO };
        let m2 = sum_dxh_xh / n;
        for c in 0..width {
            let xh = (xr[c] - mean) * r;
            let g = w.map_or(T::ONE, |w| offset + w[c]);
            let dxh = dyr[c] * g;
            dxr[c] += r * (dxh - m1 - xh * m2);
        }
    };
    if x.len() >= PAR_MIN_ELEMENTS {
        x.par_chunks_exact(width)
            .zip(dy.par_chunks_exact(width))
            .zip(dx.par_chunks_exact_mut(width))
            .for_each(row);
    } else {
        x.chunks_exact(width)
            .zip(dy.chunks_exact(width))
            .zip(dx.chunks_exact_mut(width))
            .for_each(row);
    }
    if let Some(dw) = dw {
        for (xr, dyr) in x.chunks_exact(width).zip(dy.chunks_exact(width)) {
            let (mean, r) = stats(xr, kind, eps);
            for c in 0..width {
                dw[c] += dyr[c] * (xr[c] - mean) * r;
            }
        }
    }
    if let Some(db) = db {
        for dyr in dy.chunks_exact(width) {
            for c in 0..width {
                db[c] += dyr[c];
            }
        }
    }
}
