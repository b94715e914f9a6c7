//! `cuda::moe::MoeLayer` against the CPU ops (`ops::moe`, `ops::mlp`, `ops::linear`, composed as
//! the executor's MoE step composes them, in f64): forward (output, routing, aux loss) and
//! backward (dx and every parameter gradient) on fresh random inputs.
//!
//! Tolerances (norm-wise relative error per tensor; a gradient's error is relative to the larger
//! of its own RMS and 1e-3 x the largest gradient RMS, as in cuda_train.rs):
//! - f32: 1e-4. Everything runs in f32 (cuBLASLt in pedantic f32) against an f64 reference on the
//!   same f32 inputs; the kernels' fast-math exp and division add a few ulps.
//! - bf16: 3e-2. The inputs, weights and dout are rounded to bf16 first, so the reference sees
//!   exactly what the GPU sees; what remains is the rounding of each stored intermediate to bf16
//!   (2^-9 = 2e-3 relative each): projections, activations, expert outputs and the output in
//!   forward; d expert outputs, d activations, d projections, d router logits and dx in backward:
//!   at most 6 roundings on any path, 1.2e-2 if they all added up, with 2.5x headroom for the
//!   activations' derivatives and the router's softmax Jacobian, which can amplify them.
//!   The aux loss (f32 statistics of f32 router logits) is held to 1e-4 in both dtypes.
//!
//! Routing must match exactly (same experts in the same order): each case draws inputs until
//! every row's k-th and (k+1)-th router scores differ by more than 1e-5, so f32 rounding of the
//! logits cannot reorder them.
//!
//! Each case also runs forward and backward twice: outputs, aux loss and dx must be bitwise
//! equal (deterministic kernels, no atomics on outputs) and the gradients exactly double
//! (accumulation with +=, to 1e-6).
//!
//! Without a CUDA device the GPU tests print "skipping: no CUDA device" and pass.

use std::collections::BTreeMap;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::{Ffn, Moe};
use modelspec_dsl::load::{Format, load_str};
use modelspec_runtime::cuda::moe::{KERNEL_NAMES, MoeLayer, kernel_source};
use modelspec_runtime::cuda::{DevPtr, Dtype, Gpu, GpuBuf, compile};
use modelspec_runtime::ops::mlp::{self, MlpGrad, MlpRef};
use modelspec_runtime::ops::{linear, moe as cpu};

/// softmax -> top-k, renormalised, SwiGLU experts, aux loss (Mixtral).
const MIXTRAL_LIKE: &str = "model t_mixtral {
    vocab 64   d_model 64   layers 1   context 64
    norm rms(eps = 1e-5)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 8  top_k 2
        expert swiglu(hidden = 96)
        router softmax_topk  renormalize
        aux_loss 0.02
    }
}";

/// top-k -> softmax, an ungated GELU expert with biases.
const TOPK_SOFTMAX: &str = "model t_topk_softmax {
    vocab 64   d_model 48   layers 1   context 64
    norm rms(eps = 1e-5)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 6  top_k 3
        expert gelu(hidden = 40, bias = true)
        router topk_softmax
    }
}";

/// softmax -> top-k without renormalisation, shared experts with a sigmoid gate, aux loss
/// (Qwen2-MoE).
const QWEN2_MOE_LIKE: &str = "model t_qwen2_moe {
    vocab 64   d_model 64   layers 1   context 64
    norm rms(eps = 1e-6)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 8  top_k 4
        expert swiglu(hidden = 48)
        router softmax_topk
        shared(count = 2, hidden = 40, gate = true)
        aux_loss 0.001
    }
}";

/// 37 rows, 16 experts of which one gets no token, a gated expert whose width (36) keeps gate
/// and up in separate planes in bf16, biases on every projection, aux loss.
const AWKWARD: &str = "model t_awkward {
    vocab 64   d_model 72   layers 1   context 64
    norm rms(eps = 1e-5)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 16  top_k 2
        expert geglu_tanh(hidden = 36, bias = true)
        router softmax_topk  renormalize
        aux_loss 0.01
    }
}";

/// Two MoE layers with an aux loss: one loss over both layers' router statistics.
const TWO_LAYERS: &str = "model t_two_layers {
    vocab 64   d_model 32   layers 2   context 64
    norm rms(eps = 1e-5)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 4  top_k 2
        expert swiglu(hidden = 32)
        router softmax_topk  renormalize
        shared(count = 1, hidden = 16, gate = false)
        aux_loss 0.05
    }
}";

struct Case {
    src: &'static str,
    rows: usize,
    /// An expert whose router row is pushed far down, so that no token picks it.
    dead_expert: Option<usize>,
    /// Pack each layer's parameters (and gradients) contiguously in table order, so gate and up
    /// are adjacent (the fused GEMM path); otherwise every tensor has its own allocation.
    packed: bool,
    /// Zero router weights: every router score ties, so the top k must be experts 0..k.
    ties: bool,
}

#[test]
#[ignore = "needs NVRTC (the CUDA toolkit)"]
fn moe_kernels_compile_with_nvrtc() {
    if !compile::nvrtc_present() {
        println!("skipping: no NVRTC library on this machine");
        return;
    }
    let (ptx, _) = compile::compile(&kernel_source(), "compute_90").expect("MoE kernels compile");
    for name in KERNEL_NAMES {
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "kernel {name} missing from the PTX"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_mixtral_like_f32() {
    run(&MIXTRAL_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_mixtral_like_bf16() {
    run(&MIXTRAL_CASE, Dtype::Bf16, 3e-2);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_topk_softmax_f32() {
    run(&TOPK_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_topk_softmax_bf16() {
    run(&TOPK_CASE, Dtype::Bf16, 3e-2);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_qwen2_shared_gate_f32() {
    run(&QWEN2_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_qwen2_shared_gate_bf16() {
    run(&QWEN2_CASE, Dtype::Bf16, 3e-2);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_awkward_rows_dead_expert_f32() {
    run(&AWKWARD_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_awkward_rows_dead_expert_bf16() {
    run(&AWKWARD_CASE, Dtype::Bf16, 3e-2);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_exact_ties_go_to_the_lower_expert_f32() {
    run(&TIES_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_two_layers_share_aux_loss_f32() {
    run(&TWO_LAYER_CASE, Dtype::F32, 1e-4);
}

const MIXTRAL_CASE: Case = Case {
    src: MIXTRAL_LIKE,
    rows: 40,
    dead_expert: None,
    packed: true,
    ties: false,
};
const TOPK_CASE: Case = Case {
    src: TOPK_SOFTMAX,
    rows: 40,
    dead_expert: None,
    packed: false,
    ties: false,
};
const QWEN2_CASE: Case = Case {
    src: QWEN2_MOE_LIKE,
    rows: 40,
    dead_expert: None,
    packed: false,
    ties: false,
};
const AWKWARD_CASE: Case = Case {
    src: AWKWARD,
    rows: 37,
    dead_expert: Some(5),
    packed: true,
    ties: false,
};
const TIES_CASE: Case = Case {
    src: MIXTRAL_LIKE,
    rows: 19,
    dead_expert: None,
    packed: true,
    ties: true,
};
const TWO_LAYER_CASE: Case = Case {
    src: TWO_LAYERS,
    rows: 24,
    dead_expert: None,
    packed: true,
    ties: false,
};

// ---------------------------------------------------------------- inputs

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.next().max(1e-300);
        let u2 = self.next();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn vec(&mut self, n: usize, std: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Rounds to what the GPU stores in `dt`.
fn round(v: &mut [f64], dt: Dtype) {
    for x in v {
        let f = *x as f32;
        *x = match dt {
            Dtype::F32 => f as f64,
            Dtype::Bf16 => from_bf16(bf16_bits(f)) as f64,
        };
    }
}

fn elem(dt: Dtype) -> usize {
    match dt {
        Dtype::F32 => 4,
        Dtype::Bf16 => 2,
    }
}

fn encode(v: &[f64], dt: Dtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * elem(dt));
    for &x in v {
        match dt {
            Dtype::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            Dtype::Bf16 => out.extend_from_slice(&bf16_bits(x as f32).to_le_bytes()),
        }
    }
    out
}

fn decode(b: &[u8], dt: Dtype) -> Vec<f64> {
    match dt {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::Bf16 => b
            .chunks_exact(2)
            .map(|c| from_bf16(u16::from_le_bytes([c[0], c[1]])) as f64)
            .collect(),
    }
}

/// One MoE layer's parameters `layers.{i}.moe.*` with their shapes.
fn layer_params(spec: &ModelSpec, i: usize) -> Vec<(String, Vec<u64>)> {
    let prefix = format!("layers.{i}.moe.");
    modelspec_dsl::params::parameters(spec)
        .into_iter()
        .filter(|p| p.name.starts_with(&prefix))
        .map(|p| (p.name, p.shape))
        .collect()
}

/// Random weights: router rows spread the logits, projections keep activations O(1).
fn init_params(
    spec: &ModelSpec,
    i: usize,
    rng: &mut Rng,
    case: &Case,
    dt: Dtype,
) -> BTreeMap<String, Vec<f64>> {
    let d = spec.d_model as usize;
    let mut out = BTreeMap::new();
    for (name, shape) in layer_params(spec, i) {
        let n: u64 = shape.iter().product();
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        let std = if name.ends_with(".bias") {
            0.1
        } else if name.contains("router") {
            0.15
        } else if name.contains("shared_gate") {
            0.2
        } else {
            1.0 / fan_in.sqrt()
        };
        let mut v = rng.vec(n as usize, std);
        if name.ends_with("router.weight") && case.ties {
            v.fill(0.0);
        }
        if name.ends_with("router.weight")
            && let Some(e) = case.dead_expert
        {
            // x[:, 0] is pushed to about +3 below, so this expert's logit sits near -15.
            for (j, w) in v[e * d..(e + 1) * d].iter_mut().enumerate() {
                *w = if j == 0 { -5.0 } else { 0.0 };
            }
        }
        round(&mut v, dt);
        out.insert(name, v);
    }
    out
}

// ---------------------------------------------------------------- the CPU reference (f64)

fn moe_of(spec: &ModelSpec, i: usize) -> Moe {
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
        clamp: None,
    }
}

struct MlpActs {
    gate: Vec<f64>,
    up: Vec<f64>,
    act: Vec<f64>,
    out: Vec<f64>,
}

fn mlp_forward(m: &MlpRef<'_, f64>, x: &[f64], rows: usize) -> MlpActs {
    let mut gate = vec![0.0; rows * m.hidden];
    let mut up = vec![0.0; rows * m.hidden];
    let gated = m.kind.is_gated();
    mlp::project(m, x, rows, gated.then_some(&mut gate[..]), &mut up);
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

struct RefForward {
    logits: Vec<f64>,
    routing: cpu::Routing,
    weights: Vec<f64>,
    expert_in: Vec<f64>,
    experts: Vec<Option<MlpActs>>,
    expert_out: Vec<f64>,
    shared: Option<MlpActs>,
    gate_logit: Vec<f64>,
    out: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn ref_forward(
    moe: &Moe,
    i: usize,
    d: usize,
    p: &BTreeMap<String, Vec<f64>>,
    x: &[f64],
    rows: usize,
) -> RefForward {
    let e = moe.experts as usize;
    let pre = |s: &str| format!("layers.{i}.moe.{s}");
    let mut logits = vec![0.0; rows * e];
    let wr = &p[&pre("router.weight")];
    linear::forward(x, rows, d, wr, None, e, &mut logits);
    let (routing, weights) = cpu::route(moe, &logits);
    let mut expert_in = vec![0.0; routing.expert.len() * d];
    cpu::gather(&routing, x, d, &mut expert_in);
    let hidden = moe.expert.hidden as usize;
    let mut expert_out = vec![0.0; expert_in.len()];
    let mut experts = Vec::new();
    for ex in 0..e {
        let (r0, r1) = (routing.offsets[ex], routing.offsets[ex + 1]);
        if r0 == r1 {
            experts.push(None);
            continue;
        }
        let m = mlp_ref(p, &pre(&format!("experts.{ex}")), moe, d, hidden);
        let a = mlp_forward(&m, &expert_in[r0 * d..r1 * d], r1 - r0);
        expert_out[r0 * d..r1 * d].copy_from_slice(&a.out);
        experts.push(Some(a));
    }
    let mut out = vec![0.0; rows * d];
    cpu::combine(&routing, &weights, &expert_out, d, &mut out);
    let mut shared = None;
    let mut gate_logit = Vec::new();
    if let Some(s) = &moe.shared {
        let m = mlp_ref(p, &pre("shared"), moe, d, (s.count * s.hidden) as usize);
        let a = mlp_forward(&m, x, rows);
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

/// dx and the parameter gradients of one layer (the executor's `moe_backward`).
#[allow(clippy::too_many_arguments)]
fn ref_backward(
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
        let m = mlp_ref(p, &pre("shared"), moe, d, (s.count * s.hidden) as usize);
        mlp_backward(&m, &pre("shared"), a, x, &d_so, rows, &mut grads, &mut dx);
    }
    let k = moe.top_k as usize;
    let slots = rows * k;
    let mut d_eo = vec![0.0; slots * d];
    let mut d_w = vec![0.0; slots];
    cpu::combine_backward(
        &f.routing,
        &f.weights,
        &f.expert_out,
        dout,
        d,
        &mut d_eo,
        &mut d_w,
    );
    let hidden = moe.expert.hidden as usize;
    let mut d_in = vec![0.0; slots * d];
    for ex in 0..e {
        let (r0, r1) = (f.routing.offsets[ex], f.routing.offsets[ex + 1]);
        let Some(a) = &f.experts[ex] else { continue };
        let prefix = pre(&format!("experts.{ex}"));
        let m = mlp_ref(p, &prefix, moe, d, hidden);
        mlp_backward(
            &m,
            &prefix,
            a,
            &f.expert_in[r0 * d..r1 * d],
            &d_eo[r0 * d..r1 * d],
            r1 - r0,
            &mut grads,
            &mut d_in[r0 * d..r1 * d],
        );
    }
    cpu::gather_backward(&f.routing, &d_in, d, &mut dx);
    let mut d_logits = vec![0.0; rows * e];
    cpu::route_backward(moe, &f.logits, &f.routing, &d_w, aux_dprobs, &mut d_logits);
    let name = pre("router.weight");
    let mut gw = grads.remove(&name).unwrap();
    linear::backward(
        x,
        &d_logits,
        rows,
        d,
        e,
        &p[&name],
        Some(&mut dx),
        &mut gw,
        None,
    );
    grads.insert(name, gw);
    (dx, grads)
}

/// For each row, the gap between the k-th and (k+1)-th router score (probabilities or logits,
/// whichever the router ranks).
fn min_gap(moe: &Moe, logits: &[f64]) -> f64 {
    let (e, k) = (moe.experts as usize, moe.top_k as usize);
    let mut worst = f64::INFINITY;
    for l in logits.chunks_exact(e) {
        let mut v: Vec<f64> = match moe.router {
            // Sigmoid is monotone: it ranks as the logits do.
            modelspec_dsl::ir::RouterOrder::TopkSoftmax
            | modelspec_dsl::ir::RouterOrder::SigmoidTopk => l.to_vec(),
            modelspec_dsl::ir::RouterOrder::SoftmaxTopk => {
                let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = l.iter().map(|x| (x - mx).exp()).sum();
                l.iter().map(|x| (x - mx).exp() / s).collect()
            }
        };
        v.sort_by(|a, b| b.partial_cmp(a).unwrap());
        if k < e {
            worst = worst.min(v[k - 1] - v[k]);
        }
    }
    worst
}

// ---------------------------------------------------------------- the GPU side

/// A layer's tensors in one device allocation: `offsets` are byte offsets by full name.
struct Packed {
    buf: GpuBuf<u8>,
    offsets: BTreeMap<String, usize>,
}

impl Packed {
    /// Packed: in table order, 256-byte aligned, except that a gate weight's successor (up)
    /// follows it directly. Otherwise every tensor is separated by a gap (never adjacent).
    fn layout(
        names: &[(String, usize)],
        elem: usize,
        packed: bool,
    ) -> (BTreeMap<String, usize>, usize) {
        let mut offsets = BTreeMap::new();
        let mut cur = 0usize;
        for (name, n) in names {
            offsets.insert(name.clone(), cur);
            cur += n * elem;
            if !(packed && name.ends_with("gate.weight")) {
                cur = cur.div_ceil(256) * 256 + if packed { 0 } else { 256 };
            }
        }
        (offsets, cur.max(1))
    }

    fn ptr(&self, name: &str) -> DevPtr {
        self.offsets
            .get(name)
            .map_or(0, |o| self.buf.ptr() + *o as u64)
    }
}

fn upload_params(
    gpu: &Gpu,
    p: &BTreeMap<String, Vec<f64>>,
    order: &[(String, Vec<u64>)],
    dt: Dtype,
    packed: bool,
) -> Packed {
    let names: Vec<(String, usize)> = order
        .iter()
        .map(|(n, s)| (n.clone(), s.iter().product::<u64>() as usize))
        .collect();
    let (offsets, total) = Packed::layout(&names, elem(dt), packed);
    let mut host = vec![0u8; total];
    for (name, off) in &offsets {
        let b = encode(&p[name], dt);
        host[*off..*off + b.len()].copy_from_slice(&b);
    }
    Packed {
        buf: gpu.upload(&host).unwrap(),
        offsets,
    }
}

fn zero_grads(gpu: &Gpu, order: &[(String, Vec<u64>)], packed: bool) -> Packed {
    let names: Vec<(String, usize)> = order
        .iter()
        .map(|(n, s)| (n.clone(), s.iter().product::<u64>() as usize))
        .collect();
    let (offsets, total) = Packed::layout(&names, 4, packed);
    Packed {
        buf: gpu.zeros::<u8>(total).unwrap(),
        offsets,
    }
}

fn download_grads(
    gpu: &Gpu,
    g: &Packed,
    order: &[(String, Vec<u64>)],
) -> BTreeMap<String, Vec<f64>> {
    let all = gpu.download(&g.buf).unwrap();
    order
        .iter()
        .map(|(name, shape)| {
            let n = shape.iter().product::<u64>() as usize;
            let off = g.offsets[name];
            (name.clone(), decode(&all[off..off + 4 * n], Dtype::F32))
        })
        .collect()
}

fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Norm-wise relative error of `got` against `want`, relative to at least `floor`.
fn rel(got: &[f64], want: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: Vec<f64> = got.iter().zip(want).map(|(a, b)| a - b).collect();
    let e = rms(&diff) / rms(want).max(floor).max(1e-30);
    if e.is_nan() { f64::INFINITY } else { e }
}

struct Inputs {
    params: Vec<BTreeMap<String, Vec<f64>>>,
    x: Vec<Vec<f64>>,
    dout: Vec<Vec<f64>>,
    seed: u64,
}

/// Draws inputs until the routing has no near-ties (see the module docs).
fn draw(spec: &ModelSpec, case: &Case, dt: Dtype, layers: &[usize]) -> Inputs {
    let d = spec.d_model as usize;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(7);
    for attempt in 0..50u64 {
        let seed = base.wrapping_add(attempt.wrapping_mul(0x9e37_79b9)) | 1;
        let mut rng = Rng(seed);
        let mut ok = true;
        let mut inp = Inputs {
            params: Vec::new(),
            x: Vec::new(),
            dout: Vec::new(),
            seed,
        };
        for &i in layers {
            let p = init_params(spec, i, &mut rng, case, dt);
            let mut x = rng.vec(case.rows * d, 1.0);
            if case.dead_expert.is_some() {
                for n in 0..case.rows {
                    x[n * d] = 3.0 + 0.1 * x[n * d];
                }
            }
            round(&mut x, dt);
            let mut dout = rng.vec(case.rows * d, 1.0);
            round(&mut dout, dt);
            let moe = moe_of(spec, i);
            let mut logits = vec![0.0; case.rows * moe.experts as usize];
            let wr = &p[&format!("layers.{i}.moe.router.weight")];
            linear::forward(
                &x,
                case.rows,
                d,
                wr,
                None,
                moe.experts as usize,
                &mut logits,
            );
            ok &= case.ties || min_gap(&moe, &logits) > 1e-5;
            inp.params.push(p);
            inp.x.push(x);
            inp.dout.push(dout);
        }
        if ok {
            return inp;
        }
    }
    panic!("no draw without near-ties in 50 attempts");
}

fn run(case: &Case, dt: Dtype, tol: f64) {
    let spec = load_str(case.src, "test.mspec", Format::Mspec).expect("spec is valid");
    let layers: Vec<usize> = (0..spec.layers.len())
        .filter(|&i| matches!(spec.layers[i].ffn, Ffn::Moe(_)))
        .collect();
    let d = spec.d_model as usize;
    let rows = case.rows;
    let inp = draw(&spec, case, dt, &layers);
    println!("{} {}: seed {}", spec.name, suffix(dt), inp.seed);

    // Reference: forward every layer (aux statistics over all of them), then backward.
    let mut aux = None;
    let mut fwd = Vec::new();
    for (li, &i) in layers.iter().enumerate() {
        let moe = moe_of(&spec, i);
        let f = ref_forward(&moe, i, d, &inp.params[li], &inp.x[li], rows);
        if moe.aux_loss > 0.0 {
            aux.get_or_insert_with(|| (cpu::AuxStats::new(moe.experts as usize), moe.aux_loss))
                .0
                .add(&f.logits, &f.routing);
        }
        fwd.push(f);
    }
    let aux_loss_ref = aux.as_ref().map(|(a, c)| c * a.loss());
    let aux_dprobs: Option<Vec<f64>> = aux.as_ref().map(|(a, c)| a.dprobs(*c));
    if let Some(e) = case.dead_expert {
        assert_eq!(fwd[0].routing.offsets[e], fwd[0].routing.offsets[e + 1]);
    }
    if case.ties {
        let k = moe_of(&spec, layers[0]).top_k as usize;
        let lowest: Vec<usize> = (0..rows * k).map(|s| s % k).collect();
        assert_eq!(
            fwd[0].routing.expert, lowest,
            "CPU ties go to the lower expert"
        );
    }
    let backs: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(li, &i)| {
            let moe = moe_of(&spec, i);
            let dprobs = aux_dprobs.as_deref().filter(|_| moe.aux_loss > 0.0);
            ref_backward(
                &moe,
                i,
                d,
                &inp.params[li],
                &fwd[li],
                &inp.x[li],
                &inp.dout[li],
                rows,
                dprobs,
            )
        })
        .collect();

    // The reference runs everywhere; the GPU side needs a device.
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            return;
        }
    };

    // GPU.
    let moes = MoeLayer::new_all(&gpu, &spec, rows, dt).unwrap();
    assert_eq!(moes.len(), layers.len());
    let gemm = gpu.gemm().unwrap();
    let scratch = gpu
        .zeros::<u8>(moes.iter().map(|m| m.scratch_bytes()).max().unwrap())
        .unwrap();
    let aux_buf = gpu.zeros::<f32>(1).unwrap();
    struct Dev {
        w: Packed,
        g: Packed,
        x: GpuBuf<u8>,
        out: GpuBuf<u8>,
        saved: GpuBuf<u8>,
        dout: GpuBuf<u8>,
        dx: GpuBuf<u8>,
        order: Vec<(String, Vec<u64>)>,
    }
    let mut dev = Vec::new();
    for (li, (&i, m)) in layers.iter().zip(&moes).enumerate() {
        let order = layer_params(&spec, i);
        dev.push(Dev {
            w: upload_params(&gpu, &inp.params[li], &order, dt, case.packed),
            g: zero_grads(&gpu, &order, case.packed),
            x: gpu.upload(&encode(&inp.x[li], dt)).unwrap(),
            out: gpu.zeros::<u8>(rows * d * elem(dt)).unwrap(),
            saved: gpu.zeros::<u8>(m.saved_bytes()).unwrap(),
            dout: gpu.upload(&encode(&inp.dout[li], dt)).unwrap(),
            dx: gpu.zeros::<u8>(rows * d * elem(dt)).unwrap(),
            order,
        });
    }
    let name_of = |i: usize, n: &str| format!("layers.{i}.{n}");
    let forward_all = |aux_buf: &mut GpuBuf<f32>| -> (Vec<Vec<u8>>, f32) {
        gpu.write(aux_buf, &[0.0]).unwrap();
        let mut outs = Vec::new();
        for ((&i, m), dv) in layers.iter().zip(&moes).zip(&dev) {
            let w = |n: &str| dv.w.ptr(&name_of(i, n));
            m.forward(
                &gemm,
                &w,
                dv.x.ptr(),
                dv.out.ptr(),
                dv.saved.ptr(),
                scratch.ptr(),
                aux_buf.ptr(),
            )
            .unwrap();
            outs.push(gpu.download(&dv.out).unwrap());
        }
        (outs, gpu.download(aux_buf).unwrap()[0])
    };
    let backward_all = || -> Vec<Vec<u8>> {
        let mut dxs = Vec::new();
        for ((&i, m), dv) in layers.iter().zip(&moes).zip(&dev).rev() {
            let w = |n: &str| dv.w.ptr(&name_of(i, n));
            let g = |n: &str| dv.g.ptr(&name_of(i, n));
            m.backward(
                &gemm,
                &w,
                &g,
                dv.x.ptr(),
                dv.dout.ptr(),
                dv.saved.ptr(),
                scratch.ptr(),
                dv.dx.ptr(),
            )
            .unwrap();
            dxs.push(gpu.download(&dv.dx).unwrap());
        }
        dxs.reverse();
        dxs
    };
    let mut aux_buf = aux_buf;
    let (outs, aux_gpu) = forward_all(&mut aux_buf);
    let (outs2, aux_gpu2) = forward_all(&mut aux_buf);
    assert!(outs == outs2, "forward is not bitwise reproducible");
    assert_eq!(
        aux_gpu.to_bits(),
        aux_gpu2.to_bits(),
        "aux loss not reproducible"
    );

    let mut report = Vec::new();
    for (li, m) in moes.iter().enumerate() {
        let f = &fwd[li];
        let r = m.routing(dev[li].saved.ptr()).unwrap();
        assert_eq!(
            r.experts, f.routing.expert,
            "layer {}: routing differs",
            layers[li]
        );
        let counts: Vec<usize> = f.routing.offsets.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            r.counts, counts,
            "layer {}: expert counts differ",
            layers[li]
        );
        let rw: Vec<f64> = r.weights.iter().map(|&w| w as f64).collect();
        let ew = rel(&rw, &f.weights, 0.0);
        assert!(
            ew <= 1e-5,
            "layer {}: routing weights rel err {ew:.3e}",
            layers[li]
        );
        let eo = rel(&decode(&outs[li], dt), &f.out, 0.0);
        assert!(
            eo <= tol,
            "layer {}: out rel err {eo:.3e} above {tol:.0e}",
            layers[li]
        );
        report.push(format!("out {eo:.2e}"));
    }
    if let Some(want) = aux_loss_ref {
        let ea = (aux_gpu as f64 - want).abs() / want.abs();
        assert!(
            ea <= 1e-4,
            "aux loss gpu {aux_gpu} cpu {want}: rel {ea:.3e}"
        );
        report.push(format!("aux {ea:.2e}"));
    } else {
        assert_eq!(aux_gpu, 0.0, "no aux loss in the spec, yet one was added");
    }

    // Backward twice: dx identical, gradients doubled.
    let dxs = backward_all();
    let grads1: Vec<_> = dev
        .iter()
        .map(|dv| download_grads(&gpu, &dv.g, &dv.order))
        .collect();
    let dxs2 = backward_all();
    assert!(dxs == dxs2, "backward dx is not bitwise reproducible");
    let grads2: Vec<_> = dev
        .iter()
        .map(|dv| download_grads(&gpu, &dv.g, &dv.order))
        .collect();

    let mut worst = (0.0f64, String::new());
    for (li, &i) in layers.iter().enumerate() {
        let (dx_ref, g_ref) = &backs[li];
        let edx = rel(&decode(&dxs[li], dt), dx_ref, 0.0);
        assert!(
            edx <= tol,
            "layer {i}: dx rel err {edx:.3e} above {tol:.0e}"
        );
        report.push(format!("dx {edx:.2e}"));
        let scale = g_ref.values().map(|g| rms(g)).fold(0.0, f64::max);
        for (name, want) in g_ref {
            let got = &grads1[li][name];
            let e = rel(got, want, 1e-3 * scale);
            assert!(e <= tol, "grad {name}: rel err {e:.3e} above {tol:.0e}");
            let twice: Vec<f64> = got.iter().map(|v| 2.0 * v).collect();
            let ea = rel(&grads2[li][name], &twice, 1e-3 * scale);
            assert!(ea <= 1e-6, "grad {name} does not accumulate: rel {ea:.3e}");
            if e > worst.0 {
                worst = (e, name.clone());
            }
        }
    }
    println!(
        "PARITY moe {} {} {} grads worst {:.2e} ({})",
        spec.name,
        suffix(dt),
        report.join(" "),
        worst.0,
        worst.1
    );
}

fn suffix(dt: Dtype) -> &'static str {
    match dt {
        Dtype::F32 => "f32",
        Dtype::Bf16 => "bf16",
    }
}

/// The trainer keeps MoE layers behind `Send + Sync` trait objects.
#[test]
fn moe_layer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<MoeLayer>();
}

/// `Σ_layers Σ out · dout + coef · aux` over all MoE layers: the scalar whose gradient the
/// reference backward computes.
fn objective(
    spec: &ModelSpec,
    layers: &[usize],
    params: &[BTreeMap<String, Vec<f64>>],
    xs: &[Vec<f64>],
    douts: &[Vec<f64>],
    rows: usize,
) -> f64 {
    let d = spec.d_model as usize;
    let mut total = 0.0;
    let mut aux: Option<(cpu::AuxStats, f64)> = None;
    for (li, &i) in layers.iter().enumerate() {
        let moe = moe_of(spec, i);
        let f = ref_forward(&moe, i, d, &params[li], &xs[li], rows);
        total += f
            .out
            .iter()
            .zip(&douts[li])
            .map(|(a, b)| a * b)
            .sum::<f64>();
        if moe.aux_loss > 0.0 {
            aux.get_or_insert_with(|| (cpu::AuxStats::new(moe.experts as usize), moe.aux_loss))
                .0
                .add(&f.logits, &f.routing);
        }
    }
    total + aux.map_or(0.0, |(a, c)| c * a.loss())
}

/// The test's reference (the CPU ops composed as the executor composes them) against central
/// differences, so that a GPU mismatch points at the GPU. Runs without a device.
#[test]
fn reference_matches_finite_differences() {
    for case in [&QWEN2_CASE, &AWKWARD_CASE, &TWO_LAYER_CASE, &TOPK_CASE] {
        let spec = load_str(case.src, "test.mspec", Format::Mspec).expect("spec is valid");
        let layers: Vec<usize> = (0..spec.layers.len())
            .filter(|&i| matches!(spec.layers[i].ffn, Ffn::Moe(_)))
            .collect();
        let d = spec.d_model as usize;
        let rows = case.rows;
        let inp = draw(&spec, case, Dtype::F32, &layers);
        let mut aux = None;
        let mut fwd = Vec::new();
        for (li, &i) in layers.iter().enumerate() {
            let moe = moe_of(&spec, i);
            let f = ref_forward(&moe, i, d, &inp.params[li], &inp.x[li], rows);
            if moe.aux_loss > 0.0 {
                aux.get_or_insert_with(|| (cpu::AuxStats::new(moe.experts as usize), moe.aux_loss))
                    .0
                    .add(&f.logits, &f.routing);
            }
            fwd.push(f);
        }
        let dprobs: Option<Vec<f64>> = aux.as_ref().map(|(a, c)| a.dprobs(*c));
        let mut rng = Rng(inp.seed ^ 0x5555);
        let h = 1e-7;
        let mut checked = 0;
        for (li, &i) in layers.iter().enumerate() {
            let moe = moe_of(&spec, i);
            let (dx, grads) = ref_backward(
                &moe,
                i,
                d,
                &inp.params[li],
                &fwd[li],
                &inp.x[li],
                &inp.dout[li],
                rows,
                dprobs.as_deref().filter(|_| moe.aux_loss > 0.0),
            );
            let mut probe = |name: &str, idx: usize, analytic: f64| {
                let eval = |delta: f64| {
                    let mut params = inp.params.clone();
                    let mut xs = inp.x.clone();
                    if name == "x" {
                        xs[li][idx] += delta;
                    } else {
                        params[li].get_mut(name).unwrap()[idx] += delta;
                    }
                    objective(&spec, &layers, &params, &xs, &inp.dout, rows)
                };
                let fd = (eval(h) - eval(-h)) / (2.0 * h);
                assert!(
                    (fd - analytic).abs() <= 1e-6 + 1e-4 * analytic.abs(),
                    "{} layer {i}: d/d {name}[{idx}] analytic {analytic:.9e} finite difference {fd:.9e}",
                    spec.name
                );
                checked += 1;
            };
            for _ in 0..4 {
                let idx = (rng.next() * dx.len() as f64) as usize;
                probe("x", idx, dx[idx]);
            }
            for (name, g) in &grads {
                let idx = (rng.next() * g.len() as f64) as usize;
                probe(name, idx, g[idx]);
            }
        }
        println!("{}: {checked} derivatives checked", spec.name);
    }
}
