//! Snapshots of the code generated for every spec in `specs/`: the Rust module that `model!` /
//! `modelspec generate` produce and the kernel library's instance for the spec (its `#define`s and
//! attention head dims). Adding a spec file adds a case. Review a changed snapshot with `cargo insta review`.

use std::path::{Path, PathBuf};

use modelspec::dsl::codegen::{self, Options};

fn specs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("specs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mspec"))
        .collect();
    out.sort();
    out
}

fn generate(path: &Path) -> codegen::Generated {
    let text = std::fs::read_to_string(path).expect("readable spec");
    let shown = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let spec = modelspec::dsl::mspec::parse(&text, &shown).unwrap_or_else(|d| {
        panic!(
            "{shown} does not parse:\n{}",
            modelspec::dsl::render::render(&d, &text)
        )
    });
    codegen::generate(&spec, &Options::default()).unwrap_or_else(|e| panic!("{shown}: {e}"))
}

#[test]
fn generated_rust_and_cuda_of_every_spec() {
    let specs = specs();
    assert!(!specs.is_empty(), "no specs found");
    for path in specs {
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .replace('.', "_");
        let g = generate(&path);
        insta::assert_snapshot!(format!("{stem}.rs"), g.rust);
        insta::assert_snapshot!(format!("{stem}.kernels"), g.kernels.header());
    }
}

#[test]
fn generation_is_deterministic() {
    for path in specs() {
        assert_eq!(generate(&path), generate(&path), "{}", path.display());
    }
}

#[test]
fn the_embedded_spec_round_trips() {
    for path in specs() {
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = modelspec::dsl::mspec::parse(&text, "x.mspec").unwrap();
        let (globals, rows) = codegen::spec_parts(&spec).unwrap();
        let rows: Vec<(Vec<usize>, String)> = rows
            .into_iter()
            .map(|(l, y)| (l.into_iter().map(|i| i as usize).collect(), y))
            .collect();
        let borrowed: Vec<(&[usize], &str)> = rows
            .iter()
            .map(|(l, y)| (l.as_slice(), y.as_str()))
            .collect();
        let back = modelspec::__private::v1::spec_from_parts(&globals, &borrowed).unwrap();
        assert_eq!(back, spec, "{}", path.display());
    }
}

#[test]
fn layers_of_one_structure_share_a_struct() {
    for path in specs() {
        let g = generate(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = modelspec::dsl::mspec::parse(&text, "x.mspec").unwrap();
        let layer_structs = g
            .rust
            .matches(&format!("pub struct {}Layer", spec.rust_type()))
            .count();
        assert!(
            (1..=4).contains(&layer_structs),
            "{}: {layer_structs} layer structs",
            path.display()
        );
        // No per-layer or per-expert unrolling in the struct fields.
        assert!(!g.rust.contains("layers_0_"), "{}", path.display());
    }
}

#[test]
fn the_generate_command_writes_the_same_expansion() {
    let path = specs()
        .into_iter()
        .find(|p| p.ends_with("tiny.mspec"))
        .unwrap_or_else(|| specs()[0].clone());
    let out = std::env::temp_dir().join(format!("modelspec-generate-{}", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .arg("generate")
        .arg(&path)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("runs");
    assert!(status.success());
    let g = generate(&path);
    assert_eq!(
        std::fs::read_to_string(out.join("model.rs")).unwrap(),
        g.rust
    );
    // kernels.cu is the one library with this spec's instance: the text `--device cuda` and
    // the generated `{Type}Kernels::source()` compile.
    let cuda = std::fs::read_to_string(out.join("kernels.cu")).unwrap();
    assert_eq!(cuda, modelspec::__private::v1::kernel_source(&g.kernels));
    for (k, v) in &g.kernels.defines {
        assert!(cuda.contains(&format!("#define {k} {v}\n")), "{k}");
    }
    assert!(cuda.contains("norm_fwd") && cuda.contains("xent"));
    let _ = std::fs::remove_dir_all(&out);
}
