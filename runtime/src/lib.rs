//! modelspec-runtime: devices, tensors, the CPU and CUDA backends and the executor.

pub mod weights;
