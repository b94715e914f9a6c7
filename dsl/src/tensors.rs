//! Named activations of a layer: the vocabulary of `save(...)` / `recompute(...)` clauses.
//!
//! These are the public tensors of the layer's program ([`crate::program`]), read from it (the
//! program is the one encoding of a block), and `check` rejects a checkpoint clause naming a
//! tensor the layer does not have. The layer input (`input`) is always saved and is not listed.

use crate::ir::Layer;
use crate::program::LayerProgram;

/// The named intermediate activations of `layer`, in forward order.
pub fn layer_tensors(layer: &Layer) -> Vec<&'static str> {
    LayerProgram::structure(layer).tensor_names()
}
