//! The generated `PARAMS_TOTAL` of every spec equals the dsl's parameter table, both as counted at
//! build time and as counted from the spec the generated code embeds.

#[test]
fn params_total_of_every_spec() {
    let cases = modelspec_specs_compile::cases();
    assert!(!cases.is_empty());
    for (file, counted, generated, spec) in cases {
        assert_eq!(generated, counted, "{file}");
        let spec = spec().unwrap_or_else(|e| panic!("{file}: {e}"));
        // Counted parameters: buffers (DeepSeek's router correction bias) are not trained or
        // counted, as `inspect` and PARAMS_TOTAL do.
        let embedded: u64 = modelspec::dsl::params::parameters(spec)
            .iter()
            .map(|p| p.counted())
            .sum();
        assert_eq!(embedded, generated, "{file}");
    }
}

#[test]
fn published_counts() {
    // Cheap external checks of the IR and of the generated constant (public figures).
    let known = [
        ("llama-3.1-8b.mspec", 8_030_261_248u64),
        ("mixtral-8x7b.mspec", 46_702_792_704),
        ("gemma-2-2b.mspec", 2_614_341_888),
        ("qwen3-30b-a3b.mspec", 30_532_122_624),
        ("gpt2-124m.mspec", 124_439_808),
    ];
    let cases = modelspec_specs_compile::cases();
    for (file, total) in known {
        if let Some((_, _, generated, _)) = cases.iter().find(|c| c.0 == file) {
            assert_eq!(*generated, total, "{file}");
        }
    }
}
