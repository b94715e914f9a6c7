//! AdamW's CUDA side: the launchers of `adamw.cu` (the fused step over a whole parameter arena,
//! with the host's scalars and arithmetic; the same over an arena range with the scalars read
//! from the device, for the trainer's overlapped AdamW), as methods of [`Kernels`], and the
//! kernel source that [`crate::cuda::compile`] puts in the library.

use super::StepScalars;
use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::{BLOCK, blocks};
use crate::cuda_args;

/// The CUDA C of `adamw.cu`, assembled into the kernel library after `common.cuh`.
pub(crate) const SOURCE: &str = include_str!("adamw.cu");

impl Kernels {
    /// `adamw_{dtype}`: one AdamW step over `n` f32 master weights (a whole parameter arena, one
    /// launch) with the host's scalars and arithmetic ([`StepScalars`]); weight decay on the
    /// elements below `decay_end` only; the gradient is multiplied by `grad_scales[0]`, then by
    /// `grad_scales[1]`. `param` (may be 0) receives the working copy in `dt`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        dt: Dtype,
        master: DevPtr,
        param: DevPtr,
        grad: DevPtr,
        m: DevPtr,
        v: DevPtr,
        n: usize,
        decay_end: usize,
        s: &StepScalars,
        grad_scales: [f32; 2],
    ) -> Result<()> {
        let StepScalars {
            beta1,
            beta2,
            one_minus_beta1,
            one_minus_beta2,
            step_size,
            inv_bias2_sqrt,
            eps,
            decay,
        } = *s;
        let [gs1, gs2] = grad_scales;
        let name = format!("adamw_{}", dt.suffix());
        self.go_block(
            &name,
            // A thread takes 4 elements a turn where the pointers allow (adamw.cu).
            (crate::cuda::ops::stride_blocks(n.div_ceil(4)), 1, 1),
            &mut cuda_args![
                master,
                param,
                grad,
                m,
                v,
                n,
                decay_end,
                beta1,
                beta2,
                one_minus_beta1,
                one_minus_beta2,
                step_size,
                inv_bias2_sqrt,
                eps,
                decay,
                gs1,
                gs2
            ],
        )
    }

    /// `adamw_dev_{dtype}` on `stream`: [`Kernels::adamw`] over the `n` elements of an arena
    /// range (the pointers already offset to it; weight decay below `decay_end` of the range),
    /// with its scalars read from the device: `scalars` holds the ten f32 of
    /// [`StepScalars::words`]. One thread a vector of four for every element (no grid-stride
    /// turns), so that each block is short: on a low-priority stream the blocks fill the main
    /// stream's idle multiprocessors without holding one for long. With `rows`, only the rows
    /// its mask selects.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adamw_dev(
        &self,
        stream: &cudarc::driver::CudaStream,
        dt: Dtype,
        [master, param, grad, m, v]: [DevPtr; 5],
        n: usize,
        decay_end: usize,
        scalars: DevPtr,
        rows: Option<AdamwRows>,
    ) -> Result<()> {
        let name = format!("adamw_dev_{}", dt.suffix());
        let AdamwRows { mask, width, want } = rows.unwrap_or(AdamwRows {
            mask: 0,
            width: 1,
            want: false,
        });
        let want = u32::from(want);
        // SAFETY: the arguments match adamw_dev's C signature; the caller passes arena ranges of
        // n elements and ten f32 of scalars, ordered against the main stream by its events.
        unsafe {
            self.launcher().launch_on(
                stream,
                &name,
                cudarc::driver::LaunchConfig {
                    grid_dim: (blocks(n.div_ceil(4), BLOCK), 1, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                },
                &mut cuda_args![
                    master, param, grad, m, v, n, decay_end, scalars, mask, width, want
                ],
            )
        }
    }

    /// `adamw_mark_rows`: `mask[tokens[i]] = 1` for the `n` tokens (the mask zeroed before), on
    /// the main stream: the embedding rows a batch's embedding backward adds to.
    pub(crate) fn adamw_mark_rows(&self, tokens: DevPtr, n: usize, mask: DevPtr) -> Result<()> {
        let n_ = n as i32;
        self.go_block(
            "adamw_mark_rows",
            (blocks(n, BLOCK), 1, 1),
            &mut cuda_args![tokens, n_, mask],
        )
    }
}

/// The rows of a `[rows, width]` parameter an [`Kernels::adamw_dev`] launch updates: those whose
/// word of `mask` (u32, one a row) is 1 (`want`) or 0 (`!want`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamwRows {
    pub mask: DevPtr,
    pub width: usize,
    pub want: bool,
}
