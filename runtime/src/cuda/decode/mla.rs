//! Latent attention (DeepSeek-V2/V3) in a decode call. The cache keeps what DeepSeek's decoders
//! and the CPU's `exec::decode` keep per position: the normalised key/value latent (`kv_rank`
//! wide) and the rotated shared key (`rope` wide). Each call:
//! - `MlaQ`: the queries of the new rows (query latent, its norm and the up-projection, or the
//!   direct projection) into `[q; k; v]`'s query columns;
//! - `MlaKv`: the joint latent of the new rows and its norm;
//! - `MlaSplit`: RoPE at the rows' positions on the queries' rope columns and on the shared key,
//!   then both latent and key appended to the cache;
//! - attention: the cached latents of every sequence up to the longest one's length expanded
//!   through `kv_b` into per-head keys (`[kv_h[:nope]; k_pe]`) and values (as transformers and
//!   the CPU decoder do), then the decoder's attention over them (value width `v`).

use super::Pass;
use super::kernels::CachedAttn;
use super::layer::LayerPlan;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gemm::RowMajorGemm;
use crate::cuda::gpu::DevPtr;
use crate::cuda::layer::MlaCfg;
use crate::program::{Fusion, Kernel};

fn bad(layer: usize, why: String) -> CudaError {
    CudaError::BadLaunch {
        kernel: format!("gpu decoder, latent attention (layer {layer})"),
        why,
    }
}

impl Pass<'_> {
    /// Layer `l`'s latent attention sizes (an error for a layer without).
    fn mla_cfg(&self, l: &LayerPlan) -> Result<MlaCfg> {
        l.cfg
            .mla
            .ok_or_else(|| bad(l.index, "a latent attention kernel without it".into()))
    }

    /// `c[m, out]` (row stride `ldc`) `= a[m, inp] w[out, inp]^T`, no bias.
    #[allow(clippy::too_many_arguments)]
    fn mla_proj(
        &self,
        (m, out, inp): (usize, usize, usize),
        a: DevPtr,
        w: DevPtr,
        c: DevPtr,
        ldc: usize,
    ) -> Result<()> {
        let g = RowMajorGemm {
            ldc,
            ..RowMajorGemm::linear(m, out, inp)
        };
        // SAFETY: every operand is a view into the decoder's weights, arena or cache, sized for
        // this call's rows (or the cache's positions).
        unsafe { self.gemm.run(self.dt, &g, a, w, c, 1.0, 0.0) }
    }

    /// A latent's norm over the call's rows: `y = norm(x)`, `width` wide.
    fn mla_norm(
        &self,
        l: &LayerPlan,
        m: &MlaCfg,
        name: &str,
        y: DevPtr,
        x: DevPtr,
        width: usize,
    ) -> Result<()> {
        self.k.norm_fwd(
            self.dt,
            m.norm.kind,
            y,
            0,
            self.acts.rstd,
            self.acts.mean,
            x,
            0,
            self.w.wo(&l.pname(&format!("{name}.weight"))),
            self.w.wo(&l.pname(&format!("{name}.bias"))),
            self.rows.n,
            width,
            m.norm.eps,
            m.norm.offset,
        )
    }

    /// One latent attention kernel of layer `l` on the call's rows (see the module docs).
    pub(super) fn mla(&self, l: &LayerPlan, k: &Kernel) -> Result<()> {
        let m = self.mla_cfg(l)?;
        let c = &l.cfg;
        let (dt, n, d, es) = (self.dt, self.rows.n, self.d, self.es);
        let a = self.acts;
        let (r, lw) = (m.kv_rank, m.kv_rank + m.dims.rope);
        match k.fusion {
            Fusion::MlaQ => {
                let x = self.ptr(l, k.inputs[0])?;
                let (q_in, width, w) = match m.q_rank {
                    Some(qr) => {
                        let (w, bias) = (l.pname("attn.q_a.weight"), l.pname("attn.q_a.bias"));
                        self.linear(qr, d, x, self.w.w(&w)?, self.w.wo(&bias), a.mla_a)?;
                        self.mla_norm(l, &m, "attn.q_a_norm", a.mla_b, a.mla_a, qr)?;
                        (a.mla_b, qr, "attn.q_b.weight")
                    }
                    None => (x, d, "attn.q.weight"),
                };
                let w = self.w.w(&l.pname(w))?;
                self.mla_proj((n, c.qd, width), q_in, w, a.qkv, c.width)
            }
            Fusion::MlaKv => {
                let x = self.ptr(l, k.inputs[0])?;
                let (w, bias) = (l.pname("attn.kv_a.weight"), l.pname("attn.kv_a.bias"));
                self.linear(lw, d, x, self.w.w(&w)?, self.w.wo(&bias), a.mla_a)?;
                // The norm reads the latent's columns as contiguous rows.
                self.k.copy2d(dt, a.mla_c, r, a.mla_a, lw, n, r)?;
                self.mla_norm(l, &m, "attn.kv_a_norm", a.mla_b, a.mla_c, r)
            }
            Fusion::MlaSplit => {
                let pe = a.mla_a + r as u64 * es;
                if let Some(t) = c.rope.and_then(|j| self.ropes.get(j)) {
                    let tables = (t.cos.ptr(), t.sin.ptr());
                    let q_rope = a.qkv + m.dims.nope as u64 * es;
                    let (rot, il) = (t.rot, t.interleaved);
                    self.dk.rope(
                        dt, q_rope, tables, &self.rows, c.heads, c.head_dim, c.width, rot, il,
                    )?;
                    self.dk
                        .rope(dt, pe, tables, &self.rows, 1, m.dims.rope, lw, rot, il)?;
                }
                self.dk.mla_store(
                    dt,
                    self.cache.layer(l.index),
                    (a.mla_b, r),
                    (pe, lw),
                    &self.rows,
                    (r, m.dims.rope),
                    self.cache.capacity,
                )
            }
            other => Err(bad(
                l.index,
                format!("{other:?} is not a latent attention kernel"),
            )),
        }
    }

    /// Latent attention over the cache into `o` `[n, heads·v]`: the cached latents expanded into
    /// per-head keys and values, then the decoder's attention.
    pub(super) fn mla_attention(&self, l: &LayerPlan, o: DevPtr) -> Result<()> {
        let m = self.mla_cfg(l)?;
        let c = &l.cfg;
        let cache = self.cache;
        let (lat, pe) = cache.layer(l.index);
        let (batch, cap, used) = (cache.batch, cache.capacity, self.used);
        let kv_w = m.kv_width();
        let wb = self.w.w(&l.pname("attn.kv_b.weight"))?;
        // One GEMM from the cache's start (aligned): the first `used` positions of a single
        // sequence, or every position of every sequence.
        let rows = if batch == 1 { used } else { batch * cap };
        self.mla_proj((rows, kv_w, m.kv_rank), lat, wb, cache.mla_kv, kv_w)?;
        self.dk.mla_expand(
            self.dt,
            (cache.mla_k, cache.mla_v),
            cache.mla_kv,
            pe,
            (batch, cap, used),
            &m.dims,
        )?;
        let attn = CachedAttn {
            heads: c.heads,
            kv_heads: c.heads,
            head_dim: c.head_dim,
            v_head_dim: m.dims.v,
            ldq: c.width,
            ldo: c.od,
            capacity: cap,
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
        let q = self.ptr(l, l.lp.q_final)?;
        self.dk
            .attn(self.dt, &attn, o, q, (cache.mla_k, cache.mla_v), &self.rows)
    }
}
