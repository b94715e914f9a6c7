//! Sizes of one MoE layer and where its buffers live inside the caller's `saved` and `scratch`
//! regions (byte offsets, each region 256-byte aligned).

use modelspec_dsl::ir::Moe;

use crate::cuda::{Dtype, DtypeExt, ReduceScratch, reduce};

/// Each expert's block of dispatched rows starts at a multiple of this many rows (the kernels'
/// `MOE_ROW_ALIGN`), so every per-expert GEMM operand is at least 16-byte aligned.
pub(crate) const ROW_ALIGN: usize = 8;
/// Slots per block of the counting sort (the kernels' `MOE_CHUNK`).
pub(crate) const CHUNK: usize = 256;
/// Most experts the routing kernels hold per row (the kernels' `MOE_MAX_EXPERTS`).
pub(crate) const MAX_EXPERTS: usize = 256;
/// Most experts per token (the kernels' `MOE_MAX_TOPK`).
pub(crate) const MAX_TOP_K: usize = 8;
const REGION_ALIGN: usize = 256;

/// Where the gate and up halves of a `[rows, gate | up]` activation live: gate(r, j) at element
/// `r * ld + j`, up(r, j) at `up + r * ld + j`. Interleaved rows (`ld = 2 * hidden`) when the up
/// half stays 16-byte aligned, so that a gate/up pair stored as one `[2 * hidden, d]` matrix runs
/// as one GEMM; two planes (`ld = hidden`) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Halves {
    /// Row stride in elements.
    pub ld: usize,
    /// Element offset of the up half (0 for ungated MLPs: the only half is `up`).
    pub up: usize,
    /// Gate and up interleaved in one row (fusable).
    pub interleaved: bool,
}

impl Halves {
    fn new(gated: bool, hidden: usize, rows: usize, elem: usize) -> Halves {
        if !gated {
            Halves {
                ld: hidden,
                up: 0,
                interleaved: false,
            }
        } else if (hidden * elem).is_multiple_of(16) {
            Halves {
                ld: 2 * hidden,
                up: hidden,
                interleaved: true,
            }
        } else {
            Halves {
                ld: hidden,
                up: rows * hidden,
                interleaved: false,
            }
        }
    }
}

/// The sizes of one MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// Tokens (rows of x).
    pub rows: usize,
    /// d_model.
    pub d: usize,
    /// Routed experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Hidden width of one expert.
    pub hidden: usize,
    /// Gated expert MLPs (gate and up projections).
    pub gated: bool,
    /// Width of a routed expert's projection output: 2 hidden when gated, else hidden.
    pub proj: usize,
    /// Layout of the routed experts' projections.
    pub halves: Halves,
    /// `rows * top_k`.
    pub slots: usize,
    /// Capacity of the dispatched layout: slots plus the worst-case alignment padding.
    pub padded: usize,
    /// Blocks of the counting sort.
    pub chunks: usize,
    /// Shared experts' total hidden width (0: none).
    pub shared_hidden: usize,
    /// Width of the shared experts' projection output.
    pub shared_proj: usize,
    /// Layout of the shared experts' projections.
    pub shared_halves: Halves,
    /// The shared experts have a sigmoid gate.
    pub shared_gate: bool,
    /// Bytes per element of the compute dtype.
    pub elem: usize,
}

impl Dims {
    pub(crate) fn new(moe: &Moe, d: usize, rows: usize, dt: Dtype) -> Dims {
        let elem = dt.bytes();
        let experts = moe.experts as usize;
        let top_k = moe.top_k as usize;
        let hidden = moe.expert.hidden as usize;
        let gated = moe.expert.activation.is_gated();
        let slots = rows * top_k;
        let padded = slots + experts * (ROW_ALIGN - 1);
        let shared_hidden = moe.shared.map_or(0, |s| (s.count * s.hidden) as usize);
        Dims {
            rows,
            d,
            experts,
            top_k,
            hidden,
            gated,
            proj: if gated { 2 * hidden } else { hidden },
            halves: Halves::new(gated, hidden, padded, elem),
            slots,
            padded,
            chunks: slots.div_ceil(CHUNK),
            shared_hidden,
            shared_proj: if gated {
                2 * shared_hidden
            } else {
                shared_hidden
            },
            shared_halves: Halves::new(gated, shared_hidden, rows, elem),
            shared_gate: moe.shared.is_some_and(|s| s.gate),
            elem,
        }
    }

    pub(crate) fn has_shared(&self) -> bool {
        self.shared_hidden > 0
    }
}

/// Hands out 256-byte aligned byte ranges.
#[derive(Debug, Default)]
struct Arena {
    size: usize,
}

impl Arena {
    /// A region of `bytes` (0 when empty: never dereferenced).
    fn take(&mut self, bytes: usize) -> usize {
        if bytes == 0 {
            return usize::MAX;
        }
        let off = self.size;
        self.size += bytes.div_ceil(REGION_ALIGN) * REGION_ALIGN;
        off
    }
}

/// Resolves a byte offset against a base pointer (`usize::MAX`: an absent region, pointer 0).
pub(crate) fn at(base: u64, off: usize) -> u64 {
    if off == usize::MAX {
        0
    } else {
        base + off as u64
    }
}

/// What forward keeps for backward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SavedLayout {
    /// Router logits `[rows, experts]` f32.
    pub logits: usize,
    /// Routing weights `[slots]` f32, top-k order.
    pub weight: usize,
    /// Chosen experts `[slots]` i32.
    pub expert: usize,
    /// Dispatched row of each slot `[slots]` i32.
    pub row: usize,
    /// `start[experts]` then `count[experts]`, i32.
    pub offsets: usize,
    /// Routed experts' projections `[padded, proj]` (see [`Halves`]).
    pub proj: usize,
    /// Routed experts' outputs `[padded, d]`.
    pub expert_out: usize,
    /// Shared experts' projections `[rows, shared_proj]`.
    pub shared_proj: usize,
    /// Shared experts' output `[rows, d]` (with a shared gate).
    pub shared_out: usize,
    /// Shared gate logits `[rows]` f32.
    pub gate_logit: usize,
    /// Total bytes.
    pub bytes: usize,
}

/// Forward-only scratch. Its regions start after the first
/// [`COUNTER_BYTES`](crate::cuda::reduce::COUNTER_BYTES): the backward's column-reduction
/// counters live there in every layer's layout and must keep their zeros across calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FwdLayout {
    /// Full softmax `[rows, experts]` f32 (aux loss only).
    pub probs: usize,
    /// Rank of each slot within its sort block `[slots]` i32.
    pub rank: usize,
    /// Per-block expert histogram `[chunks, experts]` i32.
    pub hist: usize,
    /// Dispatched input `[padded, d]`.
    pub expert_in: usize,
    /// Routed experts' activations `[padded, hidden]`.
    pub act: usize,
    /// Shared experts' activations `[rows, shared_hidden]`.
    pub shared_act: usize,
    /// Shared experts' output `[rows, d]` (without a shared gate, when it is not saved).
    pub shared_out: usize,
    /// Total bytes.
    pub bytes: usize,
}

/// Backward scratch. The column reduction's scratch comes first (offset 0 in every layer's
/// layout), so that the arrival counters at its start lie where no other region of any layer,
/// forward or backward, is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BwdLayout {
    /// Dispatched input `[padded, d]`, gathered again.
    pub expert_in: usize,
    /// Routed experts' activations `[padded, hidden]`, recomputed.
    pub act: usize,
    /// d expert output `[padded, d]`; then, expert by expert, d expert input.
    pub d_expert_out: usize,
    /// d activations `[padded, hidden]`.
    pub d_act: usize,
    /// d projections `[padded, proj]`.
    pub d_proj: usize,
    /// d routing weights `[slots]` f32.
    pub d_weight: usize,
    /// d router logits `[rows, experts]`.
    pub d_logits: usize,
    /// f32 accumulator of dx's dense parts `[rows, d]`.
    pub dx_f32: usize,
    /// Shared experts' activations `[rows, shared_hidden]`, recomputed.
    pub shared_act: usize,
    /// d shared activations `[rows, shared_hidden]`.
    pub d_shared_act: usize,
    /// d shared projections `[rows, shared_proj]`.
    pub d_shared_proj: usize,
    /// d shared output `[rows, d]` (with a shared gate).
    pub d_shared_out: usize,
    /// d shared gate logits `[rows]`.
    pub d_gate_logit: usize,
    /// The run's per-expert counts `[experts]` f32 (aux loss only).
    pub aux_counts: usize,
    /// The bias gradients' column-reduction scratch, counters and partial sums
    /// ([`ReduceScratch::bytes_for`] the widest of d, hidden, the shared hidden and the experts;
    /// `reduce_bytes` of them), always at offset 0.
    pub reduce: usize,
    /// Bytes at `reduce`.
    pub reduce_bytes: usize,
    /// Total bytes.
    pub bytes: usize,
}

impl SavedLayout {
    pub(crate) fn new(d: &Dims) -> SavedLayout {
        let mut a = Arena::default();
        let e = d.elem;
        let shared = d.has_shared();
        let mut s = SavedLayout {
            logits: a.take(d.rows * d.experts * 4),
            weight: a.take(d.slots * 4),
            expert: a.take(d.slots * 4),
            row: a.take(d.slots * 4),
            offsets: a.take(2 * d.experts * 4),
            proj: a.take(d.padded * d.proj * e),
            expert_out: a.take(d.padded * d.d * e),
            shared_proj: a.take(if shared {
                d.rows * d.shared_proj * e
            } else {
                0
            }),
            shared_out: a.take(if d.shared_gate { d.rows * d.d * e } else { 0 }),
            gate_logit: a.take(if d.shared_gate { d.rows * 4 } else { 0 }),
            bytes: 0,
        };
        s.bytes = a.size;
        s
    }
}

impl FwdLayout {
    pub(crate) fn new(d: &Dims, aux: bool) -> FwdLayout {
        let mut a = Arena::default();
        let e = d.elem;
        let shared = d.has_shared();
        // The reductions' counters (see BwdLayout::reduce): never written by the forward.
        a.take(reduce::COUNTER_BYTES);
        let mut s = FwdLayout {
            probs: a.take(if aux { d.rows * d.experts * 4 } else { 0 }),
            rank: a.take(d.slots * 4),
            hist: a.take(d.chunks * d.experts * 4),
            expert_in: a.take(d.padded * d.d * e),
            act: a.take(d.padded * d.hidden * e),
            shared_act: a.take(if shared {
                d.rows * d.shared_hidden * e
            } else {
                0
            }),
            shared_out: a.take(if shared && !d.shared_gate {
                d.rows * d.d * e
            } else {
                0
            }),
            bytes: 0,
        };
        s.bytes = a.size;
        s
    }
}

impl BwdLayout {
    pub(crate) fn new(d: &Dims, aux: bool) -> BwdLayout {
        let mut a = Arena::default();
        let e = d.elem;
        let shared = d.has_shared();
        let sh = |n: usize| if shared { n } else { 0 };
        let gate = |n: usize| if d.shared_gate { n } else { 0 };
        let widest = d.d.max(d.hidden).max(d.shared_hidden).max(d.experts);
        let reduce_bytes = ReduceScratch::bytes_for(widest);
        let reduce = a.take(reduce_bytes);
        let mut s = BwdLayout {
            expert_in: a.take(d.padded * d.d * e),
            act: a.take(d.padded * d.hidden * e),
            d_expert_out: a.take(d.padded * d.d * e),
            d_act: a.take(d.padded * d.hidden * e),
            d_proj: a.take(d.padded * d.proj * e),
            d_weight: a.take(d.slots * 4),
            d_logits: a.take(d.rows * d.experts * e),
            dx_f32: a.take(d.rows * d.d * 4),
            shared_act: a.take(sh(d.rows * d.shared_hidden * e)),
            d_shared_act: a.take(sh(d.rows * d.shared_hidden * e)),
            d_shared_proj: a.take(sh(d.rows * d.shared_proj * e)),
            d_shared_out: a.take(gate(d.rows * d.d * e)),
            d_gate_logit: a.take(gate(d.rows * e)),
            aux_counts: a.take(if aux { d.experts * 4 } else { 0 }),
            reduce,
            reduce_bytes,
            bytes: 0,
        };
        s.bytes = a.size;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelspec_dsl::ir::{Mlp, MlpKind, RouterOrder, SharedExperts};

    fn moe(hidden: u64, kind: MlpKind, shared: Option<SharedExperts>) -> Moe {
        Moe {
            experts: 8,
            top_k: 2,
            expert: Mlp {
                activation: kind,
                hidden,
                bias: false,
            },
            router: RouterOrder::SoftmaxTopk,
            renormalize: true,
            shared,
            aux_loss: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn gate_and_up_interleave_only_when_the_up_half_stays_aligned() {
        let d = Dims::new(&moe(64, MlpKind::Swiglu, None), 32, 10, Dtype::Bf16);
        assert_eq!(d.halves.ld, 128);
        assert_eq!(d.halves.up, 64);
        assert!(d.halves.interleaved);
        // 36 bf16 = 72 bytes: the up half would be 8-byte aligned, so two planes.
        let d = Dims::new(&moe(36, MlpKind::Swiglu, None), 32, 10, Dtype::Bf16);
        assert_eq!(d.halves.ld, 36);
        assert_eq!(d.halves.up, d.padded * 36);
        assert!(!d.halves.interleaved);
        let d = Dims::new(&moe(36, MlpKind::Gelu, None), 32, 10, Dtype::F32);
        assert_eq!((d.proj, d.halves.up), (36, 0));
    }

    #[test]
    fn regions_are_aligned_and_disjoint() {
        let shared = SharedExperts {
            count: 2,
            hidden: 24,
            gate: true,
        };
        let d = Dims::new(&moe(40, MlpKind::Swiglu, Some(shared)), 24, 13, Dtype::F32);
        assert_eq!(d.slots, 26);
        assert_eq!(d.padded, 26 + 8 * 7);
        let s = SavedLayout::new(&d);
        let mut offs = [
            s.logits,
            s.weight,
            s.expert,
            s.row,
            s.offsets,
            s.proj,
            s.expert_out,
            s.shared_proj,
            s.shared_out,
            s.gate_logit,
        ];
        assert!(offs.iter().all(|o| o % 256 == 0 && *o < s.bytes));
        offs.sort_unstable();
        assert!(offs.windows(2).all(|w| w[0] < w[1]));
        let f = FwdLayout::new(&d, false);
        assert_eq!(f.probs, usize::MAX);
        assert_eq!(f.shared_out, usize::MAX);
        assert_eq!(at(1024, f.probs), 0);
        let b = BwdLayout::new(&d, true);
        assert!(b.d_gate_logit < b.bytes && b.aux_counts < b.bytes);
        assert!(b.reduce + b.reduce_bytes <= b.bytes);
        // The reductions' counters sit at offset 0, below every other region of either layout.
        assert_eq!(b.reduce, 0);
        let fwd_offs = [f.rank, f.hist, f.expert_in, f.act, f.shared_act];
        assert!(fwd_offs.iter().all(|&o| o >= reduce::COUNTER_BYTES));
        let bwd_offs = [
            b.expert_in,
            b.act,
            b.d_expert_out,
            b.d_act,
            b.d_logits,
            b.dx_f32,
        ];
        assert!(bwd_offs.iter().all(|&o| o >= b.reduce_bytes));
        assert_eq!(b.reduce_bytes, ReduceScratch::bytes_for(d.d.max(d.hidden)));
        assert_eq!(BwdLayout::new(&d, false).aux_counts, usize::MAX);
    }
}
