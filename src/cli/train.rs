//! `modelspec train`: train a spec on the CPU or on a GPU (`--device cuda`), with checkpoints,
//! resume, a progress bar, a loss plot.
//!
//! With no FILE it trains the bundled tiny spec (`specs/tiny.mspec`) on the bundled corpus
//! (`data/pride_and_prejudice.txt`, byte-level tokens), so `cargo run --release -- train` works from
//! a fresh clone. It writes `DIR/ckpt/checkpoint.safetensors` (atomically, every `--save-every`
//! steps and at the end) and `DIR/loss.png`, then prints the final loss beside the corpus' unigram
//! entropy and a sample of generated text.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use modelspec_dsl::ir::ModelSpec;
use modelspec_runtime::Params;
use modelspec_runtime::dist::{DEFAULT_BUCKET_BYTES, DataParallel};
use modelspec_runtime::train::data::{self, Tokenizer};
use modelspec_runtime::train::optim::AdamWConfig;
use modelspec_runtime::train::plot::{self, LossPlot, Reference};
use modelspec_runtime::train::rng::SplitMix64;
use modelspec_runtime::train::sample::{self as sampling, SampleOptions};
use modelspec_runtime::train::schedule::CosineSchedule;
use modelspec_runtime::train::{
    CpuObjective, Objective, TrainError, TrainOptions, Trainer, checkpoint,
};

mod cuda;
mod dist;

/// The bundled tiny spec, trained when no FILE is given.
pub const TINY_SPEC: &str = include_str!("../../specs/tiny.mspec");
/// The bundled corpus (public domain; see data/README.md).
pub const CORPUS: &str = include_str!("../../data/pride_and_prejudice.txt");
/// Optimizer steps of a run when --steps is not given.
pub const DEFAULT_STEPS: u64 = 600;
/// How checkpoints record the bundled corpus as their data source.
pub const CORPUS_NAME: &str = "bundled:pride_and_prejudice.txt";

/// Arguments of `modelspec train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// The spec (.mspec, .yaml/.yml or HF config.json); default: the bundled specs/tiny.mspec.
    pub file: Option<PathBuf>,
    /// Where to run: cpu, or cuda (GPU 0; dense pre-norm GPT-2/Llama-style specs).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype on --device cuda: bf16 (default) or f32; the CPU trains in f32.
    #[arg(long, value_parser = ["bf16", "f32"])]
    pub dtype: Option<String>,
    /// Optimizer steps [default: 600]; with --resume, a new total that extends the run.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// Micro-batches accumulated into one step.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Training text (UTF-8); default: the bundled Pride and Prejudice.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A HF tokenizer.json (default: byte-level tokens, vocabulary 256).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Activation-checkpoint policy (none, full, auto, budget(0.5), ...); default: the spec's.
    #[arg(long = "checkpoint")]
    pub policy: Option<String>,
    /// Output directory: DIR/ckpt/ and DIR/loss.png (default: runs/<spec name>).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Continue the run saved in DIR (its recorded options are used; --steps may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps (default: 5% of the steps).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW's decoupled weight decay (matrices only; embeddings, norms and biases never decay).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seeds initialisation, data order and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: u64,
    /// Tokens of sample text printed at the end (0: none).
    #[arg(long, default_value_t = 200)]
    pub sample_tokens: usize,
    /// Stop after this step (the run stays resumable with --resume; the schedule still spans --steps).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Measure forward+backward tokens/s of the spec at --batch/--seq and print JSON; no training.
    #[arg(long)]
    pub bench: bool,
    /// Timed iterations of --bench.
    #[arg(long, default_value_t = 20)]
    pub bench_iters: usize,
    /// Data parallelism: --ranks (CPU), --gpus and the multi-host flags (GPU).
    #[command(flatten)]
    pub dist: dist::DistArgs,
}

/// The spec of FILE, or the bundled tiny spec; diagnostics are printed on stderr.
pub fn load_spec(file: Option<&Path>) -> Result<ModelSpec> {
    match file {
        Some(path) => Ok(super::load_or_report(path)?.0),
        None => modelspec_dsl::load::load_str(
            TINY_SPEC,
            "specs/tiny.mspec",
            modelspec_dsl::load::Format::Mspec,
        )
        .map_err(|diagnostics| {
            eprint!("{}", modelspec_dsl::render::render(&diagnostics, TINY_SPEC));
            super::Reported.into()
        }),
    }
}

fn load_tokenizer(path: Option<&Path>) -> Result<Tokenizer> {
    Ok(match path {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::Bytes,
    })
}

fn read_text(data: &str) -> Result<String> {
    if data == CORPUS_NAME {
        return Ok(CORPUS.to_string());
    }
    std::fs::read_to_string(data).with_context(|| format!("reading the training text {data}"))
}

/// Runs `modelspec train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if args.dist.gpu_run(&args.device) {
        return dist::run_gpus(&args);
    }
    args.dist.cpu_ranks(&args.device, args.batch)?;
    match args.device.as_str() {
        "cpu" => {
            if args.dtype.as_deref() == Some("bf16") {
                bail!("--dtype bf16 is for --device cuda; the CPU trains in f32");
            }
            if args.bench {
                return bench(&args);
            }
            let (trainer, out_dir, tokenizer) = match &args.resume {
                Some(dir) => resume(&args, dir)?,
                None => start(&args)?,
            };
            train(&args, trainer, out_dir, tokenizer, "")
        }
        "cuda" => {
            if args.bench {
                bail!(
                    "--bench measures the CPU executor; on a GPU use `modelspec bench FILE --device cuda --batch B --seq T`"
                );
            }
            let dtype = args.dtype.as_deref();
            let make = |spec: &ModelSpec, options: &TrainOptions| {
                cuda::CudaObjective::new(spec, options, dtype)
            };
            let (trainer, out_dir, tokenizer) = match &args.resume {
                Some(dir) => resume_with(&args, dir, make)?,
                None => start_with(&args, make)?,
            };
            let label = format!(" [{}]", trainer.objective.label);
            train(&args, trainer, out_dir, tokenizer, &label)
        }
        other => bail!("--device {other}: use --device cpu or --device cuda"),
    }
}

/// Objectives that can lend the end-of-run sample a CPU executor (else one is made for it).
trait CpuSampler {
    fn cpu_objective(&mut self) -> Option<&mut CpuObjective>;
}

impl CpuSampler for DataParallel<CpuObjective> {
    fn cpu_objective(&mut self) -> Option<&mut CpuObjective> {
        Some(self.first_mut())
    }
}

impl CpuSampler for cuda::CudaObjective {
    fn cpu_objective(&mut self) -> Option<&mut CpuObjective> {
        None
    }
}

/// The training loop shared by the devices: progress bar, periodic checkpoints, validation, the
/// loss plot, the summary and a sample. `device` is appended to the header line.
fn train<O: Objective + CpuSampler>(
    args: &TrainArgs,
    mut trainer: Trainer<O>,
    out_dir: PathBuf,
    tokenizer: Tokenizer,
    device: &str,
) -> Result<()> {
    let ckpt_dir = out_dir.join("ckpt");
    let text = read_text(&trainer.state.options.data)?;
    let all_tokens = tokenizer.encode(&text)?;
    let (train_tokens, val_tokens) = data::split_validation(&all_tokens, 0.05, 0);
    let entropy = data::unigram_entropy(train_tokens);

    let spec = trainer.state.spec.clone();
    let options = trainer.state.options.clone();
    eprintln!(
        "training {} ({} parameters){device} on {} ({} tokens, {} held out), batch {}×{} ×{} accumulated, {} steps from step {}",
        spec.name,
        trainer.params.numel(),
        options.data,
        train_tokens.len(),
        val_tokens.len(),
        options.batch,
        options.seq,
        options.accumulate,
        options.steps,
        trainer.state.step
    );
    let bar = ProgressBar::new(options.steps);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] step {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.state.step);
    let started = Instant::now();
    let mut tokens_done = 0usize;
    let mut failure = None;
    let stop_after = args.stop_after.unwrap_or(u64::MAX);
    while !trainer.done() && trainer.state.step < stop_after {
        match trainer.step() {
            Ok(report) => {
                tokens_done += report.tokens;
                let rate = tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(report.step + 1);
                bar.set_message(format!(
                    "loss {:.4} | {:.0} tok/s | lr {:.2e} | |g| {:.2}",
                    report.loss, rate, report.lr, report.grad_norm
                ));
                if (report.step + 1) % args.save_every.max(1) == 0 {
                    trainer.save(&ckpt_dir)?;
                }
            }
            Err(e @ TrainError::NonFinite { .. }) => {
                failure = Some(e);
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    bar.finish();
    let elapsed = started.elapsed().as_secs_f64();

    let references = [Reference {
        label: "unigram entropy".into(),
        value: entropy,
    }];
    let mut validation = Vec::new();
    if failure.is_none() {
        trainer.save(&ckpt_dir)?;
        if let Some(v) = trainer.evaluate(val_tokens, 64)? {
            validation.push((trainer.state.step.saturating_sub(1), v));
        }
    }
    let title = format!(
        "{}: {} steps on {}",
        spec.name,
        trainer.losses.len(),
        options.data
    );
    let plot_path = out_dir.join("loss.png");
    plot::write_png(
        &plot_path,
        &LossPlot {
            title: &title,
            losses: &trainer.losses,
            validation: &validation,
            references: &references,
        },
        (900, 560),
    )?;
    if let Some(e) = failure {
        bail!(
            "{e} (in {}; the loss plot is {})",
            ckpt_dir.display(),
            plot_path.display()
        );
    }

    let tail = &trainer.losses[trainer.losses.len().saturating_sub(20)..];
    let final_loss = tail.iter().map(|&l| l as f64).sum::<f64>() / tail.len().max(1) as f64;
    let ln2 = std::f64::consts::LN_2;
    println!(
        "trained {} steps in {:.1} s ({:.0} tokens/s)",
        trainer.losses.len(),
        elapsed,
        tokens_done as f64 / elapsed.max(1e-9)
    );
    println!(
        "final training loss (mean of the last {} steps): {final_loss:.4} nats/token = {:.3} bits",
        tail.len(),
        final_loss / ln2
    );
    if let Some(&(_, v)) = validation.first() {
        println!(
            "held-out loss:                                 {v:.4} nats/token = {:.3} bits",
            v as f64 / ln2
        );
    }
    println!(
        "unigram entropy of the training tokens:       {entropy:.4} nats/token = {:.3} bits",
        entropy / ln2
    );
    println!(
        "checkpoint: {}   loss plot: {}",
        ckpt_dir.display(),
        plot_path.display()
    );
    if args.sample_tokens > 0 {
        let mut own = None;
        let objective = match trainer.objective.cpu_objective() {
            Some(o) => o,
            None => own.insert(CpuObjective::new(&spec, None)?),
        };
        let sample = generate_text(
            objective,
            &trainer.params,
            &spec,
            &tokenizer,
            "Elizabeth",
            args.sample_tokens,
            SampleOptions::default(),
            options.seed,
        )?;
        println!("sample (temperature 0.8, top-k 40):\n{sample}");
    }
    Ok(())
}

/// The CPU objective of a run: `ranks` thread ranks of the executor with the run's policy.
fn cpu_objective(
    spec: &ModelSpec,
    options: &TrainOptions,
    ranks: usize,
) -> Result<DataParallel<CpuObjective>> {
    let objective = CpuObjective::new(spec, options.policy.as_deref())?;
    Ok(DataParallel::new(
        objective,
        spec,
        ranks,
        DEFAULT_BUCKET_BYTES,
    )?)
}

fn start(args: &TrainArgs) -> Result<(Trainer<DataParallel<CpuObjective>>, PathBuf, Tokenizer)> {
    start_with(args, |spec, options| {
        cpu_objective(spec, options, args.dist.ranks)
    })
}

/// A fresh run whose objective `make` builds for the spec and the run's options.
fn start_with<O: Objective>(
    args: &TrainArgs,
    make: impl FnOnce(&ModelSpec, &TrainOptions) -> Result<O>,
) -> Result<(Trainer<O>, PathBuf, Tokenizer)> {
    let spec = load_spec(args.file.as_deref())?;
    let tokenizer = load_tokenizer(args.tokenizer.as_deref())?;
    if tokenizer.vocab_size() as u64 > spec.vocab {
        bail!(
            "the tokenizer has {} tokens but {} has a vocabulary of {}",
            tokenizer.vocab_size(),
            spec.name,
            spec.vocab
        );
    }
    let data = match &args.data {
        Some(p) => p.display().to_string(),
        None => CORPUS_NAME.to_string(),
    };
    let steps = args.steps.unwrap_or(DEFAULT_STEPS);
    let warmup = args.warmup.unwrap_or(steps / 20);
    let options = TrainOptions {
        steps,
        batch: args.batch,
        seq: args.seq,
        accumulate: args.accumulate,
        schedule: CosineSchedule {
            peak_lr: args.lr,
            min_lr: args.min_lr.unwrap_or(args.lr / 10.0),
            warmup_steps: warmup,
            total_steps: steps,
        },
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        clip: args.clip,
        seed: args.seed,
        policy: args.policy.clone(),
        tokenizer: tokenizer.kind().to_string(),
        data,
    };
    let out_dir = args
        .save
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&spec.name));
    if let Some(path) = &args.tokenizer {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        checkpoint::write_atomic(&out_dir.join("ckpt").join("tokenizer.json"), &bytes)?;
    }
    let text = read_text(&options.data)?;
    let tokens = tokenizer.encode(&text)?;
    let (train_tokens, _) = data::split_validation(&tokens, 0.05, 0);
    let objective = make(&spec, &options)?;
    let params = Params::init(&spec, args.seed);
    let trainer = Trainer::new(objective, spec, params, options, train_tokens.to_vec())?;
    Ok((trainer, out_dir, tokenizer))
}

fn resume(
    args: &TrainArgs,
    dir: &Path,
) -> Result<(Trainer<DataParallel<CpuObjective>>, PathBuf, Tokenizer)> {
    resume_with(args, dir, |spec, options| {
        cpu_objective(spec, options, args.dist.ranks)
    })
}

/// Continues the run saved in `dir` with the objective `make` builds for its recorded options.
fn resume_with<O: Objective>(
    args: &TrainArgs,
    dir: &Path,
    make: impl FnOnce(&ModelSpec, &TrainOptions) -> Result<O>,
) -> Result<(Trainer<O>, PathBuf, Tokenizer)> {
    let ckpt_dir = checkpoint_dir(dir);
    let mut ckpt = checkpoint::load(&ckpt_dir)?;
    if let Some(steps) = args.steps.filter(|&s| s != ckpt.state.options.steps) {
        // The schedule keeps its planned length (past it the rate stays at its floor); only the
        // step the run stops at changes.
        eprintln!(
            "note: the run was planned for {} steps; now stopping at {steps}",
            ckpt.state.options.steps
        );
        ckpt.state.options.steps = steps;
    }
    let tokenizer = match ckpt.state.options.tokenizer.as_str() {
        "bytes" => Tokenizer::Bytes,
        _ => Tokenizer::from_file(&ckpt_dir.join("tokenizer.json"))?,
    };
    if let Some(data) = &args.data {
        ckpt.state.options.data = data.display().to_string();
    }
    let text = read_text(&ckpt.state.options.data)?;
    let tokens = tokenizer.encode(&text)?;
    let (train_tokens, _) = data::split_validation(&tokens, 0.05, 0);
    let objective = make(&ckpt.state.spec, &ckpt.state.options)?;
    let out_dir = args.save.clone().unwrap_or_else(|| dir.to_path_buf());
    let tokenizer_json = ckpt_dir.join("tokenizer.json");
    let new_tokenizer_json = out_dir.join("ckpt").join("tokenizer.json");
    if tokenizer.kind() != "bytes" && new_tokenizer_json != tokenizer_json {
        // The new directory must be usable on its own (`modelspec sample`, a later --resume).
        let bytes = std::fs::read(&tokenizer_json)
            .with_context(|| format!("reading {}", tokenizer_json.display()))?;
        checkpoint::write_atomic(&new_tokenizer_json, &bytes)?;
    }
    let trainer = Trainer::resume(objective, ckpt, train_tokens.to_vec())?;
    Ok((trainer, out_dir, tokenizer))
}

/// `DIR/ckpt` when it holds a checkpoint, else DIR itself.
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("ckpt");
    if nested.join(checkpoint::FILE_NAME).exists() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Generates `tokens` tokens after `prompt` and returns the text (prompt included).
#[allow(clippy::too_many_arguments)]
pub fn generate_text(
    objective: &mut CpuObjective,
    params: &Params,
    spec: &ModelSpec,
    tokenizer: &Tokenizer,
    prompt: &str,
    tokens: usize,
    options: SampleOptions,
    seed: u64,
) -> Result<String> {
    let prompt_ids = tokenizer.encode(prompt)?;
    let vocab = (spec.vocab as usize).min(tokenizer.vocab_size());
    let ids = sampling::generate_cached(
        objective.executor(),
        params,
        &prompt_ids,
        (tokens, vocab),
        options,
        &[],
        seed,
        |_| {},
    )?;
    Ok(tokenizer.decode(&ids)?)
}

fn bench(args: &TrainArgs) -> Result<()> {
    let spec = load_spec(args.file.as_deref())?;
    let mut objective = CpuObjective::new(&spec, args.policy.as_deref())?;
    let params = Params::init(&spec, args.seed);
    let mut rng = SplitMix64::new(args.seed);
    let vocab = spec.vocab.min(256);
    let tokens: Vec<u32> = (0..args.batch * args.seq)
        .map(|_| rng.below(vocab) as u32)
        .collect();
    for _ in 0..3 {
        objective.loss_and_grads(&params, &tokens, args.batch, 0)?;
    }
    let mut times = Vec::with_capacity(args.bench_iters);
    for _ in 0..args.bench_iters.max(1) {
        let t = Instant::now();
        objective.loss_and_grads(&params, &tokens, args.batch, 0)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    // The first layer's shape, for a benchmark script that rebuilds the model elsewhere.
    let layer = spec.layers.first().context("the spec has no layers")?;
    let json = serde_json::json!({
        "spec": spec.name,
        "config": {
            "vocab": spec.vocab,
            "vocab_padded": spec.vocab_padded,
            "d_model": spec.d_model,
            "layers": spec.n_layers,
            "context": spec.context,
            "tied": spec.embedding.tied,
            "final_norm": spec.final_norm,
            "layer": layer,
        },
        "params": params.numel(),
        "batch": args.batch,
        "seq": args.seq,
        "threads": threads(),
        "iters": times.len(),
        "median_s": median,
        "tokens_per_s": (args.batch * args.seq) as f64 / median,
    });
    println!("{json}");
    Ok(())
}

fn threads() -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
