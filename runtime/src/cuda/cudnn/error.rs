//! Errors of the cuDNN attention path.

use crate::cuda::CudaError;
use thiserror::Error;

/// What can go wrong between finding libcudnn and running a fused attention plan. Every variant
/// says what was being done; a caller that gets any of them can fall back to the own kernels.
#[derive(Debug, Error)]
pub enum CudnnError {
    /// No loadable libcudnn was found.
    #[error(
        "cuDNN is not available: no loadable libcudnn.so.9 in {searched}; set MODELSPEC_CUDNN_LIB to the file (or its folder) or CUDNN_PATH to the install"
    )]
    NotFound {
        /// Every place looked at, `; `-separated, with why each was rejected.
        searched: String,
    },
    /// libcudnn loaded but is older than the graph patterns used here need.
    #[error("cuDNN at {path} is version {version}; the fused attention path needs 9.0.0 or newer")]
    TooOld {
        /// The library file.
        path: String,
        /// `cudnnGetVersion()` (e.g. 91002 for 9.10.2).
        version: usize,
    },
    /// A cuDNN call returned an error status.
    #[error("cuDNN {during}: {status}{detail}")]
    Status {
        /// What was being done.
        during: String,
        /// The status name.
        status: String,
        /// cuDNN's last error message (`: ...`), when it gave one.
        detail: String,
    },
    /// The heuristics offered no engine config that finalizes for this graph.
    #[error("cuDNN has no engine for the {graph} graph of {shape}: {why}")]
    NoEngine {
        /// `sdpa forward` or `sdpa backward`.
        graph: &'static str,
        /// The shape, as text.
        shape: String,
        /// What the tried configs said (the last one's error).
        why: String,
    },
    /// A shape, dtype, alignment or option the cuDNN path does not take.
    #[error("cuDNN attention does not support {0}")]
    Unsupported(String),
    /// The caller's workspace is smaller than the plan needs.
    #[error("cuDNN {graph} needs a {needed}-byte workspace, got {given}")]
    Workspace {
        /// Which graph.
        graph: &'static str,
        /// Bytes needed (see `CudnnAttention::workspace_bytes`).
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// A CUDA driver-side failure (context, allocation, memset).
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// Result of the cuDNN path.
pub type Result<T, E = CudnnError> = std::result::Result<T, E>;
