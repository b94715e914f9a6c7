//! Data parallelism over GPUs: one rank per GPU, gradients over NCCL.
//!
//! Each rank runs forward and backward of its rows on its GPU through [`GpuTrainer`], as a
//! [`GpuObjective`] (`forward_backward`, then the f32 gradients by name), and a [`Replica`] over an
//! [`NcclComm`] all-reduces them bucket by bucket (host-staged), clips and steps AdamW on the host
//! (or ZeRO-1: reduce-scatter, AdamW on the rank's slice, all-gather). The weights are uploaded
//! before each step. This is the correct, simple path: every rank follows the single-rank curve. It
//! is not the fast one: that keeps the weights and AdamW on the GPU and all-reduces the trainer's
//! gradient arena in place, bucket by bucket on a second stream during backward (see the [module
//! docs](super)), and needs from `GpuTrainer` mutable access to its flat gradient arena (with each
//! parameter's offset), an optimizer-only step, and per-layer events.
//!
//! Ranks of one host are threads ([`GpuDataParallel::run_local`], `modelspec train --device cuda
//! --gpus N`); ranks on several hosts are processes, one per GPU, that find each other through
//! [`super::rendezvous`] ([`GpuDataParallel::run_rank`]).

use modelspec_dsl::ir::ModelSpec;

use super::rendezvous::ID_BYTES;
use super::{DistError, NcclComm, Replica, Sharding, split_rows};
use crate::Params;
use crate::cuda::{Dtype, Gpu, GpuTrainer};
use crate::train::data::Batcher;
use crate::train::optim::AdamW;
use crate::train::rng::SplitMix64;
use crate::train::{GpuObjective, StepReport, TrainOptions, TrainState};

/// Where one rank runs.
#[derive(Debug, Clone, Copy)]
pub struct GpuRank {
    /// Rank over all hosts.
    pub rank: usize,
    /// Ranks over all hosts.
    pub world_size: usize,
    /// The GPU of this rank on its host.
    pub ordinal: usize,
    /// The NCCL unique id (the same on every rank).
    pub id: [u8; ID_BYTES],
}

/// What a run ends with (rank 0's view; every rank holds the same parameters).
pub struct GpuRunResult {
    /// The trained parameters.
    pub params: Params,
    /// The loss of every step.
    pub losses: Vec<f32>,
    /// The optimizer, unless sharded (ZeRO-1 moments are spread over the ranks).
    pub optimizer: Option<AdamW>,
    /// Step, RNG, data cursor, options, spec: a checkpoint's state.
    pub state: TrainState,
}

/// A data-parallel run over GPUs: the same options, batching and schedule as the CPU trainer.
pub struct GpuDataParallel<'a> {
    /// The model.
    pub spec: &'a ModelSpec,
    /// The run's options; `batch` is the global batch (split over the ranks), `accumulate` must
    /// be 1.
    pub options: &'a TrainOptions,
    /// The GPU trainer's compute dtype.
    pub dtype: Dtype,
    /// Gradient bucket size in bytes.
    pub bucket_bytes: usize,
    /// Plain or ZeRO-1 optimizer state.
    pub sharding: Sharding,
}

impl GpuDataParallel<'_> {
    /// Runs `gpus` ranks as threads of this process, one per GPU `0..gpus`.
    pub fn run_local(
        &self,
        gpus: usize,
        params: Params,
        tokens: &[u32],
        on_step: &(dyn Fn(&StepReport) + Sync),
    ) -> Result<GpuRunResult, DistError> {
        let count = crate::cuda::device_count()?;
        if gpus == 0 || gpus > count {
            return Err(DistError::Config(format!(
                "--gpus {gpus}: this machine has {count} GPU(s)"
            )));
        }
        let id = NcclComm::unique_id()?;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..gpus)
                .map(|rank| {
                    let params = params.clone();
                    s.spawn(move || {
                        let where_ = GpuRank {
                            rank,
                            world_size: gpus,
                            ordinal: rank,
                            id,
                        };
                        self.run_rank(where_, params, tokens, on_step)
                    })
                })
                .collect();
            super::join_ranks(handles)
        })
    }

    /// Runs one rank (this thread or process) to the end of the run; `on_step` is called on rank
    /// 0 after each step.
    pub fn run_rank(
        &self,
        at: GpuRank,
        params: Params,
        tokens: &[u32],
        on_step: &(dyn Fn(&StepReport) + Sync),
    ) -> Result<GpuRunResult, DistError> {
        let o = self.options;
        if o.accumulate != 1 {
            return Err(DistError::Config(
                "gradient accumulation is not supported with --gpus yet: raise --batch instead"
                    .into(),
            ));
        }
        if o.batch < at.world_size {
            return Err(DistError::Config(format!(
                "--batch {} cannot be split over {} GPUs",
                o.batch, at.world_size
            )));
        }
        let rows = split_rows(o.batch, at.world_size, at.rank);
        let gpu = Gpu::new(at.ordinal)?;
        let trainer = GpuTrainer::new(&gpu, self.spec, self.dtype, rows.len(), o.seq, o.seed)?;
        let mut objective = GpuObjective::new(trainer, rows.len(), o.seq);
        let comm = NcclComm::new(&gpu, at.rank, at.world_size, at.id)?;
        let mut replica = Replica::new(
            comm,
            self.spec,
            params,
            o.adamw,
            o.clip,
            self.sharding,
            self.bucket_bytes,
        );
        let mut batcher =
            Batcher::new(tokens.to_vec(), o.batch, o.seq, o.seed).map_err(|source| {
                DistError::Train {
                    rank: at.rank,
                    source,
                }
            })?;
        // The CPU trainer's dropout-seed stream, kept so a checkpoint resumes the same way.
        let mut rng = SplitMix64::new(o.seed ^ 0x005E_ED0F_D20F_0017);
        let mut losses = Vec::new();
        for step in 0..o.steps {
            let batch = batcher.next_batch();
            let seed = rng.next_u64();
            let lr = o.schedule.lr(step);
            let mine = &batch[rows.start * o.seq..rows.end * o.seq];
            let report = replica.step(&mut objective, mine, rows.len(), o.batch, seed, lr)?;
            losses.push(report.loss);
            if at.rank == 0 {
                on_step(&StepReport {
                    step,
                    loss: report.loss,
                    lr,
                    grad_norm: report.grad_norm,
                    tokens: o.batch * o.seq,
                });
            }
        }
        let state = TrainState {
            step: o.steps,
            rng,
            cursor: batcher.cursor(),
            options: o.clone(),
            spec: self.spec.clone(),
        };
        Ok(GpuRunResult {
            optimizer: replica.adamw().cloned(),
            params: replica.params,
            losses,
            state,
        })
    }
}
