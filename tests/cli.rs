//! The `modelspec` binary's static commands: check, inspect, expand, import-hf, export-hf.
//!
//! Runs the built binary, checks exit codes (0 ok, 1 invalid, never 101 = panic) and snapshots the
//! rendered diagnostics of invalid config.json files (tests/hf_configs/invalid/*.json).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in the package root (so paths in diagnostics are relative and stable).
fn modelspec(args: &[&str]) -> Output {
    modelspec_in(root(), args)
}

/// Runs the binary in `dir`.
fn modelspec_in(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs");
    assert_ne!(
        out.status.code(),
        Some(101),
        "modelspec {args:?} panicked:\n{}",
        stderr(&out)
    );
    assert!(
        out.status.code().is_some(),
        "modelspec {args:?} was killed by a signal"
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh scratch directory under the target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `tests/hf_configs/<model>` for every real model (relative paths), with the published count.
fn real_configs() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("tests/hf_configs")).expect("configs") {
        let path = entry.expect("entry").path();
        let Ok(count) = std::fs::read_to_string(path.join("params_total")) else {
            continue;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        out.push((
            format!("tests/hf_configs/{name}/config.json"),
            count.trim().parse().expect("a count"),
        ));
    }
    out.sort();
    assert!(out.len() >= 16);
    out
}

fn inspect_json(file: &str) -> serde_json::Value {
    let out = modelspec(&["inspect", file, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "inspect {file}: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

#[test]
fn inspect_json_gives_published_parameter_counts_for_both_generations() {
    let mut failures = Vec::new();
    for (file, published) in real_configs() {
        let v = inspect_json(&file);
        for key in [
            "name",
            "rust_type",
            "params_total",
            "params_active",
            "flops_per_token",
            "layers",
        ] {
            assert!(v.get(key).is_some(), "{file}: inspect --json lacks {key}");
        }
        if v["params_total"].as_u64() != Some(published) {
            failures.push(format!("{file}: {} != {published}", v["params_total"]));
        }
        let layers = v["layers"].as_array().expect("layers array");
        assert_eq!(
            layers.len() as u64,
            v["n_layers"].as_u64().expect("n_layers")
        );
        let in_layers: u64 = layers
            .iter()
            .map(|l| l["params"].as_u64().expect("params"))
            .sum();
        assert_eq!(
            in_layers + v["params_outside_layers"].as_u64().expect("outside"),
            v["params_total"]
        );
        let bytes = |k: &str| layers[0][k].as_u64().expect("weight bytes");
        assert_eq!(bytes("weight_bytes_bf16") * 2, bytes("weight_bytes_f32"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn check_accepts_every_real_config_at_once() {
    let files: Vec<String> = real_configs().into_iter().map(|(f, _)| f).collect();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let out = modelspec(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn inspect_prints_a_table() {
    let out = modelspec(&["inspect", "tests/hf_configs/gemma-3-1b-it/config.json"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("999,885,952"), "{text}");
    assert!(text.contains("window 512"), "{text}");
}

#[test]
fn expand_writes_ir_that_loads_back() {
    let dir = scratch("expand");
    for (format, ext) in [("yaml", "yaml"), ("json", "json")] {
        let out = modelspec(&[
            "expand",
            "tests/hf_configs/qwen3-30b-a3b/config.json",
            "--format",
            format,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let path = dir.join(format!("ir.{ext}"));
        std::fs::write(&path, &out.stdout).expect("write");
        let path = path.to_str().expect("utf-8 path");
        assert_eq!(inspect_json(path)["params_total"], 30_532_122_624u64);
    }
    // yaml is the default.
    let out = modelspec(&["expand", "tests/hf_configs/gpt2/config.json"]);
    assert!(stdout(&out).contains("n_layers: 12"));
}

#[test]
fn import_hf_then_export_hf_round_trips() {
    let dir = scratch("import_export");
    for (file, published) in real_configs() {
        let stem = file.replace(['/', '.'], "_");
        for ext in ["mspec", "yaml"] {
            let spec = dir.join(format!("{stem}.{ext}"));
            let spec = spec.to_str().expect("utf-8");
            let out = modelspec(&["import-hf", &file, "-o", spec]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "import-hf {file}: {}",
                stderr(&out)
            );
            assert_eq!(
                inspect_json(spec)["params_total"].as_u64(),
                Some(published),
                "{spec}"
            );
        }
        let config = dir.join(format!("{stem}.config.json"));
        let config = config.to_str().expect("utf-8");
        let out = modelspec(&["export-hf", &file, "-o", config]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "export-hf {file}: {}",
            stderr(&out)
        );
        // config.json → IR → config.json → IR: equal IRs.
        let a = modelspec(&["expand", &file, "--format", "json"]);
        let b = modelspec(&["expand", config, "--format", "json"]);
        assert_eq!(stdout(&a), stdout(&b), "{file}");
    }
    // The transformers-5 generation on request.
    let out = modelspec(&[
        "export-hf",
        "tests/hf_configs/gemma-3-1b-it/config.json",
        "--generation",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v5: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v5["rope_parameters"]["sliding_attention"]["rope_theta"].is_number());
    assert_eq!(
        modelspec(&[
            "export-hf",
            "tests/hf_configs/gpt2/config.json",
            "--generation",
            "3"
        ])
        .status
        .code(),
        Some(2)
    );
    // Without -o, import-hf prints the .mspec.
    let out = modelspec(&["import-hf", "tests/hf_configs/gpt2/config.json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!out.stdout.is_empty());
}

#[test]
fn invalid_configs_exit_1_naming_field_and_line() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/hf_configs/invalid"))
        .expect("invalid dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 6);
    for name in names {
        let file = format!("tests/hf_configs/invalid/{name}");
        let out = modelspec(&["check", &file]);
        assert_eq!(out.status.code(), Some(1), "{file} must be rejected");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{file}:")),
            "{file}: no file:line:col in\n{err}"
        );
        assert!(err.contains("= field: "), "{file}: no field in\n{err}");
        insta::assert_snapshot!(name.trim_end_matches(".json").to_string(), err);
        // The other commands reject it the same way.
        for cmd in ["inspect", "expand", "export-hf", "import-hf"] {
            assert_eq!(
                modelspec(&[cmd, &file]).status.code(),
                Some(1),
                "{cmd} {file}"
            );
        }
    }
}

#[test]
fn unreadable_inputs_exit_1() {
    let dir = scratch("unreadable");
    let binary = dir.join("binary.json");
    std::fs::write(&binary, [0x7b, 0xff, 0xfe, 0x7d]).expect("write");
    let empty_yaml = dir.join("empty.yaml");
    std::fs::write(&empty_yaml, "").expect("write");
    let garbage_yaml = dir.join("garbage.yaml");
    std::fs::write(&garbage_yaml, "layers: [1, 2\n  - : :\n").expect("write");
    let bad_ext = dir.join("model.txt");
    std::fs::write(&bad_ext, "{}").expect("write");
    let dir_str = dir.to_str().expect("utf-8");
    let cases = [
        dir_str.to_string(),
        dir.join("missing.json").display().to_string(),
        binary.display().to_string(),
        empty_yaml.display().to_string(),
        garbage_yaml.display().to_string(),
        bad_ext.display().to_string(),
    ];
    for case in &cases {
        for cmd in ["check", "inspect", "expand", "export-hf", "import-hf"] {
            let out = modelspec(&[cmd, case]);
            assert_eq!(out.status.code(), Some(1), "{cmd} {case}: {}", stderr(&out));
            assert!(stderr(&out).contains("error"), "{cmd} {case}");
        }
    }
    // One bad file among good ones still fails, and the good ones are still checked.
    let out = modelspec(&["check", "tests/hf_configs/gpt2/config.json", &cases[1]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("gpt2/config.json: ok"));
}

#[test]
fn usage_errors_are_not_panics() {
    assert_eq!(modelspec(&["check"]).status.code(), Some(2));
    assert_eq!(
        modelspec(&["expand", "x.json", "--format", "toml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(modelspec(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn invalid_yaml_and_ir_json_point_at_the_key() {
    let dir = scratch("yaml_diagnostics");
    let yaml = stdout(&modelspec(&["expand", "tests/hf_configs/gpt2/config.json"]));
    let json = stdout(&modelspec(&[
        "expand",
        "tests/hf_configs/gpt2/config.json",
        "--format",
        "json",
    ]));
    let first = |text: &str, from: &str, to: &str| text.replacen(from, to, 1);
    let cases = [
        ("kv_heads.yaml", yaml.replace("kv_heads: 12", "kv_heads: 5")),
        ("typo.yaml", first(&yaml, "    heads: 12", "    haeds: 12")),
        (
            "wrong_type.yaml",
            first(&yaml, "d_model: 768", "d_model: seven"),
        ),
        (
            "n_layers.yaml",
            first(&yaml, "n_layers: 12", "n_layers: 13"),
        ),
        (
            "window.json",
            first(&json, "\"window\": null", "\"window\": 0"),
        ),
        // A name is an identifier: this one would have become code in `generate`'s output.
        (
            "injected_name.yaml",
            first(
                &yaml,
                "name: gpt2",
                "name: \"x\\npub fn injected() {}\\n//\"",
            ),
        ),
    ];
    for (name, text) in cases {
        assert_ne!(
            text,
            if name.ends_with("json") {
                json.as_str()
            } else {
                yaml.as_str()
            },
            "{name}: no edit"
        );
        std::fs::write(dir.join(name), text).expect("write");
        let out = modelspec_in(&dir, &["check", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        insta::assert_snapshot!(format!("ir_{}", name.replace('.', "_")), stderr(&out));
    }
}

#[test]
fn inspect_reports_the_kv_cache_against_per_head_keys_and_values() {
    // DeepSeek-V3 caches its 512-wide latent and 64-wide rotary key per layer; keys and values of
    // every one of its 128 heads would take 128 × (192 + 128). Llama 3.1 8B's GQA caches 8 of its
    // 32 heads' keys and values.
    for (file, cached, per_head) in [
        (
            "tests/hf_configs/deepseek-v3/config.json",
            61 * (512 + 64),
            61 * 128 * (192 + 128),
        ),
        (
            "tests/hf_configs/llama-3.1-8b/config.json",
            32 * 8 * 256,
            32 * 32 * 256,
        ),
    ] {
        let v = inspect_json(file);
        assert_eq!(
            v["kv_cache_bytes_per_token_bf16"].as_u64(),
            Some(2 * cached),
            "{file}"
        );
        assert_eq!(
            v["kv_cache_bytes_per_token_per_head_bf16"].as_u64(),
            Some(2 * per_head),
            "{file}"
        );
    }
    let out = modelspec(&["inspect", "tests/hf_configs/deepseek-v3/config.json"]);
    assert!(stdout(&out).contains("KV cache"), "{}", stdout(&out));
}
