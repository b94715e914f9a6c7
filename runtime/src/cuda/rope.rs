//! RoPE cos/sin tables for the `rope_{dtype}` kernels: the CPU runtime's [`RopeTable`] (HF's
//! formulas for each `rope_type`, computed once in `ops::rope`), uploaded as f32
//! `[seq, rotary_dims/2]`. Sharing the table keeps the GPU's angles bit-identical to the CPU's.

use modelspec_dsl::ir::Rope;

use crate::ops::rope::RopeTable;

/// `(cos, sin)`, each `[seq, rotary_dims/2]` row-major f32: angle = position × inv_freq, times
/// the scaling's attention factor.
pub fn tables(rope: &Rope, seq: usize) -> (Vec<f32>, Vec<f32>) {
    let table = RopeTable::<f32>::new(rope, seq);
    (table.cos, table.sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rope::inv_freq;
    use modelspec_dsl::ir::{RopeScaling, RopeStyle};

    fn rope(scaling: RopeScaling) -> Rope {
        Rope {
            theta: 10000.0,
            fraction: 1.0,
            rotary_dims: 64,
            style: RopeStyle::HalfSplit,
            scaling,
        }
    }

    #[test]
    fn plain_rope_first_and_last_frequency() {
        let (f, m) = inv_freq(&rope(RopeScaling::None), 16);
        assert_eq!(f.len(), 32);
        assert!((f[0] - 1.0).abs() < 1e-15);
        assert!((f[31] - 10000f64.powf(-62.0 / 64.0)).abs() < 1e-15);
        assert_eq!(m, 1.0);
    }

    #[test]
    fn llama3_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        };
        let (f, _) = inv_freq(&rope(s), 16);
        let (p, _) = inv_freq(&rope(RopeScaling::None), 16);
        assert_eq!(f[0], p[0]);
        assert!((f[31] - p[31] / 8.0).abs() < 1e-18);
    }

    #[test]
    fn tables_are_rotations() {
        let (c, s) = tables(&rope(RopeScaling::None), 5);
        for (a, b) in c.iter().zip(&s) {
            assert!((a * a + b * b - 1.0).abs() < 1e-5);
        }
        assert_eq!(c.len(), 5 * 32);
    }
}
