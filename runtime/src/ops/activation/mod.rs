//! MLP activations, plain (`act = f(up)`) or gated (`act = f(gate) · up`).
//!
//! `gelu` is the exact erf form `x/2 · (1 + erf(x/√2))`, `gelu_tanh` the tanh approximation
//! `x/2 · (1 + tanh(√(2/π) (x + 0.044715 x³)))`, `silu` is `x · σ(x)`, `relu²` is `max(x, 0)²`.
//!
//! The op's CUDA side sits beside this CPU code: `cuda.rs` (the kernels' activation kinds and the
//! launchers) and `activation.cu` (the kernels).

pub(crate) mod cuda;

use modelspec_dsl::ir::{MlpKind, SwigluClamp};
use rayon::prelude::*;

use crate::tensor::Float;

/// A pointwise activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh-approximated GELU.
    GeluTanh,
    /// SiLU / swish.
    Silu,
    /// Squared ReLU.
    ReluSquared,
}

impl Activation {
    /// The activation an MLP kind applies (to `gate` when gated, else to `up`).
    pub fn of(kind: MlpKind) -> Activation {
        match kind {
            MlpKind::Gelu | MlpKind::Geglu => Activation::Gelu,
            MlpKind::GeluTanh | MlpKind::GegluTanh => Activation::GeluTanh,
            MlpKind::Swiglu => Activation::Silu,
            MlpKind::ReluSquared => Activation::ReluSquared,
        }
    }

    /// `f(x)`.
    #[inline]
    pub fn apply<T: Float>(self, x: T) -> T {
        let half = T::from_f64(0.5);
        match self {
            Activation::Gelu => {
                half * x * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Activation::GeluTanh => {
                let inner = T::from_f64((2.0 / std::f64::consts::PI).sqrt())
                    * (x + T::from_f64(0.044715) * x * x * x);
                half * x * (T::ONE + inner.tanh())
            }
            Activation::Silu => x / (T::ONE + (-x).exp()),
            Activation::ReluSquared => {
                let r = if x > T::ZERO { x } else { T::ZERO };
                r * r
            }
        }
    }

    /// `f'(x)`.
    #[inline]
    pub fn derivative<T: Float>(self, x: T) -> T {
        let half = T::from_f64(0.5);
        match self {
            Activation::Gelu => {
                let cdf =
                    half * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf =
                    T::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt()) * (-half * x * x).exp();
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let k = T::from_f64((2.0 / std::f64::consts::PI).sqrt());
                let c = T::from_f64(0.044715);
                let t = (k * (x + c * x * x * x)).tanh();
                half * (T::ONE + t)
                    + half * x * (T::ONE - t * t) * k * (T::ONE + T::from_f64(3.0) * c * x * x)
            }
            Activation::Silu => {
                let s = T::ONE / (T::ONE + (-x).exp());
                s * (T::ONE + x * (T::ONE - s))
            }
            Activation::ReluSquared => {
                if x > T::ZERO {
                    T::from_f64(2.0) * x
                } else {
                    T::ZERO
                }
            }
        }
    }
}

/// Elements per parallel chunk: pointwise work is split across threads only when large.
const CHUNK: usize = 1 << 14;

/// `out = f(x)`.
pub fn forward<T: Float>(act: Activation, x: &[T], out: &mut [T]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = act.apply(v);
            }
        });
}

/// `dx += dout · f'(x)`.
pub fn backward<T: Float>(act: Activation, x: &[T], dout: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((dx, x), dout)| {
            for ((g, &v), &d) in dx.iter_mut().zip(x).zip(dout) {
                *g += d * act.derivative(v);
            }
        });
}

/// `out = f(gate) · up`.
pub fn forward_gated<T: Float>(act: Activation, gate: &[T], up: &[T], out: &mut [T]) {
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = act.apply(g) * u;
            }
        });
}

/// `dgate += dout · up · f'(gate)`, `dup += dout · f(gate)`.
pub fn backward_gated<T: Float>(
    act: Activation,
    gate: &[T],
    up: &[T],
    dout: &[T],
    dgate: &mut [T],
    dup: &mut [T],
) {
    gated_backward(gate, up, dout, dgate, dup, |g, u, d, dgate, dup| {
        *dgate += d * u * act.derivative(g);
        *dup += d * act.apply(g);
    });
}

/// The elementwise backward of a gated activation, in parallel chunks: `grad(gate, up, dout,
/// &mut dgate, &mut dup)` at every position.
fn gated_backward<T: Float>(
    gate: &[T],
    up: &[T],
    dout: &[T],
    dgate: &mut [T],
    dup: &mut [T],
    grad: impl Fn(T, T, T, &mut T, &mut T) + Sync,
) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(
            gate.par_chunks(CHUNK)
                .zip(up.par_chunks(CHUNK))
                .zip(dout.par_chunks(CHUNK)),
        )
        .for_each(|((dgate, dup), ((gate, up), dout))| {
            for i in 0..dout.len() {
                grad(gate[i], up[i], dout[i], &mut dgate[i], &mut dup[i]);
            }
        });
}

/// `1 / (1 + e^(-x))`.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// GPT-OSS's clamped SwiGLU, `out = (u + 1) · (g · σ(α g))` with `g = min(gate, limit)` and
/// `u = clamp(up, -limit, limit)` (the product in transformers' order).
pub fn forward_clamped<T: Float>(clamp: &SwigluClamp, gate: &[T], up: &[T], out: &mut [T]) {
    let (alpha, limit) = (T::from_f64(clamp.alpha), T::from_f64(clamp.limit));
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                let g = if g > limit { limit } else { g };
                let u = if u > limit {
                    limit
                } else if u < -limit {
                    -limit
                } else {
                    u
                };
                let glu = g * sigmoid(g * alpha);
                *o = (u + T::ONE) * glu;
            }
        });
}

/// Backward of [`forward_clamped`]: `dgate += dout · (u + 1) · d(g σ(α g))/dg` where the gate is
/// below the limit, `dup += dout · g σ(α g)` where the up value is within ±limit (a clamped value
/// passes no gradient, as torch's `clamp`; at the bound itself it passes).
pub fn backward_clamped<T: Float>(
    clamp: &SwigluClamp,
    gate: &[T],
    up: &[T],
    dout: &[T],
    dgate: &mut [T],
    dup: &mut [T],
) {
    let (alpha, limit) = (T::from_f64(clamp.alpha), T::from_f64(clamp.limit));
    gated_backward(gate, up, dout, dgate, dup, |g_in, u_in, d, dgate, dup| {
        let g = if g_in > limit { limit } else { g_in };
        let u_inside = u_in <= limit && u_in >= -limit;
        let u = if u_inside {
            u_in
        } else if u_in > limit {
            limit
        } else {
            -limit
        };
        let s = sigmoid(g * alpha);
        let glu = g * s;
        if g_in <= limit {
            let dglu = s + g * alpha * s * (T::ONE - s);
            *dgate += d * (u + T::ONE) * dglu;
        }
        if u_inside {
            *dup += d * glu;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clamped SwiGLU's backward against central differences in f64, at points inside and
    /// outside both clamps.
    #[test]
    fn clamped_swiglu_backward_matches_finite_differences() {
        let c = SwigluClamp {
            alpha: 1.702,
            limit: 2.0,
        };
        let gate = [-3.0, -0.7, 0.4, 1.9, 2.6, 5.0];
        let up = [0.3, -2.5, 1.1, 2.4, -1.2, -0.4];
        let dout = [0.9, -1.3, 0.5, 1.7, -0.6, 1.1];
        let mut dgate = [0.0f64; 6];
        let mut dup = [0.0f64; 6];
        backward_clamped(&c, &gate, &up, &dout, &mut dgate, &mut dup);
        let f = |g: f64, u: f64| {
            let mut o = [0.0];
            forward_clamped(&c, &[g], &[u], &mut o);
            o[0]
        };
        let h = 1e-6;
        for i in 0..6 {
            let dg = (f(gate[i] + h, up[i]) - f(gate[i] - h, up[i])) / (2.0 * h) * dout[i];
            let du = (f(gate[i], up[i] + h) - f(gate[i], up[i] - h)) / (2.0 * h) * dout[i];
            assert!(
                (dg - dgate[i]).abs() < 1e-6,
                "dgate[{i}] {} vs {dg}",
                dgate[i]
            );
            assert!((du - dup[i]).abs() < 1e-6, "dup[{i}] {} vs {du}", dup[i]);
        }
        // Above the limit the gate passes no gradient; outside ±limit neither does up.
        assert_eq!(dgate[4], 0.0);
        assert_eq!(dup[1], 0.0);
    }
}
