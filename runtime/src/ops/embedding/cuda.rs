//! The embedding's CUDA side: the launchers of `embedding.cu` (token rows, scaled, plus learned
//! positions; the backward's f32 atomic accumulation), as methods of [`Kernels`], and the kernel
//! source that [`crate::cuda::compile`] puts in the library.

use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda_args;

/// The CUDA C of `embedding.cu`, assembled into the kernel library after `common.cuh`.
pub(crate) const SOURCE: &str = include_str!("embedding.cu");

impl Kernels {
    /// `embed_fwd_{dtype}`: out `[N, C]` = `wte[tok] * scale (+ wpe[n % seq])`; tok i32.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_fwd(
        &self,
        dt: Dtype,
        out: DevPtr,
        tok: DevPtr,
        wte: DevPtr,
        wpe: DevPtr,
        rows: usize,
        seq: usize,
        c: usize,
        scale: f32,
    ) -> Result<()> {
        let (t_, c_) = (seq as i32, c as i32);
        let name = format!("embed_fwd_{}", dt.suffix());
        self.go_block(
            &name,
            (rows as u32, 1, 1),
            &mut cuda_args![out, tok, wte, wpe, t_, c_, scale],
        )
    }

    /// `embed_bwd_{dtype}`: dwte (and dwpe) f32 += the scattered output gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_bwd(
        &self,
        dt: Dtype,
        dwte: DevPtr,
        dwpe: DevPtr,
        tok: DevPtr,
        dout: DevPtr,
        rows: usize,
        seq: usize,
        c: usize,
        scale: f32,
    ) -> Result<()> {
        let (t_, c_) = (seq as i32, c as i32);
        let name = format!("embed_bwd_{}", dt.suffix());
        self.go_block(
            &name,
            (rows as u32, 1, 1),
            &mut cuda_args![dwte, dwpe, tok, dout, t_, c_, scale],
        )
    }
}
