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
//! The newer routing options (issue 12) each have a case: DeepSeek-V3's sigmoid router with its
//! selection-only correction bias, expert groups and routed scale; GPT-OSS's router bias, expert
//! biases and clamped SwiGLU (with a limit low enough that about a sixth of the gate and up
//! values are clamped; the reference decides the clamp on the projections rounded to what the GPU
//! stores, since a clamp is a discontinuity); Llama 4's top-1 sigmoid router weighting the
//! experts' inputs, with a shared expert.
//!
//! Without a CUDA device the GPU tests print "skipping: no CUDA device" and pass.

mod common;
#[path = "cuda_moe/device.rs"]
mod device;
#[path = "cuda_moe/inputs.rs"]
mod inputs;
#[path = "cuda_moe/reference.rs"]
mod reference;

use std::collections::BTreeMap;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::Ffn;
use modelspec_dsl::load::{Format, load_str};
use modelspec_runtime::cuda::moe::{KERNEL_NAMES, MoeLayer, kernel_source};
use modelspec_runtime::cuda::{Dtype, GpuBuf, compile};
use modelspec_runtime::ops::moe as cpu;

use common::gpu::Rng;
use device::{Packed, download_grads, upload_params, zero_grads};
use inputs::{decode, draw, elem, encode, layer_params};
use reference::{
    clamped_fractions, correction, moe_of, ref_backward, ref_forward, routing_changes,
};

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

/// Sigmoid router with a correction bias, 4 groups of 4 experts (2 kept), top-3, renormalised and
/// scaled by 2.5, an ungated shared expert (DeepSeek-V3, GLM-4.5).
const DEEPSEEK_LIKE: &str = "model t_deepseek {
    vocab 64   d_model 48   layers 1   context 64
    norm rms(eps = 1e-6)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 16  top_k 3
        expert swiglu(hidden = 40)
        router sigmoid_topk  renormalize  correction_bias  groups 4  top_groups 2  routed_scale 2.5
        shared(count = 1, hidden = 32, gate = false)
    }
}";

/// top-k -> softmax over the biased router logits, expert biases, the clamped SwiGLU with limit
/// 1 (GPT-OSS's is 7, far from this test's O(1) projections), aux loss (GPT-OSS with
/// output_router_logits).
const GPT_OSS_LIKE: &str = "model t_gpt_oss {
    vocab 64   d_model 40   layers 1   context 64
    norm rms(eps = 1e-5)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 8  top_k 2
        expert swiglu(hidden = 32, bias = true, limit = 1.0, alpha = 1.702)
        router topk_softmax  router_bias
        aux_loss 0.02
    }
}";

/// Top-1 sigmoid router whose weight scales the expert's input, a shared expert (Llama 4).
const LLAMA4_LIKE: &str = "model t_llama4 {
    vocab 64   d_model 48   layers 1   context 64
    norm rms(eps = 1e-5)
    attention { heads 4 }
    position rope(theta = 10000)
    moe {
        experts 8  top_k 1
        expert swiglu(hidden = 32)
        router sigmoid_topk  weighting input
        shared(count = 1, hidden = 32, gate = false)
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

#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_deepseek_sigmoid_groups_f32() {
    run(&DEEPSEEK_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_deepseek_sigmoid_groups_bf16() {
    run(&DEEPSEEK_CASE, Dtype::Bf16, 3e-2);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_gpt_oss_biases_clamp_f32() {
    run(&GPT_OSS_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_gpt_oss_biases_clamp_bf16() {
    run(&GPT_OSS_CASE, Dtype::Bf16, 3e-2);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_llama4_input_weighting_f32() {
    run(&LLAMA4_CASE, Dtype::F32, 1e-4);
}
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_llama4_input_weighting_bf16() {
    run(&LLAMA4_CASE, Dtype::Bf16, 3e-2);
}

const DEEPSEEK_CASE: Case = Case {
    src: DEEPSEEK_LIKE,
    rows: 40,
    dead_expert: None,
    packed: false,
    ties: false,
};
const GPT_OSS_CASE: Case = Case {
    src: GPT_OSS_LIKE,
    rows: 40,
    dead_expert: None,
    packed: true,
    ties: false,
};
const LLAMA4_CASE: Case = Case {
    src: LLAMA4_LIKE,
    rows: 33,
    dead_expert: None,
    packed: true,
    ties: false,
};
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
        let f = ref_forward(&moe, i, d, &inp.params[li], &inp.x[li], rows, Some(dt));
        if moe.aux_loss > 0.0 {
            aux.get_or_insert_with(|| (cpu::AuxStats::new(moe.experts as usize), moe.aux_loss))
                .0
                .add(&f.logits, &f.routing);
        }
        fwd.push(f);
    }
    for (li, &i) in layers.iter().enumerate() {
        let moe = moe_of(&spec, i);
        if let Some((gate, up)) = clamped_fractions(&moe, &fwd[li]) {
            println!(
                "clamped: {:.1}% of gate values, {:.1}% of up values",
                100.0 * gate,
                100.0 * up
            );
            assert!(gate > 0.02 && up > 0.02, "the case must hit both clamps");
        }
        let (bias, groups) = routing_changes(&moe, &fwd[li], correction(i, &inp.params[li]));
        if moe.correction_bias {
            assert!(
                bias > 0,
                "the correction bias must change some token's experts"
            );
        }
        if moe.groups.is_some() {
            assert!(groups > 0, "the groups must change some token's experts");
        }
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
    let Some(gpu) = common::gpu::device() else {
        return;
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
        let f = ref_forward(&moe, i, d, &params[li], &xs[li], rows, None);
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
    for case in [
        &QWEN2_CASE,
        &AWKWARD_CASE,
        &TWO_LAYER_CASE,
        &TOPK_CASE,
        &DEEPSEEK_CASE,
        &GPT_OSS_CASE,
        &LLAMA4_CASE,
    ] {
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
            let f = ref_forward(&moe, i, d, &inp.params[li], &inp.x[li], rows, None);
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
                let idx = (rng.uniform() * dx.len() as f64) as usize;
                probe("x", idx, dx[idx]);
            }
            for (name, g) in &grads {
                let idx = (rng.uniform() * g.len() as f64) as usize;
                probe(name, idx, g[idx]);
            }
        }
        println!("{}: {checked} derivatives checked", spec.name);
    }
}
