//! Choosing a GEMM's cuBLASLt algorithm by timing, once per machine.
//!
//! cuBLASLt's heuristic ranks the algorithms it has for a GEMM (shape, types, epilogue) without
//! running them; its first pick is what PyTorch's cuBLASLt path takes. For the large GEMMs of a
//! training step a later candidate can be faster, so a GEMM of at least [`MIN_FLOP`] planned
//! inside `Gemm::with_tuning(true, ..)` (the trainer's step, whose shapes are fixed) runs each of
//! the heuristic's first [`CANDIDATES`] candidates on its own operands and keeps the fastest.
//! Measured on an H200 (session-h200-2026-12-06-s7): 8 of gpt2's 15 such GEMMs took a later
//! candidate, up to 9% faster (the head's classifier, the K = 768 projections, DGELU), and the
//! step went from 29.66 to 29.35 ms; llama-3.2-1b's 16384 x 2048 x 2048 GEMM 0.214 -> 0.182 ms.
//!
//! The choices are persisted per machine ([`crate::cuda::tune`]: `<kernel cache>/gemm-algos.tsv`,
//! keyed by the GPU, the cuBLASLt version and the plan). `MODELSPEC_GEMM_TUNE=off` (or `0`,
//! `false`) turns the timing off.
//!
//! `MODELSPEC_GEMM_TUNE=wide` (an experiment) also times up to [`WIDE_EXTRA`] configurations the
//! heuristic does not list ([`enumerate`]), under keys of their own.
//!
//! Only GEMMs that overwrite their outputs (beta 0, or beta 1 on a separate input) are timed, on
//! their own buffers: each run writes the same outputs from the same inputs, and the call's real
//! run comes after.

use super::{Gemm, Operands, Plan, PlanKey, WORKSPACE, lt_types};
use crate::cuda::tune::Tuned;
pub(super) use crate::cuda::tune::{Tuner, fastest, per_run};
use cudarc::cublaslt::sys;

/// How many of the heuristic's candidates are timed.
pub(super) const CANDIDATES: usize = 8;

/// The smallest GEMM (2·m·n·k) that is timed: below it the choice matters little, and decode's
/// and tests' small GEMMs stay on the heuristic's pick.
pub(super) const MIN_FLOP: f64 = 4e9;

/// The tuner `MODELSPEC_GEMM_TUNE` and the kernel cache allow (off, or reading and appending
/// `<cache>/gemm-algos.tsv`), and whether it says `wide`.
pub(super) fn tuner_from_env() -> (Tuner, bool) {
    Tuner::from_env("MODELSPEC_GEMM_TUNE", "gemm-algos.tsv")
}

/// The heuristic's ranking of at most [`CANDIDATES`] algorithms (best first) for a described
/// GEMM.
///
/// # Safety
/// Every handle must be live.
pub(super) unsafe fn candidates(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: &[sys::cublasLtMatrixLayout_t; 3],
    pref: sys::cublasLtMatmulPreference_t,
    count: usize,
) -> Result<Vec<sys::cublasLtMatmulAlgo_t>, sys::cublasStatus_t> {
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = Vec::with_capacity(count);
    let mut returned = 0;
    // SAFETY: `results` has room for `count` entries; the handles are the caller's promise.
    let status = unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc,
            layouts[0],
            layouts[1],
            layouts[2],
            layouts[2],
            pref,
            count as i32,
            results.as_mut_ptr(),
            &mut returned,
        )
    };
    if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(status);
    }
    // SAFETY: cuBLASLt initialised the first `returned` entries.
    unsafe { results.set_len((returned.max(0) as usize).min(count)) };
    let algos: Vec<_> = results
        .iter()
        .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
        .map(|r| r.algo)
        .collect();
    if algos.is_empty() {
        return Err(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED);
    }
    Ok(algos)
}

/// At most this many enumerated algorithms are timed per GEMM under [`Tuner::wide`].
pub(super) const WIDE_EXTRA: usize = 48;

/// Configurations the heuristic did not offer (`MODELSPEC_GEMM_TUNE=wide`): every algorithm id
/// cuBLASLt has for the types, in each tile and stage configuration its capabilities list
/// (cluster shape, split-K and swizzling left at their defaults), that `cublasLtMatmulAlgoCheck`
/// accepts for this GEMM within `workspace` bytes and that is not already in `have`. The list is
/// a function of the GEMM, the GPU and the library only (the persisted choice is an index into
/// `have` followed by it): sorted by the check's wave efficiency (waves over their ceiling,
/// best first, then the enumeration order), at most [`WIDE_EXTRA`].
///
/// # Safety
/// Every handle must be live; `types` are the GEMM's (compute type, A/B type, C/D type).
pub(super) unsafe fn enumerate(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: &[sys::cublasLtMatrixLayout_t; 3],
    types: (
        sys::cublasComputeType_t,
        sys::cudaDataType,
        sys::cudaDataType,
    ),
    workspace: usize,
    have: &[sys::cublasLtMatmulAlgo_t],
) -> Vec<sys::cublasLtMatmulAlgo_t> {
    use sys::cublasLtMatmulAlgoCapAttributes_t as Cap;
    use sys::cublasLtMatmulAlgoConfigAttributes_t as Cfg;
    const OK: sys::cublasStatus_t = sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
    let (compute, ab, cd) = types;
    let f32_ty = sys::cudaDataType::CUDA_R_32F;
    let mut ids = vec![0i32; 256];
    let mut n = 0;
    // SAFETY: `ids` has room for the requested count.
    let st = unsafe {
        sys::cublasLtMatmulAlgoGetIds(
            handle,
            compute,
            f32_ty,
            ab,
            ab,
            cd,
            cd,
            ids.len() as i32,
            ids.as_mut_ptr(),
            &mut n,
        )
    };
    if st != OK {
        return Vec::new();
    }
    ids.truncate(n.max(0) as usize);
    // A capability that is an array of u32 (tile or stage ids); `[0]` (undefined) when empty.
    let ids_of = |algo: &sys::cublasLtMatmulAlgo_t, cap: Cap| -> Vec<u32> {
        let mut bytes = 0usize;
        // SAFETY: a size query (null buffer, 0 bytes) writes only `bytes`.
        let st = unsafe {
            sys::cublasLtMatmulAlgoCapGetAttribute(algo, cap, std::ptr::null_mut(), 0, &mut bytes)
        };
        let count = bytes / 4;
        if st != OK || count == 0 {
            return vec![0];
        }
        let mut v = vec![0u32; count];
        let mut written = 0usize;
        // SAFETY: `v` holds `bytes` bytes.
        let st = unsafe {
            sys::cublasLtMatmulAlgoCapGetAttribute(
                algo,
                cap,
                v.as_mut_ptr().cast(),
                count * 4,
                &mut written,
            )
        };
        if st != OK { vec![0] } else { v }
    };
    let mut found: Vec<(f32, sys::cublasLtMatmulAlgo_t)> = Vec::new();
    for id in ids {
        // SAFETY: cublasLtMatmulAlgo_t is plain data that AlgoInit fills.
        let mut base: sys::cublasLtMatmulAlgo_t = unsafe { std::mem::zeroed() };
        // SAFETY: writes one algorithm.
        if unsafe {
            sys::cublasLtMatmulAlgoInit(handle, compute, f32_ty, ab, ab, cd, cd, id, &mut base)
        } != OK
        {
            continue;
        }
        for tile in ids_of(&base, Cap::CUBLASLT_ALGO_CAP_TILE_IDS) {
            for stage in ids_of(&base, Cap::CUBLASLT_ALGO_CAP_STAGES_IDS) {
                let mut algo = base;
                let set = |algo: &mut sys::cublasLtMatmulAlgo_t, attr: Cfg, v: u32| {
                    // SAFETY: both attributes are uint32_t.
                    let st = unsafe {
                        sys::cublasLtMatmulAlgoConfigSetAttribute(
                            algo,
                            attr,
                            (&v as *const u32).cast(),
                            4,
                        )
                    };
                    st == OK
                };
                if !set(&mut algo, Cfg::CUBLASLT_ALGO_CONFIG_TILE_ID, tile)
                    || !set(&mut algo, Cfg::CUBLASLT_ALGO_CONFIG_STAGES_ID, stage)
                {
                    continue;
                }
                // SAFETY: plain data the check fills.
                let mut res: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
                // SAFETY: live handles (the caller's promise); `res` is written.
                let st = unsafe {
                    sys::cublasLtMatmulAlgoCheck(
                        handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], &algo,
                        &mut res,
                    )
                };
                if st != OK || res.workspaceSize > workspace {
                    continue;
                }
                let same = |a: &sys::cublasLtMatmulAlgo_t| a.data == algo.data;
                if have.iter().any(same) || found.iter().any(|(_, a)| same(a)) {
                    continue;
                }
                let w = res.wavesCount.max(f32::MIN_POSITIVE);
                found.push((w / w.ceil(), algo));
            }
        }
    }
    // Stable: equal efficiencies keep the enumeration order.
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.into_iter().take(WIDE_EXTRA).map(|(_, a)| a).collect()
}

impl Gemm {
    /// A newly planned GEMM's algorithm among the heuristic's `candidates` (this module): the
    /// persisted choice for its key, else (a large GEMM that overwrites its outputs, on a stream
    /// not being captured) the fastest, timed on the call's own operands and persisted; else the
    /// heuristic's first pick, as planned.
    ///
    /// # Safety
    /// As [`Gemm::launch`].
    pub(super) unsafe fn choose_algo(
        &self,
        plan: &mut Plan,
        candidates: &[sys::cublasLtMatmulAlgo_t],
        key: &PlanKey,
        ops: &Operands,
    ) {
        let g = ops.g;
        let runs = g.batch.map_or(1, |(count, ..)| count);
        let flop = 2.0 * (g.m * g.n * g.k * runs) as f64;
        if candidates.len() < 2 || flop < MIN_FLOP {
            return;
        }
        let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
        if !tuner.enabled() {
            return;
        }
        let id = format!("{}|{key:?}", self.choice_prefix());
        // `MODELSPEC_GEMM_TUNE=wide`: configurations beyond the heuristic's list too, under a
        // key of their own (a plain run never reads an index into the longer list).
        let mut candidates = std::borrow::Cow::Borrowed(candidates);
        let id = if self.wide.load(std::sync::atomic::Ordering::Relaxed) {
            let (ab, cd, compute) = lt_types(ops.dtype, key.1);
            // SAFETY: the plan's handles are live.
            let more = unsafe {
                enumerate(
                    self.handle,
                    plan.desc,
                    &plan.layouts,
                    (compute, ab, cd),
                    WORKSPACE,
                    &candidates,
                )
            };
            candidates.to_mut().extend(more);
            format!("{id}|wide")
        } else {
            id
        };
        if let Some(j) = tuner.lookup(&id) {
            if let Some(algo) = candidates.get(j) {
                plan.algo = *algo;
            }
            return;
        }
        // Timing needs the GPU to itself: never while capturing or beside the main stream. A run
        // that adds to its own output (beta 1 in place) cannot be repeated; one that adds a
        // separate input (`res`) can.
        let in_place_add = ops.beta != 0.0 && ops.res == 0;
        if in_place_add || self.gpu.capturing() || self.gpu.in_branch() {
            return;
        }
        let timed = fastest(candidates.len(), |j, reps| {
            // SAFETY: the caller's promise; every run overwrites the same outputs from the same
            // inputs.
            per_run(&self.gpu, reps, || unsafe {
                self.launch(plan, &candidates[j], ops)
            })
        });
        if let Some((j, best_ms, first_ms)) = timed {
            let j = tuner.record(Tuned {
                key: id,
                candidates: candidates.len(),
                chosen: j,
                first_ms,
                best_ms,
            });
            plan.algo = candidates[j];
        }
    }

    /// The start of every key under which a choice made by timing is persisted (this module): the
    /// GPU and the cuBLASLt version, which the timings depend on.
    pub(super) fn choice_prefix(&self) -> String {
        // SAFETY: a plain query of the loaded library.
        let version = unsafe { sys::cublasLtGetVersion() };
        format!("{}|cublasLt {version}", self.gpu.name())
    }
}
