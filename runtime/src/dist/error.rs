//! Errors of data-parallel training.

use thiserror::Error;

use super::rendezvous::RendezvousError;
use crate::train::TrainError;

/// What can go wrong in a collective or a data-parallel step.
#[derive(Debug, Error)]
pub enum DistError {
    /// Buffers of a collective do not have the sizes it needs.
    #[error("{op}: {why}")]
    BadBuffer {
        /// The collective.
        op: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Ranks called different collectives, or the same one with different lengths.
    #[error(
        "ranks disagree in {op}: rank {rank} contributed {len} values, rank 0 contributed {expected}"
    )]
    Mismatch {
        /// The collective.
        op: &'static str,
        /// The rank that disagrees.
        rank: usize,
        /// Its length.
        len: usize,
        /// Rank 0's length.
        expected: usize,
    },
    /// Another rank stopped (its communicator was dropped) while this one waited for it.
    #[error("rank {rank}: a peer left the communicator during {op}")]
    PeerGone {
        /// This rank.
        rank: usize,
        /// The collective.
        op: &'static str,
    },
    /// Another rank's model or optimizer failed in this step (its own error is reported there).
    #[error("rank {rank}: another rank failed in this step")]
    PeerFailed {
        /// This rank.
        rank: usize,
    },
    /// A collective did not complete in time.
    #[error("rank {rank}: {op} timed out after {seconds} s waiting for the other ranks")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The collective.
        op: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// The configuration cannot work (world size, batch split, flags).
    #[error("data parallel: {0}")]
    Config(String),
    /// libnccl could not be loaded.
    #[error(
        "NCCL is not available: libnccl could not be loaded (cudarc looks for libnccl.so; NCCL packages often ship only libnccl.so.2: link it as libnccl.so in a directory on LD_LIBRARY_PATH)"
    )]
    NcclMissing,
    /// An NCCL call failed.
    #[error("NCCL {op} failed: {why}")]
    Nccl {
        /// The call.
        op: &'static str,
        /// NCCL's status.
        why: String,
    },
    /// The CUDA side failed (no driver, no device, a copy).
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
    /// Ranks could not find each other.
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// The model or the optimizer failed on this rank.
    #[error("rank {rank}: {source}")]
    Train {
        /// This rank.
        rank: usize,
        /// The cause.
        source: TrainError,
    },
}

impl DistError {
    /// Checks that the `role` buffer (`input` of a reduce-scatter, `output` of an all-gather)
    /// holds `world` chunks of `chunk` values.
    pub(crate) fn check_chunks(
        op: &'static str,
        role: &str,
        whole: usize,
        chunk: usize,
        world: usize,
    ) -> Result<(), DistError> {
        if whole == chunk * world {
            return Ok(());
        }
        Err(DistError::BadBuffer {
            op,
            why: format!(
                "{role} has {whole} values, {world} chunks of {chunk} need {}",
                chunk * world
            ),
        })
    }
}
