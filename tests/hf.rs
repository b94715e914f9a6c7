//! HF config.json import/export against real configs (tests/hf_configs/<model>/config.json, each
//! with its published parameter count in `params_total`), in both config generations.

use std::path::{Path, PathBuf};

use modelspec::dsl::hf::{self, Family};
use modelspec::dsl::ir::{Ffn, ModelSpec, Position, RopeScaling};
use modelspec::dsl::{cost, yaml};

/// Every real-model directory (skips `invalid/`).
fn model_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_configs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/hf_configs exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 16,
        "expected a config for every supported model_type"
    );
    dirs
}

fn read(dir: &Path) -> (String, String) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).expect("readable config");
    (text, path.display().to_string())
}

fn import(dir: &Path) -> ModelSpec {
    let (text, file) = read(dir);
    match hf::import(&text, &file) {
        Ok(spec) => spec,
        Err(diags) => panic!(
            "{file} failed to import: {}",
            modelspec::dsl::render::render(&diags, &text)
        ),
    }
}

fn published(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("params_total")).expect("params_total sidecar");
    text.trim().parse().expect("a number")
}

fn model_type(dir: &Path) -> String {
    let (text, _) = read(dir);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    v["model_type"].as_str().expect("model_type").to_string()
}

#[test]
fn every_supported_model_type_has_a_real_config() {
    let types: std::collections::BTreeSet<String> =
        model_dirs().iter().map(|d| model_type(d)).collect();
    for family in hf::families::ALL {
        assert!(
            types.contains(family.model_type()),
            "no config for {}",
            family.model_type()
        );
    }
}

#[test]
fn params_total_equals_published_counts() {
    let mut failures = Vec::new();
    for dir in model_dirs() {
        let spec = import(&dir);
        let (got, want) = (cost::params_total(&spec), published(&dir));
        if got != want {
            failures.push(format!("{}: {got} != published {want}", dir.display()));
        }
        assert_eq!(
            cost::summarize(&spec).params_total,
            got,
            "summary agrees with the table"
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn both_generations_give_the_same_ir() {
    let mut pairs = 0;
    for dir in model_dirs() {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(classic) = name.strip_suffix("-tf5") else {
            continue;
        };
        let mut a = import(&dir.with_file_name(classic));
        let b = import(&dir);
        a.name.clone_from(&b.name);
        assert!(
            a == b,
            "{name}: transformers-5 rope_parameters must resolve like rope_theta/rope_scaling"
        );
        pairs += 1;
    }
    assert!(
        pairs >= 8,
        "expected several transformers-5 variants, found {pairs}"
    );
}

#[test]
fn config_ir_config_ir_round_trips() {
    for dir in model_dirs() {
        let spec = import(&dir);
        let config = hf::export(&spec).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // A Mistral config without a window is a Llama: the IR cannot tell them apart, and the
        // export picks the simpler family. Every other config keeps its model_type.
        let original = model_type(&dir);
        let exported = config["model_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let no_window = spec.layers.iter().all(|l| l.attention.window.is_none());
        assert!(
            exported == original || (original == "mistral" && no_window && exported == "llama"),
            "{}: exported as {exported}, not {original}",
            dir.display()
        );
        let text = serde_json::to_string_pretty(&config).expect("serialisable");
        let back = hf::import(&text, "exported/config.json").expect("exported config imports");
        assert!(
            back == spec,
            "{}: config.json → IR → config.json → IR changed the IR",
            dir.display()
        );
        // And once more: the exported config is a fixed point.
        assert_eq!(hf::export(&back).expect("exports again"), config);
    }
}

#[test]
fn yaml_and_json_round_trip() {
    for dir in model_dirs() {
        let spec = import(&dir);
        let text = yaml::to_string(&spec);
        let back = yaml::from_str(&text, "x.yaml").expect("yaml reads back");
        assert!(back == spec, "{}: YAML changed the IR", dir.display());
        let json = yaml::to_json_string(&spec);
        let back = yaml::from_json_str(&json, "x.json").expect("json reads back");
        assert!(back == spec, "{}: JSON changed the IR", dir.display());
    }
}

#[test]
fn family_behaviours_are_explicit_in_the_ir() {
    let dir = |n: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/hf_configs")
            .join(n)
    };
    // Gemma-3: 5 local layers then 1 global, local layers on their own RoPE base.
    let g3 = import(&dir("gemma-3-1b-it"));
    let windows: Vec<Option<u64>> = g3.layers.iter().map(|l| l.attention.window).collect();
    assert_eq!(
        windows[..6],
        [Some(512), Some(512), Some(512), Some(512), Some(512), None]
    );
    let theta = |l: usize| match &g3.layers[l].position {
        Position::Rope(r) => r.theta,
        other => panic!("rope expected, got {other:?}"),
    };
    assert_eq!((theta(0), theta(5)), (10000.0, 1_000_000.0));
    assert_eq!(g3.layers[0].attention.scale, 1.0 / 16.0);
    // Gemma-2: even layers slide, softcaps.
    let g2 = import(&dir("gemma-2-2b"));
    assert_eq!(g2.layers[0].attention.window, Some(4096));
    assert_eq!(g2.layers[1].attention.window, None);
    assert_eq!(g2.logits.softcap, Some(30.0));
    assert_eq!(g2.layers[3].attention.softcap, Some(50.0));
    // Llama 3.1 scaling.
    let llama = import(&dir("llama-3.1-8b"));
    match &llama.layers[0].position {
        Position::Rope(r) => assert!(matches!(
            r.scaling,
            RopeScaling::Llama3 {
                original_context: 8192,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
    // Mixtral: softmax → top-2 → renormalise.
    let mixtral = import(&dir("mixtral-8x7b-v0.1"));
    match &mixtral.layers[0].ffn {
        Ffn::Moe(m) => assert!(m.renormalize && m.top_k == 2 && m.experts == 8),
        other => panic!("{other:?}"),
    }
    // Phi-2: partial rotary, parallel residual with one shared norm, lm_head bias.
    let phi = import(&dir("phi-2"));
    let l = &phi.layers[0];
    assert!(l.block.parallel_residual && l.block.shared_norm && phi.logits.bias);
    match &l.position {
        Position::Rope(r) => assert_eq!(r.rotary_dims, 32),
        other => panic!("{other:?}"),
    }
    // GPT-2: learned positions, tied.
    let gpt2 = import(&dir("gpt2"));
    assert!(gpt2.embedding.learned_positions && gpt2.embedding.tied);
    // Falcon-7B: multi-query.
    let falcon = import(&dir("falcon-7b"));
    assert_eq!(falcon.layers[0].attention.kv_heads, 1);
}

#[test]
fn active_parameters_of_moe_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_configs");
    // Published: Mixtral-8x7B "12.9B active", Qwen3-30B-A3B "3.3B activated", Qwen1.5-MoE-A2.7B
    // "2.7B activated"; the publishers round differently, so allow 0.1B either way.
    for (name, published) in [
        ("mixtral-8x7b-v0.1", 12.9e9),
        ("qwen3-30b-a3b", 3.3e9),
        ("qwen1.5-moe-a2.7b", 2.7e9),
    ] {
        let spec = import(&root.join(name));
        let active = cost::params_active(&spec);
        assert!(
            (active as f64 - published).abs() < 0.1e9,
            "{name}: {active} active, published {published}"
        );
        assert!(active < cost::params_total(&spec));
    }
    let dense = import(&root.join("llama-3.1-8b"));
    assert_eq!(cost::params_active(&dense), cost::params_total(&dense));
}

#[test]
fn active_parameters_of_gpt_oss_and_llama4_scout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_configs");
    // OpenAI's "3.6B / 5.1B active" leave out the input embedding (a lookup, 201088 × 2880);
    // Meta's "17B active" counts everything a token passes through.
    for (name, published, embedding_left_out) in [
        ("gpt-oss-20b", 3.6e9, true),
        ("gpt-oss-120b", 5.1e9, true),
        ("llama-4-scout-17b-16e", 17.0e9, false),
    ] {
        let spec = import(&root.join(name));
        let mut active = cost::params_active(&spec);
        if embedding_left_out {
            active -= spec.vocab_padded * spec.d_model;
        }
        assert!(
            (active as f64 - published).abs() < 0.2e9,
            "{name}: {active} active, published {published}"
        );
    }
    let smol = import(&root.join("smollm3-3b"));
    assert_eq!(cost::params_active(&smol), cost::params_total(&smol));
}

#[test]
fn active_parameters_of_deepseek_v3_and_v2_lite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_configs");
    // DeepSeek's "37B / 2.4B activated" leave out the input embedding (a lookup); V3's count is
    // transformers' model, without the checkpoint's multi-token-prediction layer.
    for (name, published) in [("deepseek-v3", 37.0e9), ("deepseek-v2-lite", 2.4e9)] {
        let spec = import(&root.join(name));
        let active = cost::params_active(&spec) - spec.vocab_padded * spec.d_model;
        assert!(
            (active as f64 - published).abs() < 0.7e9 * (published / 37.0e9).max(0.1),
            "{name}: {active} active, published {published}"
        );
        assert!(spec.layers.iter().all(|l| l.attention.mla.is_some()));
    }
}

#[test]
fn flops_per_token_follow_the_formula() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_configs");
    // GPT-2 at 1024 positions: 2 × (12 blocks of qkv, proj, fc, proj + the tied head) plus
    // 4 · d_model · mean keys per query (1025 / 2) per block.
    let gpt2 = import(&root.join("gpt2"));
    let (d, v, l, t) = (768u64, 50257u64, 12u64, 1024u64);
    let matmul = l * (d * 3 * d + d * d + 2 * d * 4 * d) + v * d;
    let attention = l * 4 * d * (t * (t + 1) / 2) / t;
    assert_eq!(cost::flops_per_token(&gpt2), 2 * matmul + attention);
    // Sliding windows reduce attention FLOPs: Mistral's 4096 window at 32768 positions.
    let mistral = import(&root.join("mistral-7b-v0.1"));
    let mut unwindowed = mistral.clone();
    for layer in &mut unwindowed.layers {
        layer.attention.window = None;
    }
    assert!(cost::flops_per_token(&mistral) < cost::flops_per_token(&unwindowed));
}

#[test]
fn export_refuses_what_no_family_expresses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_configs");
    let mut spec = import(&root.join("llama-3.1-8b"));
    spec.layers[3].attention.softcap = Some(20.0);
    let err = hf::export(&spec).expect_err("a softcap on one llama layer has no config.json form");
    assert!(
        err.to_string().contains("layers[3].attention.softcap"),
        "{err}"
    );
}

#[test]
fn the_import_never_panics_on_damaged_configs() {
    for dir in model_dirs() {
        let (text, _) = read(&dir);
        // Every truncation (by lines and by a stride of bytes).
        let bytes = text.as_bytes();
        let end = text.rfind('}').unwrap_or(0);
        for cut in (0..end).step_by(7) {
            if let Ok(prefix) = std::str::from_utf8(&bytes[..cut]) {
                assert!(
                    hf::import(prefix, "t.json").is_err(),
                    "a truncated config must be an error"
                );
            }
        }
        // Values swapped for other types and extremes.
        for replacement in [
            "null",
            "\"x\"",
            "-1",
            "0",
            "1e999",
            "99999999999999999999999",
            "[]",
            "{}",
            "true",
        ] {
            for (k, _) in text.match_indices(": ") {
                let rest = &text[k + 2..];
                let end = rest.find([',', '\n']).unwrap_or(rest.len());
                let mutated = format!("{}: {replacement}{}", &text[..k], &rest[end..]);
                let _ = hf::import(&mutated, "m.json");
            }
        }
    }
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let err = hf::import(r#"{"model_type": "mamba"}"#, "c.json").expect_err("unsupported");
    assert_eq!(err[0].field, "model_type");
    for family in hf::families::ALL {
        assert!(
            err[0]
                .hint
                .as_deref()
                .unwrap_or_default()
                .contains(family.model_type())
        );
    }
    assert!(Family::from_model_type("mamba").is_none());
}

/// Imports a small hand-written config, and checks that it round-trips through export.
fn tiny(json: &str) -> ModelSpec {
    let spec = hf::import(json, "tiny/config.json")
        .unwrap_or_else(|d| panic!("{}", modelspec::dsl::render::render(&d, json)));
    let config = hf::export(&spec).unwrap_or_else(|e| panic!("{e}"));
    let back = hf::import(&config.to_string(), "back/config.json").expect("re-import");
    assert!(back == spec, "round trip changed the IR of {json}");
    spec
}

fn rope(spec: &ModelSpec, layer: usize) -> modelspec::dsl::ir::Rope {
    match &spec.layers[layer].position {
        Position::Rope(r) => r.clone(),
        other => panic!("layer {layer}: rope expected, got {other:?}"),
    }
}

#[test]
fn rope_scaling_variants_in_both_generations() {
    let base = r#""model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
        "max_position_embeddings": 4096"#;
    let cases = [
        (
            r#""rope_scaling": {"type": "linear", "factor": 2.0}"#,
            RopeScaling::Linear { factor: 2.0 },
        ),
        (
            r#""rope_scaling": {"type": "dynamic", "factor": 4.0}"#,
            RopeScaling::DynamicNtk {
                factor: 4.0,
                original_context: 4096,
            },
        ),
        (
            r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}"#,
            RopeScaling::Yarn {
                factor: 4.0,
                original_context: 1024,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 0.1 * 4f64.ln() + 1.0,
                truncate: true,
                mscale: None,
            },
        ),
        (
            r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "truncate": false}"#,
            RopeScaling::Yarn {
                factor: 4.0,
                original_context: 1024,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 0.1 * 4f64.ln() + 1.0,
                truncate: false,
                mscale: None,
            },
        ),
        (
            r#""rope_scaling": {"rope_type": "longrope", "short_factor": [1, 1, 1, 1, 1, 1, 1, 1],
                "long_factor": [2, 2, 2, 2, 2, 2, 2, 2], "original_max_position_embeddings": 1024}"#,
            RopeScaling::Longrope {
                short_factor: vec![1.0; 8],
                long_factor: vec![2.0; 8],
                original_context: 1024,
                attention_factor: (1.0 + 4f64.ln() / 1024f64.ln()).sqrt(),
            },
        ),
    ];
    for (scaling, want) in cases {
        let classic = tiny(&format!("{{{base}, \"rope_theta\": 5000, {scaling}}}"));
        assert_eq!(rope(&classic, 1).scaling, want, "{scaling}");
        assert_eq!(rope(&classic, 1).theta, 5000.0);
        // transformers 5: the same dict under rope_parameters, with rope_theta inside.
        let inner = scaling.trim_start_matches(r#""rope_scaling": {"#);
        let tf5 = tiny(&format!(
            "{{{base}, \"rope_parameters\": {{\"rope_theta\": 5000, {inner}}}"
        ));
        assert!(tf5 == classic, "{scaling}: the generations disagree");
    }
}

#[test]
fn gemma3_per_layer_type_rope_parameters() {
    let spec = tiny(
        r#"{"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 6, "head_dim": 16,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100,
            "sliding_window": 32, "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
            "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}"#,
    );
    assert_eq!(rope(&spec, 0).theta, 10000.0);
    assert_eq!(rope(&spec, 0).scaling, RopeScaling::None);
    assert_eq!(rope(&spec, 2).theta, 1e6);
    assert_eq!(rope(&spec, 2).scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(spec.layers[2].attention.window, None);
    assert_eq!(spec.layers[3].attention.window, Some(32));
}

#[test]
fn qwen_windows_and_sparse_layers() {
    let spec = tiny(
        r#"{"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100,
            "use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2}"#,
    );
    let windows: Vec<Option<u64>> = spec.layers.iter().map(|l| l.attention.window).collect();
    assert_eq!(windows, [None, None, Some(16), Some(16)]);
    assert!(spec.layers[0].attention.qkv_bias && !spec.layers[0].attention.out_bias);

    let moe = tiny(
        r#"{"model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 96, "vocab_size": 100, "num_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
            "decoder_sparse_step": 2, "mlp_only_layers": [3], "norm_topk_prob": true}"#,
    );
    let kinds: Vec<&str> = moe
        .layers
        .iter()
        .map(|l| match &l.ffn {
            Ffn::Mlp(_) => "mlp",
            Ffn::Moe(_) => "moe",
        })
        .collect();
    // Sparse when (i + 1) % step == 0 and i is not in mlp_only_layers.
    assert_eq!(kinds, ["mlp", "moe", "mlp", "mlp"]);
    match &moe.layers[1].ffn {
        Ffn::Moe(m) => {
            assert!(m.renormalize);
            let shared = m.shared.expect("qwen2_moe has a shared expert");
            assert!(shared.gate && shared.hidden == 48);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn falcon_gpt_neox_gpt2_and_phi_switches() {
    // Falcon's new decoder architecture: GQA, two norms in parallel.
    let falcon = tiny(
        r#"{"model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
            "num_kv_heads": 2, "new_decoder_architecture": true, "vocab_size": 100}"#,
    );
    let b = falcon.layers[0].block;
    assert!(b.parallel_residual && !b.shared_norm);
    assert_eq!(falcon.layers[0].attention.kv_heads, 2);
    // Falcon-RW style: sequential, MHA, ALiBi, biases.
    let rw = tiny(
        r#"{"model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "multi_query": false, "parallel_attn": false, "alibi": true, "bias": true, "vocab_size": 100}"#,
    );
    assert!(matches!(rw.layers[0].position, Position::Alibi));
    assert!(!rw.layers[0].block.parallel_residual && rw.layers[0].attention.qkv_bias);
    // GPT-NeoX without the parallel residual.
    let neox = tiny(
        r#"{"model_type": "gpt_neox", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 256, "use_parallel_residual": false, "rotary_pct": 0.5, "vocab_size": 100}"#,
    );
    assert!(!neox.layers[0].block.parallel_residual);
    assert_eq!(rope(&neox, 0).rotary_dims, 8);
    // GPT-2's per-layer attention scale.
    let gpt2 = tiny(
        r#"{"model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4, "n_inner": 100,
            "scale_attn_by_inverse_layer_idx": true, "vocab_size": 100}"#,
    );
    assert_eq!(gpt2.layers[2].attention.scale, 0.25 / 3.0);
    // Phi with qk layernorm.
    let phi = tiny(
        r#"{"model_type": "phi", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 256, "qk_layernorm": true, "vocab_size": 100}"#,
    );
    assert!(phi.layers[0].attention.qk_norm.is_some());
    assert_eq!(rope(&phi, 0).rotary_dims, 8);
}

#[test]
fn transformers5_export_imports_back() {
    for dir in model_dirs() {
        let spec = import(&dir);
        let v5 = hf::export_generation(&spec, hf::Generation::Transformers5)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(v5.get("rope_theta").is_none() && v5.get("rope_scaling").is_none());
        assert!(v5.get("rope_parameters").is_some(), "{}", dir.display());
        let back = hf::import(&v5.to_string(), "v5/config.json").expect("v5 config imports");
        assert!(
            back == spec,
            "{}: the transformers-5 export changed the IR",
            dir.display()
        );
    }
}

#[test]
fn random_mutations_never_panic() {
    // xorshift64*: deterministic, no dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let alphabet = b"{}[]\":,0123456789.-+eE nulltruefalse\\\n";
    for dir in model_dirs() {
        let (text, _) = read(&dir);
        let spec = import(&dir);
        let yaml_text = yaml::to_string(&spec);
        for source in [&text, &yaml_text] {
            for _ in 0..100 {
                let mut bytes = source.as_bytes().to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len().max(1);
                    let c = alphabet[(next() as usize) % alphabet.len()];
                    match next() % 3 {
                        0 if at < bytes.len() => bytes[at] = c,
                        1 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at.min(bytes.len()), c),
                    }
                }
                let Ok(mutated) = String::from_utf8(bytes) else {
                    continue;
                };
                let _ = hf::import(&mutated, "m.json");
                let _ = yaml::from_str(&mutated, "m.yaml");
                let _ = yaml::from_json_str(&mutated, "m.json");
            }
        }
    }
}

#[test]
fn transformers5_spellings() {
    // Qwen ignores sliding_window unless use_sliding_window (transformers 5 writes 0 there).
    let qwen = tiny(
        r#"{"model_type": "qwen2_moe", "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 6,
            "num_key_value_heads": 3, "intermediate_size": 28, "vocab_size": 64, "num_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 12, "shared_expert_intermediate_size": 20,
            "use_sliding_window": false, "sliding_window": 0, "qkv_bias": false,
            "layer_types": ["full_attention", "full_attention"]}"#,
    );
    assert!(
        qwen.layers
            .iter()
            .all(|l| l.attention.window.is_none() && !l.attention.qkv_bias)
    );
    // Qwen3-MoE's expert count as num_local_experts.
    let moe = tiny(
        r#"{"model_type": "qwen3_moe", "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 6,
            "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "num_local_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 12}"#,
    );
    assert!(matches!(&moe.layers[0].ffn, Ffn::Moe(m) if m.experts == 4));
    // Gemma-3's pattern under its private name.
    let g3 = tiny(
        r#"{"model_type": "gemma3_text", "hidden_size": 24, "num_hidden_layers": 4, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32, "vocab_size": 64,
            "sliding_window": 4, "_sliding_window_pattern": 2}"#,
    );
    let windows: Vec<bool> = g3
        .layers
        .iter()
        .map(|l| l.attention.window.is_some())
        .collect();
    assert_eq!(windows, [true, false, true, false]);
}

#[test]
fn configs_written_by_transformers_import_and_round_trip() {
    // tests/fixtures/*/config.json were written by transformers 5.17's save_pretrained.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let path = entry.path().join("config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let spec = hf::import(&text, &path.display().to_string())
            .unwrap_or_else(|d| panic!("{}", modelspec::dsl::render::render(&d, &text)));
        for generation in [hf::Generation::Hub, hf::Generation::Transformers5] {
            let config = hf::export_generation(&spec, generation)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let back = hf::import(&config.to_string(), "back.json").expect("re-import");
            assert!(
                back == spec,
                "{}: {generation:?} export changed the IR",
                path.display()
            );
        }
        seen += 1;
    }
    println!("{seen} transformers-written configs round-tripped");
}
