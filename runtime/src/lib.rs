//! modelspec-runtime: devices, tensors, the CPU and CUDA backends and the executor.
//!
//! # The core API (CPU)
//! - [`Device`]: `Device::cpu()`, `Device::cuda(n)?`, `Device::best()`.
//! - [`Tensor<T>`]: an owned row-major array of a [`Float`] (`f32`, or `f64` for gradient checks).
//! - [`Params<T>`]: canonical parameter name → tensor (`BTreeMap`), for weights and gradients;
//!   [`Params::init`] is the deterministic initialisation, [`Params::check`] validates shapes.
//! - [`ops`]: one file per op (embedding, linear, norm, rope, attention, activation, mlp, moe,
//!   softcap, cross_entropy, dropout), each `forward` + `backward` over slices; generated code
//!   calls these in straight-line code.
//! - [`program`]: the IR lowered to the per-layer sequence of ops over named tensors (the names of
//!   `modelspec_dsl::tensors::layer_tensors`), and the save sets of each checkpoint policy.
//! - [`exec::Executor`]: `forward(&params, tokens, batch) -> logits [B, T, vocab_padded]` and
//!   `loss_and_grads(&params, tokens, batch, &policy) -> StepOutput { loss, logits, grads }`
//!   with activation checkpointing ([`exec::Policy`]); gradients are bit-identical for every policy.
//! - [`exec::Run`]: the executor's per-layer steps (embed, layer with its checkpoint policy, head,
//!   and their backward steps); `forward` and `loss_and_grads` loop over them, generated models
//!   call them unrolled.
//! - [`rng`]: the counter-based RNG (init and dropout).
//!
//! ```
//! use modelspec_runtime::{exec::{Executor, Policy}, Params};
//! # fn demo(spec: &modelspec_dsl::ModelSpec) -> Result<(), modelspec_runtime::Error> {
//! let params = Params::<f32>::init(spec, 0);
//! let exec = Executor::new(spec)?;
//! let step = exec.loss_and_grads(&params, &[1, 2, 3, 4], 1, &Policy::FromSpec)?;
//! println!("loss {}", step.loss);
//! # Ok(()) }
//! ```

pub mod cuda;
pub mod device;
pub mod dist;
pub mod error;
pub mod exec;
pub mod io;
pub mod ops;
pub mod program;
pub mod rng;
pub mod tensor;
pub mod train;
pub mod weights;

pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{Float, ParamSource, Params, Tensor};
