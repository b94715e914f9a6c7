//! Fuzzes the HF `config.json` importer: any bytes must give a spec or diagnostics (never a
//! panic, never a hang), diagnostics must render, and an imported spec must pass export without a
//! panic (it may be refused with an error: some IRs have no config.json form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelspec_dsl::hf::{export, import};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = modelspec_dsl::load::normalize_text(text.to_string());
    match import::import(&src, "fuzz/config.json") {
        Ok(spec) => {
            let _ = export::export(&spec);
        }
        Err(diags) => {
            assert!(!diags.is_empty());
            let _ = modelspec_dsl::render::render(&diags, &src);
        }
    }
});
