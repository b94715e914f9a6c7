//! The GPU trainer in the training loop, two ways:
//! - [`GpuModel`]: a [`DeviceModel`] for `modelspec train --device cuda` (under
//!   [`DeviceBackend`](super::DeviceBackend)): weights, gradients and AdamW's moments stay on the
//!   GPU, the fused AdamW kernel applies the host's rule, and only the loss and the gradient norm
//!   cross to the host per step (plus the state at checkpoints);
//! - [`GpuObjective`]: an [`Objective`] for each rank of GPU data parallelism
//!   ([`crate::dist::gpu`]): parameters uploaded and gradients downloaded per micro-batch, AdamW on
//!   the host.

use std::collections::BTreeMap;

use super::optim::{Moments, StepScalars};
use super::{DeviceModel, Objective, TrainError};
use crate::Params;
use crate::cuda::{CudaError, GpuTrainer};

fn model_err(e: CudaError) -> TrainError {
    TrainError::Model(Box::new(e))
}

/// A [`GpuTrainer`] built for micro-batches of `rows` sequences of `seq` tokens. Training batches
/// must have that shape; smaller evaluation batches are padded with rows whose targets are all
/// ignored. The GPU trainer has no dropout: the micro-batch seed is unused.
pub struct GpuObjective {
    trainer: GpuTrainer,
    rows: usize,
    seq: usize,
}

impl GpuObjective {
    /// The objective of `trainer`, which was built for `rows` × `seq` tokens.
    pub fn new(trainer: GpuTrainer, rows: usize, seq: usize) -> Self {
        GpuObjective { trainer, rows, seq }
    }

    /// The GPU trainer.
    pub fn trainer(&self) -> &GpuTrainer {
        &self.trainer
    }

    /// Uploads `params` and runs forward and backward on `batch` rows of `tokens`, padded to the
    /// trainer's rows.
    fn run(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<(), TrainError> {
        check_shape(self.rows, self.seq, tokens, batch)?;
        self.trainer.set_params(params).map_err(model_err)?;
        run_batch(&mut self.trainer, self.rows, self.seq, tokens, batch)
    }
}

fn check_shape(rows: usize, seq: usize, tokens: &[u32], batch: usize) -> Result<(), TrainError> {
    if batch == 0 || batch > rows || tokens.len() != batch * seq {
        return Err(TrainError::Config(format!(
            "the GPU trainer was built for {rows} x {seq} tokens, got {batch} rows of {} tokens",
            tokens.len()
        )));
    }
    Ok(())
}

/// Forward and backward on `batch` rows of `tokens` (checked), padded to the trainer's `rows`
/// with rows whose targets are all ignored, so that the mean loss is over the real rows.
fn run_batch(
    trainer: &mut GpuTrainer,
    rows: usize,
    seq: usize,
    tokens: &[u32],
    batch: usize,
) -> Result<(), TrainError> {
    if batch == rows {
        trainer.set_batch(tokens, None).map_err(model_err)?;
    } else {
        let n = rows * seq;
        let mut padded = tokens.to_vec();
        padded.resize(n, 0);
        let targets: Vec<i32> = (0..n)
            .map(|i| {
                if i + 1 >= tokens.len() || (i + 1) % seq == 0 {
                    -1
                } else {
                    tokens[i + 1] as i32
                }
            })
            .collect();
        trainer
            .set_batch(&padded, Some(&targets))
            .map_err(model_err)?;
    }
    trainer.forward_backward(false).map_err(model_err)?;
    Ok(())
}

impl Objective for GpuObjective {
    /// Uploads `params`, runs forward and backward on `tokens` and downloads loss and gradients.
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

/// A [`GpuTrainer`] built for micro-batches of `rows` sequences of `seq` tokens, as the
/// [`DeviceModel`] of `train --device cuda`: the weights, gradients (and their sum under gradient
/// accumulation) and AdamW's moments live in the trainer's arenas. Evaluation batches with fewer
/// rows are padded with ignored rows. The GPU trainer has no dropout: the seed is unused.
pub struct GpuModel {
    trainer: GpuTrainer,
    rows: usize,
    seq: usize,
}

impl GpuModel {
    /// The model of `trainer`, which was built for `rows` × `seq` tokens.
    pub fn new(trainer: GpuTrainer, rows: usize, seq: usize) -> Self {
        GpuModel { trainer, rows, seq }
    }

    /// The GPU trainer.
    pub fn trainer(&self) -> &GpuTrainer {
        &self.trainer
    }
}

impl DeviceModel for GpuModel {
    fn forward_backward(
        &mut self,
        tokens: &[u32],
        batch: usize,
        _seed: u64,
    ) -> Result<f32, TrainError> {
        if batch != self.rows {
            return Err(TrainError::Config(format!(
                "the GPU trainer was built for batches of {} rows, got {batch}",
                self.rows
            )));
        }
        check_shape(self.rows, self.seq, tokens, batch)?;
        run_batch(&mut self.trainer, self.rows, self.seq, tokens, batch)?;
        self.trainer.loss().map_err(model_err)
    }

    fn accumulate(&mut self, first: bool) -> Result<(), TrainError> {
        self.trainer.accumulate_grads(first).map_err(model_err)
    }

    fn grad_norm(&mut self, summed: bool) -> Result<f64, TrainError> {
        self.trainer.grad_norm(summed).map_err(model_err)
    }

    fn adamw(
        &mut self,
        scalars: &StepScalars,
        grad_scales: [f32; 2],
        summed: bool,
    ) -> Result<(), TrainError> {
        self.trainer
            .apply_adamw(scalars, grad_scales, summed)
            .map_err(model_err)
    }

    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        check_shape(self.rows, self.seq, tokens, batch)?;
        run_batch(&mut self.trainer, self.rows, self.seq, tokens, batch)?;
        self.trainer.loss().map_err(model_err)
    }

    fn download(&mut self) -> Result<(Params, BTreeMap<String, Moments>), TrainError> {
        let params = self.trainer.params().map_err(model_err)?;
        let moments = self.trainer.moments().map_err(model_err)?;
        Ok((params, moments))
    }

    fn upload(
        &mut self,
        params: &Params,
        moments: &BTreeMap<String, Moments>,
    ) -> Result<(), TrainError> {
        self.trainer.set_state(params, moments).map_err(model_err)
    }
}
