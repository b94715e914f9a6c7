//! Fuzzes the YAML reader of the IR: any bytes must give a spec or diagnostics (never a panic,
//! never a hang), diagnostics must render, and every spec that reads back prints (`yaml::to_string`)
//! to YAML that reads to the same IR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelspec_dsl::yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = modelspec_dsl::load::normalize_text(text.to_string());
    match yaml::from_str(&src, "fuzz.yaml") {
        Ok(spec) => {
            let printed = yaml::to_string(&spec);
            match yaml::from_str(&printed, "printed.yaml") {
                Ok(back) => assert!(back == spec, "print -> read differs:\n{printed}"),
                Err(d) => panic!(
                    "printed YAML does not read back:\n{}\n{printed}",
                    modelspec_dsl::render::render(&d, &printed)
                ),
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty());
            let _ = modelspec_dsl::render::render(&diags, &src);
        }
    }
});
