//! The llama fixture through `model_file!` on `Device::cuda(0)`: `load_hf`, logits against the
//! same weights on the CPU, greedy `generate` against the CPU's, and five AdamW steps with the GPU's
//! `loss_and_grads` (beside the same steps on the CPU). Without a usable GPU it prints why and
//! returns.
//!
//! On the GPU, `logits` and `loss_and_grads` run in f32 on the GPU trainer, and `generate` (and
//! `decode`) on the GPU decoder with the key/value cache on the device.

use std::path::Path;

use modelspec::runtime::train::optim::{AdamW, AdamWConfig};
use modelspec::{Device, Model};

use crate::{Error, fixture_tokens, train_step};

modelspec::model_file!("specs/llama.mspec");

/// The largest relative difference the GPU may show against the CPU (f32 on both).
const TOLERANCE: f32 = 1e-4;

/// max |a - b| / max |b|: the largest difference relative to the reference's scale.
fn max_relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(f32::MIN_POSITIVE, f32::max);
    diff / scale
}

/// Runs the GPU part on the HF checkpoint in `fixture` (with its `input.safetensors`).
pub fn run(fixture: &Path) -> Result<(), Error> {
    let device = match Device::cuda(0) {
        Ok(device) => device,
        Err(why) => {
            println!("skipping the GPU part: {why}");
            return Ok(());
        }
    };
    let (tokens, batch) = fixture_tokens(fixture)?;
    let mut gpu = Llama::load_hf(&device, fixture)?;
    let mut cpu = Llama::load_hf(&Device::cpu(), fixture)?;
    println!("model_file! {} on {}", Llama::NAME, gpu.device());

    let (ours, reference) = (gpu.logits(&tokens, batch)?, cpu.logits(&tokens, batch)?);
    let diff = max_relative_difference(&ours, &reference);
    println!("GPU logits vs CPU: max relative difference {diff:.3e} (tolerance {TOLERANCE:.0e})");
    if diff > TOLERANCE {
        return Err(format!("GPU logits differ from the CPU's by {diff:.3e}").into());
    }

    // Greedy decoding with the key/value cache on the GPU: the same ids as the CPU's.
    let greedy = modelspec::SampleOptions {
        temperature: 0.0,
        top_k: 0,
    };
    let ids = gpu.generate(&tokens[..4], 16, greedy, 0)?;
    let cpu_ids = cpu.generate(&tokens[..4], 16, greedy, 0)?;
    if ids != cpu_ids || ids.len() != 20 {
        return Err(format!("generate on the GPU gave {ids:?}, the CPU {cpu_ids:?}").into());
    }
    println!(
        "GPU model, greedy continuation of {:?} (KV cache on the GPU, equal to the CPU's): {:?}",
        &ids[..4],
        &ids[4..]
    );

    // The same five AdamW steps on both devices: the losses must agree and fall.
    let (mut gpu_optimizer, mut cpu_optimizer) = (
        AdamW::new(AdamWConfig::default()),
        AdamW::new(AdamWConfig::default()),
    );
    let mut losses = Vec::new();
    for step in 0..5 {
        let gpu_loss = train_step(&mut gpu, &mut gpu_optimizer, &tokens, batch)?;
        let cpu_loss = train_step(&mut cpu, &mut cpu_optimizer, &tokens, batch)?;
        let diff = (gpu_loss - cpu_loss).abs() / cpu_loss.abs();
        println!("GPU step {step}: loss {gpu_loss:.6} (CPU {cpu_loss:.6}, relative {diff:.1e})");
        // After the first step the two models' weights differ by what AdamW made of the
        // gradients' rounding differences, so the bound widens tenfold.
        let bound = if step == 0 {
            TOLERANCE
        } else {
            10.0 * TOLERANCE
        };
        if diff > bound {
            return Err(format!("GPU step {step}: loss {gpu_loss} vs the CPU's {cpu_loss}").into());
        }
        losses.push(gpu_loss);
    }
    if losses.last() >= losses.first() {
        return Err(format!("GPU training did not reduce the loss: {losses:?}").into());
    }

    Ok(())
}
