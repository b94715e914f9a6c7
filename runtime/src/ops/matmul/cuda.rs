//! The matmul's CUDA side: GEMMs through cuBLASLt, bf16 (or f32 for parity) operands, f32
//! accumulation, with fused epilogues (bias, GELU, bias gradient). No kernels of ours: the
//! library is loaded at run time. The executors reach it as `crate::cuda::gemm` ([`Gemm`],
//! [`RowMajorGemm`]); `calls` holds the entry points they call (plain, bias, epilogues, linear,
//! residual, f32 output), `bgrad` the weight gradient that also yields its bias's gradient.
//!
//! Callers think in row-major matrices; cuBLASLt is column-major. The mapping between the two is
//! written once, in `colmajor::to_column_major`.

use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

mod bgrad;
mod calls;
mod colmajor;
mod epilogue;
pub mod hopper;
mod tune;
pub use crate::cuda::tune::Tuned;
pub use bgrad::{BiasGradPath, BiasGradPolicy};
use colmajor::to_column_major;
pub use epilogue::Epilogue;
use epilogue::{Epi, EpiKind};

/// A row-major GEMM: `C[m, n] = alpha * op(A) op(B) + beta * C`, where op(A) is `[m, k]` (A is
/// stored `[m, k]`, or `[k, m]` when `trans_a`) and op(B) is `[k, n]` (B stored `[k, n]`, or
/// `[n, k]` when `trans_b`). Leading dimensions are row strides in elements. With `batch`,
/// matrices repeat at the given element strides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowMajorGemm {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The reduced dimension.
    pub k: usize,
    /// A is stored `[k, m]`.
    pub trans_a: bool,
    /// B is stored `[n, k]` (e.g. a `torch.nn.Linear` weight `[out, in]`).
    pub trans_b: bool,
    /// Row stride of A.
    pub lda: usize,
    /// Row stride of B.
    pub ldb: usize,
    /// Row stride of C.
    pub ldc: usize,
    /// `(count, stride_a, stride_b, stride_c)` for strided batches.
    pub batch: Option<(usize, usize, usize, usize)>,
}

impl RowMajorGemm {
    /// A projection through a `torch.nn.Linear` weight: `C[m, n] = A[m, k] W[n, k]^T`, every
    /// operand dense (row strides k, k and n).
    pub fn linear(m: usize, n: usize, k: usize) -> RowMajorGemm {
        RowMajorGemm {
            trans_b: true,
            ..RowMajorGemm::plain(m, n, k, k, k, n)
        }
    }

    /// `C[m, n] = A[m, k] B[k, n]`, neither operand transposed, with the given row strides.
    pub fn plain(m: usize, n: usize, k: usize, lda: usize, ldb: usize, ldc: usize) -> RowMajorGemm {
        RowMajorGemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            lda,
            ldb,
            ldc,
            batch: None,
        }
    }

    /// A weight gradient: `C[m, n] = A^T B`, A stored `[k, m]` (row stride `lda`, e.g. the
    /// output's gradient `dy[tokens, out]`), B `[k, n]` (row stride `ldb`, the input), C dense.
    pub fn weight_grad(m: usize, n: usize, k: usize, lda: usize, ldb: usize) -> RowMajorGemm {
        RowMajorGemm {
            trans_a: true,
            ..RowMajorGemm::plain(m, n, k, lda, ldb, n)
        }
    }
}

/// One call's GEMM: its shape, operands and scalars: `c = alpha A op(B) + beta res` (`res` 0:
/// `c` itself, in place).
struct Operands<'a> {
    dtype: Dtype,
    g: &'a RowMajorGemm,
    a: DevPtr,
    b: DevPtr,
    c: DevPtr,
    res: DevPtr,
    alpha: f32,
    beta: f32,
}

/// A plan's key: (bf16, f32 output, epilogue, auxiliary row stride, shape).
type PlanKey = (bool, bool, EpiKind, usize, RowMajorGemm);

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    /// The algorithm every run takes: the heuristic's first pick, or the fastest of its
    /// candidates ([`tune`]).
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the handles are only used under the owning Gemm's lock / on its stream.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this module and dropped once.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// A cuBLASLt handle, a workspace and a cache of planned GEMM shapes.
pub struct Gemm {
    gpu: Arc<Gpu>,
    handle: sys::cublasLtHandle_t,
    workspace: GpuBuf<u8>,
    /// A second workspace for the GEMMs on [`Gpu::branch`] (two GEMMs running at once must not
    /// share one), made by [`Gemm::prepare_branch`].
    branch_workspace: std::sync::OnceLock<GpuBuf<u8>>,
    /// Planned shapes; `None` where cuBLASLt has no algorithm for a fused epilogue (the caller
    /// then runs its unfused path).
    plans: Mutex<BTreeMap<PlanKey, Option<Plan>>>,
    /// Where a weight gradient's bias gradient goes ([`BiasGradPolicy`]).
    bgrad: Mutex<BiasGradPolicy>,
    /// Algorithm choices by timing ([`tune`]).
    tuner: Mutex<tune::Tuner>,
    /// Whether timing also covers configurations beyond the heuristic's list
    /// ([`Gemm::set_wide_tuning`]).
    wide: std::sync::atomic::AtomicBool,
    /// Whether GEMMs planned now may be timed ([`Gemm::with_tuning`]).
    tuning: std::sync::atomic::AtomicBool,
    /// The own Hopper GEMM for the GELU epilogues and the policy for it ([`hopper`];
    /// `MODELSPEC_OWN_GEMM`, off by default until it is measured faster), created at first use;
    /// `None` when off or not on Hopper.
    own: std::sync::OnceLock<Option<(hopper::HopperGemm, hopper::OwnPolicy)>>,
    /// The GEMMs that ran on the own kernels ([`Gemm::own_runs`]): epilogue, shape, schedule.
    own_ran: Mutex<std::collections::BTreeSet<String>>,
}

// SAFETY: the handle is used only on the Gpu's single stream.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

/// Bytes of a cuBLASLt workspace (one a stream that runs GEMMs).
pub const WORKSPACE: usize = 32 << 20;

impl Gemm {
    /// Creates the handle and a 32 MiB workspace (NVIDIA's recommendation for Hopper).
    pub fn new(gpu: Arc<Gpu>) -> Result<Gemm> {
        let handle =
            lt::create_handle().map_err(|e| blas_err("create handle", Dtype::F32, 0, 0, 0, e))?;
        let workspace = gpu.zeros::<u8>(WORKSPACE)?;
        let (tuner, wide) = tune::tuner_from_env();
        Ok(Gemm {
            gpu,
            handle,
            workspace,
            branch_workspace: std::sync::OnceLock::new(),
            plans: Mutex::new(BTreeMap::new()),
            bgrad: Mutex::new(BiasGradPolicy::from_env()),
            tuner: Mutex::new(tuner),
            wide: std::sync::atomic::AtomicBool::new(wide),
            tuning: std::sync::atomic::AtomicBool::new(false),
            own: std::sync::OnceLock::new(),
            own_ran: Mutex::new(Default::default()),
        })
    }

    /// Allocates the workspace of the GEMMs that run on [`Gpu::branch`] (inside
    /// [`Gpu::on_branch`]); before any such GEMM, and outside a graph capture (it allocates).
    pub fn prepare_branch(&self) -> Result<()> {
        if self.branch_workspace.get().is_none() {
            let w = self.gpu.zeros::<u8>(WORKSPACE)?;
            let _ = self.branch_workspace.set(w);
        }
        Ok(())
    }

    /// The workspace of the stream GEMMs go to now ([`Gpu::current`]).
    fn workspace(&self) -> Result<DevPtr> {
        if !self.gpu.in_branch() {
            return Ok(self.workspace.ptr());
        }
        self.branch_workspace
            .get()
            .map(GpuBuf::ptr)
            .ok_or_else(|| CudaError::BadLaunch {
                kernel: "cublasLt matmul".into(),
                why: "a GEMM on the branch stream before Gemm::prepare_branch".into(),
            })
    }

    /// Runs `f` with the timed choice of algorithms (the `tune` module) for the GEMMs it plans `on` or
    /// off, then restores the previous setting. Off by default: only callers whose shapes are
    /// fixed from step to step (the trainer's step) turn it on, and callers inside them whose
    /// shapes depend on the data (a mixture of experts' per-expert GEMMs) turn it off again, so
    /// that no shape is timed more than once per machine and the choices file stays small.
    pub fn with_tuning<R>(&self, on: bool, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::Ordering;
        let before = self.tuning.swap(on, Ordering::Relaxed);
        let out = f();
        self.tuning.store(before, Ordering::Relaxed);
        out
    }

    /// Whether timing also covers configurations beyond cuBLASLt's heuristic list (an
    /// experiment; `MODELSPEC_GEMM_TUNE=wide` sets it for every handle): every algorithm id in
    /// each tile and stage configuration it lists that cuBLASLt accepts for the GEMM.
    pub fn set_wide_tuning(&self, on: bool) {
        self.wide.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The GEMMs this handle chose an algorithm for by timing (the `tune` module), in order.
    pub fn tuned(&self) -> Vec<Tuned> {
        crate::cuda::tune::Tuner::timed_in(&self.tuner)
    }

    /// Runs `g` with epilogue `epi` into `c` (`(c, res)`: `beta` scales `res`, or `c` itself
    /// where `res` is 0); `false` (nothing launched) when a fused epilogue has no algorithm. Plain
    /// and bias GEMMs report a missing algorithm as an error.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_with(
        &self,
        dtype: Dtype,
        out_f32: bool,
        epi: Epi,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        (c, res): (DevPtr, DevPtr),
        alpha: f32,
        beta: f32,
    ) -> Result<bool> {
        if g.m == 0 || g.n == 0 {
            return Ok(true);
        }
        let fused = !matches!(epi.kind, EpiKind::Default | EpiKind::Bias);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let key = (dtype == Dtype::Bf16, out_f32, epi.kind, epi.aux_ld, *g);
        // The heuristic's ranking, when this call plans the shape (its first run chooses).
        let mut candidates = None;
        let plan = match plans.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let planned = match self.plan(dtype, out_f32, epi, g) {
                    Ok((p, ranked)) => {
                        candidates = Some(ranked);
                        Some(p)
                    }
                    // No algorithm for a fused epilogue: remembered, and the caller falls back.
                    Err(PlanError::NoAlgorithm(_)) if fused => None,
                    Err(PlanError::NoAlgorithm(e) | PlanError::Other(e)) => return Err(e),
                };
                e.insert(planned)
            }
        };
        let Some(plan) = plan.as_mut() else {
            return Ok(false);
        };
        use sys::cublasLtMatmulDescAttributes_t as A;
        for (attr, p, during) in [
            (A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, epi.bias, "set bias"),
            (
                A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                epi.aux,
                "set aux",
            ),
        ] {
            if p != 0 {
                // SAFETY: the attribute is a device pointer, as documented.
                unsafe { set_desc(plan.desc, attr, &p) }
                    .map_err(|e| blas_err(during, dtype, g.m, g.n, g.k, e))?;
            }
        }
        let ops = Operands {
            dtype,
            g,
            a,
            b,
            c,
            res,
            alpha,
            beta,
        };
        if let Some(candidates) = candidates
            && self.tuning.load(std::sync::atomic::Ordering::Relaxed)
        {
            // SAFETY: forwarded; beta 0 is checked there.
            unsafe { self.choose_algo(plan, &candidates, &key, &ops) };
        }
        // SAFETY: plan handles are live; pointers are the caller's promise.
        unsafe { self.launch(plan, &plan.algo, &ops) }?;
        Ok(true)
    }

    /// Runs one planned GEMM with `algo`.
    ///
    /// # Safety
    /// As [`Gemm::run`], for `ops`; the plan's epilogue pointers set.
    unsafe fn launch(
        &self,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        ops: &Operands,
    ) -> Result<()> {
        let g = ops.g;
        let workspace = self.workspace()?;
        // SAFETY: plan handles are live; pointers are the caller's promise.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&ops.alpha) as *const f32 as *const _,
                (&ops.beta) as *const f32 as *const _,
                ops.b as *const _,
                plan.layouts[0],
                ops.a as *const _,
                plan.layouts[1],
                (if ops.res != 0 { ops.res } else { ops.c }) as *const _,
                plan.layouts[2],
                ops.c as *mut _,
                plan.layouts[2],
                algo,
                workspace as *mut _,
                WORKSPACE,
                self.gpu.current().cu_stream() as *mut _,
            )
        }
        .map_err(|e| blas_err("matmul", ops.dtype, g.m, g.n, g.k, e))
    }

    /// A plan for `g` (its first pick as the algorithm) and the heuristic's ranking of
    /// candidates, best first.
    fn plan(
        &self,
        dtype: Dtype,
        out_f32: bool,
        epi: Epi,
        g: &RowMajorGemm,
    ) -> std::result::Result<(Plan, Vec<sys::cublasLtMatmulAlgo_t>), PlanError> {
        let err = |during, e| PlanError::Other(blas_err(during, dtype, g.m, g.n, g.k, e));
        let (ty, out_ty, compute) = lt_types(dtype, out_f32);
        let (ap, bp, cp) = to_column_major(g);
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)
            .map_err(|e| err("create desc", e))?;
        let mut layouts = [std::ptr::null_mut(); 3];
        for (i, op) in [ap, bp, cp].iter().enumerate() {
            let t = if i == 2 { out_ty } else { ty };
            layouts[i] = lt::create_matrix_layout(t, op.rows, op.cols, op.ld)
                .map_err(|e| err("create layout", e))?;
            if let Some((count, ..)) = g.batch {
                use sys::cublasLtMatrixLayoutAttribute_t as L;
                let (count, l) = (count as i32, layouts[i]);
                // SAFETY: attribute values have the documented types (int32, int64).
                unsafe {
                    set_layout(l, L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count)
                        .map_err(|e| err("set batch", e))?;
                    set_layout(
                        l,
                        L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        &op.stride,
                    )
                    .map_err(|e| err("set batch stride", e))?;
                }
            }
        }
        let ta = ap.trans as i32;
        let tb = bp.trans as i32;
        use sys::cublasLtMatmulDescAttributes_t as A;
        // SAFETY: as above.
        unsafe {
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &ta)
                .map_err(|e| err("set transa", e))?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &tb)
                .map_err(|e| err("set transb", e))?;
            if epi.kind != EpiKind::Default {
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi.lt())
                    .map_err(|e| err("set epilogue", e))?;
            }
            if epi.kind == EpiKind::BGradB {
                // The bias gradient's type; cuBLASLt's default (the output's) is the same
                // here, set so that the f32 vector never depends on that default.
                let bias_ty = if out_f32 {
                    sys::cudaDataType::CUDA_R_32F
                } else {
                    ty
                };
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_ty)
                    .map_err(|e| err("set bias type", e))?;
            }
            if epi.aux_ld != 0 {
                let ld = epi.aux_ld as i64;
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld)
                    .map_err(|e| err("set aux ld", e))?;
            }
        }
        let pref = lt::create_matmul_pref().map_err(|e| err("create preference", e))?;
        let ws = WORKSPACE;
        // SAFETY: as above; every handle is live.
        let candidates = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const usize as *const _,
                std::mem::size_of::<usize>(),
            )
            .map_err(|e| err("set workspace", e))?;
            let h = tune::candidates(self.handle, desc, &layouts, pref, tune::CANDIDATES);
            let _ = lt::destroy_matmul_pref(pref);
            match h {
                Ok(h) => h,
                Err(status) => {
                    // Nothing is planned: the descriptor and layouts go now (a fused epilogue's
                    // refusal is remembered, and the caller falls back).
                    let _ = lt::destroy_matmul_desc(desc);
                    for l in layouts {
                        let _ = lt::destroy_matrix_layout(l);
                    }
                    return Err(PlanError::NoAlgorithm(blas_err(
                        "heuristic",
                        dtype,
                        g.m,
                        g.n,
                        g.k,
                        lt::CublasError(status),
                    )));
                }
            }
        };
        let plan = Plan {
            desc,
            layouts,
            algo: candidates[0],
        };
        Ok((plan, candidates))
    }
}

/// cuBLASLt's types for a GEMM in `dtype`: the A/B type, the C/D type (f32 with `out_f32`) and
/// the compute type.
fn lt_types(
    dtype: Dtype,
    out_f32: bool,
) -> (
    sys::cudaDataType,
    sys::cudaDataType,
    sys::cublasComputeType_t,
) {
    let (ty, compute) = match dtype {
        Dtype::F32 => (
            sys::cudaDataType::CUDA_R_32F,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC,
        ),
        Dtype::Bf16 => (
            sys::cudaDataType::CUDA_R_16BF,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
    };
    let out = if out_f32 {
        sys::cudaDataType::CUDA_R_32F
    } else {
        ty
    };
    (ty, out, compute)
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// Why a shape could not be planned: cuBLASLt's heuristic found no algorithm (a fused epilogue
/// then falls back), or any other failure.
enum PlanError {
    NoAlgorithm(CudaError),
    Other(CudaError),
}

/// Sets a matmul descriptor's attribute to `value` (its address and size).
///
/// # Safety
/// `desc` must be live and `T` the attribute's documented type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> std::result::Result<(), lt::CublasError> {
    let size = std::mem::size_of::<T>();
    // SAFETY: the caller's promise; `value` lives through the call.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const _, size) }
}

/// Sets a matrix layout's attribute to `value`, as [`set_desc`].
///
/// # Safety
/// `layout` must be live and `T` the attribute's documented type.
unsafe fn set_layout<T>(
    layout: sys::cublasLtMatrixLayout_t,
    attr: sys::cublasLtMatrixLayoutAttribute_t,
    value: &T,
) -> std::result::Result<(), lt::CublasError> {
    let size = std::mem::size_of::<T>();
    // SAFETY: as in `set_desc`.
    unsafe { lt::set_matrix_layout_attribute(layout, attr, value as *const T as *const _, size) }
}

/// A fused epilogue called with arguments it cannot take.
fn epilogue_err(epilogue: &Epilogue, why: &str) -> CudaError {
    CudaError::BadLaunch {
        kernel: "gemm epilogue".into(),
        why: format!("{epilogue:?} {why}"),
    }
}

fn blas_err(
    during: &'static str,
    dtype: Dtype,
    m: usize,
    n: usize,
    k: usize,
    e: lt::CublasError,
) -> CudaError {
    CudaError::Blas {
        during,
        dtype: dtype.suffix(),
        m,
        n,
        k,
        status: format!("{e:?}"),
    }
}
