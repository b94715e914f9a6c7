//! GPU kernels against CPU f64 references, on fresh random inputs each run (the seed is printed).
//!
//! Tolerances, as ||gpu - ref|| / ||ref|| over the whole output:
//! - f32: 1e-4. The kernels compute in f32 (fast-math exp/tanh), expected ~1e-6.
//! - bf16: 1e-2. Inputs are rounded to bf16 before the reference sees them, so only the kernel's
//!   own roundings count: each stored bf16 output carries up to 2^-9 ~ 2e-3 relative error, and
//!   attention also rounds P and dS to bf16 before their tensor-core products; these errors are
//!   independent across elements, so the norm-wise error stays near 2-4e-3. 1e-2 leaves margin
//!   while still catching any indexing or masking bug (those give errors of order 1).
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.
//!
//! One module per kernel family (`norm`, `norm_rope`, `activations`, `embed_loss_adamw`, `gemm`,
//! `attention`, `cross_entropy`: the loss at the classifier's stride; `spec_consts`: the
//! activation and RoPE kernels of a library instantiated for a spec, against the CPU ops); the
//! harness (device setup, random inputs, device tensors, the tolerance check) is `common/gpu.rs`,
//! shared with the other GPU kernel tests.

#[path = "cuda_kernels/activations.rs"]
mod activations;
#[path = "cuda_kernels/attention.rs"]
mod attention;
#[path = "cuda_kernels/cross_entropy.rs"]
mod cross_entropy;
#[path = "cuda_kernels/embed_loss_adamw.rs"]
mod embed_loss_adamw;
#[path = "cuda_kernels/gemm.rs"]
mod gemm;
#[path = "cuda_kernels/norm.rs"]
mod norm;
#[path = "cuda_kernels/norm_rope.rs"]
mod norm_rope;
#[path = "cuda_kernels/spec_consts.rs"]
mod spec_consts;

mod common;

use common::gpu::{DTYPES, Mat as T, Rng, check, f32buf, from_bf16, getf, to_bf16};
use modelspec_runtime::cuda::{Gpu, Kernels};
use std::sync::Arc;

fn setup() -> Option<(Arc<Gpu>, Kernels)> {
    common::gpu::device_and_kernels("test_library", &[64, 128, 256])
}
