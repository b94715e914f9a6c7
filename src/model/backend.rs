//! Where a generated model runs: [`Backend`], the device it was placed on plus, on a GPU, the
//! GPU trainers that compute its logits, loss and gradients.
//!
//! The host tensors of the generated struct stay the model's parameters on every device (what
//! `params`, `params_mut`, `decode` and `generate` read). On `Device::Cuda(n)`, `logits` and
//! `loss_and_grads` run [`GpuTrainer::forward_backward`] (f32 compute, no optimizer step), one
//! trainer per `(batch, seq)` shape, built on first use. A trainer holds a copy of the parameters
//! on the GPU; it is refreshed from the host tensors when `params_mut` was called since the
//! trainer's last upload (a generation counter), so an optimizer that updates the model through
//! `params_mut` is always seen, while repeated calls on unchanged weights upload nothing.
//!
//! `decode` and `generate` run on the GPU decoder ([`GpuDecoder`], f32), whose key/value cache
//! lives on the device: one decoder per model, holding one sequence. It is reused while each
//! window extends the ids it holds (so a decoding loop runs one new id per call) and starts over
//! otherwise; the same generation counter rebuilds it after `params_mut`. The host `KvCache`
//! argument of `decode` is not used on a GPU: the device cache depends only on the weights and
//! the ids, so any window may be passed at any time.
//!
//! A backend built with [`Backend::with_walk`] (what generated models get) carries the model's
//! generated kernel walk (`{Type}Kernels::KERNELS`): it is checked against this runtime's lowering
//! of the spec when the backend is built, and every GPU trainer and decoder of the model runs
//! those rows ([`GpuTrainer::with_walk`], [`GpuDecoder::with_walk`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::dsl::ModelSpec;
use crate::dsl::program::{KernelRow, check_walk};
use crate::model::{Error, ParamRefs, Result};
use crate::runtime::cuda::decode::{DecodeError, GpuDecoder};
use crate::runtime::cuda::{Dtype, Gpu, GpuTrainer};
use crate::runtime::exec::{Executor, Mode};
use crate::runtime::train::sample::SampleOptions;
use crate::runtime::{Device, Params, Tensor};

/// At most this many shapes keep a GPU trainer (each holds parameters, gradients, optimizer
/// moments and activations on the GPU); the least recently used one is dropped past it.
const MAX_TRAINERS: usize = 2;

/// The device of a generated model and, on a GPU, its trainers (one per `(batch, seq)`).
///
/// Part of the generated struct (a hidden field); users see it only through
/// [`crate::Model::device`]. Cloning a model keeps its device and starts with no trainers.
pub struct Backend {
    device: Device,
    /// Bumped by every `params_mut`: the host parameters may have changed since then.
    generation: u64,
    gpu: Option<Mutex<GpuState>>,
    /// The generated kernel walk the GPU executors run (checked), if the model has one.
    walk: Option<Walk>,
}

/// A generated kernel walk: one slice of kernel rows per layer.
type Walk = &'static [&'static [KernelRow]];

/// The GPU context and the trainers built on it.
struct GpuState {
    gpu: Arc<Gpu>,
    /// By `(batch, seq)`: the trainer, the parameter generation it holds, and when it was last
    /// used (a counter).
    trainers: BTreeMap<(usize, usize), Slot>,
    clock: u64,
    /// The decoder of `decode` and `generate`, with the parameter generation it holds.
    decoder: Option<(GpuDecoder, u64)>,
}

struct Slot {
    trainer: GpuTrainer,
    uploaded: u64,
    used: u64,
}

impl Backend {
    /// The CPU backend (what `from_params` gives a model).
    pub fn cpu() -> Backend {
        Backend {
            device: Device::Cpu,
            generation: 0,
            gpu: None,
            walk: None,
        }
    }

    /// A backend on `device` for `spec`: on a GPU, opens the device and checks that the GPU
    /// trainer runs every layer of `spec`, so that an unsupported model fails here rather than
    /// on its first call.
    pub fn new(device: &Device, spec: &ModelSpec) -> Result<Backend> {
        Self::build(device, spec, None)
    }

    /// As [`Backend::new`] for a generated model whose GPU trainers and decoder run `walk`, its
    /// generated kernel walk (one slice of rows per layer). On a GPU the walk is checked against
    /// this runtime's lowering of `spec` first: generated code from another modelspec is refused
    /// with the first layer and kernel that differ, before the device is opened. The CPU runs
    /// the generated steps and does not read the walk.
    pub fn with_walk(device: &Device, spec: &ModelSpec, walk: Walk) -> Result<Backend> {
        Self::build(device, spec, Some(walk))
    }

    fn build(device: &Device, spec: &ModelSpec, walk: Option<Walk>) -> Result<Backend> {
        let Device::Cuda(ordinal) = *device else {
            return Ok(Backend::cpu());
        };
        if let Some(feature) = GpuTrainer::unsupported_feature(spec) {
            return Err(crate::runtime::Error::Device(format!(
                "`{}` uses {feature}, which the GPU trainer does not run yet; use Device::cpu()",
                spec.name
            ))
            .into());
        }
        if let Some(walk) = walk {
            check_walk(spec, walk).map_err(crate::runtime::cuda::CudaError::from)?;
        }
        let gpu = Gpu::new(ordinal)?;
        Ok(Backend {
            device: *device,
            generation: 0,
            walk,
            gpu: Some(Mutex::new(GpuState {
                gpu,
                trainers: BTreeMap::new(),
                clock: 0,
                decoder: None,
            })),
        })
    }

    /// The device the model runs `logits` and `loss_and_grads` on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The host parameters may change (called by `params_mut`): every GPU trainer uploads them
    /// again before its next call.
    pub fn params_changed(&mut self) {
        self.generation += 1;
    }

    /// Logits `[batch, seq, vocab_padded]` on the GPU. The trainer returns the `vocab` valid
    /// columns; padded columns (a spec with `pad`) are `-inf`, since the GPU's softmax excludes
    /// them.
    pub(crate) fn gpu_logits(
        &self,
        spec: &ModelSpec,
        params: &ParamRefs<'_>,
        tokens: &[u32],
        batch: usize,
    ) -> Result<Vec<f32>> {
        let logits = self.with_trainer(spec, params, tokens, batch, |trainer| {
            trainer.set_aux_loss(false);
            trainer
                .forward_backward(true)?
                .ok_or_else(|| gpu_error("the GPU trainer returned no logits"))
        })?;
        let (vocab, padded) = (spec.vocab as usize, spec.vocab_padded as usize);
        if vocab == padded {
            return Ok(logits);
        }
        let mut out = Vec::with_capacity(tokens.len() * padded);
        for row in logits.chunks_exact(vocab) {
            out.extend_from_slice(row);
            out.resize(out.len() + padded - vocab, f32::NEG_INFINITY);
        }
        Ok(out)
    }

    /// The training loss (with the MoE load-balancing loss, as the CPU's training run) and every
    /// parameter's gradient, on the GPU.
    pub(crate) fn gpu_loss_and_grads(
        &self,
        spec: &ModelSpec,
        params: &ParamRefs<'_>,
        tokens: &[u32],
        batch: usize,
    ) -> Result<(f32, Params)> {
        self.with_trainer(spec, params, tokens, batch, |trainer| {
            trainer.set_aux_loss(true);
            trainer.forward_backward(false)?;
            Ok((trainer.loss()?, trainer.grads()?))
        })
    }

    /// The logits `[vocab_padded]` of the last position of `window`, on the GPU decoder (f32):
    /// only the new ids run while `window` extends what its cache holds.
    pub(crate) fn gpu_decode(
        &self,
        spec: &ModelSpec,
        params: &ParamRefs<'_>,
        window: &[u32],
    ) -> Result<Vec<f32>> {
        self.with_decoder(spec, params, window.len(), |dec| {
            dec.decode(window).map_err(decode_error)
        })
    }

    /// `prompt` followed by `tokens` sampled ids (the CPU's sampler and window), with logits
    /// from the GPU decoder.
    pub(crate) fn gpu_generate(
        &self,
        spec: &ModelSpec,
        params: &ParamRefs<'_>,
        prompt: &[u32],
        tokens: usize,
        options: SampleOptions,
        seed: u64,
    ) -> Result<Vec<u32>> {
        self.with_decoder(spec, params, prompt.len() + tokens, |dec| {
            Ok(dec.generate(
                prompt,
                (tokens, spec.vocab as usize),
                options,
                &[],
                seed,
                |_| {},
            )?)
        })
    }

    /// The model's GPU state, locked (an error on the CPU or after a panicked GPU call).
    fn gpu_state(&self) -> Result<std::sync::MutexGuard<'_, GpuState>> {
        self.gpu
            .as_ref()
            .ok_or_else(|| gpu_error("the model is not on a GPU"))?
            .lock()
            .map_err(|_| gpu_error("a previous GPU call panicked"))
    }

    /// Runs `f` on the model's GPU decoder (built with room for `positions`, or rebuilt when the
    /// parameters changed since it was built).
    fn with_decoder<T>(
        &self,
        spec: &ModelSpec,
        params: &ParamRefs<'_>,
        positions: usize,
        f: impl FnOnce(&mut GpuDecoder) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.gpu_state()?;
        let state = &mut *state;
        let stale = state
            .decoder
            .as_ref()
            .is_none_or(|(_, uploaded)| *uploaded != self.generation);
        if stale {
            // Dropped first: its device memory is free for the new one.
            state.decoder = None;
            let positions = positions.max(1);
            let dec = match self.walk {
                Some(walk) => {
                    GpuDecoder::with_walk(&state.gpu, spec, Dtype::F32, params, 1, positions, walk)
                }
                None => GpuDecoder::new(&state.gpu, spec, Dtype::F32, params, 1, positions),
            }
            .map_err(decode_error)?;
            state.decoder = Some((dec, self.generation));
        }
        let (dec, _) = state
            .decoder
            .as_mut()
            .ok_or_else(|| gpu_error("no GPU decoder"))?;
        f(dec)
    }

    /// Runs `f` on the trainer of this call's shape, after checking the call as the CPU does
    /// (same errors) and uploading the parameters when they changed.
    fn with_trainer<T>(
        &self,
        spec: &ModelSpec,
        params: &ParamRefs<'_>,
        tokens: &[u32],
        batch: usize,
        f: impl FnOnce(&mut GpuTrainer) -> Result<T>,
    ) -> Result<T> {
        // The CPU executor's checks: batch, sequence length, token range, parameter shapes.
        Executor::new(spec)?.run::<f32>(params, tokens, batch, Mode::Eval)?;
        let seq = tokens.len() / batch;
        let mut state = self.gpu_state()?;
        let state = &mut *state;
        state.clock += 1;
        let key = (batch, seq);
        if !state.trainers.contains_key(&key) {
            if state.trainers.len() >= MAX_TRAINERS
                && let Some(oldest) = state
                    .trainers
                    .iter()
                    .min_by_key(|(_, slot)| slot.used)
                    .map(|(k, _)| *k)
            {
                state.trainers.remove(&oldest);
            }
            let trainer = match self.walk {
                Some(walk) => {
                    GpuTrainer::with_walk(&state.gpu, spec, Dtype::F32, batch, seq, 0, walk)?
                }
                None => GpuTrainer::new(&state.gpu, spec, Dtype::F32, batch, seq, 0)?,
            };
            state.trainers.insert(
                key,
                Slot {
                    trainer,
                    // Never uploaded: forces the first upload below.
                    uploaded: u64::MAX,
                    used: 0,
                },
            );
        }
        let slot = state
            .trainers
            .get_mut(&key)
            .ok_or_else(|| gpu_error("no trainer for this shape"))?;
        slot.used = state.clock;
        if slot.uploaded != self.generation {
            slot.trainer.set_params(&owned(params))?;
            slot.uploaded = self.generation;
        }
        slot.trainer.set_batch(tokens, None)?;
        f(&mut slot.trainer)
    }
}

/// A copy of borrowed parameters (what [`GpuTrainer::set_params`] takes).
fn owned(params: &ParamRefs<'_>) -> Params {
    let mut out = Params::new();
    for (name, tensor) in params {
        out.insert(name.clone(), Tensor::clone(tensor));
    }
    out
}

/// A GPU decoding error as the model API reports it: CUDA errors as CUDA errors, invalid input
/// with the CPU's own error, and what the GPU does not run as a device error.
fn decode_error(e: DecodeError) -> Error {
    match e {
        DecodeError::Cuda(c) => Error::Cuda(c),
        DecodeError::Input(r) => Error::Runtime(r),
        DecodeError::Unsupported(why) => {
            crate::runtime::Error::Device(format!("GPU decoding: {why}")).into()
        }
    }
}

fn gpu_error(why: &str) -> Error {
    crate::runtime::Error::Device(why.to_string()).into()
}

impl Clone for Backend {
    /// The same device, no trainers yet (they are rebuilt on first use). Opening the device
    /// again cannot fail once it succeeded, so the GPU context is shared.
    fn clone(&self) -> Backend {
        Backend {
            device: self.device,
            generation: 0,
            walk: self.walk,
            gpu: self.gpu.as_ref().and_then(|state| {
                let gpu = state.lock().ok()?.gpu.clone();
                Some(Mutex::new(GpuState {
                    gpu,
                    trainers: BTreeMap::new(),
                    clock: 0,
                    decoder: None,
                }))
            }),
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("device", &self.device)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Default for Backend {
    fn default() -> Backend {
        Backend::cpu()
    }
}
