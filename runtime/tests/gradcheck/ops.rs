//! Single ops against central differences: linear, embedding, norms, activations, MLPs, the
//! MoE router and dispatch, softcap, cross-entropy and dropout.

use super::{check, dot, randn};
use modelspec_dsl::ir::*;
use modelspec_runtime::ops::activation::{self, Activation};
use modelspec_runtime::ops::dropout::{DropSite, Dropout};
use modelspec_runtime::ops::mlp::{self, MlpGrad, MlpRef};
use modelspec_runtime::ops::{cross_entropy, embedding, linear, moe, norm, softcap};

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
