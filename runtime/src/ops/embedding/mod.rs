//! Token embedding: `x[n] = table[token[n]] · scale (+ pos[n mod seq])`.
//!
//! `scale` is the spec's embedding multiplier (Gemma's `sqrt(d_model)`; 1 for most models); `pos`
//! is the learned absolute position table (GPT-2's `wpe`), indexed by the position within each
//! sequence. HF multiplies by the scale in the model dtype; here the scale is rounded to `T` once.
//!
//! The op's CUDA side sits beside this CPU code: `cuda.rs` (the launchers, methods of
//! [`Kernels`](crate::cuda::Kernels)) and `embedding.cu` (the kernels).

pub(crate) mod cuda;

/// Positions at most in one piece of the GPU's deterministic scatter ([`scatter_plan`]).
pub const SCATTER_PIECE: usize = 32;

/// The schedule of the GPU's deterministic embedding backward for one batch of `n` tokens (one
/// i32 buffer, uploaded with the batch; `3n + 4` words whatever the tokens):
/// - `[0]` K, the pieces; `[1]` U, the distinct tokens;
/// - `order` (`n` words from 2): the positions sorted by token, then position;
/// - `piece` (`n + 1` words from `2 + n`): piece k is `order[piece[k]..piece[k + 1]]`, one
///   token's positions, at most [`SCATTER_PIECE`] of them (a token's pieces follow each other);
/// - `first` (`n + 1` words from `3 + 2n`): token u's pieces are `first[u]..first[u + 1]`.
///
/// The kernels sum each piece's rows in position order, then each token's pieces in order onto
/// its row of the gradient: the same order whatever the GPU's timing, so the table's gradient is
/// the same bits from run to run (atomics add in arrival order), and no block sums more than
/// [`SCATTER_PIECE`] rows of a frequent token.
pub fn scatter_plan(tokens: &[u32]) -> Vec<i32> {
    let n = tokens.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_unstable_by_key(|&p| (tokens[p as usize], p));
    let (mut piece, mut first) = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
    let mut j = 0;
    while j < n {
        let tok = tokens[order[j] as usize];
        first.push(piece.len() as i32);
        let end = j + order[j..].partition_point(|&p| tokens[p as usize] == tok);
        while j < end {
            piece.push(j as i32);
            j = (j + SCATTER_PIECE).min(end);
        }
    }
    let (k, u) = (piece.len(), first.len());
    piece.push(n as i32);
    first.push(k as i32);
    let mut words = Vec::with_capacity(3 * n + 4);
    words.extend([k as i32, u as i32]);
    words.extend(order.iter().map(|&p| p as i32));
    for part in [piece, first] {
        let used = part.len();
        words.extend(part);
        // Unused entries repeat the end: no block reads them (blocks past K or U return).
        words.extend(std::iter::repeat_n(
            *words.last().unwrap_or(&0),
            n + 1 - used,
        ));
    }
    words
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_plan_groups_tokens_into_bounded_pieces() {
        // Token 7 at 70 positions (three pieces), token 2 at two, token 5 once.
        let mut tokens = vec![7u32; 70];
        tokens[3] = 2;
        tokens[40] = 5;
        tokens[69] = 2;
        let n = tokens.len();
        let w = scatter_plan(&tokens);
        assert_eq!(w.len(), 3 * n + 4);
        let (k, u) = (w[0] as usize, w[1] as usize);
        let order = &w[2..2 + n];
        let piece = &w[2 + n..3 + 2 * n];
        let first = &w[3 + 2 * n..];
        // Distinct tokens in ascending order: 2, 5, 7; token 7's 68 positions in 32 + 32 + 4.
        assert_eq!(u, 3);
        assert_eq!(k, 1 + 1 + 3);
        assert_eq!(&first[..=u], &[0, 1, 2, 5]);
        assert_eq!(&piece[..=k], &[0, 2, 3, 35, 67, 70]);
        assert_eq!(&order[..3], &[3, 69, 40]);
        // Every position once; within a token, in position order; every piece one token.
        let mut seen: Vec<i32> = order.to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (0..n as i32).collect::<Vec<_>>());
        for p in piece[..=k].windows(2) {
            let rows = &order[p[0] as usize..p[1] as usize];
            assert!(!rows.is_empty() && rows.len() <= SCATTER_PIECE);
            assert!(rows.windows(2).all(|r| r[0] < r[1]));
            assert!(
                rows.iter()
                    .all(|&r| tokens[r as usize] == tokens[rows[0] as usize])
            );
        }
    }

    #[test]
    fn scatter_plan_of_distinct_tokens_is_one_piece_each() {
        let tokens = [4u32, 1, 3];
        let w = scatter_plan(&tokens);
        assert_eq!(&w[..2], &[3, 3]);
        assert_eq!(&w[2..5], &[1, 2, 0]);
        assert_eq!(&w[5..9], &[0, 1, 2, 3]);
        assert_eq!(&w[9..13], &[0, 1, 2, 3]);
    }
}
