//! Where a run's parameters, gradients and AdamW moments live: the one abstraction the
//! [`Trainer`](super::Trainer) loop steps through.
//!
//! - [`HostBackend`]: parameters and moments in host memory, gradients from any [`Objective`]
//!   (the CPU executor, its data-parallel ranks, test stand-ins), AdamW on the host;
//! - [`DeviceBackend`](super::device::DeviceBackend): everything stays on a device; per step only
//!   the loss and the gradient norm come back.
//!
//! Both apply the same arithmetic (the f32 scalars of [`AdamWConfig::scalars`](super::optim::AdamWConfig::scalars),
//! the decay rule of [`decays`](super::optim::decays), the clipping factor of
//! [`clip_factor`](super::clip::clip_factor)) and save into the same checkpoint format, so a run
//! resumes on either.

use std::borrow::Cow;

use super::optim::AdamW;
use super::{Objective, TrainError, clip};
use crate::Params;

/// One optimizer step, as the [`Trainer`](super::Trainer) drives it:
/// ```text
/// for each micro-batch i: micro_batch(tokens, batch, seed, first = i == 0)   → loss
/// finish_gradient(micro_batches, clip)                                       → norm before clipping
/// apply(lr)                                                                  (skipped when not finite)
/// ```
pub trait Backend {
    /// Forward and backward of one micro-batch (`batch` rows of `tokens`, dropout keyed by
    /// `seed`); its gradient starts the step's sum when `first`, else is added to it. Returns the
    /// micro-batch's loss.
    fn micro_batch(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seed: u64,
        first: bool,
    ) -> Result<f32, TrainError>;

    /// Turns the step's gradient sum into the mean over `micro_batches`, clips it to the global
    /// norm `clip` (0: no clipping) and returns its global norm before clipping (not finite when a
    /// gradient is not).
    fn finish_gradient(&mut self, micro_batches: usize, clip: f64) -> Result<f64, TrainError>;

    /// One AdamW step with learning rate `lr` on the finished gradient; counts the step.
    fn apply(&mut self, lr: f64) -> Result<(), TrainError>;

    /// The loss of `batch` rows of `tokens` under the current parameters (no dropout).
    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError>;

    /// The parameters and the optimizer (configuration, step count, moments) in host memory:
    /// what a checkpoint saves and sampling reads.
    fn snapshot(&mut self) -> Result<(Cow<'_, Params>, Cow<'_, AdamW>), TrainError>;

    /// Replaces the parameters and the optimizer (a fresh run's initial weights and an empty
    /// [`AdamW`], or a checkpoint's).
    fn load(&mut self, params: Params, optimizer: AdamW) -> Result<(), TrainError>;
}

/// Parameters, gradients and AdamW in host memory around an [`Objective`].
pub struct HostBackend<O> {
    /// The model's loss and gradient.
    pub objective: O,
    /// The parameters being trained.
    pub params: Params,
    /// AdamW with its moments.
    pub optimizer: AdamW,
    /// The step's gradient (sum, then mean, then clipped).
    grads: Option<Params>,
}

impl<O> HostBackend<O> {
    /// `objective` with no parameters yet (see [`Backend::load`]) and a default AdamW.
    pub fn new(objective: O) -> Self {
        Self {
            objective,
            params: Params::new(),
            optimizer: AdamW::new(Default::default()),
            grads: None,
        }
    }
}

impl<O: Objective> Backend for HostBackend<O> {
    fn micro_batch(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seed: u64,
        first: bool,
    ) -> Result<f32, TrainError> {
        let (loss, g) = self
            .objective
            .loss_and_grads(&self.params, tokens, batch, seed)?;
        match (&mut self.grads, first) {
            (Some(total), false) => add_into(total, &g)?,
            (slot, _) => *slot = Some(g),
        }
        Ok(loss)
    }

    fn finish_gradient(&mut self, micro_batches: usize, max_norm: f64) -> Result<f64, TrainError> {
        let grads = self.grads.get_or_insert_with(Params::new);
        if micro_batches > 1 {
            let inv = 1.0 / micro_batches as f32;
            for t in grads.tensors.values_mut() {
                t.data_mut().iter_mut().for_each(|x| *x *= inv);
            }
        }
        Ok(clip::clip_params(grads, max_norm))
    }

    fn apply(&mut self, lr: f64) -> Result<(), TrainError> {
        let grads = self.grads.take().unwrap_or_default();
        self.optimizer.step_params(lr, &mut self.params, &grads)
    }

    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.objective.loss(&self.params, tokens, batch)
    }

    fn snapshot(&mut self) -> Result<(Cow<'_, Params>, Cow<'_, AdamW>), TrainError> {
        Ok((Cow::Borrowed(&self.params), Cow::Borrowed(&self.optimizer)))
    }

    fn load(&mut self, params: Params, optimizer: AdamW) -> Result<(), TrainError> {
        self.params = params;
        self.optimizer = optimizer;
        self.grads = None;
        Ok(())
    }
}

/// `total += more`, tensor by tensor (same names and sizes).
fn add_into(total: &mut Params, more: &Params) -> Result<(), TrainError> {
    for (name, t) in total.tensors.iter_mut() {
        let m = more
            .tensors
            .get(name)
            .ok_or_else(|| TrainError::GradShape {
                name: name.clone(),
                params: t.numel(),
                grads: 0,
            })?;
        if m.numel() != t.numel() {
            return Err(TrainError::GradShape {
                name: name.clone(),
                params: t.numel(),
                grads: m.numel(),
            });
        }
        for (a, b) in t.data_mut().iter_mut().zip(m.data()) {
            *a += *b;
        }
    }
    Ok(())
}
