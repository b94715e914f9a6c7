//! `modelspec sample --hf DIR`: greedy decoding through the key/value cache reproduces
//! transformers' own greedy continuation on every HF fixture (tests/fixtures/*/generation.json,
//! written by make_generations.py: full forward passes, near-ties excluded), with and without
//! stopping at the model's end-of-sequence id; bad prompts fail cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn sample(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .arg("sample")
        .args(args)
        .output()
        .expect("the binary runs");
    assert_ne!(
        out.status.code(),
        Some(101),
        "modelspec sample {args:?} panicked:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ids_of(json: &serde_json::Value, key: &str) -> Vec<u32> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key}"))
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

/// The fixture's end-of-sequence ids, as `sample` reads them.
fn eos(dir: &Path) -> Vec<u32> {
    for file in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        match &json["eos_token_id"] {
            serde_json::Value::Number(n) => return vec![n.as_u64().unwrap() as u32],
            serde_json::Value::Array(a) if !a.is_empty() => {
                return a.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            }
            _ => {}
        }
    }
    Vec::new()
}

#[test]
fn greedy_sampling_matches_transformers_on_every_fixture() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("generation.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 17, "every fixture has a generation.json");
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(dir.join("generation.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let prompt = ids_of(&json, "prompt_ids");
        let want = ids_of(&json, "greedy_ids");
        let prompt_arg = prompt
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let n = want.len().to_string();
        let base = [
            "--hf",
            dir.to_str().unwrap(),
            "--prompt-ids",
            &prompt_arg,
            "--tokens",
            &n,
            "--temperature",
            "0",
        ];
        // Past any end-of-sequence id: exactly transformers' sequence.
        let out = sample(&[&base[..], &["--ignore-eos"]].concat());
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        let mut expected = prompt.clone();
        expected.extend(&want);
        assert_eq!(
            got, expected,
            "{name}: greedy continuation differs from transformers'"
        );
        // By default generation ends after the model's end-of-sequence id.
        let stop = eos(dir);
        let cut = want
            .iter()
            .position(|t| stop.contains(t))
            .map_or(want.len(), |i| i + 1);
        let out = sample(&base);
        assert!(out.status.success());
        let got: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(
            got[prompt.len()..],
            want[..cut],
            "{name}: stopping at {stop:?}"
        );
        println!("{name}: {} greedy ids match transformers", want.len());
    }
}

#[test]
fn bad_prompts_fail_cleanly() {
    let dir = fixtures().join("llama");
    let dir = dir.to_str().unwrap();
    // No tokenizer.json and no ids.
    let out = sample(&["--hf", dir, "--prompt", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt-ids"));
    // An id outside the vocabulary (64).
    let out = sample(&["--hf", dir, "--prompt-ids", "1,64"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the vocabulary"));
    // Neither a training directory nor --hf.
    let out = sample(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn generation_stops_after_the_end_of_sequence_id() {
    // The llama fixture with generation_config.json naming the third greedy id as its end of
    // sequence (as a list, the newer form): the output ends right after its first occurrence.
    let src = fixtures().join("llama");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("generation.json")).unwrap())
            .unwrap();
    let (prompt, want) = (ids_of(&json, "prompt_ids"), ids_of(&json, "greedy_ids"));
    let stop = want[2];
    let dir = std::env::temp_dir().join(format!("modelspec-sample-eos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("generation_config.json"),
        format!("{{\"eos_token_id\": [{stop}, 9999]}}"),
    )
    .unwrap();
    let prompt_arg = prompt
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let args = [
        "--hf",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &prompt_arg,
        "--tokens",
        "12",
        "--temperature",
        "0",
    ];
    let got: Vec<u32> = String::from_utf8_lossy(&sample(&args).stdout)
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let cut = want.iter().position(|&t| t == stop).unwrap() + 1;
    assert_eq!(got[prompt.len()..], want[..cut]);
    // --ignore-eos runs all 12 steps.
    let got = String::from_utf8_lossy(&sample(&[&args[..], &["--ignore-eos"]].concat()).stdout)
        .split_whitespace()
        .count();
    assert_eq!(got, prompt.len() + 12);
    std::fs::remove_dir_all(&dir).ok();
}
