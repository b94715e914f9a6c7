//! A trainer that runs a generated model's kernel walk: the rows `model!` / `modelspec generate`
//! emit as `{Type}Kernels::KERNELS`, checked against this runtime's lowering of the spec before
//! anything is allocated, then walked forward and backward in place of the trainer's own list.

use std::sync::Arc;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::program::{KernelRow, check_walk};

use super::GpuTrainer;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{Dtype, Gpu};

impl GpuTrainer {
    /// As [`GpuTrainer::new`], running `walk`: one slice of kernel rows per layer, as generated
    /// code carries them. The walk must equal this runtime's lowering of `spec`
    /// ([`LayerProgram::kernels`](modelspec_dsl::program::LayerProgram::kernels) per layer);
    /// otherwise the generated code is stale and the error names the first layer and kernel that
    /// differ ([`CudaError::Walk`]), before the device is touched.
    pub fn with_walk(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        seed: u64,
        walk: &[&[KernelRow]],
    ) -> Result<GpuTrainer> {
        let kernels = check_walk(spec, walk)?;
        let mut trainer = Self::new(gpu, spec, dt, batch, seq, seed)?;
        for (i, (run, ks)) in trainer.run.iter_mut().zip(kernels).enumerate() {
            // The trainer's recomputation set was derived from its own list, which `check_walk`
            // found equal to the rows; a difference here is a bug in the runtime, not stale code.
            if run.kernels != ks {
                return Err(CudaError::BadLaunch {
                    kernel: "gpu trainer".into(),
                    why: format!("layer {i}: the checked walk differs from the trainer's program"),
                });
            }
            run.kernels = ks;
        }
        Ok(trainer)
    }
}
