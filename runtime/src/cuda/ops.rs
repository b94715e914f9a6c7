//! The kernel library ([`Kernels`]) and the launch wrappers of the ops without a folder of their
//! own (attention, bias add, copies, casts, AdamW): one method per kernel family, named as the
//! kernels (`{op}_{dtype}`). The folder ops (`crate::ops::{norm, activation, cross_entropy, rope,
//! embedding}`) add their launchers to [`Kernels`] in their `cuda.rs`.
//!
//! Arguments are raw device pointers ([`DevPtr`], 0 for "none") so that views into fused
//! buffers (q/k/v inside one qkv projection, gate/up halves) need no copies. Each method states
//! the layout it expects; sizes are checked before launching where a wrong one would fault.

use super::compile::{KernelSource, MMA_BWD_MAX_HEAD_DIM, mma_head_dim_ok};
use super::error::{CudaError, Result};
use super::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use super::launch::{BLOCK, Launcher, blocks};
use crate::cuda_args;
use std::collections::BTreeMap;
use std::sync::Arc;

mod optim;

pub use crate::ops::activation::cuda::Act;
pub(crate) use crate::ops::activation::cuda::{act_bwd, act_fwd};

/// The normalisation kind of [`Kernels::norm_fwd`]: the IR's own.
pub use modelspec_dsl::ir::NormKind;

/// Shapes and options of one attention call. Layout: q `[B*T, ldq]` with head h at column
/// `h*head_dim`; k, v `[B*T, ldk/ldv]` with kv head `h / (heads/kv_heads)`; o like q.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    /// Batch.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Row strides (elements) of q, k, v and o (and of their gradients).
    pub ldq: usize,
    /// Row stride of k.
    pub ldk: usize,
    /// Row stride of v.
    pub ldv: usize,
    /// Row stride of o.
    pub ldo: usize,
    /// Multiplier on q.k.
    pub scale: f32,
    /// `cap * tanh(s / cap)` on scores when > 0.
    pub softcap: f32,
    /// Sliding window (0 = none).
    pub window: usize,
    /// Causal mask.
    pub causal: bool,
    /// ALiBi: device pointer to `heads` f32 slopes (bias `bf16(slope * j)` on q.k before the
    /// scale, key position j within its sequence); 0 = none.
    pub alibi: DevPtr,
}

impl AttnShape {
    /// Dense layout (q `[B*T, H*D]`, k/v `[B*T, KV*D]`), causal, scale `D^-0.5`.
    pub fn dense(
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> AttnShape {
        AttnShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
            ldq: heads * head_dim,
            ldk: kv_heads * head_dim,
            ldv: kv_heads * head_dim,
            ldo: heads * head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
            window: 0,
            causal: true,
            alibi: 0,
        }
    }

    fn check(&self, kernel: &str) -> Result<()> {
        let bad = |why: String| {
            Err(CudaError::BadLaunch {
                kernel: kernel.into(),
                why,
            })
        };
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "heads {} not a multiple of kv_heads {}",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim > 256 || self.head_dim == 0 {
            return bad(format!("head_dim {} outside 1..=256", self.head_dim));
        }
        Ok(())
    }
}

/// The compiled kernel library on one GPU.
pub struct Kernels {
    launcher: Launcher,
    head_dims: Vec<usize>,
}

/// Blocks of a grid-stride launch over `n` elements: one element per thread up to 2^20 blocks
/// (each thread then loops), so any arena size fits the grid.
fn stride_blocks(n: usize) -> u32 {
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
        let src = KernelSource::library(name, head_dims, defines);
        Ok(Kernels {
            launcher: Launcher::load(gpu, &src)?,
            head_dims: head_dims.to_vec(),
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

    /// Whether the tensor-core forward exists for this call (bf16, an instantiated head dim).
    pub fn attn_uses_mma(&self, dt: Dtype, s: &AttnShape) -> bool {
        dt == Dtype::Bf16
            && mma_head_dim_ok(s.head_dim)
            && self.head_dims.contains(&s.head_dim)
            && [s.ldq, s.ldk, s.ldv, s.ldo].iter().all(|l| l % 8 == 0)
    }

    /// Attention forward: o and lse `[B, H, T]` (f32, natural log). Tensor cores for bf16 at an
    /// instantiated head dim, else the reference-grade kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_fwd(
        &self,
        dt: Dtype,
        s: &AttnShape,
        o: DevPtr,
        lse: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
    ) -> Result<()> {
        s.check("attn_fwd")?;
        let (t_, h_, kv_, d_) = (
            s.seq as i32,
            s.heads as i32,
            s.kv_heads as i32,
            s.head_dim as i32,
        );
        let (ldq, ldk, ldv, ldo) = (s.ldq as i32, s.ldk as i32, s.ldv as i32, s.ldo as i32);
        let (scale, softcap, window, causal, alibi) = (
            s.scale,
            s.softcap,
            s.window as i32,
            s.causal as i32,
            s.alibi,
        );
        if self.attn_uses_mma(dt, s) {
            let d = s.head_dim;
            let bn = if d <= 128 { 64 } else { 32 };
            let smem = (4 * bn * (d + 8) * 2) as u32;
            let name = format!("attn_fwd_bf16_d{d}");
            return self.go(
                &name,
                (s.seq.div_ceil(64) as u32, s.heads as u32, s.batch as u32),
                (128, 1, 1),
                smem,
                &mut cuda_args![
                    o, lse, q, k, v, t_, h_, kv_, ldq, ldk, ldv, ldo, scale, softcap, window,
                    causal, alibi
                ],
            );
        }
        let name = format!("attn_simple_fwd_{}", dt.suffix());
        self.go(
            &name,
            (s.seq.div_ceil(4) as u32, s.heads as u32, s.batch as u32),
            (128, 1, 1),
            0,
            &mut cuda_args![
                o, lse, q, k, v, t_, h_, kv_, d_, ldq, ldk, ldv, ldo, scale, softcap, window,
                causal, alibi
            ],
        )
    }

    /// Attention backward: dq, dk, dv (laid out like q, k, v) from dout, o and the forward's lse.
    /// `delta` is scratch `[B, H, T]` f32; `dq_acc` is scratch `[B*T, H*D]` f32 (tensor-core
    /// path only; may be 0 otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn attn_bwd(
        &self,
        dt: Dtype,
        s: &AttnShape,
        dq: DevPtr,
        dk: DevPtr,
        dv: DevPtr,
        dq_acc: DevPtr,
        delta: DevPtr,
        dout: DevPtr,
        o: DevPtr,
        lse: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
    ) -> Result<()> {
        s.check("attn_bwd")?;
        let (t_, h_, kv_, d_) = (
            s.seq as i32,
            s.heads as i32,
            s.kv_heads as i32,
            s.head_dim as i32,
        );
        let (ldq, ldk, ldv, ldo) = (s.ldq as i32, s.ldk as i32, s.ldv as i32, s.ldo as i32);
        let (scale, softcap, window, causal, alibi) = (
            s.scale,
            s.softcap,
            s.window as i32,
            s.causal as i32,
            s.alibi,
        );
        let grid_q = (s.seq.div_ceil(4) as u32, s.heads as u32, s.batch as u32);
        let name = format!("attn_delta_{}", dt.suffix());
        self.go(
            &name,
            grid_q,
            (128, 1, 1),
            0,
            &mut cuda_args![delta, o, dout, t_, h_, d_, ldo],
        )?;
        if self.attn_uses_mma(dt, s)
            && s.head_dim <= MMA_BWD_MAX_HEAD_DIM
            && s.head_dim.is_multiple_of(32)
        {
            if dq_acc == 0 {
                return Err(CudaError::BadLaunch {
                    kernel: "attn_bwd".into(),
                    why: "the tensor-core path needs dq_acc scratch".into(),
                });
            }
            let d = s.head_dim;
            let width = s.heads * d;
            let rows = s.batch * s.seq;
            // SAFETY: the caller provides dq_acc with rows * width f32 (documented above).
            unsafe { self.gpu().memset_raw(dq_acc, rows * width * 4) }?;
            let smem = ((2 * 128 * (d + 8) + 4 * 64 * (d + 8) + 64 * 136) * 2 + 1024) as u32;
            let name = format!("attn_bwd_bf16_d{d}");
            self.go(
                &name,
                (
                    s.seq.div_ceil(128) as u32,
                    s.kv_heads as u32,
                    s.batch as u32,
                ),
                (256, 1, 1),
                smem,
                &mut cuda_args![
                    dk, dv, dq_acc, q, k, v, dout, lse, delta, t_, h_, kv_, ldq, ldk, ldv, ldo,
                    scale, softcap, window, causal, alibi
                ],
            )?;
            let (rows_, width_, ldq_) = (rows as i32, width as i32, ldq);
            return self.go_block(
                "attn_dq_convert_bf16",
                (blocks(rows * width, BLOCK), 1, 1),
                &mut cuda_args![dq, dq_acc, rows_, width_, ldq_],
            );
        }
        let name = format!("attn_simple_dq_{}", dt.suffix());
        self.go(
            &name,
            grid_q,
            (128, 1, 1),
            0,
            &mut cuda_args![
                dq, q, k, v, dout, lse, delta, t_, h_, kv_, d_, ldq, ldk, ldv, ldo, scale, softcap,
                window, causal, alibi
            ],
        )?;
        let name = format!("attn_simple_dkv_{}", dt.suffix());
        let grid_k = (s.seq.div_ceil(4) as u32, s.kv_heads as u32, s.batch as u32);
        self.go(
            &name,
            grid_k,
            (128, 1, 1),
            0,
            &mut cuda_args![
                dk, dv, q, k, v, dout, lse, delta, t_, h_, kv_, d_, ldq, ldk, ldv, ldo, scale,
                softcap, window, causal, alibi
            ],
        )
    }
}

/// Convenience: a zeroed f32 scratch buffer of `n` elements.
pub fn scratch_f32(gpu: &Gpu, n: usize) -> Result<GpuBuf<f32>> {
    gpu.zeros::<f32>(n)
}
