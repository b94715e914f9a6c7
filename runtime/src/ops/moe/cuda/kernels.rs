//! The MoE kernel module (`../moe.cu` with `common.cuh`, the MLP activation kernels,
//! `ops/activation/activation.cu`, which the experts use, and the column reductions,
//! `kernels/reduce.cu`, which the bias gradients use) and one launch wrapper per kernel.

use std::sync::Arc;

use super::layout::{CHUNK, MAX_EXPERTS};
use crate::cuda::compile::KernelSource;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt, Gpu};
use crate::cuda::launch::{BLOCK, Launcher, grid, int as i, module_source};
use crate::cuda::reduce::{self, ReduceScratch};
use crate::cuda_args;

const COMMON: &str = crate::cuda::compile::COMMON;
const ACTIVATION: &str = crate::ops::activation::cuda::SOURCE;
const REDUCE: &str = crate::cuda::reduce::SOURCE;
const MOE: &str = include_str!("../moe.cu");

/// Every entry point of the MoE module that [`super::MoeLayer`] launches (the `{dtype}` ones in
/// both f32 and bf16).
pub const KERNEL_NAMES: &[&str] = &[
    "moe_route_f32",
    "moe_route_bf16",
    "moe_rank",
    "moe_offsets",
    "moe_place",
    "moe_aux_stats",
    "moe_aux_loss",
    "moe_gather_f32",
    "moe_gather_bf16",
    "moe_dweight_in_f32",
    "moe_dweight_in_bf16",
    "moe_add_bias_f32",
    "moe_add_bias_bf16",
    "moe_rowdot_f32",
    "moe_rowdot_bf16",
    "moe_combine_f32",
    "moe_combine_bf16",
    "moe_combine_bwd_f32",
    "moe_combine_bwd_bf16",
    "moe_route_bwd_f32",
    "moe_route_bwd_bf16",
    "moe_dx_f32",
    "moe_dx_bf16",
    "colred_sum_f32",
    "colred_sum_bf16",
    "act_fwd_f32",
    "act_fwd_bf16",
    "act_bwd_f32",
    "act_bwd_bf16",
    "act_clamped_fwd_f32",
    "act_clamped_fwd_bf16",
    "act_clamped_bwd_f32",
    "act_clamped_bwd_bf16",
];

/// The CUDA C of the MoE module: `common.cuh`, `activation.cu` (the MLP activations) and `moe.cu`.
pub fn kernel_source() -> KernelSource {
    module_source("moe", &[COMMON, ACTIVATION, REDUCE, MOE])
}

/// The router's configuration as the routing kernels take it (see `moe_route` in `moe.cu`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteCfg {
    /// 0 softmax then top-k, 1 top-k then softmax, 2 sigmoid scores.
    pub order: i32,
    /// Renormalise the top-k weights (1) or not (0).
    pub renorm: i32,
    /// The routed scaling factor.
    pub scale: f32,
    /// Expert groups (0 or 1: routing is not group-limited).
    pub groups: i32,
    /// Groups a token may route into.
    pub top_groups: i32,
    /// The router bias `[experts]` in the compute dtype (0: none).
    pub router_bias: DevPtr,
    /// The sigmoid router's correction bias `[experts]` in the compute dtype (0: none).
    pub correction: DevPtr,
}

/// Rows per block of the warp-per-row routing kernels.
const WARPS: u32 = 4;

/// The loaded MoE module on one GPU, with typed launches.
pub(crate) struct MoeKernels {
    launcher: Launcher,
}

impl MoeKernels {
    pub(crate) fn load(gpu: &Arc<Gpu>) -> Result<MoeKernels> {
        Ok(MoeKernels {
            launcher: Launcher::load(gpu, &kernel_source())?,
        })
    }

    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        self.launcher.gpu()
    }

    /// The loaded module, for the launches it shares with the kernel library (the MLP
    /// activations: [`crate::cuda::ops::act_fwd`]).
    pub(crate) fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    fn go(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        // SAFETY: every wrapper below binds locals that match the kernel's C signature; the
        // buffers come from `MoeLayer`'s layouts, sized for the shapes passed.
        unsafe { self.launcher.launch(name, grid, (block, 1, 1), 0, args) }
    }

    /// `moe_route_{dtype}`: expert/weight `[n * k]`, probs `[n, e]` (0: not written); the router
    /// bias (0: none) is added to `logits` in place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route(
        &self,
        dt: Dtype,
        cfg: &RouteCfg,
        logits: DevPtr,
        n: usize,
        e: usize,
        k: usize,
        expert: DevPtr,
        weight: DevPtr,
        probs: DevPtr,
    ) -> Result<()> {
        let (n_, e_, k_) = (i(n), i(e), i(k));
        let RouteCfg {
            order,
            renorm,
            scale,
            groups,
            top_groups,
            router_bias,
            correction,
        } = *cfg;
        self.go(
            &format!("moe_route_{}", dt.suffix()),
            grid(n, WARPS),
            32 * WARPS,
            &mut cuda_args![
                logits,
                router_bias,
                correction,
                n_,
                e_,
                k_,
                order,
                renorm,
                scale,
                groups,
                top_groups,
                expert,
                weight,
                probs
            ],
        )
    }

    /// The counting sort of the slots by expert: rank, offsets (start, count) and row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn permute(
        &self,
        expert: DevPtr,
        slots: usize,
        e: usize,
        rank: DevPtr,
        hist: DevPtr,
        offsets: DevPtr,
        row: DevPtr,
    ) -> Result<()> {
        let (s_, e_) = (i(slots), i(e));
        let chunks = slots.div_ceil(CHUNK);
        let c_ = i(chunks);
        self.go(
            "moe_rank",
            grid(slots, CHUNK as u32),
            CHUNK as u32,
            &mut cuda_args![expert, s_, e_, rank, hist],
        )?;
        self.go(
            "moe_offsets",
            (1, 1, 1),
            MAX_EXPERTS as u32,
            &mut cuda_args![hist, c_, e_, offsets],
        )?;
        self.go(
            "moe_place",
            grid(slots, BLOCK),
            BLOCK,
            &mut cuda_args![expert, rank, hist, s_, e_, row],
        )
    }

    /// `moe_aux_stats`: this layer's counts and probability sums into its slot `[2e]`.
    pub(crate) fn aux_stats(
        &self,
        probs: DevPtr,
        offsets: DevPtr,
        n: usize,
        e: usize,
        slot: DevPtr,
    ) -> Result<()> {
        let (n_, e_) = (i(n), i(e));
        self.go(
            "moe_aux_stats",
            (e as u32, 1, 1),
            BLOCK,
            &mut cuda_args![probs, offsets, n_, e_, slot],
        )
    }

    /// `moe_aux_loss` over `layers` slots: adds `scale · Σ_e C_e P_e` to `loss` (when given) and
    /// writes the total counts `C` (when `counts` is given).
    pub(crate) fn aux_loss(
        &self,
        stats: DevPtr,
        layers: usize,
        e: usize,
        scale: f32,
        loss: DevPtr,
        counts: DevPtr,
    ) -> Result<()> {
        let (l_, e_) = (i(layers), i(e));
        self.go(
            "moe_aux_loss",
            (1, 1, 1),
            BLOCK,
            &mut cuda_args![stats, l_, e_, scale, loss, counts],
        )
    }

    /// `moe_gather_{dtype}`: expert_in rows from x, scaled by the routing weights when `weight`
    /// is given (0: plain copies).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gather(
        &self,
        dt: Dtype,
        expert_in: DevPtr,
        x: DevPtr,
        row: DevPtr,
        weight: DevPtr,
        slots: usize,
        k: usize,
        d: usize,
    ) -> Result<()> {
        let (k_, d_) = (i(k), i(d));
        self.go(
            &format!("moe_gather_{}", dt.suffix()),
            (slots as u32, 1, 1),
            128,
            &mut cuda_args![expert_in, x, row, weight, k_, d_],
        )
    }

    /// `moe_dweight_in_{dtype}`: d weight `[slots]` (written) of input-side weights, from the d
    /// expert inputs and x.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dweight_in(
        &self,
        dt: Dtype,
        d_weight: DevPtr,
        d_expert_in: DevPtr,
        x: DevPtr,
        row: DevPtr,
        slots: usize,
        k: usize,
        d: usize,
    ) -> Result<()> {
        let (k_, d_) = (i(k), i(d));
        self.go(
            &format!("moe_dweight_in_{}", dt.suffix()),
            (slots as u32, 1, 1),
            128,
            &mut cuda_args![d_weight, d_expert_in, x, row, k_, d_],
        )
    }

    /// `moe_add_bias_{dtype}`: `c[r, j] += bias[j]` over `rows` rows of stride `ldc`.
    pub(crate) fn add_bias(
        &self,
        dt: Dtype,
        c: DevPtr,
        bias: DevPtr,
        rows: usize,
        n: usize,
        ldc: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let (n_, ld_) = (i(n), i(ldc));
        self.go(
            &format!("moe_add_bias_{}", dt.suffix()),
            (rows as u32, 1, 1),
            BLOCK,
            &mut cuda_args![c, bias, n_, ld_],
        )
    }

    /// `moe_rowdot_{dtype}`: out[n] = x[n] . w (f32).
    pub(crate) fn rowdot(
        &self,
        dt: Dtype,
        out: DevPtr,
        x: DevPtr,
        w: DevPtr,
        n: usize,
        d: usize,
    ) -> Result<()> {
        let d_ = i(d);
        self.go(
            &format!("moe_rowdot_{}", dt.suffix()),
            (n as u32, 1, 1),
            BLOCK,
            &mut cuda_args![out, x, w, d_],
        )
    }

    /// `moe_combine_{dtype}`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn combine(
        &self,
        dt: Dtype,
        out: DevPtr,
        expert_out: DevPtr,
        weight: DevPtr,
        row: DevPtr,
        n: usize,
        k: usize,
        d: usize,
        shared_out: DevPtr,
        gate_logit: DevPtr,
    ) -> Result<()> {
        let (k_, d_) = (i(k), i(d));
        self.go(
            &format!("moe_combine_{}", dt.suffix()),
            (n as u32, 1, 1),
            BLOCK,
            &mut cuda_args![out, expert_out, weight, row, k_, d_, shared_out, gate_logit],
        )
    }

    /// `moe_combine_bwd_{dtype}`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn combine_bwd(
        &self,
        dt: Dtype,
        d_weight: DevPtr,
        d_expert_out: DevPtr,
        dout: DevPtr,
        expert_out: DevPtr,
        weight: DevPtr,
        row: DevPtr,
        n: usize,
        k: usize,
        d: usize,
        shared: [DevPtr; 4],
    ) -> Result<()> {
        let (k_, d_) = (i(k), i(d));
        let [d_shared_out, d_gate_logit, shared_out, gate_logit] = shared;
        self.go(
            &format!("moe_combine_bwd_{}", dt.suffix()),
            (n as u32, 1, 1),
            BLOCK,
            &mut cuda_args![
                d_weight,
                d_expert_out,
                dout,
                expert_out,
                weight,
                row,
                k_,
                d_,
                d_shared_out,
                d_gate_logit,
                shared_out,
                gate_logit
            ],
        )
    }

    /// `moe_route_bwd_{dtype}`: d logits `[n, e]` (stats 0: no aux loss).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route_bwd(
        &self,
        dt: Dtype,
        cfg: &RouteCfg,
        d_logits: DevPtr,
        logits: DevPtr,
        expert: DevPtr,
        d_weight: DevPtr,
        stats: DevPtr,
        aux_scale: f32,
        n: usize,
        e: usize,
        k: usize,
    ) -> Result<()> {
        let (n_, e_, k_) = (i(n), i(e), i(k));
        let (order, renorm, scale) = (cfg.order, cfg.renorm, cfg.scale);
        self.go(
            &format!("moe_route_bwd_{}", dt.suffix()),
            grid(n, WARPS),
            32 * WARPS,
            &mut cuda_args![
                d_logits, logits, expert, d_weight, stats, aux_scale, scale, n_, e_, k_, order,
                renorm
            ],
        )
    }

    /// `moe_dx_{dtype}` (`weight`: the routing weights when they scaled the inputs, else 0).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dx(
        &self,
        dt: Dtype,
        dx: DevPtr,
        dx_f32: DevPtr,
        d_expert_in: DevPtr,
        row: DevPtr,
        weight: DevPtr,
        n: usize,
        k: usize,
        d: usize,
        d_gate_logit: DevPtr,
        gate_weight: DevPtr,
    ) -> Result<()> {
        let (k_, d_) = (i(k), i(d));
        self.go(
            &format!("moe_dx_{}", dt.suffix()),
            (n as u32, 1, 1),
            BLOCK,
            &mut cuda_args![
                dx,
                dx_f32,
                d_expert_in,
                row,
                weight,
                k_,
                d_,
                d_gate_logit,
                gate_weight
            ],
        )
    }

    /// `out[c] += Σ_r x[r * ld + c]` (f32; skipped when `out` is 0 or there are no rows): the
    /// library's deterministic column reduction ([`crate::cuda::reduce`], one launch), linked
    /// into this module, counters and partial sums in `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn colsum(
        &self,
        dt: Dtype,
        out: DevPtr,
        x: DevPtr,
        rows: usize,
        c: usize,
        ld: usize,
        scratch: ReduceScratch,
    ) -> Result<()> {
        reduce::colsum(&self.launcher, dt, out, x, rows, c, ld, scratch)
    }
}
