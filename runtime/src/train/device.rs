//! Training with the parameters, gradients and AdamW moments resident on a device: the
//! [`DeviceBackend`] over a [`DeviceModel`] (the GPU trainer, see [`super::gpu::GpuModel`]).
//!
//! Per optimizer step only two scalars reach the host: each micro-batch's loss and the global
//! gradient norm (computed on the device). Gradient accumulation sums on the device (a second
//! gradient buffer, used only from the second micro-batch on); the mean and the clipping factor
//! are folded into the AdamW launch as two gradient scales applied one after the other, exactly
//! as the host multiplies by `1/accumulate` and then by the clipping factor. Checkpoints download
//! the parameters and moments into the host's [`Params`] and [`AdamW`] (the format the CPU run
//! writes), and loading one uploads them, so a run resumes on either device.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::TrainError;
use super::backend::Backend;
use super::clip::clip_factor;
use super::optim::{AdamW, AdamWConfig, Moments, StepScalars};
use crate::Params;

/// A model whose weights (f32 master copy), gradient, gradient sum and AdamW moments live on a
/// device. The device applies AdamW with the host's arithmetic: the [`StepScalars`] it is given,
/// weight decay only where [`decays`](super::optim::decays) says so.
pub trait DeviceModel {
    /// Forward and backward on `batch` rows of `tokens` (dropout keyed by `seed`, where the model
    /// has dropout); the gradient replaces the device's micro-batch gradient. Returns the loss.
    fn forward_backward(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seed: u64,
    ) -> Result<f32, TrainError>;

    /// Adds the micro-batch gradient into the gradient sum; `first` sets the sum to it instead.
    fn accumulate(&mut self, first: bool) -> Result<(), TrainError>;

    /// The global L2 norm of the micro-batch gradient, or of the sum when `summed`.
    fn grad_norm(&mut self, summed: bool) -> Result<f64, TrainError>;

    /// One AdamW step on every parameter with `scalars`, the gradient (the sum when `summed`)
    /// multiplied by `grad_scales[0]` and then by `grad_scales[1]`, each rounded to f32.
    fn adamw(
        &mut self,
        scalars: &StepScalars,
        grad_scales: [f32; 2],
        summed: bool,
    ) -> Result<(), TrainError>;

    /// The loss of `batch` rows of `tokens` (no dropout; may overwrite the micro-batch gradient
    /// but not the sum).
    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError>;

    /// The parameters and both moments, by canonical name.
    fn download(&mut self) -> Result<(Params, BTreeMap<String, Moments>), TrainError>;

    /// Replaces the parameters and moments (a parameter absent from `moments` gets zeros).
    fn upload(
        &mut self,
        params: &Params,
        moments: &BTreeMap<String, Moments>,
    ) -> Result<(), TrainError>;
}

/// The [`Backend`] of a [`DeviceModel`]: AdamW's configuration and step count on the host,
/// everything else on the device.
pub struct DeviceBackend<D> {
    /// The device model.
    pub device: D,
    config: AdamWConfig,
    /// Steps taken (AdamW's `t` is `step + 1` during the next one).
    step: u64,
    /// Micro-batches in the step so far.
    micro_batches: usize,
    /// The gradient scales of the next [`Backend::apply`].
    grad_scales: [f32; 2],
    /// The last download, valid until the state changes.
    cache: Option<(Params, AdamW)>,
}

impl<D: DeviceModel> DeviceBackend<D> {
    /// The backend of `device` (parameters come with [`Backend::load`]).
    pub fn new(device: D) -> Self {
        Self {
            device,
            config: AdamWConfig::default(),
            step: 0,
            micro_batches: 0,
            grad_scales: [1.0, 1.0],
            cache: None,
        }
    }

    fn summed(&self) -> bool {
        self.micro_batches > 1
    }
}

impl<D: DeviceModel> Backend for DeviceBackend<D> {
    fn micro_batch(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seed: u64,
        first: bool,
    ) -> Result<f32, TrainError> {
        if first {
            self.micro_batches = 0;
        } else if self.micro_batches == 1 {
            // The first micro-batch's gradient moves into the sum before the next overwrites it.
            self.device.accumulate(true)?;
        }
        let loss = self.device.forward_backward(tokens, batch, seed)?;
        if self.micro_batches >= 1 {
            self.device.accumulate(false)?;
        }
        self.micro_batches += 1;
        Ok(loss)
    }

    fn finish_gradient(&mut self, micro_batches: usize, max_norm: f64) -> Result<f64, TrainError> {
        if micro_batches != self.micro_batches {
            return Err(TrainError::Config(format!(
                "the step ran {} micro-batches but averages over {micro_batches}",
                self.micro_batches
            )));
        }
        let summed = self.summed();
        let raw = self.device.grad_norm(summed)?;
        // The host scales the sum by 1/accumulate in f32, then measures it.
        let mean = if micro_batches > 1 {
            1.0 / micro_batches as f32
        } else {
            1.0
        };
        let norm = raw * f64::from(mean);
        let factor = if max_norm > 0.0 && norm.is_finite() {
            clip_factor(norm, max_norm)
        } else {
            1.0
        };
        self.grad_scales = [mean, factor];
        Ok(norm)
    }

    fn apply(&mut self, lr: f64) -> Result<(), TrainError> {
        let scalars = self.config.scalars(self.step + 1, lr);
        self.cache = None;
        self.device
            .adamw(&scalars, self.grad_scales, self.summed())?;
        self.step += 1;
        self.micro_batches = 0;
        self.grad_scales = [1.0, 1.0];
        Ok(())
    }

    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.device.loss(tokens, batch)
    }

    fn snapshot(&mut self) -> Result<(Cow<'_, Params>, Cow<'_, AdamW>), TrainError> {
        if self.cache.is_none() {
            let (params, moments) = self.device.download()?;
            let optimizer = AdamW {
                config: self.config,
                step: self.step,
                moments,
            };
            self.cache = Some((params, optimizer));
        }
        let (params, optimizer) = self
            .cache
            .as_ref()
            .ok_or_else(|| TrainError::Config("no device state downloaded".into()))?;
        Ok((Cow::Borrowed(params), Cow::Borrowed(optimizer)))
    }

    fn load(&mut self, params: Params, optimizer: AdamW) -> Result<(), TrainError> {
        for (name, t) in params.iter() {
            if let Some(m) = optimizer.moments.get(name.as_str())
                && (m.m.len() != t.numel() || m.v.len() != t.numel())
            {
                return Err(TrainError::GradShape {
                    name: name.clone(),
                    params: t.numel(),
                    grads: m.m.len(),
                });
            }
        }
        self.device.upload(&params, &optimizer.moments)?;
        self.config = optimizer.config;
        self.step = optimizer.step;
        self.micro_batches = 0;
        self.grad_scales = [1.0, 1.0];
        self.cache = None;
        Ok(())
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
