//! `modelspec train --device cuda`: the run's state on GPU 0 through the runtime's
//! [`GpuTrainer`] (with the run's `--checkpoint` plan and `--dtype`): f32 master weights,
//! gradients (and their sum under `--accumulate`) and AdamW's moments stay on the device, and
//! the fused AdamW kernel applies the host's rule (no decay for norms, biases, embeddings). Per
//! step only the loss and the global gradient norm come back. Everything else is as on the CPU:
//! the same [`Trainer`](modelspec_runtime::train::Trainer) loop, data order, schedule, clipping,
//! checkpoints (weights and moments downloaded into the CPU's format), `--resume` (uploaded
//! again, from a run of either device), loss plot and sample (on the CPU, from the downloaded
//! weights).

use std::borrow::Cow;

use anyhow::{Result, anyhow, bail};
use modelspec_dsl::ir::ModelSpec;
use modelspec_dsl::plan;
use modelspec_runtime::Params;
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuTrainer};
use modelspec_runtime::train::optim::AdamW;
use modelspec_runtime::train::{Backend, DeviceBackend, GpuModel, TrainError, TrainOptions};

/// The runtime's [`DeviceBackend`] over the GPU trainer on GPU 0, built from the run's options,
/// with the name of the device for the run's header line.
pub struct CudaBackend {
    backend: DeviceBackend<GpuModel>,
    /// `cuda:0 (device name), dtype`, for the run's header line.
    pub label: String,
}

/// Parses `--dtype` for `--device cuda` (default bf16).
pub fn dtype(arg: Option<&str>) -> Result<Dtype> {
    let text = arg.unwrap_or("bf16");
    text.parse().map_err(|e| anyhow!("--dtype {text}: {e}"))
}

impl CudaBackend {
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
            backend: DeviceBackend::new(GpuModel::new(trainer, rows, seq)),
            label,
        })
    }
}

impl Backend for CudaBackend {
    fn micro_batch(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seed: u64,
        first: bool,
    ) -> Result<f32, TrainError> {
        self.backend.micro_batch(tokens, batch, seed, first)
    }

    fn finish_gradient(&mut self, micro_batches: usize, clip: f64) -> Result<f64, TrainError> {
        self.backend.finish_gradient(micro_batches, clip)
    }

    fn apply(&mut self, lr: f64) -> Result<(), TrainError> {
        self.backend.apply(lr)
    }

    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.backend.loss(tokens, batch)
    }

    fn snapshot(&mut self) -> Result<(Cow<'_, Params>, Cow<'_, AdamW>), TrainError> {
        self.backend.snapshot()
    }

    fn load(&mut self, params: Params, optimizer: AdamW) -> Result<(), TrainError> {
        self.backend.load(params, optimizer)
    }
}
