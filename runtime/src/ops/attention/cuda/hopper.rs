//! The own Hopper attention forward (`attention_hopper.cu`): wgmma tensor-core products fed by
//! the bulk tensor copy engine, blocks of a producer warpgroup and two (or three) consumer
//! warpgroups taking tiles of 128 (192) queries of a (head, batch) as they free up ([`Launch`]). bf16 at head dims 64 and 128, every variant of the contract
//! (causal or not, window, chunk, softcap, ALiBi, GQA), rows of any 16-byte-aligned stride; the
//! same o and lse (`[B, H, T]`, natural log) as the other paths, so any backward follows it.
//! [`Kernels::attn_fwd`] runs it wherever it takes the call on a Hopper GPU.
use super::AttnShape;
use crate::cuda::compile::{COMMON, KernelSource};
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, Gpu, GpuBuf, Module};
use crate::cuda_args;
use crate::ops::matmul::cuda::hopper::tensor_map;
use std::sync::Arc;

/// The kernel text after `kernels/common.cuh`: the Hopper primitives, then the kernels.
const SOURCE: &str = concat!(
    include_str!("../../matmul/hopper_mma.cuh"),
    include_str!("../attention_hopper.cu"),
    include_str!("../attention_hopper_bwd.cu")
);

/// Keys a tile (`AH_BN`).
const BN: u32 = 128;

/// Stages of the K/V ring at a head dim (`AH_STAGES(D)`).
fn stages(head_dim: usize) -> u32 {
    if head_dim == 64 { 4 } else { 3 }
}

/// Q buffers at a head dim (`AH_QBUFS(D)`).
fn q_buffers(head_dim: usize) -> u32 {
    if head_dim == 64 { 2 } else { 1 }
}

/// The head dims the kernels are instantiated for.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

/// How a consumer warpgroup orders its work on a key tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// S, wait, softmax, P V, wait: one product at a time; the two consumer warpgroups overlap
    /// each other. The default: the fastest of the three on an H100 at both head dims
    /// (bench/NOTES.md, eighteenth session).
    #[default]
    Plain,
    /// FlashAttention-3's intra-warpgroup pipelining: a tile's S product is issued before the
    /// previous tile's P V, and its softmax runs while P V does. 6-10% slower than plain at
    /// D64; at D128 it cannot hold S, P and O at once without ptxas serialising its products.
    Overlap,
    /// FlashAttention-3's ping-pong: the two consumer warpgroups take turns at their
    /// tensor-core work on a key tile (P V of the tile before and S of this one, issued
    /// together), so one's softmax runs while the other's products do. 5-8% slower than plain
    /// on an H100 (bench/NOTES.md, nineteenth session): neither unit is the limit yet.
    PingPong,
    /// Overlapped, with every fourth exponential computed on the FMA pipe by a polynomial
    /// (FlashAttention-4's offload of the MUFU unit, which at D64 is as busy as the tensor
    /// cores): no faster than overlap, as the kernel is not MUFU-bound yet.
    OverlapPoly,
}

impl Schedule {
    /// `MODELSPEC_ATTN_HOPPER`, the one reading of it: `off` (also `0`, `false`) gives `None`, the
    /// kernels unused; `overlap`, `poly`, `pingpong` that schedule; unset, `plain` or `on`
    /// [`Schedule::Plain`].
    pub fn from_env() -> Option<Schedule> {
        match std::env::var("MODELSPEC_ATTN_HOPPER").as_deref() {
            Ok("off" | "0" | "false") => None,
            Ok("overlap") => Some(Schedule::Overlap),
            Ok("poly") => Some(Schedule::OverlapPoly),
            Ok("pingpong") => Some(Schedule::PingPong),
            Err(_) | Ok("" | "plain" | "on") => Some(Schedule::Plain),
            Ok(other) => {
                // A misspelling is not taken for the default silently.
                eprintln!(
                    "warning: MODELSPEC_ATTN_HOPPER={other:?} is not one of off, plain, overlap, poly, pingpong; the plain schedule runs"
                );
                Some(Schedule::Plain)
            }
        }
    }

    /// The kernels' name part.
    fn infix(self) -> &'static str {
        match self {
            Schedule::Overlap => "",
            Schedule::Plain => "plain_",
            Schedule::OverlapPoly => "poly_",
            Schedule::PingPong => "pp_",
        }
    }
}

/// How the kernels run a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// The consumers' order of work.
    pub schedule: Schedule,
    /// One block a streaming multiprocessor taking tiles as it frees up (the default), else one
    /// block a tile.
    pub persistent: bool,
    /// Three consumer warpgroups, 192 queries a tile, where a kernel exists (the plain schedule
    /// at D64); else two, 128 queries. 11% slower than two at T1024, 1% faster at T2048 (H100).
    pub wide: bool,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            schedule: Schedule::Plain,
            persistent: true,
            wide: false,
        }
    }
}

impl Launch {
    /// The default changed by `MODELSPEC_ATTN_HOPPER` (the schedule, [`Schedule::from_env`]),
    /// `MODELSPEC_ATTN_HOPPER_GRID=tiles` and `MODELSPEC_ATTN_HOPPER_ROWS=192`; `None` for
    /// `MODELSPEC_ATTN_HOPPER=off`.
    pub fn from_env() -> Option<Launch> {
        let var = |name: &str| std::env::var(name).ok();
        Some(Launch {
            schedule: Schedule::from_env()?,
            persistent: var("MODELSPEC_ATTN_HOPPER_GRID").as_deref() != Some("tiles"),
            wide: var("MODELSPEC_ATTN_HOPPER_ROWS").as_deref() == Some("192"),
        })
    }

    /// Queries a tile for head dim `d`: 192 where `wide` has a kernel, else 128.
    fn rows(self, d: usize) -> u32 {
        if self.wide && d == 64 && self.schedule == Schedule::Plain {
            192
        } else {
            128
        }
    }
}

/// The compiled kernels on one Hopper GPU.
pub struct HopperAttention {
    gpu: Arc<Gpu>,
    module: Arc<Module>,
    /// Streaming multiprocessors: the persistent grid's size.
    sms: u32,
    /// The kernels' tile counters (`sched`: the next tile past the first wave, the blocks done),
    /// zero between launches (the last block resets them).
    sched: GpuBuf<i32>,
    /// The module source's cache key (what [`HopperAttention::tag`] names).
    source_key: String,
}

impl HopperAttention {
    /// Compiles the kernels for `compute_90a`; an error on a GPU that is not compute capability
    /// 9.0.
    pub fn new(gpu: &Arc<Gpu>) -> Result<HopperAttention> {
        if gpu.arch() != "compute_90" {
            return Err(CudaError::BadLaunch {
                kernel: "attn_hopper_fwd".into(),
                why: format!(
                    "needs a Hopper GPU (compute capability 9.0); this one is {}",
                    gpu.arch()
                ),
            });
        }
        let source = Self::source();
        Ok(HopperAttention {
            gpu: gpu.clone(),
            module: gpu.load_arch(&source, "compute_90a")?,
            sms: gpu.sm_count()?,
            sched: gpu.zeros::<i32>(2)?,
            source_key: crate::cuda::compile::cache_key(&source.body, "compute_90a"),
        })
    }

    /// The module's source: `kernels/common.cuh`, the Hopper primitives, the kernels.
    pub fn source() -> KernelSource {
        KernelSource {
            name: "attention_hopper".into(),
            defines: Default::default(),
            body: format!("{COMMON}\n{SOURCE}"),
        }
    }

    /// What a choice made by timing these kernels depends on: their source (its cache key) and
    /// the launch.
    pub fn tag(&self, launch: Launch) -> String {
        format!("hopper {} {launch:?}", self.source_key)
    }

    /// The kernels for a kernel library whose attention has `head_dims`: `None` on a GPU other
    /// than Hopper or without a head dim they take (the caller asks only when
    /// [`Launch::from_env`] does not say `off`). A failed
    /// compilation is reported on stderr and leaves the other kernels to run the calls.
    pub(crate) fn for_library(gpu: &Arc<Gpu>, head_dims: &[usize]) -> Option<Arc<HopperAttention>> {
        if gpu.arch() != "compute_90" || !head_dims.iter().any(|d| HEAD_DIMS.contains(d)) {
            return None;
        }
        match HopperAttention::new(gpu) {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                eprintln!(
                    "warning: the Hopper attention kernels did not compile ({e}); the mma.sync kernels run instead"
                );
                None
            }
        }
    }

    /// Why the kernels cannot run this call (`None`: they can): bf16 only, a head dim of
    /// [`HEAD_DIMS`] for queries, keys and values alike, rows (not the head-major layout) whose
    /// strides are multiples of 8 elements (the tensor maps' 16 bytes), o's stride even.
    pub fn refuses(dt: Dtype, s: &AttnShape) -> Option<String> {
        if dt != Dtype::Bf16 {
            return Some(format!("{dt:?} (bf16 only)"));
        }
        if s.v_head_dim != s.head_dim || !HEAD_DIMS.contains(&s.head_dim) {
            return Some(format!(
                "head dims {}/{} (64/64 or 128/128 only)",
                s.head_dim, s.v_head_dim
            ));
        }
        if s.head_major {
            return Some("the head-major layout".into());
        }
        if [s.ldq, s.ldk, s.ldv].iter().any(|l| !l.is_multiple_of(8)) || !s.ldo.is_multiple_of(2) {
            return Some(format!(
                "row strides q {} k {} v {} o {} (multiples of 8, o's even)",
                s.ldq, s.ldk, s.ldv, s.ldo
            ));
        }
        None
    }

    /// Why the backward kernel (`attention_hopper_bwd.cu`, its first step) cannot run this call
    /// (`None`: it can): bf16 at head dim 64 for queries, keys and values, causal or not, with no
    /// window, chunk, softcap or ALiBi, rows whose strides (dout's too) are multiples of 8
    /// elements.
    pub fn refuses_bwd(dt: Dtype, s: &AttnShape) -> Option<String> {
        if let Some(why) = Self::refuses(dt, s) {
            return Some(why);
        }
        if s.head_dim != 64 {
            return Some(format!("head dim {} (64 only)", s.head_dim));
        }
        if !s.ldo.is_multiple_of(8) {
            return Some(format!("dout's row stride {} (a multiple of 8)", s.ldo));
        }
        if s.window > 0 || s.chunk > 0 || s.softcap > 0.0 || s.alibi != 0 {
            return Some("a window, chunk, softcap or ALiBi".into());
        }
        None
    }

    /// Whether the buffers' addresses suit the kernels: those read through tensor maps (q, k, v;
    /// dout for the backward) 16-byte aligned, the outputs stored a pair of bf16 at a time (o;
    /// dk, dv) 4-byte aligned.
    pub fn aligned(mapped: &[DevPtr], stored: &[DevPtr]) -> bool {
        mapped.iter().all(|p| p.is_multiple_of(16)) && stored.iter().all(|p| p.is_multiple_of(4))
    }

    /// The backward's first step ([`HopperAttention::refuses_bwd`] says which calls): dk, dv
    /// (bf16, laid out like k and v) and dQ added to `dq_acc` (f32 `[B*T, H*D]`, zeroed by the
    /// caller), from q, k, v, dout, lse and delta (`attn_delta`'s).
    ///
    /// # Safety
    /// The pointers must be device buffers of the sizes `s` implies (as
    /// [`crate::cuda::Kernels::attn_bwd`]).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn bwd(
        &self,
        s: &AttnShape,
        dk: DevPtr,
        dv: DevPtr,
        dq_acc: DevPtr,
        dout: DevPtr,
        lse: DevPtr,
        delta: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
    ) -> Result<()> {
        let kernel = "attn_hopper_bwd_d64";
        if let Some(why) = Self::refuses_bwd(Dtype::Bf16, s) {
            return Err(CudaError::BadLaunch {
                kernel: kernel.into(),
                why: format!("cannot take {why}"),
            });
        }
        if !Self::aligned(&[q, k, v, dout], &[dk, dv]) {
            return Err(CudaError::BadLaunch {
                kernel: kernel.into(),
                why: format!(
                    "q {q:#x}, k {k:#x}, v {v:#x}, dout {dout:#x} must be 16-byte aligned and dk {dk:#x}, dv {dv:#x} 4-byte aligned"
                ),
            });
        }
        let (d, rows) = (s.head_dim, s.batch * s.seq);
        if rows == 0 {
            return Ok(());
        }
        // Q and dO in tiles of 64 queries, K and V of 128 keys.
        let mq = tensor_map(q, s.heads * d, rows, s.ldq, 64)?;
        let mk = tensor_map(k, s.kv_heads * d, rows, s.ldk, BN)?;
        let mv = tensor_map(v, s.kv_heads * d, rows, s.ldv, BN)?;
        let mdo = tensor_map(dout, s.heads * d, rows, s.ldo, 64)?;
        let i = |n: usize| n as i32;
        let (t_, h_, kv_, ldk, ldv) = (i(s.seq), i(s.heads), i(s.kv_heads), i(s.ldk), i(s.ldv));
        let causal = i32::from(s.causal);
        let f = self.module.function(kernel)?;
        // K and V (128 x 64 each), two stages of Q and dO (64 x 64 each), each consumer
        // warpgroup's dS^T (64 x 64), bf16; plus 1 KiB for the 1024-byte alignment.
        let smem = ((2 * BN + 2 * 2 * 64 + 2 * 64) * d as u32) * 2 + 1024;
        let grid = (
            (s.seq as u32).div_ceil(BN),
            s.kv_heads as u32,
            s.batch as u32,
        );
        let mut args = cuda_args![
            mq, mk, mv, mdo, dk, dv, dq_acc, lse, delta, t_, h_, kv_, ldk, ldv, s.scale, causal
        ];
        // SAFETY: the arguments match the kernel's signature (four tensor maps by value, five
        // pointers, five ints, a float, an int); the buffers are the caller's promise.
        unsafe {
            self.gpu
                .launch(kernel, &f, grid, (384, 1, 1), smem, &mut args)
        }
    }

    /// The forward as `launch` says: o (bf16, laid out like q with `ldo`) and lse `[B, H, T]`
    /// from q, k, v.
    ///
    /// # Safety
    /// The pointers must be device buffers of the sizes `s` implies (as [`crate::cuda::Kernels::attn_fwd`]).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fwd(
        &self,
        launch: Launch,
        s: &AttnShape,
        o: DevPtr,
        lse: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
    ) -> Result<()> {
        let bm = launch.rows(s.head_dim);
        let wide = if bm == 192 { "m192_" } else { "" };
        let kernel = format!(
            "attn_hopper_fwd_{}{wide}d{}",
            launch.schedule.infix(),
            s.head_dim
        );
        let bad = |why: String| CudaError::BadLaunch {
            kernel: kernel.clone(),
            why,
        };
        if let Some(why) = Self::refuses(Dtype::Bf16, s) {
            return Err(bad(format!("cannot take {why}")));
        }
        if !Self::aligned(&[q, k, v], &[o]) {
            return Err(bad(format!(
                "q {q:#x}, k {k:#x}, v {v:#x} must be 16-byte aligned and o {o:#x} 4-byte aligned"
            )));
        }
        let (d, rows) = (s.head_dim, s.batch * s.seq);
        let tiles = (s.seq as u32).div_ceil(bm) * (s.heads * s.batch) as u32;
        if tiles == 0 {
            return Ok(()); // nothing to compute (an empty batch or sequence)
        }
        let mq = tensor_map(q, s.heads * d, rows, s.ldq, bm)?;
        let mk = tensor_map(k, s.kv_heads * d, rows, s.ldk, BN)?;
        let mv = tensor_map(v, s.kv_heads * d, rows, s.ldv, BN)?;
        let i = |n: usize| n as i32;
        let (t_, h_, kv_, b_, ldo) = (i(s.seq), i(s.heads), i(s.kv_heads), i(s.batch), i(s.ldo));
        let (window, chunk, causal) = (i(s.window), i(s.chunk), i32::from(s.causal));
        // Heads a group of the tile order: as many as keep their keys and values within 16 MiB
        // of the L2 (K and V of a kv head, shared by heads / kv_heads query heads).
        let per_head = (s.seq * d * 2 * 2 / (s.heads / s.kv_heads)).max(1);
        let group = i((16usize << 20) / per_head).clamp(1, i(s.heads * s.batch));
        let sched = self.sched.ptr();
        let f = self.module.function(&kernel)?;
        // The Q buffers (bm x D bf16 each), then the ring of K and V tiles (128 x D each), plus
        // 1 KiB for the 1024-byte alignment inside the kernel.
        let smem = (q_buffers(d) * bm + 2 * stages(d) * BN) * d as u32 * 2 + 1024;
        let grid = (
            if launch.persistent {
                tiles.min(self.sms)
            } else {
                tiles
            },
            1,
            1,
        );
        // A producer warpgroup and one consumer warpgroup a 64 queries.
        let threads = 128 * (bm / 64 + 1);
        let mut args = cuda_args![
            mq, mk, mv, o, lse, t_, h_, kv_, b_, ldo, s.scale, s.softcap, window, chunk, causal,
            s.alibi, sched, group
        ];
        // SAFETY: the arguments match the kernel's signature (three tensor maps by value, two
        // pointers, five ints, two floats, three ints, two pointers, an int); the buffers are the
        // caller's promise. The tile counters are this object's: its launches are stream-ordered
        // (one stream at a time, as every attention call of a step).
        unsafe {
            self.gpu
                .launch(&kernel, &f, grid, (threads, 1, 1), smem, &mut args)
        }
    }
}
