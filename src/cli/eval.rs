//! `modelspec eval`: logits, loss and (with `--grads`) gradients of a checkpoint on given tokens.
//!
//! ```text
//! modelspec eval (--hf DIR | --spec FILE --weights W.safetensors) --input IN --out OUT
//!                [--grads] [--device cpu|cuda] [--dtype f32|bf16] [--checkpoint POLICY]
//! ```
//! IN is a safetensors file with `input_ids` (integer `[B, T]`, T ≥ 2: a row of one token has no
//! next-token target, an error where transformers returns NaN); it may also hold `attention_mask`
//! (all ones) and `labels` (equal to `input_ids`), any other tensor or value is refused by name.
//! On the CPU the run's memory is estimated first (see `memory`) and refused when it exceeds what
//! the machine has available; a loss that is not finite is an error and nothing is written. OUT gets `logits` (f32
//! `[B, T, vocab]`), `loss` (f32 `[1]`: mean next-token cross-entropy with labels = input_ids,
//! shifted, as transformers computes it) and, with `--grads`, `grad.<name>` (f32) for every
//! parameter, named and shaped as in the checkpoint that was loaded (HF names and layouts: fused
//! q/k/v, GPT-2's `[in, out]` Conv1D, per-expert MoE tensors...). The MoE load-balancing loss is
//! not part of `loss` nor of the gradients, as in transformers without `output_router_logits`.
//! `--dtype bf16` rounds the parameters to bfloat16 and computes in f32. `--device cuda` runs the
//! GPU trainer's forward and backward instead (every layer kind of the IR; see `eval_cuda`),
//! where bf16 also means bf16 activations with f32 accumulation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use modelspec_dsl::ir::ModelSpec;
use modelspec_dsl::plan;
use modelspec_runtime::exec::{Executor, Policy};
use modelspec_runtime::ops::cross_entropy;
use modelspec_runtime::weights::{self, Dialect, FileTensor, HostTensor, StoreDtype};
use modelspec_runtime::{Device, Params};

/// Arguments of `modelspec eval`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["hf", "spec"])))]
pub struct EvalArgs {
    /// An HF model directory: config.json and model.safetensors (or a sharded index).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["spec", "weights"])]
    pub hf: Option<PathBuf>,
    /// A spec (.mspec, .yaml/.yml or HF config.json); needs --weights.
    #[arg(long, value_name = "FILE", requires = "weights")]
    pub spec: Option<PathBuf>,
    /// The checkpoint of --spec (HF names and layouts).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    /// safetensors with `input_ids` (integer [B, T], T ≥ 2); `attention_mask` (all ones) and
    /// `labels` (equal to input_ids) may come with it, any other tensor is refused.
    #[arg(long, value_name = "IN")]
    pub input: PathBuf,
    /// Where to write logits, loss and gradients (safetensors, written atomically).
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Also write `grad.<checkpoint name>` for every parameter.
    #[arg(long)]
    pub grads: bool,
    /// Where to run: cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Parameter precision: f32, or bf16 (parameters rounded to bfloat16, f32 arithmetic).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Activation-checkpoint policy for --grads (none, full, auto, save(...), budget(0.5), ...);
    /// default: the spec's. Gradients do not depend on it.
    #[arg(long = "checkpoint", value_name = "POLICY")]
    pub policy: Option<String>,
}

/// The spec of `--hf DIR` (its config.json) or of `--spec FILE`.
fn load_spec(args: &EvalArgs) -> Result<ModelSpec> {
    match (&args.hf, &args.spec, &args.weights) {
        (Some(dir), None, None) => Ok(super::load_or_report(&dir.join("config.json"))?.0),
        (None, Some(file), Some(_)) => Ok(super::load_or_report(file)?.0),
        _ => bail!("give either --hf DIR, or --spec FILE with --weights W.safetensors"),
    }
}

/// The parameters of `spec` (canonical names), with the dialect of the checkpoint read.
fn load_weights(args: &EvalArgs, spec: &ModelSpec) -> Result<(Params, Dialect)> {
    let loaded = match (&args.hf, &args.weights) {
        (Some(dir), None) => weights::load_hf_dir_detailed(spec, dir)
            .with_context(|| format!("loading the weights of {}", dir.display()))?,
        (None, Some(w)) => weights::load_files(spec, &[w.as_path()])
            .with_context(|| format!("loading the weights {}", w.display()))?,
        _ => bail!("give either --hf DIR, or --spec FILE with --weights W.safetensors"),
    };
    let mut params = loaded.params;
    if args.dtype == "bf16" {
        for t in params.tensors.values_mut() {
            for x in t.data_mut() {
                *x = weights::bf16_to_f32(weights::f32_to_bf16(*x));
            }
        }
    }
    Ok((params, loaded.dialect))
}

/// `input_ids` of IN as `(tokens, batch, seq)`, checked against the vocabulary.
///
/// Every row needs two tokens or more: the loss is the next-token cross-entropy, and a row of one
/// token has no target (transformers returns NaN there; this is an error instead). IN may hold
/// `attention_mask` and `labels` only in the form this command computes anyway (a mask of ones;
/// labels equal to `input_ids`, shifted inside as transformers does): anything else would change
/// the loss, so it is refused by name rather than ignored.
fn load_input(path: &Path, spec: &ModelSpec) -> Result<(Vec<u32>, usize, usize)> {
    let tensors = weights::read_tensors(path)
        .with_context(|| format!("reading the input {}", path.display()))?;
    let Some(FileTensor::Int { shape, data }) = tensors.get("input_ids") else {
        bail!(
            "{}: no integer tensor `input_ids` (expected int64 [B, T])",
            path.display()
        );
    };
    for (name, tensor) in &tensors {
        let same_as = |want: &dyn Fn(i64, i64) -> bool| match tensor {
            FileTensor::Int { shape: s, data: d } => {
                s == shape && d.iter().zip(data.iter()).all(|(&x, &id)| want(x, id))
            }
            _ => false,
        };
        let accepted = match name.as_str() {
            "input_ids" => true,
            "attention_mask" => same_as(&|m, _| m == 1),
            "labels" => same_as(&|l, id| l == id),
            _ => false,
        };
        if !accepted {
            bail!(
                "{}: tensor `{name}` is not supported: IN holds `input_ids` [B, T], and optionally `attention_mask` of all ones and `labels` equal to `input_ids` (the loss always predicts each next token of input_ids; padding and masked labels are not supported)",
                path.display()
            );
        }
    }
    let [batch, seq] = shape[..] else {
        bail!(
            "{}: `input_ids` has shape {shape:?}, expected [B, T]",
            path.display()
        );
    };
    if batch == 0 || seq == 0 {
        bail!("{}: `input_ids` is empty ({shape:?})", path.display());
    }
    if seq < 2 {
        bail!(
            "{}: `input_ids` has {seq} token per row ({shape:?}): the loss predicts each next token, so a row needs at least 2",
            path.display()
        );
    }
    let tokens = data
        .iter()
        .enumerate()
        .map(|(i, &t)| match u32::try_from(t) {
            Ok(id) if u64::from(id) < spec.vocab => Ok(id),
            _ => Err(anyhow!(
                "{}: input_ids[{}, {}] = {t} is outside the vocabulary [0, {})",
                path.display(),
                i / seq,
                i % seq,
                spec.vocab
            )),
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok((tokens, batch, seq))
}

/// The executor policy for `--checkpoint`, planned at this batch and sequence length.
fn resolve_policy(
    spec: &ModelSpec,
    text: Option<&str>,
    batch: usize,
    seq: usize,
) -> Result<Policy> {
    let Some(text) = text else {
        return Ok(Policy::FromSpec);
    };
    let parsed = plan::parse_policy(text).map_err(|e| anyhow!("--checkpoint {text}: {e}"))?;
    Policy::from_override(spec, Some(&parsed), batch, seq)
        .map_err(|e| anyhow!("--checkpoint {text}: {e}"))
}

/// Refuses an OUT that is a special file (`/dev/null`, a FIFO, a symlink, a directory) or one of
/// the inputs (IN, the weights, the spec, any file of the HF directory), before any work.
fn check_out(args: &EvalArgs) -> Result<()> {
    let mut inputs: Vec<PathBuf> = [&args.input]
        .into_iter()
        .chain(args.weights.as_ref())
        .chain(args.spec.as_ref())
        .cloned()
        .collect();
    if let Some(dir) = &args.hf
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        inputs.extend(entries.filter_map(|e| Some(e.ok()?.path())));
    }
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    modelspec_runtime::io::check_output(&args.out, &inputs)?;
    Ok(())
}

/// Runs `modelspec eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    check_out(&args)?;
    if args.device == "cuda" {
        Device::cuda(0).map_err(|e| anyhow!("--device cuda: {e}"))?;
    }
    let spec = load_spec(&args)?;
    let (tokens, batch, seq) = load_input(&args.input, &spec)?;
    if args.device == "cpu" {
        let policy = match args.policy.as_deref() {
            Some(text) if args.grads => {
                Some(plan::parse_policy(text).map_err(|e| anyhow!("--checkpoint {text}: {e}"))?)
            }
            _ => None,
        };
        let work = super::memory::Work {
            batch: batch as u64,
            seq: seq as u64,
            grads: args.grads,
            optimizer: false,
            output_copies: true,
        };
        super::memory::check_fits(
            &spec,
            work,
            policy.as_ref(),
            "eval",
            "fewer rows or tokens per row in IN, --checkpoint budget(0.5) with --grads, or --device cuda",
        )?;
    }
    let (params, dialect) = load_weights(&args, &spec)?;
    let vocab = spec.vocab as usize;
    let padded = spec.vocab_padded as usize;
    let (data, loss, grads) = if args.device == "cuda" {
        let r = super::eval_cuda::run(
            &spec,
            &params,
            &tokens,
            (batch, seq),
            &args.dtype,
            args.policy.as_deref(),
            args.grads,
        )?;
        (r.logits, r.loss, r.grads)
    } else {
        let mut exec = Executor::new(&spec)?;
        exec.set_aux_loss(false);
        let (logits, loss, grads) = if args.grads {
            let policy = resolve_policy(&spec, args.policy.as_deref(), batch, seq)?;
            let step = exec.loss_and_grads(&params, &tokens, batch, &policy)?;
            (step.logits, step.ce_loss, Some(step.grads))
        } else {
            let logits = exec.forward(&params, &tokens, batch)?;
            let loss = cross_entropy::forward(logits.data(), padded, &tokens, seq);
            (logits, loss, None)
        };
        // Padding rows of the vocabulary are not tokens: OUT has exactly `vocab` logits per
        // position.
        let data: Vec<f32> = logits
            .data()
            .chunks(padded)
            .flat_map(|row| row[..vocab].iter().copied())
            .collect();
        (data, loss, grads)
    };

    let mut out: BTreeMap<String, HostTensor> = BTreeMap::new();
    out.insert(
        "logits".into(),
        HostTensor {
            shape: vec![batch, seq, vocab],
            data,
        },
    );
    out.insert(
        "loss".into(),
        HostTensor {
            shape: vec![1],
            data: vec![loss as f32],
        },
    );
    if let Some(grads) = grads {
        out.extend(weights::grad_tensors(&spec, &grads, dialect)?);
    }
    if !loss.is_finite() {
        bail!(
            "{}: the loss is {loss} over {batch}×{seq} tokens (the weights or the spec's values overflow f32); nothing written to {}",
            spec.name,
            args.out.display()
        );
    }
    weights::write_tensors(&args.out, &out, &BTreeMap::new(), StoreDtype::F32)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{}: loss {loss:.6} over {batch}×{seq} tokens; wrote {} tensors to {}",
        spec.name,
        out.len(),
        args.out.display()
    );
    Ok(())
}
