//! The `model!` and `model_file!` proc-macros: a thin shell over `modelspec-dsl`.
