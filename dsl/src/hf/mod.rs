//! HF transformers `config.json` import and export.
//!
//! - [`import()`]: config.json (either generation: top-level `rope_theta`/`rope_scaling`, or
//!   transformers-5 `rope_parameters`) → [`ModelSpec`], with diagnostics that point at the JSON
//!   field's line and column.
//! - [`export()`]: [`ModelSpec`] → the config.json of the `model_type` that expresses it exactly, or
//!   an [`ExportError`] saying why none does.
//!
//! Supported model_types are listed in [`families::ALL`].
//!
//! [`ModelSpec`]: crate::ir::ModelSpec
//!
//! ```
//! let src = r#"{"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100}"#;
//! let spec = modelspec_dsl::hf::import(src, "config.json").expect("valid config");
//! assert_eq!(spec.layers.len(), 2);
//! let config = modelspec_dsl::hf::export(&spec).expect("expressible");
//! assert_eq!(config["model_type"], "gpt2");
//! ```

pub mod export;
pub mod families;
pub mod import;
pub mod json_spans;

pub use export::{ExportError, Generation, export, export_generation};
pub use families::Family;
pub use import::import;
