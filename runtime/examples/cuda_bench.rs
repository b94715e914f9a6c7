//! GPU micro-benchmarks of the CUDA backend, printing one JSON line per measurement.
//!
//! ```text
//! cargo run --release -p modelspec-runtime --example cuda_bench -- attention   # attn_bench.py's shapes
//! cargo run --release -p modelspec-runtime --example cuda_bench -- gemm        # bf16 8192^3 ceiling
//! cargo run --release -p modelspec-runtime --example cuda_bench -- cudnn       # mma vs cuDNN, same shapes
//! cargo run --release -p modelspec-runtime --example cuda_bench -- reduce      # bias/norm gradient sums
//! cargo run --release -p modelspec-runtime --example cuda_bench -- bgrad       # bias grads in the GEMM
//! cargo run --release -p modelspec-runtime --example cuda_bench -- norm        # norm fwd/bwd/dw, warp vs block
//! cargo run --release -p modelspec-runtime --example cuda_bench -- xent        # cross-entropy chunks
//! cargo run --release -p modelspec-runtime --example cuda_bench -- hopper      # own wgmma GEMM vs cuBLASLt
//! ```
//! `cudnn` prints, per shape, rows for the own kernels (`"path"`: on a Hopper GPU `hopper`,
//! `hopper-overlap`, `hopper-poly` and `hopper-pingpong`, the Hopper forward's schedules on its
//! persistent grid, `hopper-tiles` and `hopper-overlap-tiles` one block a tile, `hopper-m192`
//! with 192-query tiles, then `mma`; each with the own backward; last `hopper+hopper-bwd`, the
//! Hopper backward's first step where it takes the shape) and one for
//! cuDNN's fused attention, all on the dense layout, then a cuDNN row on the trainer's fused qkv
//! layout (`"layout": "fused"`), each cuDNN layout followed by `hopper+cudnn` (the Hopper forward,
//! cuDNN's backward from its o and lse), so one run compares the paths beside PyTorch's anchors; a last cuDNN
//! row per shape runs PyTorch's head-major layout (`"layout": "head-major"`, an experiment:
//! bench/collect_session.py keeps it beside the row, not as its figure). After
//! attn_bench.py's shapes come DeepSeek-V3's latent-attention shapes (128 heads, q/k head dim
//! 192, value head dim 128 (`"DV"`), causal, T 4096 and 1024 at 8192 tokens): the own kernels
//! run those on the reference-grade path (`"path": "simple"`, fewer repetitions), cuDNN on its
//! fused kernel. TFLOP/s count causal attention's halved matmuls: forward 2·B·H·T²·(D + Dv)/2,
//! forward + backward B·H·T²·(4D + 3Dv). `reduce` times
//! the column reductions at gpt2-124m's B16 T1024 shapes (one row per bias width and the norms'
//! weight + bias sums), with the bandwidth they reach, and the total of one training step's calls.
//! Times are medians of CUDA-event-timed repetitions after a warm-up, on random (never zero) data.
//! `cudnn` times each run after clearing a 256 MiB buffer, as `triton.testing.do_bench` does for
//! attn_backends.py's PyTorch rows (cold L2, launch work hidden); its `warm_*` fields are the same
//! runs back to back without the clear.

use modelspec_runtime::cuda::cudnn::CudnnAttention;
use modelspec_runtime::cuda::{
    AttnShape, CudaError, Dtype, Epilogue, FwdKernel, Gpu, GpuBuf, HopperLaunch, HopperSchedule,
    Kernels, NormKind, ReduceScratch, RowMajorGemm,
};
use std::sync::Arc;

#[path = "cuda_bench/bgrad.rs"]
mod bgrad;
#[path = "cuda_bench/norm.rs"]
mod norm;
#[path = "cuda_bench/xent.rs"]
mod xent;

/// The four shapes of anchors/attn_bench.py: (B, H, KV, T, D).
const ATTN_SHAPES: [(usize, usize, usize, usize, usize); 4] = [
    (16, 12, 12, 1024, 64),
    (8, 32, 8, 2048, 64),
    (4, 32, 8, 4096, 128),
    (8, 16, 16, 2048, 128),
];

/// DeepSeek-V3's latent attention as the trainer runs it (per-head keys and values expanded from
/// the latent): (B, H, KV, T, D, Dv) with 128 heads, q/k head dim 192 (128 nope + 64 rope), value
/// head dim 128, at 8192 tokens a batch (~3.3 GiB of bf16 inputs, gradients and f32 scratch).
const MLA_SHAPES: [(usize, usize, usize, usize, usize, usize); 2] =
    [(2, 128, 128, 4096, 192, 128), (8, 128, 128, 1024, 192, 128)];

fn rand_bf16(n: usize, seed: u64) -> Vec<u16> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // uniform in [-2, 2): plenty for attention scores of unit-variance-ish inputs
            let x = ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0;
            (x.to_bits() >> 16) as u16
        })
        .collect()
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `f`'s time: 3 warm-up runs, then the median of `reps` CUDA-event-timed runs (ms).
fn timed(gpu: &Gpu, reps: usize, f: &dyn Fn() -> Result<(), CudaError>) -> Result<f32, CudaError> {
    for _ in 0..3 {
        f()?;
    }
    let mut t = Vec::new();
    for _ in 0..reps {
        t.push(gpu.time_ms(f)?);
    }
    Ok(median(t))
}

fn bench_attention(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let shapes = ATTN_SHAPES;
    let kernels = Kernels::load(gpu, "bench_attention", &[64, 128], Default::default())?;
    for (b, h, kv, t, d) in shapes {
        let s = AttnShape::dense(b, t, h, kv, d);
        let rows = b * t;
        let q = gpu.upload(&rand_bf16(rows * h * d, 1))?;
        let k = gpu.upload(&rand_bf16(rows * kv * d, 2))?;
        let v = gpu.upload(&rand_bf16(rows * kv * d, 3))?;
        let dout = gpu.upload(&rand_bf16(rows * h * d, 4))?;
        let o = gpu.zeros::<u16>(rows * h * d)?;
        let dq = gpu.zeros::<u16>(rows * h * d)?;
        let dk = gpu.zeros::<u16>(rows * kv * d)?;
        let dv = gpu.zeros::<u16>(rows * kv * d)?;
        let lse = gpu.zeros::<f32>(b * h * t)?;
        let delta = gpu.zeros::<f32>(b * h * t)?;
        let dq_acc = gpu.zeros::<f32>(rows * h * d)?;
        let bytes = 2 * (4 * rows * h * d + 4 * rows * kv * d) + 4 * (2 * b * h * t + rows * h * d);
        let fwd = || {
            kernels.attn_fwd(
                Dtype::Bf16,
                &s,
                o.ptr(),
                lse.ptr(),
                q.ptr(),
                k.ptr(),
                v.ptr(),
            )
        };
        let bwd = || {
            kernels.attn_bwd(
                Dtype::Bf16,
                &s,
                dq.ptr(),
                dk.ptr(),
                dv.ptr(),
                dq_acc.ptr(),
                delta.ptr(),
                dout.ptr(),
                o.ptr(),
                lse.ptr(),
                q.ptr(),
                k.ptr(),
                v.ptr(),
            )
        };
        for _ in 0..3 {
            fwd()?;
            bwd()?;
        }
        gpu.sync()?;
        let reps = 25;
        let mut tf = Vec::new();
        let mut tfb = Vec::new();
        for _ in 0..reps {
            tf.push(gpu.time_ms(fwd)?);
            tfb.push(gpu.time_ms(|| {
                fwd()?;
                bwd()
            })?);
        }
        let (fw, fb) = (median(tf), median(tfb));
        let flops = 4.0 * (b * h * t * t * d) as f64 / 2.0;
        println!(
            "{{\"B\": {b}, \"H\": {h}, \"KV\": {kv}, \"T\": {t}, \"D\": {d}, \"fwd_ms\": {fw:.3}, \"fwd_TFLOPs\": {:.1}, \"fwdbwd_ms\": {fb:.3}, \"fwdbwd_TFLOPs\": {:.1}, \"peak_gib\": {:.3}, \"mma\": {}}}",
            flops / fw as f64 / 1e9,
            3.5 * flops / fb as f64 / 1e9,
            bytes as f64 / (1u64 << 30) as f64,
            kernels.attn_uses_mma(Dtype::Bf16, &s)
        );
    }
    Ok(())
}

/// Times `fwd` alone and `fwd` then `bwd` the way `triton.testing.do_bench` times PyTorch's SDPA
/// in attn_backends.py: before each event-timed run `flush` (256 MiB) is cleared, so the L2 cache
/// starts cold and the host's launch work overlaps the clear instead of counting as device time.
/// Returns (fwd, fwd+bwd) medians of `reps` runs after `min(reps, 3)` warm-ups, and the same pair
/// timed back to back without the clear (warm cache, launch gaps included), in that order.
fn time_pair(
    gpu: &Gpu,
    flush: &mut GpuBuf<u8>,
    reps: usize,
    mut fwd: impl FnMut() -> Result<(), String>,
    mut bwd: impl FnMut() -> Result<(), String>,
) -> Result<[f32; 4], String> {
    let e = |e: CudaError| e.to_string();
    for _ in 0..reps.clamp(1, 3) {
        fwd()?;
        bwd()?;
    }
    gpu.sync().map_err(e)?;
    let mut times: [Vec<f32>; 4] = Default::default();
    let mut err = None;
    for _ in 0..reps.max(1) {
        for (i, with_bwd) in [(0, false), (1, true), (2, false), (3, true)] {
            if i < 2 {
                gpu.memset_zero(flush).map_err(e)?;
            }
            let t = gpu.time_ms(|| {
                if let Err(e) = fwd().and_then(|_| if with_bwd { bwd() } else { Ok(()) }) {
                    err = Some(e);
                }
                Ok(())
            });
            times[i].push(t.map_err(e)?);
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    Ok(times.map(median))
}

/// The own kernels and cuDNN's fused attention on attn_bench.py's shapes and DeepSeek-V3's latent
/// attention shapes, one JSON row per path and layout; a path that cannot run a shape prints its
/// error in the row.
fn bench_cudnn(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let mut kernels = Kernels::load(gpu, "bench_attention", &[64, 128], Default::default())?;
    let attn = match CudnnAttention::new(gpu) {
        Ok(a) => {
            println!(
                "{{\"cudnn_library\": \"{}\", \"cudnn_version\": \"{}\"}}",
                a.library().path,
                a.library().version_string()
            );
            Some(a)
        }
        Err(e) => {
            println!("{{\"cudnn_error\": {:?}}}", e.to_string());
            None
        }
    };
    // Cleared before every timed run (see `time_pair`).
    let mut flush = gpu.zeros::<u8>(256 << 20)?;
    // `cuda_bench cudnn T/D ...` (e.g. `1024/64`): only the shapes of those lengths and head dims.
    let only: Vec<String> = std::env::args().skip(2).collect();
    let shapes = ATTN_SHAPES
        .iter()
        .map(|&(b, h, kv, t, d)| (b, h, kv, t, d, d))
        .chain(MLA_SHAPES)
        .filter(|&(_, _, _, t, d, _)| only.is_empty() || only.contains(&format!("{t}/{d}")));
    for (b, h, kv, t, d, dv) in shapes {
        let rows = b * t;
        let w = (h + kv) * d + kv * dv;
        // One fused projection and its gradient serve both layouts: the dense rows use its
        // first H*D (q), next KV*D (k) and last KV*Dv (v) elements as separate dense buffers.
        let qkv = gpu.upload(&rand_bf16(rows * w, 1))?;
        let dqkv = gpu.zeros::<u16>(rows * w)?;
        let dout = gpu.upload(&rand_bf16(rows * h * dv, 4))?;
        let o = gpu.zeros::<u16>(rows * h * dv)?;
        let lse = gpu.zeros::<f32>(b * h * t)?;
        let delta = gpu.zeros::<f32>(b * h * t)?;
        let dq_acc = gpu.zeros::<f32>(rows * h * d)?;
        // causal: half of each T x T product
        let bhtt = (b * h * t * t) as f64;
        let flops = 2.0 * bhtt * (d + dv) as f64 / 2.0;
        let flops_fb = bhtt * (4 * d + 3 * dv) as f64;
        let dense = AttnShape {
            v_head_dim: dv,
            ldv: kv * dv,
            ldo: h * dv,
            ..AttnShape::dense(b, t, h, kv, d)
        };
        let fused = AttnShape {
            ldq: w,
            ldk: w,
            ldv: w,
            ..dense
        };
        let (q0, k0, v0) = (qkv.ptr(), qkv.at(rows * h * d), qkv.at(rows * (h + kv) * d));
        let (dq0, dk0, dv0) = (
            dqkv.ptr(),
            dqkv.at(rows * h * d),
            dqkv.at(rows * (h + kv) * d),
        );
        let (qf, kf, vf) = (qkv.ptr(), qkv.at(h * d), qkv.at((h + kv) * d));
        let (dqf, dkf, dvf) = (dqkv.ptr(), dqkv.at(h * d), dqkv.at((h + kv) * d));
        let row = |path: &str, layout: &str, r: Result<[f32; 4], String>, extra: String| {
            let head = format!(
                "{{\"path\": \"{path}\", \"layout\": \"{layout}\", \"B\": {b}, \"H\": {h}, \"KV\": {kv}, \"T\": {t}, \"D\": {d}, \"DV\": {dv}"
            );
            match r {
                Ok([fw, fb, fw_warm, fb_warm]) => println!(
                    "{head}, \"fwd_ms\": {fw:.3}, \"fwd_TFLOPs\": {:.1}, \"fwdbwd_ms\": {fb:.3}, \"fwdbwd_TFLOPs\": {:.1}, \"warm_fwd_ms\": {fw_warm:.3}, \"warm_fwdbwd_ms\": {fb_warm:.3}{extra}}}",
                    flops / fw as f64 / 1e9,
                    flops_fb / fb as f64 / 1e9
                ),
                Err(e) => println!("{head}, \"error\": {e:?}}}"),
            }
        };
        // own kernels, dense layout: each forward the library has for the shape (the Hopper
        // kernel, then mma.sync; else the reference-grade kernels, seconds a call at the latent
        // shapes: fewer repetitions), each with the own backward
        // The row suffix of the Hopper backward.
        const HOPPER_BWD: &str = "+hopper-bwd";
        let first = kernels.attn_fwd_kernel(Dtype::Bf16, &dense);
        // (kernel, how the Hopper kernel runs, name suffix)
        let plain = HopperLaunch::default();
        let mut own_fwds = vec![(first, plain, "")];
        if let FwdKernel::Hopper(_) = first {
            let with = |schedule| HopperLaunch { schedule, ..plain };
            let tiles = |schedule| HopperLaunch {
                persistent: false,
                ..with(schedule)
            };
            own_fwds = vec![
                (FwdKernel::Hopper(HopperSchedule::Plain), plain, ""),
                (
                    FwdKernel::Hopper(HopperSchedule::Overlap),
                    with(HopperSchedule::Overlap),
                    "",
                ),
                (
                    FwdKernel::Hopper(HopperSchedule::OverlapPoly),
                    with(HopperSchedule::OverlapPoly),
                    "",
                ),
                (
                    FwdKernel::Hopper(HopperSchedule::Plain),
                    tiles(HopperSchedule::Plain),
                    "-tiles",
                ),
                (
                    FwdKernel::Hopper(HopperSchedule::Overlap),
                    tiles(HopperSchedule::Overlap),
                    "-tiles",
                ),
                (FwdKernel::Mma, plain, ""),
                // Last, the variants built after the last device call.
                (
                    FwdKernel::Hopper(HopperSchedule::Plain),
                    HopperLaunch {
                        wide: true,
                        ..plain
                    },
                    "-m192",
                ),
                (
                    FwdKernel::Hopper(HopperSchedule::PingPong),
                    with(HopperSchedule::PingPong),
                    "",
                ),
                // The Hopper backward's first step (`MODELSPEC_ATTN_HOPPER_BWD`) after the plain
                // forward, where it takes the shape.
                (FwdKernel::Hopper(HopperSchedule::Plain), plain, HOPPER_BWD),
            ];
        }
        // `CUDA_BENCH_SKIP=name,...` leaves those rows out (e.g. a kernel variant that hung in its
        // parity run: a hang would end the bench's call).
        let skip = std::env::var("CUDA_BENCH_SKIP").unwrap_or_default();
        let skip: Vec<&str> = skip.split(',').map(str::trim).collect();
        for (fk, launch, suffix) in own_fwds {
            let name = format!("{}{suffix}", fk.name());
            if skip.contains(&name.as_str()) {
                continue;
            }
            kernels.set_attn_hopper(matches!(fk, FwdKernel::Hopper(_)));
            kernels.set_attn_hopper_launch(launch);
            kernels.set_attn_hopper_bwd(suffix == HOPPER_BWD);
            if suffix == HOPPER_BWD && !kernels.attn_bwd_uses_hopper(Dtype::Bf16, &dense) {
                continue;
            }
            let reps = if fk == FwdKernel::Simple { 3 } else { 25 };
            let r = time_pair(
                gpu,
                &mut flush,
                reps,
                || {
                    kernels
                        .attn_fwd(Dtype::Bf16, &dense, o.ptr(), lse.ptr(), q0, k0, v0)
                        .map_err(|e| e.to_string())
                },
                || {
                    kernels
                        .attn_bwd(
                            Dtype::Bf16,
                            &dense,
                            dq0,
                            dk0,
                            dv0,
                            dq_acc.ptr(),
                            delta.ptr(),
                            dout.ptr(),
                            o.ptr(),
                            lse.ptr(),
                            q0,
                            k0,
                            v0,
                        )
                        .map_err(|e| e.to_string())
                },
            );
            row(&name, "dense", r, String::new());
        }
        kernels.set_attn_hopper_bwd(false);
        kernels.set_attn_hopper(true);
        kernels.set_attn_hopper_launch(plain);
        let hopper = matches!(
            kernels.attn_fwd_kernel(Dtype::Bf16, &dense),
            FwdKernel::Hopper(_)
        );
        let Some(attn) = attn.as_ref() else { continue };
        // The last layout is an experiment, not a trainer layout: PyTorch's head-major
        // `[B, H, T, D]` tensors (each head's rows contiguous) over the dense buffers, which hold
        // as many elements.
        let head_major = AttnShape {
            head_major: true,
            ..dense
        };
        let layouts = [
            ("dense", dense, (q0, k0, v0), (dq0, dk0, dv0)),
            ("fused", fused, (qf, kf, vf), (dqf, dkf, dvf)),
            ("head-major", head_major, (q0, k0, v0), (dq0, dk0, dv0)),
        ];
        for (layout, s, (q, k, v), (dq, dk, dv)) in layouts {
            let t0 = std::time::Instant::now();
            let info = match attn.prepare(&s) {
                Ok(i) => i,
                Err(e) => {
                    row("cudnn", layout, Err(e.to_string()), String::new());
                    continue;
                }
            };
            let build_s = t0.elapsed().as_secs_f64();
            let ws_bytes = info.fwd_workspace.max(info.bwd_workspace).max(1);
            let ws = gpu.zeros::<u8>(ws_bytes)?;
            // cuDNN's backward, after its own forward and after the Hopper one's.
            let bwd = || {
                attn.bwd(
                    &s,
                    dq,
                    dk,
                    dv,
                    dq_acc.ptr(),
                    delta.ptr(),
                    dout.ptr(),
                    o.ptr(),
                    lse.ptr(),
                    q,
                    k,
                    v,
                    ws.ptr(),
                    ws_bytes,
                )
                .map_err(|e| e.to_string())
            };
            let r = time_pair(
                gpu,
                &mut flush,
                25,
                || {
                    attn.fwd(&s, o.ptr(), lse.ptr(), q, k, v, ws.ptr(), ws_bytes)
                        .map_err(|e| e.to_string())
                },
                bwd,
            );
            let extra = format!(
                ", \"plan_build_s\": {build_s:.2}, \"configs\": [{}, {}], \"engines\": [{}, {}], \"workspace_mib\": {:.1}",
                info.fwd_config,
                info.bwd_config,
                info.fwd_engine,
                info.bwd_engine,
                ws_bytes as f64 / (1u64 << 20) as f64
            );
            row("cudnn", layout, r, extra.clone());
            // The Hopper forward, then cuDNN's backward from its o and lse (the paths share
            // both): the forward the own kernel wins, the backward cuDNN's.
            if hopper && !s.head_major {
                let r = time_pair(
                    gpu,
                    &mut flush,
                    25,
                    || {
                        kernels
                            .attn_fwd(Dtype::Bf16, &s, o.ptr(), lse.ptr(), q, k, v)
                            .map_err(|e| e.to_string())
                    },
                    bwd,
                );
                row("hopper+cudnn", layout, r, extra);
            }
        }
    }
    // The engine configs chosen by timing in this process (none where the kernel cache already
    // held a choice): the first pick's and the chosen one's time.
    for t in attn.iter().flat_map(|a| a.tuned()) {
        println!(
            "{{\"cudnn_tuned\": {:?}, \"candidates\": {}, \"chosen\": {}, \"first_ms\": {:.4}, \"best_ms\": {:.4}}}",
            t.key, t.candidates, t.chosen, t.first_ms, t.best_ms
        );
    }
    Ok(())
}

fn bench_gemm(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let n = 8192;
    let a = gpu.upload(&rand_bf16(n * n, 5))?;
    let b = gpu.upload(&rand_bf16(n * n, 6))?;
    let c = gpu.zeros::<u16>(n * n)?;
    let gemm = gpu.gemm()?;
    let g = RowMajorGemm {
        m: n,
        n,
        k: n,
        trans_a: false,
        trans_b: true,
        lda: n,
        ldb: n,
        ldc: n,
        batch: None,
    };
    // SAFETY: three n x n bf16 buffers.
    let run = || unsafe { gemm.run(Dtype::Bf16, &g, a.ptr(), b.ptr(), c.ptr(), 1.0, 0.0) };
    let ms = timed(gpu, 10, &run)?;
    println!(
        "{{\"gemm_bf16_8192_ms\": {ms:.3}, \"TFLOPs\": {:.1}}}",
        2.0 * (n as f64).powi(3) / ms as f64 / 1e9
    );
    Ok(())
}

/// A timed launch.
type Launch<'a> = dyn Fn() -> Result<(), CudaError> + 'a;

/// The own Hopper GEMM (`gemm::hopper`, step 1: plain bf16 `C = A B^T`) against cuBLASLt's
/// first pick on gpt2-124m's forward shapes (B16 T1024: the fused qkv, the MLP's input and output
/// projections, one logits chunk) and the 8192^3 ceiling: one JSON row a shape and path.
fn bench_hopper(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    use modelspec_runtime::cuda::gemm::hopper::{HopperGemm, Tile};
    let hg = HopperGemm::new(gpu)?;
    let gemm = gpu.gemm()?;
    for (m, n, k) in [
        (16384, 2304, 768),
        (16384, 3072, 768),
        (16384, 768, 3072),
        (4096, 50304, 768),
        (8192, 8192, 8192),
    ] {
        let a = gpu.upload(&rand_bf16(m * k, 11))?;
        let b = gpu.upload(&rand_bf16(n * k, 12))?;
        let c = gpu.zeros::<u16>(m * n)?;
        let g = RowMajorGemm::linear(m, n, k);
        let flop = 2.0 * (m * n * k) as f64;
        let pre = gpu.zeros::<u16>(m * n)?;
        let bias = gpu.upload(&rand_bf16(n, 13))?;
        let gelu = Epilogue::GeluAux {
            pre: pre.ptr(),
            ld: n,
            bias: bias.ptr(),
        };
        // DGELU (the down projection's input gradient has this shape too), on the same
        // linear-form operands; and as the trainer runs it, B given [k, n] (the weight),
        // transposed into a scratch first, against cuBLASLt on the same plain-form operands.
        let dgelu = Epilogue::DGelu {
            pre: pre.ptr(),
            ld: n,
        };
        let scratch = gpu.zeros::<u16>(n * k)?;
        let g_kn = RowMajorGemm::plain(m, n, k, k, n, n);
        // SAFETY (every launch below): a [m, k], b [n, k] (or [k, n] for g_kn), c and pre
        // [m, n], bias [n], scratch [n, k], all bf16.
        let own = |tile: Tile, epi: Option<&Epilogue>| unsafe {
            hg.run(Some(tile), &g, a.ptr(), b.ptr(), c.ptr(), 0, epi)
        };
        let lt = |epi: Option<&Epilogue>, g: &RowMajorGemm| unsafe {
            match epi {
                None => gemm.run(Dtype::Bf16, g, a.ptr(), b.ptr(), c.ptr(), 1.0, 0.0),
                Some(e) => gemm
                    .run_epilogue(Dtype::Bf16, g, a.ptr(), b.ptr(), c.ptr(), e)
                    .map(|_| ()),
            }
        };
        let own_kn = || unsafe {
            hg.try_run_kn(
                None,
                &g_kn,
                a.ptr(),
                b.ptr(),
                c.ptr(),
                Some(&dgelu),
                scratch.ptr(),
                n * k * 2,
            )
            .map(|_| ())
        };
        // Each own schedule and cuBLASLt, plain; the GELU epilogues only where the trainer uses
        // them (the MLP's input projection).
        let gelu_too = (n, k) == (3072, 768);
        let epilogues: &[(&str, Option<&Epilogue>)] = if gelu_too {
            &[
                ("", None),
                ("_gelu_aux", Some(&gelu)),
                ("_dgelu", Some(&dgelu)),
            ]
        } else {
            &[("", None)]
        };
        let mut runs: Vec<(String, Box<Launch>)> = Vec::new();
        for &(suffix, epi) in epilogues {
            for (tile, name) in [
                (Tile::N128, "own_n128"),
                (Tile::N256, "own_n256"),
                (Tile::PingPong, "own_pingpong"),
                (Tile::PingPongCluster, "own_cluster"),
            ] {
                runs.push((format!("{name}{suffix}"), Box::new(move || own(tile, epi))));
            }
            runs.push((format!("cublaslt{suffix}"), Box::new(move || lt(epi, &g))));
        }
        if gelu_too {
            runs.push(("own_dgelu_kn_with_transpose".into(), Box::new(own_kn)));
            let lt_kn = move || lt(Some(&dgelu), &g_kn);
            runs.push(("cublaslt_dgelu_kn".into(), Box::new(lt_kn)));
        }
        for (path, f) in &runs {
            let ms = timed(gpu, 20, f.as_ref())?;
            println!(
                "{{\"hopper_gemm\": \"{m}x{n}x{k}\", \"path\": \"{path}\", \"ms\": {ms:.4}, \"TFLOPs\": {:.1}}}",
                flop / ms as f64 / 1e9
            );
        }
    }
    // How many 2-block clusters the cluster schedule's grids held (its speed depends on it).
    for (kernel, n) in hg.resident_clusters() {
        println!("{{\"hopper_gemm_clusters\": \"{kernel}\", \"resident\": {n}}}");
    }
    Ok(())
}

/// The column reductions of one gpt2-124m training step (B16 T1024, bf16): each bias width's
/// `colsum` and the norms' `norm_dw` (LayerNorm: weight and bias), timed alone; `step_ms` adds
/// them up as a step calls them (12 layers x 4 biases, 25 norms).
fn bench_reduce(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let (rows, d) = (16384, 768);
    let widest = 3072;
    let x = gpu.upload(&rand_bf16(rows * widest, 7))?;
    let r = gpu.upload(&rand_bf16(rows * d, 8))?;
    let stats = gpu.upload(&vec![1.0f32; rows])?;
    let out = gpu.zeros::<f32>(widest)?;
    let out2 = gpu.zeros::<f32>(d)?;
    let bytes = ReduceScratch::bytes_for(widest);
    let scratch = gpu.zeros::<u8>(bytes)?;
    let sc = ReduceScratch::new(scratch.ptr(), bytes);
    let kernels = Kernels::load(gpu, "bench_reduce", &[64], Default::default())?;
    let time = |f: &dyn Fn() -> Result<(), CudaError>| timed(gpu, 20, f);
    let mut step = 0.0;
    // Per layer: qkv, attention output, fc, fc_proj biases.
    for (name, c) in [("qkv", 2304), ("proj", 768), ("fc", 3072), ("fc_proj", 768)] {
        let ms = time(&|| kernels.colsum(Dtype::Bf16, out.ptr(), x.ptr(), rows, c, c, sc))?;
        step += 12.0 * ms;
        let gbs = (rows * c * 2) as f64 / ms as f64 / 1e6;
        println!(
            "{{\"reduce\": \"colsum_{name}\", \"rows\": {rows}, \"cols\": {c}, \"ms\": {ms:.4}, \"GB_s\": {gbs:.0}}}"
        );
    }
    let ms = time(&|| {
        kernels.norm_dw(
            Dtype::Bf16,
            NormKind::Layer,
            out.ptr(),
            out2.ptr(),
            x.ptr(),
            r.ptr(),
            stats.ptr(),
            stats.ptr(),
            rows,
            d,
            sc,
        )
    })?;
    step += 25.0 * ms;
    let gbs = (rows * d * 4) as f64 / ms as f64 / 1e6;
    println!(
        "{{\"reduce\": \"norm_dw\", \"rows\": {rows}, \"cols\": {d}, \"ms\": {ms:.4}, \"GB_s\": {gbs:.0}}}"
    );
    println!("{{\"reduce\": \"gpt2_step_total\", \"step_ms\": {step:.3}}}");
    Ok(())
}

fn main() {
    let what = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "attention".into());
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("device: {} ({})", gpu.name(), gpu.arch());
    let r = match what.as_str() {
        "attention" => bench_attention(&gpu),
        "gemm" => bench_gemm(&gpu),
        "cudnn" => bench_cudnn(&gpu),
        "reduce" => bench_reduce(&gpu),
        "bgrad" => bgrad::bench_bgrad(&gpu),
        "norm" => norm::bench_norm(&gpu),
        "xent" => xent::bench_xent(&gpu),
        "hopper" => bench_hopper(&gpu),
        other => {
            eprintln!(
                "unknown benchmark `{other}` (attention | gemm | cudnn | reduce | bgrad | norm | xent | hopper)"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
