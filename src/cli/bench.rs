//! `modelspec bench FILE --device cuda --batch B --seq T [--dtype bf16|f32] [--steps N]
//! [--timeline] [--json]`: times training steps (forward, loss, backward, AdamW) of a spec on the
//! GPU, on random tokens, and says which attention path each layer ran and whether the step
//! replayed as a CUDA graph. `--timeline` then runs five more steps with CUDA events around every
//! kernel of the layer programs, the head, the embeddings and AdamW, and prints where the step's
//! time goes.
//! The GPU trainer runs every layer kind of the IR (mixed layers, sliding windows, ALiBi, MoE, ...)
//! and keeps for backward what the checkpoint plan of `--checkpoint` saves (default `none`: every
//! activation), recomputing the rest.

use std::path::PathBuf;

use modelspec_dsl::plan;
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuTrainer};

use super::{load_or_report, print_stdout};

/// Devices `bench` runs on.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchDevice {
    /// An NVIDIA GPU (device 0).
    Cuda,
}

/// Compute dtypes of the GPU trainer.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchDtype {
    /// bf16 weights and activations, f32 accumulation and master weights.
    Bf16,
    /// f32 throughout (parity runs).
    F32,
}

/// Arguments of `modelspec bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A spec file: .mspec, .yaml/.yml, or HF config.json.
    pub file: PathBuf,
    /// Where to run (the GPU trainer runs every layer kind: mixed layers, ALiBi, MoE, ...).
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: BenchDevice,
    /// Sequences per step.
    #[arg(long)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long)]
    pub seq: usize,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: BenchDtype,
    /// Timed steps (after 3 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 15)]
    pub steps: usize,
    /// Activation-checkpoint policy (none, full, auto, save(...), budget(0.5), ...): what the GPU
    /// trainer keeps for backward, recomputing the rest. Default: none (every activation kept,
    /// the fastest step, as earlier benchmarks measured), whatever the spec says.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// After the timed steps, five more with CUDA events around each kernel of the layer
    /// programs (per fusion: forward, recomputation, backward), the head, the embeddings and
    /// AdamW, and print milliseconds per step for each (eagerly: no CUDA graph for these).
    #[arg(long)]
    pub timeline: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Steps the timeline covers.
const TIMELINE_STEPS: usize = 5;

/// Milliseconds per step of each timeline span, most first.
fn timeline(trainer: &mut GpuTrainer) -> anyhow::Result<Vec<(String, f64)>> {
    let (mut spans, _) = trainer.profile_steps(TIMELINE_STEPS)?;
    spans.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(spans)
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (mut spec, _) = load_or_report(&args.file)?;
    if args.batch == 0 || args.seq == 0 || args.steps == 0 {
        anyhow::bail!("--batch, --seq and --steps must be at least 1");
    }
    if let Some(feature) = GpuTrainer::unsupported_feature(&spec) {
        anyhow::bail!(
            "`{}` uses {feature}, which the GPU trainer does not support yet",
            spec.name
        );
    }
    // The GPU trainer has no dropout yet: benchmark the deterministic step.
    spec.dropout = Default::default();
    let BenchDevice::Cuda = args.device;
    let dtype = match args.dtype {
        BenchDtype::Bf16 => Dtype::Bf16,
        BenchDtype::F32 => Dtype::F32,
    };
    let text = args.checkpoint.as_deref().unwrap_or("none");
    let policy =
        plan::parse_policy(text).map_err(|e| anyhow::anyhow!("--checkpoint {text}: {e}"))?;
    let gpu = Gpu::new(0)?;
    let mut trainer =
        GpuTrainer::from_policy(&gpu, &spec, dtype, args.batch, args.seq, 0, Some(&policy))?;
    let n = args.batch * args.seq;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let tokens: Vec<u32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % spec.vocab) as u32
        })
        .collect();
    trainer.set_batch(&tokens, None)?;
    for _ in 0..3 {
        trainer.step()?;
    }
    gpu.sync()?;
    let mut times = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        times.push(gpu.time_ms(|| trainer.step())? as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let ms = times[times.len() / 2];
    let loss = trainer.loss()?;
    let (attention, graph) = (trainer.attention_paths(), trainer.cuda_graph());
    let gemm = trainer.gemm_paths();
    let (adamw, wgrad) = (trainer.adamw_path(), trainer.wgrad_path());
    let spans = if args.timeline {
        timeline(&mut trainer)?
    } else {
        Vec::new()
    };
    let params = trainer.param_count() as f64;
    let (layers, d) = (spec.layers.len() as f64, spec.d_model as f64);
    let flops_per_token = 6.0 * params + 6.0 * layers * d * args.seq as f64;
    let tokens_s = n as f64 / (ms / 1e3);
    let tflops = flops_per_token * tokens_s / 1e12;
    let gib = trainer.device_bytes() as f64 / (1u64 << 30) as f64;
    let dtype_name = dtype.suffix();
    let text = if args.json {
        let spans_json: Vec<String> = spans
            .iter()
            .map(|(label, ms)| format!("{{\"span\": {label:?}, \"ms_per_step\": {ms:.4}}}"))
            .collect();
        format!(
            "{{\"model\": \"{}\", \"device\": \"{}\", \"batch\": {}, \"seq\": {}, \"dtype\": \"{dtype_name}\", \"ms_per_step\": {ms:.3}, \"tokens_per_s\": {tokens_s:.0}, \"tflops\": {tflops:.1}, \"mfu_vs_800\": {:.3}, \"device_gib\": {gib:.2}, \"loss\": {loss:.4}, \"attention\": {attention:?}, \"gemm\": {gemm:?}, \"adamw\": {adamw:?}, \"wgrad\": {wgrad:?}, \"cuda_graph\": {graph:?}, \"timeline\": [{}]}}\n",
            spec.name,
            gpu.name(),
            args.batch,
            args.seq,
            tflops / 800.0,
            spans_json.join(", ")
        )
    } else {
        let mut text = format!(
            "{}: {ms:.2} ms/step (median of {}), {tokens_s:.0} tokens/s, {tflops:.1} TFLOP/s, {gib:.2} GiB on {}, loss {loss:.4}\nattention: {attention}\nGEMMs: {gemm}\nAdamW: {adamw}\nweight gradients: {wgrad}\nCUDA graph: {graph}\n",
            spec.name,
            args.steps,
            gpu.name()
        );
        if !spans.is_empty() {
            let total: f64 = spans.iter().map(|(_, ms)| ms).sum();
            text.push_str(&format!(
                "timeline ({TIMELINE_STEPS} steps, no graph; {total:.2} ms of kernels a step):\n"
            ));
            for (label, ms) in &spans {
                text.push_str(&format!(
                    "  {label:<24} {ms:>9.3} ms {:>5.1}%\n",
                    100.0 * ms / total.max(1e-12)
                ));
            }
        }
        text
    };
    print_stdout(&text)
}
