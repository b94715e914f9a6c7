//! Data-driven spec tests: every `specs/*.mspec` and every `specs/invalid/*.mspec` is a case.
//!
//! - `specs/*.mspec`: parses without diagnostics; its expansion (the IR as YAML) matches the
//!   snapshot `expand__<file>`; its parameter count equals the `# params: N` line of its header;
//!   `print` → `parse` and YAML → IR give back the same IR.
//! - `specs/invalid/*.mspec`: fails, and the rendered diagnostics match `invalid__<file>`.
//!
//! Adding a case is adding a file.

use std::path::{Path, PathBuf};

use modelspec_dsl::ModelSpec;
use modelspec_dsl::mspec::{parse, print};
use modelspec_dsl::params::parameters;
use modelspec_dsl::render::render;

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mspec"))
        .collect();
    out.sort();
    out
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The shown path of a spec, relative to the repository (stable across machines).
fn shown(p: &Path) -> String {
    let dir = p
        .parent()
        .and_then(|d| d.file_name())
        .map(|d| d.to_string_lossy().into_owned());
    match dir.as_deref() {
        Some("invalid") => format!(
            "specs/invalid/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ),
        _ => format!(
            "specs/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ),
    }
}

/// The count in the header line `# params: 8,030,261,248`.
fn header_params(src: &str) -> Option<u64> {
    src.lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("params:"))
        .and_then(|n| n.trim().replace(',', "").parse().ok())
}

fn load(p: &Path) -> (String, ModelSpec) {
    let src = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match parse(&src, &shown(p)) {
        Ok(spec) => (src, spec),
        Err(d) => panic!("{} has diagnostics:\n{}", p.display(), render(&d, &src)),
    }
}

#[test]
fn specs_expand_to_their_snapshots() {
    let all = files(&spec_dir());
    assert!(
        all.len() >= 19,
        "expected the real specs in specs/, found {}",
        all.len()
    );
    for p in all {
        let (_, spec) = load(&p);
        let yaml = serde_norway::to_string(&spec).expect("the IR serialises");
        insta::assert_snapshot!(format!("expand__{}", stem(&p)), yaml);
    }
}

#[test]
fn specs_have_their_published_parameter_counts() {
    let mut wrong = Vec::new();
    for p in files(&spec_dir()) {
        let (src, spec) = load(&p);
        let Some(expected) = header_params(&src) else {
            wrong.push(format!(
                "{}: no `# params: N` line in the header",
                p.display()
            ));
            continue;
        };
        let total: u64 = parameters(&spec).iter().map(|t| t.counted()).sum();
        if total != expected {
            wrong.push(format!(
                "{}: params_total {total}, header says {expected}",
                stem(&p)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn specs_round_trip_through_print_and_yaml() {
    for p in files(&spec_dir()) {
        let (_, spec) = load(&p);
        let text = print(&spec);
        match parse(&text, "printed.mspec") {
            Ok(back) => assert_eq!(
                back,
                spec,
                "{}: print → parse differs; printed:\n{text}",
                stem(&p)
            ),
            Err(d) => panic!(
                "{}: printed text does not parse:\n{}\n{text}",
                stem(&p),
                render(&d, &text)
            ),
        }
        let yaml = serde_norway::to_string(&spec).expect("the IR serialises");
        let back: ModelSpec = serde_norway::from_str(&yaml).expect("the YAML reads back");
        assert_eq!(back, spec, "{}: YAML round trip differs", stem(&p));
    }
}

#[test]
fn invalid_specs_fail_with_their_snapshots() {
    let all = files(&spec_dir().join("invalid"));
    assert!(
        all.len() >= 35,
        "expected at least 35 invalid specs, found {}",
        all.len()
    );
    let mut accepted = Vec::new();
    for p in all {
        let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        match parse(&src, &shown(&p)) {
            Ok(_) => accepted.push(stem(&p)),
            Err(d) => insta::assert_snapshot!(format!("invalid__{}", stem(&p)), render(&d, &src)),
        }
    }
    assert!(
        accepted.is_empty(),
        "these invalid specs parse without error: {accepted:?}"
    );
}

/// Small specs that exercise every construct of the language; each must parse and round-trip.
const FEATURES: &[(&str, &str)] = &[
    (
        "moe_patterns",
        "model moe_mix {
            vocab 1000   d_model 64   layers 8   context 128
            attention { heads 4 }
            moe {
                experts 8  top_k 2  expert swiglu(hidden = 32)
                shared(count = 2, hidden = 16, gate = true)
                router topk_softmax
            }
            layers[0] { mlp swiglu(hidden = 128) }      # dense first layer
            layers[every 2 offset 1] { moe.top_k 1 }
            checkpoint {
                default full
                layers[0..2] save(q, k, attn_out)
                layers[5] recompute(act)
                budget 24GiB
            }
        }",
    ),
    (
        "positions",
        "model pos_mix {
            vocab 1000 pad 64   d_model 64   layers 6   context 4096
            dropout { embedding 0.1  attention 0.05  residual 0 }
            attention { heads 4  kv_heads 2  scale 0.125  softcap 20 }
            position rope(theta = 1e4, fraction = 0.5, style = interleaved,
                          scaling = yarn(factor = 4, original_context = 1024))
            layers[1] { position alibi }
            layers[2] { position rope(scaling = longrope(short = [1, 1, 1, 1], long = [2, 2, 2, 2.5],
                                                         original_context = 1024)) }
            layers[3] { position none }
            layers[4] { position rope(scaling = dynamic_ntk(factor = 2, original_context = 1024)) }
            layers[5] {
                position rope(scaling = linear(factor = 2))
                attention { heads 8  kv_heads 8 }
            }
            final_norm layer(eps = 1e-6)
            logits { softcap 30  bias }
            weights { naming llama  qkv fused  fused_gate_up }
        }",
    ),
    (
        "norms",
        "// C++-style comments work too
        model norm_mix {
            vocab 1_000   d_model 96   layers 5   context 64
            norm rms(eps = 1e-6, offset = 1, weight = true)   placement post
            attention { heads 6  head_dim 32  qk_norm(rms(eps = 1e-6), scope = full)  qkv_bias }
            mlp relu_squared(hidden = 256)
            layers[odd] { norm layer(eps = 1e-5)  placement sandwich }
            layers[1, 4] { mlp geglu(hidden = 200, bias = true) }
            layers[2..5] { attention.window 16  attention.qk_norm none }
            final_norm none
            checkpoint { budget(0.25) }
        }",
    ),
    (
        "parallel",
        "model par {
            vocab 512   d_model 128   layers 3   context 32
            embedding { scale = 2.5, learned_positions }
            norm layer  parallel_residual  shared_norm
            attention { heads 2  kv_heads 1  out_bias }
            mlp gelu
            layers[last_is_not_a_selector_so_use_2] { mlp geglu(hidden = 64, act = gelu_tanh) }
            checkpoint none
        }",
    ),
];

#[test]
fn every_construct_parses_and_round_trips() {
    for (name, src) in FEATURES {
        let src = src.replace("last_is_not_a_selector_so_use_2", "2");
        let spec = match parse(&src, name) {
            Ok(s) => s,
            Err(d) => panic!("{name}:\n{}", render(&d, &src)),
        };
        let text = print(&spec);
        match parse(&text, "printed.mspec") {
            Ok(back) => assert_eq!(back, spec, "{name}: printed:\n{text}"),
            Err(d) => panic!(
                "{name}: printed text does not parse:\n{}\n{text}",
                render(&d, &text)
            ),
        }
        insta::assert_snapshot!(format!("print__{name}"), text);
    }
}

#[test]
fn rules_resolve_per_layer() {
    let (_, gemma3) = load(&spec_dir().join("gemma-3-1b.mspec"));
    let global: Vec<u64> = gemma3
        .layers
        .iter()
        .filter(|l| l.attention.window.is_none())
        .map(|l| l.index)
        .collect();
    assert_eq!(global, [5, 11, 17, 23]);
    for l in &gemma3.layers {
        let modelspec_dsl::ir::Position::Rope(r) = &l.position else {
            panic!("rope expected")
        };
        let want = if global.contains(&l.index) { 1e6 } else { 1e4 };
        assert_eq!(r.theta, want, "layer {}", l.index);
        assert_eq!(r.rotary_dims, 256);
    }
    let (_, gemma2) = load(&spec_dir().join("gemma-2-2b.mspec"));
    for l in &gemma2.layers {
        let want = (l.index % 2 == 0).then_some(4096);
        assert_eq!(l.attention.window, want, "layer {}", l.index);
    }
}

#[test]
fn truncated_specs_never_panic() {
    for p in files(&spec_dir()) {
        let src = std::fs::read_to_string(&p).unwrap_or_default();
        for end in (0..src.len()).filter(|i| src.is_char_boundary(*i)) {
            if let Err(d) = parse(&src[..end], "cut.mspec") {
                assert!(!d.is_empty());
                let _ = render(&d, &src[..end]);
            }
        }
    }
}

#[test]
fn selectors_print_compactly() {
    use modelspec_dsl::mspec::format_selector;
    assert_eq!(format_selector(&[3], 8), "3");
    assert_eq!(format_selector(&[0, 1, 2, 3], 8), "0..4");
    assert_eq!(format_selector(&[0, 2, 4, 6], 8), "even");
    assert_eq!(format_selector(&[1, 3, 5, 7], 8), "odd");
    assert_eq!(format_selector(&[5, 11, 17, 23], 26), "every 6 offset 5");
    assert_eq!(format_selector(&[0, 4], 8), "every 4");
    assert_eq!(format_selector(&[0, 1, 2, 3, 4, 5, 6, 7], 8), "all");
    assert_eq!(format_selector(&[1, 5, 9], 32), "1, 5, 9");
    assert_eq!(
        format_selector(&[0, 1, 2, 7, 9, 10, 11], 12),
        "0..3, 7, 9..12"
    );
}

#[test]
fn suggestions_pick_the_closest_key() {
    use modelspec_dsl::check::did_you_mean;
    assert_eq!(
        did_you_mean("kv_head", &["heads", "kv_heads", "head_dim"]),
        Some("kv_heads")
    );
    assert_eq!(
        did_you_mean("atn_out", &["attn", "attn_out", "q"]),
        Some("attn_out")
    );
    assert_eq!(did_you_mean("zzz", &["heads", "window"]), None);
}

/// Each hand-written spec and the HF config.json of the same model (imported by `hf::import`)
/// resolve to the same IR: two independent front ends agree field by field.
#[test]
fn specs_agree_with_their_hf_configs() {
    let pairs = [
        ("falcon-7b", "falcon-7b"),
        ("gemma-2-2b", "gemma-2-2b"),
        ("gemma-2-9b", "gemma-2-9b"),
        ("gemma-3-1b", "gemma-3-1b-it"),
        ("gpt2-124m", "gpt2"),
        ("gpt2-xl", "gpt2-xl"),
        ("llama-2-7b", "llama-2-7b"),
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("llama-3.2-1b", "llama-3.2-1b"),
        ("mistral-7b-v0.1", "mistral-7b-v0.1"),
        ("mixtral-8x7b", "mixtral-8x7b-v0.1"),
        ("olmo-2-7b", "olmo-2-1124-7b"),
        ("phi-2", "phi-2"),
        ("pythia-160m", "pythia-160m"),
        ("qwen2.5-0.5b", "qwen2.5-0.5b"),
        ("qwen2.5-7b", "qwen2.5-7b"),
        ("qwen3-30b-a3b", "qwen3-30b-a3b"),
        ("qwen3-8b", "qwen3-8b"),
        ("deepseek-v3", "deepseek-v3"),
        ("deepseek-v2-lite", "deepseek-v2-lite"),
    ];
    let hf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hf_configs");
    let mut differ = Vec::new();
    for (spec, hf) in pairs {
        let (_, mut ours) = load(&spec_dir().join(format!("{spec}.mspec")));
        let path = hf_dir.join(hf).join("config.json");
        let json =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let theirs = modelspec_dsl::hf::import::import(&json, &path.to_string_lossy())
            .unwrap_or_else(|d| panic!("{hf}: {}", render(&d, &json)));
        ours.name = theirs.name.clone();
        if ours != theirs {
            let a = serde_norway::to_string(&ours).unwrap_or_default();
            let b = serde_norway::to_string(&theirs).unwrap_or_default();
            let first = a.lines().zip(b.lines()).find(|(x, y)| x != y);
            differ.push(format!("{spec} vs {hf}: first difference {first:?}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
