//! `modelspec sample`: generate text from a checkpoint written by `modelspec train`, or from an HF
//! model directory (config.json, *.safetensors, and tokenizer.json for text).
//!
//! Decoding runs on the CPU executor through a key/value cache (`Executor::decode`): the prompt
//! runs once, then each new token alone, as long as the window fits the spec's context.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use modelspec_dsl::ModelSpec;
use modelspec_runtime::Params;
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
    /// Tokens to generate.
    #[arg(long, default_value_t = 400)]
    pub tokens: usize,
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
    let source = load(&args)?;
    let spec = &source.spec;
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
    let vocab = match &source.tokenizer {
        Some(t) => (spec.vocab as usize).min(t.vocab_size()),
        None => spec.vocab as usize,
    };
    let objective = CpuObjective::new(spec, None)?;
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
    let ids = sampling::generate_cached(
        objective.executor(),
        &source.params,
        &prompt_ids,
        (args.tokens, vocab),
        options,
        &source.eos,
        args.seed,
        |ids| {
            if failure.is_none()
                && let Err(e) = show(ids, &mut out)
            {
                failure = Some(e);
            }
        },
    )?;
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
