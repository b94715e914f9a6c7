//! GPU micro-benchmarks of the CUDA backend, printing one JSON line per measurement.
//!
//! ```text
//! cargo run --release -p modelspec-runtime --example cuda_bench -- attention   # attn_bench.py's shapes
//! cargo run --release -p modelspec-runtime --example cuda_bench -- gemm        # bf16 8192^3 ceiling
//! ```
//! Times are medians of CUDA-event-timed repetitions after a warm-up, on random (never zero) data.

use modelspec_runtime::cuda::{AttnShape, CudaError, Dtype, Gpu, Kernels, RowMajorGemm};
use std::sync::Arc;

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

fn bench_attention(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let shapes = [
        (16, 12, 12, 1024, 64),
        (8, 32, 8, 2048, 64),
        (4, 32, 8, 4096, 128),
        (8, 16, 16, 2048, 128),
    ];
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
    for _ in 0..3 {
        run()?;
    }
    let mut t = Vec::new();
    for _ in 0..10 {
        t.push(gpu.time_ms(run)?);
    }
    let ms = median(t);
    println!(
        "{{\"gemm_bf16_8192_ms\": {ms:.3}, \"TFLOPs\": {:.1}}}",
        2.0 * (n as f64).powi(3) / ms as f64 / 1e9
    );
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
        other => {
            eprintln!("unknown benchmark `{other}` (attention | gemm)");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
