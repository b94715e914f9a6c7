//! Data-parallel training: communicators, gradient buckets, ZeRO-1 sharding, rendezvous.
//!
//! # The data-parallel step
//! Every rank holds a full replica of the parameters. Of each global micro-batch of `B` sequences,
//! rank `r` takes its own contiguous rows ([`split_rows`]), computes loss and gradients on them,
//! and the ranks combine their gradients so that every rank ends with the gradient of the mean loss
//! over the whole global batch:
//! ```text
//! w_r   = targets_r / Σ targets         (each sequence of `seq` tokens has seq−1 targets)
//! g     = Σ_r w_r · g_r                  all-reduce (sum) of pre-scaled gradients, in buckets
//! loss  = Σ_r w_r · loss_r
//! ```
//! Weighting by target count makes the result the mean over all target tokens even when ranks hold
//! different numbers of rows; with equal rows `w_r = 1/N` (a power of two for 2, 4, 8 ranks, so
//! the pre-scaling is exact). Then every rank clips and steps AdamW identically
//! ([`replica::Replica`]), or, with [`Sharding::Zero1`], reduce-scatters the gradient, steps AdamW
//! on its own slice of the flat parameter vector only and all-gathers the parameters ([`zero`]).
//!
//! # Communicators
//! [`Communicator`] is the collective interface over f32 host buffers. [`LocalComm`] runs ranks as
//! threads of one process sharing memory, summing contributions in rank order 0..N so results are
//! bit-identical whatever the thread timing (CPU data parallelism: `modelspec train --ranks N`,
//! and tests). [`NcclComm`] is one rank per GPU over NCCL (cudarc's bindings); a one-rank
//! communicator on one GPU runs the same code. Ranks on several hosts find each other through
//! [`rendezvous`] (the NCCL unique id over TCP, as torchrun does).
//!
//! # Buckets and overlap
//! Gradients are grouped into buckets of about [`DEFAULT_BUCKET_BYTES`] in the reverse order of
//! the parameter table (the order in which backward completes them: head and last layers first,
//! the embedding last), see [`bucket`]. On the CPU the buckets are all-reduced one after the other
//! once backward has finished. On a GPU the reduction overlaps backward: the trainer records a CUDA
//! event on the compute stream after the last kernel that writes a bucket's gradients, a second
//! (communication) stream waits on that event and launches the bucket's `ncclAllReduce` while the
//! compute stream carries on with the layers below; before the optimizer the compute stream waits
//! on one event recorded on the communication stream after the last bucket. Buckets are
//! contiguous ranges of the flat gradient arena, so no copy into a staging buffer is needed.

pub mod bucket;
mod error;
pub mod gpu;
pub mod local;
pub mod nccl;
pub mod rendezvous;
pub mod replica;
pub mod zero;

pub use self::bucket::{BucketPlan, DEFAULT_BUCKET_BYTES, FlatLayout};
pub use self::error::DistError;
pub use self::local::LocalComm;
pub use self::nccl::NcclComm;
pub use self::rendezvous::{RendezvousConfig, RendezvousError};
pub use self::replica::{DataParallel, Replica, Sharding};

/// Collective operations over f32 host buffers among `world_size` ranks.
///
/// Every rank must call the same collectives in the same order with the same lengths.
pub trait Communicator: Send {
    /// This rank, in `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// `buf ← Σ_ranks buf` on every rank.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError>;
    /// `input` is `world_size` equal chunks; `output` (one chunk) ← Σ_ranks chunk `rank` of
    /// `input`.
    fn reduce_scatter_sum(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError>;
    /// `output` (`world_size` chunks of `input.len()`) ← every rank's `input`, in rank order.
    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), DistError>;
}

/// Rows `[start, end)` of a global batch of `rows` sequences that `rank` of `world_size` takes:
/// contiguous, balanced (sizes differ by at most one, the first ranks take the extra rows).
///
/// ```
/// use modelspec_runtime::dist::split_rows;
/// assert_eq!(split_rows(8, 4, 1), 2..4);
/// assert_eq!(split_rows(5, 2, 0), 0..3);
/// ```
pub fn split_rows(rows: usize, world_size: usize, rank: usize) -> std::ops::Range<usize> {
    let base = rows / world_size;
    let extra = rows % world_size;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

/// Joins the threads of the ranks of one collective run and returns its result: the first real
/// failure in rank order (a rank's `PeerFailed` only echoes another rank's failure, a panic is a
/// failure), else the first rank's value (every rank holds the same).
pub(crate) fn join_ranks<R>(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<R, DistError>>>,
) -> Result<R, DistError> {
    let mut first = None;
    let mut failure = None;
    for h in handles {
        let result = h
            .join()
            .unwrap_or_else(|_| Err(DistError::Config("a rank's thread panicked".into())));
        match result {
            Ok(v) if first.is_none() => first = Some(v),
            Ok(_) | Err(DistError::PeerFailed { .. }) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    match (failure, first) {
        (Some(e), _) => Err(e),
        (None, Some(v)) => Ok(v),
        (None, None) => Err(DistError::Config("no rank returned".into())),
    }
}

impl<C: Communicator + ?Sized> Communicator for Box<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        (**self).all_reduce_sum(buf)
    }
    fn reduce_scatter_sum(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError> {
        (**self).reduce_scatter_sum(input, output)
    }
    fn all_gather(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), DistError> {
        (**self).all_gather(input, output)
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        (**self).barrier()
    }
}
