//! Latent attention (DeepSeek-V2/V3) in the trainer: the forward and backward of a layer's three
//! latent attention kernels ([`Fusion::MlaQ`], [`Fusion::MlaKv`], [`Fusion::MlaSplit`]), which
//! produce the `[q; k; v]` buffer attention reads (`q` and `k` of `nope + rope` per head, `v` of
//! the value width) as the CPU executor's `exec::forward` and `ops::mla` do:
//! - `MlaQ`: `q_latent = x W_qa^T (+ b)`, `q_latent_norm = norm(q_latent)`, `q = q_latent_norm
//!   W_qb^T` (or `q = x W_q^T` without a query latent), straight into the query columns;
//! - `MlaKv`: `kv_latent = x W_kva^T (+ b)` (`[n, kv_rank + rope]`: the latent, then the shared
//!   rotary key before RoPE), `kv_latent_norm = norm(kv_latent[:, :kv_rank])` (through a
//!   contiguous copy), `kv = kv_latent_norm W_kvb^T` into the `mla_kv` scratch;
//! - `MlaSplit`: the per-head keys (`[kv_h[:nope]; k_pe]`) and values (`kv_h[nope:]`), then RoPE
//!   in place on the rope columns of every query and key head (rotating the shared key once per
//!   head gives each head the same bits as rotating it once). (The DSL refuses a query
//!   temperature with latent attention.)
//!
//! The backward runs the transposes in reverse: RoPE's transpose on the rope columns, the merge
//! (`dkv`, and the rotary key's gradient summed over the heads in head order: deterministic),
//! then the up-projections, norms and down-projections, each down-projection accumulating into
//! d(attention input). `q`, `kv` and `k_rope` are never kept (the planner's `needed` is false
//! for them): `q` lives in `[q; k; v]`'s query columns, so in recomputation the query
//! up-projection runs only when that unit is recomputed too, and stages whose outputs were kept
//! are skipped.

use super::super::error::Result;
use super::super::gemm::RowMajorGemm;
use super::super::gpu::DevPtr;
use super::backward::Grads;
use super::config::{LayerCfg, MlaCfg};
use super::{Step, unsupported};
use modelspec_dsl::program::{Act, Fusion, Kernel};

impl Step<'_> {
    /// Layer i's latent attention sizes (an error for a layer without latent attention).
    fn mla_cfg(&self, i: usize) -> Result<MlaCfg> {
        self.cfg[i].mla.ok_or_else(|| {
            unsupported(format!(
                "layer {i}: a latent attention kernel without latent attention"
            ))
        })
    }

    /// `c[n, out]` (row stride `ldc`) `= a[n, inp] w[out, inp]^T`, no bias.
    fn mla_proj(
        &self,
        (out, inp): (usize, usize),
        a: DevPtr,
        w: DevPtr,
        c: DevPtr,
        ldc: usize,
    ) -> Result<()> {
        let g = RowMajorGemm {
            ldc,
            ..RowMajorGemm::linear(self.s.n, out, inp)
        };
        // SAFETY: every operand is a view into this trainer's arenas, sized at construction.
        unsafe { self.gemm.run(self.dt, &g, a, w, c, 1.0, 0.0) }
    }

    /// RoPE (or its transpose) on the rope columns of every query and key head of a `[q; k; v]`
    /// shaped buffer: q's and k's heads are `2·heads` adjacent heads of `nope + rope`.
    fn mla_rope(&self, l: &LayerCfg, m: &MlaCfg, qkv: DevPtr, backward: bool) -> Result<()> {
        let Some(r) = l.rope.map(|j| &self.ropes[j]) else {
            return Ok(());
        };
        self.k.rope(
            self.dt,
            qkv + m.dims.nope as u64 * self.es,
            r.cos.ptr(),
            r.sin.ptr(),
            self.s.n,
            self.s.seq,
            2 * l.heads,
            l.head_dim,
            l.width,
            r.rot,
            r.interleaved,
            backward,
        )
    }

    /// A latent's norm over `n` rows of `width`: `y = norm(x)` with its statistics.
    #[allow(clippy::too_many_arguments)]
    fn mla_norm_fwd(
        &self,
        i: usize,
        m: &MlaCfg,
        name: &str,
        (y, rstd, mean): (DevPtr, DevPtr, DevPtr),
        x: DevPtr,
        width: usize,
    ) -> Result<()> {
        let p = |s: &str| Self::pname(i, &format!("{name}.{s}"));
        self.k.norm_fwd(
            self.dt,
            m.norm.kind,
            y,
            0,
            rstd,
            mean,
            x,
            0,
            self.p.wo(&p("weight")),
            self.p.wo(&p("bias")),
            self.s.n,
            width,
            m.norm.eps,
            m.norm.offset,
        )
    }

    /// A latent's norm backward: `dx = norm'(dy)` (written) and its weight/bias gradients.
    #[allow(clippy::too_many_arguments)]
    fn mla_norm_bwd(
        &self,
        i: usize,
        m: &MlaCfg,
        name: &str,
        (dx, dy, x): (DevPtr, DevPtr, DevPtr),
        (rstd, mean): (DevPtr, DevPtr),
        width: usize,
    ) -> Result<()> {
        let p = |s: &str| Self::pname(i, &format!("{name}.{s}"));
        let (k, dt, n) = (self.k, self.dt, self.s.n);
        k.norm_bwd(
            dt,
            m.norm.kind,
            dx,
            dy,
            x,
            self.p.wo(&p("weight")),
            rstd,
            mean,
            0,
            n,
            width,
            m.norm.offset,
        )?;
        k.norm_dw(
            dt,
            m.norm.kind,
            self.p.g(&p("weight")),
            self.p.g(&p("bias")),
            dy,
            x,
            rstd,
            mean,
            n,
            width,
            self.buf.reduce,
        )
    }

    /// One latent attention kernel of layer i (see the module docs); with `recompute`, the stages
    /// whose outputs the layer kept are skipped.
    pub(super) fn mla_fwd(&self, i: usize, kn: &Kernel, recompute: bool) -> Result<()> {
        let m = self.mla_cfg(i)?;
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let run = &self.run[i];
        let (dt, n, c, es) = (self.dt, self.s.n, self.s.c, self.es);
        let p = |s: &str| Self::pname(i, s);
        let redo = |a: Act| !recompute || !run.keep[a as usize];
        // `q` and `kv` only feed the per-head layout, which reruns with the `[q; k; v]` unit.
        let layout = redo(run.lp.q_final);
        match kn.fusion {
            Fusion::MlaQ => {
                let x = self.act_buf(i, kn.inputs[0]);
                let (q_in, width, w) = match m.q_rank {
                    Some(r) => {
                        if redo(Act::QLatent) {
                            let (w, bias) = (p("attn.q_a.weight"), p("attn.q_a.bias"));
                            self.linear(n, r, c, x, self.p.w(&w)?, self.p.wo(&bias), b.q_lat)?;
                        }
                        if redo(Act::QLatentNorm) {
                            let out = (b.q_latn, b.q_lat_rstd, b.q_lat_mean);
                            self.mla_norm_fwd(i, &m, "attn.q_a_norm", out, b.q_lat, r)?;
                        }
                        (b.q_latn, r, "attn.q_b.weight")
                    }
                    None => (x, c, "attn.q.weight"),
                };
                if !layout {
                    return Ok(());
                }
                let w = self.p.w(&p(w))?;
                self.mla_proj((l.qd, width), q_in, w, b.qkv, l.width)
            }
            Fusion::MlaKv => {
                let x = self.act_buf(i, kn.inputs[0]);
                let (r, lw) = (m.kv_rank, m.kv_rank + m.dims.rope);
                if redo(Act::KvLatent) {
                    let (w, bias) = (p("attn.kv_a.weight"), p("attn.kv_a.bias"));
                    self.linear(n, lw, c, x, self.p.w(&w)?, self.p.wo(&bias), b.kv_lat)?;
                }
                if redo(Act::KvLatentNorm) {
                    // The norm reads the latent's columns as contiguous rows.
                    self.k.copy2d(dt, self.buf.mla_a, r, b.kv_lat, lw, n, r)?;
                    let out = (b.kv_latn, b.kv_lat_rstd, b.kv_lat_mean);
                    self.mla_norm_fwd(i, &m, "attn.kv_a_norm", out, self.buf.mla_a, r)?;
                }
                if !layout {
                    return Ok(());
                }
                let w = self.p.w(&p("attn.kv_b.weight"))?;
                let kv_w = m.kv_width();
                self.mla_proj((kv_w, r), b.kv_latn, w, self.buf.mla_kv, kv_w)
            }
            Fusion::MlaSplit => {
                let (_, kk, v) = self.qkv_views(l, b.qkv);
                let pe = b.kv_lat + m.kv_rank as u64 * es;
                self.k.mla_split(
                    dt,
                    &m.dims,
                    (kk, v, l.width),
                    self.buf.mla_kv,
                    (pe, m.kv_rank + m.dims.rope),
                    n,
                )?;
                self.mla_rope(l, &m, b.qkv, false)
            }
            other => Err(unsupported(format!(
                "layer {i}: {other:?} is not a latent attention kernel"
            ))),
        }
    }

    /// The backward of one latent attention kernel of layer i: `MlaSplit` turns d(q, k, v) in
    /// `dqkv` into d(q) (in place), d(kv) (`mla_kv`) and the rotary key's gradient (the tail
    /// columns of `mla_a`, d(kv_latent)); `MlaKv` and `MlaQ` finish their latents and add into
    /// d(attention input).
    pub(super) fn mla_bwd(&self, i: usize, kn: &Kernel, d: &mut Grads) -> Result<()> {
        let m = self.mla_cfg(i)?;
        let l = &self.cfg[i];
        let b = &self.buf.layers[i];
        let bf = self.buf;
        let (dt, n, es) = (self.dt, self.s.n, self.es);
        let p = |s: &str| Self::pname(i, s);
        let (r, lw) = (m.kv_rank, m.kv_rank + m.dims.rope);
        match kn.fusion {
            Fusion::MlaSplit => {
                self.mla_rope(l, &m, bf.dqkv, true)?;
                let (_, dk, dv) = self.qkv_views(l, bf.dqkv);
                let dpe = bf.mla_a + r as u64 * es;
                self.k
                    .mla_merge(dt, &m.dims, bf.mla_kv, (dpe, lw), (dk, dv, l.width), n)
            }
            Fusion::MlaKv => {
                let kv_w = m.kv_width();
                let wb = self.p.w(&p("attn.kv_b.weight"))?;
                self.mm_grad(
                    kv_w,
                    r,
                    n,
                    bf.mla_kv,
                    kv_w,
                    b.kv_latn,
                    r,
                    self.p.g(&p("attn.kv_b.weight")),
                    0.0,
                )?;
                // d(kv_latent_norm) into mla_b; the latent's columns (the norm's input) into
                // mla_c; d(latent) into mla_kv (free now), then into mla_a's first columns.
                self.mm(n, r, kv_w, bf.mla_kv, kv_w, wb, r, bf.mla_b, r, 0.0)?;
                self.k.copy2d(dt, bf.mla_c, r, b.kv_lat, lw, n, r)?;
                let stats = (b.kv_lat_rstd, b.kv_lat_mean);
                let io = (bf.mla_kv, bf.mla_b, bf.mla_c);
                self.mla_norm_bwd(i, &m, "attn.kv_a_norm", io, stats, r)?;
                self.k.copy2d(dt, bf.mla_a, lw, bf.mla_kv, r, n, r)?;
                self.mla_down_bwd(i, kn, d, "attn.kv_a", bf.mla_a, lw)
            }
            Fusion::MlaQ => match m.q_rank {
                Some(qr) => {
                    let wb = self.p.w(&p("attn.q_b.weight"))?;
                    self.mm_grad(
                        l.qd,
                        qr,
                        n,
                        bf.dqkv,
                        l.width,
                        b.q_latn,
                        qr,
                        self.p.g(&p("attn.q_b.weight")),
                        0.0,
                    )?;
                    self.mm(n, qr, l.qd, bf.dqkv, l.width, wb, qr, bf.mla_b, qr, 0.0)?;
                    let stats = (b.q_lat_rstd, b.q_lat_mean);
                    let io = (bf.mla_a, bf.mla_b, b.q_lat);
                    self.mla_norm_bwd(i, &m, "attn.q_a_norm", io, stats, qr)?;
                    self.mla_down_bwd(i, kn, d, "attn.q_a", bf.mla_a, qr)
                }
                None => self.mla_down_bwd(i, kn, d, "attn.q", bf.dqkv, l.width),
            },
            other => Err(unsupported(format!(
                "layer {i}: {other:?} is not a latent attention kernel"
            ))),
        }
    }

    /// A projection from the attention input, backward: `dy` `[n, width]` (row stride `ld`;
    /// `width` is the projection's output width: the weight's rows) gives the weight's gradient,
    /// the bias's, and adds `dy W` into d(attention input).
    fn mla_down_bwd(
        &self,
        i: usize,
        kn: &Kernel,
        d: &mut Grads,
        name: &str,
        dy: DevPtr,
        ld: usize,
    ) -> Result<()> {
        let (n, c) = (self.s.n, self.s.c);
        let m = self.mla_cfg(i)?;
        let width = match name {
            "attn.kv_a" => m.kv_rank + m.dims.rope,
            "attn.q_a" => m.q_rank.unwrap_or(0),
            _ => self.cfg[i].qd,
        };
        let p = |s: &str| Self::pname(i, &format!("{name}.{s}"));
        let x = kn.inputs[0];
        self.mm_grad_bias(
            width,
            c,
            n,
            dy,
            ld,
            self.act_buf(i, x),
            c,
            self.p.g(&p("weight")),
            self.p.g(&p("bias")),
        )?;
        let t = self.target(d, x)?;
        let w = self.p.w(&p("weight"))?;
        self.mm(n, c, width, dy, ld, w, c, t.0, c, t.1)?;
        self.finish(t, c)
    }
}
