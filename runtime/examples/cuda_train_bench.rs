//! One training step (forward, loss, backward, AdamW) of modelspec's GPU trainer on the shapes of
//! the PyTorch anchor `torch_train_bench.py`, printing one JSON line:
//! `{"model", "B", "T", "ms", "peak_gib", "loss", "tokens_s", "TFLOPs", "MFU"}`.
//!
//! ```text
//! cargo run --release -p modelspec-runtime --example cuda_train_bench -- gpt2|llama1b [SPEC_DIR]
//! ```
//! gpt2: specs/gpt2-124m.mspec with the anchor's padded vocabulary 50304 and no dropout, B16 T1024.
//! llama1b: specs/llama-3.2-1b.mspec, B8 T2048. bf16, random tokens and targets as the anchor.

use modelspec_runtime::cuda::{Dtype, Gpu, GpuTrainer};

fn main() {
    let model = std::env::args().nth(1).unwrap_or_else(|| "gpt2".into());
    let dir = std::env::args().nth(2).unwrap_or_else(|| "specs".into());
    let (file, b, t) = match model.as_str() {
        "gpt2" => ("gpt2-124m.mspec", 16, 1024),
        "llama1b" => ("llama-3.2-1b.mspec", 8, 2048),
        other => {
            eprintln!("unknown model `{other}` (gpt2 | llama1b)");
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
    if let Err(e) = run(&model, &spec, b, t) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(
    model: &str,
    spec: &modelspec_dsl::ModelSpec,
    b: usize,
    t: usize,
) -> Result<(), modelspec_runtime::cuda::CudaError> {
    let gpu = Gpu::new(0)?;
    let t0 = std::time::Instant::now();
    let mut tr = GpuTrainer::new(&gpu, spec, Dtype::Bf16, b, t, 0)?;
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
    let (_, total) = gpu.mem_info()?;
    let _ = total;
    let nparams = tr.param_count() as f64;
    let l0 = &spec.layers[0];
    let (nl, d) = (spec.layers.len() as f64, spec.d_model as f64);
    let _ = l0;
    let flops_tok = 6.0 * nparams + 6.0 * nl * d * t as f64;
    let tps = (b * t) as f64 / (ms / 1e3);
    let tflops = flops_tok * tps / 1e12;
    println!(
        "{{\"model\": \"{model}\", \"B\": {b}, \"T\": {t}, \"ms\": {ms:.2}, \"min_ms\": {:.2}, \"max_ms\": {:.2}, \"peak_gib\": {:.2}, \"loss\": {loss:.3}, \"tokens_s\": {tps:.0}, \"TFLOPs\": {tflops:.1}, \"MFU_vs_800\": {:.3}}}",
        times[0],
        times[times.len() - 1],
        tr.device_bytes() as f64 / (1u64 << 30) as f64,
        tflops / 800.0
    );
    Ok(())
}
