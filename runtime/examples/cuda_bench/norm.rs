//! `cuda_bench norm`: the norm kernels at the trainer's shapes, 16384 rows (B16 T1024) of bf16:
//! gpt2's 768, gpt2-medium's 1024 (the widest rows that run a warp a row: 4 vectors a lane) and
//! llama-3.2-1b's 2048 (one block a row on the "warp" path too), LayerNorm (weight and bias)
//! and RMSNorm (weight), each in a library instantiated for that width. Per case: the forward
//! with the residual add (`res` in, `r_out` and `y` out, as the trainer's residual norms run
//! it), the backward with `dres` (the residual stream's gradient added), the weight (and bias)
//! gradient (`norm_dw`) and the backward with its gradients as the trainer calls it (`bwd_dw`:
//! `Kernels::norm_bwd_dw`, one call). Each case runs as `"path": "warp"` (one warp a row, the
//! default for rows of the library's width), `"path": "block"` (one block a row, the kernels that
//! ran before; `Kernels::set_norm_warp_rows(false)`) and `"path": "fused"` (only `bwd_dw`, with
//! `Kernels::set_norm_fused_dw(true)`: the one-pass backward where it applies, bf16 rows up to
//! 768; wider rows print the two kernels again), so one run compares them. `GB_s` counts the
//! bytes each call must move at least: forward x, res in and r_out, y out; backward r, dy, dres in
//! and dx out; norm_dw r, dy in; bwd_dw as the two (4, 4, 2 and 6 bf16 rows; the weights,
//! statistics and partial sums are < 1%), so the one pass shows its saving as a higher
//! figure. Medians of 20 event-timed launches after 3 warm-ups.

use modelspec_runtime::cuda::{CudaError, Dtype, Gpu, Kernels, NormKind, ReduceScratch};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{rand_bf16, timed};

/// The shapes: (model, rows, width).
const SHAPES: [(&str, usize, usize); 3] = [
    ("gpt2", 16384, 768),
    ("gpt2-medium", 16384, 1024),
    ("llama-3.2-1b", 16384, 2048),
];

/// Runs the benchmark (see the module docs).
pub fn bench_norm(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let time = |f: &dyn Fn() -> Result<(), CudaError>| timed(gpu, 20, f);
    for (model, rows, d) in SHAPES {
        let defines: BTreeMap<String, String> =
            [("MS_D_MODEL".into(), d.to_string())].into_iter().collect();
        let mut k = Kernels::load(gpu, &format!("bench_norm_{d}"), &[], defines)?;
        let n = rows * d;
        let up = |seed: u64| gpu.upload(&rand_bf16(n, seed));
        let (x, res, dy, dres) = (up(1)?, up(2)?, up(3)?, up(4)?);
        let (y, r, dx) = (
            gpu.zeros::<u16>(n)?,
            gpu.zeros::<u16>(n)?,
            gpu.zeros::<u16>(n)?,
        );
        let w = gpu.upload(&rand_bf16(d, 5))?;
        let b = gpu.upload(&rand_bf16(d, 6))?;
        let (rstd, mean) = (gpu.zeros::<f32>(rows)?, gpu.zeros::<f32>(rows)?);
        let (dw, db) = (gpu.zeros::<f32>(d)?, gpu.zeros::<f32>(d)?);
        let bytes = ReduceScratch::bytes_for(d);
        let scratch = gpu.zeros::<u8>(bytes)?;
        let sc = ReduceScratch::new(scratch.ptr(), bytes);
        for path in ["warp", "block", "fused"] {
            k.set_norm_warp_rows(path != "block");
            k.set_norm_fused_dw(path == "fused");
            for kind in [NormKind::Layer, NormKind::Rms] {
                let layer = kind == NormKind::Layer;
                let (bp, dbp) = if layer { (b.ptr(), db.ptr()) } else { (0, 0) };
                let fwd = || {
                    k.norm_fwd(
                        Dtype::Bf16,
                        kind,
                        y.ptr(),
                        r.ptr(),
                        rstd.ptr(),
                        mean.ptr(),
                        x.ptr(),
                        res.ptr(),
                        w.ptr(),
                        bp,
                        rows,
                        d,
                        1e-5,
                        0.0,
                    )
                };
                let bwd = || {
                    k.norm_bwd(
                        Dtype::Bf16,
                        kind,
                        dx.ptr(),
                        dy.ptr(),
                        r.ptr(),
                        w.ptr(),
                        rstd.ptr(),
                        mean.ptr(),
                        dres.ptr(),
                        rows,
                        d,
                        0.0,
                    )
                };
                let dwf = || {
                    k.norm_dw(
                        Dtype::Bf16,
                        kind,
                        dw.ptr(),
                        dbp,
                        dy.ptr(),
                        r.ptr(),
                        rstd.ptr(),
                        mean.ptr(),
                        rows,
                        d,
                        sc,
                    )
                };
                let bwd_dw = || {
                    k.norm_bwd_dw(
                        Dtype::Bf16,
                        kind,
                        dx.ptr(),
                        dy.ptr(),
                        r.ptr(),
                        w.ptr(),
                        rstd.ptr(),
                        mean.ptr(),
                        dres.ptr(),
                        dw.ptr(),
                        dbp,
                        rows,
                        d,
                        0.0,
                        sc,
                    )
                };
                // The forward's outputs are the backward's inputs.
                let ms_fwd = time(&fwd)?;
                let row_bytes = (n * 2) as f64;
                let mut lines = vec![("bwd_dw", time(&bwd_dw)?, 6.0)];
                if path != "fused" {
                    lines.extend([
                        ("fwd", ms_fwd, 4.0),
                        ("bwd", time(&bwd)?, 4.0),
                        ("dw", time(&dwf)?, 2.0),
                    ]);
                }
                for (what, ms, rows_moved) in lines {
                    let gbs = rows_moved * row_bytes / ms as f64 / 1e6;
                    println!(
                        "{{\"norm\": \"{what}\", \"model\": \"{model}\", \"kind\": \"{kind:?}\", \"path\": \"{path}\", \"rows\": {rows}, \"cols\": {d}, \"ms\": {ms:.4}, \"GB_s\": {gbs:.0}}}"
                    );
                }
            }
        }
    }
    Ok(())
}
