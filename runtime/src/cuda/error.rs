//! Errors of the CUDA backend.

use thiserror::Error;

/// What can go wrong on the GPU side. Every variant names what was being done, so a failure reads
/// as "which kernel, which shapes" without a debugger.
#[derive(Debug, Error)]
pub enum CudaError {
    /// A CUDA shared library (the driver, NVRTC or cuBLASLt) could not be loaded.
    #[error(
        "CUDA is not available: the {library} library could not be loaded (no NVIDIA driver or CUDA runtime on this machine)"
    )]
    MissingLibrary {
        /// Which library: `cuda` (the driver), `nvrtc` or `cublasLt`.
        library: &'static str,
    },
    /// The driver loaded but the requested device does not exist.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver sees.
        count: usize,
    },
    /// A driver call failed.
    #[error("CUDA driver error while {during}: {source}")]
    Driver {
        /// What was being done.
        during: String,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },
    /// NVRTC rejected a generated kernel source.
    #[error("NVRTC could not compile `{module}` for {arch}:\n{log}")]
    Compile {
        /// The module's name.
        module: String,
        /// The target architecture (e.g. `compute_90`).
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A cuBLASLt call failed.
    #[error("cuBLASLt {during} failed for {dtype} GEMM m={m} n={n} k={k}: {status}")]
    Blas {
        /// What was being done (heuristic, matmul...).
        during: &'static str,
        /// Element type.
        dtype: &'static str,
        /// Rows of the (row-major) output.
        m: usize,
        /// Columns of the output.
        n: usize,
        /// The reduced dimension.
        k: usize,
        /// cuBLAS's status.
        status: String,
    },
    /// Arguments a kernel cannot run with (shapes, alignment, unsupported combination).
    #[error("kernel `{kernel}`: {why}")]
    BadLaunch {
        /// The kernel.
        kernel: String,
        /// Why it cannot run, with the shapes involved.
        why: String,
    },
    /// The checkpoint planner could not resolve a policy for the run's shape.
    #[error("checkpoint plan: {0}")]
    Plan(#[from] modelspec_dsl::plan::PlanError),
    /// A generated model's kernel walk is not this runtime's lowering of its spec (the generated
    /// code is stale: the error names the first layer and kernel that differ).
    #[error(transparent)]
    Walk(#[from] modelspec_dsl::program::WalkError),
    /// The device lacks memory for a planned run.
    #[error(
        "needs {needed_gib:.2} GiB, device has {free_gib:.2} GiB free; try a checkpoint budget (e.g. budget(0.5)) or a smaller batch"
    )]
    OutOfMemory {
        /// Bytes the plan predicts, in GiB.
        needed_gib: f64,
        /// Free device memory, in GiB.
        free_gib: f64,
    },
    /// The kernel cache could not be read or written.
    #[error("kernel cache {path}: {source}")]
    Cache {
        /// The file or folder.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The CUDA backend's result type.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;

/// Attaches "while ..." context to a driver result.
pub(crate) trait DriverContext<T> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| CudaError::Driver {
            during: what(),
            source,
        })
    }
}
