//! `cuda_bench xent`: the cross-entropy kernel on one trainer chunk of logits, in place (loss and
//! gradient), per launch: gpt2's 4096 rows x 50304 and llama's chunk of 128256-column rows (2093
//! rows: the trainer's 512 MiB of bf16 logits, `Shape::chunk`), in bf16 and in f32 (half the rows:
//! the same bytes). Each shape runs twice in the same process: `"path": "row"`
//! with a library instantiated for that padded vocabulary (the row-resident kernel, with the
//! block, shared memory, registers and spilled bytes the driver reports) and `"path": "generic"`
//! with a library for another vocabulary (the two-read kernel the trainer ran before). Where the
//! row does not fit on chip (llama in f32) both rows are the generic kernel. `GB_s` counts one
//! read and one write of the chunk (the least traffic; the generic kernel reads twice), `ms_16k_rows`
//! the time for 16384 rows (gpt2 B16 T1024's step). Medians of 20 event-timed launches after 3
//! warm-ups; the logits become gradients after the first launch, which the kernel's cost ignores
//! (it has no data-dependent work).

use modelspec_runtime::cuda::{CudaError, Dtype, DtypeExt, Gpu, GpuBuf, Kernels};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{rand_bf16, timed};

/// The shapes: (model, padded vocabulary, bf16 rows a launch).
const SHAPES: [(&str, usize, usize); 2] = [("gpt2", 50304, 4096), ("llama", 128256, 2093)];

/// Logits of either dtype.
enum Logits {
    F32(GpuBuf<f32>),
    Bf16(GpuBuf<u16>),
}

/// Runs the benchmark (see the module docs).
pub fn bench_xent(gpu: &Arc<Gpu>) -> Result<(), CudaError> {
    let library = |vp: usize| -> Result<Kernels, CudaError> {
        let defines: BTreeMap<String, String> = [("MS_LOGITS_LD".into(), vp.to_string())]
            .into_iter()
            .collect();
        Kernels::load(gpu, &format!("bench_xent_{vp}"), &[], defines)
    };
    // The generic kernel's library: a vocabulary no shape has.
    let generic = library(64)?;
    for (model, vp, bf16_rows) in SHAPES {
        let row = library(vp)?;
        for dt in [Dtype::Bf16, Dtype::F32] {
            let rows = bf16_rows * 2 / dt.bytes();
            let bits = rand_bf16(rows * vp, vp as u64);
            let logits = match dt {
                Dtype::Bf16 => Logits::Bf16(gpu.upload(&bits)?),
                Dtype::F32 => {
                    let v: Vec<f32> = bits
                        .iter()
                        .map(|&b| f32::from_bits((b as u32) << 16))
                        .collect();
                    Logits::F32(gpu.upload(&v)?)
                }
            };
            let ptr = match &logits {
                Logits::F32(b) => b.ptr(),
                Logits::Bf16(b) => b.ptr(),
            };
            let mut s = vp as u64 | 1;
            let tgt: Vec<i32> = (0..rows)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % vp as u64) as i32
                })
                .collect();
            let tgt = gpu.upload(&tgt)?;
            let loss = gpu.zeros::<f32>(rows)?;
            let dscale = Some(1.0 / rows as f32);
            for (path, k) in [("row", &row), ("generic", &generic)] {
                let f = || k.xent(dt, ptr, loss.ptr(), tgt.ptr(), rows, vp, vp, 0.0, dscale);
                let ms = timed(gpu, 20, &f)?;
                let bytes = 2.0 * (rows * vp * dt.bytes()) as f64;
                let gbs = bytes / ms as f64 / 1e6;
                let step = ms as f64 * 16384.0 / rows as f64;
                let info = match k.xent_row_info(dt, vp) {
                    Some(i) => format!(
                        ", \"threads\": {}, \"smem\": {}, \"regs\": {}, \"local_bytes\": {}",
                        i.threads, i.smem, i.regs, i.local_bytes
                    ),
                    None => ", \"kernel\": \"generic\"".into(),
                };
                println!(
                    "{{\"xent\": \"{model}\", \"path\": \"{path}\", \"dtype\": \"{}\", \"rows\": {rows}, \"ld\": {vp}, \"ms\": {ms:.4}, \"GB_s\": {gbs:.0}, \"ms_16k_rows\": {step:.3}{info}}}",
                    dt.suffix()
                );
            }
        }
    }
    Ok(())
}
