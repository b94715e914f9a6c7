//! `modelspec train --bench`: forward+backward tokens/s of the CPU executor at --batch/--seq,
//! printed as JSON (no training).

use std::time::Instant;

use anyhow::{Context, Result};
use modelspec_runtime::Params;
use modelspec_runtime::train::rng::SplitMix64;
use modelspec_runtime::train::{CpuObjective, Objective};

use super::{TrainArgs, load_spec};

/// Runs `train --bench`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let spec = load_spec(args.file.as_deref())?;
    let mut objective = CpuObjective::new(&spec, args.policy.as_deref())?;
    let params = Params::init(&spec, args.seed());
    let mut rng = SplitMix64::new(args.seed());
    let vocab = spec.vocab.min(256);
    let (batch, seq) = (args.batch(), args.seq());
    let tokens: Vec<u32> = (0..batch * seq).map(|_| rng.below(vocab) as u32).collect();
    for _ in 0..3 {
        objective.loss_and_grads(&params, &tokens, batch, 0)?;
    }
    let mut times = Vec::with_capacity(args.bench_iters);
    for _ in 0..args.bench_iters.max(1) {
        let t = Instant::now();
        objective.loss_and_grads(&params, &tokens, batch, 0)?;
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
        "batch": batch,
        "seq": seq,
        "threads": threads(),
        "iters": times.len(),
        "median_s": median,
        "tokens_per_s": (batch * seq) as f64 / median,
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
