//! Finite-difference gradient checks in f64: every op on its own against central differences,
//! then whole tiny models of every variant the IR expresses.

mod common;

use common::*;
use modelspec_dsl::ir::*;
use modelspec_runtime::exec::{Executor, Policy};
use modelspec_runtime::ops::activation::{self, Activation};
use modelspec_runtime::ops::attention::{self, AttentionCfg};
use modelspec_runtime::ops::dropout::{DropSite, Dropout};
use modelspec_runtime::ops::mlp::{self, MlpGrad, MlpRef};
use modelspec_runtime::ops::rope::{self, RopeTable};
use modelspec_runtime::ops::{cross_entropy, embedding, linear, moe, norm, softcap};
use modelspec_runtime::{Error, Params, rng};

const EPS: f64 = 1e-6;

fn randn(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let s = rng::key(&[seed, 777]);
    (0..n).map(|i| scale * rng::normal(s, i as u64)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares `analytic` with central differences of `f` at `x` (every coordinate).
fn check(what: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut worst = 0.0f64;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + EPS;
        let fp = f(&xp);
        xp[i] = x[i] - EPS;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * EPS);
        let err = (fd - analytic[i]).abs() / (1e-3 + fd.abs().max(analytic[i].abs()));
        worst = worst.max(err);
        assert!(
            (fd - analytic[i]).abs() <= 1e-7 + 1e-5 * fd.abs().max(analytic[i].abs()),
            "{what}[{i}]: finite difference {fd} vs analytic {}",
            analytic[i]
        );
    }
    println!(
        "{what}: {} coordinates, worst relative error {worst:.2e}",
        x.len()
    );
}

#[test]
fn linear_op() {
    let (rows, i, o) = (5, 3, 4);
    let x = randn(rows * i, 1, 1.0);
    let w = randn(o * i, 2, 1.0);
    let b = randn(o, 3, 1.0);
    let r = randn(rows * o, 4, 1.0);
    let f = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; rows * o];
        linear::forward(x, rows, i, w, Some(b), o, &mut y);
        dot(&y, &r)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; b.len()]);
    linear::backward(
        &x,
        &r,
        rows,
        i,
        o,
        &w,
        Some(&mut dx),
        &mut dw,
        Some(&mut db),
    );
    check("linear.dx", &x, &dx, |v| f(v, &w, &b));
    check("linear.dw", &w, &dw, |v| f(&x, v, &b));
    check("linear.db", &b, &db, |v| f(&x, &w, v));
}

#[test]
fn embedding_op() {
    let (d, seq) = (3, 4);
    let tokens = [0u32, 2, 2, 1, 3, 0, 1, 1];
    let table = randn(4 * d, 1, 1.0);
    let pos = randn(seq * d, 2, 1.0);
    let r = randn(tokens.len() * d, 3, 1.0);
    for scale in [1.0, 1.7] {
        let f = |t: &[f64], p: &[f64]| {
            let mut y = vec![0.0; tokens.len() * d];
            embedding::forward(&tokens, t, d, scale, Some(p), seq, &mut y);
            dot(&y, &r)
        };
        let (mut dt, mut dp) = (vec![0.0; table.len()], vec![0.0; pos.len()]);
        embedding::backward(&tokens, &r, d, scale, seq, &mut dt, Some(&mut dp));
        check("embedding.dtable", &table, &dt, |v| f(v, &pos));
        check("embedding.dpos", &pos, &dp, |v| f(&table, v));
    }
}

#[test]
fn norm_op_every_kind() {
    let (rows, width) = (3, 6);
    let x: Vec<f64> = randn(rows * width, 1, 1.0)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let w = randn(width, 2, 0.3);
    let b = randn(width, 3, 0.3);
    let r = randn(rows * width, 4, 1.0);
    for kind in [NormKind::Rms, NormKind::Layer] {
        for offset in [0.0, 1.0] {
            for (weight, bias) in [(true, true), (true, false), (false, false)] {
                if bias && kind == NormKind::Rms {
                    continue;
                }
                let n = Norm {
                    kind,
                    eps: 1e-5,
                    offset,
                    weight,
                    bias,
                };
                let f = |x: &[f64], w: &[f64], b: &[f64]| {
                    let mut y = vec![0.0; x.len()];
                    norm::forward(x, width, &n, weight.then_some(w), bias.then_some(b), &mut y);
                    dot(&y, &r)
                };
                let (mut dx, mut dw, mut db) =
                    (vec![0.0; x.len()], vec![0.0; width], vec![0.0; width]);
                norm::backward(
                    &x,
                    &r,
                    width,
                    &n,
                    weight.then_some(&w[..]),
                    &mut dx,
                    Some(&mut dw),
                    Some(&mut db),
                );
                let what = format!("norm[{kind:?} offset {offset} weight {weight} bias {bias}]");
                check(&format!("{what}.dx"), &x, &dx, |v| f(v, &w, &b));
                if weight {
                    check(&format!("{what}.dw"), &w, &dw, |v| f(&x, v, &b));
                }
                if bias {
                    check(&format!("{what}.db"), &b, &db, |v| f(&x, &w, v));
                }
            }
        }
    }
}

#[test]
fn activation_ops_plain_and_gated() {
    let x = randn(20, 1, 1.5);
    let u = randn(20, 2, 1.0);
    let r = randn(20, 3, 1.0);
    for act in [
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::ReluSquared,
    ] {
        let f = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            activation::forward(act, x, &mut y);
            dot(&y, &r)
        };
        let mut dx = vec![0.0; x.len()];
        activation::backward(act, &x, &r, &mut dx);
        check(&format!("{act:?}"), &x, &dx, f);
        let fg = |g: &[f64], u: &[f64]| {
            let mut y = vec![0.0; g.len()];
            activation::forward_gated(act, g, u, &mut y);
            dot(&y, &r)
        };
        let (mut dg, mut du) = (vec![0.0; 20], vec![0.0; 20]);
        activation::backward_gated(act, &x, &u, &r, &mut dg, &mut du);
        check(&format!("{act:?}.gated.dgate"), &x, &dg, |v| fg(v, &u));
        check(&format!("{act:?}.gated.dup"), &u, &du, |v| fg(&x, v));
    }
}

#[test]
fn mlp_op_gated_and_plain() {
    let (rows, d, hidden) = (3, 4, 5);
    for kind in [MlpKind::Gelu, MlpKind::Swiglu] {
        let x = randn(rows * d, 1, 1.0);
        let wg = randn(hidden * d, 2, 0.5);
        let bg = randn(hidden, 3, 0.2);
        let wu = randn(hidden * d, 4, 0.5);
        let bu = randn(hidden, 5, 0.2);
        let wd = randn(d * hidden, 6, 0.5);
        let bd = randn(d, 7, 0.2);
        let r = randn(rows * d, 8, 1.0);
        let run = |x: &[f64], wg: &[f64], wu: &[f64], wd: &[f64]| {
            let m = MlpRef {
                kind,
                d,
                hidden,
                gate: kind.is_gated().then_some((wg, Some(&bg[..]))),
                up: (wu, Some(&bu[..])),
                down: (wd, Some(&bd[..])),
                clamp: None,
            };
            let mut gate = vec![0.0; rows * hidden];
            let mut up = vec![0.0; rows * hidden];
            mlp::project(&m, x, rows, Some(&mut gate), &mut up);
            let mut act = vec![0.0; rows * hidden];
            mlp::activate(&m, Some(&gate), &up, &mut act);
            let mut out = vec![0.0; rows * d];
            mlp::down(&m, &act, rows, &mut out);
            (gate, up, act, out)
        };
        let f = |x: &[f64], wg: &[f64], wu: &[f64], wd: &[f64]| dot(&run(x, wg, wu, wd).3, &r);
        let (gate, up, act, _) = run(&x, &wg, &wu, &wd);
        let m = MlpRef {
            kind,
            d,
            hidden,
            gate: kind.is_gated().then_some((&wg[..], Some(&bg[..]))),
            up: (&wu[..], Some(&bu[..])),
            down: (&wd[..], Some(&bd[..])),
            clamp: None,
        };
        let (mut dwg, mut dbg, mut dwu, mut dbu, mut dwd, mut dbd) = (
            vec![0.0; wg.len()],
            vec![0.0; hidden],
            vec![0.0; wu.len()],
            vec![0.0; hidden],
            vec![0.0; wd.len()],
            vec![0.0; d],
        );
        let mut dx = vec![0.0; x.len()];
        let grads = MlpGrad {
            gate: kind
                .is_gated()
                .then_some((&mut dwg[..], Some(&mut dbg[..]))),
            up: (&mut dwu[..], Some(&mut dbu[..])),
            down: (&mut dwd[..], Some(&mut dbd[..])),
        };
        mlp::backward(&m, &x, Some(&gate), &up, &act, &r, rows, grads, &mut dx);
        check(&format!("mlp[{kind:?}].dx"), &x, &dx, |v| {
            f(v, &wg, &wu, &wd)
        });
        if kind.is_gated() {
            check(&format!("mlp[{kind:?}].dwg"), &wg, &dwg, |v| {
                f(&x, v, &wu, &wd)
            });
        }
        check(&format!("mlp[{kind:?}].dwu"), &wu, &dwu, |v| {
            f(&x, &wg, v, &wd)
        });
        check(&format!("mlp[{kind:?}].dwd"), &wd, &dwd, |v| {
            f(&x, &wg, &wu, v)
        });
    }
}

fn rope_variants() -> Vec<(&'static str, Rope)> {
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

fn attention_cfgs() -> Vec<(&'static str, AttentionCfg)> {
    let base = AttentionCfg {
        batch: 2,
        seq: 5,
        heads: 4,
        kv_heads: 2,
        head_dim: 3,
        scale: 0.6,
        softcap: None,
        window: None,
        alibi: None,
        dropout: None,
        chunk: None,
        sinks: None,
        temperature: None,
        v_head_dim: None,
    };
    vec![
        ("gqa", base.clone()),
        (
            "mha",
            AttentionCfg {
                kv_heads: 4,
                ..base.clone()
            },
        ),
        (
            "mqa",
            AttentionCfg {
                kv_heads: 1,
                ..base.clone()
            },
        ),
        (
            "window",
            AttentionCfg {
                window: Some(2),
                ..base.clone()
            },
        ),
        (
            "softcap",
            AttentionCfg {
                softcap: Some(1.5),
                ..base.clone()
            },
        ),
        (
            "alibi",
            AttentionCfg {
                alibi: Some(attention::alibi_slopes(4)),
                ..base.clone()
            },
        ),
        (
            "dropout",
            AttentionCfg {
                dropout: Dropout::new(0.3, 7, 0, DropSite::AttentionProbs),
                ..base.clone()
            },
        ),
        (
            "everything",
            AttentionCfg {
                window: Some(3),
                softcap: Some(2.0),
                alibi: Some(attention::alibi_slopes(4)),
                dropout: Dropout::new(0.2, 9, 1, DropSite::AttentionProbs),
                ..base
            },
        ),
    ]
}

#[test]
fn attention_op_every_variant() {
    for (name, cfg) in attention_cfgs() {
        let rows = cfg.batch * cfg.seq;
        let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let q = randn(rows * qd, 1, 1.0);
        let k = randn(rows * kvd, 2, 1.0);
        let v = randn(rows * kvd, 3, 1.0);
        let r = randn(rows * qd, 4, 1.0);
        let f = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut o = vec![0.0; rows * qd];
            attention::forward(&cfg, q, k, v, &mut o);
            dot(&o, &r)
        };
        if cfg.dropout.is_none() {
            let mut o = vec![0.0; rows * qd];
            attention::forward(&cfg, &q, &k, &v, &mut o);
            let want = naive_attention(&cfg, &q, &k, &v);
            assert!(
                o.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
                "{name}: forward differs from the formula"
            );
        }
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention::backward(&cfg, &q, &k, &v, &r, &mut dq, &mut dk, &mut dv);
        check(&format!("attention[{name}].dq"), &q, &dq, |x| f(x, &k, &v));
        check(&format!("attention[{name}].dk"), &k, &dk, |x| f(&q, x, &v));
        check(&format!("attention[{name}].dv"), &v, &dv, |x| f(&q, &k, x));
    }
}

/// Direct evaluation of the attention formula, for comparison.
fn naive_attention(cfg: &AttentionCfg, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let (t, hd) = (cfg.seq, cfg.head_dim);
    let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
    let mut out = vec![0.0; cfg.batch * t * qd];
    for b in 0..cfg.batch {
        for h in 0..cfg.heads {
            let g = h / (cfg.heads / cfg.kv_heads);
            for i in 0..t {
                let visible: Vec<usize> = (0..=i)
                    .filter(|&j| cfg.window.is_none_or(|w| i < j + w))
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let qk: f64 = (0..hd)
                            .map(|c| {
                                q[(b * t + i) * qd + h * hd + c] * k[(b * t + j) * kvd + g * hd + c]
                            })
                            .sum();
                        let alibi = cfg.alibi.as_ref().map_or(0.0, |s| {
                            attention::round_bf16(s[h] as f32 * j as f32) as f64
                        });
                        let s = cfg.scale * (qk + alibi);
                        cfg.softcap.map_or(s, |c| c * (s / c).tanh())
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (&j, s) in visible.iter().zip(&scores) {
                    let p = (s - max).exp() / z;
                    for c in 0..hd {
                        out[(b * t + i) * qd + h * hd + c] += p * v[(b * t + j) * kvd + g * hd + c];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn attention_long_sequences_span_several_blocks() {
    for window in [None, Some(40)] {
        let cfg = AttentionCfg {
            batch: 1,
            seq: 150,
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            scale: 0.8,
            softcap: Some(3.0),
            window,
            alibi: Some(attention::alibi_slopes(2)),
            dropout: None,
            chunk: None,
            sinks: None,
            temperature: None,
            v_head_dim: None,
        };
        let rows = cfg.seq;
        let q = randn(rows * 4, 1, 1.0);
        let k = randn(rows * 2, 2, 1.0);
        let v = randn(rows * 2, 3, 1.0);
        let r = randn(rows * 4, 4, 1.0);
        let mut o = vec![0.0; rows * 4];
        attention::forward(&cfg, &q, &k, &v, &mut o);
        let want = naive_attention(&cfg, &q, &k, &v);
        for (a, b) in o.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let f = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut o = vec![0.0; rows * 4];
            attention::forward(&cfg, q, k, v, &mut o);
            dot(&o, &r)
        };
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention::backward(&cfg, &q, &k, &v, &r, &mut dq, &mut dk, &mut dv);
        let what = format!("attention[seq 150, window {window:?}]");
        check(&format!("{what}.dq"), &q, &dq, |x| f(x, &k, &v));
        check(&format!("{what}.dk"), &k, &dk, |x| f(&q, x, &v));
        check(&format!("{what}.dv"), &v, &dv, |x| f(&q, &k, x));
    }
}

#[test]
fn attention_masks_follow_hf_sliding_window() {
    // With v = one-hot positions, the output row i is the attention distribution of query i.
    let seq = 6;
    let cfg = AttentionCfg {
        batch: 1,
        seq,
        heads: 1,
        kv_heads: 1,
        head_dim: seq,
        scale: 1.0,
        softcap: None,
        window: Some(3),
        alibi: None,
        dropout: None,
        chunk: None,
        sinks: None,
        temperature: None,
        v_head_dim: None,
    };
    let q = randn(seq * seq, 1, 1.0);
    let k = randn(seq * seq, 2, 1.0);
    let mut v = vec![0.0; seq * seq];
    for i in 0..seq {
        v[i * seq + i] = 1.0;
    }
    let mut o = vec![0.0; seq * seq];
    attention::forward(&cfg, &q, &k, &v, &mut o);
    for i in 0..seq {
        let row = &o[i * seq..(i + 1) * seq];
        for (j, &p) in row.iter().enumerate() {
            let visible = j <= i && i < j + 3;
            assert_eq!(p > 0.0, visible, "query {i} key {j}: {p}");
        }
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn moe_router_both_orders_with_aux() {
    let (rows, e) = (5, 4);
    let logits = randn(rows * e, 1, 1.0);
    for (router, renorm) in [
        (RouterOrder::SoftmaxTopk, true),
        (RouterOrder::SoftmaxTopk, false),
        (RouterOrder::TopkSoftmax, false),
    ] {
        let m = Moe {
            experts: e as u64,
            top_k: 2,
            expert: Mlp {
                activation: MlpKind::Swiglu,
                hidden: 3,
                bias: false,
            },
            router,
            renormalize: renorm,
            shared: None,
            aux_loss: 0.0,
            ..Default::default()
        };
        let rw = randn(rows * 2, 2, 1.0);
        let (routing, _) = moe::route(&m, &logits);
        let aux_coef = randn(e, 3, 1.0);
        let f = |l: &[f64]| {
            let (r2, w) = moe::route(&m, l);
            assert_eq!(
                r2.expert, routing.expert,
                "perturbation changed the routing"
            );
            // aux term: Σ_rows Σ_e c_e softmax(l)_e
            let mut aux = 0.0;
            for row in l.chunks(e) {
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
                aux += row
                    .iter()
                    .zip(&aux_coef)
                    .map(|(v, c)| c * (v - max).exp() / z)
                    .sum::<f64>();
            }
            dot(&w, &rw) + aux
        };
        let mut dl = vec![0.0; logits.len()];
        moe::route_backward(&m, &logits, &routing, &rw, Some(&aux_coef), &mut dl);
        check(
            &format!("moe.route[{router:?} renorm {renorm}]"),
            &logits,
            &dl,
            f,
        );
    }
}

#[test]
fn moe_dispatch_and_combine() {
    let (rows, e, d) = (5, 4, 3);
    let m = Moe {
        experts: e as u64,
        top_k: 2,
        expert: Mlp {
            activation: MlpKind::Swiglu,
            hidden: 3,
            bias: false,
        },
        router: RouterOrder::SoftmaxTopk,
        renormalize: true,
        shared: None,
        aux_loss: 0.0,
        ..Default::default()
    };
    let (routing, weights) = moe::route(&m, &randn(rows * e, 1, 1.0));
    let x = randn(rows * d, 2, 1.0);
    let r_in = randn(rows * 2 * d, 3, 1.0);
    let fg = |x: &[f64]| {
        let mut y = vec![0.0; rows * 2 * d];
        moe::gather(&routing, x, d, &mut y);
        dot(&y, &r_in)
    };
    let mut dx = vec![0.0; x.len()];
    moe::gather_backward(&routing, &r_in, d, &mut dx);
    check("moe.gather", &x, &dx, fg);
    let eo = randn(rows * 2 * d, 4, 1.0);
    let r = randn(rows * d, 5, 1.0);
    let fc = |w: &[f64], eo: &[f64]| {
        let mut y = vec![0.0; rows * d];
        moe::combine(&routing, w, eo, d, &mut y);
        dot(&y, &r)
    };
    let (mut deo, mut dw) = (vec![0.0; eo.len()], vec![0.0; weights.len()]);
    moe::combine_backward(&routing, &weights, &eo, &r, d, &mut deo, &mut dw);
    check("moe.combine.dweights", &weights, &dw, |v| fc(v, &eo));
    check("moe.combine.dexpert_out", &eo, &deo, |v| fc(&weights, v));
}

#[test]
fn softcap_cross_entropy_dropout_ops() {
    let x = randn(12, 1, 3.0);
    let r = randn(12, 2, 1.0);
    let f = |x: &[f64]| {
        let mut y = x.to_vec();
        softcap::forward_inplace(&mut y, 2.0);
        dot(&y, &r)
    };
    let mut y = x.clone();
    softcap::forward_inplace(&mut y, 2.0);
    let mut g = r.clone();
    softcap::backward_inplace(&y, &mut g, 2.0);
    check("softcap", &x, &g, f);

    let (seq, vocab) = (3, 5);
    let tokens = [1u32, 4, 0, 2, 2, 3];
    let logits = randn(tokens.len() * vocab, 3, 1.0);
    let mut dl = vec![0.0; logits.len()];
    cross_entropy::backward(&logits, vocab, &tokens, seq, 1.0, &mut dl);
    check("cross_entropy", &logits, &dl, |l| {
        cross_entropy::forward(l, vocab, &tokens, seq)
    });

    let drop = Dropout::new(0.4, 3, 1, DropSite::MlpResidual).unwrap();
    let fd = |x: &[f64]| {
        let mut y = x.to_vec();
        drop.apply_inplace(&mut y, 0);
        dot(&y, &r)
    };
    let mut dx = vec![0.0; 12];
    drop.backward_acc(&r, &mut dx);
    check("dropout", &x, &dx, fd);
    let kept = (0..10000).filter(|&i| drop.keep(i)).count();
    assert!((kept as f64 / 10000.0 - 0.6).abs() < 0.03, "kept {kept}");
}

// ---- whole models ----

/// Checks every parameter's gradient of `spec` (a few coordinates per tensor) against central
/// differences of the loss, with dropout keyed by a fixed seed when the spec has any.
fn check_model(what: &str, spec: &ModelSpec, seq: usize) {
    let mut exec = Executor::new(spec).unwrap();
    exec.set_dropout_seed(Some(5));
    let params: Params<f64> = random_params(spec, 3, 0.4);
    let batch = 2;
    let tokens = tokens(batch * seq, spec.vocab, 1);
    let out = exec
        .loss_and_grads(
            &params,
            &tokens,
            batch,
            &Policy::Uniform(LayerCheckpoint::None),
        )
        .unwrap();
    assert!(out.loss.is_finite());
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (name, t) in params.iter() {
        let grad = out
            .grads
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        assert_eq!(grad.shape(), t.shape(), "{what}: {name}");
        let n = t.numel();
        let picks: Vec<usize> = if n <= 4 {
            (0..n).collect()
        } else {
            (0..4)
                .map(|j| (rng::bits(rng::hash_str(name), j) % n as u64) as usize)
                .collect()
        };
        for j in picks {
            let mut p = params.clone();
            let at = |p: &mut Params<f64>, v: f64| p.get_mut(name).unwrap().data_mut()[j] = v;
            let x0 = t.data()[j];
            at(&mut p, x0 + EPS);
            let lp = exec
                .loss_and_grads(&p, &tokens, batch, &Policy::Uniform(LayerCheckpoint::None))
                .unwrap()
                .loss;
            at(&mut p, x0 - EPS);
            let lm = exec
                .loss_and_grads(&p, &tokens, batch, &Policy::Uniform(LayerCheckpoint::None))
                .unwrap()
                .loss;
            let fd = (lp - lm) / (2.0 * EPS);
            let an = grad.data()[j];
            let scale = fd.abs().max(an.abs());
            worst = worst.max((fd - an).abs() / (1e-4 + scale));
            assert!(
                (fd - an).abs() <= 1e-7 + 1e-5 * scale,
                "{what}: {name}[{j}]: finite difference {fd} vs analytic {an}"
            );
            checked += 1;
        }
    }
    println!(
        "{what}: {checked} coordinates over {} tensors, worst relative error {worst:.2e}",
        params.tensors.len()
    );
}

fn with(f: impl Fn(&mut ModelSpec)) -> ModelSpec {
    let mut s = tiny();
    f(&mut s);
    s
}

#[test]
fn model_attention_variants() {
    check_model("gqa", &tiny(), 5);
    check_model(
        "mqa",
        &with(|s| each_layer(s, |l| l.attention.kv_heads = 1)),
        5,
    );
    check_model(
        "mha_biases",
        &with(|s| {
            each_layer(s, |l| {
                l.attention.kv_heads = 4;
                l.attention.qkv_bias = true;
                l.attention.out_bias = true;
            })
        }),
        5,
    );
    check_model(
        "sliding_window_even_layers",
        &with(|s| s.layers[0].attention.window = Some(2)),
        6,
    );
    check_model(
        "softcaps",
        &with(|s| {
            each_layer(s, |l| l.attention.softcap = Some(1.5));
            s.logits.softcap = Some(2.0);
        }),
        5,
    );
    check_model(
        "alibi",
        &with(|s| each_layer(s, |l| l.position = Position::Alibi)),
        5,
    );
    check_model(
        "no_position",
        &with(|s| each_layer(s, |l| l.position = Position::None)),
        5,
    );
    let head_dim_not_d_over_heads = with(|s| {
        each_layer(s, |l| {
            l.attention.head_dim = 3;
            l.attention.heads = 3;
            l.attention.kv_heads = 1;
            l.position = Position::Rope(Rope {
                rotary_dims: 2,
                fraction: 2.0 / 3.0,
                ..rope(3)
            });
        })
    });
    check_model("head_dim_3_partial_rotary", &head_dim_not_d_over_heads, 5);
}

#[test]
fn model_qk_norm_both_scopes() {
    check_model(
        "qk_norm_head",
        &with(|s| {
            each_layer(s, |l| {
                l.attention.qk_norm = Some(QkNorm {
                    norm: rms(),
                    scope: QkNormScope::Head,
                    after_rope: false,
                })
            })
        }),
        5,
    );
    check_model(
        "qk_norm_full_layernorm",
        &with(|s| {
            each_layer(s, |l| {
                l.attention.qk_norm = Some(QkNorm {
                    norm: layer_norm(),
                    scope: QkNormScope::Full,
                    after_rope: false,
                })
            })
        }),
        5,
    );
}

#[test]
fn model_every_rope_scaling() {
    for (name, r) in rope_variants() {
        // head_dim 6 to match the variants' rotary dims.
        let spec = with(|s| {
            each_layer(s, |l| {
                l.attention.heads = 2;
                l.attention.kv_heads = 1;
                l.attention.head_dim = 6;
                l.position = Position::Rope(r.clone());
            })
        });
        check_model(&format!("rope_{name}"), &spec, 4);
    }
}

#[test]
fn model_norms_and_placements() {
    check_model(
        "layernorm_offset1",
        &with(|s| {
            let n = Norm {
                offset: 1.0,
                ..layer_norm()
            };
            each_layer(s, |l| l.block.norm = n);
            s.final_norm = Some(n);
        }),
        5,
    );
    check_model(
        "rms_offset1_no_final_norm",
        &with(|s| {
            each_layer(s, |l| l.block.norm.offset = 1.0);
            s.final_norm = None;
        }),
        5,
    );
    check_model(
        "norm_without_weight",
        &with(|s| each_layer(s, |l| l.block.norm.weight = false)),
        5,
    );
    check_model(
        "post",
        &with(|s| each_layer(s, |l| l.block.placement = NormPlacement::Post)),
        5,
    );
    check_model(
        "sandwich",
        &with(|s| each_layer(s, |l| l.block.placement = NormPlacement::Sandwich)),
        5,
    );
    check_model(
        "parallel_shared_norm",
        &with(|s| {
            each_layer(s, |l| {
                l.block.parallel_residual = true;
                l.block.shared_norm = true;
                l.block.norm = layer_norm();
            })
        }),
        5,
    );
    check_model(
        "parallel_two_norms",
        &with(|s| each_layer(s, |l| l.block.parallel_residual = true)),
        5,
    );
    check_model(
        "parallel_post",
        &with(|s| {
            each_layer(s, |l| {
                l.block.parallel_residual = true;
                l.block.placement = NormPlacement::Post;
            })
        }),
        5,
    );
}

#[test]
fn model_every_mlp_kind() {
    for kind in [
        MlpKind::Gelu,
        MlpKind::GeluTanh,
        MlpKind::ReluSquared,
        MlpKind::Swiglu,
        MlpKind::Geglu,
        MlpKind::GegluTanh,
    ] {
        check_model(
            &format!("mlp_{kind:?}_bias"),
            &with(|s| {
                each_layer(s, |l| {
                    l.ffn = Ffn::Mlp(Mlp {
                        activation: kind,
                        hidden: 10,
                        bias: true,
                    })
                })
            }),
            5,
        );
    }
}

#[test]
fn model_moe_every_router_and_shared_experts() {
    let shared_gated = Some(SharedExperts {
        count: 2,
        hidden: 3,
        gate: true,
    });
    let shared_plain = Some(SharedExperts {
        count: 1,
        hidden: 5,
        gate: false,
    });
    check_model(
        "moe_softmax_topk_renorm",
        &with(|s| each_layer(s, |l| l.ffn = moe(RouterOrder::SoftmaxTopk, true, None))),
        5,
    );
    check_model(
        "moe_softmax_topk_plain_shared_gate",
        &with(|s| {
            each_layer(s, |l| {
                l.ffn = moe(RouterOrder::SoftmaxTopk, false, shared_gated)
            })
        }),
        5,
    );
    check_model(
        "moe_topk_softmax_shared",
        &with(|s| {
            each_layer(s, |l| {
                l.ffn = moe(RouterOrder::TopkSoftmax, false, shared_plain)
            })
        }),
        5,
    );
    check_model(
        "moe_dense_first_layer_gelu_experts",
        &with(|s| {
            let mut m = moe(RouterOrder::SoftmaxTopk, true, shared_gated);
            if let Ffn::Moe(x) = &mut m {
                x.expert = Mlp {
                    activation: MlpKind::Gelu,
                    hidden: 4,
                    bias: true,
                };
            }
            s.layers[1].ffn = m;
        }),
        5,
    );
}

#[test]
fn model_embeddings_and_head() {
    check_model(
        "learned_positions",
        &with(|s| {
            s.embedding.learned_positions = true;
            each_layer(s, |l| l.position = Position::Learned);
        }),
        5,
    );
    check_model(
        "tied_scaled_logit_bias",
        &with(|s| {
            s.embedding.tied = true;
            s.embedding.scale = (8.0f64).sqrt();
            s.embedding.scale_expr = ScaleExpr::SqrtDModel;
            s.logits.bias = true;
        }),
        5,
    );
    check_model("untied_lm_head_bias", &with(|s| s.logits.bias = true), 5);
}

#[test]
fn model_with_dropout_everywhere() {
    check_model(
        "dropout",
        &with(|s| {
            s.dropout = modelspec_dsl::ir::Dropout {
                embedding: 0.1,
                attention: 0.2,
                residual: 0.15,
            }
        }),
        5,
    );
    check_model(
        "dropout_moe_parallel",
        &with(|s| {
            s.dropout = modelspec_dsl::ir::Dropout {
                embedding: 0.1,
                attention: 0.2,
                residual: 0.15,
            };
            each_layer(s, |l| {
                l.block.parallel_residual = true;
                l.ffn = moe(
                    RouterOrder::TopkSoftmax,
                    false,
                    Some(SharedExperts {
                        count: 1,
                        hidden: 4,
                        gate: true,
                    }),
                );
            });
        }),
        5,
    );
}

#[test]
fn forward_matches_loss_and_grads_logits() {
    let spec = tiny();
    let exec = Executor::new(&spec).unwrap();
    let params: Params<f32> = random_params(&spec, 2, 0.3);
    let toks = tokens(12, spec.vocab, 4);
    let logits = exec.forward(&params, &toks, 2).unwrap();
    assert_eq!(logits.shape(), &[2, 6, 12]);
    let out = exec
        .loss_and_grads(&params, &toks, 2, &Policy::FromSpec)
        .unwrap();
    assert_eq!(out.logits, logits);
    let loss = exec.loss(&params, &toks, 2).unwrap();
    assert_eq!(loss, out.loss);
}

#[test]
fn bad_input_is_a_typed_error() {
    let spec = tiny();
    let exec = Executor::new(&spec).unwrap();
    let params = Params::<f32>::init(&spec, 0);
    assert!(matches!(
        exec.forward(&params, &[1, 2, 11], 1),
        Err(Error::TokenOutOfRange {
            token: 11,
            position: 2,
            vocab: 11
        })
    ));
    let long = vec![1u32; 17];
    assert!(matches!(
        exec.forward(&params, &long, 1),
        Err(Error::SequenceTooLong {
            seq: 17,
            context: 16
        })
    ));
    assert!(matches!(
        exec.forward(&params, &[1, 2, 3], 2),
        Err(Error::BadBatch { .. })
    ));
    assert!(matches!(
        exec.forward(&params, &[], 1),
        Err(Error::BadBatch { .. })
    ));
    let mut missing = params.clone();
    missing.tensors.remove("layers.1.attn.q.weight");
    assert!(matches!(
        exec.forward(&missing, &[1, 2], 1),
        Err(Error::MissingParam(_))
    ));
    let mut zero_window = tiny();
    zero_window.layers[1].attention.window = Some(0);
    assert!(matches!(
        Executor::new(&zero_window),
        Err(Error::BadSpec(_))
    ));
    let mut odd_rotary = tiny();
    odd_rotary.layers[0].position = Position::Rope(Rope {
        rotary_dims: 3,
        ..rope(4)
    });
    assert!(matches!(Executor::new(&odd_rotary), Err(Error::BadSpec(_))));
    let bad_policy = Policy::Uniform(LayerCheckpoint::Save(vec!["nope".into()]));
    assert!(matches!(
        exec.loss_and_grads(&params, &[1, 2], 1, &bad_policy),
        Err(Error::Program(_))
    ));
}

#[test]
fn init_is_deterministic_and_follows_the_conventions() {
    let mut spec = tiny();
    spec.layers[1].block.norm.offset = 1.0;
    spec.layers[0].attention.qkv_bias = true;
    let a = Params::<f32>::init(&spec, 7);
    let b = Params::<f32>::init(&spec, 7);
    let c = Params::<f32>::init(&spec, 8);
    assert_eq!(a, b);
    assert_ne!(a.get("embed.weight"), c.get("embed.weight"));
    a.check(&spec).unwrap();
    assert!(
        a.get("layers.0.attn_norm.weight")
            .unwrap()
            .data()
            .iter()
            .all(|&v| v == 1.0)
    );
    assert!(
        a.get("layers.1.attn_norm.weight")
            .unwrap()
            .data()
            .iter()
            .all(|&v| v == 0.0)
    );
    assert!(
        a.get("layers.0.attn.q.bias")
            .unwrap()
            .data()
            .iter()
            .all(|&v| v == 0.0)
    );
    let w = a.get("layers.0.mlp.up.weight").unwrap().data();
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        mean.abs() < 0.01 && (std - 0.02).abs() < 0.006,
        "mean {mean} std {std}"
    );
    let mut wrong = a.clone();
    wrong.insert("final_norm.weight", modelspec_runtime::Tensor::zeros(&[3]));
    assert!(matches!(wrong.check(&spec), Err(Error::ParamShape { .. })));
    // f32 and f64 run the same code: the f64 loss of f32-representable parameters is close.
    let exec = Executor::new(&spec).unwrap();
    let toks = tokens(8, spec.vocab, 1);
    let l32 = exec.loss(&a, &toks, 2).unwrap();
    let l64 = exec.loss(&a.cast::<f64>(), &toks, 2).unwrap();
    assert!((l32 - l64).abs() < 1e-5, "{l32} vs {l64}");
}
