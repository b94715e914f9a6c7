//! The kernel library ([`Kernels`]) and the launch wrappers of the small shared kernels of
//! `kernels/pointwise.cu` (bias add, copies, casts, gradient sums, the gradient norm): one method
//! per kernel family, named as the kernels (`{op}_{dtype}`). The ops add their launchers to
//! [`Kernels`] in their folder's `cuda.rs` (`crate::ops::{norm, activation, cross_entropy, rope,
//! embedding, attention, adamw}`).
//!
//! Arguments are raw device pointers ([`DevPtr`], 0 for "none") so that views into fused
//! buffers (q/k/v inside one qkv projection, gate/up halves) need no copies. Each method states
//! the layout it expects; sizes are checked before launching where a wrong one would fault.

use super::compile::KernelSource;
use super::error::Result;
use super::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use super::launch::{BLOCK, Launcher, blocks};
use crate::cuda_args;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::ops::activation::cuda::Act;
pub(crate) use crate::ops::activation::cuda::{act_bwd, act_fwd};
pub use crate::ops::attention::cuda::hopper::{
    HopperAttention, Launch as HopperLaunch, Schedule as HopperSchedule,
};
pub use crate::ops::attention::cuda::{AttnShape, FwdKernel};

/// The normalisation kind of [`Kernels::norm_fwd`]: the IR's own.
pub use modelspec_dsl::ir::NormKind;

/// The compiled kernel library on one GPU.
pub struct Kernels {
    launcher: Launcher,
    head_dims: Vec<usize>,
    d_model: usize,
    norm_warp_rows: bool,
    norm_fused_dw: bool,
    /// The Hopper attention forward (compiled on a Hopper GPU for a library with a head dim it
    /// takes), and whether [`Kernels::attn_fwd`] uses it.
    attn_hopper: Option<Arc<HopperAttention>>,
    attn_hopper_on: bool,
    attn_hopper_launch: HopperLaunch,
    /// Whether [`Kernels::attn_bwd`] runs the Hopper backward where it takes the call
    /// (`MODELSPEC_ATTN_HOPPER_BWD=on`; off by default until it has passed parity on a GPU).
    attn_hopper_bwd: bool,
}

/// Blocks of a grid-stride launch over `n` elements: one element per thread up to 2^20 blocks
/// (each thread then loops), so any arena size fits the grid.
pub(crate) fn stride_blocks(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32
}

impl Kernels {
    /// Compiles (or loads from the disk cache) the library with attention instantiated for
    /// `head_dims`; `defines` become `#define` lines (the spec's sizes).
    pub fn load(
        gpu: &Arc<Gpu>,
        name: &str,
        head_dims: &[usize],
        defines: BTreeMap<String, String>,
    ) -> Result<Kernels> {
        let d_model = defines
            .get("MS_D_MODEL")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let src = KernelSource::library(name, head_dims, defines);
        // `MODELSPEC_ATTN_HOPPER=off`: the Hopper attention kernels are not even compiled.
        let hopper = HopperLaunch::from_env();
        Ok(Kernels {
            launcher: Launcher::load(gpu, &src)?,
            head_dims: head_dims.to_vec(),
            d_model,
            norm_warp_rows: true,
            norm_fused_dw: crate::ops::norm::cuda::fused_dw_from_env(),
            attn_hopper: hopper.and_then(|_| HopperAttention::for_library(gpu, head_dims)),
            attn_hopper_on: true,
            attn_hopper_launch: hopper.unwrap_or_default(),
            attn_hopper_bwd: std::env::var("MODELSPEC_ATTN_HOPPER_BWD").as_deref() == Ok("on"),
        })
    }

    /// The library instantiated for `spec` ([`modelspec_dsl::codegen::kernel_instance`]: the
    /// `#define`s the kernels read and every head dim of its layers): the module `--device cuda`
    /// runs and the one a generated model's `{Type}Kernels::load` gets.
    pub fn for_spec(gpu: &Arc<Gpu>, spec: &modelspec_dsl::ModelSpec) -> Result<Kernels> {
        Self::load_instance(gpu, &modelspec_dsl::codegen::kernel_instance(spec))
    }

    /// The library instantiated by `instance`.
    pub fn load_instance(
        gpu: &Arc<Gpu>,
        instance: &modelspec_dsl::codegen::KernelInstance,
    ) -> Result<Kernels> {
        Self::load(
            gpu,
            &instance.name,
            &instance.head_dims,
            instance.defines.clone(),
        )
    }

    /// The head dims the tensor-core attention is instantiated for.
    pub(crate) fn head_dims(&self) -> &[usize] {
        &self.head_dims
    }

    /// The model width the library is instantiated for (its `MS_D_MODEL` define; 0 when it has
    /// none): rows of this width run the norms' compile-time-width kernels.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// Whether rows of the library's width run the norms' one-warp-a-row kernels where they fit
    /// (on by default). Off, they run one block a row as wider rows do: for benchmarks and
    /// tests that compare the two.
    pub fn set_norm_warp_rows(&mut self, on: bool) {
        self.norm_warp_rows = on;
    }

    /// See [`Kernels::set_norm_warp_rows`].
    pub(crate) fn norm_warp_rows(&self) -> bool {
        self.norm_warp_rows
    }

    /// Whether [`Kernels::norm_bwd_dw`] runs the one-pass backward with the weight and bias
    /// gradients where it applies (on by default; `MODELSPEC_NORM_FUSED_DW=off` when the library
    /// is loaded turns it off), else `norm_bwd` then `norm_dw`.
    pub fn set_norm_fused_dw(&mut self, on: bool) {
        self.norm_fused_dw = on;
    }

    /// See [`Kernels::set_norm_fused_dw`].
    pub(crate) fn norm_fused_dw(&self) -> bool {
        self.norm_fused_dw
    }

    /// Whether [`Kernels::attn_fwd`] runs the Hopper kernel where it can (on by default where the
    /// library has it: a Hopper GPU, a head dim of 64 or 128, `MODELSPEC_ATTN_HOPPER` not `off`).
    /// Off, the mma.sync kernel runs: for benchmarks and tests that compare the two.
    pub fn set_attn_hopper(&mut self, on: bool) {
        self.attn_hopper_on = on;
    }

    /// How the Hopper attention forward runs ([`HopperLaunch::from_env`] when the library is
    /// loaded, else the default).
    pub fn set_attn_hopper_launch(&mut self, launch: HopperLaunch) {
        self.attn_hopper_launch = launch;
    }

    /// The Hopper attention forward and how it runs, when it is compiled and on.
    pub(crate) fn attn_hopper(&self) -> Option<(&HopperAttention, HopperLaunch)> {
        let h = self
            .attn_hopper
            .as_deref()
            .filter(|_| self.attn_hopper_on)?;
        Some((h, self.attn_hopper_launch))
    }

    /// Switches the Hopper attention backward on or off (the default: `MODELSPEC_ATTN_HOPPER_BWD`).
    pub fn set_attn_hopper_bwd(&mut self, on: bool) {
        self.attn_hopper_bwd = on;
    }

    /// The Hopper attention backward, when compiled and switched on
    /// (`MODELSPEC_ATTN_HOPPER_BWD=on`).
    pub(crate) fn attn_hopper_bwd(&self) -> Option<&HopperAttention> {
        self.attn_hopper()
            .filter(|_| self.attn_hopper_bwd)
            .map(|(h, _)| h)
    }

    /// The GPU these kernels run on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        self.launcher.gpu()
    }

    /// The loaded module, for launchers that take one (shared with other modules).
    pub(crate) fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// Whether the module came from the disk cache.
    pub fn from_cache(&self) -> bool {
        self.launcher.module().from_cache
    }

    pub(crate) fn go(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        // SAFETY: every wrapper below passes locals matching the kernel's C signature, and
        // documents the buffer sizes it needs.
        unsafe { self.launcher.launch(name, grid, block, smem, args) }
    }

    /// [`Kernels::go`] with blocks of [`BLOCK`] threads and no dynamic shared memory.
    pub(crate) fn go_block(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        self.go(name, grid, (BLOCK, 1, 1), 0, args)
    }

    /// `bias_add_{dtype}`: `x[n, j] += bias[j]` (rows of stride ld).
    pub fn bias_add(
        &self,
        dt: Dtype,
        x: DevPtr,
        bias: DevPtr,
        rows: usize,
        width: usize,
        ld: usize,
    ) -> Result<()> {
        let (n_, w_, ld_) = (rows as i32, width as i32, ld as i32);
        let name = format!("bias_add_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(rows * width, BLOCK), 1, 1),
            &mut cuda_args![x, bias, n_, w_, ld_],
        )
    }

    /// `copy2d_{dtype}`: dst[n, j] = src[n, j] for `rows` rows of `width` elements, row strides
    /// `ldd` and `lds` (elements).
    #[allow(clippy::too_many_arguments)]
    pub fn copy2d(
        &self,
        dt: Dtype,
        dst: DevPtr,
        ldd: usize,
        src: DevPtr,
        lds: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let (ldd_, lds_, n_, w_) = (ldd as i32, lds as i32, rows as i32, width as i32);
        let name = format!("copy2d_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(rows * width, BLOCK), 1, 1),
            &mut cuda_args![dst, ldd_, src, lds_, n_, w_],
        )
    }

    /// `add_{dtype}`: out = a + b over n elements.
    pub fn add(&self, dt: Dtype, out: DevPtr, a: DevPtr, b: DevPtr, n: usize) -> Result<()> {
        let name = format!("add_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(n, BLOCK), 1, 1),
            &mut cuda_args![out, a, b, n],
        )
    }

    /// `cast_f32_to_bf16` / `cast_bf16_to_f32`.
    pub fn cast(&self, from: Dtype, to: Dtype, out: DevPtr, inp: DevPtr, n: usize) -> Result<()> {
        let name = format!("cast_{}_to_{}", from.suffix(), to.suffix());
        self.go_block(
            &name,
            (blocks(n, BLOCK), 1, 1),
            &mut cuda_args![out, inp, n],
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

/// Convenience: a zeroed f32 scratch buffer of `n` elements.
pub fn scratch_f32(gpu: &Gpu, n: usize) -> Result<GpuBuf<f32>> {
    gpu.zeros::<f32>(n)
}
