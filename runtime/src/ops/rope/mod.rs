//! Rotary position embedding: half-split (HF's `rotate_half`) or interleaved pairs, partial
//! rotary dimensions, and every HF scaling (`linear`, `dynamic`, `yarn`, `llama3`, `longrope`).
//!
//! For pair `(a, b)` of frequency `i` at position `t`, with `θ = t · inv_freq[i]` and the
//! scaling's attention factor `m`:
//! ```text
//! a' = m (a cos θ − b sin θ),   b' = m (b cos θ + a sin θ)
//! ```
//! Half-split pairs dims `(i, i + r/2)`, interleaved pairs `(2i, 2i + 1)`, over the first
//! `r = rotary_dims` of each head; the rest pass through unscaled. `inv_freq` and `m` follow
//! transformers' `modeling_rope_utils` init functions; as there, `inv_freq` and `θ` are rounded to
//! f32 before the cosine, and `m` multiplies cos and sin.
//!
//! The op's CUDA side sits beside this CPU code: `cuda.rs` (the launcher, a method of
//! [`Kernels`](crate::cuda::Kernels)) and `rope.cu` (the kernel).

pub(crate) mod cuda;

use modelspec_dsl::ir::{Rope, RopeScaling, RopeStyle};
use rayon::prelude::*;

use crate::tensor::Float;

/// `inv_freq` (rotary_dims/2 values) and the attention factor for a batch of `seq` positions.
/// `dynamic` and `longrope` depend on `seq` the way HF's dynamic update does.
pub fn inv_freq(rope: &Rope, seq: usize) -> (Vec<f64>, f64) {
    let dim = rope.rotary_dims as usize;
    let half = dim / 2;
    let base = rope.theta;
    let exponent = |i: usize| (2 * i) as f64 / dim as f64;
    let plain =
        |base: f64| -> Vec<f64> { (0..half).map(|i| 1.0 / base.powf(exponent(i))).collect() };
    match &rope.scaling {
        RopeScaling::None => (plain(base), 1.0),
        RopeScaling::Linear { factor } => {
            (plain(base).into_iter().map(|f| f / factor).collect(), 1.0)
        }
        RopeScaling::DynamicNtk {
            factor,
            original_context,
        } => {
            let orig = *original_context as f64;
            let seq_len = (seq as f64).max(orig);
            let d = dim as f64;
            let base = base * ((factor * seq_len / orig) - (factor - 1.0)).powf(d / (d - 2.0));
            (plain(base), 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
            ..
        } => {
            let d = dim as f64;
            let orig = *original_context as f64;
            let correction_dim = |rotations: f64| {
                (d * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
            };
            let (low, high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            let (low, high) = if *truncate {
                (low.floor(), high.ceil())
            } else {
                (low, high)
            };
            let (low, high) = (low.max(0.0), high.min(d - 1.0));
            let high = if low == high { high + 0.001 } else { high };
            let freqs: Vec<f64> = (0..half)
                .map(|i| {
                    let pos_freq = base.powf(exponent(i));
                    let extrapolation = 1.0 / pos_freq;
                    let interpolation = 1.0 / (factor * pos_freq);
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect();
            (freqs, *attention_factor)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => {
            let old = *original_context as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let freqs = plain(base)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    // Equal factors (Llama 4 Scout) leave no band to smooth.
                    let medium = wavelen >= high_wavelen
                        && wavelen <= low_wavelen
                        && high_freq_factor > low_freq_factor;
                    if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        RopeScaling::Longrope {
            short_factor,
            long_factor,
            original_context,
            attention_factor,
        } => {
            let ext = if seq as u64 > *original_context {
                long_factor
            } else {
                short_factor
            };
            let freqs = (0..half)
                .map(|i| 1.0 / (ext.get(i).copied().unwrap_or(1.0) * base.powf(exponent(i))))
                .collect();
            (freqs, *attention_factor)
        }
    }
}

/// Precomputed `m·cos θ` and `m·sin θ` for positions `0..seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable<T: Float> {
    /// Rotated dims per head.
    pub rotary_dims: usize,
    /// Pairing.
    pub style: RopeStyle,
    /// Positions.
    pub seq: usize,
    /// `[seq, rotary_dims/2]`.
    pub cos: Vec<T>,
    /// `[seq, rotary_dims/2]`.
    pub sin: Vec<T>,
}

impl<T: Float> RopeTable<T> {
    /// The table of `rope` for `seq` positions.
    pub fn new(rope: &Rope, seq: usize) -> Self {
        let (freqs, factor) = inv_freq(rope, seq);
        let half = freqs.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for t in 0..seq {
            for &f in &freqs {
                let theta = (f as f32 * t as f32) as f64;
                cos.push(T::from_f64(theta.cos() * factor));
                sin.push(T::from_f64(theta.sin() * factor));
            }
        }
        RopeTable {
            rotary_dims: rope.rotary_dims as usize,
            style: rope.style,
            seq,
            cos,
            sin,
        }
    }

    #[inline]
    fn pair(&self, i: usize) -> (usize, usize) {
        match self.style {
            RopeStyle::HalfSplit => (i, i + self.rotary_dims / 2),
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
        }
    }
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Rotates `x: [batch·seq, heads·head_dim]` into `out`.
pub fn forward<T: Float>(
    table: &RopeTable<T>,
    x: &[T],
    heads: usize,
    head_dim: usize,
    out: &mut [T],
) {
    rotate::<T, false>(table, x, heads, head_dim, 0, out);
}

/// Rotates dims `offset..offset + rotary_dims` of each head of `x: [batch·seq, heads·head_dim]`
/// into `out`, copying the others (latent attention rotates the last part of each query head).
pub fn forward_at<T: Float>(
    table: &RopeTable<T>,
    x: &[T],
    heads: usize,
    head_dim: usize,
    offset: usize,
    out: &mut [T],
) {
    rotate::<T, false>(table, x, heads, head_dim, offset, out);
}

/// Accumulates `dx` from `dy` through [`forward_at`].
pub fn backward_at<T: Float>(
    table: &RopeTable<T>,
    dy: &[T],
    heads: usize,
    head_dim: usize,
    offset: usize,
    dx: &mut [T],
) {
    rotate::<T, true>(table, dy, heads, head_dim, offset, dx);
}

/// Accumulates `dx` from `dy` (the transpose rotation).
pub fn backward<T: Float>(
    table: &RopeTable<T>,
    dy: &[T],
    heads: usize,
    head_dim: usize,
    dx: &mut [T],
) {
    rotate::<T, true>(table, dy, heads, head_dim, 0, dx);
}

/// `dst = R src` or, with `TRANSPOSE`, `dst += Rᵀ src`, row by row. Rᵀ is R with the sines
/// negated (negation is exact, so the transpose's sums are bit-identical to spelling it out).
fn rotate<T: Float, const TRANSPOSE: bool>(
    table: &RopeTable<T>,
    src: &[T],
    heads: usize,
    head_dim: usize,
    offset: usize,
    dst: &mut [T],
) {
    assert!(offset + table.rotary_dims <= head_dim);
    let half = table.rotary_dims / 2;
    let width = heads * head_dim;
    let chunk = width * ROWS_PER_TASK;
    src.par_chunks(chunk)
        .zip(dst.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(task, (src, dst))| {
            for (r, (xr, yr)) in src
                .chunks_exact(width)
                .zip(dst.chunks_exact_mut(width))
                .enumerate()
            {
                let t = (task * ROWS_PER_TASK + r) % table.seq;
                let (cos, sin) = (
                    &table.cos[t * half..(t + 1) * half],
                    &table.sin[t * half..(t + 1) * half],
                );
                for h in 0..heads {
                    let (xh, yh) = (
                        &xr[h * head_dim..(h + 1) * head_dim],
                        &mut yr[h * head_dim..(h + 1) * head_dim],
                    );
                    // Dims before the rotated part pass through.
                    if TRANSPOSE {
                        yh[..offset]
                            .iter_mut()
                            .zip(&xh[..offset])
                            .for_each(|(y, &x)| *y += x);
                    } else {
                        yh[..offset].copy_from_slice(&xh[..offset]);
                    }
                    let (xs, ys) = (&xh[offset..], &mut yh[offset..]);
                    for i in 0..half {
                        let (a, b) = table.pair(i);
                        let sn = if TRANSPOSE { -sin[i] } else { sin[i] };
                        let ya = xs[a] * cos[i] - xs[b] * sn;
                        let yb = xs[b] * cos[i] + xs[a] * sn;
                        if TRANSPOSE {
                            ys[a] += ya;
                            ys[b] += yb;
                        } else {
                            ys[a] = ya;
                            ys[b] = yb;
                        }
                    }
                    let (xt, yt) = (&xs[table.rotary_dims..], &mut ys[table.rotary_dims..]);
                    if TRANSPOSE {
                        yt.iter_mut().zip(xt).for_each(|(y, &x)| *y += x);
                    } else {
                        yt.copy_from_slice(xt);
                    }
                }
            }
        });
}
