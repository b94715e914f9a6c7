//! The kernel walk in the generated code of every spec in `specs/` is the lowering: the
//! `WALK_n` and `KERNELS` constants are read back from the generated Rust text and compared,
//! layer by layer and kernel by kernel, with `LayerProgram::kernels` of the spec's layers (what
//! the GPU executors check a generated model's walk against).

use std::path::{Path, PathBuf};

use modelspec_dsl::codegen::{self, Options};
use modelspec_dsl::program::{Kernel, check_walk, lowered_walk};

fn specs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("specs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mspec"))
        .collect();
    out.sort();
    out
}

/// A kernel as text with every name as its variant: `Norm(AttnNorm)<-(Input)`.
fn key(fusion: &str, outputs: &[&str], inputs: &[&str]) -> String {
    format!("{fusion}({})<-({})", outputs.join(","), inputs.join(","))
}

fn lowered_key(k: &Kernel) -> String {
    let names = |acts: &[modelspec_dsl::program::Act]| -> Vec<String> {
        acts.iter().map(|a| format!("{a:?}")).collect()
    };
    format!(
        "{:?}({})<-({})",
        k.fusion,
        names(&k.outputs).join(","),
        names(&k.inputs).join(",")
    )
}

/// The text of the constant `name` (from its `=` to the end of its initialiser), whitespace
/// removed so that prettyplease's line breaks do not matter.
fn constant(rust: &str, name: &str, end: &str) -> String {
    let start = rust
        .find(&format!("pub const {name}:"))
        .unwrap_or_else(|| panic!("no constant {name}"));
    let body = &rust[start..];
    let stop = body
        .find(end)
        .unwrap_or_else(|| panic!("{name} has no end"));
    body[..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// `&[Act::A, Act::B]` (whitespace removed) as `["A", "B"]`.
fn act_list(text: &str) -> Vec<&str> {
    let inner = text
        .strip_prefix("&[")
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a list: {text}"));
    inner
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_prefix("Act::")
                .unwrap_or_else(|| panic!("not an Act: {s}"))
        })
        .collect()
}

/// The rows of `WALK_n` in the generated text, as [`key`]s.
fn walk_rows(rust: &str, n: usize) -> Vec<String> {
    let text = constant(rust, &format!("WALK_{n}"), "\n    };");
    // The array ends with `]`; each row then ends with `,}` and a comma between rows.
    let text = text
        .strip_suffix(']')
        .unwrap_or_else(|| panic!("WALK_{n} is not an array: {text}"));
    text.split("KernelRow{")
        .skip(1) // the constant's type and the `use` line
        .map(|row| {
            let row = row
                .trim_end_matches(',')
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unterminated row: {row}"))
                .trim_end_matches(',');
            let fusion = row
                .strip_prefix("fusion:Fusion::")
                .and_then(|r| r.split(',').next())
                .unwrap_or_else(|| panic!("row without a fusion: {row}"));
            let (_, rest) = row.split_once("outputs:").expect("outputs");
            let (outputs, inputs) = rest.split_once(",inputs:").expect("inputs");
            key(fusion, &act_list(outputs), &act_list(inputs))
        })
        .collect()
}

#[test]
fn the_generated_walk_of_every_spec_is_its_lowering() {
    let specs = specs();
    assert!(!specs.is_empty(), "no specs found");
    for path in specs {
        let (spec, _) = modelspec_dsl::load::load_file(&path).expect("spec loads");
        let shown = path.display();
        let rust = codegen::generate(&spec, &Options::default())
            .unwrap_or_else(|e| panic!("{shown}: {e}"))
            .rust;
        let kernels = constant(&rust, "KERNELS", "];");
        let per_layer: Vec<usize> = kernels
            .split("Self::WALK_")
            .skip(1)
            .map(|w| {
                w.trim_end_matches(',')
                    .parse()
                    .unwrap_or_else(|_| panic!("{shown}: bad entry {w}"))
            })
            .collect();
        let lowered = lowered_walk(&spec);
        assert_eq!(
            per_layer.len(),
            lowered.len(),
            "{shown}: one walk per layer"
        );
        for (layer, (&w, kernels)) in per_layer.iter().zip(&lowered).enumerate() {
            let want: Vec<String> = kernels.iter().map(lowered_key).collect();
            assert_eq!(
                walk_rows(&rust, w),
                want,
                "{shown}: layer {layer} (WALK_{w})"
            );
        }
        // The checker the executors run agrees with itself on the lowering's own rows.
        let rows: Vec<Vec<modelspec_dsl::program::KernelRow>> = lowered
            .iter()
            .map(|ks| {
                ks.iter()
                    .map(|k| modelspec_dsl::program::KernelRow {
                        fusion: k.fusion,
                        outputs: Vec::leak(k.outputs.clone()),
                        inputs: Vec::leak(k.inputs.clone()),
                    })
                    .collect()
            })
            .collect();
        let borrowed: Vec<&[modelspec_dsl::program::KernelRow]> =
            rows.iter().map(Vec::as_slice).collect();
        assert_eq!(
            check_walk(&spec, &borrowed).expect("the lowering passes"),
            lowered,
            "{shown}"
        );
    }
}
