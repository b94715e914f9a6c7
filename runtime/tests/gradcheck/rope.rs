//! RoPE against central differences for every scaling and style, and its frequencies against
//! the Hugging Face init functions.

use super::{check, dot, randn};
use modelspec_dsl::ir::*;
use modelspec_runtime::ops::rope::{self, RopeTable};

/// Every RoPE scaling and style, by label (also the models' RoPE cases).
pub(super) fn rope_variants() -> Vec<(&'static str, Rope)> {
    let base = |scaling: RopeScaling| Rope {
        theta: 500.0,
        fraction: 1.0,
        rotary_dims: 6,
        style: RopeStyle::HalfSplit,
        scaling,
    };
    vec![
        ("none", base(RopeScaling::None)),
        (
            "interleaved",
            Rope {
                style: RopeStyle::Interleaved,
                ..base(RopeScaling::None)
            },
        ),
        (
            "partial",
            Rope {
                rotary_dims: 4,
                fraction: 4.0 / 6.0,
                ..base(RopeScaling::None)
            },
        ),
        (
            "partial_interleaved",
            Rope {
                rotary_dims: 2,
                fraction: 2.0 / 6.0,
                style: RopeStyle::Interleaved,
                ..base(RopeScaling::None)
            },
        ),
        ("linear", base(RopeScaling::Linear { factor: 2.0 })),
        (
            "dynamic_ntk",
            base(RopeScaling::DynamicNtk {
                factor: 2.0,
                original_context: 2,
            }),
        ),
        (
            "yarn",
            base(RopeScaling::Yarn {
                factor: 4.0,
                original_context: 2,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.1386,
                truncate: true,
                mscale: None,
            }),
        ),
        (
            "yarn-untruncated",
            base(RopeScaling::Yarn {
                factor: 4.0,
                original_context: 2,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.1386,
                truncate: false,
                mscale: None,
            }),
        ),
        (
            "llama3",
            base(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 8,
            }),
        ),
        (
            "longrope",
            base(RopeScaling::Longrope {
                short_factor: vec![1.0, 1.5, 2.0],
                long_factor: vec![1.2, 3.0, 5.0],
                original_context: 2,
                attention_factor: 1.2,
            }),
        ),
    ]
}

#[test]
fn rope_op_every_scaling_and_style() {
    let (batch, seq, heads, hd) = (2, 3, 2, 6);
    let x = randn(batch * seq * heads * hd, 1, 1.0);
    let r = randn(x.len(), 2, 1.0);
    for (name, rope_cfg) in rope_variants() {
        let table = RopeTable::<f64>::new(&rope_cfg, seq);
        let f = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            rope::forward(&table, x, heads, hd, &mut y);
            dot(&y, &r)
        };
        let mut dx = vec![0.0; x.len()];
        rope::backward(&table, &r, heads, hd, &mut dx);
        check(&format!("rope[{name}]"), &x, &dx, f);
    }
}

#[test]
fn rope_frequencies_follow_hf_init_functions() {
    let plain = Rope {
        theta: 10000.0,
        fraction: 1.0,
        rotary_dims: 8,
        style: RopeStyle::HalfSplit,
        scaling: RopeScaling::None,
    };
    let (f, m) = rope::inv_freq(&plain, 4);
    assert_eq!(m, 1.0);
    for (i, v) in f.iter().enumerate() {
        assert!((v - 10000f64.powf(-(2.0 * i as f64) / 8.0)).abs() < 1e-15);
    }
    // linear divides by the factor
    let lin = Rope {
        scaling: RopeScaling::Linear { factor: 4.0 },
        ..plain.clone()
    };
    assert!((rope::inv_freq(&lin, 4).0[1] - f[1] / 4.0).abs() < 1e-15);
    // dynamic NTK: unchanged up to the original context, a larger base beyond it
    let dynamic = Rope {
        scaling: RopeScaling::DynamicNtk {
            factor: 2.0,
            original_context: 8,
        },
        ..plain.clone()
    };
    assert_eq!(rope::inv_freq(&dynamic, 8).0, f);
    let base = 10000.0 * ((2.0 * 16.0 / 8.0) - 1.0f64).powf(8.0 / 6.0);
    assert!((rope::inv_freq(&dynamic, 16).0[1] - base.powf(-2.0 / 8.0)).abs() < 1e-15);
    // llama3: high frequencies kept, low frequencies divided by the factor
    let l3 = Rope {
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 64,
        },
        ..plain.clone()
    };
    let g = rope::inv_freq(&l3, 4).0;
    assert_eq!(g[0], f[0]);
    assert!((g[3] - f[3] / 8.0).abs() < 1e-15);
    // longrope: short factors up to the original context, long beyond, attention factor on both
    let lr = Rope {
        scaling: RopeScaling::Longrope {
            short_factor: vec![1.0, 2.0, 3.0, 4.0],
            long_factor: vec![5.0, 6.0, 7.0, 8.0],
            original_context: 8,
            attention_factor: 1.3,
        },
        ..plain.clone()
    };
    let (short, ms) = rope::inv_freq(&lr, 8);
    let (long, ml) = rope::inv_freq(&lr, 9);
    assert!((short[2] - f[2] / 3.0).abs() < 1e-15 && (long[2] - f[2] / 7.0).abs() < 1e-15);
    assert_eq!((ms, ml), (1.3, 1.3));
    // yarn: the highest frequency extrapolates, the lowest interpolates
    let yarn = Rope {
        scaling: RopeScaling::Yarn {
            factor: 4.0,
            original_context: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.2,
            truncate: true,
            mscale: None,
        },
        ..plain
    };
    let (y, my) = rope::inv_freq(&yarn, 4);
    assert_eq!(my, 1.2);
    assert_eq!(y[0], f[0]);
    assert!((y[3] - f[3] / 4.0).abs() < 1e-15);
}
