//! The kernel walk each spec's expansion carries (`{Type}Kernels::KERNELS`, compiled) is the
//! runtime's lowering of the embedded spec: what `Backend::with_walk` checks before a generated
//! model runs on a GPU.

use modelspec::dsl::program::{check_walk, lowered_walk};

#[test]
fn every_generated_walk_is_the_lowering_of_its_spec() {
    let cases = modelspec_specs_compile::walks();
    assert!(!cases.is_empty(), "no specs");
    for (file, spec, walk) in cases {
        let spec = spec().unwrap_or_else(|e| panic!("{file}: {e}"));
        let kernels = check_walk(spec, walk).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(kernels, lowered_walk(spec), "{file}");
    }
}
