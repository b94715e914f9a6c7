//! The cross-entropy's CUDA side: the launcher of `cross_entropy.cu` (the per-row loss of the
//! logits, and optionally their gradient in place), as a method of [`Kernels`], and the kernel
//! source that [`crate::cuda::compile`] puts in the library.

use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda_args;

/// The CUDA C of `cross_entropy.cu`, assembled into the kernel library after `common.cuh`.
pub(crate) const SOURCE: &str = include_str!("cross_entropy.cu");

impl Kernels {
    /// `xent_{dtype}`: per-row loss of logits `[rows, ld]` (V valid columns) against i32
    /// targets (-1 = ignore); with `dscale` the logits become d(dscale * loss)/d(logits).
    #[allow(clippy::too_many_arguments)]
    pub fn xent(
        &self,
        dt: Dtype,
        logits: DevPtr,
        loss: DevPtr,
        targets: DevPtr,
        rows: usize,
        vocab: usize,
        ld: usize,
        softcap: f32,
        dscale: Option<f32>,
    ) -> Result<()> {
        let (v_, ld_) = (vocab as i32, ld as i32);
        let write_grad = dscale.is_some() as i32;
        let ds = dscale.unwrap_or(0.0);
        let name = format!("xent_{}", dt.suffix());
        self.go(
            &name,
            (rows as u32, 1, 1),
            (512, 1, 1),
            0,
            &mut cuda_args![logits, loss, targets, v_, ld_, softcap, ds, write_grad],
        )
    }
}
