//! The decode module (`kernels/decode.cu` with `common.cuh`) and one launch wrapper per kernel:
//! what decoding needs beyond the kernel library the trainer uses (embedding and RoPE at each
//! row's own position, appending keys and values to the cache, attention of single rows over the
//! cache, the last rows, logits in f32 and the greedy argmax).

use std::sync::Arc;

use crate::cuda::compile::KernelSource;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt, Gpu};
use crate::cuda::launch::{BLOCK, Launcher, int as i, module_source};
use crate::cuda_args;
use modelspec_dsl::ir::QueryTemperature;

const COMMON: &str = include_str!("../kernels/common.cuh");
const DECODE: &str = include_str!("../kernels/decode.cu");

/// Every entry point of the decode module (the `{dtype}` ones in f32 and bf16).
pub const KERNEL_NAMES: &[&str] = &[
    "dec_embed_f32",
    "dec_embed_bf16",
    "dec_rope_f32",
    "dec_rope_bf16",
    "dec_kv_store_f32",
    "dec_kv_store_bf16",
    "dec_attn_f32",
    "dec_attn_bf16",
    "dec_mla_store_f32",
    "dec_mla_store_bf16",
    "dec_mla_expand_f32",
    "dec_mla_expand_bf16",
    "dec_gather_f32",
    "dec_gather_bf16",
    "dec_logits_f32",
    "dec_logits_bf16",
    "dec_argmax",
];

/// The CUDA C of the decode module: `common.cuh` and `decode.cu`.
pub fn kernel_source() -> KernelSource {
    module_source("decode", &[COMMON, DECODE])
}

/// Threads of `dec_attn`: `DEC_WARPS` (4) warps.
const ATTN_BLOCK: u32 = 128;

fn blocks(n: usize) -> u32 {
    crate::cuda::launch::blocks(n, BLOCK)
}

/// Where a call's new rows belong: device i32 arrays of `n` entries each.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows {
    /// New rows in this call.
    pub n: usize,
    /// Token ids `[n]`.
    pub tok: DevPtr,
    /// The sequence of each row `[n]`.
    pub seq: DevPtr,
    /// The absolute position of each row in its sequence `[n]`.
    pub pos: DevPtr,
}

/// One attention call over the cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedAttn {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Width of a value head (and of an output head): `head_dim` but in latent attention.
    pub v_head_dim: usize,
    /// Row stride of q (the fused `[q; k; v]` row).
    pub ldq: usize,
    /// Row stride of the output.
    pub ldo: usize,
    /// Positions of capacity per sequence.
    pub capacity: usize,
    pub scale: f32,
    /// 0: none.
    pub softcap: f32,
    /// 0: none.
    pub window: usize,
    /// Chunked attention's chunk; 0: none.
    pub chunk: usize,
    /// f32 `[heads]` ALiBi slopes; 0: none.
    pub alibi: DevPtr,
    /// `[heads]` sink logits in the compute dtype; 0: none.
    pub sinks: DevPtr,
    /// The query temperature (Llama 4's NoPE layers).
    pub temperature: Option<QueryTemperature>,
}

/// The loaded decode module on one GPU, with typed launches.
pub(super) struct DecodeKernels {
    launcher: Launcher,
}

impl DecodeKernels {
    pub fn load(gpu: &Arc<Gpu>) -> Result<DecodeKernels> {
        Ok(DecodeKernels {
            launcher: Launcher::load(gpu, &kernel_source())?,
        })
    }

    fn go(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        self.go_with(name, grid, BLOCK, args)
    }

    fn go_with(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        // SAFETY: every wrapper below binds locals that match the kernel's C signature; the
        // buffers come from the decoder's arena and cache, sized for the shapes passed.
        unsafe { self.launcher.launch(name, grid, (block, 1, 1), 0, args) }
    }

    /// `dec_embed_{dtype}`: out `[n, c]` = wte[tok] * scale (+ wpe[pos]).
    #[allow(clippy::too_many_arguments)]
    pub fn embed(
        &self,
        dt: Dtype,
        out: DevPtr,
        rows: &Rows,
        wte: DevPtr,
        wpe: DevPtr,
        c: usize,
        scale: f32,
    ) -> Result<()> {
        let (tok, pos, c_) = (rows.tok, rows.pos, i(c));
        self.go(
            &format!("dec_embed_{}", dt.suffix()),
            (rows.n as u32, 1, 1),
            &mut cuda_args![out, tok, pos, wte, wpe, c_, scale],
        )
    }

    /// `dec_rope_{dtype}`: rotates `heads` heads of x `[n, ld]` in place at the rows' positions;
    /// tables `[capacity, rot/2]` f32.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        dt: Dtype,
        x: DevPtr,
        (cos, sin): (DevPtr, DevPtr),
        rows: &Rows,
        heads: usize,
        head_dim: usize,
        ld: usize,
        rot: usize,
        interleaved: bool,
    ) -> Result<()> {
        let pos = rows.pos;
        let (n_, h_, d_, ld_, rot_, il) = (
            i(rows.n),
            i(heads),
            i(head_dim),
            i(ld),
            i(rot),
            i32::from(interleaved),
        );
        self.go(
            &format!("dec_rope_{}", dt.suffix()),
            (blocks(rows.n * heads * rot / 2), 1, 1),
            &mut cuda_args![x, cos, sin, pos, n_, h_, d_, ld_, rot_, il],
        )
    }

    /// `dec_kv_store_{dtype}`: appends the rows' keys k and values v (rows of stride `ld`) to the
    /// layer's cache `[batch, kv_heads, capacity, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_store(
        &self,
        dt: Dtype,
        (kc, vc): (DevPtr, DevPtr),
        (k, v): (DevPtr, DevPtr),
        rows: &Rows,
        kv_heads: usize,
        head_dim: usize,
        ld: usize,
        capacity: usize,
    ) -> Result<()> {
        let (seq, pos) = (rows.seq, rows.pos);
        let (n_, kv_, d_, ld_, l_) = (i(rows.n), i(kv_heads), i(head_dim), i(ld), i(capacity));
        self.go(
            &format!("dec_kv_store_{}", dt.suffix()),
            (blocks(rows.n * kv_heads * head_dim), 1, 1),
            &mut cuda_args![kc, vc, k, v, seq, pos, n_, kv_, d_, ld_, l_],
        )
    }

    /// `dec_mla_store_{dtype}`: appends latent attention's rows to its cache: the normalised
    /// latents (`latent`, row stride `ldl`) to `lat` `[batch, capacity, kv_rank]` and the rotated
    /// shared keys (`k_pe`, row stride `ldp`) to `pe` `[batch, capacity, rope]`.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_store(
        &self,
        dt: Dtype,
        (lat, pe): (DevPtr, DevPtr),
        (latent, ldl): (DevPtr, usize),
        (k_pe, ldp): (DevPtr, usize),
        rows: &Rows,
        (kv_rank, rope): (usize, usize),
        capacity: usize,
    ) -> Result<()> {
        let (seq, pos) = (rows.seq, rows.pos);
        let (ldl_, ldp_, n_, r_, rope_, l_) =
            (i(ldl), i(ldp), i(rows.n), i(kv_rank), i(rope), i(capacity));
        self.go(
            &format!("dec_mla_store_{}", dt.suffix()),
            (blocks(rows.n * (kv_rank + rope)), 1, 1),
            &mut cuda_args![
                lat, pe, latent, ldl_, k_pe, ldp_, seq, pos, n_, r_, rope_, l_
            ],
        )
    }

    /// `dec_mla_expand_{dtype}`: the per-head keys `kc` `[batch, heads, capacity, nope + rope]`
    /// and values `vc` `[batch, heads, capacity, v]` of the first `used` positions of every
    /// sequence, from the cached latents' up-projection `kv` `[batch, capacity, heads·(nope +
    /// v)]` and the cached rotated keys `pe` `[batch, capacity, rope]`.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_expand(
        &self,
        dt: Dtype,
        (kc, vc): (DevPtr, DevPtr),
        kv: DevPtr,
        pe: DevPtr,
        (batch, capacity, used): (usize, usize, usize),
        m: &crate::ops::mla::MlaDims,
    ) -> Result<()> {
        let (b_, l_, u_, h_, nope_, rope_, v_) = (
            i(batch),
            i(capacity),
            i(used),
            i(m.heads),
            i(m.nope),
            i(m.rope),
            i(m.v),
        );
        let width = m.nope + m.rope + m.v;
        self.go(
            &format!("dec_mla_expand_{}", dt.suffix()),
            (blocks(batch * used * m.heads * width), 1, 1),
            &mut cuda_args![kc, vc, kv, pe, b_, l_, u_, h_, nope_, rope_, v_],
        )
    }

    /// `dec_attn_{dtype}`: o `[n, ldo]` from q `[n, ldq]` and the cache (see the kernel).
    pub fn attn(
        &self,
        dt: Dtype,
        a: &CachedAttn,
        o: DevPtr,
        q: DevPtr,
        (kc, vc): (DevPtr, DevPtr),
        rows: &Rows,
    ) -> Result<()> {
        if a.kv_heads == 0
            || !a.heads.is_multiple_of(a.kv_heads)
            || a.head_dim > 256
            || a.v_head_dim > 256
        {
            return Err(CudaError::BadLaunch {
                kernel: "dec_attn".into(),
                why: format!(
                    "heads {} / kv_heads {} / head_dim {} / v_head_dim {} (at most 256)",
                    a.heads, a.kv_heads, a.head_dim, a.v_head_dim
                ),
            });
        }
        let (seq, pos) = (rows.seq, rows.pos);
        let (h_, kv_, d_, dv_, ldq, ldo, l_) = (
            i(a.heads),
            i(a.kv_heads),
            i(a.head_dim),
            i(a.v_head_dim),
            i(a.ldq),
            i(a.ldo),
            i(a.capacity),
        );
        let (scale, softcap, window, chunk, alibi, sinks) = (
            a.scale,
            a.softcap,
            i(a.window),
            i(a.chunk),
            a.alibi,
            a.sinks,
        );
        // tau_scale 0: no temperature.
        let (tau_floor, tau_scale) = a
            .temperature
            .map_or((1.0f32, 0.0f32), |t| (t.floor as f32, t.scale as f32));
        // Four warps per (row, head): the kernel's DEC_WARPS.
        self.go_with(
            &format!("dec_attn_{}", dt.suffix()),
            (rows.n as u32, a.heads as u32, 1),
            ATTN_BLOCK,
            &mut cuda_args![
                o, q, kc, vc, seq, pos, h_, kv_, d_, dv_, ldq, ldo, l_, scale, softcap, window,
                chunk, alibi, sinks, tau_floor, tau_scale
            ],
        )
    }

    /// `dec_gather_{dtype}`: out `[b, c]` = rows `idx[..b]` of x `[.., c]`.
    pub fn gather(
        &self,
        dt: Dtype,
        out: DevPtr,
        x: DevPtr,
        idx: DevPtr,
        b: usize,
        c: usize,
    ) -> Result<()> {
        let c_ = i(c);
        self.go(
            &format!("dec_gather_{}", dt.suffix()),
            (b as u32, 1, 1),
            &mut cuda_args![out, x, idx, c_],
        )
    }

    /// `dec_logits_{dtype}`: f32 `out` = softcap(x) over `n` elements (softcap 0: a copy).
    pub fn logits(&self, dt: Dtype, out: DevPtr, x: DevPtr, n: usize, softcap: f32) -> Result<()> {
        self.go(
            &format!("dec_logits_{}", dt.suffix()),
            (blocks(n), 1, 1),
            &mut cuda_args![out, x, n, softcap],
        )
    }

    /// `dec_argmax`: i32 `out[b]` = argmax of the first `vocab` of row b of f32 logits `[b, ld]`.
    pub fn argmax(
        &self,
        out: DevPtr,
        logits: DevPtr,
        b: usize,
        vocab: usize,
        ld: usize,
    ) -> Result<()> {
        let (v_, ld_) = (i(vocab), i(ld));
        self.go(
            "dec_argmax",
            (b as u32, 1, 1),
            &mut cuda_args![out, logits, v_, ld_],
        )
    }
}
