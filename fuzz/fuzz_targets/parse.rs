//! Fuzzes the `.mspec` front end: parse + lower + check must never panic or hang, rendering the
//! diagnostics must not panic, and every spec that parses must print back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelspec_dsl::mspec::{parse, print};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match parse(src, "fuzz.mspec") {
        Ok(spec) => {
            let text = print(&spec);
            match parse(&text, "printed.mspec") {
                Ok(back) => assert!(back == spec, "print → parse differs:\n{text}"),
                Err(d) => panic!(
                    "printed spec does not parse:\n{}\n{text}",
                    modelspec_dsl::render::render(&d, &text)
                ),
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty());
            let _ = modelspec_dsl::render::render(&diags, src);
        }
    }
});
