//! The own Hopper GEMM (`hopper_mma.cuh`, `hopper_epilogue.cuh`, `hopper.cu`;
//! docs/hopper_gemm.md): `C = A B^T` in bf16 with f32 accumulation, A `[m, k]` and B `[n, k]`
//! row-major (a linear layer's input and weight), on the tensor cores through `wgmma`, the tiles
//! brought in by the bulk tensor copy engine, in one of four schedules ([`Tile`]); plain, with a
//! bias, with the GELU and its kept pre-activation, or times the GELU's derivative at a kept
//! pre-activation (DGELU) in the epilogue; a B given `[k, n]` is transposed into a scratch first
//! ([`HopperGemm::try_run_kn`]). The trainer's two GELU-epilogue GEMMs reach it through
//! `Gemm::run_epilogue` under `MODELSPEC_OWN_GEMM` (`OwnPolicy`: `on`, `cluster`, or `auto` for
//! the fastest of its schedules and cuBLASLt per GEMM); off by default until it measures faster
//! than cuBLASLt.
use super::{Dtype, Epilogue, RowMajorGemm};
use crate::cuda::compile::KernelSource;
use crate::cuda::error::{CudaError, DriverContext, Result};
use crate::cuda::gpu::{DevPtr, Gpu, Module};
use crate::cuda_args;
use cudarc::driver::sys;
use std::sync::Arc;

/// The kernel text: the primitives, the epilogues, then the kernels, as one source.
pub const SOURCE: &str = concat!(
    include_str!("../hopper_mma.cuh"),
    include_str!("../hopper_epilogue.cuh"),
    include_str!("../hopper.cu")
);

/// Tile rows of C a block computes and the K step (`HG_BM`, `HG_BK`); the tile's columns are
/// 128 or 256 ([`Tile`]).
const BM: u32 = 128;
const BK: u32 = 64;
/// Threads a block (`HG_THREADS`).
const THREADS: u32 = 384;

/// The kernels' tile shapes and schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// A 128 x 128 tile a block (each consumer warpgroup 64 rows), a ring of 4 stages.
    N128,
    /// A 128 x 256 tile a block, a ring of 4 stages.
    N256,
    /// Persistent, one block an SM walking 128 x 128 tiles that alternate between its two
    /// consumer warpgroups (one's epilogue overlaps the other's mainloop), a ring of 5 stages.
    PingPong,
    /// The ping-pong in clusters of two blocks that take two tiles one above the other at a
    /// time and share B's tile: each loads half of it, multicast into both (the L2 serves 3/4 of
    /// the ring's bytes).
    PingPongCluster,
}

impl Tile {
    /// Every shape, for tests and benches.
    pub const ALL: [Tile; 4] = [
        Tile::N128,
        Tile::N256,
        Tile::PingPong,
        Tile::PingPongCluster,
    ];

    /// Columns of a tile.
    fn bn(self) -> u32 {
        match self {
            Tile::N256 => 256,
            Tile::N128 | Tile::PingPong | Tile::PingPongCluster => 128,
        }
    }

    /// Stages of the ring (`HG_STAGES`, `HG_PP_STAGES`).
    fn stages(self) -> u32 {
        match self {
            Tile::PingPong | Tile::PingPongCluster => 5,
            Tile::N128 | Tile::N256 => 4,
        }
    }

    /// The kernels' name part.
    fn prefix(self) -> &'static str {
        match self {
            Tile::N128 => "",
            Tile::N256 => "n256_",
            Tile::PingPong => "pp_",
            Tile::PingPongCluster => "pc_",
        }
    }

    /// The shape [`HopperGemm::run`] takes when none is named: the persistent ping-pong, the
    /// schedule meant to be the fastest (its epilogue overlaps the other warpgroup's mainloop;
    /// `cuda_bench hopper` times all three against cuBLASLt).
    pub const DEFAULT: Tile = Tile::PingPong;
}

/// The kernel named in errors (the plain 128-wide entry point).
const KERNEL: &str = "hopper_gemm_bf16";
/// The transpose that brings a `[k, n]` operand into the kernels' `[n, k]`.
const TRANSPOSE: &str = "hopper_transpose_bf16";

/// The own GEMM on one Hopper GPU.
pub struct HopperGemm {
    gpu: Arc<Gpu>,
    module: Arc<Module>,
    /// Streaming multiprocessors: the persistent grid's size.
    sms: u32,
    /// Resident clusters by kernel ([`HopperGemm::clusters`]).
    clusters: std::sync::Mutex<std::collections::BTreeMap<String, u32>>,
}

impl HopperGemm {
    /// Compiles the kernel for `compute_90a`; an error on any GPU that is not compute
    /// capability 9.0 (the architecture-specific instructions exist only there).
    pub fn new(gpu: &Arc<Gpu>) -> Result<HopperGemm> {
        if gpu.arch() != "compute_90" {
            return Err(CudaError::BadLaunch {
                kernel: KERNEL.into(),
                why: format!(
                    "needs a Hopper GPU (compute capability 9.0); this one is {}",
                    gpu.arch()
                ),
            });
        }
        let src = KernelSource {
            name: "hopper_gemm".into(),
            defines: Default::default(),
            body: SOURCE.into(),
        };
        let module = gpu.load_arch(&src, "compute_90a")?;
        Ok(HopperGemm {
            gpu: gpu.clone(),
            module,
            sms: gpu.sm_count()?,
            clusters: Default::default(),
        })
    }

    /// Which kernel runs `g` with this bias and epilogue, or why none can: the linear form only
    /// (A `[m, k]`, B `[n, k]`, no batch), 16-byte aligned rows of A and B (the tensor maps'
    /// rule), C's pairs of columns 4-byte aligned; epilogues none, a bias, [`Epilogue::GeluAux`]
    /// and [`Epilogue::DGelu`] (in the linear form: B `[n, k]`), their pre-activation 4-byte
    /// aligned with an even row stride of at least n. The one place that says what the kernels
    /// take: [`HopperGemm::run`] and [`HopperGemm::try_run`] both ask it.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        tile: Option<Tile>,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        bias: DevPtr,
        epi: Option<&Epilogue>,
    ) -> std::result::Result<Plan, String> {
        let tile = tile.unwrap_or(Tile::DEFAULT);
        if g.trans_a || !g.trans_b || g.batch.is_some() {
            return Err("only C = A B^T with A [m, k] and B [n, k], unbatched".into());
        }
        if g.m == 0 || g.n == 0 || g.k == 0 {
            return Err("an empty matrix".into());
        }
        if !(g.lda * 2).is_multiple_of(16) || !(g.ldb * 2).is_multiple_of(16) {
            return Err(format!(
                "row strides of A ({}) and B ({}) must be multiples of 8 elements",
                g.lda, g.ldb
            ));
        }
        if !a.is_multiple_of(16)
            || !b.is_multiple_of(16)
            || !c.is_multiple_of(4)
            || !g.ldc.is_multiple_of(2)
        {
            return Err(
                "A and B must be 16-byte aligned, C 4-byte aligned with an even row stride".into(),
            );
        }
        let (epi_name, bias, aux, ldaux) = match epi {
            None if bias == 0 => ("", 0, 0, 0),
            None => ("bias_", bias, 0, 0),
            Some(&Epilogue::GeluAux { pre, ld, bias: b }) if bias == 0 => ("gelu_aux_", b, pre, ld),
            Some(&Epilogue::DGelu { pre, ld }) if bias == 0 => ("dgelu_", 0, pre, ld),
            Some(other) => {
                return Err(format!(
                    "the own GEMM has no epilogue {other:?} (with bias {bias:#x}) yet"
                ));
            }
        };
        if epi.is_some() && (!aux.is_multiple_of(4) || !ldaux.is_multiple_of(2) || ldaux < g.n) {
            return Err(format!(
                "the pre-activation needs 4-byte alignment and an even row stride >= n ({ldaux})"
            ));
        }
        Ok(Plan {
            kernel: format!("hopper_gemm_{}{epi_name}bf16", tile.prefix()),
            tile,
            bias,
            aux,
            ldaux,
            reads_pre: matches!(epi, Some(Epilogue::DGelu { .. })),
        })
    }

    /// Runs `C = A B^T` (bf16, beta 0) on the GPU's stream in `tile`s (`None`: [`Tile::DEFAULT`]),
    /// plus `bias` (n bf16, 0: none) added to every row, or
    /// with `epi` ([`Epilogue::GeluAux`] with its bias, or [`Epilogue::DGelu`]; `bias` 0)
    /// applied before the store, as cuBLASLt's epilogue of that name computes it. An error,
    /// having launched nothing, for what the kernels do not take.
    ///
    /// # Safety
    /// The pointers must address bf16 matrices of the sizes and strides `g` describes (and the
    /// epilogue's its own: `pre` of `[m, n]` at row stride `ld`, `bias` of n).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        &self,
        tile: Option<Tile>,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        bias: DevPtr,
        epi: Option<&Epilogue>,
    ) -> Result<()> {
        let plan = Self::plan(tile, g, a, b, c, bias, epi).map_err(|why| CudaError::BadLaunch {
            kernel: KERNEL.into(),
            why: format!("{}x{}x{}: {why}", g.m, g.n, g.k),
        })?;
        // SAFETY: forwarded.
        unsafe { self.launch(&plan, g, a, b, c) }
    }

    /// As [`HopperGemm::run`], but `false` (nothing launched) instead of an error where the
    /// kernels do not take the GEMM: the caller then runs it elsewhere.
    ///
    /// # Safety
    /// As [`HopperGemm::run`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn try_run(
        &self,
        tile: Option<Tile>,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        bias: DevPtr,
        epi: Option<&Epilogue>,
    ) -> Result<bool> {
        let Ok(plan) = Self::plan(tile, g, a, b, c, bias, epi) else {
            return Ok(false);
        };
        // SAFETY: forwarded.
        unsafe { self.launch(&plan, g, a, b, c) }?;
        Ok(true)
    }

    /// As [`HopperGemm::try_run`] for the plain form `C = A B` with B given `[k, n]` (row stride
    /// `g.ldb`; e.g. a linear weight `[out, in]` on the backward's input-gradient side): B is
    /// first transposed into `scratch` (`scratch_bytes` long, 16-byte aligned) as the `[n, k]`
    /// the kernels read. `false`, with nothing launched, where the kernels do not take the GEMM
    /// or `scratch` is too small.
    ///
    /// # Safety
    /// As [`HopperGemm::run`]; `scratch` must be device memory of `scratch_bytes` that nothing
    /// else reads or writes on the stream between this call's two kernels.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn try_run_kn(
        &self,
        tile: Option<Tile>,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        epi: Option<&Epilogue>,
        scratch: DevPtr,
        scratch_bytes: usize,
    ) -> Result<bool> {
        if g.trans_a
            || g.trans_b
            || g.batch.is_some()
            || g.n * g.k * 2 > scratch_bytes
            || !scratch.is_multiple_of(16)
            || !b.is_multiple_of(2)
        {
            return Ok(false);
        }
        let linear = RowMajorGemm {
            trans_b: true,
            ldb: g.k,
            ..*g
        };
        let Ok(plan) = Self::plan(tile, &linear, a, scratch, c, 0, epi) else {
            return Ok(false);
        };
        let f = self.module.function(TRANSPOSE)?;
        let (mut src, mut ld, mut dst, mut rows, mut cols) =
            (b, g.ldb as i32, scratch, g.k as i32, g.n as i32);
        let mut args = [
            (&mut src) as *mut DevPtr as *mut std::ffi::c_void,
            (&mut ld) as *mut i32 as *mut _,
            (&mut dst) as *mut DevPtr as *mut _,
            (&mut rows) as *mut i32 as *mut _,
            (&mut cols) as *mut i32 as *mut _,
        ];
        let grid = ((g.n as u32).div_ceil(32), (g.k as u32).div_ceil(32), 1);
        // SAFETY: the arguments match the transpose's signature; B is [k, n] at row stride ldb
        // and scratch holds n k bf16 (checked above), the caller's promise.
        unsafe {
            self.gpu
                .launch(TRANSPOSE, &f, grid, (32, 8, 1), 0, &mut args)?;
            self.launch(&plan, &linear, a, scratch, c)?;
        }
        Ok(true)
    }

    /// Launches the planned kernel.
    ///
    /// # Safety
    /// As [`HopperGemm::run`].
    unsafe fn launch(
        &self,
        plan: &Plan,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        let map_a = tensor_map(a, g.k, g.m, g.lda, BM)?;
        let (bn, stages) = (plan.tile.bn(), plan.tile.stages());
        // In a cluster each block loads half of B's tile.
        let b_rows = match plan.tile {
            Tile::PingPongCluster => bn / 2,
            _ => bn,
        };
        let map_b = tensor_map(b, g.k, g.n, g.ldb, b_rows)?;
        let (bias, aux, ldaux, m, n, k, ldc) = (
            plan.bias,
            plan.aux,
            plan.ldaux as i32,
            g.m as i32,
            g.n as i32,
            g.k as i32,
            g.ldc as i32,
        );
        let f = self.module.function(&plan.kernel)?;
        // The ring, plus 1 KiB for its 1024-byte alignment inside the kernel, plus what the
        // ping-pong's epilogue keeps after it: two bias rows (`hg_stage`), then for DGELU two
        // pre-activation tiles (which double as the output's scratch), else 1 KiB of output
        // scratch for each of the 8 consumer warps (`hg_put16`).
        let staging = match plan.tile {
            Tile::PingPong | Tile::PingPongCluster if plan.reads_pre => 2 * 256 + 2 * BM * 128 * 2,
            Tile::PingPong | Tile::PingPongCluster => 2 * 256 + 8 * 1024,
            Tile::N128 | Tile::N256 => 0,
        };
        let smem = stages * (BM + bn) * BK * 2 + 1024 + staging;
        let tiles = ((g.n as u32).div_ceil(bn), (g.m as u32).div_ceil(BM));
        let grid = match plan.tile {
            Tile::PingPong => ((tiles.0 * tiles.1).min(self.sms), 1, 1),
            Tile::PingPongCluster => {
                // As many clusters as can be resident at once (a GPC's SMs pair up: some may
                // not), never more than the pairs of tiles.
                let pairs = tiles.0 * tiles.1.div_ceil(2);
                (2 * pairs.min(self.clusters(&plan.kernel, &f, smem)?), 1, 1)
            }
            Tile::N128 | Tile::N256 => (tiles.0, tiles.1, 1),
        };
        let mut args = cuda_args![map_a, map_b, c, bias, aux, ldaux, m, n, k, ldc];
        // SAFETY: the arguments match the kernel's signature (two tensor maps by value, three
        // pointers, five ints); the pointers are the caller's promise.
        unsafe {
            self.gpu
                .launch(&plan.kernel, &f, grid, (THREADS, 1, 1), smem, &mut args)
        }
    }

    /// The resident cluster counts asked so far (`cuOccupancyMaxActiveClusters`), by kernel:
    /// what the cluster schedule's grids held.
    pub fn resident_clusters(&self) -> Vec<(String, u32)> {
        let known = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().map(|(k, &n)| (k.clone(), n)).collect()
    }

    /// How many 2-block clusters of `kernel` (`smem` bytes of shared memory a block) can be
    /// resident at once: the cluster ping-pong's grid. Asked once a kernel.
    fn clusters(&self, kernel: &str, f: &cudarc::driver::CudaFunction, smem: u32) -> Result<u32> {
        let mut known = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = known.get(kernel) {
            return Ok(n);
        }
        crate::cuda::gpu::allow_shared_memory(kernel, f, smem)?;
        let config = sys::CUlaunchConfig {
            gridDimX: self.sms - self.sms % 2,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: THREADS,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: std::ptr::null_mut(),
            attrs: std::ptr::null_mut(),
            numAttrs: 0,
        };
        let mut n = 0i32;
        // SAFETY: a query: the function is loaded, the config fully initialised, `n` written.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &config).result() }
            .during(|| format!("asking how many clusters of `{kernel}` fit"))?;
        let n = (n.max(1) as u32).min(self.sms / 2);
        known.insert(kernel.to_string(), n);
        Ok(n)
    }
}

/// What [`HopperGemm::plan`] chose: the kernel's name, its tile shape and its epilogue's
/// arguments (bias, pre-activation and its row stride; 0 where unused).
struct Plan {
    kernel: String,
    tile: Tile,
    bias: DevPtr,
    aux: DevPtr,
    ldaux: usize,
    /// Whether the epilogue reads the pre-activation (DGELU), which the ping-pong stages in
    /// shared memory.
    reads_pre: bool,
}

/// Whether the GELU epilogues' GEMMs run on the own kernels (`MODELSPEC_OWN_GEMM`): `off` (the
/// default until the kernels are measured faster), `on` (wherever they take the GEMM, in
/// [`Tile::DEFAULT`]; `cluster`: in [`Tile::PingPongCluster`]), or `auto` (per GEMM, the fastest
/// of the own kernels and cuBLASLt's chosen algorithm, timed once per machine like the algorithm
/// choice and persisted beside it, so every later process takes the same path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OwnPolicy {
    Off,
    On(Tile),
    Auto,
}

impl OwnPolicy {
    fn from_env() -> OwnPolicy {
        let value = std::env::var("MODELSPEC_OWN_GEMM").ok();
        OwnPolicy::parse(value.as_deref()).unwrap_or_else(|| {
            crate::cuda::warn_env_value(
                "MODELSPEC_OWN_GEMM",
                value.as_deref().unwrap_or_default(),
                "one of on, off, cluster, auto (or 1, 0, true, false): the own GEMM stays off",
            );
            OwnPolicy::Off
        })
    }

    /// The policy a value of `MODELSPEC_OWN_GEMM` names (`None`: unset, off); `None` for a
    /// value it does not know.
    fn parse(value: Option<&str>) -> Option<OwnPolicy> {
        match value.map(str::trim) {
            None | Some("") => Some(OwnPolicy::Off),
            Some("auto") => Some(OwnPolicy::Auto),
            Some("cluster") => Some(OwnPolicy::On(Tile::PingPongCluster)),
            Some(v) => crate::cuda::switch_value(Some(v)).map(|on| match on {
                true => OwnPolicy::On(Tile::DEFAULT),
                false => OwnPolicy::Off,
            }),
        }
    }
}

impl super::Gemm {
    /// The own Hopper GEMM and the policy for it, when `MODELSPEC_OWN_GEMM` is not off and the
    /// GPU is a Hopper one.
    fn own(&self) -> Option<&(HopperGemm, OwnPolicy)> {
        self.own
            .get_or_init(|| {
                let policy = OwnPolicy::from_env();
                (policy != OwnPolicy::Off)
                    .then(|| HopperGemm::new(&self.gpu).ok().map(|h| (h, policy)))
                    .flatten()
            })
            .as_ref()
    }

    /// The fused GEMMs that ran on the own Hopper kernels rather than cuBLASLt
    /// (`MODELSPEC_OWN_GEMM`), e.g. `gelu_aux 16384x3072x768 PingPong`, for benchmarks to say
    /// which path ran. Empty when every GEMM ran on cuBLASLt.
    pub fn own_runs(&self) -> Vec<String> {
        let ran = self.own_ran.lock().unwrap_or_else(|e| e.into_inner());
        ran.iter().cloned().collect()
    }

    /// Runs a bf16 GEMM with a GELU epilogue ([`Epilogue::GeluAux`] in the linear form,
    /// [`Epilogue::DGelu`] in the plain form, its B transposed into the workspace first:
    /// stream-ordered, no cuBLASLt call runs in between) on the own kernels where the policy
    /// takes them; `false`, with nothing run, to leave it to cuBLASLt.
    ///
    /// # Safety
    /// As [`Gemm::run_epilogue`](super::Gemm::run_epilogue).
    pub(super) unsafe fn run_own_epilogue(
        &self,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        epilogue: &Epilogue,
    ) -> Result<bool> {
        let Some((own, policy)) = self.own() else {
            return Ok(false);
        };
        let kind = match epilogue {
            Epilogue::GeluAux { .. } => "gelu_aux",
            Epilogue::DGelu { .. } => "dgelu",
            _ => return Ok(false),
        };
        // SAFETY: forwarded; the workspace is this handle's, WORKSPACE bytes.
        let run_own = |tile: Tile| unsafe {
            match epilogue {
                Epilogue::GeluAux { .. } => own.try_run(Some(tile), g, a, b, c, 0, Some(epilogue)),
                _ => own.try_run_kn(
                    Some(tile),
                    g,
                    a,
                    b,
                    c,
                    Some(epilogue),
                    self.workspace.ptr(),
                    super::WORKSPACE,
                ),
            }
        };
        // What ran as the call's result (not the timing runs) goes into `own_ran`.
        let result = |tile: Tile| {
            let ran = run_own(tile)?;
            if ran {
                let mut log = self.own_ran.lock().unwrap_or_else(|e| e.into_inner());
                log.insert(format!("{kind} {}x{}x{} {tile:?}", g.m, g.n, g.k));
            }
            Ok(ran)
        };
        if let OwnPolicy::On(tile) = *policy {
            return result(tile);
        }
        // Auto: the persisted choice (0: cuBLASLt, j: the own kernel in `Tile::ALL[j - 1]`),
        // else timed now where the algorithm choice would be (a large GEMM inside
        // `with_tuning(true, ..)`, not being captured), else cuBLASLt.
        let chosen = |j: usize| match j.checked_sub(1).and_then(|t| Tile::ALL.get(t)) {
            Some(&tile) => result(tile),
            None => Ok(false),
        };
        // The schedules are named in the key: an index means the same kernel in every process.
        let key = format!("{}|own {:?}|{kind}|{g:?}", self.choice_prefix(), Tile::ALL);
        let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = tuner.lookup(&key) {
            drop(tuner);
            return chosen(j);
        }
        let flop = 2.0 * (g.m * g.n * g.k) as f64;
        if !tuner.enabled()
            || flop < super::tune::MIN_FLOP
            || self.gpu.capturing()
            || !self.tuning.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(false);
        }
        drop(tuner);
        // cuBLASLt first (its own algorithm choice happens in its first run), then it and each
        // own schedule timed on the call's operands; every run overwrites the same outputs.
        // SAFETY: forwarded.
        let lt = || unsafe { self.run_fused(Dtype::Bf16, false, g, a, b, c, epilogue) };
        if !lt()? {
            return result(Tile::DEFAULT);
        }
        let refused = || CudaError::BadLaunch {
            kernel: KERNEL.into(),
            why: "refused".into(),
        };
        let timed = super::tune::fastest(1 + Tile::ALL.len(), |j, reps| match j {
            0 => super::tune::per_run(&self.gpu, reps, || lt().map(|_| ())),
            _ => super::tune::per_run(&self.gpu, reps, || {
                run_own(Tile::ALL[j - 1]).and_then(|ran| if ran { Ok(()) } else { Err(refused()) })
            }),
        });
        let Some((j, best_ms, lt_ms)) = timed else {
            return Ok(false);
        };
        let j = self
            .tuner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(super::Tuned {
                key,
                candidates: 1 + Tile::ALL.len(),
                chosen: j,
                first_ms: lt_ms,
                best_ms,
            });
        // The call's own result: the chosen path runs last (cuBLASLt's by the caller).
        chosen(j)
    }
}

/// A 2D tensor map over a row-major bf16 matrix of `outer` rows of `inner` elements (row stride
/// `ld`), read in boxes of 64 x `box_rows` with the 128-byte swizzle; out-of-bounds elements
/// read as zero.
pub(crate) fn tensor_map(
    ptr: DevPtr,
    inner: usize,
    outer: usize,
    ld: usize,
    box_rows: u32,
) -> Result<sys::CUtensorMap> {
    // SAFETY: plain data that the encoder fills.
    let mut map: sys::CUtensorMap = unsafe { std::mem::zeroed() };
    let dims = [inner as u64, outer as u64];
    let strides = [(ld * 2) as u64];
    let boxes = [BK, box_rows];
    let elem = [1u32, 1];
    // SAFETY: every array has the rank's (2) entries (strides: rank - 1); the address is a
    // device pointer the caller vouches for; only the map is written.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
    }
    .during(|| format!("encoding a tensor map of {outer} x {inner} (row stride {ld})"))?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::{OwnPolicy, Tile};

    #[test]
    fn own_gemm_policy_names() {
        assert_eq!(OwnPolicy::parse(None), Some(OwnPolicy::Off));
        assert_eq!(OwnPolicy::parse(Some("")), Some(OwnPolicy::Off));
        assert_eq!(OwnPolicy::parse(Some("off")), Some(OwnPolicy::Off));
        assert_eq!(OwnPolicy::parse(Some("0")), Some(OwnPolicy::Off));
        assert_eq!(
            OwnPolicy::parse(Some("on")),
            Some(OwnPolicy::On(Tile::PingPong))
        );
        assert_eq!(
            OwnPolicy::parse(Some("true")),
            Some(OwnPolicy::On(Tile::DEFAULT))
        );
        assert_eq!(
            OwnPolicy::parse(Some(" cluster ")),
            Some(OwnPolicy::On(Tile::PingPongCluster))
        );
        assert_eq!(OwnPolicy::parse(Some("auto")), Some(OwnPolicy::Auto));
        // A misspelling is not taken for off silently: the caller warns.
        assert_eq!(OwnPolicy::parse(Some("clustr")), None);
        assert_eq!(OwnPolicy::parse(Some("yes")), None);
    }
}
