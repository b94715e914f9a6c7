//! Errors of the runtime core (devices, tensors, the executor).

use thiserror::Error;

/// What can go wrong when running a model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// A token id is outside the vocabulary.
    #[error(
        "token id {token} at position {position} is out of range: the vocabulary has {vocab} tokens"
    )]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// Its index in the flattened `[batch, seq]` input.
        position: usize,
        /// The vocabulary size.
        vocab: u64,
    },
    /// The sequence is longer than the model's context.
    #[error("sequence length {seq} exceeds the model's context of {context} positions")]
    SequenceTooLong {
        /// Tokens per sequence.
        seq: usize,
        /// The spec's context.
        context: u64,
    },
    /// The token buffer does not split into `batch` sequences.
    #[error("{tokens} tokens do not split into a batch of {batch} equal non-empty sequences")]
    BadBatch {
        /// Number of tokens given.
        tokens: usize,
        /// The requested batch size.
        batch: usize,
    },
    /// A parameter the spec needs is missing from the parameter map.
    #[error("parameter `{0}` is missing")]
    MissingParam(String),
    /// A parameter has the wrong shape.
    #[error("parameter `{name}` has shape {got:?}, expected {expected:?}")]
    ParamShape {
        /// Canonical name.
        name: String,
        /// The shape found.
        got: Vec<usize>,
        /// The shape the spec implies.
        expected: Vec<usize>,
    },
    /// A tensor's data does not match its shape.
    #[error("shape {shape:?} needs {expected} elements, got {got}")]
    ShapeMismatch {
        /// The shape.
        shape: Vec<usize>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A checkpoint clause names a tensor this layer does not have.
    #[error(transparent)]
    Program(#[from] modelspec_dsl::program::ProgramError),
    /// The spec cannot be run (inconsistent sizes, unsupported combination).
    #[error("the spec cannot be run: {0}")]
    BadSpec(String),
    /// A checkpoint policy list has the wrong number of layers.
    #[error("the checkpoint policy has {got} layers, the model has {expected}")]
    PolicyLayers {
        /// Layers in the policy.
        got: usize,
        /// Layers in the model.
        expected: usize,
    },
    /// The checkpoint plan cannot be resolved (an infeasible budget, say).
    #[error("checkpoint plan: {0}")]
    Checkpoint(String),
    /// The requested device cannot be used.
    #[error("{0}")]
    Device(String),
    /// A step of an [`crate::exec::Run`] got the wrong input (a hidden state of another shape,
    /// another layer's saved state, backward without a training forward).
    #[error("run: {0}")]
    Run(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
