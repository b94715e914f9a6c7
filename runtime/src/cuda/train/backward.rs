//! One layer's backward: its program's kernels in reverse (after the kernels it re-runs, when it
//! did not keep everything), each turning its outputs' gradients into its inputs' and its
//! weights'. Gradients are routed by [`Grads`], from the program alone: a residual add passes its
//! gradient on as an alias (no copy), a norm folds what its input already received into its own
//! backward (`dres`), a projection accumulates with beta 1, and the residual stream's gradients
//! rotate through two buffers. Weight gradients are written (beta 0: every parameter belongs to
//! one kernel), a projection's bias gradient with it ([`Step::mm_grad_bias`]: in the GEMM's
//! epilogue or by a column sum into the zeroed gradient); norm gradients accumulate.

use super::super::error::Result;
use super::super::gpu::DevPtr;
use super::config::{LayerCfg, NormCfg};
use super::{Step, unsupported};
use modelspec_dsl::program::{Act, Fusion, Kernel, N_ACTS};

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
        // norm_bwd then norm_dw, or one pass for both (Kernels::set_norm_fused_dw).
        self.k.norm_bwd_dw(
            self.dt,
            nc.kind,
            dx,
            dy,
            x,
            self.p.wo(&weight),
            rstd,
            mean,
            dres,
            self.p.g(&weight),
            self.p.g(&format!("{name}.bias")),
            n,
            c,
            nc.offset,
            self.buf.reduce,
        )
    }

    /// The MLP input projection's backward (`[gate; up]` or `up`, `hw` wide) from `dy` = d(its
    /// output): its weight and bias gradients, and d(its input).
    fn proj_in_bwd(&self, i: usize, kn: &Kernel, d: &mut Grads, dy: DevPtr) -> Result<()> {
        let (n, c) = (self.s.n, self.s.c);
        let p = |s: &str| Self::pname(i, s);
        let pj = self.cfg[i].projection(i, kn, c)?;
        let (first, hw) = (pj.prefix, pj.out);
        let x = self.act_buf(i, kn.inputs[0]);
        self.wgrad(Some(i), [dy, x], || {
            self.mm_grad_bias(
                hw,
                c,
                n,
                dy,
                hw,
                x,
                c,
                self.p.g(&p(&format!("{first}.weight"))),
                self.p.g(&p(&format!("{first}.bias"))),
            )
        })?;
        let t = self.target(d, kn.inputs[0])?;
        let wt = self.p.w(&p(&format!("{first}.weight")))?;
        self.mm(n, c, hw, dy, hw, wt, c, t.0, c, t.1)?;
        self.finish(t, c)
    }

    /// The down projection's input gradient through a GELU kept in the GEMMs' epilogues: when
    /// `input` is the `act` of layer i's fused ungated GELU-tanh MLP ([`Step::gelu_epilogue`])
    /// and neither `act` nor `up` has a gradient yet, `d(up) = (dy W) * gelu'(up)` goes straight
    /// into up's gradient buffer (cuBLASLt's DGELU epilogue) and the `LinearAct` backward skips
    /// its activation pass. `false`, with nothing run, otherwise or where cuBLASLt has no such
    /// algorithm (the caller then writes d(act)).
    fn dgelu_into_up(
        &self,
        i: usize,
        input: Act,
        d: &mut Grads,
        dy: DevPtr,
        wt: DevPtr,
        width: usize,
    ) -> Result<bool> {
        let l: &LayerCfg = &self.cfg[i];
        let fused = self.run[i]
            .kernels
            .iter()
            .any(|k| k.fusion == Fusion::LinearAct);
        if input != Act::ActOut
            || !fused
            || !Self::gelu_epilogue(l)
            || d.get(Act::ActOut) != Grad::None
            || d.get(Act::Up) != Grad::None
        {
            return Ok(false);
        }
        let dh = self.fresh(d, Act::Up)?;
        let (n, c) = (self.s.n, self.s.c);
        let pre = self.buf.layers[i].h;
        if !self.mm_dgelu(n, width, c, dy, c, wt, width, dh, pre)? {
            return Ok(false);
        }
        d.set(Act::Up, Grad::Own(dh));
        Ok(true)
    }

    /// Layer i's backward from `g` = d(layer output): its program's kernels in reverse, each
    /// turning its outputs' gradients into its inputs' (see [`Grads`]). Returns the buffer
    /// holding d(layer input), one of the two stream-gradient buffers.
    pub(super) fn layer_bwd(&self, i: usize, g: DevPtr) -> Result<DevPtr> {
        let lp = &self.run[i].lp;
        let mut d = Grads::new([self.buf.g_a, self.buf.g_b]);
        // The layer output is `stream + mlp_branch` (+ `attn_branch` when parallel): each gets g.
        d.set(lp.mlp_branch, Grad::Alias(g));
        if lp.parallel {
            d.set(lp.attn_branch, Grad::Alias(g));
            d.set(Act::Input, Grad::Alias(g));
        } else {
            d.set(Act::ResidMid, Grad::Alias(g));
        }
        for kn in self.run[i].kernels.iter().rev() {
            self.timed(
                || format!("bwd {:?}", kn.fusion),
                || self.kernel_bwd(i, kn, &mut d),
            )?;
            for &o in &kn.outputs {
                d.set(o, Grad::None);
            }
        }
        match d.get(Act::Input) {
            Grad::Alias(p) | Grad::Own(p) => Ok(p),
            Grad::None => Err(unsupported(format!(
                "layer {i}: nothing reads the layer input"
            ))),
        }
    }

    /// A gradient buffer for `act` that holds none of `d`'s live gradients: one of the two
    /// stream buffers for the residual stream, else the act's own scratch buffer.
    fn fresh(&self, d: &Grads, act: Act) -> Result<DevPtr> {
        let bf = self.buf;
        let p = match act {
            Act::Input | Act::ResidMid => d.free_stream(),
            Act::AttnNorm | Act::MlpNorm => Some(bf.d_ln),
            Act::AttnOut | Act::MlpOut => Some(bf.d_post),
            Act::Attn => Some(bf.d_atty),
            Act::ActOut => Some(bf.d_act),
            Act::Gate | Act::Up => Some(bf.dh),
            _ => None,
        };
        let p = p
            .filter(|&p| !d.in_use(p))
            .ok_or_else(|| unsupported(format!("no free gradient buffer for `{}`", act.name())))?;
        // A weight gradient on the branch may still read it ([`super::branch`]).
        self.claim(p)?;
        Ok(p)
    }

    /// Where an op that writes (beta 0) or accumulates (beta 1) d(`act`) puts it: `(buffer,
    /// beta, addend)`; a non-zero addend (a gradient passed on by a residual add) is added after
    /// the op by [`Step::finish`].
    pub(super) fn target(&self, d: &mut Grads, act: Act) -> Result<(DevPtr, f32, DevPtr)> {
        Ok(match d.get(act) {
            Grad::Own(p) => (p, 1.0, 0),
            Grad::None => {
                let p = self.fresh(d, act)?;
                d.set(act, Grad::Own(p));
                (p, 0.0, 0)
            }
            Grad::Alias(x) => {
                let p = self.fresh(d, act)?;
                d.set(act, Grad::Own(p));
                (p, 0.0, x)
            }
        })
    }

    /// Adds a pending addend into a target after its op (`width` columns).
    pub(super) fn finish(&self, (p, _, add): (DevPtr, f32, DevPtr), width: usize) -> Result<()> {
        if add != 0 {
            self.k.add(self.dt, p, p, add, self.s.n * width)?;
        }
        Ok(())
    }

    /// Where a norm's backward writes d(`act`), its input: `(dx, dres)`, the norm kernel adding
    /// what `act` already received (`dres`) into a buffer of its own.
    fn norm_target(&self, d: &mut Grads, act: Act) -> Result<(DevPtr, DevPtr)> {
        let dres = match d.get(act) {
            Grad::None => 0,
            Grad::Alias(p) | Grad::Own(p) => p,
        };
        let dx = self.fresh(d, act)?;
        d.set(act, Grad::Own(dx));
        Ok((dx, dres))
    }

    /// One kernel's backward: from the gradients of its outputs to its inputs' and its weights'.
    fn kernel_bwd(&self, i: usize, kn: &Kernel, d: &mut Grads) -> Result<()> {
        let (k, dt, es, n, c) = (self.k, self.dt, self.es, self.s.n, self.s.c);
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let bf = self.buf;
        let p = |s: &str| Self::pname(i, s);
        let out = kn.outputs[0];
        match kn.fusion {
            Fusion::Norm => {
                let dy = d.ptr(out);
                let (_, rstd, mean, name) = self.norm_bufs(i, out);
                let input = kn.inputs[0];
                let (dx, dres) = self.norm_target(d, input)?;
                self.norm_bwd(
                    &l.norm,
                    dx,
                    dy,
                    self.act_buf(i, input),
                    rstd,
                    mean,
                    dres,
                    &name,
                )
            }
            Fusion::ResidualNorm => {
                if let Some(&nm) = kn.outputs.get(1) {
                    let dy = d.ptr(nm);
                    let (_, rstd, mean, name) = self.norm_bufs(i, nm);
                    let (dx, dres) = self.norm_target(d, out)?;
                    self.norm_bwd(&l.norm, dx, dy, b.resid_mid, rstd, mean, dres, &name)?;
                }
                // The sum's gradient passes unchanged to both addends.
                let ds = d.ptr(out);
                for &a in &kn.inputs {
                    self.pass(d, a, ds)?;
                }
                Ok(())
            }
            Fusion::Linear => {
                let dy = d.ptr(out);
                let pj = l.projection(i, kn, c)?;
                let (weight, width) = (pj.prefix, pj.inp);
                let input = kn.inputs[0];
                let w = |s: &str| format!("{weight}.{s}");
                let x = self.act_buf(i, input);
                self.wgrad(Some(i), [dy, x], || {
                    self.mm_grad_bias(
                        c,
                        width,
                        n,
                        dy,
                        c,
                        x,
                        width,
                        self.p.g(&p(&w("weight"))),
                        self.p.g(&p(&w("bias"))),
                    )
                })?;
                let wt = self.p.w(&p(&w("weight")))?;
                if self.dgelu_into_up(i, input, d, dy, wt, width)? {
                    return Ok(());
                }
                let t = self.target(d, input)?;
                self.mm(n, width, c, dy, c, wt, width, t.0, width, t.1)?;
                self.finish(t, width)
            }
            Fusion::Activation => {
                let (act, hidden, hw) = l.dense(i, "an activation's backward")?;
                let up = hidden as u64 * es;
                let dy = d.ptr(out);
                let t = self.target(d, kn.inputs[0])?;
                if t.1 != 0.0 || t.2 != 0 {
                    return Err(unsupported(format!(
                        "layer {i}: the MLP projections have other readers"
                    )));
                }
                for &a in &kn.inputs {
                    d.set(a, Grad::Own(t.0));
                }
                k.act_bwd(dt, act, t.0, t.0 + up, dy, b.h, b.h + up, n, hidden, hw)
            }
            Fusion::GateUp => {
                let dy = d.ptr(out);
                self.proj_in_bwd(i, kn, d, dy)
            }
            Fusion::LinearAct => {
                // d(up): already there when the down projection's backward ran the GELU's
                // gradient in its GEMM's epilogue (`dgelu_into_up`), else from d(act) here.
                let dh = match (d.get(Act::Up), d.get(Act::ActOut)) {
                    (Grad::Own(p), Grad::None) => p,
                    _ => {
                        let (act, hidden, hw) = l.dense(i, "an activation's backward")?;
                        let dy = d.ptr(Act::ActOut);
                        let t = self.target(d, Act::Up)?;
                        if t.1 != 0.0 || t.2 != 0 {
                            return Err(unsupported(format!(
                                "layer {i}: the MLP projection has other readers"
                            )));
                        }
                        k.act_bwd(dt, act, t.0, 0, dy, b.h, 0, n, hidden, hw)?;
                        t.0
                    }
                };
                self.proj_in_bwd(i, kn, d, dh)
            }
            Fusion::Attention => {
                let (q, kk, v) = self.qkv_views(l, b.qkv);
                let (dq, dk, dv) = self.qkv_views(l, bf.dqkv);
                // The layer above's q/k/v weight gradient may still read it on the branch.
                self.claim(bf.dqkv)?;
                let mut shape = self.attn_shape(l);
                shape.ldo = l.od;
                self.attention_bwd(
                    i,
                    &shape,
                    (dq, dk, dv),
                    (bf.dq_acc, bf.delta),
                    d.ptr(out),
                    b.atty,
                    b.lse,
                    (q, kk, v),
                )?;
                for &a in &kn.inputs {
                    d.set(a, Grad::Own(bf.dqkv));
                }
                Ok(())
            }
            Fusion::MlaQ | Fusion::MlaKv | Fusion::MlaSplit => self.mla_bwd(i, kn, d),
            Fusion::QkvRope => {
                self.qkv_rope_bwd(i)?;
                let x = kn.inputs[0];
                let xb = self.act_buf(i, x);
                self.wgrad(Some(i), [bf.dqkv, xb], || {
                    self.mm_grad_bias(
                        l.width,
                        c,
                        n,
                        bf.dqkv,
                        l.width,
                        xb,
                        c,
                        self.p.g(&p("attn.q.weight")),
                        self.p.g(&p("attn.q.bias")),
                    )
                })?;
                let t = self.target(d, x)?;
                let wt = self.p.w(&p("attn.q.weight"))?;
                self.mm(n, c, l.width, bf.dqkv, l.width, wt, c, t.0, c, t.1)?;
                self.finish(t, c)
            }
            Fusion::Moe => {
                let dy = d.ptr(Act::MlpOut);
                let x = kn.inputs[0];
                let t = self.target(d, x)?;
                if t.1 != 0.0 {
                    return Err(unsupported(format!(
                        "layer {i}: the MoE block's input has another reader after it"
                    )));
                }
                self.moe_bwd(i, self.act_buf(i, x), dy, t.0)?;
                self.finish(t, c)
            }
        }
    }

    /// d(`act`) receives `src` unchanged (a residual add's gradient): an alias when it had
    /// nothing, else added in.
    fn pass(&self, d: &mut Grads, act: Act, src: DevPtr) -> Result<()> {
        match d.get(act) {
            Grad::None => d.set(act, Grad::Alias(src)),
            Grad::Own(p) => self.k.add(self.dt, p, p, src, self.s.n * self.s.c)?,
            Grad::Alias(x) => {
                let p = self.fresh(d, act)?;
                self.k.add(self.dt, p, x, src, self.s.n * self.s.c)?;
                d.set(act, Grad::Own(p));
            }
        }
        Ok(())
    }

    /// In `dqkv`: the query temperature's, RoPE's and the qk-norms' backward, in the reverse of
    /// the forward's order (the q/k/v projection's input side of attention's backward).
    fn qkv_rope_bwd(&self, i: usize) -> Result<()> {
        let l = &self.cfg[i];
        let bf = self.buf;
        if let Some(t) = &l.temperature {
            let (n, seq) = (self.s.n, self.s.seq);
            self.k
                .attn_qscale(self.dt, bf.dqkv, n, seq, l.qd, l.width, t)?;
        }
        if l.qk.is_some_and(|q| q.after_rope) {
            self.qk_norms_bwd(i)?;
            self.rope(l, bf.dqkv, true)
        } else {
            self.rope(l, bf.dqkv, true)?;
            self.qk_norms_bwd(i)
        }
    }

    /// In `dqkv`: the qk-norms' backward and their weight gradients.
    fn qk_norms_bwd(&self, i: usize) -> Result<()> {
        let (k, dt, es, n) = (self.k, self.dt, self.es, self.s.n);
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let bf = self.buf;
        let p = |s: &str| Self::pname(i, s);
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
                bf.reduce,
            )?;
            k.copy2d(dt, at, l.width, bf.qk_b, part.cols, n, part.cols)?;
        }
        Ok(())
    }
}

/// Where one activation's gradient is while a layer runs backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grad {
    /// Nothing received yet.
    None,
    /// Equal to a buffer another gradient owns (a residual add passes its gradient on).
    Alias(DevPtr),
    /// Accumulated in this buffer.
    Own(DevPtr),
}

/// Every activation's gradient during one layer's backward, and the two stream-gradient buffers
/// the residual stream's gradients rotate through (d(layer output) arrives in one of them).
pub(super) struct Grads {
    d: [Grad; N_ACTS],
    stream: [DevPtr; 2],
}

impl Grads {
    fn new(stream: [DevPtr; 2]) -> Grads {
        Grads {
            d: [Grad::None; N_ACTS],
            stream,
        }
    }
    fn get(&self, a: Act) -> Grad {
        self.d[a as usize]
    }
    fn set(&mut self, a: Act, g: Grad) {
        self.d[a as usize] = g;
    }
    /// The buffer holding d(`a`) (0 when none).
    fn ptr(&self, a: Act) -> DevPtr {
        match self.get(a) {
            Grad::None => 0,
            Grad::Alias(p) | Grad::Own(p) => p,
        }
    }
    fn in_use(&self, p: DevPtr) -> bool {
        self.d
            .iter()
            .any(|g| matches!(g, Grad::Alias(x) | Grad::Own(x) if *x == p))
    }
    fn free_stream(&self) -> Option<DevPtr> {
        self.stream.iter().copied().find(|&p| !self.in_use(p))
    }
}
