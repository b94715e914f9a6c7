//! The data-parallel step: [`Replica`] (one rank's parameters and optimizer, for any
//! [`Communicator`]) and [`DataParallel`] (ranks as threads behind the [`Objective`] interface, for
//! the CPU trainer).

use modelspec_dsl::ir::ModelSpec;

use super::bucket::{BucketPlan, FlatLayout};
use super::zero::{Partition, ShardedAdamW};
use super::{Communicator, DistError, LocalComm, split_rows};
use crate::Params;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::{Objective, TrainError, clip};

/// How the optimizer state is laid out over the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharding {
    /// Every rank holds all of AdamW's moments and updates every parameter (plain DDP).
    #[default]
    None,
    /// ZeRO-1: each rank holds the moments of its slice of the flat parameter vector only
    /// ([`super::zero`]).
    Zero1,
}

/// This rank's share of the mean over the global batch: its target tokens over all target tokens
/// (every sequence has the same length, so rows over rows).
fn weight(rows: usize, global_rows: usize) -> f32 {
    (rows as f64 / global_rows as f64) as f32
}

/// Combines one rank's local loss and gradient into the global-batch ones: every rank learns
/// whether any failed (so none waits on a rank that stopped), the weighted losses are summed, and
/// the weighted flat gradient is all-reduced bucket by bucket (in bucket order).
fn combine<C: Communicator>(
    comm: &mut C,
    layout: &FlatLayout,
    buckets: &BucketPlan,
    local: Result<(f32, Params), TrainError>,
    w: f32,
) -> Result<(f32, Vec<f32>), DistError> {
    let rank = comm.rank();
    let (loss, flat, failure) = match local {
        Ok((loss, grads)) => (loss, Some(layout.flatten(&grads)?), None),
        Err(e) => (0.0, None, Some(e)),
    };
    let mut head = [loss * w, if failure.is_some() { 1.0 } else { 0.0 }];
    comm.all_reduce_sum(&mut head)?;
    if let Some(source) = failure {
        return Err(DistError::Train { rank, source });
    }
    if head[1] > 0.0 {
        return Err(DistError::PeerFailed { rank });
    }
    let mut flat = flat.expect("no failure");
    if w != 1.0 {
        flat.iter_mut().for_each(|x| *x *= w);
    }
    for b in &buckets.buckets {
        comm.all_reduce_sum(&mut flat[b.range.clone()])?;
    }
    Ok((head[0], flat))
}

enum Optimizer {
    Full(AdamW),
    Zero1 {
        partition: Partition,
        adamw: ShardedAdamW,
    },
}

/// What one data-parallel step did (identical on every rank).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaReport {
    /// Mean loss over the global batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One rank of a data-parallel run: a full replica of the parameters, AdamW (whole or sharded),
/// the communicator.
///
/// One [`Replica::step`]: loss and gradients of this rank's rows; gradients pre-scaled by the
/// rank's share of the global batch and all-reduced in buckets (or reduce-scattered with ZeRO-1);
/// global-norm clipping; AdamW; (ZeRO-1: all-gather of the parameters). Every rank ends the step
/// with the same parameters.
pub struct Replica<C: Communicator> {
    /// The communicator.
    pub comm: C,
    /// The flat layout of parameters and gradients.
    pub layout: FlatLayout,
    /// The gradient buckets.
    pub buckets: BucketPlan,
    /// This replica's parameters.
    pub params: Params,
    /// Global gradient-norm limit (0: none).
    pub clip: f64,
    optimizer: Optimizer,
}

impl<C: Communicator> Replica<C> {
    /// A replica of `params` (the same on every rank) for `spec`.
    pub fn new(
        comm: C,
        spec: &ModelSpec,
        params: Params,
        adamw: AdamWConfig,
        clip: f64,
        sharding: Sharding,
        bucket_bytes: usize,
    ) -> Self {
        let layout = FlatLayout::for_spec(spec);
        let buckets = BucketPlan::new(&layout, bucket_bytes);
        let optimizer = match sharding {
            Sharding::None => Optimizer::Full(AdamW::new(adamw)),
            Sharding::Zero1 => {
                let partition = Partition::new(layout.len, comm.world_size());
                let adamw = ShardedAdamW::new(adamw, &layout, &partition, comm.rank());
                Optimizer::Zero1 { partition, adamw }
            }
        };
        Replica {
            comm,
            layout,
            buckets,
            params,
            clip,
            optimizer,
        }
    }

    /// The optimizer when it is not sharded (its moments cover every parameter, so it can be
    /// checkpointed as the single-process trainer's).
    pub fn adamw(&self) -> Option<&AdamW> {
        match &self.optimizer {
            Optimizer::Full(a) => Some(a),
            Optimizer::Zero1 { .. } => None,
        }
    }

    /// Optimizer steps taken.
    pub fn steps_taken(&self) -> u64 {
        match &self.optimizer {
            Optimizer::Full(a) => a.step,
            Optimizer::Zero1 { adamw, .. } => adamw.inner.step,
        }
    }

    /// One step: `tokens` are this rank's `rows` sequences of a global batch of `global_rows`;
    /// `seed` keys dropout; `lr` is the step's learning rate.
    pub fn step<O: Objective>(
        &mut self,
        objective: &mut O,
        tokens: &[u32],
        rows: usize,
        global_rows: usize,
        seed: u64,
        lr: f64,
    ) -> Result<ReplicaReport, DistError> {
        let rank = self.comm.rank();
        let train_err = |source| DistError::Train { rank, source };
        let step = self.steps_taken();
        let local = objective.loss_and_grads(&self.params, tokens, rows, seed);
        let w = weight(rows, global_rows);
        match &mut self.optimizer {
            Optimizer::Full(adamw) => {
                let (loss, flat) = combine(&mut self.comm, &self.layout, &self.buckets, local, w)?;
                let mut grads = self.layout.unflatten(&flat)?;
                // The single-process trainer's clipping and update, on the same tensors in the
                // same (name) order, so one rank reproduces it bit for bit.
                let grad_norm = clip::clip_params(&mut grads, self.clip);
                finite(step, loss, grad_norm).map_err(train_err)?;
                adamw
                    .step_params(lr, &mut self.params, &grads)
                    .map_err(train_err)?;
                Ok(ReplicaReport { loss, grad_norm })
            }
            Optimizer::Zero1 { partition, adamw } => {
                let (loss, mut padded) = {
                    // Reduce-scatter replaces the bucket all-reduce: flatten and weight locally.
                    let (loss, flat, failure) = match local {
                        Ok((loss, grads)) => (loss, Some(self.layout.flatten(&grads)?), None),
                        Err(e) => (0.0, None, Some(e)),
                    };
                    let mut head = [loss * w, if failure.is_some() { 1.0 } else { 0.0 }];
                    self.comm.all_reduce_sum(&mut head)?;
                    if let Some(source) = failure {
                        return Err(train_err(source));
                    }
                    if head[1] > 0.0 {
                        return Err(DistError::PeerFailed { rank });
                    }
                    let mut flat = flat.expect("no failure");
                    if w != 1.0 {
                        flat.iter_mut().for_each(|x| *x *= w);
                    }
                    (head[0], flat)
                };
                padded.resize(partition.padded_len(), 0.0);
                let mut shard = vec![0.0f32; partition.shard];
                self.comm.reduce_scatter_sum(&padded, &mut shard)?;
                let range = partition.range(rank);
                let grad = &mut shard[..range.len()];
                // The global norm from every rank's f64 sum of squares, exchanged bit-exactly (as
                // two f32 bit patterns) and added in rank order: the same value on every rank.
                let local_sq = clip::global_norm([&*grad]).powi(2);
                let bits = local_sq.to_bits();
                let mine = [
                    f32::from_bits(bits as u32),
                    f32::from_bits((bits >> 32) as u32),
                ];
                let mut all = vec![0.0f32; 2 * partition.world_size];
                self.comm.all_gather(&mine, &mut all)?;
                let total: f64 = all
                    .chunks_exact(2)
                    .map(|p| {
                        f64::from_bits(
                            u64::from(p[0].to_bits()) | (u64::from(p[1].to_bits()) << 32),
                        )
                    })
                    .sum();
                let grad_norm = total.sqrt();
                if self.clip > 0.0 {
                    let factor = clip::clip_factor(grad_norm, self.clip);
                    if factor != 1.0 && grad_norm.is_finite() {
                        grad.iter_mut().for_each(|x| *x *= factor);
                    }
                }
                finite(step, loss, grad_norm).map_err(train_err)?;
                let mut values = self.layout.flatten(&self.params)?;
                let mut mine = vec![0.0f32; partition.shard];
                adamw
                    .step(&self.layout, lr, &mut values[range.clone()], grad)
                    .map_err(train_err)?;
                mine[..range.len()].copy_from_slice(&values[range]);
                let mut gathered = vec![0.0f32; partition.padded_len()];
                self.comm.all_gather(&mine, &mut gathered)?;
                self.layout.scatter_into(&gathered, &mut self.params)?;
                Ok(ReplicaReport { loss, grad_norm })
            }
        }
    }
}

fn finite(step: u64, loss: f32, grad_norm: f64) -> Result<(), TrainError> {
    if loss.is_finite() && grad_norm.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFinite {
            step,
            loss,
            grad_norm,
        })
    }
}

/// CPU data parallelism behind the [`Objective`] interface: `ranks` threads, each with its own
/// copy of the objective and a [`LocalComm`], split every micro-batch by rows ([`split_rows`]),
/// and return the global-batch loss and gradient (weighted, bucket-wise all-reduced, identical on
/// every rank). The [`crate::train::Trainer`] then clips and steps once: in one process the
/// replicas would be identical, so one optimizer stands for all of them.
///
/// Dropout: each rank keys its masks by the same seed and its *local* row index, so with dropout
/// on, N ranks draw other masks than one rank would (the loss curves then agree in distribution,
/// not per step).
pub struct DataParallel<O> {
    objectives: Vec<O>,
    comms: Vec<LocalComm>,
    layout: FlatLayout,
    buckets: BucketPlan,
}

impl<O: Objective + Clone + Send> DataParallel<O> {
    /// `ranks` copies of `objective` for `spec`, gradient buckets of `bucket_bytes`.
    pub fn new(
        objective: O,
        spec: &ModelSpec,
        ranks: usize,
        bucket_bytes: usize,
    ) -> Result<Self, DistError> {
        if ranks == 0 {
            return Err(DistError::Config("--ranks must be at least 1".into()));
        }
        let layout = FlatLayout::for_spec(spec);
        let buckets = BucketPlan::new(&layout, bucket_bytes);
        Ok(DataParallel {
            objectives: vec![objective; ranks],
            comms: LocalComm::group(ranks),
            layout,
            buckets,
        })
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.comms.len()
    }

    /// The gradient buckets.
    pub fn buckets(&self) -> &BucketPlan {
        &self.buckets
    }

    /// Rank 0's objective (for evaluation and sampling, which need no data parallelism).
    pub fn first_mut(&mut self) -> &mut O {
        &mut self.objectives[0]
    }
}

impl<O: Objective + Clone + Send> Objective for DataParallel<O> {
    fn loss_and_grads(
        &mut self,
        params: &Params,
        tokens: &[u32],
        batch: usize,
        seed: u64,
    ) -> Result<(f32, Params), TrainError> {
        let n = self.comms.len();
        if n == 1 {
            // One rank: the weight is 1 and every collective a no-op; skip the thread and copies.
            return self.objectives[0].loss_and_grads(params, tokens, batch, seed);
        }
        if batch < n {
            return Err(TrainError::Config(format!(
                "a batch of {batch} sequences cannot be split over {n} ranks: use --batch of at least {n}"
            )));
        }
        let seq = tokens.len() / batch;
        let (layout, buckets) = (&self.layout, &self.buckets);
        let joined = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .objectives
                .iter_mut()
                .zip(self.comms.iter_mut())
                .enumerate()
                .map(|(rank, (objective, comm))| {
                    s.spawn(move || {
                        let rows = split_rows(batch, n, rank);
                        let mine = &tokens[rows.start * seq..rows.end * seq];
                        let local = objective.loss_and_grads(params, mine, rows.len(), seed);
                        combine(comm, layout, buckets, local, weight(rows.len(), batch))
                    })
                })
                .collect();
            super::join_ranks(handles)
        });
        // Every rank holds the same result; report the first real failure if any.
        let (loss, flat) = joined.map_err(|e| match e {
            DistError::Train { source, .. } => source,
            e => TrainError::Model(Box::new(e)),
        })?;
        let grads = self
            .layout
            .unflatten(&flat)
            .map_err(|e| TrainError::Model(Box::new(e)))?;
        Ok((loss, grads))
    }

    fn loss(&mut self, params: &Params, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.objectives[0].loss(params, tokens, batch)
    }
}
