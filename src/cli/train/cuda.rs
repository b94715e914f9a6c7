//! `modelspec train --device cuda`: forward and backward on GPU 0 through the runtime's
//! [`GpuTrainer`] (with the run's `--checkpoint` plan and `--dtype`), everything else as on the
//! CPU: the same [`Trainer`](modelspec_runtime::train::Trainer) loop, data order, schedule,
//! clipping, AdamW (on the host, f32), checkpoints, resume, loss plot and sample.
//!
//! The weights are uploaded and the gradients downloaded once per micro-batch: `GpuTrainer` has no
//! way to read its weights or optimizer moments back, so its on-device AdamW (`step`) would leave
//! nothing to save; the host optimizer keeps the checkpoint format and `--resume` exactly as on
//! the CPU.

use anyhow::{Result, anyhow, bail};
use modelspec_dsl::ir::ModelSpec;
use modelspec_dsl::plan;
use modelspec_runtime::Params;
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuTrainer};
use modelspec_runtime::train::{GpuObjective, Objective, TrainError, TrainOptions};

/// The runtime's [`GpuObjective`] on GPU 0, built from the run's options, with the name of the
/// device for the run's header line.
pub struct CudaObjective {
    objective: GpuObjective,
    /// `cuda:0 (device name), dtype`, for the run's header line.
    pub label: String,
}

/// Parses `--dtype` for `--device cuda` (default bf16).
pub fn dtype(arg: Option<&str>) -> Result<Dtype> {
    let text = arg.unwrap_or("bf16");
    text.parse().map_err(|e| anyhow!("--dtype {text}: {e}"))
}

impl CudaObjective {
    /// A GPU trainer on device 0 for `options.batch` × `options.seq` tokens of `spec` in `dtype`,
    /// keeping what the checkpoint plan of `options.policy` (default: the spec's) saves. Clean
    /// errors for a spec the GPU trainer does not cover, no driver or device, and a run that does
    /// not fit in device memory.
    pub fn new(spec: &ModelSpec, options: &TrainOptions, dtype: Option<&str>) -> Result<Self> {
        if let Some(feature) = GpuTrainer::unsupported_feature(spec) {
            bail!(
                "--device cuda: `{}` uses {feature}, which the GPU trainer does not support yet; use --device cpu",
                spec.name
            );
        }
        let d = &spec.dropout;
        if d.embedding > 0.0 || d.attention > 0.0 || d.residual > 0.0 {
            eprintln!(
                "note: the GPU trainer has no dropout; `{}` trains on cuda without it",
                spec.name
            );
        }
        let dt = self::dtype(dtype)?;
        let (rows, seq) = (options.batch, options.seq);
        let parsed = options
            .policy
            .as_deref()
            .map(|text| plan::parse_policy(text).map_err(|e| anyhow!("--checkpoint {text}: {e}")))
            .transpose()?;
        let gpu = Gpu::new(0).map_err(|e| anyhow!("--device cuda: {e}"))?;
        let trainer =
            GpuTrainer::from_policy(&gpu, spec, dt, rows, seq, options.seed, parsed.as_ref())
                .map_err(|e| anyhow!("--device cuda: batch {rows}x{seq}: {e}"))?;
        let label = format!("cuda:0 ({}), {}", gpu.name(), dt.suffix());
        Ok(Self {
            objective: GpuObjective::new(trainer, rows, seq),
            label,
        })
    }
}

impl Objective for CudaObjective {
    fn loss_and_grads(
        &mut self,
        params: &Params,
        tokens: &[u32],
        batch: usize,
        seed: u64,
    ) -> Result<(f32, Params), TrainError> {
        self.objective.loss_and_grads(params, tokens, batch, seed)
    }

    fn loss(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.objective.loss(params, tokens, batch)
    }
}
