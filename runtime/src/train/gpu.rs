//! The GPU trainer's forward and backward as a training [`Objective`]: the one GPU objective, used
//! by `modelspec train --device cuda` (under the host [`Trainer`](super::Trainer) loop) and by
//! each rank of GPU data parallelism ([`crate::dist::gpu`]).
//!
//! Parameters are uploaded and the loss and gradients downloaded per micro-batch; AdamW runs on
//! the host ([`super::optim::AdamW`]), so checkpoints and resume are those of the CPU.

use super::{Objective, TrainError};
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
