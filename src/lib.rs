//! modelspec: a compiler for transformer architectures.
//!
//! Re-exports the front end (`dsl`), the runtime and the `model!` / `model_file!` macros.

pub use modelspec_dsl as dsl;
pub use modelspec_runtime as runtime;

pub use model::{Error, Model, Result};
pub use modelspec_macros::{model, model_file};
pub use modelspec_runtime::exec::KvCache;
pub use modelspec_runtime::train::sample::SampleOptions;
pub use modelspec_runtime::{Device, Tensor};

mod model;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
