//! `cuda_bench bgrad`: GPT-2 124M's four weight gradients of a layer (B16 T1024: 16384 tokens,
//! bf16 operands, f32 outputs; `dW[out, in] = dy^T x`) with their bias gradients (`db = Σ dy`),
//! each timed three ways: the GEMM alone (`"path": "gemm"`), the GEMM then the deterministic
//! column sum as the trainer ran them before (`"gemm+colsum"`), and the GEMM with cuBLASLt's
//! BGRADB epilogue (`"epilogue"`, or `"unsupported"` where cuBLASLt has no algorithm). The
//! epilogue row also names the way `Gemm::run_weight_grad` takes for the shape under the
//! trainer's policy, `MODELSPEC_BGRAD_EPILOGUE` (`"trainer_picks"`: `Apart` unless it is `on`);
//! the last line adds the rows up for a step (12 layers): both ways, what the trainer runs
//! (`"trainer_policy"`), and the time that saves over the column sum. Medians of 20 event-timed
//! runs after 3 warm-ups, on random (never zero) data.

use modelspec_runtime::cuda::{
    BiasGradPath, BiasGradPolicy, CudaError, Dtype, Epilogue, Gpu, Kernels, ReduceScratch,
    RowMajorGemm,
};
use std::sync::Arc;

use super::{rand_bf16, timed};

/// GPT-2 124M's projections: (name, out, in).
const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 2304, 768),
    ("proj", 768, 768),
    ("fc", 3072, 768),
    ("fc_proj", 768, 3072),
];

/// Runs the benchmark (see the module docs).
pub fn bench_bgrad(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let (tokens, layers) = (16384, 12.0);
    let widest = 3072;
    let dy = gpu.upload(&rand_bf16(tokens * widest, 21))?;
    let x = gpu.upload(&rand_bf16(tokens * widest, 22))?;
    let dw = gpu.zeros::<f32>(widest * 768)?;
    let db = gpu.zeros::<f32>(widest)?;
    let bytes = ReduceScratch::bytes_for(widest);
    let scratch = gpu.zeros::<u8>(bytes)?;
    let sc = ReduceScratch::new(scratch.ptr(), bytes);
    let kernels = Kernels::load(gpu, "bench_bgrad", &[64], Default::default())?;
    let gemm = gpu.gemm()?;
    let policy = BiasGradPolicy::from_env();
    gemm.set_bias_grad_policy(policy);
    let time = |f: &dyn Fn() -> Result<(), CudaError>| timed(gpu, 20, f);
    let (mut apart_step, mut fused_step, mut trainer_step) = (0.0, 0.0, 0.0);
    for (name, out, inp) in SHAPES {
        let g = RowMajorGemm::weight_grad(out, inp, tokens, out, inp);
        let row =
            format!("\"bgrad\": \"{name}\", \"out\": {out}, \"in\": {inp}, \"tokens\": {tokens}");
        let colsum = || kernels.colsum(Dtype::Bf16, db.ptr(), dy.ptr(), tokens, out, out, sc);
        // SAFETY (all): dy [tokens, out] and x [tokens, in] bf16, dw [out, in] and db [out] f32.
        let plain =
            || unsafe { gemm.run_f32_out(Dtype::Bf16, &g, dy.ptr(), x.ptr(), dw.ptr(), 1.0, 0.0) };
        let epi = Epilogue::BiasGrad { bias: db.ptr() };
        let fused = || unsafe {
            gemm.run_f32_out_epilogue(Dtype::Bf16, &g, dy.ptr(), x.ptr(), dw.ptr(), &epi)
        };
        let gemm_ms = time(&plain)?;
        println!("{{{row}, \"path\": \"gemm\", \"ms\": {gemm_ms:.4}}}");
        let apart_ms = time(&|| {
            plain()?;
            colsum()
        })?;
        let gbs = (tokens * out * 2) as f64 / (apart_ms - gemm_ms).max(1e-6) as f64 / 1e6;
        println!(
            "{{{row}, \"path\": \"gemm+colsum\", \"ms\": {apart_ms:.4}, \"colsum_ms\": {:.4}, \"colsum_GB_s\": {gbs:.0}}}",
            apart_ms - gemm_ms
        );
        // The way the trainer's policy takes (db must hold zeros on entry).
        // SAFETY: db is `out` f32 elements of this benchmark's own.
        unsafe { gpu.memset_raw(db.ptr(), out * 4) }?;
        // SAFETY: as above.
        let picks = unsafe {
            gemm.run_weight_grad(
                Dtype::Bf16,
                &g,
                dy.ptr(),
                x.ptr(),
                dw.ptr(),
                db.ptr(),
                &colsum,
            )
        }?;
        let fused_ms = if fused()? {
            let ms = time(&|| fused().map(|_| ()))?;
            println!(
                "{{{row}, \"path\": \"epilogue\", \"ms\": {ms:.4}, \"saved_ms\": {:.4}, \"trainer_picks\": \"{picks:?}\"}}",
                apart_ms - ms
            );
            ms
        } else {
            println!("{{{row}, \"path\": \"unsupported\", \"trainer_picks\": \"{picks:?}\"}}");
            apart_ms
        };
        apart_step += layers * apart_ms;
        fused_step += layers * fused_ms;
        trainer_step += layers
            * match picks {
                BiasGradPath::Epilogue => fused_ms,
                BiasGradPath::Apart => apart_ms,
            };
    }
    println!(
        "{{\"bgrad\": \"gpt2_step_total\", \"layers\": {layers}, \"trainer_policy\": \"{policy:?}\", \"gemm_colsum_ms\": {apart_step:.3}, \"epilogue_ms\": {fused_step:.3}, \"trainer_ms\": {trainer_step:.3}, \"saved_ms\": {:.3}}}",
        apart_step - trainer_step
    );
    Ok(())
}
