//! docs/mspec.md, the language reference, is checked here: every ```mspec example parses and
//! checks (fragments inside a minimal model), every ```mspec,invalid example fails, every
//! ```mspec,warning example checks with a warning, and the document covers every key, policy,
//! budget unit and per-layer tensor name the implementation knows.
//!
//! Also the warning itself: a per-layer setting that later rules override on every layer it
//! selects is reported (non-fatally), a general rule with a narrower exception is not.

use std::path::PathBuf;

use modelspec_dsl::mspec;

fn reference() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/mspec.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An example: its fence's info string, its text, and the line it starts on.
struct Example {
    info: String,
    text: String,
    line: usize,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut current: Option<Example> = None;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        match current.take() {
            Some(ex) if trimmed.starts_with("```") => out.push(ex),
            Some(mut ex) => {
                ex.text.push_str(line);
                ex.text.push('\n');
                current = Some(ex);
            }
            None => {
                if let Some(info) = trimmed.strip_prefix("```")
                    && info.starts_with("mspec")
                {
                    current = Some(Example {
                        info: info.trim().to_string(),
                        text: String::new(),
                        line: i + 2,
                    });
                }
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```mspec fence");
    out
}

/// Whether `fragment` sets top-level key `key` itself (so the wrapper must not).
fn sets(fragment: &str, key: &str) -> bool {
    fragment.lines().any(|l| {
        let l = l.trim_start();
        match key {
            // `layers 4`, not `layers[...]`.
            "layers" => l
                .strip_prefix("layers")
                .is_some_and(|r| r.trim_start().starts_with(|c: char| c.is_ascii_digit())),
            // The block, not a dotted key (`attention.window` goes with `attention { heads 4 }`).
            "attention" => l
                .strip_prefix("attention")
                .is_some_and(|r| r.trim_start().starts_with('{')),
            _ => l
                .strip_prefix(key)
                .is_some_and(|r| r.starts_with([' ', '='])),
        }
    })
}

/// The example as a whole file: as written when it is a model, else inside the minimal model.
fn as_file(text: &str) -> String {
    let body = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if body.trim_start().starts_with("model ") {
        return text.to_string();
    }
    let mut wrapper = String::from("model example {\n");
    for (key, line) in [
        ("vocab", "vocab 256"),
        ("d_model", "d_model 64"),
        ("layers", "layers 4"),
        ("context", "context 128"),
        ("attention", "attention { heads 4 }"),
    ] {
        if !sets(text, key) {
            wrapper.push_str(&format!("    {line}\n"));
        }
    }
    wrapper.push_str(text);
    wrapper.push_str("}\n");
    wrapper
}

#[test]
fn every_example_in_the_reference_checks_as_marked() {
    let doc = reference();
    let examples = examples(&doc);
    assert!(examples.len() > 60, "only {} examples", examples.len());
    let mut failures = Vec::new();
    let (mut valid, mut invalid, mut warning) = (0, 0, 0);
    for ex in &examples {
        let file = as_file(&ex.text);
        let name = format!("docs/mspec.md:{}", ex.line);
        let parsed = mspec::parse(&file, &name);
        let warnings = mspec::warnings(&file, &name);
        match ex.info.as_str() {
            "mspec" => {
                valid += 1;
                match &parsed {
                    Err(d) => failures.push(format!(
                        "{name}: should check but fails:\n{}\n{file}",
                        modelspec_dsl::render::render(d, &file)
                    )),
                    Ok(_) if !warnings.is_empty() => failures.push(format!(
                        "{name}: warns unexpectedly (mark it mspec,warning):\n{}",
                        modelspec_dsl::render::render_warnings(&warnings, &file)
                    )),
                    Ok(_) => {}
                }
            }
            "mspec,invalid" => {
                invalid += 1;
                if parsed.is_ok() {
                    failures.push(format!("{name}: marked invalid but checks:\n{file}"));
                }
            }
            "mspec,warning" => {
                warning += 1;
                if let Err(d) = &parsed {
                    failures.push(format!(
                        "{name}: should check (with a warning) but fails:\n{}",
                        modelspec_dsl::render::render(d, &file)
                    ));
                } else if warnings.is_empty() {
                    failures.push(format!("{name}: marked warning but warns of nothing"));
                }
            }
            other => failures.push(format!("{name}: unknown fence info `{other}`")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        valid > 40 && invalid > 15 && warning >= 1,
        "{valid} {invalid} {warning}"
    );
}

/// The document names every key, value word, policy, unit and tensor: a list kept beside the
/// implementation's, so a new key without documentation fails here.
#[test]
fn the_reference_covers_the_language() {
    let doc = reference();
    let in_examples: String = examples(&doc)
        .iter()
        .filter(|e| e.info == "mspec")
        .map(|e| e.text.as_str())
        .collect();
    // Every key and value word of the schema, each used in a valid example.
    let words = [
        "vocab",
        "pad",
        "vocab_pad_multiple",
        "d_model",
        "layers",
        "context",
        "dropout",
        "embedding",
        "tied",
        "scale",
        "sqrt(d_model)",
        "learned_positions",
        "norm",
        "rms(",
        "layer(",
        "eps",
        "offset",
        "weight",
        "bias",
        "placement",
        "pre",
        "post",
        "sandwich",
        "parallel_residual",
        "shared_norm",
        "final_norm",
        "attention",
        "heads",
        "kv_heads",
        "head_dim",
        "qkv_bias",
        "out_bias",
        "qk_norm",
        "scope = full",
        "softcap",
        "window",
        "position",
        "rope(",
        "theta",
        "fraction",
        "rotary_dims",
        "interleaved",
        "scaling",
        "linear(",
        "dynamic_ntk(",
        "yarn(",
        "llama3(",
        "low_freq_factor",
        "high_freq_factor",
        "original_context",
        "longrope(",
        "short",
        "long",
        "learned",
        "alibi",
        "none",
        "mlp",
        "hidden",
        "gelu",
        "gelu_tanh",
        "relu_squared",
        "swiglu",
        "geglu",
        "act = gelu_tanh",
        "moe",
        "experts",
        "top_k",
        "expert",
        "router",
        "topk_softmax",
        "renormalize",
        "shared(",
        "count",
        "gate",
        "aux_loss",
        "logits",
        "weights",
        "naming",
        "gpt_neox",
        "qkv",
        "fused_per_head",
        "fused_gate_up",
        "checkpoint",
        "default",
        "budget",
        "budget(",
        "every",
        "even",
        "odd",
        "all",
        "full",
        "auto",
        "save(",
        "recompute(",
    ];
    let missing: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !in_examples.contains(w))
        .collect();
    assert!(missing.is_empty(), "no valid example uses {missing:?}");
    // Every name word of the prose tables too (not all make sense in one small example).
    for word in [
        "gpt2",
        "falcon",
        "phi",
        "separate",
        "fused",
        "half_split",
        "softmax_topk",
    ] {
        assert!(
            doc.contains(&format!("`{word}`")),
            "`{word}` is not documented"
        );
    }
    // The layer limit, written with thousands separators.
    let digits = modelspec_dsl::check::MAX_LAYERS.to_string();
    let mut limit = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            limit.push(',');
        }
        limit.push(c);
    }
    assert!(
        doc.contains(&format!("at most {limit}")),
        "layer limit {limit}"
    );
    for policy in modelspec_dsl::plan::LAYER_POLICIES {
        assert!(doc.contains(&format!("`{policy}")), "policy {policy}");
    }
    for (unit, _) in modelspec_dsl::plan::BYTE_UNITS {
        assert!(doc.contains(&format!("`{unit}`")), "unit {unit}");
    }
    // Every activation name of the richest layers (sandwich norms, qk-norm, RoPE, gated MLP;
    // MoE with shared experts).
    let dense = mspec::parse(
        "model d { vocab 8 d_model 8 layers 1 context 8 placement sandwich
            attention { heads 2 qk_norm rms } mlp swiglu(hidden = 8) }",
        "d.mspec",
    )
    .expect("valid");
    let moe = mspec::parse(
        "model m { vocab 8 d_model 8 layers 1 context 8 attention { heads 2 }
            moe { experts 2 top_k 1 expert swiglu(hidden = 8) shared(count = 1) } }",
        "m.mspec",
    )
    .expect("valid");
    for layer in dense.layers.iter().chain(&moe.layers) {
        for name in modelspec_dsl::tensors::layer_tensors(layer) {
            assert!(doc.contains(&format!("`{name}`")), "tensor {name}");
        }
    }
}

#[test]
fn a_setting_overridden_on_every_layer_it_selects_warns_with_both_places() {
    let src = "model m { vocab 8 d_model 8 layers 4 context 8 attention { heads 2 }
    layers[1] { attention.window 64 }
    layers[1] { attention.window 32 }
}";
    assert!(
        mspec::parse(src, "m.mspec").is_ok(),
        "a warning is not an error"
    );
    let warnings = mspec::warnings(src, "m.mspec");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!(w.field, "attention.window");
    assert_eq!(&src[w.span.clone()], "attention.window");
    let first = src.find("attention.window 64").unwrap();
    assert_eq!(w.span.start, first, "points at the dead setting");
    assert!(w.message.contains("line 3, column 17"), "{}", w.message);
    assert!(
        w.message.contains("last matching rule wins"),
        "{}",
        w.message
    );

    // Across selectors: `layers[0..2]` is covered by `even` (0) and `1`.
    let src = "model m { vocab 8 d_model 8 layers 4 context 8 attention { heads 2 }
    layers[0..2] { placement post  attention { bias } }
    layers[even] { placement sandwich  attention.bias false }
    layers[1] { placement pre  attention.qkv_bias false  attention.out_bias false }
}";
    let warnings = mspec::warnings(src, "m.mspec");
    let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["attention.bias", "placement"], "{warnings:?}");

    // In the checkpoint block too.
    let src = "model m { vocab 8 d_model 8 layers 2 context 8 attention { heads 2 }
    checkpoint { layers[0] full  layers[0..2] none }
}";
    assert_eq!(mspec::warnings(src, "m.mspec").len(), 1);
}

#[test]
fn an_exception_to_a_general_rule_does_not_warn() {
    for src in [
        // The earlier rule still sets layers 0, 1, 2.
        "model m { vocab 8 d_model 8 layers 4 context 8 attention { heads 2 }
            layers[all] { attention.window 64 }
            layers[3] { attention.window none } }",
        // Different fields.
        "model m { vocab 8 d_model 8 layers 4 context 8 attention { heads 2 }
            layers[1] { attention.window 64 }
            layers[1] { attention.softcap 30 } }",
        // Call values merge: the later rope keeps the earlier fraction.
        "model m { vocab 8 d_model 8 layers 4 context 8 attention { heads 2 }
            layers[1] { position rope(fraction = 0.5) }
            layers[1] { position rope(theta = 1000) } }",
        // A model-level setting overridden by a rule is the point of rules.
        "model m { vocab 8 d_model 8 layers 4 context 8 attention { heads 2  window 64 }
            layers[0..4] { attention.window 32 } }",
    ] {
        assert!(mspec::parse(src, "m.mspec").is_ok(), "{src}");
        let warnings = mspec::warnings(src, "m.mspec");
        assert!(warnings.is_empty(), "{src}: {warnings:?}");
    }
}
