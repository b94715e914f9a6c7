//! One layer's forward: the kernels of its program (`LayerProgram::kernels`, the named fusions of
//! `modelspec_dsl::program`) in order, each launched with that layer's own configuration (sizes,
//! windows, softcaps, RoPE table, norms); with `recompute`, only the kernels the layer re-runs
//! before its backward (`LayerRun::redo`), bit-identical to the forward: the same kernels on the
//! same inputs.
//!
//! Where the activations live ([`Step::act_buf`]): each in its kept buffer or the shared buffer it
//! is recomputed into; q/k/v in one `[q; k; v]` buffer with qk-norm and RoPE applied in place; a
//! branch output that only a residual add reads in `tmp`, until the add consumes it. The layer's
//! output (`stream + mlp_branch`) is never formed on its own: the next layer's first norm (or the
//! final norm) adds `tmp` to the stream (`resid_mid`, which in a parallel block holds the input
//! plus the attention branch) as it normalises.

use super::super::error::Result;
use super::super::gpu::DevPtr;
use super::super::ops::AttnShape;
use super::Step;
use super::config::{LayerCfg, NormCfg};
use super::layout::LayerBufs;
use modelspec_dsl::program::{Act, Fusion, LayerProgram};

impl Step<'_> {
    /// `layers.{i}.{name}`.
    pub(super) fn pname(i: usize, name: &str) -> String {
        format!("layers.{i}.{name}")
    }

    /// A norm over rows of d_model named `name` (weight/bias by name): `y = norm(x + res)`,
    /// writing the sum to `r_out` when not 0.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_fwd(
        &self,
        nc: &NormCfg,
        y: DevPtr,
        r_out: DevPtr,
        rstd: DevPtr,
        mean: DevPtr,
        x: DevPtr,
        res: DevPtr,
        name: &str,
    ) -> Result<()> {
        self.k.norm_fwd(
            self.dt,
            nc.kind,
            y,
            r_out,
            rstd,
            mean,
            x,
            res,
            self.p.wo(&format!("{name}.weight")),
            self.p.wo(&format!("{name}.bias")),
            self.s.n,
            self.s.c,
            nc.eps,
            nc.offset,
        )
    }

    /// The attention call of layer `l` over the fused `[q; k; v]` rows.
    pub(super) fn attn_shape(&self, l: &LayerCfg) -> AttnShape {
        super::attention::layer_shape(l, &self.s, l.alibi.map_or(0, |j| self.alibi[j].ptr()))
    }

    /// Where activation `act` of layer `i` lives: its kept buffer, or the shared one it is
    /// recomputed into; a branch output that only a residual add reads lives in `tmp` until the
    /// add consumes it ([`in_tmp`]).
    pub(super) fn act_buf(&self, i: usize, act: Act) -> DevPtr {
        let b = &self.buf.layers[i];
        if in_tmp(&self.run[i].lp, act) {
            return self.buf.tmp;
        }
        match act {
            Act::Input => b.resid,
            Act::AttnNorm => b.ln1,
            Act::MlpNorm => b.ln2,
            Act::Attn => b.atty,
            Act::AttnOut => b.pa_in,
            Act::MlpOut => b.pm_in,
            Act::ResidMid => b.resid_mid,
            Act::Gate | Act::Up => b.h,
            Act::ActOut => b.act,
            _ => self.buf.tmp,
        }
    }

    /// A norm kernel's output, statistics and parameter name: `(y, rstd, mean, name)`.
    pub(super) fn norm_bufs(&self, i: usize, out: Act) -> (DevPtr, DevPtr, DevPtr, String) {
        let b = &self.buf.layers[i];
        let (y, rstd, mean) = match out {
            Act::AttnNorm => (b.ln1, b.rstd1, b.mean1),
            Act::MlpNorm => (b.ln2, b.rstd2, b.mean2),
            Act::AttnPostNorm => (self.buf.tmp, b.pa_rstd, b.pa_mean),
            _ => (self.buf.tmp, b.pm_rstd, b.pm_mean),
        };
        (y, rstd, mean, Self::pname(i, out.name()))
    }

    /// The token (and learned position) embedding into layer 0's input.
    pub(super) fn embed_fwd(&self) -> Result<()> {
        self.k.embed_fwd(
            self.dt,
            self.buf.layers[0].resid,
            self.tokens,
            self.p.w("embed.weight")?,
            self.p.wo("pos_embed.weight"),
            self.s.n,
            self.s.seq,
            self.s.c,
            self.spec.embedding.scale as f32,
        )
    }

    /// `[q; k; v]` of layer i: projection, qk-norm (through contiguous copies, where per-head
    /// rows are plain rows of head_dim) and RoPE in place, in the layer's order, then the query
    /// temperature.
    fn qkv_fwd(&self, i: usize, l: &LayerCfg, b: &LayerBufs, x: DevPtr) -> Result<()> {
        let (k, dt, n) = (self.k, self.dt, self.s.n);
        let p = |s: &str| Self::pname(i, s);
        self.linear(
            n,
            l.width,
            self.s.c,
            x,
            self.p.w(&p("attn.q.weight"))?,
            self.p.wo(&p("attn.q.bias")),
            b.qkv,
        )?;
        if l.qk.is_some_and(|q| q.after_rope) {
            self.rope(l, b.qkv, false)?;
            self.qk_norms_fwd(i, l, b)?;
        } else {
            self.qk_norms_fwd(i, l, b)?;
            self.rope(l, b.qkv, false)?;
        }
        match &l.temperature {
            Some(t) => k.attn_qscale(dt, b.qkv, n, self.s.seq, l.qd, l.width, t),
            None => Ok(()),
        }
    }

    /// The qk-norms of a layer, in place on the q and k columns of its `[q; k; v]` buffer
    /// (keeping their inputs and statistics for the backward).
    fn qk_norms_fwd(&self, i: usize, l: &LayerCfg, b: &LayerBufs) -> Result<()> {
        let (k, dt, es, n) = (self.k, self.dt, self.es, self.s.n);
        let p = |s: &str| Self::pname(i, s);
        if let Some(qk) = &l.qk {
            for part in self.qk_parts(l, b) {
                let at = b.qkv + part.col as u64 * es;
                k.copy2d(dt, part.raw, part.cols, at, l.width, n, part.cols)?;
                k.norm_fwd(
                    dt,
                    qk.norm.kind,
                    self.buf.qk_a,
                    0,
                    part.rstd,
                    part.mean,
                    part.raw,
                    0,
                    self.p.wo(&p(&format!("{}.weight", part.name))),
                    self.p.wo(&p(&format!("{}.bias", part.name))),
                    part.rows,
                    part.w,
                    qk.norm.eps,
                    qk.norm.offset,
                )?;
                k.copy2d(dt, at, l.width, self.buf.qk_a, part.cols, n, part.cols)?;
            }
        }
        Ok(())
    }

    /// RoPE (or its transpose) on the q and k columns of a `[q; k; v]`-shaped buffer.
    pub(super) fn rope(&self, l: &LayerCfg, qkv: DevPtr, backward: bool) -> Result<()> {
        let Some(r) = l.rope.map(|j| &self.ropes[j]) else {
            return Ok(());
        };
        for (col, heads) in [(0, l.heads), (l.qd, l.kv_heads)] {
            self.k.rope(
                self.dt,
                qkv + col as u64 * self.es,
                r.cos.ptr(),
                r.sin.ptr(),
                self.s.n,
                self.s.seq,
                heads,
                l.head_dim,
                l.width,
                r.rot,
                r.interleaved,
                backward,
            )?;
        }
        Ok(())
    }

    /// Layer i's forward: its program's kernels in order (see the module docs); with
    /// `recompute`, only the kernels the layer re-runs at the start of its backward.
    pub(super) fn layer_fwd(&self, i: usize, recompute: bool) -> Result<()> {
        let (k, dt, n, c) = (self.k, self.dt, self.s.n, self.s.c);
        let run = &self.run[i];
        let b = &self.buf.layers[i];
        // The residual add of the layer below: fused into this layer's first norm when that
        // reads the layer input, else a plain add (never in recomputation: the input is kept;
        // nor where the layer below's last GEMM wrote the sum: `fold`).
        let entry = (!recompute && i > 0 && !self.folds_into_next(i - 1))
            .then(|| (self.buf.layers[i - 1].resid_mid, self.buf.tmp));
        let fused_entry = run
            .kernels
            .first()
            .is_some_and(|kn| kn.fusion == Fusion::Norm && kn.inputs == [Act::Input]);
        if let (Some((stream, branch)), false) = (entry, fused_entry) {
            k.add(dt, b.resid, stream, branch, n * c)?;
        }
        for (j, kn) in run.kernels.iter().enumerate() {
            if recompute && !run.redo[j] {
                continue;
            }
            let phase = if recompute { "recompute" } else { "fwd" };
            self.timed(
                || format!("{phase} {:?}", kn.fusion),
                || self.kernel_fwd(i, j, entry.filter(|_| j == 0 && fused_entry), recompute),
            )?;
            // A parallel block's stream: the input plus the attention branch, before the FFN
            // branch reuses `tmp` (its backward reads neither: never recomputed), unless the
            // branch's GEMM wrote it (`fold`).
            if run.lp.parallel
                && !recompute
                && kn.outputs.last() == Some(&run.lp.attn_branch)
                && !self.folds_into_sum(i, j)
            {
                k.add(
                    dt,
                    b.resid_mid,
                    b.resid,
                    self.act_buf(i, run.lp.attn_branch),
                    n * c,
                )?;
            }
        }
        Ok(())
    }

    /// Kernel `j` of layer i's program. `entry` is the pending residual `(stream, branch)` of the
    /// layer below that a first norm adds into the layer input.
    fn kernel_fwd(
        &self,
        i: usize,
        j: usize,
        entry: Option<(DevPtr, DevPtr)>,
        recompute: bool,
    ) -> Result<()> {
        let (k, dt, n, c) = (self.k, self.dt, self.s.n, self.s.c);
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let run = &self.run[i];
        let kn = &run.kernels[j];
        let p = |s: &str| Self::pname(i, s);
        let out = kn.outputs[0];
        match kn.fusion {
            Fusion::Norm => {
                let (y, rstd, mean, name) = self.norm_bufs(i, out);
                let x = self.act_buf(i, kn.inputs[0]);
                match entry {
                    Some((stream, branch)) => {
                        self.norm_fwd(&l.norm, y, b.resid, rstd, mean, stream, branch, &name)
                    }
                    None => self.norm_fwd(&l.norm, y, 0, rstd, mean, x, 0, &name),
                }
            }
            Fusion::ResidualNorm => {
                let branch = self.act_buf(i, kn.inputs[1]);
                let norm = kn.outputs.get(1).copied();
                // The projection before wrote the sum itself (`fold`).
                let summed = j > 0 && self.folds_into_sum(i, j - 1);
                match norm {
                    // Recomputing only the norm of a kept sum, or normalising a folded one.
                    Some(nm) if summed || (recompute && run.keep[out as usize]) => {
                        let (y, rstd, mean, name) = self.norm_bufs(i, nm);
                        self.norm_fwd(&l.norm, y, 0, rstd, mean, b.resid_mid, 0, &name)
                    }
                    Some(nm) => {
                        let (y, rstd, mean, name) = self.norm_bufs(i, nm);
                        self.norm_fwd(&l.norm, y, b.resid_mid, rstd, mean, b.resid, branch, &name)
                    }
                    None if summed => Ok(()),
                    None => k.add(dt, b.resid_mid, b.resid, branch, n * c),
                }
            }
            Fusion::QkvRope => self.qkv_fwd(i, l, b, self.act_buf(i, kn.inputs[0])),
            Fusion::MlaQ | Fusion::MlaKv | Fusion::MlaSplit => self.mla_fwd(i, kn, recompute),
            Fusion::Attention => {
                let (q, kk, v) = self.qkv_views(l, b.qkv);
                self.attention_fwd(i, &self.attn_shape(l), b.atty, b.lse, q, kk, v)
            }
            Fusion::Linear | Fusion::GateUp | Fusion::LinearAct => {
                // One GEMM; an ungated MLP's `up` and `act` (LinearAct) with GELU-tanh in its
                // epilogue (keeping `up`, the pre-activation), else the GEMM and one activation
                // pass.
                let pj = l.projection(i, kn, c)?;
                let x = self.act_buf(i, kn.inputs[0]);
                let w = self.p.w(&p(&format!("{}.weight", pj.prefix)))?;
                let bias = self.p.wo(&p(&format!("{}.bias", pj.prefix)));
                let y = self.act_buf(i, out);
                if kn.fusion == Fusion::Linear
                    && let Some(target) = self.fold_target(i, j, recompute)
                {
                    return self.linear_residual(n, pj.out, pj.inp, x, w, bias, target);
                }
                if kn.fusion != Fusion::LinearAct {
                    return self.linear(n, pj.out, pj.inp, x, w, bias, y);
                }
                if Self::gelu_epilogue(l)
                    && self.linear_gelu(n, pj.out, pj.inp, x, w, bias, b.act, y)?
                {
                    return Ok(());
                }
                self.linear(n, pj.out, pj.inp, x, w, bias, y)?;
                let (act, hidden, hw) = l.dense(i, "an activation")?;
                k.act_fwd(dt, act, b.act, y, 0, n, hidden, hw)
            }
            Fusion::Activation => {
                let (act, hidden, hw) = l.dense(i, "an activation")?;
                k.act_fwd(
                    dt,
                    act,
                    b.act,
                    b.h,
                    b.h + hidden as u64 * self.es,
                    n,
                    hidden,
                    hw,
                )
            }
            Fusion::Moe => {
                // The aux loss is counted once, in the forward.
                let aux = if self.aux_loss && !recompute {
                    self.buf.aux
                } else {
                    0
                };
                let x = self.act_buf(i, kn.inputs[0]);
                self.moe_fwd(i, x, self.act_buf(i, Act::MlpOut), aux)
            }
        }
    }

    /// q, k and v inside a `[q; k; v]`-shaped buffer.
    pub(super) fn qkv_views(&self, l: &LayerCfg, qkv: DevPtr) -> (DevPtr, DevPtr, DevPtr) {
        (
            qkv,
            qkv + l.qd as u64 * self.es,
            qkv + (l.qd + l.kvd) as u64 * self.es,
        )
    }

    /// The two qk-norms of layer `l`.
    pub(super) fn qk_parts(&self, l: &LayerCfg, b: &LayerBufs) -> [QkPart; 2] {
        let ((qr, qw), (kr, kw)) = l.qk_rows(self.s.n);
        [
            QkPart {
                col: 0,
                raw: b.qraw,
                rows: qr,
                w: qw,
                rstd: b.qrstd,
                mean: b.qmean,
                name: "attn.q_norm",
                cols: l.qd,
            },
            QkPart {
                col: l.qd,
                raw: b.kraw,
                rows: kr,
                w: kw,
                rstd: b.krstd,
                mean: b.kmean,
                name: "attn.k_norm",
                cols: l.kvd,
            },
        ]
    }
}

/// Whether activation `act` of a layer lowered as `lp` lives in the scratch `tmp` ([`Step::act_buf`]):
/// everything but the buffers of their own, and a branch output unless a post-norm reads it.
pub(super) fn in_tmp(lp: &LayerProgram, act: Act) -> bool {
    match act {
        Act::Input
        | Act::AttnNorm
        | Act::MlpNorm
        | Act::Attn
        | Act::ResidMid
        | Act::Gate
        | Act::Up
        | Act::ActOut => false,
        Act::AttnOut => lp.node(Act::AttnPostNorm).is_none(),
        Act::MlpOut => lp.node(Act::MlpPostNorm).is_none(),
        _ => true,
    }
}

/// One qk-norm: its columns in the fused buffer, its saved input, its norm shape and statistics.
pub(super) struct QkPart {
    /// First column in `[q; k; v]`.
    pub col: usize,
    /// The norm's input, contiguous `[n, cols]`.
    pub raw: DevPtr,
    /// Norm rows and width (per head: `n * heads` rows of head_dim).
    pub rows: usize,
    pub w: usize,
    pub rstd: DevPtr,
    pub mean: DevPtr,
    /// Parameter prefix.
    pub name: &'static str,
    /// Columns of the part.
    pub cols: usize,
}
