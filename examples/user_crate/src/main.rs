//! A user crate that embeds a model with `modelspec::model!`.
//!
//! ```sh
//! cargo run                                   # init from a seed, logits, train 5 steps, generate
//! cargo run -- ../../tests/fixtures/llama     # load HF weights; compare with transformers' logits
//! ```
//!
//! Both then run the llama fixture through `model_file!` on `Device::cuda(0)` when a GPU is
//! present (see `gpu.rs`), and print "skipping the GPU part: <why>" otherwise.
#![deny(warnings)]
#![deny(clippy::all)]

use std::path::{Path, PathBuf};

use modelspec::runtime::train::optim::{AdamW, AdamWConfig, ParamGrad};
use modelspec::runtime::weights::{self, FileTensor};
use modelspec::{Device, Model};

mod gpu;

modelspec::model! {
    // The architecture of tests/fixtures/llama/config.json, as `modelspec import-hf` writes it:
    // GQA 6/2 with head_dim 8 (≠ 24/6), biases, llama3 RoPE scaling, untied head.
    model llama_fixture {
        vocab 64   d_model 24   layers 2   context 64
        norm rms(eps = 1e-6)
        attention { heads 6  kv_heads 2  head_dim 8  bias }
        position rope(theta = 500, scaling = llama3(factor = 4, low_freq_factor = 1, high_freq_factor = 4, original_context = 8))
        mlp swiglu(hidden = 40, bias = true)
    }
}

type Error = Box<dyn std::error::Error>;

/// `input_ids` of a fixture's `input.safetensors` as (tokens, batch).
pub(crate) fn fixture_tokens(dir: &Path) -> Result<(Vec<u32>, usize), Error> {
    let input = weights::read_tensors(&dir.join("input.safetensors"))?;
    match input.get("input_ids") {
        Some(FileTensor::Int { shape, data }) if shape.len() == 2 => {
            let tokens = data
                .iter()
                .map(|&t| u32::try_from(t))
                .collect::<Result<Vec<u32>, _>>()?;
            Ok((tokens, shape[0]))
        }
        _ => Err("input.safetensors has no [B, T] integer `input_ids`".into()),
    }
}

/// Max |ours - theirs| over the real vocabulary, and max |theirs|.
fn compare_logits(ours: &[f32], dir: &Path) -> Result<(f32, f32), Error> {
    let expected = weights::read_tensors(&dir.join("expected.safetensors"))?;
    let Some(FileTensor::Float(want)) = expected.get("logits") else {
        return Err("expected.safetensors has no `logits`".into());
    };
    let vocab = *want.shape.last().ok_or("empty logits shape")?;
    let padded = LlamaFixture::VOCAB_PADDED;
    let mut max_diff = 0f32;
    let mut max_ref = 0f32;
    for (row, want_row) in want.data.chunks(vocab).enumerate() {
        for (c, w) in want_row.iter().enumerate() {
            max_diff = max_diff.max((ours[row * padded + c] - w).abs());
            max_ref = max_ref.max(w.abs());
        }
    }
    Ok((max_diff, max_ref))
}

fn main() -> Result<(), Error> {
    let device = Device::cpu();
    let fixture: Option<PathBuf> = std::env::args_os().nth(1).map(PathBuf::from);
    println!(
        "{}: {} parameters, d_model {}, {} layers of {} heads × {}",
        LlamaFixture::NAME,
        LlamaFixture::PARAMS_TOTAL,
        LlamaFixture::D_MODEL,
        LlamaFixture::N_LAYERS,
        LlamaFixture::HEADS,
        LlamaFixture::HEAD_DIM
    );

    let (mut model, tokens, batch) = match &fixture {
        Some(dir) => {
            let (tokens, batch) = fixture_tokens(dir)?;
            (LlamaFixture::load_hf(&device, dir)?, tokens, batch)
        }
        None => {
            let tokens: Vec<u32> = (0..2 * 12).map(|i| (i * 5 + 1) % 64).collect();
            (LlamaFixture::init(&device, 0)?, tokens, 2)
        }
    };

    let logits = model.logits(&tokens, batch)?;
    let seq = tokens.len() / batch;
    println!(
        "logits: [{batch}, {seq}, {}] ({} values)",
        LlamaFixture::VOCAB_PADDED,
        logits.len()
    );
    if let Some(dir) = &fixture {
        let (diff, max_ref) = compare_logits(&logits, dir)?;
        let tolerance = 1e-4 * max_ref.max(1.0);
        println!("vs transformers: max |diff| {diff:.3e} (tolerance {tolerance:.1e})");
        if diff > tolerance {
            return Err(format!("logits differ from transformers' by {diff}").into());
        }
    }

    // A few steps of AdamW on the same batch: the loss must fall.
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let mut losses = Vec::new();
    for step in 0..5 {
        let loss = train_step(&mut model, &mut optimizer, &tokens, batch)?;
        println!("step {step}: loss {loss:.4}");
        losses.push(loss);
    }
    if losses.last() >= losses.first() {
        return Err(format!("training did not reduce the loss: {losses:?}").into());
    }

    // Greedy decoding through the key/value cache: the prompt, then 16 new ids.
    let greedy = modelspec::SampleOptions {
        temperature: 0.0,
        top_k: 0,
    };
    let ids = model.generate(&tokens[..4], 16, greedy, 0)?;
    if ids[..4] != tokens[..4] || ids.len() != 20 {
        return Err(format!("generate returned {ids:?}").into());
    }
    println!("greedy continuation of {:?}: {:?}", &ids[..4], &ids[4..]);

    // The same architecture through `model_file!`, on the GPU when there is one.
    let llama = fixture.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama")
    });
    gpu::run(&llama)
}

/// One AdamW step (learning rate 1e-2) on `model` with the gradients of `loss_and_grads` on
/// `tokens`, wherever the model runs; returns the loss before the step.
fn train_step<M: Model>(
    model: &mut M,
    optimizer: &mut AdamW,
    tokens: &[u32],
    batch: usize,
) -> Result<f32, Error> {
    let (loss, grads) = model.loss_and_grads(tokens, batch)?;
    // `params_mut` also tells a GPU model to upload the updated weights before its next call.
    let mut params = model.params_mut();
    let shapes: Vec<(String, Vec<usize>)> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    let mut updates = Vec::new();
    for ((name, shape), tensor) in shapes.iter().zip(params.values_mut()) {
        let grad = grads
            .get(name)
            .ok_or_else(|| format!("no gradient for {name}"))?;
        updates.push(ParamGrad {
            name,
            shape,
            value: tensor.data_mut(),
            grad: grad.data(),
        });
    }
    optimizer.step(1e-2, updates)?;
    Ok(loss)
}
