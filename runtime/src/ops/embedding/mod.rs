//! Token embedding: `x[n] = table[token[n]] · scale (+ pos[n mod seq])`.
//!
//! `scale` is the spec's embedding multiplier (Gemma's `sqrt(d_model)`; 1 for most models); `pos`
//! is the learned absolute position table (GPT-2's `wpe`), indexed by the position within each
//! sequence. HF multiplies by the scale in the model dtype; here the scale is rounded to `T` once.
//!
//! The op's CUDA side sits beside this CPU code: `cuda.rs` (the launchers, methods of
//! [`Kernels`](crate::cuda::Kernels)) and `embedding.cu` (the kernels).

pub(crate) mod cuda;

use crate::tensor::Float;

/// Writes the embedded rows into `out: [tokens.len(), d]`.
pub fn forward<T: Float>(
    tokens: &[u32],
    table: &[T],
    d: usize,
    scale: f64,
    pos: Option<&[T]>,
    seq: usize,
    out: &mut [T],
) {
    let s = T::from_f64(scale);
    for (n, (&tok, row)) in tokens.iter().zip(out.chunks_exact_mut(d)).enumerate() {
        let src = &table[tok as usize * d..(tok as usize + 1) * d];
        if scale == 1.0 {
            row.copy_from_slice(src);
        } else {
            for (o, &v) in row.iter_mut().zip(src) {
                *o = v * s;
            }
        }
        if let Some(pos) = pos {
            let t = n % seq;
            for (o, &p) in row.iter_mut().zip(&pos[t * d..(t + 1) * d]) {
                *o += p;
            }
        }
    }
}

/// Accumulates the gradients of the token table (and the position table) from `dy: [n, d]`.
pub fn backward<T: Float>(
    tokens: &[u32],
    dy: &[T],
    d: usize,
    scale: f64,
    seq: usize,
    dtable: &mut [T],
    dpos: Option<&mut [T]>,
) {
    let s = T::from_f64(scale);
    for (&tok, row) in tokens.iter().zip(dy.chunks_exact(d)) {
        let dst = &mut dtable[tok as usize * d..(tok as usize + 1) * d];
        if scale == 1.0 {
            for (g, &v) in dst.iter_mut().zip(row) {
                *g += v;
            }
        } else {
            for (g, &v) in dst.iter_mut().zip(row) {
                *g += v * s;
            }
        }
    }
    if let Some(dpos) = dpos {
        for (n, row) in dy.chunks_exact(d).enumerate() {
            let t = n % seq;
            for (g, &v) in dpos[t * d..(t + 1) * d].iter_mut().zip(row) {
                *g += v;
            }
        }
    }
}
