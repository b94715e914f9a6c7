//! The embedding's CUDA side: the launchers of `embedding.cu` (token rows, scaled, plus learned
//! positions; the backward's deterministic accumulation in f32), as methods of [`Kernels`], and
//! the kernel source that [`crate::cuda::compile`] puts in the library.

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

    /// The embedding's backward, deterministic: dwte (and dwpe) f32 += the scattered output
    /// gradient `dout` `[rows, c]` (dwte's rows times `scale`), in the order of `plan`, the
    /// batch's [`scatter_plan`](super::scatter_plan) (`3 rows + 4` i32) on the device. `partial` is
    /// f32 scratch of `rows x c` (its contents on entry do not matter). Three launches: the
    /// pieces of tokens with several (`embed_bwd_pieces_{dtype}`), each token's row
    /// (`embed_bwd_rows_{dtype}`), the positions (`embed_bwd_pos_{dtype}`, when `dwpe` is not 0).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_bwd(
        &self,
        dt: Dtype,
        dwte: DevPtr,
        dwpe: DevPtr,
        tok: DevPtr,
        plan: DevPtr,
        partial: DevPtr,
        dout: DevPtr,
        rows: usize,
        seq: usize,
        c: usize,
        scale: f32,
    ) -> Result<()> {
        let (n_, c_) = (rows as i32, c as i32);
        let grid = (rows as u32, 1, 1);
        let sfx = dt.suffix();
        self.go_block(
            &format!("embed_bwd_pieces_{sfx}"),
            grid,
            &mut cuda_args![partial, plan, tok, dout, n_, c_, scale],
        )?;
        self.go_block(
            &format!("embed_bwd_rows_{sfx}"),
            grid,
            &mut cuda_args![dwte, plan, tok, dout, partial, n_, c_, scale],
        )?;
        if dwpe == 0 {
            return Ok(());
        }
        let (b_, t_) = ((rows / seq.max(1)) as i32, seq as i32);
        self.go_block(
            &format!("embed_bwd_pos_{sfx}"),
            (seq as u32, 1, 1),
            &mut cuda_args![dwpe, dout, b_, t_, c_],
        )
    }
}
