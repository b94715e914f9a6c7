//! Attention's CUDA side: the launch shape ([`AttnShape`]), the launchers of the own kernels
//! (`attention_mma.cu`: tensor-core flash attention for bf16; `attention_simple.cu`: the
//! reference-grade kernels for any dtype and head dim, and the passes every path shares: attention
//! sinks and the query temperature) as methods of [`Kernels`], and their kernel source for
//! [`crate::cuda::compile`]. cuDNN's fused attention (`crate::cuda::cudnn`) reads the same
//! [`AttnShape`] and layouts.

pub mod hopper;

use crate::cuda::Kernels;
use crate::cuda::compile::{MMA_BWD_MAX_HEAD_DIM, mma_head_dim_ok};
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::{BLOCK, blocks};
use crate::cuda_args;
use crate::ops::mla::MlaDims;
use modelspec_dsl::ir::QueryTemperature;

/// The CUDA C of the reference-grade kernels and the shared passes.
pub(crate) const SOURCE_SIMPLE: &str = include_str!("attention_simple.cu");
/// The CUDA C of the tensor-core kernels (instantiated per head dim by the library).
pub(crate) const SOURCE_MMA: &str = include_str!("attention_mma.cu");
/// The CUDA C of latent attention's layout moves (`mla.cu`).
pub(crate) const SOURCE_MLA: &str = include_str!("mla.cu");

/// Shapes and options of one attention call. Layout: q, k `[B*T, ldq/ldk]` with head h at column
/// `h*head_dim`; v `[B*T, ldv]` with head h at column `h*v_head_dim`; kv head `h /
/// (heads/kv_heads)`; o `[B*T, ldo]` like v.
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
    /// Head width of q and k.
    pub head_dim: usize,
    /// Head width of v and o: `head_dim`, except in latent attention (DeepSeek-V3: 192 for q/k,
    /// 128 for v). The reference-grade kernels and cuDNN take a different width; the tensor-core
    /// path refuses it.
    pub v_head_dim: usize,
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
    /// Chunked attention (Llama 4): a query sees only the keys of its own chunk of `chunk`
    /// positions (0 = none).
    pub chunk: usize,
    /// Causal mask.
    pub causal: bool,
    /// ALiBi: device pointer to `heads` f32 slopes (bias `bf16(slope * j)` on q.k before the
    /// scale, key position j within its sequence); 0 = none.
    pub alibi: DevPtr,
    /// PyTorch's layout instead of the rows above: q, k, v, o and their gradients as
    /// `[B, heads, T, width]` tensors, each head's T rows contiguous. The row strides must then be
    /// the dense ones (`heads · width`: the buffers' sizes). cuDNN's path only; the own kernels
    /// refuse it.
    pub head_major: bool,
}

/// An [`AttnShape`] as the kernels' C signatures take it.
struct Scalars {
    t_: i32,
    h_: i32,
    kv_: i32,
    d_: i32,
    dv_: i32,
    /// ldq, ldk, ldv, ldo.
    ld: [i32; 4],
    /// window, chunk, causal.
    mask: [i32; 3],
    scale: f32,
    softcap: f32,
    alibi: DevPtr,
}

impl AttnShape {
    /// The kernels' scalar arguments.
    fn scalars(&self) -> Scalars {
        let i = |n: usize| n as i32;
        Scalars {
            t_: i(self.seq),
            h_: i(self.heads),
            kv_: i(self.kv_heads),
            d_: i(self.head_dim),
            dv_: i(self.v_head_dim),
            ld: [i(self.ldq), i(self.ldk), i(self.ldv), i(self.ldo)],
            mask: [i(self.window), i(self.chunk), i32::from(self.causal)],
            scale: self.scale,
            softcap: self.softcap,
            alibi: self.alibi,
        }
    }

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
            v_head_dim: head_dim,
            ldq: heads * head_dim,
            ldk: kv_heads * head_dim,
            ldv: kv_heads * head_dim,
            ldo: heads * head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
            window: 0,
            chunk: 0,
            causal: true,
            alibi: 0,
            head_major: false,
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
        if self.v_head_dim > 256 || self.v_head_dim == 0 {
            return bad(format!("v_head_dim {} outside 1..=256", self.v_head_dim));
        }
        if self.head_major {
            return bad("the head-major layout is cuDNN's only: give the own kernels rows".into());
        }
        Ok(())
    }
}

/// Which kernel runs an attention forward ([`Kernels::attn_fwd_kernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdKernel {
    /// `attention_hopper.cu`: wgmma and bulk tensor copies (Hopper, bf16, head dims 64 and 128),
    /// in a [`hopper::Schedule`].
    Hopper(hopper::Schedule),
    /// `attention_mma.cu`: mma.sync tensor cores (bf16 at an instantiated head dim).
    Mma,
    /// `attention_simple.cu`: the reference-grade kernel (any dtype and head dim).
    Simple,
}

impl FwdKernel {
    /// The name benchmarks and logs print.
    pub fn name(self) -> &'static str {
        match self {
            FwdKernel::Hopper(hopper::Schedule::Plain) => "hopper",
            FwdKernel::Hopper(hopper::Schedule::Overlap) => "hopper-overlap",
            FwdKernel::Hopper(hopper::Schedule::OverlapPoly) => "hopper-poly",
            FwdKernel::Hopper(hopper::Schedule::PingPong) => "hopper-pingpong",
            FwdKernel::Mma => "mma",
            FwdKernel::Simple => "simple",
        }
    }
}

impl Kernels {
    /// The kernel [`Kernels::attn_fwd`] runs for this call: the Hopper kernel where the library
    /// has it (a Hopper GPU; [`Kernels::set_attn_hopper`]) and it takes the call, else the
    /// mma.sync kernel where [`Kernels::attn_uses_mma`], else the reference-grade one.
    pub fn attn_fwd_kernel(&self, dt: Dtype, s: &AttnShape) -> FwdKernel {
        if let Some((_, launch)) = self.attn_hopper()
            && hopper::HopperAttention::refuses(dt, s).is_none()
        {
            FwdKernel::Hopper(launch.schedule)
        } else if self.attn_uses_mma(dt, s) {
            FwdKernel::Mma
        } else {
            FwdKernel::Simple
        }
    }

    /// The Hopper forward's tag ([`hopper::HopperAttention::tag`]) where it runs this call
    /// ([`Kernels::attn_fwd_kernel`]): choices made by timing it are keyed by it.
    pub(crate) fn attn_hopper_tag(&self, dt: Dtype, s: &AttnShape) -> Option<String> {
        let (h, launch) = self.attn_hopper()?;
        matches!(self.attn_fwd_kernel(dt, s), FwdKernel::Hopper(_)).then(|| h.tag(launch))
    }

    /// Whether [`Kernels::attn_bwd`] runs the Hopper backward for this call (switched on, and
    /// [`hopper::HopperAttention::refuses_bwd`] says nothing; buffers must also be aligned).
    pub fn attn_bwd_uses_hopper(&self, dt: Dtype, s: &AttnShape) -> bool {
        self.attn_bwd_hopper(dt, s).is_some()
    }

    /// The Hopper backward where it runs this call ([`Kernels::attn_bwd_uses_hopper`]).
    fn attn_bwd_hopper(&self, dt: Dtype, s: &AttnShape) -> Option<&hopper::HopperAttention> {
        self.attn_hopper_bwd().filter(|_| {
            self.attn_uses_mma(dt, s) && hopper::HopperAttention::refuses_bwd(dt, s).is_none()
        })
    }

    /// Whether the tensor-core forward exists for this call (bf16, an instantiated head dim, the
    /// same width for values as for queries and keys).
    pub fn attn_uses_mma(&self, dt: Dtype, s: &AttnShape) -> bool {
        dt == Dtype::Bf16
            && s.v_head_dim == s.head_dim
            && mma_head_dim_ok(s.head_dim)
            && self.head_dims().contains(&s.head_dim)
            && [s.ldq, s.ldk, s.ldv, s.ldo].iter().all(|l| l % 8 == 0)
            && !s.head_major
    }

    /// Attention forward: o and lse `[B, H, T]` (f32, natural log), by the kernel
    /// [`Kernels::attn_fwd_kernel`] names.
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
        let Scalars {
            t_,
            h_,
            kv_,
            d_,
            dv_,
            ld: [ldq, ldk, ldv, ldo],
            mask: [window, chunk, causal],
            scale,
            softcap,
            alibi,
        } = s.scalars();
        // (Views at addresses the tensor maps cannot take fall back to the mma.sync kernel.)
        if let (FwdKernel::Hopper(_), Some((h, launch))) =
            (self.attn_fwd_kernel(dt, s), self.attn_hopper())
            && hopper::HopperAttention::aligned(&[q, k, v], &[o])
        {
            // SAFETY: the buffers are the caller's, of the sizes documented above.
            return unsafe { h.fwd(launch, s, o, lse, q, k, v) };
        }
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
                    chunk, causal, alibi
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
                o, lse, q, k, v, t_, h_, kv_, d_, dv_, ldq, ldk, ldv, ldo, scale, softcap, window,
                chunk, causal, alibi
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
        let Scalars {
            t_,
            h_,
            kv_,
            d_,
            dv_,
            ld: [ldq, ldk, ldv, ldo],
            mask: [window, chunk, causal],
            scale,
            softcap,
            alibi,
        } = s.scalars();
        let grid_q = (s.seq.div_ceil(4) as u32, s.heads as u32, s.batch as u32);
        let name = format!("attn_delta_{}", dt.suffix());
        self.go(
            &name,
            grid_q,
            (128, 1, 1),
            0,
            &mut cuda_args![delta, o, dout, t_, h_, dv_, ldo],
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
            let hopper = self
                .attn_bwd_hopper(dt, s)
                .filter(|_| hopper::HopperAttention::aligned(&[q, k, v, dout], &[dk, dv]));
            if let Some(h) = hopper {
                // SAFETY: the caller's buffers, of the sizes `s` implies (documented above).
                unsafe { h.bwd(s, dk, dv, dq_acc, dout, lse, delta, q, k, v) }?;
            } else {
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
                        scale, softcap, window, chunk, causal, alibi
                    ],
                )?;
            }
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
                dq, q, k, v, dout, lse, delta, t_, h_, kv_, d_, dv_, ldq, ldk, ldv, ldo, scale,
                softcap, window, chunk, causal, alibi
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
                dk, dv, q, k, v, dout, lse, delta, t_, h_, kv_, d_, dv_, ldq, ldk, ldv, ldo, scale,
                softcap, window, chunk, causal, alibi
            ],
        )
    }

    /// Attention sinks after a forward (either path): each row's softmax gains the sink logit
    /// `sinks[h]` in its denominator, so `o *= exp(lse - lse')` and `lse = lse'` with
    /// `lse' = logaddexp(lse, sink)`. The backward then needs only [`Kernels::attn_sinks_bwd`]:
    /// the probabilities it recomputes from `lse'` and the `delta = rowsum(dO o)` it forms from
    /// the rescaled `o` are already those of the softmax with the sink. `sinks`: `[heads]` in
    /// `dt`.
    pub fn attn_sinks_fwd(
        &self,
        dt: Dtype,
        s: &AttnShape,
        o: DevPtr,
        lse: DevPtr,
        sinks: DevPtr,
    ) -> Result<()> {
        let (t_, h_, d_, ldo) = (
            s.seq as i32,
            s.heads as i32,
            s.v_head_dim as i32,
            s.ldo as i32,
        );
        let name = format!("attn_sinks_fwd_{}", dt.suffix());
        self.go(
            &name,
            ((s.batch * s.seq) as u32, 1, 1),
            (128, 1, 1),
            (s.heads * 4) as u32,
            &mut cuda_args![o, lse, sinks, t_, h_, d_, ldo],
        )
    }

    /// The sinks' gradient: `dsinks[h] += -sum over rows of exp(sink_h - lse') * (dO . o)`
    /// (f32, `[heads]`), one block per head summing in a fixed order.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_sinks_bwd(
        &self,
        dt: Dtype,
        s: &AttnShape,
        dsinks: DevPtr,
        dout: DevPtr,
        o: DevPtr,
        lse: DevPtr,
        sinks: DevPtr,
    ) -> Result<()> {
        let (b_, t_, h_, d_, ldo) = (
            s.batch as i32,
            s.seq as i32,
            s.heads as i32,
            s.v_head_dim as i32,
            s.ldo as i32,
        );
        let name = format!("attn_sinks_bwd_{}", dt.suffix());
        self.go_block(
            &name,
            (s.heads as u32, 1, 1),
            &mut cuda_args![dsinks, dout, o, lse, sinks, b_, t_, h_, d_, ldo],
        )
    }

    /// The query temperature of Llama 4's NoPE layers: row r of `q` (`rows` rows of `width`
    /// elements, row stride `ld`; position `r % seq` in its sequence) times `temp.factor(pos)`.
    /// The same call scales the queries' gradient in the backward (the factor is a constant).
    #[allow(clippy::too_many_arguments)]
    pub fn attn_qscale(
        &self,
        dt: Dtype,
        q: DevPtr,
        rows: usize,
        seq: usize,
        width: usize,
        ld: usize,
        temp: &QueryTemperature,
    ) -> Result<()> {
        let (n_, t_, w_, ld_) = (rows as i32, seq as i32, width as i32, ld as i32);
        let (floor, scale) = (temp.floor as f32, temp.scale as f32);
        let name = format!("attn_qscale_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(rows * width, BLOCK), 1, 1),
            &mut cuda_args![q, n_, t_, w_, ld_, floor, scale],
        )
    }

    /// Latent attention's per-head keys and values (`mla_split_{dtype}`): from `kv` `[rows,
    /// heads·(nope + v)]` (per head its key part, then its value) and the shared rotary key `pe`
    /// `[rows, rope]` (row stride `ldpe`), writes `k` (head h at column `h·(nope + rope)`: its key
    /// part, then `pe`) and `v` (head h at column `h·v`), both with row stride `ld`. RoPE is
    /// applied afterwards.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_split(
        &self,
        dt: Dtype,
        m: &MlaDims,
        (k, v, ld): (DevPtr, DevPtr, usize),
        kv: DevPtr,
        (pe, ldpe): (DevPtr, usize),
        rows: usize,
    ) -> Result<()> {
        let width = m.heads * (m.nope + m.rope + m.v);
        let (ld_, n_, h_, nope_, rope_, v_) = mla_args(ld, rows, m);
        let ldpe_ = ldpe as i32;
        let name = format!("mla_split_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(rows * width, BLOCK), 1, 1),
            &mut cuda_args![k, v, ld_, kv, pe, ldpe_, n_, h_, nope_, rope_, v_],
        )
    }

    /// The transpose of [`Kernels::mla_split`] (`mla_merge_{dtype}`): `dkv` `[rows,
    /// heads·(nope + v)]` from `dk`'s key parts and `dv` (row stride `ld`), and `dpe` `[rows,
    /// rope]` (row stride `ldpe`) the sum over the heads, in head order, of `dk`'s rotary parts
    /// (both written, not accumulated; deterministic).
    #[allow(clippy::too_many_arguments)]
    pub fn mla_merge(
        &self,
        dt: Dtype,
        m: &MlaDims,
        dkv: DevPtr,
        (dpe, ldpe): (DevPtr, usize),
        (dk, dv, ld): (DevPtr, DevPtr, usize),
        rows: usize,
    ) -> Result<()> {
        let width = m.heads * (m.nope + m.v) + m.rope;
        let (ld_, n_, h_, nope_, rope_, v_) = mla_args(ld, rows, m);
        let ldpe_ = ldpe as i32;
        let name = format!("mla_merge_{}", dt.suffix());
        self.go_block(
            &name,
            (blocks(rows * width, BLOCK), 1, 1),
            &mut cuda_args![dkv, dpe, ldpe_, dk, dv, ld_, n_, h_, nope_, rope_, v_],
        )
    }
}

/// The integer arguments of the latent attention kernels: `(ld, rows, heads, nope, rope, v)`.
fn mla_args(ld: usize, rows: usize, m: &MlaDims) -> (i32, i32, i32, i32, i32, i32) {
    (
        ld as i32,
        rows as i32,
        m.heads as i32,
        m.nope as i32,
        m.rope as i32,
        m.v as i32,
    )
}
