//! RoPE's CUDA side: the launcher of `rope.cu` (the rotation of q and k in place, forward and
//! backward), as a method of [`Kernels`], and the kernel source that [`crate::cuda::compile`]
//! puts in the library. The cos/sin tables it reads come from [`crate::cuda::rope::tables`].

use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::{BLOCK, blocks};
use crate::cuda_args;

/// The CUDA C of `rope.cu`, assembled into the kernel library after `common.cuh` (whose
/// `rope_thread` / `rope_rotate` it uses).
pub(crate) const SOURCE: &str = include_str!("rope.cu");

impl Kernels {
    /// `rope_{dtype}`: rotates x `[N, ld]` in place (`heads` heads of `head_dim`, the first `rot`
    /// dims each); tables `[seq, rot/2]` f32; `backward` applies the transpose.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        dt: Dtype,
        x: DevPtr,
        cos: DevPtr,
        sin: DevPtr,
        rows: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
        ld: usize,
        rot: usize,
        interleaved: bool,
        backward: bool,
    ) -> Result<()> {
        let (n_, t_, h_, d_, ld_, rot_, il) = (
            rows as i32,
            seq as i32,
            heads as i32,
            head_dim as i32,
            ld as i32,
            rot as i32,
            interleaved as i32,
        );
        let sign: f32 = if backward { -1.0 } else { 1.0 };
        let name = format!("rope_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(rows * heads * rot / 2, BLOCK), 1, 1),
            &mut cuda_args![x, cos, sin, n_, t_, h_, d_, ld_, rot_, il, sign],
        )
    }
}
