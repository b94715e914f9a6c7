//! The ops, one module per op: the CPU reference (`forward` and `backward`) and, in an op's
//! folder, its CUDA side.
//!
//! An op with a CUDA side is a folder holding all of it: `mod.rs` (the CPU code), `cuda.rs` (its
//! launchers, an `impl` block of [`Kernels`](crate::cuda::Kernels), and its kernel text) and
//! `{op}.cu` (its kernels): `norm`, `activation`, `cross_entropy`, `rope`, `embedding`,
//! `attention`, `adamw` (the optimizer: its host step, launcher and fused kernel). Two differ in
//! shape: `moe` has `cuda/` (its own NVRTC module and `MoeLayer`, forward and backward) beside
//! `moe.cu`, and `matmul`'s `cuda.rs` is cuBLASLt (no kernels of ours). Ops with no kernels of
//! their own stay single files (`linear`, `mlp`, `dropout`, `softcap`, and `mla`, latent
//! attention's CPU code).
//!
//! Conventions: tensors are row-major slices, activations `[rows, width]` with
//! `rows = batch · seq`; `forward` overwrites its output; `backward` *accumulates* (`+=`) into every
//! gradient buffer it is given (inputs and parameters alike). Every op is generic over
//! [`Float`](crate::Float), so the `f64` gradient checks run exactly the code that `f32` runs.
//! All matrix products go through [`matmul`] (the `gemm` crate).

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod linear;
pub mod matmul;
pub mod mla;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod softcap;
