//! The `model!` and `model_file!` proc-macros: a thin shell over `modelspec-dsl`.
//!
//! Parsing, checking, code generation and error placement all live in
//! `modelspec_dsl::codegen::expand`, where they are tested without a compiler; this crate only
//! moves tokens in and out. Use the macros through the facade: `modelspec::model!` and
//! `modelspec::model_file!`.

use proc_macro::TokenStream;

/// Expands an inline spec into the model struct, its constants, `impl modelspec::Model` and its
/// CUDA kernels. Errors point at the offending token.
///
/// ```ignore
/// modelspec::model! {
///     model tiny { vocab 256 d_model 64 layers 2 context 128 /* ... */ }
/// }
/// ```
#[proc_macro]
pub fn model(input: TokenStream) -> TokenStream {
    modelspec_dsl::codegen::expand::expand_inline(input.into()).into()
}

/// Expands a spec file (relative to `CARGO_MANIFEST_DIR`, or absolute) like [`model!`]: a `.mspec`,
/// a `.yaml`/`.yml` IR, or an HF `config.json`, chosen by extension;
/// editing the file rebuilds the crate, and errors name `file.mspec:line:col`.
///
/// ```ignore
/// modelspec::model_file!("specs/llama-3.2-1b.mspec");
/// ```
#[proc_macro]
pub fn model_file(input: TokenStream) -> TokenStream {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    modelspec_dsl::codegen::expand::expand_file(input.into(), &manifest_dir).into()
}
