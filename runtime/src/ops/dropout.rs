//! Inverted dropout with a counter-based mask: element `i` is kept iff
//! `uniform(stream, base + i) ≥ p`, and kept values are scaled by `1 / (1 − p)`.
//!
//! The stream is keyed by `(seed, layer, tensor)` (see [`Dropout::new`]), so a recomputation in a
//! checkpointed backward regenerates exactly the same mask.

use crate::rng;
use crate::tensor::Float;

/// Which tensor a mask belongs to: part of the RNG key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropSite {
    /// After the embedding.
    Embedding = 1,
    /// The attention probabilities.
    AttentionProbs = 2,
    /// The attention branch before the residual add.
    AttentionResidual = 3,
    /// The MLP branch before the residual add.
    MlpResidual = 4,
}

/// A dropout mask generator: probability and RNG stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
    /// The RNG stream.
    pub stream: u64,
}

impl Dropout {
    /// The mask for `site` of `layer` (use `u64::MAX` for sites outside layers) under `seed`;
    /// `None` when `p` is 0.
    pub fn new(p: f64, seed: u64, layer: u64, site: DropSite) -> Option<Dropout> {
        (p > 0.0).then(|| Dropout {
            p,
            stream: rng::key(&[seed, layer, site as u64]),
        })
    }

    /// Is element `index` kept?
    #[inline]
    pub fn keep(&self, index: u64) -> bool {
        rng::uniform(self.stream, index) >= self.p
    }

    /// `x[i] = keep(base + i) ? x[i] / (1 − p) : 0`. Also the backward (the same linear map).
    pub fn apply_inplace<T: Float>(&self, x: &mut [T], base: u64) {
        let s = T::from_f64(1.0 / (1.0 - self.p));
        for (i, v) in x.iter_mut().enumerate() {
            *v = if self.keep(base + i as u64) {
                *v * s
            } else {
                T::ZERO
            };
        }
    }

    /// `dx[i] += keep(i) ? dy[i] / (1 − p) : 0`.
    pub fn backward_acc<T: Float>(&self, dy: &[T], dx: &mut [T]) {
        let s = T::from_f64(1.0 / (1.0 - self.p));
        for (i, (g, &d)) in dx.iter_mut().zip(dy).enumerate() {
            if self.keep(i as u64) {
                *g += d * s;
            }
        }
    }
}
