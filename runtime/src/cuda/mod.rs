//! The CUDA backend: generated CUDA C kernels compiled by NVRTC at first use (cached on disk),
//! GEMMs through cuBLASLt, and launch wrappers for every op of the tensor program.
//!
//! Everything here loads the CUDA libraries dynamically (cudarc with `dynamic-loading`): building
//! needs no toolkit, and on a machine without a driver every entry point returns
//! [`CudaError::MissingLibrary`] instead of panicking (see [`libraries_present`]).
//!
//! ```no_run
//! use modelspec_runtime::cuda::{Gpu, Kernels};
//! let gpu = Gpu::new(0)?; // a clean error without a driver or device
//! let kernels = Kernels::load(&gpu, "demo", &[64, 128], Default::default())?;
//! # Ok::<(), modelspec_runtime::cuda::CudaError>(())
//! ```
//!
//! Layout of this module:
//! - `kernels/*.cu`: the CUDA C that belongs to no single op: `common.cuh` (the helpers every
//!   module shares), `pointwise.cu` (bias add, copies, casts, gradient sums, the gradient norm),
//!   `reduce.cu` (the column reduction) and `decode.cu` (the decoder's own kernels). Every op keeps
//!   its kernels beside its CPU code (`crate::ops::{norm, activation, cross_entropy, rope,
//!   embedding, attention, adamw, moe}`: `{op}.cu` and the launchers in `cuda.rs`, or `cuda/` for
//!   MoE's own module). Each kernel is documented with what it computes, its launch shape and its
//!   memory traffic;
//! - [`compile`]: source assembly per spec, NVRTC, the disk cache;
//! - [`gpu`]: device, stream, buffers, launches;
//! - `layer`: each layer's configuration from its IR row (trainer and decoder);
//! - `launch`: the launch layer under every module's typed wrappers (lookup, sizing, source);
//! - [`gemm`]: cuBLASLt and the one row-major to column-major mapping (the matmul's CUDA side,
//!   `crate::ops::matmul::cuda`, re-exported here);
//! - [`moe`]: mixture of experts, its own kernel module (`crate::ops::moe::cuda`, re-exported);
//! - [`ops`]: [`Kernels`] and the typed launch wrappers of the shared `pointwise.cu` kernels;
//! - [`rope`]: cos/sin tables on the host;
//! - [`train`]: the GPU training step, walking every layer with its own configuration;
//! - [`decode`]: inference with a key/value cache on the device (prefill, then one token per
//!   sequence per step), walking each layer's fusions.

pub mod compile;
pub mod cudnn;
pub mod decode;
pub mod error;
/// GEMMs through cuBLASLt: [`crate::ops::matmul::cuda`], in the matmul op's folder.
pub use crate::ops::matmul::cuda as gemm;
pub mod gpu;
pub(crate) mod launch;
pub(crate) mod layer;
/// Mixture of experts on the GPU: [`crate::ops::moe::cuda`], in the MoE op's folder.
pub use crate::ops::moe::cuda as moe;
pub mod ops;
pub mod reduce;
pub mod rope;
pub mod train;
pub(crate) mod tune;

pub use crate::ops::cross_entropy::cuda::XentRowInfo;
pub use compile::KernelSource;
pub use error::CudaError;
pub use gemm::{BiasGradPath, BiasGradPolicy, Epilogue, Gemm, RowMajorGemm};
pub use gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf, device_count, libraries_present, probe};
pub use ops::{
    Act, AttnShape, FwdKernel, HopperAttention, HopperLaunch, HopperSchedule, Kernels, NormKind,
};
pub use reduce::ReduceScratch;
pub use train::{GpuTrainer, LayerSaves};

/// The on/off value of a `MODELSPEC_*` switch: `on`/`1`/`true` is `Some(true)`,
/// `off`/`0`/`false` is `Some(false)`, anything else (or unset, `None`) is `None`: the
/// switch's default. One vocabulary for every switch (`MODELSPEC_CUDA_GRAPH` and
/// `MODELSPEC_NORM_FUSED_DW`, on by default; `MODELSPEC_BGRAD_EPILOGUE` and
/// `MODELSPEC_OWN_GEMM`, off by default; the latter also takes `cluster` and `auto`).
pub(crate) fn switch_value(value: Option<&str>) -> Option<bool> {
    match value {
        Some("on" | "1" | "true") => Some(true),
        Some("off" | "0" | "false") => Some(false),
        _ => None,
    }
}

/// [`switch_value`] of the environment variable `var`. A value it does not know (a misspelt
/// `of`, say) leaves the switch at its default, with a warning on stderr, once a variable.
pub(crate) fn env_switch(var: &str) -> Option<bool> {
    let value = std::env::var(var).ok();
    let v = value.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let on = switch_value(v);
    if let (Some(v), None) = (v, on) {
        warn_env_value(
            var,
            v,
            "on/off (or 1/0, true/false): the switch keeps its default",
        );
    }
    on
}

/// Warns on stderr, once a variable for the process, that `var`'s value `value` is not one it
/// takes; `expected` says what it takes and what happens instead.
pub(crate) fn warn_env_value(var: &str, value: &str, expected: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|w| w == var) {
        warned.push(var.to_string());
        eprintln!("warning: {var}={value:?} is not {expected}");
    }
}
