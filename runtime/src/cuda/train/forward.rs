//! One layer's forward, with that layer's own configuration; with `recompute`, only what the
//! layer did not keep, from its kept input (bit-identical to the forward: the same kernels on
//! the same inputs).
//!
//! Data flow of layer i (`tmp` carries a branch's output to the add that consumes it):
//! ```text
//! x = stream + tmp (the previous layer's last branch; fused into the attention norm when pre-norm)
//!   -> attn_in = norm(x) | x -> [q; k; v] (-> qk-norm -> RoPE, in place) -> attention (ALiBi,
//!   softcap, window) -> o-proj (-> post-norm) = tmp -> resid_mid = x + tmp (fused into the MLP
//!   norm when sequential pre-norm)
//! mlp_in = norm(resid_mid) | resid_mid | (parallel) norm(x) | ln1 | x
//!   -> dense: [gate; up] -> act -> down   |   MoE block (cuda::moe)
//!   (-> post-norm) = tmp; the next layer (or the final norm) adds tmp to resid_mid.
//! ```

use super::super::error::Result;
use super::super::gpu::DevPtr;
use super::super::ops::AttnShape;
use super::Step;
use super::config::{FfnCfg, LayerCfg, NormCfg};
use super::layout::LayerBufs;

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

    /// The attention branch's input: the attention norm's output, or the layer input.
    pub(super) fn attn_input(l: &LayerCfg, b: &LayerBufs) -> DevPtr {
        if l.pre { b.ln1 } else { b.resid }
    }

    /// The FFN's input.
    pub(super) fn mlp_input(l: &LayerCfg, b: &LayerBufs) -> DevPtr {
        match (l.parallel, l.pre) {
            (true, true) if l.shared_norm => b.ln1,
            (_, true) => b.ln2,
            (true, false) => b.resid,
            (false, false) => b.resid_mid,
        }
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
    /// rows are plain rows of head_dim), RoPE in place.
    fn qkv_fwd(&self, i: usize, l: &LayerCfg, b: &LayerBufs) -> Result<()> {
        let (k, dt, es, n) = (self.k, self.dt, self.es, self.s.n);
        let p = |s: &str| Self::pname(i, s);
        self.linear(
            n,
            l.width,
            self.s.c,
            Self::attn_input(l, b),
            self.p.w(&p("attn.q.weight"))?,
            self.p.wo(&p("attn.q.bias")),
            b.qkv,
        )?;
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
        self.rope(l, b.qkv, false)
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

    /// Layer i's forward (see the module docs); with `recompute`, only what it did not keep.
    pub(super) fn layer_fwd(&self, i: usize, recompute: bool) -> Result<()> {
        let (k, dt, n, c) = (self.k, self.dt, self.s.n, self.s.c);
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let sv = self.buf.saves[i];
        let p = |s: &str| Self::pname(i, s);
        // In recomputation every input comes from the kept layer input (bit-identical: the
        // norm kernel normalises the residual as stored).
        let (x_in, res_in, r_out) = if recompute || i == 0 {
            (b.resid, 0, 0)
        } else {
            (self.buf.layers[i - 1].resid_mid, self.buf.tmp, b.resid)
        };
        if l.pre {
            if !recompute || !sv.attn_norm {
                self.norm_fwd(
                    &l.norm,
                    b.ln1,
                    r_out,
                    b.rstd1,
                    b.mean1,
                    x_in,
                    res_in,
                    &p("attn_norm"),
                )?;
            }
        } else if r_out != 0 {
            k.add(dt, r_out, x_in, res_in, n * c)?;
        }
        // One fused kernel writes q and k as projected (under qk-norm) and the [q; k; v] buffer
        // attention reads: re-run whole when any of its kept units is missing (the kept ones are
        // rewritten with the same bits).
        if !recompute || !sv.qkv || (l.qk.is_some() && !(sv.q_raw && sv.k_raw)) {
            self.qkv_fwd(i, l, b)?;
        }
        if !recompute || !sv.attn {
            let (q, kk, v) = self.qkv_views(l, b.qkv);
            self.attention_fwd(i, &self.attn_shape(l), b.atty, b.lse, q, kk, v)?;
        }
        // A parallel layer's backward reads no resid_mid (it only carries the stream to the next
        // layer): there the attention branch is recomputed only for a post-norm's input.
        let redo_branch = (!sv.resid_mid && !l.parallel) || (l.post && !sv.attn_out);
        if !recompute || redo_branch {
            // The attention branch (post-normed) into tmp, then resid_mid = x + tmp.
            let o_out = if l.post { b.pa_in } else { self.buf.tmp };
            self.linear(
                n,
                c,
                l.qd,
                b.atty,
                self.p.w(&p("attn.o.weight"))?,
                self.p.wo(&p("attn.o.bias")),
                o_out,
            )?;
            if l.post {
                self.norm_fwd(
                    &l.norm,
                    self.buf.tmp,
                    0,
                    b.pa_rstd,
                    b.pa_mean,
                    b.pa_in,
                    0,
                    &p("attn_post_norm"),
                )?;
            }
            if l.pre && !l.parallel {
                self.norm_fwd(
                    &l.norm,
                    b.ln2,
                    b.resid_mid,
                    b.rstd2,
                    b.mean2,
                    b.resid,
                    self.buf.tmp,
                    &p("mlp_norm"),
                )?;
            } else {
                k.add(dt, b.resid_mid, b.resid, self.buf.tmp, n * c)?;
            }
        } else if l.pre && !l.parallel && !sv.mlp_norm {
            self.norm_fwd(
                &l.norm,
                b.ln2,
                0,
                b.rstd2,
                b.mean2,
                b.resid_mid,
                0,
                &p("mlp_norm"),
            )?;
        }
        // A parallel block's own MLP norm reads the layer input.
        if l.parallel && l.pre && !l.shared_norm && (!recompute || !sv.mlp_norm) {
            self.norm_fwd(
                &l.norm,
                b.ln2,
                0,
                b.rstd2,
                b.mean2,
                b.resid,
                0,
                &p("mlp_norm"),
            )?;
        }
        let ffn_out = if l.post { b.pm_in } else { self.buf.tmp };
        match l.ffn {
            FfnCfg::Dense {
                act,
                hidden,
                hw,
                gated,
            } => {
                let first = if gated { "mlp.gate" } else { "mlp.up" };
                if !recompute || !sv.mlp_in {
                    self.linear(
                        n,
                        hw,
                        c,
                        Self::mlp_input(l, b),
                        self.p.w(&p(&format!("{first}.weight")))?,
                        self.p.wo(&p(&format!("{first}.bias"))),
                        b.h,
                    )?;
                }
                if !recompute || !sv.act {
                    k.act_fwd(
                        dt,
                        act,
                        b.act,
                        b.h,
                        b.h + hidden as u64 * self.es,
                        n,
                        hidden,
                        hw,
                    )?;
                }
                if recompute && !(l.post && !sv.mlp_out) {
                    return Ok(());
                }
                self.linear(
                    n,
                    c,
                    hidden,
                    b.act,
                    self.p.w(&p("mlp.down.weight"))?,
                    self.p.wo(&p("mlp.down.bias")),
                    ffn_out,
                )?;
            }
            FfnCfg::Moe => {
                if recompute {
                    // The block is one unit: re-run it from its input when its saved region
                    // was not kept, or for a post-norm's input (the aux loss was counted in the
                    // forward).
                    let need_out = l.post && !sv.mlp_out;
                    if !sv.moe || need_out {
                        self.moe_fwd(i, Self::mlp_input(l, b), ffn_out, 0)?;
                    }
                    if !need_out {
                        return Ok(());
                    }
                } else {
                    let aux = if self.aux_loss { self.buf.aux } else { 0 };
                    self.moe_fwd(i, Self::mlp_input(l, b), ffn_out, aux)?;
                }
            }
        }
        if l.post {
            self.norm_fwd(
                &l.norm,
                self.buf.tmp,
                0,
                b.pm_rstd,
                b.pm_mean,
                b.pm_in,
                0,
                &p("mlp_post_norm"),
            )?;
        }
        Ok(())
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
