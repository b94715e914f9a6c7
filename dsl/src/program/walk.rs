//! A model's kernel walk as data that generated code carries: for every layer, its kernels
//! ([`LayerProgram::kernels`]) as [`KernelRow`]s, which name the fusion and the activations it
//! computes and reads. `model!`, `model_file!` and `modelspec generate` emit the walk as constants
//! (`{Type}Kernels::KERNELS`); the GPU executors take it from there for a generated model and
//! check it against their own lowering of the spec with [`check_walk`], so generated code that an
//! older or newer modelspec produced is refused by name instead of running a different program.
//!
//! ```
//! use modelspec_dsl::program::{Act, Fusion, KernelRow, LayerProgram, check_walk};
//! # use modelspec_dsl::codegen::tests_support::tiny_spec;
//! let spec = tiny_spec();
//! let lowered = walk_of(&spec);
//! # fn walk_of(spec: &modelspec_dsl::ModelSpec) -> Vec<Vec<modelspec_dsl::program::Kernel>> {
//! #     spec.layers.iter().map(|l| LayerProgram::structure(l).kernels()).collect()
//! # }
//! // The first kernel of every layer is its attention norm, reading the layer input.
//! const NORM: KernelRow = KernelRow {
//!     fusion: Fusion::Norm,
//!     outputs: &[Act::AttnNorm],
//!     inputs: &[Act::Input],
//! };
//! assert!(NORM.is(&lowered[0][0]));
//! ```

use std::fmt::Write as _;

use thiserror::Error;

use super::{Act, Fusion, Kernel, LayerProgram};
use crate::ir::ModelSpec;

/// One kernel of a layer's walk as a constant: what generated code carries for each
/// [`Kernel`] of [`LayerProgram::kernels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelRow {
    /// Which fusion runs.
    pub fusion: Fusion,
    /// The activations it computes, in forward order.
    pub outputs: &'static [Act],
    /// The activations it reads that other kernels (or the layer input) produce.
    pub inputs: &'static [Act],
}

impl KernelRow {
    /// Whether this row is `kernel` (same fusion, outputs and inputs, in order).
    pub fn is(&self, kernel: &Kernel) -> bool {
        self.fusion == kernel.fusion
            && self.outputs == kernel.outputs
            && self.inputs == kernel.inputs
    }

    /// The kernel this row names.
    pub fn kernel(&self) -> Kernel {
        Kernel {
            fusion: self.fusion,
            outputs: self.outputs.to_vec(),
            inputs: self.inputs.to_vec(),
        }
    }
}

/// One launch as text: `Fusion(outputs) <- inputs`, e.g. `Linear(attn_out) <- attn`.
pub fn describe(fusion: Fusion, outputs: &[Act], inputs: &[Act]) -> String {
    let names = |acts: &[Act]| acts.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
    let mut s = format!("{fusion:?}({})", names(outputs));
    if !inputs.is_empty() {
        let _ = write!(s, " <- {}", names(inputs));
    }
    s
}

/// A layer's launch sequence on one line, e.g. `Norm(attn_norm) -> QkvRope(q, k, v) -> ...`
/// (what the generated walk's doc comments read).
pub fn launch_sequence(kernels: &[Kernel]) -> String {
    kernels
        .iter()
        .map(|k| {
            let outs: Vec<&str> = k.outputs.iter().map(|a| a.name()).collect();
            format!("{:?}({})", k.fusion, outs.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Every layer's kernels as this modelspec lowers `spec` (what the walk is checked against).
pub fn lowered_walk(spec: &ModelSpec) -> Vec<Vec<Kernel>> {
    spec.layers
        .iter()
        .map(|l| LayerProgram::structure(l).kernels())
        .collect()
}

/// Why a generated kernel walk was refused: it is not what this modelspec lowers the spec to.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WalkError {
    /// The walk has a different number of layers than the spec.
    #[error(
        "the generated kernel walk of `{model}` is stale: it has {generated} layers, the spec {spec}; \
         regenerate the code (rebuild the crate that uses `model!`, or run `modelspec generate` again)"
    )]
    Layers {
        /// The model's name.
        model: String,
        /// Layers in the walk.
        generated: usize,
        /// Layers in the spec.
        spec: usize,
    },
    /// A layer's kernel differs from the lowering (or is missing on one side).
    #[error(
        "the generated kernel walk of `{model}` is stale: layer {layer}, kernel {kernel} is {generated} \
         in the generated code but {lowered} in this modelspec's lowering of the spec; regenerate the \
         code (rebuild the crate that uses `model!`, or run `modelspec generate` again)"
    )]
    Kernel {
        /// The model's name.
        model: String,
        /// The first layer that differs.
        layer: usize,
        /// The first kernel of that layer that differs (its index in the layer's walk).
        kernel: usize,
        /// That kernel in the generated code (`absent` past its end).
        generated: String,
        /// That kernel in the lowering (`absent` past its end).
        lowered: String,
    },
}

/// Checks a generated walk (one slice of rows per layer) against this modelspec's lowering of
/// `spec` and returns the rows as kernels: equal, or the first layer and kernel that differ.
pub fn check_walk(spec: &ModelSpec, walk: &[&[KernelRow]]) -> Result<Vec<Vec<Kernel>>, WalkError> {
    if walk.len() != spec.layers.len() {
        return Err(WalkError::Layers {
            model: spec.name.clone(),
            generated: walk.len(),
            spec: spec.layers.len(),
        });
    }
    let quoted = |s: String| format!("`{s}`");
    for (layer, (rows, kernels)) in walk.iter().zip(lowered_walk(spec)).enumerate() {
        let n = rows.len().max(kernels.len());
        for kernel in 0..n {
            let (row, lowered) = (rows.get(kernel), kernels.get(kernel));
            if let (Some(r), Some(k)) = (row, lowered)
                && r.is(k)
            {
                continue;
            }
            return Err(WalkError::Kernel {
                model: spec.name.clone(),
                layer,
                kernel,
                generated: row.map_or("absent".into(), |r| {
                    quoted(describe(r.fusion, r.outputs, r.inputs))
                }),
                lowered: lowered.map_or("absent".into(), |k| {
                    quoted(describe(k.fusion, &k.outputs, &k.inputs))
                }),
            });
        }
    }
    Ok(walk
        .iter()
        .map(|rows| rows.iter().map(KernelRow::kernel).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::tests_support::tiny_spec;

    /// The lowering leaked into `'static` rows, as generated code would carry it.
    fn rows_of(kernels: &[Vec<Kernel>]) -> Vec<&'static [KernelRow]> {
        kernels
            .iter()
            .map(|ks| {
                let rows: Vec<KernelRow> = ks
                    .iter()
                    .map(|k| KernelRow {
                        fusion: k.fusion,
                        outputs: Vec::leak(k.outputs.clone()),
                        inputs: Vec::leak(k.inputs.clone()),
                    })
                    .collect();
                &*Vec::leak(rows)
            })
            .collect()
    }

    #[test]
    fn the_lowering_passes_and_comes_back_unchanged() {
        let spec = tiny_spec();
        let lowered = lowered_walk(&spec);
        let rows = rows_of(&lowered);
        assert_eq!(check_walk(&spec, &rows).unwrap(), lowered);
    }

    #[test]
    fn a_changed_kernel_names_its_layer_and_index() {
        let spec = tiny_spec();
        let lowered = lowered_walk(&spec);
        let last = lowered.len() - 1;
        let mut rows = rows_of(&lowered);
        let mut tampered: Vec<KernelRow> = rows[last].to_vec();
        tampered[2].fusion = Fusion::Linear;
        rows[last] = Vec::leak(tampered);
        let err = check_walk(&spec, &rows).unwrap_err().to_string();
        assert!(
            err.contains(&format!("layer {last}, kernel 2 is `Linear(attn)")),
            "{err}"
        );
        assert!(err.contains("but `Attention(attn)"), "{err}");
        assert!(err.contains("stale") && err.contains("regenerate"), "{err}");
    }

    #[test]
    fn a_missing_kernel_or_layer_is_named() {
        let spec = tiny_spec();
        let lowered = lowered_walk(&spec);
        let mut rows = rows_of(&lowered);
        let n = rows[0].len();
        rows[0] = &rows[0][..n - 1];
        let err = check_walk(&spec, &rows).unwrap_err();
        assert!(
            matches!(&err, WalkError::Kernel { layer: 0, kernel, generated, .. }
                if *kernel == n - 1 && generated == "absent"),
            "{err}"
        );
        let rows = rows_of(&lowered);
        let err = check_walk(&spec, &rows[1..]).unwrap_err();
        assert!(matches!(err, WalkError::Layers { .. }), "{err}");
    }
}
