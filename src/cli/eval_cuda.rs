//! `modelspec eval --device cuda`: the GPU trainer's forward and backward (no optimizer step) on
//! the checkpoint's parameters; every layer runs with its own configuration.
//!
//! `--dtype f32` computes in f32 throughout (parity with the CPU executor); `--dtype bf16` keeps
//! parameters and activations in bfloat16 with f32 accumulation, as in training. `--checkpoint`
//! selects what the trainer keeps for backward (the plan of `modelspec plan`); the gradients do
//! not depend on it.

use anyhow::{Result, anyhow, bail};
use modelspec_dsl::ir::ModelSpec;
use modelspec_dsl::plan;
use modelspec_runtime::Params;
use modelspec_runtime::cuda::{Dtype, Gpu, GpuTrainer};

/// What the GPU computed: logits `[batch*seq, vocab]` (padding columns dropped), the mean
/// next-token loss, and the gradients by canonical name when asked for.
pub struct CudaEval {
    /// Logits, row-major `[batch*seq, vocab]`.
    pub logits: Vec<f32>,
    /// Mean next-token cross-entropy (labels = input_ids, shifted).
    pub loss: f64,
    /// Gradients by canonical parameter name.
    pub grads: Option<Params>,
}

/// Runs the forward and backward of `spec` with `params` on `tokens` (`batch` × `seq`) on GPU 0.
pub fn run(
    spec: &ModelSpec,
    params: &Params,
    tokens: &[u32],
    (batch, seq): (usize, usize),
    dtype: &str,
    policy: Option<&str>,
    grads: bool,
) -> Result<CudaEval> {
    if let Some(feature) = GpuTrainer::unsupported_feature(spec) {
        bail!(
            "--device cuda: `{}` uses {feature}, which the GPU path does not support yet; use --device cpu",
            spec.name
        );
    }
    let dt = if dtype == "bf16" {
        Dtype::Bf16
    } else {
        Dtype::F32
    };
    let parsed = policy
        .map(|text| plan::parse_policy(text).map_err(|e| anyhow!("--checkpoint {text}: {e}")))
        .transpose()?;
    let gpu = Gpu::new(0).map_err(|e| anyhow!("--device cuda: {e}"))?;
    let mut trainer = GpuTrainer::from_policy(&gpu, spec, dt, batch, seq, 0, parsed.as_ref())
        .map_err(|e| anyhow!("--device cuda: {e}"))?;
    // As the CPU's eval: the MoE load-balancing loss is not part of `loss`.
    trainer.set_aux_loss(false);
    trainer.set_params(params)?;
    trainer.set_batch(tokens, None)?;
    let logits = trainer
        .forward_backward(true)?
        .ok_or_else(|| anyhow!("the GPU trainer returned no logits"))?;
    let loss = f64::from(trainer.loss()?);
    let grads = if grads { Some(trainer.grads()?) } else { None };
    Ok(CudaEval {
        logits,
        loss,
        grads,
    })
}
