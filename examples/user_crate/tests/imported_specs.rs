//! Specs made by `modelspec import-hf` from the HF configs of tests/fixtures/*/config.json, each
//! expanded with `model_file!`: PARAMS_TOTAL equals the fixture's published count, and `load_hf` +
//! `logits` reproduce transformers' logits.

use std::path::{Path, PathBuf};

use modelspec::runtime::weights::{self, FileTensor};
use modelspec::{Device, Model};

macro_rules! imported {
    ($($module:ident: $ty:ident = $path:literal,)*) => {
        $(mod $module {
            modelspec::model_file!($path);
        })*
        /// (fixture, PARAMS_TOTAL, load_hf + logits)
        type LoadAndRun = fn(&Path, &[u32], usize) -> modelspec::Result<Vec<f32>>;
        fn cases() -> Vec<(&'static str, u64, LoadAndRun)> {
            vec![$((
                stringify!($module),
                <$module::$ty as Model>::PARAMS_TOTAL,
                |dir, tokens, batch| <$module::$ty as Model>::load_hf(&Device::cpu(), dir)?.logits(tokens, batch),
            ),)*]
        }
    };
}

imported! {
    falcon: Falcon = "specs/falcon.mspec",
    gemma: Gemma = "specs/gemma.mspec",
    gemma2: Gemma2 = "specs/gemma2.mspec",
    gemma3_text: Gemma3Text = "specs/gemma3_text.mspec",
    gpt2: Gpt2 = "specs/gpt2.mspec",
    gpt_neox: GptNeox = "specs/gpt_neox.mspec",
    llama: Llama = "specs/llama.mspec",
    mistral: Mistral = "specs/mistral.mspec",
    mixtral: Mixtral = "specs/mixtral.mspec",
    olmo2: Olmo2 = "specs/olmo2.mspec",
    phi: Phi = "specs/phi.mspec",
    phi3: Phi3 = "specs/phi3.mspec",
    qwen2: Qwen2 = "specs/qwen2.mspec",
    qwen3: Qwen3 = "specs/qwen3.mspec",
    qwen2_moe: Qwen2Moe = "specs/qwen2_moe.mspec",
    qwen3_moe: Qwen3Moe = "specs/qwen3_moe.mspec",
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn meta_params(dir: &Path) -> u64 {
    let meta = std::fs::read_to_string(dir.join("meta.json")).expect("meta.json");
    let at = meta.find("\"params\":").expect("params in meta.json") + "\"params\":".len();
    meta[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("")
        .parse()
        .expect("a number")
}

#[test]
fn params_total_is_exact() {
    for (name, total, _) in cases() {
        assert_eq!(total, meta_params(&fixtures().join(name)), "{name}");
    }
}

#[test]
fn load_hf_and_logits_reproduce_transformers() {
    for (name, _, run) in cases() {
        let dir = fixtures().join(name);
        let input = weights::read_tensors(&dir.join("input.safetensors")).unwrap();
        let Some(FileTensor::Int { shape, data }) = input.get("input_ids") else {
            panic!("{name}: input_ids")
        };
        let tokens: Vec<u32> = data.iter().map(|&t| t as u32).collect();
        let ours = run(&dir, &tokens, shape[0]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = weights::read_tensors(&dir.join("expected.safetensors")).unwrap();
        let Some(FileTensor::Float(want)) = expected.get("logits") else {
            panic!("{name}: logits")
        };
        let vocab = *want.shape.last().unwrap();
        let padded = ours.len() / (tokens.len());
        let max_ref = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut max_diff = 0f32;
        for (row, want_row) in want.data.chunks(vocab).enumerate() {
            for (c, w) in want_row.iter().enumerate() {
                max_diff = max_diff.max((ours[row * padded + c] - w).abs());
            }
        }
        assert!(
            max_diff <= 1e-4 * max_ref.max(1.0),
            "{name}: max |diff| {max_diff}, max |ref| {max_ref}"
        );
        eprintln!("{name}: max |diff| {max_diff:.2e}");
    }
}
