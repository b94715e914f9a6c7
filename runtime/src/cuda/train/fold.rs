//! Residual adds folded into the projections' GEMMs (`MODELSPEC_RESIDUAL_EPILOGUE=on`, or
//! [`GpuTrainer::set_residual_epilogue`](super::GpuTrainer)).
//!
//! A sequential block's branch output (the attention output projection's, the MLP down
//! projection's) is read by one residual add only, so it lives in the scratch `tmp` and the next
//! norm adds it to the stream as it normalises: the GEMM writes `tmp`, the norm reads the stream
//! and `tmp` and writes the sum and the normalised rows (four `[n, d_model]` passes). With the
//! fold, the GEMM writes the sum itself (cuBLASLt's C input: `sum = x W^T + bias + stream`, C
//! and D distinct) and the norm reads it only (two passes): one `[n, d_model]` pass less a
//! residual add, 24 a gpt2-124m step. Two places:
//! - inside a layer, a `Linear` whose output the next kernel, a `ResidualNorm`, adds to the layer
//!   input: the GEMM writes `resid_mid` ([`Step::folds_into_sum`], [`sum_fold`]);
//! - at a layer's end, a last `Linear` whose output is the MLP branch: the GEMM writes the next
//!   layer's input (or, after the last layer, the final norm's input), which the next layer's
//!   entry then reads as it is ([`Step::folds_into_next`]).
//!
//! In a parallel block the attention branch is added to the input right after it is computed
//! (into `resid_mid`, before the MLP branch reuses `tmp`): its GEMM writes that sum, and the MLP's
//! down projection writes the layer's output as in a sequential block. Post-norms (their branch
//! outputs are kept, not in `tmp`) and mixture-of-experts outputs are not folded. Recomputation folds as the forward did inside a layer (the redone GEMM
//! writes the same sum); the layer-end fold is forward-only (recomputation never rebuilds the next
//! layer's input). The backward is unchanged: it reads the sums and the projections' inputs, never
//! the branch outputs. The sum is rounded once to the compute dtype instead of twice (the
//! projection's output, then the sum), so bf16 results differ from the unfolded step's in the
//! last bits, as two roundings differ from one.

use super::super::error::Result;
use super::super::gpu::DevPtr;
use super::Step;
use super::forward::in_tmp;
use super::saves::LayerRun;
use modelspec_dsl::program::Fusion;

/// Whether kernel `j` of `run`, a projection whose output lives in `tmp`, writes a branch that is
/// added to the layer input into `resid_mid`: in a sequential block by the next kernel, a
/// `ResidualNorm`; in a parallel block, the attention branch, by the add right after it
/// (`Step::layer_fwd`).
pub(super) fn sum_fold(run: &LayerRun, j: usize) -> bool {
    let ks = &run.kernels;
    let Some(kn) = ks.get(j) else { return false };
    if kn.fusion != Fusion::Linear || !in_tmp(&run.lp, kn.outputs[0]) {
        return false;
    }
    if run.lp.parallel {
        return kn.outputs[0] == run.lp.attn_branch;
    }
    ks.get(j + 1).is_some_and(|r| {
        r.fusion == Fusion::ResidualNorm && r.inputs.get(1) == Some(&kn.outputs[0])
    })
}

/// Whether `run`'s last kernel is a projection writing the MLP branch into `tmp`, which the layer
/// output (`resid_mid + branch`, `resid_mid` holding the attention branch in a parallel block)
/// adds.
pub(super) fn next_fold(run: &LayerRun) -> bool {
    run.kernels
        .last()
        .is_some_and(|kn| kn.fusion == Fusion::Linear && kn.outputs[0] == run.lp.mlp_branch)
        && in_tmp(&run.lp, run.lp.mlp_branch)
}

impl super::GpuTrainer {
    /// Turns the residual adds' folding into the projections' GEMMs on or off (off by default;
    /// `MODELSPEC_RESIDUAL_EPILOGUE=on` turns it on when the trainer is built). A captured step
    /// graph is captured again at the next step.
    pub fn set_residual_epilogue(&mut self, on: bool) {
        if self.resid_epilogue != on {
            self.resid_epilogue = on;
            if let super::graph::StepGraph::Ready { .. } = self.graph {
                self.graph = super::graph::StepGraph::Pending { warm: true };
            }
        }
    }
}

impl Step<'_> {
    /// Whether kernel `j` of layer `i`, a projection, writes the residual sum the next kernel
    /// (a `ResidualNorm`) would form from its output ([`sum_fold`]).
    pub(super) fn folds_into_sum(&self, i: usize, j: usize) -> bool {
        self.resid_epilogue && sum_fold(&self.run[i], j)
    }

    /// Whether layer `i`'s last kernel, its MLP's down projection, writes the layer's output (the
    /// next layer's input, or the final norm's) in the forward ([`next_fold`]).
    pub(super) fn folds_into_next(&self, i: usize) -> bool {
        self.resid_epilogue && next_fold(&self.run[i])
    }

    /// Where projection `j` of layer `i` puts its output with the residual folded in: `(stream,
    /// sum)`, or `None` where it writes its own output.
    pub(super) fn fold_target(
        &self,
        i: usize,
        j: usize,
        recompute: bool,
    ) -> Option<(DevPtr, DevPtr)> {
        let b = &self.buf.layers[i];
        if self.folds_into_sum(i, j) {
            return Some((b.resid, b.resid_mid));
        }
        let last = j + 1 == self.run[i].kernels.len();
        if !recompute && last && self.folds_into_next(i) {
            let next = match self.buf.layers.get(i + 1) {
                Some(nb) => nb.resid,
                None => self.buf.resid_final,
            };
            return Some((b.resid_mid, next));
        }
        None
    }

    /// `sum[m, n] = a[m, k] w[n, k]^T + bias + stream` (bias 0: none), one GEMM.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_residual(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        (stream, sum): (DevPtr, DevPtr),
    ) -> Result<()> {
        // SAFETY: every operand is a view into this trainer's arenas, sized at construction; the
        // sum's buffer is none of the others.
        unsafe {
            self.gemm
                .linear_residual(self.dt, m, n, k, a, w, bias, stream, sum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::saves::{LayerRun, LayerSaves};
    use super::{next_fold, sum_fold};
    use modelspec_dsl::program::{Act, Program};

    /// Per layer: the outputs of the kernels whose GEMM writes `resid_mid`, and whether the last
    /// kernel writes the layer's output.
    fn folds(name: &str) -> Vec<(Vec<Act>, bool)> {
        let path = format!("{}/../specs/{name}.mspec", env!("CARGO_MANIFEST_DIR"));
        let spec = modelspec_dsl::load::load_file(std::path::Path::new(&path))
            .expect("spec loads")
            .0;
        (Program::lower(&spec).layers.into_iter())
            .map(|lp| LayerRun::new(lp, &LayerSaves::ALL))
            .map(|run| {
                let sums = (0..run.kernels.len())
                    .filter(|&j| sum_fold(&run, j))
                    .map(|j| run.kernels[j].outputs[0])
                    .collect();
                (sums, next_fold(&run))
            })
            .collect()
    }

    #[test]
    fn pre_norm_blocks_fold_both_adds() {
        // Sequential, then parallel (one shared norm, or two).
        for name in ["gpt2-124m", "llama-3.2-1b", "phi-2", "pythia-160m"] {
            for (sums, next) in folds(name) {
                assert_eq!(sums, vec![Act::AttnOut], "{name}");
                assert!(next, "{name}");
            }
        }
    }

    #[test]
    fn post_norm_and_moe_blocks_keep_their_adds_apart() {
        // Post-norms read the branch outputs: kept, not in `tmp`.
        for name in ["olmo-2-7b", "gemma-2-2b"] {
            let all = folds(name);
            assert!(all.iter().all(|(s, n)| s.is_empty() && !n), "{name}");
        }
        // A mixture of experts: the attention's add folds, the expert output does not.
        for (sums, next) in folds("mixtral-small") {
            assert_eq!(sums, vec![Act::AttnOut]);
            assert!(!next);
        }
    }
}
