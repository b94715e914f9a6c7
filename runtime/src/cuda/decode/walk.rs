//! A decoder that runs a generated model's kernel walk (`{Type}Kernels::KERNELS`), checked
//! against this runtime's lowering of the spec before anything is allocated.

use std::sync::Arc;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::program::{KernelRow, check_walk};

use super::{GpuDecoder, Result};
use crate::cuda::error::CudaError;
use crate::cuda::gpu::{Dtype, Gpu};
use crate::tensor::ParamSource;

impl GpuDecoder {
    /// As [`GpuDecoder::new`], running `walk`: one slice of kernel rows per layer, as generated
    /// code carries them. The walk must equal this runtime's lowering of `spec`; otherwise the
    /// generated code is stale and the error ([`CudaError::Walk`]) names the first layer and
    /// kernel that differ, before the device is touched.
    pub fn with_walk(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        params: &dyn ParamSource<f32>,
        batch: usize,
        capacity: usize,
        walk: &[&[KernelRow]],
    ) -> Result<GpuDecoder> {
        // One path with `new`: the decoder walks the kernels of its own lowering
        // (`LayerProgram::kernels`), which `check_walk` has just found equal to the rows.
        check_walk(spec, walk).map_err(CudaError::from)?;
        Self::new(gpu, spec, dt, params, batch, capacity)
    }
}
