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
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuTrainer, LayerSaves};
use modelspec_runtime::train::{Objective, TrainError, TrainOptions};

/// The GPU trainer's loss and gradients as a training [`Objective`] for micro-batches of a fixed
/// shape; smaller evaluation batches are padded with ignored rows.
pub struct CudaObjective {
    trainer: GpuTrainer,
    rows: usize,
    seq: usize,
    /// `cuda:0 (device name), dtype`, for the run's header line.
    pub label: String,
}

fn model_err(e: modelspec_runtime::cuda::CudaError) -> TrainError {
    TrainError::Model(Box::new(e))
}

/// Parses `--dtype` for `--device cuda` (default bf16).
pub fn dtype(arg: Option<&str>) -> Result<(Dtype, plan::Dtype)> {
    match arg.unwrap_or("bf16") {
        "bf16" => Ok((Dtype::Bf16, plan::Dtype::Bf16)),
        "f32" => Ok((Dtype::F32, plan::Dtype::F32)),
        other => bail!("--dtype {other}: use bf16 or f32"),
    }
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
        let (dt, plan_dt) = self::dtype(dtype)?;
        let (rows, seq) = (options.batch, options.seq);
        let parsed = options
            .policy
            .as_deref()
            .map(|text| plan::parse_policy(text).map_err(|e| anyhow!("--checkpoint {text}: {e}")))
            .transpose()?;
        let planned = plan::plan(spec, rows as u64, seq as u64, plan_dt, parsed.as_ref())
            .map_err(|e| anyhow!("--checkpoint: {e}"))?;
        let saves = LayerSaves::from_plan(&planned);
        let gpu = Gpu::new(0).map_err(|e| anyhow!("--device cuda: {e}"))?;
        gpu.check_fits(GpuTrainer::predicted_bytes_with(
            spec, dt, rows, seq, &saves,
        ))
        .map_err(|e| anyhow!("--device cuda: batch {rows}x{seq}: {e}"))?;
        let trainer = GpuTrainer::with_checkpoint(&gpu, spec, dt, rows, seq, options.seed, &saves)
            .map_err(|e| anyhow!("--device cuda: {e}"))?;
        let label = format!("cuda:0 ({}), {}", gpu.name(), dt.suffix());
        Ok(Self {
            trainer,
            rows,
            seq,
            label,
        })
    }

    fn run(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<(), TrainError> {
        if batch == 0 || batch > self.rows || tokens.len() != batch * self.seq {
            return Err(TrainError::Config(format!(
                "the GPU trainer was built for {} x {} tokens, got {batch} rows of {} tokens",
                self.rows,
                self.seq,
                tokens.len()
            )));
        }
        self.trainer.set_params(params).map_err(model_err)?;
        if batch == self.rows {
            self.trainer.set_batch(tokens, None).map_err(model_err)?;
        } else {
            // Pad with rows whose targets are all ignored: the mean loss is over the real rows.
            let n = self.rows * self.seq;
            let mut padded = tokens.to_vec();
            padded.resize(n, 0);
            let targets: Vec<i32> = (0..n)
                .map(|i| {
                    if i + 1 >= tokens.len() || (i + 1) % self.seq == 0 {
                        -1
                    } else {
                        tokens[i + 1] as i32
                    }
                })
                .collect();
            self.trainer
                .set_batch(&padded, Some(&targets))
                .map_err(model_err)?;
        }
        self.trainer.forward_backward(false).map_err(model_err)?;
        Ok(())
    }
}

impl Objective for CudaObjective {
    /// Uploads `params`, runs forward and backward on `tokens` and downloads loss and gradients.
    /// The GPU trainer has no dropout: `seed` is unused.
    fn loss_and_grads(
        &mut self,
        params: &Params,
        tokens: &[u32],
        batch: usize,
        _seed: u64,
    ) -> Result<(f32, Params), TrainError> {
        if batch != self.rows {
            return Err(TrainError::Config(format!(
                "the GPU trainer was built for batches of {} rows, got {batch}",
                self.rows
            )));
        }
        self.run(params, tokens, batch)?;
        let loss = self.trainer.loss().map_err(model_err)?;
        let grads = self.trainer.grads().map_err(model_err)?;
        Ok((loss, grads))
    }

    fn loss(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.run(params, tokens, batch)?;
        self.trainer.loss().map_err(model_err)
    }
}
