//! Launch wrappers of the training state's kernels: the fused AdamW step over a parameter arena,
//! gradient accumulation and the gradient norm's deterministic reduction.

use super::{Kernels, stride_blocks};
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda_args;
use crate::train::optim::StepScalars;

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
            (stride_blocks(n), 1, 1),
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

    /// `grad_sum_f32`: `sum = g` when `first`, else `sum += g` (`n` f32).
    pub fn grad_sum(&self, sum: DevPtr, g: DevPtr, n: usize, first: bool) -> Result<()> {
        let first = i32::from(first);
        self.go_block(
            "grad_sum_f32",
            (stride_blocks(n), 1, 1),
            &mut cuda_args![sum, g, n, first],
        )
    }

    /// The sum of squares of `n` f32 at `x`, in f64, left at `partials[blocks]` (device memory of
    /// `blocks + 1` f64; `blocks` at most 2^31): `blocks` partial sums, then their sum, each in a
    /// fixed order (deterministic). Asynchronous: read the result after a synchronising copy.
    pub fn sum_squares(&self, x: DevPtr, n: usize, partials: DevPtr, blocks: usize) -> Result<()> {
        let count = blocks as i32;
        self.go_block(
            "sumsq_partials_f32",
            (blocks as u32, 1, 1),
            &mut cuda_args![x, n, partials],
        )?;
        self.go_block(
            "sum_partials_f64",
            (1, 1, 1),
            &mut cuda_args![partials, count],
        )
    }
}
