//! A trainer that runs a generated model's kernel walk: the rows `model!` / `modelspec generate`
//! emit as `{Type}Kernels::KERNELS`, checked against this runtime's lowering of the spec before
//! anything is allocated; they equal the trainer's own lowering, which it then walks forward and
//! backward.

use std::sync::Arc;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::program::{KernelRow, check_walk};

use super::GpuTrainer;
use crate::cuda::error::Result;
use crate::cuda::gpu::{Dtype, Gpu};

impl GpuTrainer {
    /// As [`GpuTrainer::new`], running `walk`: one slice of kernel rows per layer, as generated
    /// code carries them. The walk must equal this runtime's lowering of `spec`
    /// ([`LayerProgram::kernels`](modelspec_dsl::program::LayerProgram::kernels) per layer);
    /// otherwise the generated code is stale and the error names the first layer and kernel that
    /// differ ([`CudaError::Walk`](crate::cuda::error::CudaError::Walk)), before the device is touched.
    pub fn with_walk(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        seed: u64,
        walk: &[&[KernelRow]],
    ) -> Result<GpuTrainer> {
        // One path with `new`: the trainer walks the kernels of its own lowering
        // (`LayerProgram::kernels`), which `check_walk` has just found equal to the rows.
        check_walk(spec, walk)?;
        Self::new(gpu, spec, dt, batch, seq, seed)
    }
}
