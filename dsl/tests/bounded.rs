//! Bounded on any input, and clear about odd encodings: deep YAML nesting is refused quickly,
//! a byte-order mark and old Mac line endings read as the text they are.

use std::time::Instant;

use modelspec_dsl::load;

const TINY: &str = include_str!("../../specs/tiny.mspec");

fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("modelspec-bounded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn tiny_yaml() -> String {
    let spec = modelspec_dsl::mspec::parse(TINY, "tiny.mspec").unwrap();
    modelspec_dsl::yaml::to_string(&spec)
}

#[test]
fn deep_yaml_nesting_is_refused_quickly() {
    // 200 KB of nested flow sequences under a key: the YAML scanner is quadratic in the depth
    // (55 s before the limit).
    let depth = 100_000;
    let src = format!("name: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let start = Instant::now();
    let d = modelspec_dsl::yaml::from_str(&src, "deep.yaml").unwrap_err();
    let secs = start.elapsed().as_secs_f64();
    assert!(secs < 2.0, "{secs:.1} s");
    assert!(
        d[0].message.contains("nested more than 128 levels"),
        "{}",
        d[0].message
    );
    assert_eq!(d[0].span.start, "name: ".len() + 128);
    // Maps too; and brackets in quotes or comments do not count.
    let maps = format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth));
    assert!(
        modelspec_dsl::yaml::from_str(&maps, "deep.yaml").unwrap_err()[0]
            .message
            .contains("nested")
    );
    let quoted = tiny_yaml().replace(
        "name: tiny",
        &format!("name: tiny # {}\nx: '{}'", "[".repeat(300), "{".repeat(300)),
    );
    let d = modelspec_dsl::yaml::from_str(&quoted, "q.yaml").unwrap_err();
    assert!(
        d[0].message.contains("unknown field `x`"),
        "{}",
        d[0].message
    );
    // A real spec is far from the limit.
    assert!(modelspec_dsl::yaml::from_str(&tiny_yaml(), "t.yaml").is_ok());
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_key() {
    // It gave "missing field `vocab`".
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(tiny_yaml().as_bytes());
    let (spec, _) = load::load_file(temp("bom.yaml", &bytes)).unwrap();
    assert_eq!(spec.name, "tiny");
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(TINY.as_bytes());
    assert!(load::load_file(temp("bom.mspec", &bytes)).is_ok());
}

#[test]
fn old_mac_line_endings_are_line_breaks() {
    // A `#` comment ran to the end of the file: "expected `model`, found end of input".
    let cr = TINY.replace('\n', "\r");
    let (spec, _) = load::load_file(temp("cr.mspec", cr.as_bytes())).unwrap();
    assert_eq!(spec.layers.len(), 6);
    // Diagnostics count those lines: a bad value on line 6 is reported there.
    let bad = TINY.replace("vocab 256", "vocab 0").replace('\n', "\r");
    match load::load_file(temp("bad_cr.mspec", bad.as_bytes())) {
        Err(load::LoadError::Invalid { diagnostics, file }) => {
            let (line, _) = modelspec_dsl::diag::line_col(&file.text, diagnostics[0].span.start);
            assert_eq!(line, 6, "{diagnostics:?}");
        }
        other => panic!("expected diagnostics, got {other:?}"),
    }
    // Windows line endings are left alone.
    let crlf = TINY.replace('\n', "\r\n");
    assert_eq!(load::normalize_text(crlf.clone()), crlf);
}

fn repeated_vocab(bytes: usize) -> String {
    let head = "model t {\n    d_model 64 layers 2 context 64\n    attention { heads 4 }\n";
    let line = "    vocab 1\n";
    format!("{head}{}}}\n", line.repeat(bytes / line.len()))
}

#[test]
fn diagnostics_are_capped_and_counted() {
    // 80 KB repeating one key: 6,600 duplicate-key errors (1.2 GB of output before the cap).
    let src = repeated_vocab(80_000);
    let d = modelspec_dsl::mspec::parse(&src, "v.mspec").unwrap_err();
    assert_eq!(d.len(), modelspec_dsl::diag::MAX_DIAGNOSTICS + 1);
    let more = modelspec_dsl::diag::more_count(d.last().unwrap()).unwrap();
    assert_eq!(more, 80_000 / 12 - 1 - modelspec_dsl::diag::MAX_DIAGNOSTICS);
    let text = modelspec_dsl::render::render(&d, &src);
    assert!(text.len() < 16_000, "{} bytes", text.len());
    assert!(text.ends_with(&format!(
        "error: and {more} more (the first 50 are shown)\n"
    )));
    // 800 KB: bounded time and no abort (it allocated 10 GB).
    let src = repeated_vocab(800_000);
    let start = Instant::now();
    let d = modelspec_dsl::mspec::parse(&src, "v.mspec").unwrap_err();
    assert!(start.elapsed().as_secs_f64() < 20.0);
    assert_eq!(d.len(), modelspec_dsl::diag::MAX_DIAGNOSTICS + 1);
}

#[test]
fn rendering_drops_exact_repeats_and_counts_the_rest() {
    let one = |start: usize, message: &str| modelspec_dsl::diag::Diagnostic {
        file: "x.mspec".into(),
        span: start..start + 1,
        field: "vocab".into(),
        message: message.into(),
        hint: None,
    };
    let src = "a\n".repeat(200);
    let mut diags = vec![one(0, "same"), one(0, "same"), one(0, "other")];
    diags.extend((1..100).map(|i| one(2 * i, "later")));
    let text = modelspec_dsl::render::render(&diags, &src);
    assert_eq!(text.matches("error: same").count(), 1);
    assert_eq!(text.matches("error: later").count(), 48);
    assert!(
        text.ends_with("error: and 51 more (the first 50 are shown)\n"),
        "{text}"
    );
}

#[test]
fn a_long_line_is_shown_around_the_caret() {
    // A one-line file: each diagnostic printed the whole 100 KB line.
    let src = format!("{}BAD{}", "a".repeat(50_000), "b".repeat(50_000));
    let d = modelspec_dsl::diag::Diagnostic {
        file: "x.json".into(),
        span: 50_000..50_003,
        field: String::new(),
        message: "here".into(),
        hint: None,
    };
    let text = modelspec_dsl::render::render(&[d], &src);
    assert!(text.len() < 1_000, "{} bytes", text.len());
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines[3].split_once("| ").unwrap().1;
    let carets = lines[4].split_once("| ").unwrap().1;
    assert!(shown.starts_with('…') && shown.ends_with('…'), "{shown}");
    let at = carets.find('^').unwrap();
    let under: String = shown.chars().skip(at).take(3).collect();
    assert_eq!(under, "BAD");
    assert_eq!(carets.trim(), "^^^");
}
