//! A dense MLP: `out = down(f(gate(x)) · up(x))` when gated, `down(f(up(x)))` when not.
//!
//! Split into the stages whose outputs are the layer's named tensors (`gate`, `up`, `act`,
//! `mlp_out`), so the executor can save or recompute each; MoE experts and shared experts use the
//! same stages.

use modelspec_dsl::ir::{MlpKind, SwigluClamp};

use super::activation::{self, Activation};
use super::linear;
use crate::tensor::Float;

/// A weight matrix `[out, in]` and its optional bias.
pub type Proj<'a, T> = (&'a [T], Option<&'a [T]>);
/// Gradient buffers of a [`Proj`].
pub type ProjGrad<'a, T> = (&'a mut [T], Option<&'a mut [T]>);

/// The weights of one MLP.
#[derive(Debug, Clone, Copy)]
pub struct MlpRef<'a, T> {
    /// Activation structure.
    pub kind: MlpKind,
    /// Input/output width.
    pub d: usize,
    /// Hidden width.
    pub hidden: usize,
    /// `gate: [hidden, d]` (gated kinds only).
    pub gate: Option<Proj<'a, T>>,
    /// `up: [hidden, d]`.
    pub up: Proj<'a, T>,
    /// `down: [d, hidden]`.
    pub down: Proj<'a, T>,
    /// GPT-OSS's clamped SwiGLU instead of the plain one (`kind` is then `Swiglu`).
    pub clamp: Option<SwigluClamp>,
}

/// Gradient buffers of one MLP, accumulated into.
#[derive(Debug)]
pub struct MlpGrad<'a, T> {
    /// Of `gate`.
    pub gate: Option<ProjGrad<'a, T>>,
    /// Of `up`.
    pub up: ProjGrad<'a, T>,
    /// Of `down`.
    pub down: ProjGrad<'a, T>,
}

/// `gate = x·Wgᵀ + bg` (gated kinds), `up = x·Wuᵀ + bu`; `x: [rows, d]`, outputs `[rows, hidden]`.
pub fn project<T: Float>(
    m: &MlpRef<'_, T>,
    x: &[T],
    rows: usize,
    gate: Option<&mut [T]>,
    up: &mut [T],
) {
    if let (Some((w, b)), Some(g)) = (m.gate, gate) {
        linear::forward(x, rows, m.d, w, b, m.hidden, g);
    }
    linear::forward(x, rows, m.d, m.up.0, m.up.1, m.hidden, up);
}

/// `act = f(gate) · up` or `f(up)`.
pub fn activate<T: Float>(m: &MlpRef<'_, T>, gate: Option<&[T]>, up: &[T], act: &mut [T]) {
    let f = Activation::of(m.kind);
    match gate {
        Some(g) if m.kind.is_gated() => match &m.clamp {
            Some(c) => activation::forward_clamped(c, g, up, act),
            None => activation::forward_gated(f, g, up, act),
        },
        _ => activation::forward(f, up, act),
    }
}

/// `out = act·Wdᵀ + bd`, `out: [rows, d]`.
pub fn down<T: Float>(m: &MlpRef<'_, T>, act: &[T], rows: usize, out: &mut [T]) {
    linear::forward(act, rows, m.hidden, m.down.0, m.down.1, m.d, out);
}

/// [`down`] into a new `[rows, d]` buffer (not zeroed first; same bits).
pub fn down_new<T: Float>(m: &MlpRef<'_, T>, act: &[T], rows: usize) -> Vec<T> {
    linear::forward_new(act, rows, m.hidden, m.down.0, m.down.1, m.d)
}

/// Backward through all three stages: accumulates weight gradients into `g` and `dx`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    m: &MlpRef<'_, T>,
    x: &[T],
    gate: Option<&[T]>,
    up: &[T],
    act: &[T],
    dout: &[T],
    rows: usize,
    g: MlpGrad<'_, T>,
    dx: &mut [T],
) {
    let n = rows * m.hidden;
    let mut dact = vec![T::ZERO; n];
    let (dwd, dbd) = g.down;
    linear::backward(
        act,
        dout,
        rows,
        m.hidden,
        m.d,
        m.down.0,
        Some(&mut dact),
        dwd,
        dbd,
    );
    let f = Activation::of(m.kind);
    let mut dup = vec![T::ZERO; n];
    if m.kind.is_gated() {
        let gate = gate.expect("gated MLP without gate activations");
        let mut dgate = vec![T::ZERO; n];
        match &m.clamp {
            Some(c) => activation::backward_clamped(c, gate, up, &dact, &mut dgate, &mut dup),
            None => activation::backward_gated(f, gate, up, &dact, &mut dgate, &mut dup),
        }
        if let (Some((wg, _)), Some((dwg, dbg))) = (m.gate, g.gate) {
            linear::backward(x, &dgate, rows, m.d, m.hidden, wg, Some(&mut *dx), dwg, dbg);
        }
    } else {
        activation::backward(f, up, &dact, &mut dup);
    }
    let (dwu, dbu) = g.up;
    linear::backward(x, &dup, rows, m.d, m.hidden, m.up.0, Some(dx), dwu, dbu);
}
