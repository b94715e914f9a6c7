//! Attention against central differences for every variant, against a direct evaluation of the
//! formula, over several blocks and with Hugging Face's sliding-window masks.

use super::{check, dot, randn};
use modelspec_runtime::ops::attention::{self, AttentionCfg};
use modelspec_runtime::ops::dropout::{DropSite, Dropout};

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
