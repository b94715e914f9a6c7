//! A thin, owned layer over cuDNN's backend descriptor API (cudarc's `cudnn::sys`): descriptors
//! that destroy themselves, typed attribute setters, and the builders the attention graphs use
//! (tensors, pointwise, matmul, reduction, reshape operations; operation graph; heuristics and
//! execution plan; variant pack).
//!
//! Every function here assumes [`super::probe::probe`] succeeded: the calls go through the entry
//! points it resolved ([`super::probe::api`]).

use super::error::{CudnnError, Result};
use super::probe::api;
use cudarc::cudnn::sys::{
    self, cudnnBackendAttributeName_t as Attr, cudnnBackendAttributeType_t as Ty,
    cudnnBackendDescriptorType_t as DescType, cudnnDataType_t, cudnnPointwiseMode_t,
    cudnnReduceTensorOp_t, cudnnStatus_t,
};
use std::ffi::c_void;

/// Turns a status into a `Result`, with cuDNN's last error message when it has one.
pub(crate) fn check(status: cudnnStatus_t, during: impl FnOnce() -> String) -> Result<()> {
    if status == cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    let mut buf = vec![0 as std::ffi::c_char; 1024];
    // SAFETY: cudnnGetLastErrorString writes at most `len` bytes, NUL-terminated.
    let detail = unsafe {
        (api().get_last_error_string)(buf.as_mut_ptr(), buf.len());
        std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .trim()
            .to_string()
    };
    Err(CudnnError::Status {
        during: during(),
        status: format!("{status:?}"),
        detail: if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        },
    })
}

/// An owned backend descriptor.
pub(crate) struct Desc {
    pub(crate) raw: sys::cudnnBackendDescriptor_t,
    kind: DescType,
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: `raw` came from cudnnBackendCreateDescriptor and is destroyed once.
        unsafe {
            (api().backend_destroy_descriptor)(self.raw);
        }
    }
}

impl Desc {
    /// A new, unfinalized descriptor of `kind`.
    pub(crate) fn new(kind: DescType) -> Result<Desc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: writes one descriptor handle.
        check(
            unsafe { (api().backend_create_descriptor)(kind, &mut raw) },
            || format!("creating a {kind:?}"),
        )?;
        Ok(Desc { raw, kind })
    }

    fn set_raw(&self, name: Attr, ty: Ty, count: usize, data: *const c_void) -> Result<()> {
        // SAFETY: callers pass `count` elements of the C type that `ty` names.
        check(
            unsafe { (api().backend_set_attribute)(self.raw, name, ty, count as i64, data) },
            || format!("setting {name:?} on a {:?}", self.kind),
        )
    }

    pub(crate) fn set_i64s(&self, name: Attr, v: &[i64]) -> Result<()> {
        self.set_raw(name, Ty::CUDNN_TYPE_INT64, v.len(), v.as_ptr().cast())
    }
    pub(crate) fn set_i64(&self, name: Attr, v: i64) -> Result<()> {
        self.set_i64s(name, &[v])
    }
    pub(crate) fn set_f32(&self, name: Attr, v: f32) -> Result<()> {
        self.set_raw(name, Ty::CUDNN_TYPE_FLOAT, 1, (&v as *const f32).cast())
    }
    pub(crate) fn set_bool(&self, name: Attr, v: bool) -> Result<()> {
        self.set_raw(name, Ty::CUDNN_TYPE_BOOLEAN, 1, (&v as *const bool).cast())
    }
    pub(crate) fn set_dtype(&self, name: Attr, v: cudnnDataType_t) -> Result<()> {
        self.set_raw(
            name,
            Ty::CUDNN_TYPE_DATA_TYPE,
            1,
            (&v as *const cudnnDataType_t).cast(),
        )
    }
    pub(crate) fn set_descs(&self, name: Attr, v: &[&Desc]) -> Result<()> {
        let raws: Vec<sys::cudnnBackendDescriptor_t> = v.iter().map(|d| d.raw).collect();
        self.set_raw(
            name,
            Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            raws.len(),
            raws.as_ptr().cast(),
        )
    }
    pub(crate) fn set_desc(&self, name: Attr, v: &Desc) -> Result<()> {
        self.set_descs(name, &[v])
    }
    pub(crate) fn set_handle(&self, name: Attr, h: sys::cudnnHandle_t) -> Result<()> {
        self.set_raw(
            name,
            Ty::CUDNN_TYPE_HANDLE,
            1,
            (&h as *const sys::cudnnHandle_t).cast(),
        )
    }
    pub(crate) fn set_enum<T: Copy>(&self, name: Attr, ty: Ty, v: T) -> Result<()> {
        self.set_raw(name, ty, 1, (&v as *const T).cast())
    }
    pub(crate) fn set_ptrs(&self, name: Attr, v: &[*mut c_void]) -> Result<()> {
        self.set_raw(name, Ty::CUDNN_TYPE_VOID_PTR, v.len(), v.as_ptr().cast())
    }

    /// Finalizes the descriptor.
    pub(crate) fn finalize(&self) -> Result<()> {
        // SAFETY: a live descriptor.
        check(unsafe { (api().backend_finalize)(self.raw) }, || {
            format!("finalizing a {:?}", self.kind)
        })
    }

    /// Reads up to `count` elements of type `ty` of attribute `name` into `out` (null with count
    /// 0: a count query); returns how many cuDNN wrote (or holds).
    ///
    /// # Safety
    /// `out` must have room for `count` elements of the C type `ty` names.
    unsafe fn get_raw(&self, name: Attr, ty: Ty, count: i64, out: *mut c_void) -> Result<i64> {
        let mut got = 0i64;
        // SAFETY: the caller's promise.
        check(
            unsafe { (api().backend_get_attribute)(self.raw, name, ty, count, &mut got, out) },
            || format!("reading {name:?} of a {:?}", self.kind),
        )?;
        Ok(got)
    }

    /// Reads a descriptor-array attribute: as many new descriptors of `kind` as it holds (a
    /// count query first), filled by cuDNN.
    pub(crate) fn get_descs(&self, name: Attr, kind: DescType) -> Result<Vec<Desc>> {
        let desc = Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        // SAFETY: a count query writes no element.
        let count = unsafe { self.get_raw(name, desc, 0, std::ptr::null_mut()) }?;
        self.get_descs_n(name, kind, count)
    }

    /// Reads at most `count` descriptors of `kind` from a descriptor-array attribute.
    pub(crate) fn get_descs_n(&self, name: Attr, kind: DescType, count: i64) -> Result<Vec<Desc>> {
        let mut out: Vec<Desc> = (0..count.max(0))
            .map(|_| Desc::new(kind))
            .collect::<Result<_>>()?;
        if out.is_empty() {
            return Ok(out);
        }
        let mut raws: Vec<sys::cudnnBackendDescriptor_t> = out.iter().map(|d| d.raw).collect();
        let desc = Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        // SAFETY: `raws` holds `count` created descriptors of the attribute's kind to fill.
        let got = unsafe { self.get_raw(name, desc, count, raws.as_mut_ptr().cast()) }?;
        out.truncate(got.clamp(0, count) as usize);
        Ok(out)
    }

    /// Reads one 4-byte attribute of type `ty` (an enum such as a knob type) as its integer.
    pub(crate) fn get_i32(&self, name: Attr, ty: Ty) -> Result<i32> {
        let mut v = 0i32;
        // SAFETY: room for exactly one 4-byte value.
        unsafe { self.get_raw(name, ty, 1, (&mut v as *mut i32).cast()) }?;
        Ok(v)
    }

    /// Reads one INT64 attribute.
    pub(crate) fn get_i64(&self, name: Attr) -> Result<i64> {
        let mut v = 0i64;
        // SAFETY: room for exactly one i64.
        unsafe { self.get_raw(name, Ty::CUDNN_TYPE_INT64, 1, (&mut v as *mut i64).cast()) }?;
        Ok(v)
    }
}

/// Element types of graph tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    Bf16,
    I32,
    Bool,
}

impl Elem {
    fn cudnn(self) -> cudnnDataType_t {
        match self {
            Elem::F32 => cudnnDataType_t::CUDNN_DATA_FLOAT,
            Elem::Bf16 => cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            Elem::I32 => cudnnDataType_t::CUDNN_DATA_INT32,
            Elem::Bool => cudnnDataType_t::CUDNN_DATA_BOOLEAN,
        }
    }
}

/// Index of a tensor inside a [`GraphBuilder`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct T(usize);

/// Collects tensor and operation descriptors of one operation graph; keeps them alive as long
/// as the plan built from them.
pub(crate) struct GraphBuilder {
    tensors: Vec<Desc>,
    dims: Vec<[i64; 4]>,
    ops: Vec<Desc>,
    /// Descriptors operations point to (pointwise, matmul, reduction descriptors).
    aux: Vec<Desc>,
    next_virtual_uid: i64,
    /// UIDs of the non-virtual tensors: exactly what a variant pack must bind.
    bound: Vec<i64>,
}

/// How a tensor is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bind {
    /// A device buffer in the variant pack under this UID.
    Device(i64),
    /// A host scalar passed by value under this UID (dims and strides all 1).
    Scalar(i64),
    /// An intermediate that never leaves the fused kernel.
    Virtual,
}

impl GraphBuilder {
    pub(crate) fn new() -> GraphBuilder {
        GraphBuilder {
            tensors: Vec::new(),
            dims: Vec::new(),
            ops: Vec::new(),
            aux: Vec::new(),
            next_virtual_uid: 1000,
            bound: Vec::new(),
        }
    }

    /// A tensor of `dims` and `strides` (4-d, elements).
    pub(crate) fn tensor(
        &mut self,
        bind: Bind,
        elem: Elem,
        dims: [i64; 4],
        strides: [i64; 4],
    ) -> Result<T> {
        use Attr::*;
        let d = Desc::new(DescType::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
        let uid = match bind {
            Bind::Device(u) | Bind::Scalar(u) => {
                self.bound.push(u);
                u
            }
            Bind::Virtual => {
                self.next_virtual_uid += 1;
                self.next_virtual_uid
            }
        };
        d.set_dtype(CUDNN_ATTR_TENSOR_DATA_TYPE, elem.cudnn())?;
        d.set_i64s(CUDNN_ATTR_TENSOR_DIMENSIONS, &dims)?;
        d.set_i64s(CUDNN_ATTR_TENSOR_STRIDES, &strides)?;
        d.set_i64(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid)?;
        d.set_i64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 16)?;
        d.set_bool(CUDNN_ATTR_TENSOR_IS_VIRTUAL, bind == Bind::Virtual)?;
        if matches!(bind, Bind::Scalar(_)) {
            d.set_bool(CUDNN_ATTR_TENSOR_IS_BY_VALUE, true)?;
        }
        d.finalize()?;
        self.tensors.push(d);
        self.dims.push(dims);
        Ok(T(self.tensors.len() - 1))
    }

    /// A host scalar (f32 or i32) passed by value.
    pub(crate) fn scalar(&mut self, uid: i64, elem: Elem) -> Result<T> {
        self.tensor(Bind::Scalar(uid), elem, [1; 4], [1; 4])
    }

    /// A virtual tensor shaped like `like`, with its strides.
    pub(crate) fn virtual_like(&mut self, like: T, elem: Elem, strides: [i64; 4]) -> Result<T> {
        let dims = self.dims[like.0];
        self.tensor(Bind::Virtual, elem, dims, strides)
    }

    /// Operations added so far.
    #[cfg(test)]
    pub(crate) fn op_count(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn dims(&self, t: T) -> [i64; 4] {
        self.dims[t.0]
    }

    /// A pointwise operation `y = mode(x, b, t)` (b, t optional), computed in `compute`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pointwise(
        &mut self,
        mode: cudnnPointwiseMode_t,
        compute: Elem,
        x: T,
        b: Option<T>,
        t: Option<T>,
        y: T,
        axis: Option<i64>,
    ) -> Result<()> {
        use Attr::*;
        let pw = Desc::new(DescType::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        pw.set_enum(
            CUDNN_ATTR_POINTWISE_MODE,
            Ty::CUDNN_TYPE_POINTWISE_MODE,
            mode,
        )?;
        pw.set_dtype(CUDNN_ATTR_POINTWISE_MATH_PREC, compute.cudnn())?;
        if let Some(a) = axis {
            pw.set_i64(CUDNN_ATTR_POINTWISE_AXIS, a)?;
        }
        pw.finalize()?;
        let op = Desc::new(DescType::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
        op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &pw)?;
        op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, &self.tensors[x.0])?;
        if let Some(b) = b {
            op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, &self.tensors[b.0])?;
        }
        if let Some(t) = t {
            op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, &self.tensors[t.0])?;
        }
        op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, &self.tensors[y.0])?;
        op.set_f32(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, 1.0)?;
        op.set_f32(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, 1.0)?;
        op.finalize()?;
        self.aux.push(pw);
        self.ops.push(op);
        Ok(())
    }

    /// `c = a @ b` (batched over the first two dims, broadcasting b's heads), f32 accumulation.
    pub(crate) fn matmul(&mut self, a: T, b: T, c: T) -> Result<()> {
        use Attr::*;
        let mm = Desc::new(DescType::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
        mm.set_dtype(CUDNN_ATTR_MATMUL_COMP_TYPE, Elem::F32.cudnn())?;
        mm.finalize()?;
        let op = Desc::new(DescType::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR)?;
        op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, &self.tensors[a.0])?;
        op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, &self.tensors[b.0])?;
        op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, &self.tensors[c.0])?;
        op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, &mm)?;
        op.finalize()?;
        self.aux.push(mm);
        self.ops.push(op);
        Ok(())
    }

    /// `y = reduce(x)` over the dims where y has extent 1, f32 accumulation.
    pub(crate) fn reduction(&mut self, op_kind: cudnnReduceTensorOp_t, x: T, y: T) -> Result<()> {
        use Attr::*;
        let red = Desc::new(DescType::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
        red.set_enum(
            CUDNN_ATTR_REDUCTION_OPERATOR,
            Ty::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
            op_kind,
        )?;
        red.set_dtype(CUDNN_ATTR_REDUCTION_COMP_TYPE, Elem::F32.cudnn())?;
        red.finalize()?;
        let op = Desc::new(DescType::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR)?;
        op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, &self.tensors[x.0])?;
        op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, &self.tensors[y.0])?;
        op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, &red)?;
        op.finalize()?;
        self.aux.push(red);
        self.ops.push(op);
        Ok(())
    }

    /// `y = x` seen through other dims/strides (a transpose of the last two dims here).
    pub(crate) fn reshape(&mut self, x: T, y: T) -> Result<()> {
        use Attr::*;
        let op = Desc::new(DescType::CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR)?;
        op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, &self.tensors[x.0])?;
        op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, &self.tensors[y.0])?;
        op.finalize()?;
        self.ops.push(op);
        Ok(())
    }

    /// Builds the operation graph, asks the heuristics (mode A) for engine configs and finalizes
    /// those `want` names, in the heuristics' order among the configs that finalize. Returns each
    /// plan with its workspace bytes and engine's global index (at least one plan, else `Err`).
    pub(crate) fn finalize_plans(
        self,
        handle: sys::cudnnHandle_t,
        graph: &'static str,
        shape: String,
        want: Configs,
        wide: bool,
    ) -> Result<Vec<BuiltPlan>> {
        use Attr::*;
        let og = Desc::new(DescType::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
        let op_refs: Vec<&Desc> = self.ops.iter().collect();
        og.set_descs(CUDNN_ATTR_OPERATIONGRAPH_OPS, &op_refs)?;
        og.set_handle(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle)?;
        og.finalize()?;

        // Heuristics mode A, as the frontend asks for SDPA graphs (the fallback list holds only
        // engines that need explicit knobs for these graphs). cuDNN drops configs that fail its
        // support checks; the first error of those that remain is the one reported.
        let mut cfgs = engine_configs(&og, sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A)?;
        if wide {
            // After the listed ones, so that their indices do not move.
            let more = super::knobs::neighbours(&cfgs, super::knobs::WIDE_EXTRA);
            cfgs.extend(more.into_iter().map(|(c, ..)| c));
        }
        let tried = cfgs.len();
        let (skip, take) = match want {
            Configs::Nth(k) => (k, 1),
            Configs::Upto(n) => (0, n.max(1)),
        };
        let keep = std::rc::Rc::new((og, self.tensors, self.ops, self.aux));
        let mut viable = 0;
        let mut plans = Vec::new();
        let mut first_err: Option<String> = None;
        for cfg in &cfgs {
            let plan = Desc::new(DescType::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            plan.set_handle(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle)?;
            plan.set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg)?;
            match plan.finalize() {
                Ok(()) if viable < skip => viable += 1,
                Ok(()) => {
                    let workspace = plan.get_i64(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)?;
                    let engine = engine_index(cfg).unwrap_or(-1);
                    plans.push(BuiltPlan {
                        plan,
                        workspace: workspace.max(0) as usize,
                        engine,
                        // Read for the wide search's log only (64 descriptors a read).
                        knobs: if wide {
                            super::knobs::choices(cfg).unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                        config: viable,
                        bound: self.bound.clone(),
                        _keep: keep.clone(),
                    });
                    viable += 1;
                    if plans.len() == take {
                        break;
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e.to_string());
                }
            }
        }
        if !plans.is_empty() {
            return Ok(plans);
        }
        if viable > 0 {
            return Err(CudnnError::NoEngine {
                graph,
                shape,
                why: format!(
                    "engine config {skip} was asked for (MODELSPEC_CUDNN_CONFIG, or a choice \
                     in the kernel cache's cudnn-configs.tsv), and only {viable} of the \
                     heuristics' {tried} finalize; unset it (or 0) for the first"
                ),
            });
        }
        let last_err = first_err.unwrap_or_else(|| {
            "no viable engine config (cuDNN's log explains: CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr)".into()
        });
        Err(CudnnError::NoEngine {
            graph,
            shape,
            why: format!("{tried} config(s) tried, first error: {last_err}"),
        })
    }
}

/// Which of the heuristics' engine configs that finalize a build takes, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Configs {
    /// The k-th (0: the heuristics' first pick, the one PyTorch runs).
    Nth(usize),
    /// Each, up to this many (to be timed against each other: [`crate::cuda::tune`]).
    Upto(usize),
}

/// The engine config `MODELSPEC_CUDNN_CONFIG=<k>` forces (the k-th of those that finalize in the
/// heuristics' order; 0 the first), or `None` when unset or empty (the choice is then the
/// persisted or timed one: [`super::CudnnAttention`]). For timing the alternatives shape by
/// shape (`cuda_bench cudnn` in bench/gpu_bench.sh's `CUDNN_CONFIGS`).
pub(crate) fn config_choice() -> Result<Option<usize>> {
    parse_config_choice(std::env::var("MODELSPEC_CUDNN_CONFIG").ok().as_deref())
}

/// [`config_choice`] of a value of the variable (`None`: unset).
fn parse_config_choice(value: Option<&str>) -> Result<Option<usize>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            CudnnError::Unsupported(format!(
                "MODELSPEC_CUDNN_CONFIG={v:?} (it takes the index of an engine config; 0 is the \
                 heuristics' first)"
            ))
        }),
    }
}

/// The engine configs the heuristics of `mode` offer for a finalized operation graph, best first.
fn engine_configs(og: &Desc, mode: sys::cudnnBackendHeurMode_t) -> Result<Vec<Desc>> {
    use Attr::*;
    let heur = Desc::new(DescType::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, og)?;
    heur.set_enum(CUDNN_ATTR_ENGINEHEUR_MODE, Ty::CUDNN_TYPE_HEUR_MODE, mode)?;
    heur.finalize()?;
    heur.get_descs(
        CUDNN_ATTR_ENGINEHEUR_RESULTS,
        DescType::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
    )
}

/// The engine behind an engine config.
pub(crate) fn engine_of(cfg: &Desc) -> Result<Desc> {
    cfg.get_descs_n(
        Attr::CUDNN_ATTR_ENGINECFG_ENGINE,
        DescType::CUDNN_BACKEND_ENGINE_DESCRIPTOR,
        1,
    )?
    .pop()
    .ok_or_else(|| CudnnError::Unsupported("an engine config without an engine".into()))
}

/// The global index of the engine behind an engine config (for reports).
pub(crate) fn engine_index(cfg: &Desc) -> Result<i64> {
    engine_of(cfg)?.get_i64(Attr::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)
}

/// What a plan keeps alive: its operation graph, and the tensors, operations and auxiliary
/// descriptors the graph was built from.
type Kept = (Desc, Vec<Desc>, Vec<Desc>, Vec<Desc>);

/// A finalized execution plan and everything it was built from.
pub(crate) struct BuiltPlan {
    pub(crate) plan: Desc,
    /// Bytes of workspace the plan itself needs.
    pub(crate) workspace: usize,
    /// cuDNN's global engine index (-1 if it could not be read).
    pub(crate) engine: i64,
    /// The config's knob choices (type, value), for the wide search's log (empty otherwise).
    pub(crate) knobs: Vec<super::knobs::Choice>,
    /// Which of the heuristics' configs that finalize this is (0: the first; see [`Configs`]).
    pub(crate) config: usize,
    /// UIDs of the tensors a variant pack binds.
    pub(crate) bound: Vec<i64>,
    /// The operation graph and the descriptors it was built from, shared by the plans of one
    /// build ([`GraphBuilder::finalize_plans`]); the caller keeps one of them and drops the others
    /// on the building thread, before anything shares the plan.
    _keep: std::rc::Rc<Kept>,
}

impl BuiltPlan {
    /// Runs the plan on `handle`'s stream. `bindings` maps UIDs to device pointers or host
    /// scalars; those the plan does not use are left out of the variant pack.
    ///
    /// # Safety
    /// Every device pointer must address a buffer of the size and layout its tensor was built
    /// with, host scalar pointers must be live, and `workspace` must hold `self.workspace` bytes.
    pub(crate) unsafe fn execute(
        &self,
        handle: sys::cudnnHandle_t,
        bindings: &[(i64, *mut c_void)],
        workspace: *mut c_void,
    ) -> Result<()> {
        use Attr::*;
        // Exactly the plan's non-virtual tensors, each once.
        let mut uids = Vec::with_capacity(self.bound.len());
        let mut ptrs = Vec::with_capacity(self.bound.len());
        for &uid in &self.bound {
            let Some(&(_, p)) = bindings.iter().find(|(u, _)| *u == uid) else {
                return Err(CudnnError::Unsupported(format!(
                    "a call that binds no pointer for tensor uid {uid}"
                )));
            };
            uids.push(uid);
            ptrs.push(p);
        }
        let vp = Desc::new(DescType::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
        vp.set_i64s(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &uids)?;
        vp.set_ptrs(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, &ptrs)?;
        vp.set_ptrs(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, &[workspace])?;
        vp.finalize()?;
        // SAFETY: the caller's contract above.
        check(
            unsafe { (api().backend_execute)(handle, self.plan.raw, vp.raw) },
            || "executing a plan".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::parse_config_choice;

    #[test]
    fn the_config_choice_reads_an_index() {
        assert_eq!(parse_config_choice(None).unwrap(), None);
        assert_eq!(parse_config_choice(Some("")).unwrap(), None);
        assert_eq!(parse_config_choice(Some(" 0")).unwrap(), Some(0));
        assert_eq!(parse_config_choice(Some(" 2 ")).unwrap(), Some(2));
        let err = parse_config_choice(Some("fast")).unwrap_err().to_string();
        assert!(
            err.contains("MODELSPEC_CUDNN_CONFIG") && err.contains("index"),
            "{err}"
        );
    }
}
