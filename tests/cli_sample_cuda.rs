//! `modelspec sample --device cuda`: greedy decoding on the GPU decoder (key/value cache on the
//! device) reproduces transformers' own greedy continuation (tests/fixtures/*/generation.json)
//! on every HF fixture the GPU runs, exactly as the CPU's `sample` does (tests/cli_sample.rs);
//! fixtures with a feature the GPU lacks fail cleanly, naming it. In bf16 every supported
//! fixture decodes, and the ids that agree with transformers' are counted (not asserted: a bf16
//! logit rounding may flip a near tie). Without a GPU, `--device cuda` is a clean error.
//! On the GPU machine, `MODELSPEC_BIN` may point at the `modelspec` binary to run (else one
//! beside the test executable is found).

mod gpu_bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modelspec::runtime::cuda::decode::GpuDecoder;

/// The binary under test ([`gpu_bin::modelspec_bin`]).
fn bin() -> PathBuf {
    gpu_bin::modelspec_bin()
}

fn fixtures() -> PathBuf {
    let local = Path::new("tests/fixtures");
    if local.is_dir() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }
}

fn sample(args: &[&str]) -> Output {
    let out = Command::new(bin())
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

fn printed_ids(out: &Output) -> Vec<u32> {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|t| t.parse().expect("an id"))
        .collect()
}

#[test]
fn device_cuda_without_a_gpu_is_a_clean_error() {
    if modelspec::runtime::cuda::probe(0).is_ok() {
        println!("skipping: this machine has a CUDA device");
        return;
    }
    let dir = fixtures().join("llama");
    let out = sample(&[
        "--hf",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--tokens",
        "2",
        "--device",
        "cuda",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device cuda: no CUDA device can be used") && err.contains("--device cpu"),
        "{err}"
    );
    let out = sample(&[
        "--hf",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--dtype",
        "bf16",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dtype bf16 needs --device cuda"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn greedy_sampling_on_the_gpu_matches_transformers() {
    if let Err(e) = modelspec::runtime::cuda::probe(0) {
        println!("skipping: no CUDA device ({e})");
        return;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("generation.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 17, "every fixture has a generation.json");
    let (mut ran, mut refused) = (0, Vec::new());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("generation.json")).unwrap())
                .unwrap();
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
            "--ignore-eos",
            "--device",
            "cuda",
        ];
        let (spec, _) = modelspec::dsl::load::load_file(dir.join("config.json")).expect("spec");
        if let Some(feature) = GpuDecoder::unsupported_feature(&spec) {
            let out = sample(&base);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains(&feature),
                "{name}: refused with the feature named: {err}"
            );
            println!("UNSUPPORTED sample --device cuda {name}: {feature}");
            refused.push(name);
            continue;
        }
        let out = sample(&base);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut expected = prompt.clone();
        expected.extend(&want);
        assert_eq!(
            printed_ids(&out),
            expected,
            "{name}: greedy continuation on the GPU differs from transformers'"
        );
        println!(
            "PARITY sample --device cuda {name}: {} greedy ids match transformers",
            want.len()
        );
        let out = sample(&[&base[..], &["--dtype", "bf16"]].concat());
        assert!(
            out.status.success(),
            "{name} bf16: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = printed_ids(&out);
        assert_eq!(got.len(), expected.len(), "{name} bf16: every id printed");
        let agree = got[prompt.len()..]
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "PARITY sample --device cuda --dtype bf16 {name}: first {agree} of {} ids as transformers",
            want.len()
        );
        ran += 1;
    }
    println!("sample --device cuda: {ran} fixtures ran, refused: {refused:?}");
    assert!(ran >= 10, "most fixtures run on the GPU ({ran})");
}
