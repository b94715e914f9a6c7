//! `modelspec train`: train a spec on the CPU or on a GPU (`--device cuda`), with checkpoints,
//! resume, a progress bar, a loss plot.
//!
//! With no FILE it trains the bundled tiny spec (`specs/tiny.mspec`) on the bundled corpus
//! (`data/pride_and_prejudice.txt`, byte-level tokens), so `cargo run --release -- train` works from
//! a fresh clone. It writes `DIR/ckpt/checkpoint.safetensors` (atomically, every `--save-every`
//! steps and at the end) and `DIR/loss.png`, then prints the final loss beside the corpus' unigram
//! entropy and a sample of generated text.
//!
//! DIR (`--save`, default `runs/<spec file stem>`) is claimed first ([`run_dir`]): locked for this
//! process, checked writable, and refused when it already holds a run unless `--resume` or
//! `--overwrite`. Every option that shapes the run is recorded in the checkpoint (the data as an
//! absolute path and a content hash); `--resume` continues with them and says which flags it
//! ignores.

use std::borrow::Cow;
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
use modelspec_runtime::train::sample::{self as sampling, SampleOptions};
use modelspec_runtime::train::schedule::CosineSchedule;
use modelspec_runtime::train::{
    Backend, CpuObjective, HostBackend, TrainError, TrainOptions, Trainer, checkpoint,
};

use super::values;
use run_dir::RunDir;

mod bench;
mod cuda;
mod dist;
mod resume_flags;
pub mod run_dir;

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
    /// Where to run: cpu, or cuda (GPU 0; every layer kind: mixed layers, sliding windows, ALiBi,
    /// MoE; checkpoint plans; bf16 or f32).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype on --device cuda: bf16 (default) or f32; the CPU trains in f32.
    #[arg(long, value_parser = ["bf16", "f32"])]
    pub dtype: Option<String>,
    /// Optimizer steps [default: 600]; with --resume, a new total that extends the run.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per micro-batch [default: 16].
    #[arg(long, value_parser = values::at_least_one)]
    pub batch: Option<u64>,
    /// Tokens per sequence [default: 64].
    #[arg(long, value_parser = values::at_least_one)]
    pub seq: Option<u64>,
    /// Micro-batches accumulated into one step [default: 1].
    #[arg(long, value_parser = values::at_least_one)]
    pub accumulate: Option<u64>,
    /// Training text (UTF-8, a regular file); default: the bundled Pride and Prejudice.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A HF tokenizer.json (default: byte-level tokens, vocabulary 256).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Activation-checkpoint policy (none, full, auto, budget(0.5), ...); default: the spec's.
    #[arg(long = "checkpoint")]
    pub policy: Option<String>,
    /// Output directory: DIR/ckpt/ and DIR/loss.png (default: runs/<spec file name without its
    /// extension>, runs/tiny for the bundled spec).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Continue the run saved in DIR (its recorded options are used; --steps may extend it,
    /// --save-every and --data may change; other differing flags are named and ignored).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start a fresh run even if the output directory already holds one (its checkpoint and plot
    /// are replaced).
    #[arg(long)]
    pub overwrite: bool,
    /// Peak learning rate (above 0) [default: 0.003].
    #[arg(long, allow_negative_numbers = true, value_parser = values::positive_f64)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long, allow_negative_numbers = true, value_parser = values::non_negative_f64)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps (default: 5% of the steps).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW's decoupled weight decay (matrices only; embeddings, norms and biases never decay)
    /// [default: 0.1].
    #[arg(long, allow_negative_numbers = true, value_parser = values::non_negative_f64)]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip (0: off) [default: 1].
    #[arg(long, allow_negative_numbers = true, value_parser = values::non_negative_f64)]
    pub clip: Option<f64>,
    /// Seeds initialisation, data order and dropout [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Save a checkpoint every N steps (and always at the end) [default: 100].
    #[arg(long, value_parser = values::at_least_one)]
    pub save_every: Option<u64>,
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

/// Defaults of the flags that a resumed run takes from its checkpoint instead.
const DEFAULT_BATCH: u64 = 16;
const DEFAULT_SEQ: u64 = 64;
const DEFAULT_LR: f64 = 3e-3;
const DEFAULT_WEIGHT_DECAY: f64 = 0.1;
/// AdamW's (β₁, β₂) for training runs: β₂ 0.95 (PyTorch's default is 0.999), as is usual for
/// transformers.
const ADAMW_BETAS: (f64, f64) = (0.9, 0.95);
const DEFAULT_CLIP: f64 = 1.0;

impl TrainArgs {
    /// `--batch` or its default.
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(DEFAULT_BATCH) as usize
    }
    /// `--seq` or its default.
    pub fn seq(&self) -> usize {
        self.seq.unwrap_or(DEFAULT_SEQ) as usize
    }
    /// `--seed` or its default.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }
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
    regular_file(data)?;
    std::fs::read_to_string(data).with_context(|| format!("reading the training text {data}"))
}

/// The `--data` path as recorded: absolute, after checking it is a regular file.
fn data_source(path: &Path) -> Result<String> {
    let absolute = std::fs::canonicalize(path)
        .with_context(|| format!("reading the training text {}", path.display()))?;
    let shown = absolute.display().to_string();
    regular_file(&shown)?;
    Ok(shown)
}

/// Refuses training text that is not a regular file: a FIFO or `/dev/zero` would be read without
/// end.
fn regular_file(data: &str) -> Result<()> {
    let meta =
        std::fs::metadata(data).with_context(|| format!("reading the training text {data}"))?;
    if !meta.is_file() {
        let kind = modelspec_runtime::io::special_kind(&meta.file_type()).unwrap_or("special file");
        bail!("the training text {data} is a {kind}, not a regular file");
    }
    Ok(())
}

/// Runs `modelspec train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if args.dist.gpu_run(&args.device) {
        return dist::run_gpus(&args);
    }
    args.dist.cpu_ranks(&args.device, args.batch())?;
    match args.device.as_str() {
        "cpu" => {
            if args.dtype.as_deref() == Some("bf16") {
                bail!("--dtype bf16 is for --device cuda; the CPU trains in f32");
            }
            if args.resume.is_none() {
                check_cpu_memory(&args)?;
            }
            if args.bench {
                return bench::run(&args);
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
                cuda::CudaBackend::new(spec, options, dtype)
            };
            let (trainer, out_dir, tokenizer) = match &args.resume {
                Some(dir) => resume_with(&args, dir, make)?,
                None => start_with(&args, make)?,
            };
            let label = format!(" [{}]", trainer.backend.label);
            train(&args, trainer, out_dir, tokenizer, &label)
        }
        other => bail!("--device {other}: use --device cpu or --device cuda"),
    }
}

/// Refuses a fresh CPU run (or `--bench`) whose estimated peak memory exceeds what the machine
/// has available, before the run folder is claimed or anything allocated (see `cli::memory`).
fn check_cpu_memory(args: &TrainArgs) -> Result<()> {
    let spec = load_spec(args.file.as_deref())?;
    if args.seq() as u64 > spec.context || args.batch() == 0 || args.seq() == 0 {
        // A shape the run refuses anyway: its own error says why.
        return Ok(());
    }
    // A policy that does not parse is reported, with its reasons, where the run reads it.
    let policy = args
        .policy
        .as_deref()
        .and_then(|text| modelspec_dsl::plan::parse_policy(text).ok());
    let work = super::memory::Work {
        batch: args.batch() as u64,
        seq: args.seq() as u64,
        grads: true,
        optimizer: true,
        output_copies: false,
    };
    super::memory::check_fits(
        &spec,
        work,
        policy.as_ref(),
        "training",
        "a smaller --batch or --seq, --checkpoint budget(0.5), or --device cuda",
    )
}

/// What the end-of-run sample reads from a backend: a CPU executor to lend (else one is made for
/// it) and the trained parameters (downloaded from a device).
trait CpuSampler {
    fn sample_parts(&mut self) -> Result<(Option<&mut CpuObjective>, Cow<'_, Params>)>;
}

impl CpuSampler for HostBackend<DataParallel<CpuObjective>> {
    fn sample_parts(&mut self) -> Result<(Option<&mut CpuObjective>, Cow<'_, Params>)> {
        Ok((
            Some(self.objective.first_mut()),
            Cow::Borrowed(&self.params),
        ))
    }
}

impl CpuSampler for cuda::CudaBackend {
    fn sample_parts(&mut self) -> Result<(Option<&mut CpuObjective>, Cow<'_, Params>)> {
        Ok((None, self.snapshot()?.0))
    }
}

/// The training loop shared by the devices: progress bar, periodic checkpoints, validation, the
/// loss plot, the summary and a sample. `device` is appended to the header line.
fn train<B: Backend + CpuSampler>(
    args: &TrainArgs,
    mut trainer: Trainer<B>,
    out_dir: RunDir,
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
        modelspec_dsl::params::parameters(&spec)
            .iter()
            .map(|p| p.numel())
            .sum::<u64>(),
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
    let first_step = trainer.state.step;
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
                if (report.step + 1) % options.save_every.max(1) == 0 {
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
    let plotted = plot::write_png(
        &plot_path,
        &LossPlot {
            title: &title,
            losses: &trainer.losses,
            validation: &validation,
            references: &references,
        },
        (900, 560),
    );
    if let Some(e) = failure {
        return Err(diverged(&e, &ckpt_dir, &plot_path, plotted));
    }
    plotted?;

    let tail = &trainer.losses[trainer.losses.len().saturating_sub(20)..];
    let final_loss = tail.iter().map(|&l| l as f64).sum::<f64>() / tail.len().max(1) as f64;
    let ln2 = std::f64::consts::LN_2;
    let steps_now = trainer.state.step - first_step;
    let total = if first_step > 0 {
        format!(" ({} in total)", trainer.state.step)
    } else {
        String::new()
    };
    println!(
        "trained {steps_now} steps{total} in {:.1} s ({:.0} tokens/s)",
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
        let (lent, params) = trainer.backend.sample_parts()?;
        let objective = match lent {
            Some(o) => o,
            None => own.insert(CpuObjective::new(&spec, None)?),
        };
        let sample = generate_text(
            objective,
            &params,
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

/// The error of a run that stopped at `failure`: the divergence is the news; a plot that could not
/// be written is a footnote to it, not the error reported.
fn diverged(
    failure: &TrainError,
    ckpt_dir: &Path,
    plot_path: &Path,
    plotted: std::result::Result<(), TrainError>,
) -> anyhow::Error {
    let plot_note = match plotted {
        Ok(()) => format!("the loss plot is {}", plot_path.display()),
        Err(p) => format!("no loss plot: {p}"),
    };
    anyhow::anyhow!("{failure} (in {}; {plot_note})", ckpt_dir.display())
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

/// The host backend of a CPU run.
type CpuBackend = HostBackend<DataParallel<CpuObjective>>;

fn start(args: &TrainArgs) -> Result<(Trainer<CpuBackend>, RunDir, Tokenizer)> {
    start_with(args, |spec, options| {
        Ok(HostBackend::new(cpu_objective(
            spec,
            options,
            args.dist.ranks,
        )?))
    })
}

/// Whether this process is a rank other than 0 of a multi-process run: it writes nothing into the
/// run folder, so it neither claims nor locks it.
fn secondary_rank(args: &TrainArgs) -> bool {
    args.dist
        .rank
        .or_else(|| std::env::var("RANK").ok()?.parse().ok())
        .is_some_and(|r| r != 0)
}

/// Claims the run folder `dir` (see [`run_dir::claim`]), except on secondary ranks.
fn claim_dir(args: &TrainArgs, dir: &Path, fresh: bool, inputs: &[&Path]) -> Result<RunDir> {
    if secondary_rank(args) {
        return Ok(RunDir::unclaimed(dir.to_path_buf()));
    }
    run_dir::claim(dir, fresh, args.overwrite, inputs)
}

/// The options of a fresh run: the flags, or their defaults.
fn run_options(
    args: &TrainArgs,
    tokenizer: &str,
    data: String,
    data_hash: Option<String>,
) -> TrainOptions {
    let steps = args.steps.unwrap_or(DEFAULT_STEPS);
    let warmup = args.warmup.unwrap_or(steps / 20);
    let lr = args.lr.unwrap_or(DEFAULT_LR);
    TrainOptions {
        steps,
        batch: args.batch(),
        seq: args.seq(),
        accumulate: args.accumulate.unwrap_or(1) as usize,
        schedule: CosineSchedule {
            peak_lr: lr,
            min_lr: args.min_lr.unwrap_or(lr / 10.0),
            warmup_steps: warmup,
            total_steps: steps,
        },
        adamw: AdamWConfig {
            betas: ADAMW_BETAS,
            weight_decay: args.weight_decay.unwrap_or(DEFAULT_WEIGHT_DECAY),
            ..AdamWConfig::default()
        },
        clip: args.clip.unwrap_or(DEFAULT_CLIP),
        seed: args.seed(),
        policy: args.policy.clone(),
        tokenizer: tokenizer.to_string(),
        data,
        data_hash,
        save_every: args.save_every.unwrap_or(checkpoint::DEFAULT_SAVE_EVERY),
    }
}

/// A fresh run on the backend `make` builds for the spec and the run's options.
fn start_with<B: Backend>(
    args: &TrainArgs,
    make: impl FnOnce(&ModelSpec, &TrainOptions) -> Result<B>,
) -> Result<(Trainer<B>, RunDir, Tokenizer)> {
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
        Some(p) => data_source(p)?,
        None => CORPUS_NAME.to_string(),
    };
    let text = read_text(&data)?;
    let data_hash = Some(checkpoint::content_hash(text.as_bytes()));
    let options = run_options(args, tokenizer.kind(), data, data_hash);
    let out_path = args
        .save
        .clone()
        .unwrap_or_else(|| run_dir::default_dir(args.file.as_deref()));
    let inputs: Vec<&Path> = [
        args.file.as_deref(),
        args.data.as_deref(),
        args.tokenizer.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let out_dir = claim_dir(args, &out_path, true, &inputs)?;
    if let Some(path) = &args.tokenizer
        && !secondary_rank(args)
    {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        checkpoint::write_atomic(&out_dir.join("ckpt").join("tokenizer.json"), &bytes)?;
    }
    let tokens = tokenizer.encode(&text)?;
    let (train_tokens, _) = data::split_validation(&tokens, 0.05, 0);
    let backend = make(&spec, &options)?;
    let params = Params::init(&spec, options.seed);
    let trainer = Trainer::with_backend(backend, spec, params, options, train_tokens.to_vec())?;
    Ok((trainer, out_dir, tokenizer))
}

fn resume(args: &TrainArgs, dir: &Path) -> Result<(Trainer<CpuBackend>, RunDir, Tokenizer)> {
    resume_with(args, dir, |spec, options| {
        Ok(HostBackend::new(cpu_objective(
            spec,
            options,
            args.dist.ranks,
        )?))
    })
}

/// Continues the run saved in `dir` on the backend `make` builds for its recorded options (a
/// checkpoint of either device).
fn resume_with<B: Backend>(
    args: &TrainArgs,
    dir: &Path,
    make: impl FnOnce(&ModelSpec, &TrainOptions) -> Result<B>,
) -> Result<(Trainer<B>, RunDir, Tokenizer)> {
    let ckpt_dir = checkpoint_dir(dir);
    let mut ckpt = checkpoint::load(&ckpt_dir)?;
    let ignored = resume_flags::ignored(args, &ckpt.state);
    if !ignored.is_empty() {
        eprintln!(
            "note: --resume continues {} with its recorded options; ignoring {}",
            dir.display(),
            ignored.join(", ")
        );
    }
    let options = &mut ckpt.state.options;
    if let Some(steps) = args.steps.filter(|&s| s != options.steps) {
        // The schedule keeps its planned length (past it the rate stays at its floor); only the
        // step the run stops at changes.
        eprintln!(
            "note: the run was planned for {} steps; now stopping at {steps}",
            options.steps
        );
        options.steps = steps;
    }
    if let Some(every) = args.save_every.filter(|&n| n != options.save_every) {
        eprintln!(
            "note: the run saved every {} steps; now every {every}",
            options.save_every
        );
        options.save_every = every;
    }
    let tokenizer = match options.tokenizer.as_str() {
        "bytes" => Tokenizer::Bytes,
        _ => Tokenizer::from_file(&ckpt_dir.join("tokenizer.json"))?,
    };
    if let Some(data) = &args.data {
        options.data = data_source(data)?;
    }
    let text = read_text(&options.data)?;
    if let Some(recorded) = &options.data_hash {
        let now = checkpoint::content_hash(text.as_bytes());
        if now != *recorded {
            bail!(
                "the training text {} is not the text this run was trained on (content hash {now}, recorded {recorded}): give --data with the original text",
                options.data
            );
        }
    }
    let out_path = args.save.clone().unwrap_or_else(|| dir.to_path_buf());
    // Continuing in place is not a fresh run; saving the continuation elsewhere is.
    let fresh = !modelspec_runtime::io::same_file(&out_path, dir);
    let data_path = PathBuf::from(&options.data);
    let tokenizer_json = ckpt_dir.join("tokenizer.json");
    let checkpoint_file = ckpt_dir.join(checkpoint::FILE_NAME);
    let mut inputs: Vec<&Path> = vec![&data_path];
    if fresh {
        inputs.push(&tokenizer_json);
        inputs.push(&checkpoint_file);
    }
    let out_dir = claim_dir(args, &out_path, fresh, &inputs)?;
    let tokens = tokenizer.encode(&text)?;
    let (train_tokens, _) = data::split_validation(&tokens, 0.05, 0);
    let backend = make(&ckpt.state.spec, &ckpt.state.options)?;
    let new_tokenizer_json = out_dir.join("ckpt").join("tokenizer.json");
    if tokenizer.kind() != "bytes" && fresh {
        // The new directory must be usable on its own (`modelspec sample`, a later --resume).
        let bytes = std::fs::read(&tokenizer_json)
            .with_context(|| format!("reading {}", tokenizer_json.display()))?;
        checkpoint::write_atomic(&new_tokenizer_json, &bytes)?;
    }
    let trainer = Trainer::resume_with_backend(backend, ckpt, train_tokens.to_vec())?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_divergence_is_reported_before_a_plot_failure() {
        use modelspec_runtime::train::TrainError;
        let failure = TrainError::NonFinite {
            step: 3,
            loss: f32::NAN,
            grad_norm: f64::INFINITY,
        };
        let plot = Err(TrainError::Plot("disk full".into()));
        let path = std::path::Path::new("run");
        let err = super::diverged(&failure, path, path, plot).to_string();
        assert!(err.starts_with("training diverged at step 3"), "{err}");
        assert!(err.contains("no loss plot: plot: disk full"), "{err}");
    }
}
