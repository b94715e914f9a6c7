//! Softcap: `y = c · tanh(x / c)` (Gemma-2's final logits; attention scores use the same formula
//! inside [`super::attention`]).

use crate::tensor::Float;

/// In place: `x = c · tanh(x / c)`.
pub fn forward_inplace<T: Float>(x: &mut [T], cap: f64) {
    let c = T::from_f64(cap);
    for v in x.iter_mut() {
        *v = c * (*v / c).tanh();
    }
}

/// In place on the gradient, from the capped output `y`: `dy · (1 − (y / c)²)`.
pub fn backward_inplace<T: Float>(y: &[T], dy: &mut [T], cap: f64) {
    let c = T::from_f64(cap);
    for (g, &v) in dy.iter_mut().zip(y) {
        let t = v / c;
        *g *= T::ONE - t * t;
    }
}
