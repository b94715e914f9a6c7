//! Every spec in `specs/`, expanded by `modelspec::model_file!` (see `build.rs`). If an expansion
//! stops compiling, this crate does, and `cargo test --workspace` fails.
#![deny(warnings)]
#![deny(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/specs.rs"));
