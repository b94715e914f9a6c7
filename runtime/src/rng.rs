//! Counter-based random numbers: a value is a pure function of its key, never of hidden state.
//!
//! Dropout masks are keyed by `(seed, layer, tensor, element index)` and parameter initialisation
//! by `(seed, parameter name, element index)`, so recomputing a tensor during checkpointed backward
//! regenerates exactly the same mask, and results do not depend on thread scheduling.
//! The mixer is SplitMix64's finaliser, applied to a chained combination of the key parts.

/// SplitMix64's finaliser: a bijective 64-bit mixer with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stream key: combine key parts into one 64-bit stream id.
#[inline]
pub fn key(parts: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C908u64;
    for &p in parts {
        h = mix64(h ^ p);
    }
    h
}

/// FNV-1a hash of a string, for keying streams by name.
pub fn hash_str(s: &str) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The `index`-th 64 random bits of stream `stream`.
#[inline]
pub fn bits(stream: u64, index: u64) -> u64 {
    mix64(stream ^ mix64(index))
}

/// A uniform number in `[0, 1)` with 53 bits of precision: element `index` of stream `stream`.
#[inline]
pub fn uniform(stream: u64, index: u64) -> f64 {
    (bits(stream, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal number (Box–Muller over two uniforms of the element's own counter).
pub fn normal(stream: u64, index: u64) -> f64 {
    let u1 = uniform(stream, 2 * index);
    let u2 = uniform(stream, 2 * index + 1);
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    r * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_deterministic_and_spread() {
        let s = key(&[1, 2, 3]);
        let a: Vec<f64> = (0..1000).map(|i| uniform(s, i)).collect();
        let b: Vec<f64> = (0..1000).map(|i| uniform(s, i)).collect();
        assert_eq!(a, b);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
        assert_ne!(uniform(key(&[1, 2, 4]), 0), uniform(s, 0));
    }

    #[test]
    fn normal_has_unit_variance() {
        let s = key(&[7]);
        let xs: Vec<f64> = (0..20000).map(|i| normal(s, i)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
