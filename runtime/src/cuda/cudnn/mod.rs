//! cuDNN's fused flash attention (forward and backward) as a selectable attention path, beside
//! the own mma.sync kernels of [`Kernels::attn_fwd`](crate::cuda::Kernels::attn_fwd) /
//! [`attn_bwd`](crate::cuda::Kernels::attn_bwd).
//!
//! libcudnn is loaded at run time, never needed to build: [`probe()`] finds it (see its search
//! order), reads its version and keeps it loaded before cudarc's bindings touch it, so a missing
//! or old cuDNN is an `Err`, never a panic. Graphs are built through the backend descriptor API
//! (see [`sdpa`] for the node sequence), and a finalized plan is cached per shape: building one
//! takes from milliseconds to seconds (runtime compilation of the fused kernel).
//!
//! Same layouts as the own kernels, so the two paths are interchangeable per call: q `[B·T, ldq]`
//! with head h at column `h·D`, k/v `[B·T, ldk/ldv]` with kv head `h / (H/KV)`, o/dO `[B·T, ldo]`;
//! q/k/v may be column views of one fused projection `[B, T, (H + 2·KV)·D]` (ld = (H+2KV)·D) and
//! dq/dk/dv the same views of the fused gradient. v, o, dO and dV may have their own head width
//! Dv (`AttnShape::v_head_dim`, latent attention: DeepSeek-V3's D 192, Dv 128), v's heads then at
//! columns `g·Dv` and o's at `h·Dv`; [`CudnnLibrary::head_dims_reason`] says which cuDNN
//! versions take which head dims. cuDNN alone also takes PyTorch's head-major tensors
//! (`AttnShape::head_major`: each `[B, heads, T, width]` contiguous). **lse** (the softmax stats) is f32 `[B, H, T]`,
//! the natural log of Σ_j exp(scale·q·k_j) over the visible keys: the same tensor the own
//! kernels write, so a forward of one path can feed a backward of the other.
//!
//! ```no_run
//! use modelspec_runtime::cuda::{AttnShape, Dtype, Gpu, cudnn::CudnnAttention};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gpu = Gpu::new(0)?;
//! let attn = CudnnAttention::new(&gpu)?; // Err (no panic) without libcudnn 9
//! let s = AttnShape::dense(4, 2048, 32, 8, 128);
//! assert!(CudnnAttention::supports(&s, Dtype::Bf16));
//! let ws = gpu.zeros::<u8>(attn.workspace_bytes(&s)?)?;
//! # let (o, lse, q, k, v) = (0, 0, 0, 0, 0);
//! attn.fwd(&s, o, lse, q, k, v, ws.ptr(), ws.len())?;
//! # Ok(()) }
//! ```

mod api;
mod backend;
pub mod error;
mod knobs;
pub mod probe;
pub mod sdpa;
mod tune;

pub use error::{CudnnError, Result};
pub use probe::{CudnnLibrary, probe};

use super::error::DriverContext;
use super::{AttnShape, DevPtr, Dtype, Gpu};
use backend::{BuiltPlan, check};
use cudarc::cudnn::sys;
use probe::api;
use sdpa::uid;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Which graph a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pass {
    Forward,
    Backward,
}

/// What a plan depends on (the scale is passed by value at each call, so it is not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PlanKey {
    pass: Pass,
    /// B, T, H, KV, D, Dv.
    dims: [usize; 6],
    lds: [usize; 4],
    head_major: bool,
    window: usize,
    causal: bool,
}

impl PlanKey {
    fn of(pass: Pass, s: &AttnShape) -> PlanKey {
        PlanKey {
            pass,
            dims: [
                s.batch,
                s.seq,
                s.heads,
                s.kv_heads,
                s.head_dim,
                s.v_head_dim,
            ],
            lds: [s.ldq, s.ldk, s.ldv, s.ldo],
            head_major: s.head_major,
            window: s.window,
            causal: s.causal,
        }
    }
}

/// A cached plan.
struct Plan {
    built: BuiltPlan,
}

// SAFETY: a finalized plan is immutable; it is only executed under the handle's lock.
unsafe impl Send for Plan {}
// SAFETY: as above.
unsafe impl Sync for Plan {}

/// What [`CudnnAttention::prepare`] reports about a shape's plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInfo {
    /// Workspace bytes the forward takes.
    pub fwd_workspace: usize,
    /// Workspace bytes the backward takes.
    pub bwd_workspace: usize,
    /// cuDNN's global index of the forward's engine (-1 when unreadable).
    pub fwd_engine: i64,
    /// cuDNN's global index of the backward's engine.
    pub bwd_engine: i64,
    /// Which engine config the forward took, in the heuristics' order among those that
    /// finalize (0: the first, PyTorch's; a later one where timing chose it, see
    /// [`CudnnAttention`], or `MODELSPEC_CUDNN_CONFIG` forced it).
    pub fwd_config: usize,
    /// Which engine config the backward took, as for the forward.
    pub bwd_config: usize,
}

/// An owned cuDNN handle bound to the GPU's stream.
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate, destroyed once.
        unsafe {
            (api().destroy)(self.0);
        }
    }
}

/// cuDNN fused attention on one GPU, with its plan cache. Calls go to the GPU's one stream, in
/// order with the own kernels.
///
/// Which engine config a plan runs: cuDNN's heuristics rank several for a graph (forward and
/// backward apart) without running them, and their first pick (PyTorch's) is not always the
/// fastest: with cuDNN 9.14 on an H200, the forward's second config at B16 H12 T1024 D64 ran
/// 0.085 ms against the first's 0.092 (with 9.19 on an H100 the first was the fastest at all
/// four of attn_bench's shapes). So the first plan of a shape built outside a graph capture
/// times each config that finalizes (up to six) on scratch operands of the shape and keeps the
/// fastest. The choice is persisted in `<kernel cache>/cudnn-configs.tsv` (keyed by the GPU, the
/// cuDNN version and the shape), as the GEMMs' are in `gemm-algos.tsv`, so every later process
/// of the machine runs the same config and computes the same bits. `MODELSPEC_CUDNN_TUNE=off`
/// keeps the first pick; `MODELSPEC_CUDNN_CONFIG=<k>` forces the k-th.
pub struct CudnnAttention {
    // Field order is drop order: plans, then the handle they were built on, then the GPU (its
    // context) last.
    plans: Mutex<BTreeMap<PlanKey, Arc<Plan>>>,
    /// Engine configs chosen by timing.
    tuner: Mutex<crate::cuda::tune::Tuner>,
    /// `MODELSPEC_CUDNN_TUNE=wide`: the knob neighbours are timed too.
    wide: bool,
    /// The handle; the lock also serialises cuDNN calls on it.
    handle: Mutex<Handle>,
    library: CudnnLibrary,
    /// The GPU's compute capability major number (9: Hopper), for the version rules of
    /// [`CudnnLibrary::head_dims_reason`].
    sm_major: u32,
    gpu: Arc<Gpu>,
}

// SAFETY: the raw handle is only used under `handle`'s lock, and cuDNN handles may move between
// threads; plans are immutable after finalization.
unsafe impl Send for CudnnAttention {}
// SAFETY: as above.
unsafe impl Sync for CudnnAttention {}

impl std::fmt::Debug for CudnnAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudnnAttention(cuDNN {} at {}",
            self.library.version_string(),
            self.library.path
        )?;
        if !self.library.passed_over.is_empty() {
            write!(f, "; passed over: {}", self.library.passed_over)?;
        }
        write!(f, ")")
    }
}

impl CudnnAttention {
    /// Probes libcudnn (a clean `Err` when missing or older than 9.0) and creates a handle on
    /// `gpu`'s stream.
    pub fn new(gpu: &Arc<Gpu>) -> Result<CudnnAttention> {
        let library = probe()?;
        gpu.stream()
            .context()
            .bind_to_thread()
            .during(|| "binding the context for cuDNN".into())?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: the library is loaded (probe) and a context is current.
        check(unsafe { (api().create)(&mut raw) }, || {
            "creating a handle".into()
        })?;
        let handle = Handle(raw);
        let (tuner, wide) = tune::tuner_from_env();
        let stream = gpu.stream().cu_stream() as sys::cudaStream_t;
        // SAFETY: the stream belongs to this GPU's context and outlives the handle (both are
        // owned through `gpu`).
        check(unsafe { (api().set_stream)(handle.0, stream) }, || {
            "binding the handle to the stream".into()
        })?;
        Ok(CudnnAttention {
            gpu: gpu.clone(),
            sm_major: sm_major(gpu.arch()),
            library,
            handle: Mutex::new(handle),
            plans: Mutex::new(BTreeMap::new()),
            tuner: Mutex::new(tuner),
            wide,
        })
    }

    /// The library in use (path and version).
    pub fn library(&self) -> &CudnnLibrary {
        &self.library
    }

    /// Why cuDNN attention cannot run `s` in `dt`, or `None` when it can (as far as a static
    /// check tells: cuDNN may still reject a shape when the plan is built, which [`prepare`]
    /// reports, and the loaded version may refuse it: [`version_reason`]). Taken: bf16; causal or
    /// not; sliding window; GQA/MQA; query/key and value head dims that are multiples of 8 up to
    /// 256, equal or not (latent attention); row strides and head dims aligned to 16 bytes;
    /// PyTorch's head-major tensors (`AttnShape::head_major`) at the dense strides. Not
    /// taken: logit softcapping, ALiBi, chunked attention, f32.
    ///
    /// [`prepare`]: CudnnAttention::prepare
    /// [`version_reason`]: CudnnAttention::version_reason
    pub fn unsupported_reason(s: &AttnShape, dt: Dtype) -> Option<String> {
        if dt != Dtype::Bf16 {
            return Some(format!("{dt:?} (bf16 only)"));
        }
        if s.softcap > 0.0 {
            return Some("logit softcapping".into());
        }
        if s.alibi != 0 {
            return Some("ALiBi".into());
        }
        if s.chunk > 0 {
            return Some("chunked attention".into());
        }
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
            return Some(format!(
                "heads {} not a multiple of kv_heads {}",
                s.heads, s.kv_heads
            ));
        }
        let dim_ok = |d: usize| d > 0 && d.is_multiple_of(8) && d <= 256;
        if !dim_ok(s.head_dim) {
            return Some(format!(
                "head_dim {} (multiples of 8 up to 256)",
                s.head_dim
            ));
        }
        if !dim_ok(s.v_head_dim) {
            return Some(format!(
                "value head dim {} (multiples of 8 up to 256)",
                s.v_head_dim
            ));
        }
        if [s.ldq, s.ldk, s.ldv, s.ldo]
            .iter()
            .any(|l| !l.is_multiple_of(8))
        {
            return Some(format!(
                "row strides ({}, {}, {}, {}) not multiples of 8 elements",
                s.ldq, s.ldk, s.ldv, s.ldo
            ));
        }
        let dense = [
            s.heads * s.head_dim,
            s.kv_heads * s.head_dim,
            s.kv_heads * s.v_head_dim,
            s.heads * s.v_head_dim,
        ];
        if s.head_major && [s.ldq, s.ldk, s.ldv, s.ldo] != dense {
            return Some(format!(
                "head-major tensors with row strides ({}, {}, {}, {}): head-major takes the dense \
                 ones, {dense:?}",
                s.ldq, s.ldk, s.ldv, s.ldo
            ));
        }
        if s.batch == 0 || s.seq == 0 {
            return Some("an empty batch or sequence".into());
        }
        None
    }

    /// Whether [`unsupported_reason`](CudnnAttention::unsupported_reason) finds nothing.
    pub fn supports(s: &AttnShape, dt: Dtype) -> bool {
        Self::unsupported_reason(s, dt).is_none()
    }

    /// Why the loaded library refuses the head dims of `s` on this GPU (the forward, and with
    /// `backward` the backward too), or `None`: [`CudnnLibrary::head_dims_reason`] for this
    /// library and GPU. Checked before any plan is built.
    pub fn version_reason(&self, s: &AttnShape, backward: bool) -> Option<String> {
        self.library
            .head_dims_reason(self.sm_major, s.head_dim, s.v_head_dim, backward)
    }

    fn plan(&self, pass: Pass, s: &AttnShape) -> Result<Arc<Plan>> {
        if let Some(why) = Self::unsupported_reason(s, Dtype::Bf16)
            .or_else(|| self.version_reason(s, pass == Pass::Backward))
        {
            return Err(CudnnError::Unsupported(why));
        }
        let key = PlanKey::of(pass, s);
        if let Some(p) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let plan = Arc::new(Plan {
            built: self.build(pass, s)?,
        });
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, plan.clone());
        Ok(plan)
    }

    /// Builds (or finds) the forward and backward plans of `s` and reports their workspace and
    /// engines. An `Err` here means cuDNN rejects the shape: use the own kernels for it.
    pub fn prepare(&self, s: &AttnShape) -> Result<PlanInfo> {
        let f = self.plan(Pass::Forward, s)?;
        let b = self.plan(Pass::Backward, s)?;
        Ok(PlanInfo {
            fwd_workspace: f.built.workspace,
            bwd_workspace: b.built.workspace,
            fwd_engine: f.built.engine,
            bwd_engine: b.built.engine,
            fwd_config: f.built.config,
            bwd_config: b.built.config,
        })
    }

    /// Workspace bytes that serve both [`fwd`](CudnnAttention::fwd) and
    /// [`bwd`](CudnnAttention::bwd) of `s` (builds both plans).
    pub fn workspace_bytes(&self, s: &AttnShape) -> Result<usize> {
        let info = self.prepare(s)?;
        Ok(info.fwd_workspace.max(info.bwd_workspace).max(1))
    }

    /// Workspace bytes of the forward alone (builds only the forward plan: inference).
    pub fn fwd_workspace_bytes(&self, s: &AttnShape) -> Result<usize> {
        Ok(self.plan(Pass::Forward, s)?.built.workspace.max(1))
    }

    /// The handle, locked, with the GPU's context current on this thread (cuDNN calls may come
    /// from any thread).
    fn lock_bound(&self) -> Result<std::sync::MutexGuard<'_, Handle>> {
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        self.gpu
            .stream()
            .context()
            .bind_to_thread()
            .during(|| "binding the context for cuDNN".into())?;
        Ok(handle)
    }

    /// -inf for masked scores: cuDNN before 9.10 wants the lowest finite f32 instead.
    fn neg_inf(&self) -> f32 {
        if self.library.version < 91000 {
            f32::MIN
        } else {
            f32::NEG_INFINITY
        }
    }

    fn check_ptrs(ptrs: &[(&str, DevPtr)]) -> Result<()> {
        for (name, p) in ptrs {
            if *p == 0 || p % 16 != 0 {
                return Err(CudnnError::Unsupported(format!(
                    "{name} at {p:#x} (needs a non-null, 16-byte aligned pointer)"
                )));
            }
        }
        Ok(())
    }

    /// Forward: o (bf16, like q) and lse (f32 `[B, H, T]`) from q, k, v (bf16). `workspace` is a
    /// device buffer of `workspace_bytes` bytes, at least [`workspace_bytes`] of `s` (or
    /// [`fwd_workspace_bytes`]). Builds the plan at the first call of a shape.
    ///
    /// [`workspace_bytes`]: CudnnAttention::workspace_bytes
    /// [`fwd_workspace_bytes`]: CudnnAttention::fwd_workspace_bytes
    #[allow(clippy::too_many_arguments)]
    pub fn fwd(
        &self,
        s: &AttnShape,
        o: DevPtr,
        lse: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
        workspace: DevPtr,
        workspace_bytes: usize,
    ) -> Result<()> {
        let plan = self.plan(Pass::Forward, s)?;
        self.run_fwd(
            &plan.built,
            s,
            [o, lse, q, k, v],
            workspace,
            workspace_bytes,
        )
    }

    /// [`fwd`](CudnnAttention::fwd) on a given plan; `ptrs`: o, lse, q, k, v.
    fn run_fwd(
        &self,
        plan: &BuiltPlan,
        s: &AttnShape,
        ptrs: [DevPtr; 5],
        workspace: DevPtr,
        workspace_bytes: usize,
    ) -> Result<()> {
        let [o, lse, q, k, v] = ptrs;
        Self::check_ptrs(&[("o", o), ("lse", lse), ("q", q), ("k", k), ("v", v)])?;
        if workspace_bytes < plan.workspace {
            return Err(CudnnError::Workspace {
                graph: "sdpa forward",
                needed: plan.workspace,
                given: workspace_bytes,
            });
        }
        let (scale, neg_inf, window) = (s.scale, self.neg_inf(), s.window as f32);
        let host = |x: &f32| x as *const f32 as *mut c_void;
        let dev = |p: DevPtr| p as *mut c_void;
        let bindings = [
            (uid::Q, dev(q)),
            (uid::K, dev(k)),
            (uid::V, dev(v)),
            (uid::O, dev(o)),
            (uid::STATS, dev(lse)),
            (uid::SCALE, host(&scale)),
            (uid::NEG_INF, host(&neg_inf)),
            (uid::WINDOW, host(&window)),
        ];
        let handle = self.lock_bound()?;
        // SAFETY: the pointers address buffers laid out as `s` says (the caller's contract, as
        // for the own kernels), the scalars live on this frame until execute returns, and the
        // workspace size was checked above.
        unsafe { plan.execute(handle.0, &bindings, workspace as *mut c_void) }
    }

    /// Backward: dq, dk, dv (bf16, laid out like q, k, v; each written, not accumulated) from
    /// dout (like o), o, lse (from either forward path), q, k, v. The arguments are those of
    /// [`Kernels::attn_bwd`](crate::cuda::Kernels::attn_bwd) (without the dtype), so the same
    /// scratch serves both paths: `dq_acc` f32, at least B·T·H·D elements with D the query/key
    /// head dim (cuDNN's dQ accumulator; its contents on entry do not matter), `delta` f32
    /// `[B, H, T]` (Σ dO∘O over the value head dim, written here). `workspace` as for [`fwd`](CudnnAttention::fwd), at least
    /// [`workspace_bytes`](CudnnAttention::workspace_bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn bwd(
        &self,
        s: &AttnShape,
        dq: DevPtr,
        dk: DevPtr,
        dv: DevPtr,
        dq_acc: DevPtr,
        delta: DevPtr,
        dout: DevPtr,
        o: DevPtr,
        lse: DevPtr,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
        workspace: DevPtr,
        workspace_bytes: usize,
    ) -> Result<()> {
        let plan = self.plan(Pass::Backward, s)?;
        self.run_bwd(
            &plan.built,
            s,
            [dq, dk, dv, dq_acc, delta, dout, o, lse, q, k, v],
            workspace,
            workspace_bytes,
        )
    }

    /// [`bwd`](CudnnAttention::bwd) on a given plan; `ptrs`: dq, dk, dv, dq_acc, delta, dout, o,
    /// lse, q, k, v.
    fn run_bwd(
        &self,
        plan: &BuiltPlan,
        s: &AttnShape,
        ptrs: [DevPtr; 11],
        workspace: DevPtr,
        workspace_bytes: usize,
    ) -> Result<()> {
        let [dq, dk, dv, dq_acc, delta, dout, o, lse, q, k, v] = ptrs;
        Self::check_ptrs(&[
            ("dq", dq),
            ("dk", dk),
            ("dv", dv),
            ("dq_acc", dq_acc),
            ("delta", delta),
            ("dout", dout),
            ("o", o),
            ("lse", lse),
            ("q", q),
            ("k", k),
            ("v", v),
        ])?;
        if workspace_bytes < plan.workspace {
            return Err(CudnnError::Workspace {
                graph: "sdpa backward",
                needed: plan.workspace,
                given: workspace_bytes,
            });
        }
        if self.library.version < 90600 {
            // Before 9.6 the dQ accumulator must start at zero (later versions clear it).
            let bytes = s.batch * s.heads * s.seq * s.head_dim * 4;
            // SAFETY: the caller provides B·T·H·D f32 at `dq_acc`.
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    dq_acc,
                    0,
                    bytes,
                    self.gpu.stream().cu_stream(),
                )
            }
            .during(|| format!("clearing the {bytes}-byte dQ accumulator"))?;
        }
        let (scale, neg_inf, one, window) = (s.scale, self.neg_inf(), 1.0f32, s.window as f32);
        let host = |x: &f32| x as *const f32 as *mut c_void;
        let dev = |p: DevPtr| p as *mut c_void;
        let bindings = [
            (uid::Q, dev(q)),
            (uid::K, dev(k)),
            (uid::V, dev(v)),
            (uid::O, dev(o)),
            (uid::DO, dev(dout)),
            (uid::STATS, dev(lse)),
            (uid::DQ, dev(dq)),
            (uid::DK, dev(dk)),
            (uid::DV, dev(dv)),
            (uid::DELTA, dev(delta)),
            (uid::DQ_ACCUM, dev(dq_acc)),
            (uid::SCALE, host(&scale)),
            (uid::NEG_INF, host(&neg_inf)),
            (uid::ONE, host(&one)),
            (uid::WINDOW, host(&window)),
        ];
        let handle = self.lock_bound()?;
        // SAFETY: as in `fwd`; Δ and the accumulator are the caller's buffers of the documented
        // sizes.
        unsafe { plan.execute(handle.0, &bindings, workspace as *mut c_void) }
    }
}

/// The compute capability major number of an NVRTC architecture name (`compute_90` → 9); 0 when
/// the name has no number.
fn sm_major(arch: &str) -> u32 {
    let digits: String = arch.chars().filter(char::is_ascii_digit).collect();
    digits.parse::<u32>().map_or(0, |n| n / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_support_check() {
        let s = AttnShape::dense(2, 100, 8, 2, 64);
        assert!(CudnnAttention::supports(&s, Dtype::Bf16));
        assert!(!CudnnAttention::supports(&s, Dtype::F32));
        let capped = AttnShape { softcap: 30.0, ..s };
        assert!(
            CudnnAttention::unsupported_reason(&capped, Dtype::Bf16)
                .unwrap()
                .contains("softcap")
        );
        let odd = AttnShape::dense(2, 100, 8, 2, 60);
        assert!(!CudnnAttention::supports(&odd, Dtype::Bf16));
        let gqa_bad = AttnShape::dense(2, 100, 8, 3, 64);
        assert!(!CudnnAttention::supports(&gqa_bad, Dtype::Bf16));
        // Latent attention: a value head dim of its own, within the same limits.
        let mla = AttnShape {
            v_head_dim: 128,
            ldv: 2 * 128,
            ldo: 8 * 128,
            ..AttnShape::dense(2, 100, 8, 2, 192)
        };
        assert!(CudnnAttention::supports(&mla, Dtype::Bf16));
        let v_odd = AttnShape {
            v_head_dim: 60,
            ..mla
        };
        let why = CudnnAttention::unsupported_reason(&v_odd, Dtype::Bf16).unwrap();
        assert!(why.contains("value head dim 60"), "{why}");
        let v_wide = AttnShape {
            v_head_dim: 264,
            ..mla
        };
        assert!(!CudnnAttention::supports(&v_wide, Dtype::Bf16));
    }

    #[test]
    fn sm_major_reads_the_arch_name() {
        assert_eq!(sm_major("compute_90"), 9);
        assert_eq!(sm_major("compute_80"), 8);
        assert_eq!(sm_major("compute_100"), 10);
        assert_eq!(sm_major("unknown"), 0);
    }

    #[test]
    fn plan_keys_ignore_the_scale_but_not_the_strides() {
        let a = AttnShape::dense(2, 100, 8, 2, 64);
        let b = AttnShape { scale: 0.5, ..a };
        let c = AttnShape { ldq: 1024, ..a };
        assert_eq!(
            PlanKey::of(Pass::Forward, &a),
            PlanKey::of(Pass::Forward, &b)
        );
        assert_ne!(
            PlanKey::of(Pass::Forward, &a),
            PlanKey::of(Pass::Forward, &c)
        );
        assert_ne!(
            PlanKey::of(Pass::Forward, &a),
            PlanKey::of(Pass::Backward, &a)
        );
        // The value head dim changes the graph (V, O, dO, dV widths), so it is part of the key.
        let v = AttnShape {
            v_head_dim: 32,
            ..a
        };
        assert_ne!(
            PlanKey::of(Pass::Forward, &a),
            PlanKey::of(Pass::Forward, &v)
        );
    }
}
