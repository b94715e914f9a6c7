//! One layer's backward, with that layer's own configuration. Runs after the layer's
//! recomputation (`layer_fwd(i, true)`) when it did not keep everything.
//!
//! `g` is d(layer output) (one of the two stream-gradient buffers); the result, d(layer input),
//! goes to whichever buffer the layer below should read. Weight gradients are written (beta 0:
//! every parameter belongs to one layer); norm and bias gradients accumulate.

use super::super::error::Result;
use super::super::gpu::DevPtr;
use super::Step;
use super::config::{FfnCfg, NormCfg};

impl Step<'_> {
    /// Backward of a norm named `name` over rows of d_model: `dx = norm'(dy) (+ dres)`, and its
    /// weight/bias gradients.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_bwd(
        &self,
        nc: &NormCfg,
        dx: DevPtr,
        dy: DevPtr,
        x: DevPtr,
        rstd: DevPtr,
        mean: DevPtr,
        dres: DevPtr,
        name: &str,
    ) -> Result<()> {
        let (n, c) = (self.s.n, self.s.c);
        let weight = format!("{name}.weight");
        self.k.norm_bwd(
            self.dt,
            nc.kind,
            dx,
            dy,
            x,
            self.p.wo(&weight),
            rstd,
            mean,
            dres,
            n,
            c,
            nc.offset,
        )?;
        self.k.norm_dw(
            self.dt,
            nc.kind,
            self.p.g(&weight),
            self.p.g(&format!("{name}.bias")),
            dy,
            x,
            rstd,
            mean,
            n,
            c,
        )
    }

    /// Layer i's backward from `g` = d(layer output); returns the buffer holding d(layer input).
    pub(super) fn layer_bwd(&self, i: usize, g: DevPtr) -> Result<DevPtr> {
        let (k, dt, es, n, c) = (self.k, self.dt, self.es, self.s.n, self.s.c);
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let bf = self.buf;
        let g2 = if g == bf.g_a { bf.g_b } else { bf.g_a };
        let p = |s: &str| Self::pname(i, s);
        // The FFN branch first, through its post-norm.
        let d_ffn = if l.post {
            self.norm_bwd(
                &l.norm,
                bf.d_post,
                g,
                b.pm_in,
                b.pm_rstd,
                b.pm_mean,
                0,
                &p("mlp_post_norm"),
            )?;
            bf.d_post
        } else {
            g
        };
        let x_ffn = Self::mlp_input(l, b);
        match l.ffn {
            FfnCfg::Dense {
                act,
                hidden,
                hw,
                gated,
            } => {
                self.mm(
                    n,
                    hidden,
                    c,
                    d_ffn,
                    c,
                    self.p.w(&p("mlp.down.weight"))?,
                    hidden,
                    bf.d_act,
                    hidden,
                    0.0,
                )?;
                self.mm_grad(
                    c,
                    hidden,
                    n,
                    d_ffn,
                    c,
                    b.act,
                    hidden,
                    self.p.g(&p("mlp.down.weight")),
                    0.0,
                )?;
                self.colsum(self.p.g(&p("mlp.down.bias")), d_ffn, c)?;
                let up = hidden as u64 * es;
                k.act_bwd(
                    dt,
                    act,
                    bf.dh,
                    bf.dh + up,
                    bf.d_act,
                    b.h,
                    b.h + up,
                    n,
                    hidden,
                    hw,
                )?;
                let first = if gated { "mlp.gate" } else { "mlp.up" };
                self.mm_grad(
                    hw,
                    c,
                    n,
                    bf.dh,
                    hw,
                    x_ffn,
                    c,
                    self.p.g(&p(&format!("{first}.weight"))),
                    0.0,
                )?;
                self.colsum(self.p.g(&p(&format!("{first}.bias"))), bf.dh, hw)?;
                self.mm(
                    n,
                    c,
                    hw,
                    bf.dh,
                    hw,
                    self.p.w(&p(&format!("{first}.weight")))?,
                    c,
                    bf.d_ln,
                    c,
                    0.0,
                )?;
            }
            FfnCfg::Moe => self.moe_bwd(i, x_ffn, d_ffn, bf.d_ln)?,
        }
        // d_ln = d(FFN input). `acc` collects the gradient of the stream the FFN input came from:
        // d(resid_mid) = g + norm'(d_ln) when sequential, g + norm'(d_ln) towards the layer input
        // when parallel; a shared norm waits for the attention's part of d_ln.
        let acc = if l.shared_norm {
            g
        } else {
            let x_mlp = if l.parallel { b.resid } else { b.resid_mid };
            if l.pre {
                self.norm_bwd(
                    &l.norm,
                    g2,
                    bf.d_ln,
                    x_mlp,
                    b.rstd2,
                    b.mean2,
                    g,
                    &p("mlp_norm"),
                )?;
            } else {
                k.add(dt, g2, g, bf.d_ln, n * c)?;
            }
            g2
        };
        // The attention branch's gradient: d(resid_mid) when sequential, d(output) when
        // parallel; through its post-norm.
        let d_branch = if l.parallel { g } else { g2 };
        let d_attn = if l.post {
            self.norm_bwd(
                &l.norm,
                bf.d_post,
                d_branch,
                b.pa_in,
                b.pa_rstd,
                b.pa_mean,
                0,
                &p("attn_post_norm"),
            )?;
            bf.d_post
        } else {
            d_branch
        };
        self.mm(
            n,
            l.qd,
            c,
            d_attn,
            c,
            self.p.w(&p("attn.o.weight"))?,
            l.qd,
            bf.d_atty,
            l.qd,
            0.0,
        )?;
        self.mm_grad(
            c,
            l.qd,
            n,
            d_attn,
            c,
            b.atty,
            l.qd,
            self.p.g(&p("attn.o.weight")),
            0.0,
        )?;
        self.colsum(self.p.g(&p("attn.o.bias")), d_attn, c)?;
        self.attn_bwd(i)?;
        self.mm_grad(
            l.width,
            c,
            n,
            bf.dqkv,
            l.width,
            Self::attn_input(l, b),
            c,
            self.p.g(&p("attn.q.weight")),
            0.0,
        )?;
        self.colsum(self.p.g(&p("attn.q.bias")), bf.dqkv, l.width)?;
        // A shared norm's input gradient adds the attention's part to the FFN's.
        self.mm(
            n,
            c,
            l.width,
            bf.dqkv,
            l.width,
            self.p.w(&p("attn.q.weight"))?,
            c,
            bf.d_ln,
            c,
            if l.shared_norm { 1.0 } else { 0.0 },
        )?;
        // d(layer input) = acc + norm'(d_ln) (acc + d_ln without pre-norm), into whichever of
        // g, g2 `acc` is not; the layer below reads it.
        let out = if acc == g { g2 } else { g };
        if l.pre {
            self.norm_bwd(
                &l.norm,
                out,
                bf.d_ln,
                b.resid,
                b.rstd1,
                b.mean1,
                acc,
                &p("attn_norm"),
            )?;
        } else {
            k.add(dt, out, acc, bf.d_ln, n * c)?;
        }
        Ok(out)
    }

    /// From `d_atty` to `dqkv`: attention backward (ALiBi, softcap, window as in the forward),
    /// RoPE's transpose, the qk-norms' backward.
    fn attn_bwd(&self, i: usize) -> Result<()> {
        let (k, dt, es, n) = (self.k, self.dt, self.es, self.s.n);
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let bf = self.buf;
        let p = |s: &str| Self::pname(i, s);
        let (q, kk, v) = self.qkv_views(l, b.qkv);
        let (dq, dk, dv) = self.qkv_views(l, bf.dqkv);
        let mut shape = self.attn_shape(l);
        shape.ldo = l.qd;
        self.attention_bwd(
            i,
            &shape,
            (dq, dk, dv),
            (bf.dq_acc, bf.delta),
            bf.d_atty,
            b.atty,
            b.lse,
            (q, kk, v),
        )?;
        self.rope(l, bf.dqkv, true)?;
        let Some(qk) = &l.qk else {
            return Ok(());
        };
        for part in self.qk_parts(l, b) {
            let at = bf.dqkv + part.col as u64 * es;
            k.copy2d(dt, bf.qk_a, part.cols, at, l.width, n, part.cols)?;
            k.norm_bwd(
                dt,
                qk.norm.kind,
                bf.qk_b,
                bf.qk_a,
                part.raw,
                self.p.wo(&p(&format!("{}.weight", part.name))),
                part.rstd,
                part.mean,
                0,
                part.rows,
                part.w,
                qk.norm.offset,
            )?;
            k.norm_dw(
                dt,
                qk.norm.kind,
                self.p.g(&p(&format!("{}.weight", part.name))),
                self.p.g(&p(&format!("{}.bias", part.name))),
                bf.qk_a,
                part.raw,
                part.rstd,
                part.mean,
                part.rows,
                part.w,
            )?;
            k.copy2d(dt, at, l.width, bf.qk_b, part.cols, n, part.cols)?;
        }
        Ok(())
    }
}
