//! The CPU reference of one MoE layer in f64: the CPU ops (`ops::moe`, `ops::mlp`,
//! `ops::linear`) composed as the executor's MoE step composes them, forward and backward, with
//! every routing option (router bias, sigmoid router with its correction bias and groups, routed
//! scale, input-side weighting, the clamped SwiGLU).

use std::collections::BTreeMap;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::{Ffn, Moe, RouterOrder, SwigluClamp, Weighting};
use modelspec_runtime::cuda::Dtype;
use modelspec_runtime::ops::mlp::{self, MlpGrad, MlpRef};
use modelspec_runtime::ops::{linear, moe as cpu};

use super::inputs::round;

pub fn moe_of(spec: &ModelSpec, i: usize) -> Moe {
    match spec.layers[i].ffn {
        Ffn::Moe(m) => m,
        Ffn::Mlp(_) => panic!("layer {i} is dense"),
    }
}

fn mlp_ref<'a>(
    p: &'a BTreeMap<String, Vec<f64>>,
    prefix: &str,
    moe: &Moe,
    d: usize,
    hidden: usize,
    clamp: Option<SwigluClamp>,
) -> MlpRef<'a, f64> {
    let get = |s: &str| p.get(&format!("{prefix}.{s}")).map(|v| v.as_slice());
    let proj = |s: &str| {
        (
            get(&format!("{s}.weight")).unwrap(),
            get(&format!("{s}.bias")),
        )
    };
    MlpRef {
        kind: moe.expert.activation,
        d,
        hidden,
        gate: moe.expert.activation.is_gated().then(|| proj("gate")),
        up: proj("up"),
        down: proj("down"),
        clamp,
    }
}

pub struct MlpActs {
    gate: Vec<f64>,
    up: Vec<f64>,
    act: Vec<f64>,
    pub out: Vec<f64>,
}

/// One MLP's forward. `stored`: round the projections to what the GPU stores before the
/// activation (for the clamped SwiGLU, whose clamp is a discontinuity: the reference decides it on
/// the values the GPU decides it on).
fn mlp_forward(m: &MlpRef<'_, f64>, x: &[f64], rows: usize, stored: Option<Dtype>) -> MlpActs {
    let mut gate = vec![0.0; rows * m.hidden];
    let mut up = vec![0.0; rows * m.hidden];
    let gated = m.kind.is_gated();
    mlp::project(m, x, rows, gated.then_some(&mut gate[..]), &mut up);
    if let Some(dt) = stored {
        round(&mut gate, dt);
        round(&mut up, dt);
    }
    let mut act = vec![0.0; rows * m.hidden];
    mlp::activate(m, gated.then_some(&gate[..]), &up, &mut act);
    let mut out = vec![0.0; rows * m.d];
    mlp::down(m, &act, rows, &mut out);
    MlpActs { gate, up, act, out }
}

/// Backward of one MLP, accumulating into `grads` (named `{prefix}.*`) and `dx`.
#[allow(clippy::too_many_arguments)]
fn mlp_backward(
    m: &MlpRef<'_, f64>,
    prefix: &str,
    a: &MlpActs,
    x: &[f64],
    dout: &[f64],
    rows: usize,
    grads: &mut BTreeMap<String, Vec<f64>>,
    dx: &mut [f64],
) {
    let mut take = |s: &str| grads.remove(&format!("{prefix}.{s}"));
    let (mut gw, mut gb) = (take("gate.weight"), take("gate.bias"));
    let (mut uw, mut ub) = (take("up.weight").unwrap(), take("up.bias"));
    let (mut dw, mut db) = (take("down.weight").unwrap(), take("down.bias"));
    let gated = m.kind.is_gated();
    mlp::backward(
        m,
        x,
        gated.then_some(&a.gate[..]),
        &a.up,
        &a.act,
        dout,
        rows,
        MlpGrad {
            gate: gw.as_deref_mut().map(|w| (w, gb.as_deref_mut())),
            up: (&mut uw, ub.as_deref_mut()),
            down: (&mut dw, db.as_deref_mut()),
        },
        dx,
    );
    let mut put = |s: &str, v: Option<Vec<f64>>| {
        if let Some(v) = v {
            grads.insert(format!("{prefix}.{s}"), v);
        }
    };
    put("gate.weight", gw);
    put("gate.bias", gb);
    put("up.weight", Some(uw));
    put("up.bias", ub);
    put("down.weight", Some(dw));
    put("down.bias", db);
}

pub struct RefForward {
    pub logits: Vec<f64>,
    pub routing: cpu::Routing,
    pub weights: Vec<f64>,
    expert_in: Vec<f64>,
    experts: Vec<Option<MlpActs>>,
    expert_out: Vec<f64>,
    shared: Option<MlpActs>,
    gate_logit: Vec<f64>,
    pub out: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The router logits `x Wr^T (+ b)` of layer `i`.
pub fn router_logits(
    moe: &Moe,
    i: usize,
    d: usize,
    p: &BTreeMap<String, Vec<f64>>,
    x: &[f64],
    rows: usize,
) -> Vec<f64> {
    let e = moe.experts as usize;
    let mut logits = vec![0.0; rows * e];
    let wr = &p[&format!("layers.{i}.moe.router.weight")];
    let br = p.get(&format!("layers.{i}.moe.router.bias"));
    linear::forward(x, rows, d, wr, br.map(|b| &b[..]), e, &mut logits);
    logits
}

/// The correction bias of layer `i`, when the spec has one.
pub fn correction(i: usize, p: &BTreeMap<String, Vec<f64>>) -> Option<&[f64]> {
    p.get(&format!("layers.{i}.moe.router.correction_bias"))
        .map(|v| &v[..])
}

/// The routed experts' MLP of expert `ex` (with the spec's clamp).
fn expert_ref<'a>(
    moe: &Moe,
    i: usize,
    d: usize,
    p: &'a BTreeMap<String, Vec<f64>>,
    ex: usize,
) -> MlpRef<'a, f64> {
    let prefix = format!("layers.{i}.moe.experts.{ex}");
    mlp_ref(p, &prefix, moe, d, moe.expert.hidden as usize, moe.clamp)
}

/// One layer's forward. `stored`: see [`mlp_forward`] (`None` for finite differences).
#[allow(clippy::too_many_arguments)]
pub fn ref_forward(
    moe: &Moe,
    i: usize,
    d: usize,
    p: &BTreeMap<String, Vec<f64>>,
    x: &[f64],
    rows: usize,
    stored: Option<Dtype>,
) -> RefForward {
    let e = moe.experts as usize;
    let pre = |s: &str| format!("layers.{i}.moe.{s}");
    let logits = router_logits(moe, i, d, p, x, rows);
    let (routing, weights) = cpu::route_with(moe, &logits, correction(i, p));
    let mut expert_in = vec![0.0; routing.expert.len() * d];
    let input_weighted = moe.weighting == Weighting::Input;
    if input_weighted {
        cpu::gather_weighted(&routing, &weights, x, d, &mut expert_in);
    } else {
        cpu::gather(&routing, x, d, &mut expert_in);
    }
    let stored = stored.filter(|_| moe.clamp.is_some());
    let mut expert_out = vec![0.0; expert_in.len()];
    let mut experts = Vec::new();
    for ex in 0..e {
        let (r0, r1) = (routing.offsets[ex], routing.offsets[ex + 1]);
        if r0 == r1 {
            experts.push(None);
            continue;
        }
        let m = expert_ref(moe, i, d, p, ex);
        let a = mlp_forward(&m, &expert_in[r0 * d..r1 * d], r1 - r0, stored);
        expert_out[r0 * d..r1 * d].copy_from_slice(&a.out);
        experts.push(Some(a));
    }
    let mut out = vec![0.0; rows * d];
    let ones = vec![1.0; routing.expert.len()];
    let w = if input_weighted { &ones } else { &weights };
    cpu::combine(&routing, w, &expert_out, d, &mut out);
    let mut shared = None;
    let mut gate_logit = Vec::new();
    if let Some(s) = &moe.shared {
        let m = mlp_ref(
            p,
            &pre("shared"),
            moe,
            d,
            (s.count * s.hidden) as usize,
            None,
        );
        let a = mlp_forward(&m, x, rows, None);
        if s.gate {
            gate_logit = vec![0.0; rows];
            linear::forward(
                x,
                rows,
                d,
                &p[&pre("shared_gate.weight")],
                None,
                1,
                &mut gate_logit,
            );
        }
        for n in 0..rows {
            let g = if s.gate { sigmoid(gate_logit[n]) } else { 1.0 };
            for c in 0..d {
                out[n * d + c] += g * a.out[n * d + c];
            }
        }
        shared = Some(a);
    }
    RefForward {
        logits,
        routing,
        weights,
        expert_in,
        experts,
        expert_out,
        shared,
        gate_logit,
        out,
    }
}

/// dx and the parameter gradients of one layer (the executor's `moe_backward`). The correction
/// bias, a buffer, keeps a zero gradient.
#[allow(clippy::too_many_arguments)]
pub fn ref_backward(
    moe: &Moe,
    i: usize,
    d: usize,
    p: &BTreeMap<String, Vec<f64>>,
    f: &RefForward,
    x: &[f64],
    dout: &[f64],
    rows: usize,
    aux_dprobs: Option<&[f64]>,
) -> (Vec<f64>, BTreeMap<String, Vec<f64>>) {
    let e = moe.experts as usize;
    let pre = |s: &str| format!("layers.{i}.moe.{s}");
    let mut grads: BTreeMap<String, Vec<f64>> = p
        .iter()
        .map(|(k, v)| (k.clone(), vec![0.0; v.len()]))
        .collect();
    let mut dx = vec![0.0; rows * d];
    if let (Some(s), Some(a)) = (&moe.shared, &f.shared) {
        let mut d_so = dout.to_vec();
        if s.gate {
            let mut d_logit = vec![0.0; rows];
            for n in 0..rows {
                let g = sigmoid(f.gate_logit[n]);
                let dot: f64 = (0..d).map(|c| dout[n * d + c] * a.out[n * d + c]).sum();
                d_logit[n] = dot * g * (1.0 - g);
                for c in 0..d {
                    d_so[n * d + c] = dout[n * d + c] * g;
                }
            }
            let name = pre("shared_gate.weight");
            let mut gw = grads.remove(&name).unwrap();
            linear::backward(
                x,
                &d_logit,
                rows,
                d,
                1,
                &p[&name],
                Some(&mut dx),
                &mut gw,
                None,
            );
            grads.insert(name, gw);
        }
        let m = mlp_ref(
            p,
            &pre("shared"),
            moe,
            d,
            (s.count * s.hidden) as usize,
            None,
        );
        mlp_backward(&m, &pre("shared"), a, x, &d_so, rows, &mut grads, &mut dx);
    }
    let k = moe.top_k as usize;
    let slots = rows * k;
    let input_weighted = moe.weighting == Weighting::Input;
    let mut d_eo = vec![0.0; slots * d];
    let mut d_w = vec![0.0; slots];
    let mut d_ones = vec![0.0; slots];
    let ones = vec![1.0; slots];
    cpu::combine_backward(
        &f.routing,
        if input_weighted { &ones } else { &f.weights },
        &f.expert_out,
        dout,
        d,
        &mut d_eo,
        if input_weighted {
            &mut d_ones
        } else {
            &mut d_w
        },
    );
    let mut d_in = vec![0.0; slots * d];
    for ex in 0..e {
        let (r0, r1) = (f.routing.offsets[ex], f.routing.offsets[ex + 1]);
        let Some(a) = &f.experts[ex] else { continue };
        let m = expert_ref(moe, i, d, p, ex);
        mlp_backward(
            &m,
            &pre(&format!("experts.{ex}")),
            a,
            &f.expert_in[r0 * d..r1 * d],
            &d_eo[r0 * d..r1 * d],
            r1 - r0,
            &mut grads,
            &mut d_in[r0 * d..r1 * d],
        );
    }
    if input_weighted {
        cpu::gather_weighted_backward(&f.routing, &f.weights, x, &d_in, d, &mut dx, &mut d_w);
    } else {
        cpu::gather_backward(&f.routing, &d_in, d, &mut dx);
    }
    let mut d_logits = vec![0.0; rows * e];
    cpu::route_backward(moe, &f.logits, &f.routing, &d_w, aux_dprobs, &mut d_logits);
    let name = pre("router.weight");
    let bias = pre("router.bias");
    let mut gw = grads.remove(&name).unwrap();
    let mut gb = grads.remove(&bias);
    linear::backward(
        x,
        &d_logits,
        rows,
        d,
        e,
        &p[&name],
        Some(&mut dx),
        &mut gw,
        gb.as_deref_mut(),
    );
    grads.insert(name, gw);
    if let Some(gb) = gb {
        grads.insert(bias, gb);
    }
    (dx, grads)
}

/// The `k` largest of `v` and the gap between the k-th and the next (infinite when all are taken).
fn kth_gap(v: &[f64], k: usize) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
    if k < v.len() {
        v[k - 1] - v[k]
    } else {
        f64::INFINITY
    }
}

/// For each row, the smallest gap between a chosen and an unchosen router value (probabilities,
/// logits, or the sigmoid router's choice values, and its group scores when routing is
/// group-limited), so that f32 rounding cannot reorder them.
pub fn min_gap(moe: &Moe, logits: &[f64], corr: Option<&[f64]>) -> f64 {
    let (e, k) = (moe.experts as usize, moe.top_k as usize);
    let mut worst = f64::INFINITY;
    for l in logits.chunks_exact(e) {
        let mut v: Vec<f64> = match moe.router {
            RouterOrder::TopkSoftmax => l.to_vec(),
            RouterOrder::SigmoidTopk => match corr {
                Some(b) => l.iter().zip(b).map(|(&x, &b)| sigmoid(x) + b).collect(),
                None => l.to_vec(),
            },
            RouterOrder::SoftmaxTopk => {
                let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = l.iter().map(|x| (x - mx).exp()).sum();
                l.iter().map(|x| (x - mx).exp() / s).collect()
            }
        };
        if let Some(g) = moe.groups {
            let size = e / g.count as usize;
            let scores: Vec<f64> = v
                .chunks_exact(size)
                .map(|c| {
                    let mut c = c.to_vec();
                    c.sort_by(|a, b| b.partial_cmp(a).unwrap());
                    c[0] + c[1]
                })
                .collect();
            worst = worst.min(kth_gap(&scores, g.top as usize));
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
            for (gi, c) in v.chunks_exact_mut(size).enumerate() {
                if !order[..g.top as usize].contains(&gi) {
                    c.fill(f64::NEG_INFINITY);
                }
            }
        }
        worst = worst.min(kth_gap(&v, k));
    }
    worst
}

/// The fractions of the routed experts' gate values above the clamp's limit and of their up
/// values outside ±limit (`None` without a clamp): the GPT-OSS case must hit both clamps.
pub fn clamped_fractions(moe: &Moe, f: &RefForward) -> Option<(f64, f64)> {
    let limit = moe.clamp?.limit;
    let (mut gate, mut up, mut all) = (0usize, 0usize, 0usize);
    for a in f.experts.iter().flatten() {
        gate += a.gate.iter().filter(|&&g| g > limit).count();
        up += a.up.iter().filter(|&&u| u.abs() > limit).count();
        all += a.up.len();
    }
    let all = all.max(1) as f64;
    Some((gate as f64 / all, up as f64 / all))
}

/// Tokens whose experts change without the correction bias (zeroed) and without the groups:
/// the DeepSeek case must route differently because of each.
pub fn routing_changes(moe: &Moe, f: &RefForward, corr: Option<&[f64]>) -> (usize, usize) {
    let k = moe.top_k as usize;
    let differ = |r: &cpu::Routing| {
        r.expert
            .chunks_exact(k)
            .zip(f.routing.expert.chunks_exact(k))
            .filter(|(a, b)| a != b)
            .count()
    };
    let zero = vec![0.0; moe.experts as usize];
    let unbiased = corr.map(|_| &zero[..]);
    let (no_bias, _) = cpu::route_with(moe, &f.logits, unbiased);
    let ungrouped = Moe {
        groups: None,
        ..*moe
    };
    let (no_groups, _) = cpu::route_with(&ungrouped, &f.logits, corr);
    (differ(&no_bias), differ(&no_groups))
}
