//! `modelspec sample`: generate text from a checkpoint written by `modelspec train`, or from an HF
//! model directory (config.json, *.safetensors, and tokenizer.json for text).
//!
//! Decoding runs through a key/value cache, on the CPU executor (`Executor::decode`) or, with
//! `--device cuda`, on the GPU decoder (`cuda::decode::GpuDecoder`, the same sampler on its
//! logits; `--dtype f32` by default, `bf16` as in training): the prompt
//! runs once, then each new token alone, as long as the window fits the spec's context. Past the
//! context the window slides by one token per step, and since every cached key was rotated for
//! its old position, each further token re-runs the whole window (on the tiny run, 400 tokens
//! took 10.3 s against 0.24 s for 200: about 40 times slower per token). So `--tokens` defaults to what fits: the context minus the prompt, at most
//! [`DEFAULT_TOKENS`]; an explicit `--tokens` that crosses the context is honoured, with a note.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use modelspec_dsl::ModelSpec;
use modelspec_runtime::Params;
use modelspec_runtime::cuda::decode::GpuDecoder;
use modelspec_runtime::cuda::{Dtype, Gpu};
use modelspec_runtime::train::CpuObjective;
use modelspec_runtime::train::checkpoint;
use modelspec_runtime::train::data::Tokenizer;
use modelspec_runtime::train::sample::{self as sampling, SampleOptions};
use modelspec_runtime::weights;

use super::train::checkpoint_dir;

/// Arguments of `modelspec sample`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["dir", "hf"])))]
pub struct SampleArgs {
    /// A training output directory (DIR/ckpt/checkpoint.safetensors) or the ckpt directory itself.
    pub dir: Option<PathBuf>,
    /// An HF model directory instead: config.json, the safetensors weights, and tokenizer.json
    /// (without one, give --prompt-ids).
    #[arg(long, value_name = "DIR")]
    pub hf: Option<PathBuf>,
    /// The text to continue.
    #[arg(long, default_value = "Elizabeth")]
    pub prompt: String,
    /// The prompt as token ids (comma-separated), instead of --prompt.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Print the token ids (prompt and continuation, space-separated) instead of text.
    #[arg(long)]
    pub ids: bool,
    /// Tokens to generate [default: what fits in the context after the prompt, at most 200].
    /// Past the context the window slides: each further token re-runs the whole window instead
    /// of one step of the key/value cache (tens of times slower per token).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Sampling temperature (0: greedy; a finite number, 0 or more).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true, value_parser = super::values::non_negative_f32)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Seeds the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after the model's end-of-sequence token (HF models; by default
    /// generation stops after it).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Where to decode: cpu, or cuda (GPU 0, the key/value cache on the device).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Compute precision with --device cuda: f32, or bf16 (weights and activations in bfloat16).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
}

/// The most tokens `sample` generates when `--tokens` is not given.
pub const DEFAULT_TOKENS: usize = 200;

/// How many tokens to generate after a prompt of `prompt_len` tokens: `--tokens`, else what fits
/// in `max_sequence` (None: no limit) after the prompt, at most [`DEFAULT_TOKENS`]; and, when the
/// count crosses the context, the note to print.
fn token_count(
    requested: Option<usize>,
    prompt_len: usize,
    max_sequence: Option<u64>,
) -> Result<(usize, Option<String>)> {
    let context = max_sequence.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let fits = context.saturating_sub(prompt_len);
    let Some(tokens) = requested else {
        if fits == 0 {
            bail!(
                "the prompt ({prompt_len} tokens) fills the context ({context}): give --tokens N \
                 to generate past it (the window then slides and every token re-runs it whole)"
            );
        }
        return Ok((fits.min(DEFAULT_TOKENS), None));
    };
    let note = (tokens > fits).then(|| {
        format!(
            "note: the prompt ({prompt_len}) and --tokens {tokens} exceed the context ({context}): \
             the first {fits} new tokens decode through the key/value cache, each one after that \
             re-runs the whole {context}-token window (much slower)"
        )
    });
    Ok((tokens, note))
}

/// A model to sample from: its spec, parameters, tokenizer if any, and end-of-sequence ids.
struct Source {
    spec: ModelSpec,
    params: Params,
    tokenizer: Option<Tokenizer>,
    eos: Vec<u32>,
}

/// The end-of-sequence ids of an HF directory: `eos_token_id` (a number or a list) of
/// generation_config.json, else of config.json; none when neither names one.
fn eos_ids(dir: &Path) -> Result<Vec<u32>> {
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let ids: Vec<u32> = match json.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().into_iter().map(|v| v as u32).collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            _ => Vec::new(),
        };
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    Ok(Vec::new())
}

fn load(args: &SampleArgs) -> Result<Source> {
    if let Some(dir) = &args.hf {
        let (spec, _) = super::load_or_report(&dir.join("config.json"))?;
        let loaded = weights::load_hf_dir_detailed(&spec, dir)
            .with_context(|| format!("loading the weights of {}", dir.display()))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        let eos = if args.ignore_eos {
            Vec::new()
        } else {
            eos_ids(dir)?
        };
        return Ok(Source {
            spec,
            params: loaded.params,
            tokenizer,
            eos,
        });
    }
    let Some(dir) = &args.dir else {
        bail!("give a training directory, or --hf DIR");
    };
    let ckpt_dir = checkpoint_dir(dir);
    let ckpt = checkpoint::load(&ckpt_dir)?;
    let tokenizer = match ckpt.state.options.tokenizer.as_str() {
        "bytes" => Tokenizer::Bytes,
        _ => Tokenizer::from_file(&ckpt_dir.join("tokenizer.json"))?,
    };
    Ok(Source {
        spec: ckpt.state.spec,
        params: ckpt.params,
        tokenizer: Some(tokenizer),
        eos: Vec::new(),
    })
}

/// Runs `modelspec sample`: prints the prompt and its continuation.
pub fn run(args: SampleArgs) -> Result<()> {
    if args.dtype != "f32" && args.device != "cuda" {
        bail!(
            "--dtype {} needs --device cuda (the CPU decodes in f32)",
            args.dtype
        );
    }
    let gpu = if args.device == "cuda" {
        Some(Gpu::new(0).map_err(|e| {
            anyhow!("--device cuda: no CUDA device can be used ({e}); use --device cpu")
        })?)
    } else {
        None
    };
    let source = load(&args)?;
    let spec = &source.spec;
    if gpu.is_some()
        && let Some(feature) = GpuDecoder::unsupported_feature(spec)
    {
        bail!(
            "--device cuda: `{}` uses {feature}, which the GPU path does not support yet; use --device cpu",
            spec.name
        );
    }
    let prompt_ids = match (&args.prompt_ids, &source.tokenizer) {
        (Some(ids), _) => {
            if let Some(bad) = ids.iter().find(|&&t| u64::from(t) >= spec.vocab) {
                bail!(
                    "--prompt-ids: {bad} is outside the vocabulary [0, {})",
                    spec.vocab
                );
            }
            ids.clone()
        }
        (None, Some(tokenizer)) => tokenizer.encode(&args.prompt)?,
        (None, None) => bail!(
            "{} has no tokenizer.json: give the prompt as --prompt-ids 1,2,3",
            args.hf.as_deref().unwrap_or(Path::new(".")).display()
        ),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt is empty: sampling needs at least one token");
    }
    let (tokens, note) = token_count(args.tokens, prompt_ids.len(), spec.max_sequence())?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let vocab = match &source.tokenizer {
        Some(t) => (spec.vocab as usize).min(t.vocab_size()),
        None => spec.vocab as usize,
    };
    let options = SampleOptions {
        temperature: args.temperature,
        top_k: args.top_k,
    };
    // Output streams as ids are generated: ids one by one, or the text's new part each time
    // the decoded text extends what is already printed (a byte-level piece that ends mid
    // character decodes to U+FFFD until the character completes, so it waits).
    let tokenizer = source.tokenizer.as_ref().filter(|_| !args.ids);
    let mut out = std::io::stdout().lock();
    let mut printed = String::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut show = |ids: &[u32], out: &mut std::io::StdoutLock<'_>| -> Result<()> {
        match tokenizer {
            None => {
                let sep = if ids.len() > 1 { " " } else { "" };
                write!(out, "{sep}{}", ids[ids.len() - 1])?;
            }
            Some(t) => {
                let text = t.decode(ids)?;
                if text.starts_with(&printed) && !text.ends_with('\u{FFFD}') {
                    out.write_all(&text.as_bytes()[printed.len()..])?;
                    printed = text;
                }
            }
        }
        Ok(out.flush()?)
    };
    for i in 1..=prompt_ids.len() {
        show(&prompt_ids[..i], &mut out)?;
    }
    let on_id = |ids: &[u32]| {
        if failure.is_none()
            && let Err(e) = show(ids, &mut out)
        {
            failure = Some(e);
        }
    };
    let ids = match &gpu {
        Some(gpu) => {
            let dt = if args.dtype == "bf16" {
                Dtype::Bf16
            } else {
                Dtype::F32
            };
            // Room for the prompt and the continuation (the decoder grows past it if needed).
            let capacity = (prompt_ids.len() + tokens).max(1);
            let mut decoder = GpuDecoder::new(gpu, spec, dt, &source.params, 1, capacity)
                .map_err(|e| anyhow!("--device cuda: {e}"))?;
            decoder.generate(
                &prompt_ids,
                (tokens, vocab),
                options,
                &source.eos,
                args.seed,
                on_id,
            )?
        }
        None => {
            let objective = CpuObjective::new(spec, None)?;
            sampling::generate_cached(
                objective.executor(),
                &source.params,
                &prompt_ids,
                (tokens, vocab),
                options,
                &source.eos,
                args.seed,
                on_id,
            )?
        }
    };
    if let Some(e) = failure {
        return Err(e);
    }
    // Whatever a trailing partial character held back.
    if let Some(t) = tokenizer {
        let text = t.decode(&ids)?;
        if let Some(rest) = text.strip_prefix(printed.as_str()) {
            out.write_all(rest.as_bytes())?;
        }
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stays_within_the_context() {
        // The tiny run: context 256, a 9-token prompt.
        assert_eq!(token_count(None, 9, Some(256)).unwrap(), (200, None));
        assert_eq!(token_count(None, 100, Some(256)).unwrap(), (156, None));
        assert_eq!(token_count(None, 9, None).unwrap(), (DEFAULT_TOKENS, None));
        let err = token_count(None, 256, Some(256)).unwrap_err().to_string();
        assert!(err.contains("fills the context"), "{err}");
    }

    #[test]
    fn an_explicit_count_past_the_context_is_kept_with_a_note() {
        let (tokens, note) = token_count(Some(400), 9, Some(256)).unwrap();
        assert_eq!(tokens, 400);
        let note = note.expect("a note");
        assert!(note.contains("the first 247 new tokens"), "{note}");
        assert_eq!(token_count(Some(247), 9, Some(256)).unwrap(), (247, None));
    }
}
