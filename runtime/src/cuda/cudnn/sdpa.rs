//! The fused flash-attention graphs, as the node sequences cuDNN's runtime fusion engine
//! recognises (the composite form cuDNN 9.0–9.20 expects; later versions still accept it).
//!
//! Forward, per (batch, head):
//! ```text
//! S = Q·Kᵀ · scale → mask (causal: row ≥ col; window: col + W > row) → softmax
//!     softmax: M = max S, E = exp(S − M), Z = Σ E, Stats = M + log Z, P = E / Z (bf16)
//! O = P·V
//! ```
//! Backward:
//! ```text
//! Δ = Σ_d dO∘O                           (f32 [B,H,T,1], the caller's `delta`)
//! P = exp(mask(Q·Kᵀ·scale − Stats))
//! dV = Pᵀ·dO                             (summed over the heads of a kv group for GQA)
//! dS = P ∘ (dO·Vᵀ − Δ) · scale
//! dK = dSᵀ·Q                             (summed over the group)
//! dQ = dS·K                              (through the caller's f32 accumulator `dq_acc`)
//! ```
//! Layouts: Q `[B,H,T,D]` with strides `(T·ldq, D, ldq, 1)`, i.e. rows of a `[B·T, ldq]` matrix
//! with head h at column h·D; K likewise with its kv heads and ldk; V `[B,KV,T,Dv]` with head g at
//! column g·Dv of ldv; O, dO `[B,H,T,Dv]` with ldo; dQ/dK/dV like Q/K/V. With `AttnShape::head_major`
//! (PyTorch's layout) every one of them is instead a contiguous `[B, heads, T, width]` tensor:
//! Q's strides `(H·T·D, T·D, D, 1)`. D is the query/key head
//! dim, Dv the value head dim (`AttnShape::v_head_dim`: D except in latent attention, e.g.
//! DeepSeek-V3's 192/128): only V, O, dO, dV, the P·V and Pᵀ·dO products and Δ's reduction take
//! Dv. Stats: f32 `[B,H,T]` (natural log of the softmax normaliser of the scaled scores, the own
//! kernels' `lse`).

use super::backend::{Bind, BuiltPlan, Configs, Elem, GraphBuilder, T};
use super::error::Result;
use crate::cuda::AttnShape;
use cudarc::cudnn::sys::{cudnnHandle_t, cudnnPointwiseMode_t as Pw, cudnnReduceTensorOp_t};

/// Variant-pack UIDs of the graphs' bound tensors.
pub(crate) mod uid {
    pub const Q: i64 = 1;
    pub const K: i64 = 2;
    pub const V: i64 = 3;
    pub const O: i64 = 4;
    pub const STATS: i64 = 5;
    pub const SCALE: i64 = 6;
    pub const NEG_INF: i64 = 7;
    pub const WINDOW: i64 = 8;
    pub const DO: i64 = 9;
    pub const DQ: i64 = 10;
    pub const DK: i64 = 11;
    pub const DV: i64 = 12;
    pub const ONE: i64 = 13;
    pub const DELTA: i64 = 14;
    pub const DQ_ACCUM: i64 = 15;
}

/// Sizes of one graph as i64 (cuDNN's dims type).
struct Dims {
    b: i64,
    h: i64,
    kv: i64,
    t: i64,
    /// Query/key head dim.
    d: i64,
    /// Value (and output) head dim.
    dv: i64,
    /// Every bound tensor `[B, heads, T, width]` contiguous (`AttnShape::head_major`).
    head_major: bool,
}

impl Dims {
    fn of(s: &AttnShape) -> Dims {
        Dims {
            b: s.batch as i64,
            h: s.heads as i64,
            kv: s.kv_heads as i64,
            t: s.seq as i64,
            d: s.head_dim as i64,
            dv: s.v_head_dim as i64,
            head_major: s.head_major,
        }
    }
    /// `[B, heads, T, width]` rows of a `[B·T, ld]` matrix, head h at column h·width; head-major:
    /// each head's T rows contiguous (`ld` is then `heads · width`).
    fn rows(&self, heads: i64, width: i64, ld: usize) -> ([i64; 4], [i64; 4]) {
        let [b, h, r] = self.strides(heads, width, ld);
        ([self.b, heads, self.t, width], [b, h, r, 1])
    }
    /// The same buffer seen as `[B, heads, width, T]` (transposed).
    fn rows_t(&self, heads: i64, width: i64, ld: usize) -> ([i64; 4], [i64; 4]) {
        let [b, h, r] = self.strides(heads, width, ld);
        ([self.b, heads, width, self.t], [b, h, 1, r])
    }
    /// Batch, head and row strides of a bound `[B, heads, T, width]` tensor.
    fn strides(&self, heads: i64, width: i64, ld: usize) -> [i64; 3] {
        let ld = ld as i64;
        if self.head_major {
            [heads * self.t * width, self.t * width, width]
        } else {
            [self.t * ld, width, ld]
        }
    }
    /// A packed virtual `[B, H, T, width]` (per query head).
    fn packed(&self, width: i64) -> ([i64; 4], [i64; 4]) {
        (
            [self.b, self.h, self.t, width],
            [self.h * self.t * width, self.t * width, width, 1],
        )
    }
    fn scores(&self) -> [i64; 4] {
        [self.b, self.h, self.t, self.t]
    }
    fn scores_strides(&self) -> [i64; 4] {
        [self.h * self.t * self.t, self.t * self.t, self.t, 1]
    }
    /// Scores transposed in their last two dims (Sᵀ of the same virtual buffer).
    fn scores_t_strides(&self) -> [i64; 4] {
        [self.h * self.t * self.t, self.t * self.t, 1, self.t]
    }
    fn stats(&self) -> ([i64; 4], [i64; 4]) {
        ([self.b, self.h, self.t, 1], [self.h * self.t, self.t, 1, 1])
    }
}

/// Applies the causal and window masks to `s` (virtual f32 scores); returns the masked scores.
fn mask(g: &mut GraphBuilder, shape: &AttnShape, dm: &Dims, s: T) -> Result<T> {
    let strides = dm.scores_strides();
    let mut cur = s;
    if !shape.causal && shape.window == 0 {
        return Ok(cur);
    }
    let neg_inf = g.scalar(uid::NEG_INF, Elem::F32)?;
    if shape.causal {
        // keep key j for query i when i ≥ j
        cur = masked(g, cur, strides, neg_inf, |g, row, col| {
            flag(g, Pw::CUDNN_POINTWISE_CMP_GE, row, col, strides)
        })?;
    }
    if shape.window > 0 {
        // keep key j for query i when j + window > i (i − j < window)
        let window = g.scalar(uid::WINDOW, Elem::F32)?;
        cur = masked(g, cur, strides, neg_inf, |g, row, col| {
            let col_w = g.virtual_like(col, Elem::F32, strides)?;
            g.pointwise(
                Pw::CUDNN_POINTWISE_ADD,
                Elem::F32,
                col,
                Some(window),
                None,
                col_w,
                Some(3),
            )?;
            flag(g, Pw::CUDNN_POINTWISE_CMP_GT, col_w, row, strides)
        })?;
    }
    Ok(cur)
}

/// One mask over `cur`: its row and column indices (generated afresh for each mask, as cuDNN's
/// pattern matcher expects), the keep flags `keep(row, col)` builds from them, and the result:
/// `cur` where kept, `neg_inf` elsewhere.
fn masked(
    g: &mut GraphBuilder,
    cur: T,
    strides: [i64; 4],
    neg_inf: T,
    keep: impl FnOnce(&mut GraphBuilder, T, T) -> Result<T>,
) -> Result<T> {
    let mut index = |axis| -> Result<T> {
        let t = g.virtual_like(cur, Elem::I32, strides)?;
        g.pointwise(
            Pw::CUDNN_POINTWISE_GEN_INDEX,
            Elem::F32,
            cur,
            None,
            None,
            t,
            Some(axis),
        )?;
        Ok(t)
    };
    let row = index(2)?;
    let col = index(3)?;
    let keep = keep(g, row, col)?;
    let out = g.virtual_like(cur, Elem::F32, strides)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_BINARY_SELECT,
        Elem::F32,
        cur,
        Some(neg_inf),
        Some(keep),
        out,
        None,
    )?;
    Ok(out)
}

/// The boolean `a op b` (a comparison) as a virtual tensor of the scores' shape.
fn flag(g: &mut GraphBuilder, op: Pw, a: T, b: T, strides: [i64; 4]) -> Result<T> {
    let out = g.virtual_like(a, Elem::Bool, strides)?;
    g.pointwise(op, Elem::Bool, a, Some(b), None, out, None)?;
    Ok(out)
}

/// Builds and finalizes the forward plans for `s` that `want` names (bf16 Q/K/V/O, f32 stats);
/// `wide`: among the heuristics' configs and their knob neighbours ([`super::knobs`]).
pub(crate) fn build_forward(
    handle: cudnnHandle_t,
    s: &AttnShape,
    want: Configs,
    wide: bool,
) -> Result<Vec<BuiltPlan>> {
    forward_ops(s)?.finalize_plans(handle, "sdpa forward", describe(s), want, wide)
}

/// The forward's tensors and operations, each finalized (no handle or GPU needed yet).
pub(crate) fn forward_ops(s: &AttnShape) -> Result<GraphBuilder> {
    let dm = Dims::of(s);
    let mut g = GraphBuilder::new();
    let (qd, qs) = dm.rows(dm.h, dm.d, s.ldq);
    let q = g.tensor(Bind::Device(uid::Q), Elem::Bf16, qd, qs)?;
    let (kd, ks) = dm.rows_t(dm.kv, dm.d, s.ldk);
    let kt = g.tensor(Bind::Device(uid::K), Elem::Bf16, kd, ks)?;
    let (vd, vs) = dm.rows(dm.kv, dm.dv, s.ldv);
    let v = g.tensor(Bind::Device(uid::V), Elem::Bf16, vd, vs)?;
    let (od, os) = dm.rows(dm.h, dm.dv, s.ldo);
    let o = g.tensor(Bind::Device(uid::O), Elem::Bf16, od, os)?;
    let (sd, ss) = dm.stats();
    let stats = g.tensor(Bind::Device(uid::STATS), Elem::F32, sd, ss)?;
    let scale = g.scalar(uid::SCALE, Elem::F32)?;

    let st = dm.scores_strides();
    let s0 = g.tensor(Bind::Virtual, Elem::F32, dm.scores(), st)?;
    g.matmul(q, kt, s0)?;
    let s1 = g.virtual_like(s0, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_MUL,
        Elem::F32,
        s0,
        Some(scale),
        None,
        s1,
        None,
    )?;
    let s2 = mask(&mut g, s, &dm, s1)?;

    // softmax with stats
    let max = g.tensor(Bind::Virtual, Elem::F32, sd, ss)?;
    g.reduction(cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_MAX, s2, max)?;
    let sub = g.virtual_like(s2, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_SUB,
        Elem::F32,
        s2,
        Some(max),
        None,
        sub,
        None,
    )?;
    let e = g.virtual_like(s2, Elem::F32, st)?;
    g.pointwise(Pw::CUDNN_POINTWISE_EXP, Elem::F32, sub, None, None, e, None)?;
    let z = g.tensor(Bind::Virtual, Elem::F32, sd, ss)?;
    g.reduction(cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD, e, z)?;
    let logz = g.tensor(Bind::Virtual, Elem::F32, sd, ss)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_LOG,
        Elem::F32,
        z,
        None,
        None,
        logz,
        None,
    )?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_ADD,
        Elem::F32,
        max,
        Some(logz),
        None,
        stats,
        None,
    )?;
    // P goes into the second matmul in the I/O type.
    let p = g.virtual_like(s2, Elem::Bf16, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_DIV,
        Elem::F32,
        e,
        Some(z),
        None,
        p,
        None,
    )?;
    g.matmul(p, v, o)?;
    Ok(g)
}

/// Builds and finalizes the backward plans for `s` that `want` names (`wide` as for the
/// forward). Besides the plan's own workspace it binds Δ (f32 `[B,H,T]`, uid DELTA) and the dQ
/// accumulator (f32 `[B,H,T,D]` with D the query/key head dim, uid DQ_ACCUM).
pub(crate) fn build_backward(
    handle: cudnnHandle_t,
    s: &AttnShape,
    want: Configs,
    wide: bool,
) -> Result<Vec<BuiltPlan>> {
    backward_ops(s)?.finalize_plans(handle, "sdpa backward", describe(s), want, wide)
}

/// The backward's tensors and operations, each finalized (no handle or GPU needed yet).
pub(crate) fn backward_ops(s: &AttnShape) -> Result<GraphBuilder> {
    let dm = Dims::of(s);
    let mut g = GraphBuilder::new();
    let (qd, qs) = dm.rows(dm.h, dm.d, s.ldq);
    let q = g.tensor(Bind::Device(uid::Q), Elem::Bf16, qd, qs)?;
    let (kd, ks) = dm.rows_t(dm.kv, dm.d, s.ldk);
    let kt = g.tensor(Bind::Device(uid::K), Elem::Bf16, kd, ks)?;
    let (vd, vs) = dm.rows_t(dm.kv, dm.dv, s.ldv);
    let vt = g.tensor(Bind::Device(uid::V), Elem::Bf16, vd, vs)?;
    let (od, os) = dm.rows(dm.h, dm.dv, s.ldo);
    let o = g.tensor(Bind::Device(uid::O), Elem::Bf16, od, os)?;
    let d_o = g.tensor(Bind::Device(uid::DO), Elem::Bf16, od, os)?;
    let (sd, ss) = dm.stats();
    let stats = g.tensor(Bind::Device(uid::STATS), Elem::F32, sd, ss)?;
    let dq = g.tensor(Bind::Device(uid::DQ), Elem::Bf16, qd, qs)?;
    let (dkd, dks) = dm.rows(dm.kv, dm.d, s.ldk);
    let dk = g.tensor(Bind::Device(uid::DK), Elem::Bf16, dkd, dks)?;
    let (dvd, dvs) = dm.rows(dm.kv, dm.dv, s.ldv);
    let dv = g.tensor(Bind::Device(uid::DV), Elem::Bf16, dvd, dvs)?;
    let scale = g.scalar(uid::SCALE, Elem::F32)?;
    let one = g.scalar(uid::ONE, Elem::F32)?;

    // Δ = rowsum(dO ∘ O) · 1 (over the value head dim)
    let prod = g.tensor(
        Bind::Virtual,
        Elem::F32,
        [dm.b, dm.h, dm.t, dm.dv],
        [dm.h * dm.t * dm.dv, dm.t * dm.dv, dm.h * dm.dv, 1],
    )?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_MUL,
        Elem::F32,
        d_o,
        Some(o),
        None,
        prod,
        None,
    )?;
    let rowsum = g.tensor(Bind::Virtual, Elem::F32, sd, ss)?;
    g.reduction(cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD, prod, rowsum)?;
    let delta = g.tensor(Bind::Device(uid::DELTA), Elem::F32, sd, ss)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_MUL,
        Elem::F32,
        rowsum,
        Some(one),
        None,
        delta,
        None,
    )?;

    // P = exp(mask(Q·Kᵀ·scale − Stats))
    let st = dm.scores_strides();
    let s0 = g.tensor(Bind::Virtual, Elem::F32, dm.scores(), st)?;
    g.matmul(q, kt, s0)?;
    let s1 = g.virtual_like(s0, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_MUL,
        Elem::F32,
        s0,
        Some(scale),
        None,
        s1,
        None,
    )?;
    let s2 = g.virtual_like(s0, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_SUB,
        Elem::F32,
        s1,
        Some(stats),
        None,
        s2,
        None,
    )?;
    let s3 = mask(&mut g, s, &dm, s2)?;
    let p = g.virtual_like(s0, Elem::F32, st)?;
    g.pointwise(Pw::CUDNN_POINTWISE_EXP, Elem::F32, s3, None, None, p, None)?;

    // dV = Pᵀ·dO (per query head, then summed over the kv group)
    let pt = g.tensor(
        Bind::Virtual,
        Elem::Bf16,
        dm.scores(),
        dm.scores_t_strides(),
    )?;
    g.reshape(p, pt)?;
    group_matmul(&mut g, &dm, dm.dv, pt, d_o, dv)?;

    // dS = P ∘ (dO·Vᵀ − Δ) · scale
    let dp = g.tensor(Bind::Virtual, Elem::F32, dm.scores(), st)?;
    g.matmul(d_o, vt, dp)?;
    let dp1 = g.virtual_like(dp, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_SUB,
        Elem::F32,
        dp,
        Some(delta),
        None,
        dp1,
        None,
    )?;
    let ds0 = g.virtual_like(dp, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_MUL,
        Elem::F32,
        dp1,
        Some(p),
        None,
        ds0,
        None,
    )?;
    let ds = g.virtual_like(dp, Elem::F32, st)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_MUL,
        Elem::F32,
        ds0,
        Some(scale),
        None,
        ds,
        None,
    )?;

    // dK = dSᵀ·Q
    let dst = g.tensor(
        Bind::Virtual,
        Elem::Bf16,
        dm.scores(),
        dm.scores_t_strides(),
    )?;
    g.reshape(ds, dst)?;
    group_matmul(&mut g, &dm, dm.d, dst, q, dk)?;

    // dQ = dS·K through the f32 accumulator
    let (kd2, ks2) = dm.rows(dm.kv, dm.d, s.ldk);
    let k = g.tensor(Bind::Virtual, Elem::F32, kd2, ks2)?;
    g.reshape(kt, k)?;
    let (accd, accs) = dm.packed(dm.d);
    let acc = g.tensor(Bind::Device(uid::DQ_ACCUM), Elem::F32, accd, accs)?;
    g.matmul(ds, k, acc)?;
    g.pointwise(
        Pw::CUDNN_POINTWISE_IDENTITY,
        Elem::F32,
        acc,
        None,
        None,
        dq,
        None,
    )?;
    Ok(g)
}

/// `out = a·b` for dK (a = dSᵀ, b = Q, `width` the query/key head dim) and dV (a = Pᵀ, b = dO,
/// `width` the value head dim), where `a` and `b` have one slice per query head and `out` one per
/// kv head: written directly when those coincide, otherwise through a per-query-head bf16 result
/// summed over each kv group (as cuDNN's GQA pattern wants).
fn group_matmul(g: &mut GraphBuilder, dm: &Dims, width: i64, a: T, b: T, out: T) -> Result<()> {
    if dm.h == dm.kv {
        return g.matmul(a, b, out);
    }
    let (fd, fs) = dm.packed(width);
    let full = g.tensor(Bind::Virtual, Elem::Bf16, fd, fs)?;
    g.matmul(a, b, full)?;
    debug_assert_eq!(g.dims(out)[1], dm.kv);
    g.reduction(cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD, full, out)
}

/// The shape as text, for errors.
pub(crate) fn describe(s: &AttnShape) -> String {
    format!(
        "B={} T={} H={} KV={} D={} Dv={} ld=({},{},{},{}){} causal={} window={}",
        s.batch,
        s.seq,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.v_head_dim,
        s.ldq,
        s.ldk,
        s.ldv,
        s.ldo,
        if s.head_major { " head-major" } else { "" },
        s.causal,
        s.window
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tensor and operation descriptor of both graphs finalizes: catches attribute types,
    /// dims/strides and broadcast mistakes without a GPU (libcudnn alone, found by the probe;
    /// skipped without it). The operation graph itself needs a handle, so a GPU.
    #[test]
    fn graph_descriptors_finalize_without_a_gpu() {
        if let Err(e) = super::super::probe() {
            println!("skipping: {e}");
            return;
        }
        let shapes = [
            AttnShape::dense(2, 150, 4, 4, 64),
            AttnShape::dense(1, 200, 8, 2, 128),
            AttnShape {
                window: 37,
                ..AttnShape::dense(2, 130, 4, 1, 64)
            },
            AttnShape {
                causal: false,
                ldq: 512,
                ldk: 512,
                ldv: 512,
                ..AttnShape::dense(1, 100, 4, 2, 64)
            },
            // a value head dim apart from the query/key one (latent attention), dense and as
            // column views of one fused [q; k; v] projection
            AttnShape {
                v_head_dim: 64,
                ldv: 2 * 64,
                ldo: 4 * 64,
                ..AttnShape::dense(2, 90, 4, 2, 96)
            },
            AttnShape {
                v_head_dim: 128,
                ldq: 4 * (192 + 192 + 128),
                ldk: 4 * (192 + 192 + 128),
                ldv: 4 * (192 + 192 + 128),
                ldo: 4 * 128,
                ..AttnShape::dense(1, 70, 4, 4, 192)
            },
            AttnShape {
                v_head_dim: 128,
                ldv: 128,
                ldo: 4 * 128,
                window: 20,
                ..AttnShape::dense(1, 64, 4, 1, 64)
            },
            // PyTorch's head-major layout, with and without GQA
            AttnShape {
                head_major: true,
                ..AttnShape::dense(2, 150, 4, 4, 64)
            },
            AttnShape {
                head_major: true,
                ..AttnShape::dense(1, 200, 8, 2, 128)
            },
        ];
        for s in shapes {
            let f = forward_ops(&s).unwrap_or_else(|e| panic!("forward {}: {e}", describe(&s)));
            let b = backward_ops(&s).unwrap_or_else(|e| panic!("backward {}: {e}", describe(&s)));
            println!(
                "{}: forward {} ops, backward {} ops",
                describe(&s),
                f.op_count(),
                b.op_count()
            );
        }
    }
}
