//! `modelspec sample`: generate text from a checkpoint written by `modelspec train`.

use std::path::PathBuf;

use anyhow::Result;
use modelspec_runtime::train::CpuObjective;
use modelspec_runtime::train::checkpoint;
use modelspec_runtime::train::data::Tokenizer;
use modelspec_runtime::train::sample::SampleOptions;

use super::train::{checkpoint_dir, generate_text};

/// Arguments of `modelspec sample`.
#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// A training output directory (DIR/ckpt/checkpoint.safetensors) or the ckpt directory itself.
    pub dir: PathBuf,
    /// The text to continue.
    #[arg(long, default_value = "Elizabeth")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 400)]
    pub tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Seeds the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `modelspec sample`: prints the prompt and its continuation.
pub fn run(args: SampleArgs) -> Result<()> {
    let ckpt_dir = checkpoint_dir(&args.dir);
    let ckpt = checkpoint::load(&ckpt_dir)?;
    let tokenizer = match ckpt.state.options.tokenizer.as_str() {
        "bytes" => Tokenizer::Bytes,
        _ => Tokenizer::from_file(&ckpt_dir.join("tokenizer.json"))?,
    };
    let mut objective = CpuObjective::new(&ckpt.state.spec, None)?;
    let options = SampleOptions {
        temperature: args.temperature,
        top_k: args.top_k,
    };
    let text = generate_text(
        &mut objective,
        &ckpt.params,
        &ckpt.state.spec,
        &tokenizer,
        &args.prompt,
        args.tokens,
        options,
        args.seed,
    )?;
    println!("{text}");
    Ok(())
}
