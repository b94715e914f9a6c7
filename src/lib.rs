//! modelspec: a compiler for transformer architectures.
//!
//! Re-exports the front end (`dsl`), the runtime and the `model!` / `model_file!` macros.

pub use modelspec_dsl as dsl;
pub use modelspec_runtime as runtime;
