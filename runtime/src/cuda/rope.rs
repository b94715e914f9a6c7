//! RoPE cos/sin tables, computed on the host in f64 with HF's formulas for each `rope_type`, then
//! uploaded as f32 `[seq, rotary_dims/2]` for the `rope_{dtype}` kernels.

use modelspec_dsl::ir::{Rope, RopeScaling};

/// Inverse frequencies (`rotary_dims/2` of them) for a sequence of length `seq` (dynamic NTK and
/// LongRoPE depend on it), and the multiplier applied to cos/sin (YaRN, LongRoPE).
pub fn inv_freq(rope: &Rope, seq: usize) -> (Vec<f64>, f64) {
    let dim = rope.rotary_dims as usize;
    let half = dim / 2;
    let base_freqs = |theta: f64| -> Vec<f64> {
        (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
            .collect()
    };
    match &rope.scaling {
        RopeScaling::None => (base_freqs(rope.theta), 1.0),
        RopeScaling::Linear { factor } => (
            base_freqs(rope.theta)
                .into_iter()
                .map(|f| f / factor)
                .collect(),
            1.0,
        ),
        RopeScaling::DynamicNtk {
            factor,
            original_context,
        } => {
            let orig = *original_context as f64;
            let s = seq as f64;
            if s > orig {
                let d = dim as f64;
                let theta = rope.theta * ((factor * s / orig) - (factor - 1.0)).powf(d / (d - 2.0));
                (base_freqs(theta), 1.0)
            } else {
                (base_freqs(rope.theta), 1.0)
            }
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => {
            let orig = *original_context as f64;
            let low_wavelen = orig / low_freq_factor;
            let high_wavelen = orig / high_freq_factor;
            let f = base_freqs(rope.theta)
                .into_iter()
                .map(|inv| {
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    if wavelen > low_wavelen {
                        inv / factor
                    } else if wavelen < high_wavelen {
                        inv
                    } else {
                        let smooth = (orig / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                })
                .collect();
            (f, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attention_factor,
        } => {
            let d = dim as f64;
            let base = rope.theta;
            let orig = *original_context as f64;
            let correction_dim = |rotations: f64| {
                d * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
            };
            let low = correction_dim(*beta_fast).floor().max(0.0);
            let high = correction_dim(*beta_slow).ceil().min(d - 1.0);
            let high = if (high - low).abs() < f64::EPSILON {
                high + 0.001
            } else {
                high
            };
            let f = (0..half)
                .map(|i| {
                    let pos = base.powf((2 * i) as f64 / d);
                    let extrap = 1.0 / pos;
                    let interp = 1.0 / (factor * pos);
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrap_factor = 1.0 - ramp;
                    interp * (1.0 - extrap_factor) + extrap * extrap_factor
                })
                .collect();
            (f, *attention_factor)
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
            let d = dim as f64;
            let f = (0..half)
                .map(|i| {
                    1.0 / (ext.get(i).copied().unwrap_or(1.0) * rope.theta.powf((2 * i) as f64 / d))
                })
                .collect();
            (f, *attention_factor)
        }
    }
}

/// `(cos, sin)`, each `[seq, rotary_dims/2]` row-major f32: angle = position x inv_freq, times
/// the scaling's attention factor.
pub fn tables(rope: &Rope, seq: usize) -> (Vec<f32>, Vec<f32>) {
    let (freqs, mult) = inv_freq(rope, seq);
    let half = freqs.len();
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for t in 0..seq {
        for f in &freqs {
            let a = t as f64 * f;
            cos.push((a.cos() * mult) as f32);
            sin.push((a.sin() * mult) as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelspec_dsl::ir::RopeStyle;

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
