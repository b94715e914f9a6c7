//! Writes one `modelspec::model_file!` per `specs/*.mspec` (sorted) into `$OUT_DIR/specs.rs`, each
//! in its own module, plus a table of (file, params counted by the dsl at build time, the generated
//! type's `PARAMS_TOTAL`, its `spec()`) and a table of (file, `spec()`, the generated kernel walk
//! `{Type}Kernels::KERNELS`), so adding a spec file adds a case.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let specs_dir = manifest
        .join("../../specs")
        .canonicalize()
        .expect("specs/ exists");
    println!("cargo:rerun-if-changed={}", specs_dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&specs_dir)
        .expect("readable specs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mspec"))
        .collect();
    files.sort();
    let mut out = String::new();
    let mut table = String::from(
        "/// The embedded spec of a generated type.\n\
         pub type SpecFn = fn() -> modelspec::Result<&'static modelspec::dsl::ModelSpec>;\n\
         /// (file, params by the dsl at build time, PARAMS_TOTAL of the generated type, its spec)\n\
         pub fn cases() -> Vec<(&'static str, u64, u64, SpecFn)> {\n    vec![\n",
    );
    let mut walks = String::from(
        "/// A generated type's kernel walk (`{Type}Kernels::KERNELS`).\n\
         pub type Walk = &'static [&'static [modelspec::__private::v1::KernelRow]];\n\
         /// (file, the generated type's spec, its kernel walk)\n\
         pub fn walks() -> Vec<(&'static str, SpecFn, Walk)> {\n    vec![\n",
    );
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(path).expect("readable spec");
        let shown = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spec = modelspec_dsl::mspec::parse(&text, &shown).unwrap_or_else(|d| {
            panic!(
                "{shown} is invalid:\n{}",
                modelspec_dsl::render::render(&d, &text)
            )
        });
        let module = module_name(path);
        let ty = spec.rust_type();
        let params: u64 = modelspec_dsl::params::parameters(&spec)
            .iter()
            .map(|p| p.counted())
            .sum();
        let _ = writeln!(
            out,
            "/// `{shown}`\npub mod {module} {{\n    modelspec::model_file!({:?});\n}}\n",
            path.display().to_string()
        );
        let _ = writeln!(
            table,
            "        ({shown:?}, {params}, <{module}::{ty} as modelspec::Model>::PARAMS_TOTAL, <{module}::{ty} as modelspec::Model>::spec),"
        );
        let _ = writeln!(
            walks,
            "        ({shown:?}, <{module}::{ty} as modelspec::Model>::spec, {module}::{ty}Kernels::KERNELS),"
        );
    }
    table.push_str("    ]\n}\n");
    out.push_str(&table);
    walks.push_str("    ]\n}\n");
    out.push_str(&walks);
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("specs.rs");
    std::fs::write(dest, out).expect("writable OUT_DIR");
}

fn module_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut m: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if m.starts_with(|c: char| c.is_ascii_digit()) {
        m.insert(0, 's');
    }
    m
}
