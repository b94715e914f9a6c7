//! The attention options of issue 12 against finite differences and the formula: attention sinks
//! (and their gradient), chunked attention, the query temperature, each alone and together, and
//! the decoder's cached attention against the full forward with them.

use modelspec_dsl::ir::QueryTemperature;
use modelspec_runtime::ops::attention::{self, AttentionCfg};

const EPS: f64 = 1e-6;

fn randn(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    // A small deterministic generator (splitmix64 → Box-Muller), enough for test data.
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-12), next());
            scale * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central differences of `f` at `x` against `analytic`.
fn check(what: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + EPS;
        let fp = f(&xp);
        xp[i] = x[i] - EPS;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * EPS);
        assert!(
            (fd - analytic[i]).abs() <= 1e-7 + 1e-5 * fd.abs().max(analytic[i].abs()),
            "{what}[{i}]: finite difference {fd} vs analytic {}",
            analytic[i]
        );
    }
}

fn base() -> AttentionCfg {
    AttentionCfg {
        batch: 2,
        seq: 7,
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
    }
}

fn variants() -> Vec<(&'static str, AttentionCfg)> {
    let sinks = Some(vec![0.3, -1.2, 2.0, 0.0]);
    let temperature = Some(QueryTemperature {
        floor: 2,
        scale: 0.4,
    });
    vec![
        (
            "sinks",
            AttentionCfg {
                sinks: sinks.clone(),
                ..base()
            },
        ),
        (
            "chunk",
            AttentionCfg {
                chunk: Some(3),
                ..base()
            },
        ),
        (
            "temperature",
            AttentionCfg {
                temperature,
                ..base()
            },
        ),
        (
            "sinks+window+softcap",
            AttentionCfg {
                sinks: sinks.clone(),
                window: Some(3),
                softcap: Some(1.5),
                ..base()
            },
        ),
        (
            "everything",
            AttentionCfg {
                sinks,
                chunk: Some(4),
                temperature,
                softcap: Some(2.0),
                alibi: Some(attention::alibi_slopes(4)),
                ..base()
            },
        ),
    ]
}

/// The formula, directly: visible keys of query i, scores, the sink in the denominator.
fn naive(cfg: &AttentionCfg, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let (t, hd) = (cfg.seq, cfg.head_dim);
    let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
    let mut out = vec![0.0; cfg.batch * t * qd];
    for b in 0..cfg.batch {
        for h in 0..cfg.heads {
            let g = h / (cfg.heads / cfg.kv_heads);
            for i in 0..t {
                let tau = cfg.temperature.map_or(1.0, |tp| tp.factor(i as u64));
                let visible: Vec<usize> = (0..=i)
                    .filter(|&j| cfg.window.is_none_or(|w| i < j + w))
                    .filter(|&j| cfg.chunk.is_none_or(|c| i / c == j / c))
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
                        let s = cfg.scale * (tau * qk + alibi);
                        cfg.softcap.map_or(s, |c| c * (s / c).tanh())
                    })
                    .collect();
                let sink = cfg.sinks.as_ref().map(|s| s[h]);
                let max = scores.iter().cloned().chain(sink).fold(f64::MIN, f64::max);
                let z: f64 = scores
                    .iter()
                    .chain(sink.as_ref())
                    .map(|s| (s - max).exp())
                    .sum();
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
fn forward_follows_the_formula_and_backward_the_finite_differences() {
    for (name, cfg) in variants() {
        let rows = cfg.batch * cfg.seq;
        let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let q = randn(rows * qd, 1, 1.0);
        let k = randn(rows * kvd, 2, 1.0);
        let v = randn(rows * kvd, 3, 1.0);
        let r = randn(rows * qd, 4, 1.0);
        let mut o = vec![0.0; rows * qd];
        attention::forward(&cfg, &q, &k, &v, &mut o);
        let want = naive(&cfg, &q, &k, &v);
        for (a, b) in o.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-12,
                "{name}: forward {a} vs the formula {b}"
            );
        }
        let loss = |cfg: &AttentionCfg, q: &[f64], k: &[f64], v: &[f64]| {
            let mut o = vec![0.0; rows * qd];
            attention::forward(cfg, q, k, v, &mut o);
            dot(&o, &r)
        };
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let mut dsinks = vec![0.0; cfg.heads];
        attention::backward_with_sinks(
            &cfg,
            &q,
            &k,
            &v,
            &r,
            &mut dq,
            &mut dk,
            &mut dv,
            Some(&mut dsinks),
        );
        check(&format!("{name}.dq"), &q, &dq, |x| loss(&cfg, x, &k, &v));
        check(&format!("{name}.dk"), &k, &dk, |x| loss(&cfg, &q, x, &v));
        check(&format!("{name}.dv"), &v, &dv, |x| loss(&cfg, &q, &k, x));
        match &cfg.sinks {
            Some(s) => check(&format!("{name}.dsinks"), s, &dsinks, |x| {
                let with = AttentionCfg {
                    sinks: Some(x.to_vec()),
                    ..cfg.clone()
                };
                loss(&with, &q, &k, &v)
            }),
            None => assert!(
                dsinks.iter().all(|&g| g == 0.0),
                "{name}: no sinks, no gradient"
            ),
        }
    }
}

#[test]
fn a_sink_takes_probability_mass_and_a_chunk_cuts_the_prefix() {
    // With v = one-hot positions, output row i is query i's attention distribution.
    let seq = 7;
    let cfg = AttentionCfg {
        batch: 1,
        heads: 1,
        kv_heads: 1,
        head_dim: seq,
        seq,
        scale: 1.0,
        chunk: Some(3),
        sinks: Some(vec![1.5]),
        ..base()
    };
    let q = randn(seq * seq, 5, 1.0);
    let k = randn(seq * seq, 6, 1.0);
    let mut v = vec![0.0; seq * seq];
    for i in 0..seq {
        v[i * seq + i] = 1.0;
    }
    let mut o = vec![0.0; seq * seq];
    attention::forward(&cfg, &q, &k, &v, &mut o);
    for i in 0..seq {
        let row = &o[i * seq..(i + 1) * seq];
        for (j, &p) in row.iter().enumerate() {
            let visible = j <= i && j / 3 == i / 3;
            assert_eq!(p > 0.0, visible, "query {i} key {j}: {p}");
        }
        let mass: f64 = row.iter().sum();
        assert!(
            mass > 0.0 && mass < 1.0,
            "query {i}: the sink keeps {}",
            1.0 - mass
        );
    }
}

#[test]
fn cached_attention_equals_the_full_forward() {
    for (name, cfg) in variants() {
        let cfg = AttentionCfg { batch: 1, ..cfg };
        let (t, qd, kvd) = (
            cfg.seq,
            cfg.heads * cfg.head_dim,
            cfg.kv_heads * cfg.head_dim,
        );
        let q = randn(t * qd, 7, 1.0);
        let k = randn(t * kvd, 8, 1.0);
        let v = randn(t * kvd, 9, 1.0);
        let mut full = vec![0.0; t * qd];
        attention::forward(&cfg, &q, &k, &v, &mut full);
        for p0 in [0, 2, 5] {
            let mut part = vec![0.0; (t - p0) * qd];
            attention::forward_cached(
                &cfg,
                &q[p0 * qd..],
                (&k[..p0 * kvd], &k[p0 * kvd..]),
                (&v[..p0 * kvd], &v[p0 * kvd..]),
                &mut part,
            );
            for (a, b) in part.iter().zip(&full[p0 * qd..]) {
                assert!((a - b).abs() < 1e-12, "{name}, {p0} cached: {a} vs {b}");
            }
        }
    }
}

#[test]
fn the_query_temperature_matches_llama4() {
    // transformers: log1p(floor((t + 1) / floor_scale)) * attn_scale + 1, in f32.
    let t = QueryTemperature {
        floor: 8192,
        scale: 0.1,
    };
    assert_eq!(t.factor(0), 1.0);
    assert_eq!(t.factor(8190), 1.0);
    let at = t.factor(8191);
    assert!((at - (1.0 + 0.1 * 2f64.ln())).abs() < 1e-6, "{at}");
    let far = t.factor(10 * 8192);
    assert!((far - (1.0 + 0.1 * 11f64.ln())).abs() < 1e-6, "{far}");
}
