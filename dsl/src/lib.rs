//! modelspec-dsl: the front ends, the IR and everything computed statically from it.
//!
//! See `ir` for the data that flows through the whole compiler.

pub mod check;
pub mod codegen;
pub mod cost;
pub mod diag;
pub mod hf;
pub mod ir;
pub mod load;
pub mod mspec;
pub mod params;
pub mod plan;
pub mod program;
pub mod render;
pub mod tensors;
pub mod yaml;

pub use ir::ModelSpec;
