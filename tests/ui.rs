//! The macros' compile errors, as trybuild snapshots (`tests/ui/*.stderr`). Regenerate after a
//! reviewed change with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn macro_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
