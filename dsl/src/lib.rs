//! modelspec-dsl: the front ends, the IR and everything computed statically from it.
//!
//! See `ir` for the data that flows through the whole compiler.

pub mod codegen;
pub mod diag;
pub mod ir;
pub mod params;
pub mod plan;
pub mod tensors;

pub use ir::ModelSpec;
