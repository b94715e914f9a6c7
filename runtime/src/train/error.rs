//! Errors of training, checkpoints, data and sampling.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong while training or sampling.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A gradient does not match its parameter.
    #[error("gradient of `{name}` has {grads} elements, the parameter has {params}")]
    GradShape {
        /// Canonical name.
        name: String,
        /// Elements of the parameter.
        params: usize,
        /// Elements of the gradient (or of the saved moment).
        grads: usize,
    },
    /// The loss or the gradient norm stopped being finite; nothing of this step was applied or
    /// saved, so the last checkpoint is the last good state.
    #[error(
        "training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; the last good checkpoint is kept"
    )]
    NonFinite {
        /// The step (counted from 0) whose loss or gradient was not finite.
        step: u64,
        /// Its loss.
        loss: f32,
        /// Its global gradient norm before clipping.
        grad_norm: f64,
    },
    /// The data has fewer tokens than the batching needs.
    #[error("the data has {tokens} tokens; batches of {batch} windows of {seq} tokens need at least {} (and seq ≥ 2)", 2 * seq)]
    TooLittleData {
        /// Tokens available.
        tokens: usize,
        /// Tokens per window.
        seq: usize,
        /// Windows per micro-batch.
        batch: usize,
    },
    /// Loading or using a tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A checkpoint is missing, corrupt, truncated, or does not fit the run.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The training options are inconsistent.
    #[error("invalid training options: {0}")]
    Config(String),
    /// Drawing the loss plot failed.
    #[error("plot: {0}")]
    Plot(String),
    /// An output file was refused (not a regular file, or an input) or could not be written.
    #[error(transparent)]
    Output(#[from] crate::io::OutputError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The model failed to run.
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
