//! One training step (forward, loss, backward, AdamW) of modelspec's GPU trainer on the shapes of
//! the PyTorch anchor `torch_train_bench.py`, printing one JSON line:
//! `{"model", "B", "T", "ms", "peak_gib", "loss", "tokens_s", "TFLOPs", "TFLOPs_active", "MFU", "attention", "gemm", "adamw", "wgrad", "cuda_graph"}`
//! (`attention`: which kernels the layers ran, cuDNN or the own ones; `gemm`: cuBLASLt, and which
//! fused GEMMs ran on the own Hopper kernels; `adamw`: one launch after the backward, or
//! overlapped with it, the default: `MODELSPEC_ADAMW_OVERLAP`; `wgrad`: the weight gradients in
//! turn with the input gradients, or beside them on a second stream, the default:
//! `MODELSPEC_WGRAD_BRANCH`).
//!
//! ```text
//! cargo run --release -p modelspec-runtime --example cuda_train_bench -- gpt2|llama1b|mixtral_small [SPEC_DIR] [POLICY]
//! ```
//! With POLICY (none, full, auto, budget(0.5), ...), the trainer keeps for backward what
//! `modelspec plan --checkpoint POLICY --dtype bf16` saves and recomputes the rest; the line then
//! also has `policy`, `predicted_activation_gib` (the plan's activation_bytes),
//! `saved_activation_gib` (what the trainer's allocator kept: layer inputs and saved buffers),
//! `recompute_buffer_gib`, `act_ratio` (saved / predicted), and `mem_delta_gib`: device memory in
//! use after the timed steps minus before the trainer was built (cudaMemGetInfo).
//! `mapped_prediction_gib` / `mapped_ratio`: the plan's per-tensor byte costs summed over the
//! buffers the trainer keeps (see `LayerSaves`: it folds `attn_out` into `resid_mid`, `mlp_out`
//! into the next layer's input, q/k before and after RoPE into one buffer) plus its f32 norm
//! statistics.
//! gpt2: specs/gpt2-124m.mspec with the anchor's padded vocabulary 50304 and no dropout, B16 T1024.
//! llama1b: specs/llama-3.2-1b.mspec, B8 T2048. mixtral_small: specs/mixtral-small.mspec (the
//! anchor's `MixtralConfig`: 8 experts, top-2), B8 T2048. bf16, random tokens and targets as the
//! anchor.

use modelspec_runtime::cuda::{CudaError, Dtype, Gpu, GpuTrainer, LayerSaves};

fn main() {
    let model = std::env::args().nth(1).unwrap_or_else(|| "gpt2".into());
    let dir = std::env::args().nth(2).unwrap_or_else(|| "specs".into());
    let policy = std::env::args().nth(3);
    let (file, b, t) = match model.as_str() {
        "gpt2" => ("gpt2-124m.mspec", 16, 1024),
        "llama1b" => ("llama-3.2-1b.mspec", 8, 2048),
        "mixtral_small" => ("mixtral-small.mspec", 8, 2048),
        other => {
            eprintln!("unknown model `{other}` (gpt2 | llama1b | mixtral_small)");
            std::process::exit(2);
        }
    };
    let (mut spec, _) = match modelspec_dsl::load::load_file(format!("{dir}/{file}")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if model == "gpt2" {
        spec.vocab = 50304;
        spec.vocab_padded = 50304;
    }
    spec.dropout = Default::default();
    if let Err(e) = run(&model, &spec, b, t, policy.as_deref()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(
    model: &str,
    spec: &modelspec_dsl::ModelSpec,
    b: usize,
    t: usize,
    policy: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    use modelspec_dsl::plan;
    let planned = match policy {
        Some(text) => Some(plan::plan(
            spec,
            b as u64,
            t as u64,
            plan::Dtype::Bf16,
            Some(&plan::parse_policy(text)?),
        )?),
        None => None,
    };
    let saves = planned
        .as_ref()
        .map(|p| LayerSaves::from_plan(spec, p))
        .unwrap_or_default();
    let gpu = Gpu::new(0)?;
    let (free0, total) = gpu.mem_info()?;
    let t0 = std::time::Instant::now();
    let mut tr = GpuTrainer::with_checkpoint(&gpu, spec, Dtype::Bf16, b, t, 0, &saves)?;
    eprintln!(
        "setup {:.1} s, {:.2} GiB allocated",
        t0.elapsed().as_secs_f64(),
        tr.device_bytes() as f64 / (1u64 << 30) as f64
    );
    let v = spec.vocab;
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % v
    };
    let tokens: Vec<u32> = (0..b * t).map(|_| next() as u32).collect();
    let targets: Vec<i32> = (0..b * t).map(|_| next() as i32).collect();
    tr.set_batch(&tokens, Some(&targets))?;
    let w = std::time::Instant::now();
    for _ in 0..3 {
        tr.step()?;
    }
    gpu.sync()?;
    eprintln!(
        "warm-up {:.1} s, loss {:.3}",
        w.elapsed().as_secs_f64(),
        tr.loss()?
    );
    let mut times = Vec::new();
    for _ in 0..15 {
        times.push(gpu.time_ms(|| tr.step())?);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let ms = times[times.len() / 2] as f64;
    let loss = tr.loss()?;
    if std::env::var_os("TIMELINE").is_some() {
        timeline(&mut tr)?;
    }
    // The GEMMs timed for their algorithm at the first step (none when the machine's choices
    // file already had them): per call, the heuristic's pick against the chosen one.
    let tuned = tr.gemm_tuned();
    for t in &tuned {
        eprintln!(
            "gemm tuned: {} -> candidate {} of {}: {:.4} ms (first pick {:.4} ms)",
            t.key, t.chosen, t.candidates, t.best_ms, t.first_ms
        );
    }
    let tune_saved: f32 = tuned.iter().map(|t| t.first_ms - t.best_ms).sum();
    let (free1, _) = gpu.mem_info()?;
    let mapped = mapped_bytes(spec, b, t, &saves);
    let gib = |x: usize| x as f64 / (1u64 << 30) as f64;
    let extra = match (&planned, policy) {
        (Some(p), Some(text)) => format!(
            ", \"policy\": \"{text}\", \"mapped_prediction_gib\": {:.4}, \"mapped_ratio\": {:.4}, \"predicted_activation_gib\": {:.4}, \"saved_activation_gib\": {:.4}, \"recompute_buffer_gib\": {:.4}, \"act_ratio\": {:.4}, \"predicted_recompute_peak_gib\": {:.4}, \"mem_delta_gib\": {:.4}, \"total_gib\": {:.2}",
            mapped as f64 / (1u64 << 30) as f64,
            tr.saved_activation_bytes() as f64 / mapped.max(1) as f64,
            p.activation_bytes as f64 / (1u64 << 30) as f64,
            gib(tr.saved_activation_bytes()),
            gib(tr.recompute_buffer_bytes()),
            tr.saved_activation_bytes() as f64 / p.activation_bytes.max(1) as f64,
            p.recompute_peak_bytes as f64 / (1u64 << 30) as f64,
            gib(free0.saturating_sub(free1)),
            gib(total)
        ),
        _ => String::new(),
    };
    // The anchor's convention (6 x all parameters + causal attention) so TFLOPs compare; for a
    // mixture of experts that counts every expert, so `TFLOPs_active` counts the parameters a
    // token actually uses (routed top-k plus shared), the honest MFU figure.
    let nparams = tr.param_count() as f64;
    let active = modelspec_dsl::cost::params_active(spec) as f64;
    let (nl, d) = (spec.layers.len() as f64, spec.d_model as f64);
    let attn_tok = 6.0 * nl * d * t as f64;
    let flops_tok = 6.0 * nparams + attn_tok;
    let tps = (b * t) as f64 / (ms / 1e3);
    let tflops = flops_tok * tps / 1e12;
    let tflops_active = (6.0 * active + attn_tok) * tps / 1e12;
    println!(
        "{{\"model\": \"{model}\", \"B\": {b}, \"T\": {t}, \"ms\": {ms:.2}, \"min_ms\": {:.2}, \"max_ms\": {:.2}, \"peak_gib\": {:.2}, \"loss\": {loss:.3}, \"tokens_s\": {tps:.0}, \"TFLOPs\": {tflops:.1}, \"TFLOPs_active\": {tflops_active:.1}, \"MFU_vs_800\": {:.3}, \"attention\": {:?}, \"gemm\": {:?}, \"adamw\": {:?}, \"wgrad\": {:?}, \"cuda_graph\": {:?}, \"gemm_tuned\": {}, \"gemm_tune_saved_ms_per_call_sum\": {tune_saved:.4}{extra}}}",
        times[0],
        times[times.len() - 1],
        tr.device_bytes() as f64 / (1u64 << 30) as f64,
        tflops_active / 800.0,
        tr.attention_paths(),
        tr.gemm_paths(),
        tr.adamw_path(),
        tr.wgrad_path(),
        tr.cuda_graph(),
        tuned.len()
    );
    Ok(())
}

/// With `TIMELINE` set: five more steps with the in-step timeline on (eagerly: no CUDA graph),
/// one JSON line per span label (`{"timeline": label, "ms_per_step": ..}`, in first-run order),
/// then the spans' total against the steps' event-timed wall time.
fn timeline(tr: &mut GpuTrainer) -> Result<(), CudaError> {
    let (spans, step_ms) = tr.profile_steps(5)?;
    for (label, ms) in &spans {
        println!("{{\"timeline\": {label:?}, \"ms_per_step\": {ms:.4}}}");
    }
    let total: f64 = spans.iter().map(|(_, ms)| ms).sum();
    println!("{{\"timeline_total_ms_per_step\": {total:.3}, \"step_ms\": {step_ms:.3}}}");
    Ok(())
}

/// The plan's byte costs of the buffers the trainer keeps (layer inputs, saved buffers, f32 norm
/// statistics), bf16.
fn mapped_bytes(spec: &modelspec_dsl::ModelSpec, b: usize, t: usize, saves: &[LayerSaves]) -> u64 {
    use modelspec_dsl::plan;
    let n = (b * t) as u64;
    let mut total = 0;
    for (i, l) in spec.layers.iter().enumerate() {
        let s = saves.get(i).copied().unwrap_or(LayerSaves::ALL);
        let costs = plan::layer_costs(spec, l, b as u64, t as u64, plan::Dtype::Bf16);
        let c = |name: &str| costs.iter().find(|x| x.name == name).map_or(0, |x| x.bytes);
        total += n * spec.d_model * 2;
        if s.attn_norm {
            total += c("attn_norm") + 8 * n;
        }
        if s.qkv {
            total += c("q") + c("k") + c("v");
        }
        if s.attn {
            total += c("attn");
        }
        if s.resid_mid {
            total += c("resid_mid");
        }
        if s.mlp_norm {
            total += c("mlp_norm") + 8 * n;
        }
        if s.mlp_in {
            total += c("gate") + c("up");
        }
        if s.act {
            total += c("act");
        }
    }
    total
}
