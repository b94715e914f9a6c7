//! The layout moves of multi-head latent attention (DeepSeek-V2/V3): the per-head keys and values
//! attention reads, taken from the latent's up-projection and the shared rotary key, and the
//! gradients back.
//!
//! With `kv: [rows, heads·(nope + v)]` (per head: its key part, then its value) and the rotated
//! shared key `k_rope: [rows, rope]`:
//! ```text
//! k[r, h] = [kv[r, h, ..nope]; k_rope[r]]        [rows, heads·(nope + rope)]
//! v[r, h] = kv[r, h, nope..]                      [rows, heads·v]
//! ```
//! Backward scatters `dk`'s and `dv`'s parts into `dkv` and sums `dk`'s rotary parts over the
//! heads, in head order, into `dk_rope`.

use crate::tensor::Float;

/// Sizes of one layer's latent attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    /// Heads.
    pub heads: usize,
    /// Query/key dims per head without RoPE.
    pub nope: usize,
    /// Query/key dims per head with RoPE (the shared key's width).
    pub rope: usize,
    /// Value dims per head.
    pub v: usize,
}

impl MlaDims {
    /// Width of one head of `kv`.
    fn kv_head(&self) -> usize {
        self.nope + self.v
    }
    /// Width of one head of the keys.
    fn k_head(&self) -> usize {
        self.nope + self.rope
    }
}

/// Columns `from..from + width` of each row of `x` (rows `stride` wide), as a `[rows, width]`
/// tensor.
pub fn columns<T: Float>(x: &[T], stride: usize, from: usize, width: usize) -> Vec<T> {
    x.chunks_exact(stride)
        .flat_map(|row| row[from..from + width].iter().copied())
        .collect()
}

/// Adds `src: [rows, width]` into columns `from..from + width` of each row of `dst` (rows
/// `stride` wide).
pub fn add_columns<T: Float>(dst: &mut [T], stride: usize, from: usize, src: &[T]) {
    let width = src.len() / (dst.len() / stride).max(1);
    for (row, s) in dst.chunks_exact_mut(stride).zip(src.chunks_exact(width)) {
        for (d, &v) in row[from..from + width].iter_mut().zip(s) {
            *d += v;
        }
    }
}

/// The per-head keys from `kv` and the rotated shared key.
pub fn keys<T: Float>(dims: MlaDims, kv: &[T], k_rope: &[T]) -> Vec<T> {
    let (kvh, kh) = (dims.kv_head(), dims.k_head());
    let mut out = Vec::with_capacity(k_rope.len() / dims.rope.max(1) * dims.heads * kh);
    for (row, pe) in kv
        .chunks_exact(dims.heads * kvh)
        .zip(k_rope.chunks_exact(dims.rope))
    {
        for h in 0..dims.heads {
            out.extend_from_slice(&row[h * kvh..h * kvh + dims.nope]);
            out.extend_from_slice(pe);
        }
    }
    out
}

/// The per-head values from `kv`.
pub fn values<T: Float>(dims: MlaDims, kv: &[T]) -> Vec<T> {
    let kvh = dims.kv_head();
    let mut out = Vec::with_capacity(kv.len() / kvh * dims.v);
    for row in kv.chunks_exact(dims.heads * kvh) {
        for h in 0..dims.heads {
            out.extend_from_slice(&row[h * kvh + dims.nope..(h + 1) * kvh]);
        }
    }
    out
}

/// Accumulates `dkv` (`[rows, heads·(nope + v)]`) and `dk_rope` (`[rows, rope]`) from the keys'
/// and values' gradients.
pub fn backward<T: Float>(dims: MlaDims, dk: &[T], dv: &[T], dkv: &mut [T], dk_rope: &mut [T]) {
    let (kvh, kh) = (dims.kv_head(), dims.k_head());
    for (((dkr, dvr), dkvr), dper) in dk
        .chunks_exact(dims.heads * kh)
        .zip(dv.chunks_exact(dims.heads * dims.v))
        .zip(dkv.chunks_exact_mut(dims.heads * kvh))
        .zip(dk_rope.chunks_exact_mut(dims.rope))
    {
        for h in 0..dims.heads {
            let (k_h, v_h) = (
                &dkr[h * kh..(h + 1) * kh],
                &dvr[h * dims.v..(h + 1) * dims.v],
            );
            let dst = &mut dkvr[h * kvh..(h + 1) * kvh];
            for (d, &g) in dst[..dims.nope].iter_mut().zip(&k_h[..dims.nope]) {
                *d += g;
            }
            for (d, &g) in dst[dims.nope..].iter_mut().zip(v_h) {
                *d += g;
            }
            for (d, &g) in dper.iter_mut().zip(&k_h[dims.nope..]) {
                *d += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_backward_are_transposes() {
        let dims = MlaDims {
            heads: 3,
            nope: 2,
            rope: 2,
            v: 3,
        };
        let rows = 2;
        let kv: Vec<f64> = (0..rows * 3 * 5).map(|i| i as f64).collect();
        let pe: Vec<f64> = (0..rows * 2).map(|i| 100.0 + i as f64).collect();
        let k = keys(dims, &kv, &pe);
        let v = values(dims, &kv);
        assert_eq!(&k[..8], &[0.0, 1.0, 100.0, 101.0, 5.0, 6.0, 100.0, 101.0]);
        assert_eq!(&v[..6], &[2.0, 3.0, 4.0, 7.0, 8.0, 9.0]);
        // <keys(kv, pe), a> + <values(kv), b> = <kv, dkv> + <pe, dpe> for the backward's dkv, dpe.
        let a: Vec<f64> = (0..k.len()).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..v.len()).map(|i| (i as f64 * 0.71).cos()).collect();
        let (mut dkv, mut dpe) = (vec![0.0; kv.len()], vec![0.0; pe.len()]);
        backward(dims, &a, &b, &mut dkv, &mut dpe);
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
        let lhs = dot(&k, &a) + dot(&v, &b);
        let rhs = dot(&kv, &dkv) + dot(&pe, &dpe);
        assert!(
            (lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    #[test]
    fn columns_round_trip() {
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let c = columns(&x, 4, 1, 2);
        assert_eq!(c, vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
        let mut back = vec![0.0f32; 12];
        add_columns(&mut back, 4, 1, &c);
        assert_eq!(back[1..3], [1.0, 2.0]);
        assert_eq!(back[0], 0.0);
    }
}
