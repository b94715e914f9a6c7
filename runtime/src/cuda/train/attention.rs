//! Which attention kernels each layer runs, chosen once when the trainer is built: cuDNN's fused
//! flash attention ([`CudnnAttention`]) where it takes the layer's shape (bf16, no logit softcap,
//! no ALiBi, and a plan cuDNN accepts), else the own kernels ([`Kernels::attn_fwd`] /
//! [`Kernels::attn_bwd`]: tensor-core mma.sync, or the simple kernels for odd head dims). Both
//! paths read and write the same layouts (q/k/v as column views of the fused projection, f32
//! log-sum-exp `[B, H, T]`, the same dQ accumulator and delta scratch), so the choice changes no
//! buffer.
//!
//! On a cuDNN layer the own Hopper forward ([`Kernels::attn_fwd`] on a Hopper GPU) runs instead of
//! cuDNN's where it was the faster of the two on the layer's shape ([`CudnnAttention::
//! own_forward_faster`]: timed once a machine and persisted); cuDNN's backward follows either
//! forward (the same o and log-sum-exp).
//!
//! `MODELSPEC_ATTENTION` overrides the choice: `own` never uses cuDNN; `cudnn` requires it for
//! every layer and both passes (an error names the first layer it cannot take); unset or `auto`
//! takes it where it can.

use std::sync::Arc;

use super::config::LayerCfg;
use super::layout::Shape;
use super::{Step, unsupported};
use crate::cuda::Kernels;
use crate::cuda::cudnn::CudnnAttention;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, Gpu, GpuBuf};
use crate::cuda::ops::AttnShape;

/// The per-layer attention path and what cuDNN needs (its handle, plans and workspace).
pub(super) struct AttnPaths {
    cudnn: Option<Arc<CudnnAttention>>,
    /// Layer i runs cuDNN.
    on_cudnn: Vec<bool>,
    /// Layer i (on cuDNN) runs its forward on the own Hopper kernel, cuDNN's backward after it.
    own_fwd: Vec<bool>,
    workspace: Option<GpuBuf<u8>>,
    /// Why cuDNN is not used at all (`None` when some layer uses it or it was not wanted).
    why_not: Option<String>,
}

/// The attention shape of layer `l` for a batch shape `s`; `alibi` is the slope buffer's pointer
/// (0: none).
pub(super) fn layer_shape(l: &LayerCfg, s: &Shape, alibi: DevPtr) -> AttnShape {
    let mut a = AttnShape::dense(s.batch, s.seq, l.heads, l.kv_heads, l.head_dim);
    a.v_head_dim = l.od / l.heads.max(1);
    a.ldq = l.width;
    a.ldk = l.width;
    a.ldv = l.width;
    a.ldo = l.od;
    a.scale = l.scale;
    a.softcap = l.softcap;
    a.window = l.window;
    a.chunk = l.chunk;
    a.alibi = alibi;
    a
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Own,
    Auto,
    Cudnn,
}

fn wanted() -> Result<Want> {
    match std::env::var("MODELSPEC_ATTENTION").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Want::Auto),
        Ok("own") => Ok(Want::Own),
        Ok("cudnn") => Ok(Want::Cudnn),
        Ok(other) => Err(unsupported(format!(
            "MODELSPEC_ATTENTION={other:?}: expected `auto`, `own` or `cudnn`"
        ))),
    }
}

impl AttnPaths {
    /// Chooses each layer's path. `alibi_of(l)` is the layer's slope pointer (0: none).
    pub fn choose(
        gpu: &Arc<Gpu>,
        kernels: &Kernels,
        cfg: &[LayerCfg],
        s: &Shape,
        dt: Dtype,
        alibi_of: impl Fn(&LayerCfg) -> DevPtr,
    ) -> Result<AttnPaths> {
        let want = wanted()?;
        let mut paths = AttnPaths {
            cudnn: None,
            on_cudnn: vec![false; cfg.len()],
            own_fwd: vec![false; cfg.len()],
            workspace: None,
            why_not: None,
        };
        if want == Want::Own {
            return Ok(paths);
        }
        let shapes: Vec<AttnShape> = cfg.iter().map(|l| layer_shape(l, s, alibi_of(l))).collect();
        let reasons: Vec<Option<String>> = shapes
            .iter()
            .map(|a| CudnnAttention::unsupported_reason(a, dt))
            .collect();
        if want == Want::Cudnn
            && let Some((i, why)) = reasons
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.as_ref().map(|w| (i, w)))
        {
            return Err(unsupported(format!(
                "MODELSPEC_ATTENTION=cudnn: layer {i} cannot run cuDNN attention ({why})"
            )));
        }
        if reasons.iter().all(Option::is_some) {
            paths.why_not = reasons.into_iter().flatten().next();
            return Ok(paths);
        }
        let attn = match CudnnAttention::new(gpu) {
            Ok(a) => Arc::new(a),
            Err(e) if want == Want::Auto => {
                paths.why_not = Some(e.to_string());
                return Ok(paths);
            }
            Err(e) => return Err(cudnn_error(e)),
        };
        let mut ws = 0usize;
        for (i, (a, why)) in shapes.iter().zip(&reasons).enumerate() {
            if why.is_some() {
                continue;
            }
            // Building both plans here: a shape cuDNN rejects stays on the own kernels, and the
            // first step pays no plan build.
            match attn.workspace_bytes(a) {
                Ok(bytes) => {
                    ws = ws.max(bytes);
                    paths.on_cudnn[i] = true;
                }
                Err(e) if want == Want::Auto => {
                    paths.why_not.get_or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(cudnn_error(e)),
            }
        }
        if paths.on_cudnn.iter().any(|&c| c) {
            paths.workspace = Some(gpu.zeros::<u8>(ws.max(1))?);
            if want == Want::Auto {
                for (i, a) in shapes.iter().enumerate() {
                    if let (true, Some(tag)) = (paths.on_cudnn[i], kernels.attn_hopper_tag(dt, a)) {
                        paths.own_fwd[i] = attn.own_forward_faster(a, &tag, |[o, lse, q, k, v]| {
                            (kernels.attn_fwd(dt, a, o, lse, q, k, v)).map_err(|e| e.to_string())
                        });
                    }
                }
            }
            paths.cudnn = Some(attn);
            paths.why_not = None;
        }
        Ok(paths)
    }

    /// Device bytes this choice holds (cuDNN's workspace).
    pub fn bytes(&self) -> usize {
        self.workspace.as_ref().map_or(0, |w| w.len())
    }

    /// Which path the layers run, for logs and benchmarks: e.g. `cudnn 9.14.0 (16 of 16
    /// layers)`, `own kernels (bf16 only)`.
    pub fn describe(&self) -> String {
        let n = self.on_cudnn.iter().filter(|&&c| c).count();
        let own = match self.own_fwd.iter().filter(|&&c| c).count() {
            0 => String::new(),
            m => format!("; the own Hopper forward in {m}"),
        };
        match &self.cudnn {
            Some(a) => format!(
                "cudnn {} ({n} of {} layers{own}), own kernels for the rest",
                a.library().version_string(),
                self.on_cudnn.len()
            ),
            None => match &self.why_not {
                Some(why) => format!("own kernels (cuDNN not used: {why})"),
                None => "own kernels".to_string(),
            },
        }
    }

    /// Whether layer i's forward is cuDNN's (else the own kernels').
    fn cudnn_fwd(&self, i: usize) -> bool {
        self.on_cudnn[i] && !self.own_fwd[i]
    }

    fn layer(&self, i: usize) -> Option<(&CudnnAttention, &GpuBuf<u8>)> {
        match (&self.cudnn, &self.workspace) {
            (Some(a), Some(w)) if self.on_cudnn[i] => Some((a, w)),
            _ => None,
        }
    }
}

fn cudnn_error(e: crate::cuda::cudnn::CudnnError) -> CudaError {
    unsupported(format!("cuDNN attention: {e}"))
}

impl Step<'_> {
    /// Layer i's attention forward: `o` and the log-sum-exp `lse` from q, k, v (then the
    /// layer's sinks, on either path).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_fwd(
        &self,
        i: usize,
        a: &AttnShape,
        o: DevPtr,
        lse: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
    ) -> Result<()> {
        match self.attn.layer(i) {
            Some((c, ws)) if self.attn.cudnn_fwd(i) => c
                .fwd(a, o, lse, q, k, v, ws.ptr(), ws.len())
                .map_err(cudnn_error)?,
            _ => self.k.attn_fwd(self.dt, a, o, lse, q, k, v)?,
        }
        if self.cfg[i].sinks {
            let sinks = self.p.w(&Self::pname(i, "attn.sinks"))?;
            self.k.attn_sinks_fwd(self.dt, a, o, lse, sinks)?;
        }
        Ok(())
    }

    /// Layer i's attention backward: dq, dk, dv (written) from dout, o, lse, q, k, v, with the
    /// shared f32 scratch `dq_acc` and `delta`; the sinks' gradient (accumulated) first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_bwd(
        &self,
        i: usize,
        a: &AttnShape,
        (dq, dk, dv): (DevPtr, DevPtr, DevPtr),
        (dq_acc, delta): (DevPtr, DevPtr),
        dout: DevPtr,
        o: DevPtr,
        lse: DevPtr,
        (q, k, v): (DevPtr, DevPtr, DevPtr),
    ) -> Result<()> {
        if self.cfg[i].sinks {
            let name = Self::pname(i, "attn.sinks");
            let (dsinks, sinks) = (self.p.g(&name), self.p.w(&name)?);
            self.k
                .attn_sinks_bwd(self.dt, a, dsinks, dout, o, lse, sinks)?;
        }
        match self.attn.layer(i) {
            Some((c, ws)) => c
                .bwd(
                    a,
                    dq,
                    dk,
                    dv,
                    dq_acc,
                    delta,
                    dout,
                    o,
                    lse,
                    q,
                    k,
                    v,
                    ws.ptr(),
                    ws.len(),
                )
                .map_err(cudnn_error),
            None => self
                .k
                .attn_bwd(self.dt, a, dq, dk, dv, dq_acc, delta, dout, o, lse, q, k, v),
        }
    }
}
