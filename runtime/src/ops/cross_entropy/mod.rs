//! Mean next-token cross-entropy, as HF's causal-LM loss: the logits at position `t` predict the
//! token at `t + 1` of the same sequence; the last position of each sequence has no label. The
//! mean is over the `batch · (seq − 1)` labelled positions (0 when there are none). The row
//! log-sum-exp is formed in the element type, the sum of row losses in `f64`.
//!
//! The op's CUDA side sits beside this CPU code: `cuda.rs` (the launcher, a method of
//! [`Kernels`](crate::cuda::Kernels)) and `cross_entropy.cu` (the kernel).

pub(crate) mod cuda;

use rayon::prelude::*;

use crate::tensor::Float;

/// The loss of `logits: [batch·seq, vocab]` against `tokens` (`batch·seq`).
pub fn forward<T: Float>(logits: &[T], vocab: usize, tokens: &[u32], seq: usize) -> f64 {
    let count = labelled(tokens.len(), seq);
    if count == 0 {
        return 0.0;
    }
    let total: f64 = logits
        .par_chunks_exact(vocab)
        .enumerate()
        .map(|(n, row)| {
            if n % seq == seq - 1 {
                return 0.0;
            }
            let target = tokens[n + 1] as usize;
            (log_sum_exp(row) - row[target]).to_f64()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    total / count as f64
}

/// `dlogits = (softmax(row) − onehot(target)) · scale / count` for labelled rows, 0 elsewhere
/// (overwrites). `scale` is the incoming gradient of the loss (1 for a plain backward).
pub fn backward<T: Float>(
    logits: &[T],
    vocab: usize,
    tokens: &[u32],
    seq: usize,
    scale: f64,
    dlogits: &mut [T],
) {
    let count = labelled(tokens.len(), seq);
    let f = T::from_f64(if count == 0 {
        0.0
    } else {
        scale / count as f64
    });
    dlogits
        .par_chunks_exact_mut(vocab)
        .zip(logits.par_chunks_exact(vocab))
        .enumerate()
        .for_each(|(n, (drow, row))| {
            if n % seq == seq - 1 || count == 0 {
                drow.fill(T::ZERO);
                return;
            }
            let target = tokens[n + 1] as usize;
            let lse = log_sum_exp(row);
            for (d, &v) in drow.iter_mut().zip(row) {
                *d = (v - lse).exp() * f;
            }
            drow[target] -= f;
        });
}

fn labelled(tokens: usize, seq: usize) -> usize {
    tokens.checked_div(seq).map_or(0, |b| b * (seq - 1))
}

fn log_sum_exp<T: Float>(row: &[T]) -> T {
    let max = row.iter().copied().fold(T::NEG_INF, T::max);
    let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}
