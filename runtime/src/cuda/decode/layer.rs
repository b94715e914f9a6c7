//! One layer of a decode call: its configuration, read once from its IR row, and the launch
//! sequence of each named fusion of its program ([`LayerProgram::kernels`]) on the call's new
//! rows. This is the one place that says what a decode step launches for a fusion; the layer's
//! structure (which kernels, in which order, reading what) comes from the program.

use modelspec_dsl::ModelSpec;

use super::Pass;
use super::kernels::CachedAttn;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::DevPtr;
use crate::cuda::layer::LayerCfg;
use crate::program::{Act, Fusion, Kernel, LayerProgram};

/// Everything a decode call needs to run layer `index`: its configuration (the trainer's
/// [`LayerCfg`]) and its program.
#[derive(Debug, Clone)]
pub(super) struct LayerPlan {
    pub index: usize,
    pub lp: LayerProgram,
    pub kernels: Vec<Kernel>,
    /// Sizes, attention options, norms and FFN; `rope` and `alibi` index the decoder's tables.
    pub cfg: LayerCfg,
}

impl LayerPlan {
    /// Layer `i` of `spec`; `rope` and `alibi` index the decoder's tables.
    pub fn new(spec: &ModelSpec, i: usize, rope: Option<usize>, alibi: Option<usize>) -> Self {
        let lp = LayerProgram::structure(&spec.layers[i]);
        LayerPlan {
            index: i,
            kernels: lp.kernels(),
            cfg: LayerCfg::new(&spec.layers[i], &lp, rope, alibi),
            lp,
        }
    }

    /// `layers.{i}.{name}`.
    pub fn pname(&self, name: &str) -> String {
        format!("layers.{}.{name}", self.index)
    }
}

/// Whether a decode call has a buffer for activation `a` (every activation of a dense block;
/// a mixture-of-experts block keeps its internals to itself).
fn placed(a: Act) -> bool {
    matches!(
        a,
        Act::Input
            | Act::AttnNorm
            | Act::Q
            | Act::K
            | Act::V
            | Act::QNormed
            | Act::KNormed
            | Act::QRope
            | Act::KRope
            | Act::Attn
            | Act::AttnOut
            | Act::AttnPostNorm
            | Act::ResidMid
            | Act::MlpNorm
            | Act::Gate
            | Act::Up
            | Act::ActOut
            | Act::MlpOut
            | Act::MlpPostNorm
    )
}

/// Why a decode call cannot run layer program `lp`: an activation outside what [`Pass::run`]
/// launches (named, with its layer), or `None`.
pub(super) fn unsupported_layer(lp: &LayerProgram) -> Option<String> {
    for k in lp.kernels() {
        // A mixture-of-experts block and latent attention's kernels keep their internals to
        // themselves (`cuda::moe`, `decode::mla`).
        if matches!(
            k.fusion,
            Fusion::Moe | Fusion::MlaQ | Fusion::MlaKv | Fusion::MlaSplit
        ) {
            continue;
        }
        if k.fusion == Fusion::QkvRope && k.outputs.get(..3) != Some(&[Act::Q, Act::K, Act::V][..])
        {
            return Some(format!(
                "attention without q/k/v projections in layer {}",
                lp.index
            ));
        }
        if let Some(a) = k.outputs.iter().chain(&k.inputs).find(|a| !placed(**a)) {
            return Some(format!(
                "the activation `{}` in layer {}",
                a.name(),
                lp.index
            ));
        }
    }
    None
}

fn bad(layer: usize, why: String) -> CudaError {
    CudaError::BadLaunch {
        kernel: format!("gpu decoder (layer {layer})"),
        why,
    }
}

impl Pass<'_> {
    /// Where activation `a` of layer `l` lives for this call's rows, and its row stride.
    pub(super) fn at(&self, l: &LayerPlan, a: Act) -> Result<(DevPtr, usize)> {
        let b = &self.acts;
        let es = self.es;
        let d = self.d;
        let col = |p: DevPtr, c: usize| p + c as u64 * es;
        let (hidden, hw) = l.cfg.mlp_widths();
        let c = &l.cfg;
        Ok(match a {
            Act::Input => (b.x, d),
            Act::AttnNorm => (b.attn_norm, d),
            Act::Q | Act::QNormed | Act::QRope => (b.qkv, c.width),
            Act::K | Act::KNormed | Act::KRope => (col(b.qkv, c.qd), c.width),
            Act::V => (col(b.qkv, c.qd + c.kvd), c.width),
            Act::Attn => (b.attn, c.od),
            Act::AttnOut => (b.attn_out, d),
            Act::AttnPostNorm => (b.attn_post, d),
            Act::ResidMid => (b.resid_mid, d),
            Act::MlpNorm => (b.mlp_norm, d),
            Act::Gate => (b.h, hw),
            Act::Up if c.gated() => (col(b.h, hidden), hw),
            Act::Up => (b.h, hw),
            Act::ActOut => (b.act, hidden),
            Act::MlpOut => (b.mlp_out, d),
            Act::MlpPostNorm => (b.mlp_post, d),
            other => {
                return Err(bad(
                    l.index,
                    format!(
                        "`{}` is internal to a mixture-of-experts block",
                        other.name()
                    ),
                ));
            }
        })
    }

    pub(super) fn ptr(&self, l: &LayerPlan, a: Act) -> Result<DevPtr> {
        Ok(self.at(l, a)?.0)
    }

    /// A block norm over rows of d_model: `y = norm(x (+ res))`, the sum into `r_out` when not 0.
    #[allow(clippy::too_many_arguments)]
    fn block_norm(
        &self,
        l: &LayerPlan,
        prefix: &str,
        y: DevPtr,
        r_out: DevPtr,
        x: DevPtr,
        res: DevPtr,
    ) -> Result<()> {
        let n = &l.cfg.norm;
        self.k.norm_fwd(
            self.dt,
            n.kind,
            y,
            r_out,
            self.acts.rstd,
            self.acts.mean,
            x,
            res,
            self.w.wo(&l.pname(&format!("{prefix}.weight"))),
            self.w.wo(&l.pname(&format!("{prefix}.bias"))),
            self.rows.n,
            self.d,
            n.eps,
            n.offset,
        )
    }

    /// `C[n, out] = A[n, in] W[out, in]^T (+ bias)` on this call's rows.
    pub(super) fn linear(
        &self,
        out: usize,
        inp: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        // SAFETY: every operand is a view into the decoder's weights or arena, sized for this
        // call's rows.
        unsafe {
            self.gemm
                .linear(self.dt, self.rows.n, out, inp, a, w, bias, c)
        }
    }

    /// Runs one fusion of layer `l` on the call's rows: the launch sequence of each [`Fusion`].
    pub(super) fn run(&self, l: &LayerPlan, k: &Kernel) -> Result<()> {
        let (kn, dt, n, d) = (self.k, self.dt, self.rows.n, self.d);
        let first = k.outputs[0];
        match k.fusion {
            // y = norm(x): the attention norm, a parallel block's own MLP norm, the post-norms.
            Fusion::Norm => {
                let x = self.ptr(l, k.inputs[0])?;
                self.block_norm(l, first.name(), self.ptr(l, first)?, 0, x, 0)
            }
            // resid_mid = input + attn_branch, and the MLP norm of the sum when it follows.
            Fusion::ResidualNorm => {
                let sum = self.ptr(l, first)?;
                let x = self.ptr(l, Act::Input)?;
                let branch = self.ptr(l, l.lp.attn_branch)?;
                match k.outputs.get(1) {
                    Some(&normed) => {
                        self.block_norm(l, normed.name(), self.ptr(l, normed)?, sum, x, branch)
                    }
                    None => kn.add(dt, sum, x, branch, n * d),
                }
            }
            // One GEMM into [q; k; v], then the qk-norms and RoPE in the program's order.
            Fusion::QkvRope => {
                let x = self.ptr(l, k.inputs[0])?;
                self.linear(
                    l.cfg.width,
                    d,
                    x,
                    self.w.w(&l.pname("attn.q.weight"))?,
                    self.w.wo(&l.pname("attn.q.bias")),
                    self.acts.qkv,
                )?;
                for &a in &k.outputs[3..] {
                    match a {
                        Act::QNormed | Act::KNormed => self.qk_norm(l, a)?,
                        Act::QRope | Act::KRope => self.rope(l, a)?,
                        other => {
                            return Err(bad(l.index, format!("`{}` in q/k/v", other.name())));
                        }
                    }
                }
                Ok(())
            }
            // Latent attention: its cache holds latents, expanded for each call.
            Fusion::Attention if l.cfg.mla.is_some() => self.mla_attention(l, self.ptr(l, first)?),
            // Append the new keys and values to the cache, then each row attends over it.
            Fusion::Attention => {
                let (kc, vc) = self.cache.layer(l.index);
                let c = &l.cfg;
                let q = self.ptr(l, l.lp.q_final)?;
                let kk = self.ptr(l, l.lp.k_final)?;
                let v = self.ptr(l, Act::V)?;
                self.dk.kv_store(
                    dt,
                    (kc, vc),
                    (kk, v),
                    &self.rows,
                    c.kv_heads,
                    c.head_dim,
                    c.width,
                    self.cache.capacity,
                )?;
                let a = CachedAttn {
                    heads: c.heads,
                    kv_heads: c.kv_heads,
                    head_dim: c.head_dim,
                    v_head_dim: c.head_dim,
                    ldq: c.width,
                    ldo: c.qd,
                    capacity: self.cache.capacity,
                    scale: c.scale,
                    softcap: c.softcap,
                    window: c.window,
                    chunk: c.chunk,
                    alibi: c.alibi.map_or(0, |j| self.alibi[j].ptr()),
                    sinks: if c.sinks {
                        self.w.w(&l.pname("attn.sinks"))?
                    } else {
                        0
                    },
                    temperature: c.temperature,
                };
                self.dk
                    .attn(dt, &a, self.ptr(l, first)?, q, (kc, vc), &self.rows)
            }
            // One GEMM: the attention output, a dense MLP's down projection, or its input
            // projections into [gate; up] (or up); an ungated MLP's `up` and `act` (LinearAct)
            // as the GEMM and one activation pass (the trainer folds a GELU-tanh into the
            // GEMM's epilogue).
            Fusion::Linear | Fusion::GateUp | Fusion::LinearAct => {
                let pj = l.cfg.projection(l.index, k, d)?;
                let y = self.ptr(l, first)?;
                self.linear(
                    pj.out,
                    pj.inp,
                    self.ptr(l, k.inputs[0])?,
                    self.w.w(&l.pname(&format!("{}.weight", pj.prefix)))?,
                    self.w.wo(&l.pname(&format!("{}.bias", pj.prefix))),
                    y,
                )?;
                if k.fusion != Fusion::LinearAct {
                    return Ok(());
                }
                let (act, hidden, hw) = l.cfg.dense(l.index, "an activation")?;
                kn.act_fwd(dt, act, self.acts.act, y, 0, n, hidden, hw)
            }
            // act(gate) (* up) in one pass.
            Fusion::Activation => {
                let (act, hidden, hw) = l.cfg.dense(l.index, "an activation")?;
                let up = if act.is_gated() {
                    self.acts.h + hidden as u64 * self.es
                } else {
                    0
                };
                kn.act_fwd(dt, act, self.acts.act, self.acts.h, up, n, hidden, hw)
            }
            // Latent attention's queries, latents and cache appends (`decode::mla`).
            Fusion::MlaQ | Fusion::MlaKv | Fusion::MlaSplit => self.mla(l, k),
            // The mixture-of-experts block, through `cuda::moe` (no aux loss at inference).
            Fusion::Moe => {
                let moe = self
                    .moe
                    .get(l.index)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| bad(l.index, "no mixture-of-experts block was built".into()))?;
                let w = |name: &str| self.w.wo(&l.pname(name));
                moe.forward(
                    self.gemm,
                    &w,
                    self.ptr(l, l.lp.mlp_in)?,
                    self.ptr(l, Act::MlpOut)?,
                    self.acts.moe_saved,
                    self.acts.moe_scratch,
                    0,
                )
            }
        }
    }

    /// A qk-norm on the q or k columns of `[q; k; v]`: copied out to contiguous rows (per head:
    /// rows of head_dim), normalised, copied back.
    fn qk_norm(&self, l: &LayerPlan, a: Act) -> Result<()> {
        let c = &l.cfg;
        let qk =
            c.qk.ok_or_else(|| bad(l.index, "a qk-norm node without qk_norm".into()))?;
        let n = self.rows.n;
        let ((q_rows, q_width), (k_rows, k_width)) = c.qk_rows(n);
        let (rows, width, cols, prefix, at) = if a == Act::QNormed {
            (q_rows, q_width, c.qd, "attn.q_norm", self.ptr(l, Act::Q)?)
        } else {
            (k_rows, k_width, c.kvd, "attn.k_norm", self.ptr(l, Act::K)?)
        };
        let (kn, dt, raw, out) = (self.k, self.dt, self.acts.qk_raw, self.acts.qk_out);
        kn.copy2d(dt, raw, cols, at, c.width, n, cols)?;
        kn.norm_fwd(
            dt,
            qk.norm.kind,
            out,
            0,
            self.acts.rstd,
            self.acts.mean,
            raw,
            0,
            self.w.wo(&l.pname(&format!("{prefix}.weight"))),
            self.w.wo(&l.pname(&format!("{prefix}.bias"))),
            rows,
            width,
            qk.norm.eps,
            qk.norm.offset,
        )?;
        kn.copy2d(dt, at, c.width, out, cols, n, cols)
    }

    /// RoPE on the q or k columns of `[q; k; v]`, in place, at each row's position.
    fn rope(&self, l: &LayerPlan, a: Act) -> Result<()> {
        let c = &l.cfg;
        let t = c
            .rope
            .and_then(|j| self.ropes.get(j))
            .ok_or_else(|| bad(l.index, "a RoPE node without a RoPE table".into()))?;
        let (x, heads) = if a == Act::QRope {
            (self.ptr(l, Act::Q)?, c.heads)
        } else {
            (self.ptr(l, Act::K)?, c.kv_heads)
        };
        self.dk.rope(
            self.dt,
            x,
            (t.cos.ptr(), t.sin.ptr()),
            &self.rows,
            heads,
            c.head_dim,
            c.width,
            t.rot,
            t.interleaved,
        )
    }

    /// The layer's output into its input buffer (the next layer's input): `resid_mid +
    /// mlp_branch`, or in a parallel block `(input + attn_branch) + mlp_branch`, summed in the CPU
    /// executor's order.
    pub(super) fn output(&self, l: &LayerPlan) -> Result<()> {
        let (kn, dt, n, d) = (self.k, self.dt, self.rows.n, self.d);
        let x = self.ptr(l, Act::Input)?;
        let mlp = self.ptr(l, l.lp.mlp_branch)?;
        if l.lp.parallel {
            // resid_mid is no node of a parallel block: its buffer holds the partial sum.
            let tmp = self.acts.resid_mid;
            kn.add(dt, tmp, x, self.ptr(l, l.lp.attn_branch)?, n * d)?;
            kn.add(dt, x, tmp, mlp, n * d)
        } else {
            kn.add(dt, x, self.ptr(l, Act::ResidMid)?, mlp, n * d)
        }
    }
}
