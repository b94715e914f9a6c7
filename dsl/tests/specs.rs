//! Data-driven spec tests: every `specs/*.mspec` and every `specs/invalid/*.mspec` is a case.
//!
//! - `specs/*.mspec`: parses without diagnostics; its expansion (the IR as YAML) matches the
//!   snapshot `expand__<file>`; its parameter count equals the `# params: N` line of its header;
//!   `print` → `parse` and YAML → IR give back the same IR.
//! - `specs/invalid/*.mspec`: fails, and the rendered diagnostics match `invalid__<file>`.
//!
//! Adding a case is adding a file.

use std::path::{Path, PathBuf};

use modelspec_dsl::mspec::{parse, print};
use modelspec_dsl::params::parameters;
use modelspec_dsl::render::render;
use modelspec_dsl::ModelSpec;

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mspec"))
        .collect();
    out.sort();
    out
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The shown path of a spec, relative to the repository (stable across machines).
fn shown(p: &Path) -> String {
    let dir = p.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned());
    match dir.as_deref() {
        Some("invalid") => format!("specs/invalid/{}", p.file_name().unwrap_or_default().to_string_lossy()),
        _ => format!("specs/{}", p.file_name().unwrap_or_default().to_string_lossy()),
    }
}

/// The count in the header line `# params: 8,030,261,248`.
fn header_params(src: &str) -> Option<u64> {
    src.lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("params:"))
        .and_then(|n| n.trim().replace(',', "").parse().ok())
}

fn load(p: &Path) -> (String, ModelSpec) {
    let src = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match parse(&src, &shown(p)) {
        Ok(spec) => (src, spec),
        Err(d) => panic!("{} has diagnostics:\n{}", p.display(), render(&d, &src)),
    }
}

#[test]
fn specs_expand_to_their_snapshots() {
    let all = files(&spec_dir());
    assert!(all.len() >= 19, "expected the real specs in specs/, found {}", all.len());
    for p in all {
        let (_, spec) = load(&p);
        let yaml = serde_norway::to_string(&spec).expect("the IR serialises");
        insta::assert_snapshot!(format!("expand__{}", stem(&p)), yaml);
    }
}

#[test]
fn specs_have_their_published_parameter_counts() {
    let mut wrong = Vec::new();
    for p in files(&spec_dir()) {
        let (src, spec) = load(&p);
        let Some(expected) = header_params(&src) else {
            wrong.push(format!("{}: no `# params: N` line in the header", p.display()));
            continue;
        };
        let total: u64 = parameters(&spec).iter().map(|t| t.numel()).sum();
        if total != expected {
            wrong.push(format!("{}: params_total {total}, header says {expected}", stem(&p)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn specs_round_trip_through_print_and_yaml() {
    for p in files(&spec_dir()) {
        let (_, spec) = load(&p);
        let text = print(&spec);
        match parse(&text, "printed.mspec") {
            Ok(back) => assert_eq!(back, spec, "{}: print → parse differs; printed:\n{text}", stem(&p)),
            Err(d) => panic!("{}: printed text does not parse:\n{}\n{text}", stem(&p), render(&d, &text)),
        }
        let yaml = serde_norway::to_string(&spec).expect("the IR serialises");
        let back: ModelSpec = serde_norway::from_str(&yaml).expect("the YAML reads back");
        assert_eq!(back, spec, "{}: YAML round trip differs", stem(&p));
    }
}

#[test]
fn invalid_specs_fail_with_their_snapshots() {
    let all = files(&spec_dir().join("invalid"));
    assert!(all.len() >= 35, "expected at least 35 invalid specs, found {}", all.len());
    let mut accepted = Vec::new();
    for p in all {
        let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        match parse(&src, &shown(&p)) {
            Ok(_) => accepted.push(stem(&p)),
            Err(d) => insta::assert_snapshot!(format!("invalid__{}", stem(&p)), render(&d, &src)),
        }
    }
    assert!(accepted.is_empty(), "these invalid specs parse without error: {accepted:?}");
}
