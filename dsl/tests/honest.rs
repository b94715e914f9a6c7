//! Values the arithmetic cannot honour are refused where the user wrote them.

const TINY: &str = include_str!("../../specs/tiny.mspec");

#[test]
fn absurd_softcaps_are_diagnostics_with_spans() {
    // 1e300 is infinite in f32: `eval` returned NaN (with exit status 0).
    for (cap, ok) in [
        ("1e300", false),
        ("1e-300", false),
        ("30", true),
        ("1e6", true),
    ] {
        let src = TINY.replace(
            "attention { heads 6  kv_heads 2 }",
            &format!("attention {{ heads 6  kv_heads 2  softcap {cap} }}"),
        );
        let result = modelspec_dsl::mspec::parse(&src, "t.mspec");
        assert_eq!(result.is_ok(), ok, "softcap {cap}: {result:?}");
        if let Err(d) = result {
            assert_eq!(d[0].field, "attention.softcap");
            assert!(
                d[0].message.contains("between 1e-3 and 1e6"),
                "{}",
                d[0].message
            );
            assert!(
                src[d[0].span.clone()].contains("softcap"),
                "{:?}",
                d[0].span
            );
        }
    }
    let src = TINY.replace("mlp swiglu", "logits softcap 1e300\n    mlp swiglu");
    let d = modelspec_dsl::mspec::parse(&src, "t.mspec").unwrap_err();
    assert_eq!(d[0].field, "logits.softcap");
}
