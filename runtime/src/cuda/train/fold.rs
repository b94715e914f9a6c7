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
//!   input: the GEMM writes `resid_mid` ([`Step::folds_into_sum`]);
//! - at a layer's end, a last `Linear` whose output is the MLP branch: the GEMM writes the next
//!   layer's input (or, after the last layer, the final norm's input), which the next layer's
//!   entry then reads as it is ([`Step::folds_into_next`]).
//!
//! Parallel blocks, post-norms (their branch outputs are kept, not in `tmp`) and mixture-of-experts
//! outputs are not folded. Recomputation folds as the forward did inside a layer (the redone GEMM
//! writes the same sum); the layer-end fold is forward-only (recomputation never rebuilds the next
//! layer's input). The backward is unchanged: it reads the sums and the projections' inputs, never
//! the branch outputs. The sum is rounded once to the compute dtype instead of twice (the
//! projection's output, then the sum), so bf16 results differ from the unfolded step's in the
//! last bits, as two roundings differ from one.

use super::super::error::Result;
use super::super::gpu::DevPtr;
use super::Step;
use modelspec_dsl::program::Fusion;

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
    /// (a `ResidualNorm`) would form from its output.
    pub(super) fn folds_into_sum(&self, i: usize, j: usize) -> bool {
        let run = &self.run[i];
        let ks = &run.kernels;
        let Some(kn) = ks.get(j) else { return false };
        self.resid_epilogue
            && !run.lp.parallel
            && kn.fusion == Fusion::Linear
            && ks.get(j + 1).is_some_and(|r| {
                r.fusion == Fusion::ResidualNorm && r.inputs.get(1) == Some(&kn.outputs[0])
            })
            && self.act_buf(i, kn.outputs[0]) == self.buf.tmp
    }

    /// Whether layer `i`'s last kernel, its MLP's down projection, writes the layer's output (the
    /// next layer's input, or the final norm's) in the forward.
    pub(super) fn folds_into_next(&self, i: usize) -> bool {
        let run = &self.run[i];
        self.resid_epilogue
            && !run.lp.parallel
            && run
                .kernels
                .last()
                .is_some_and(|kn| kn.fusion == Fusion::Linear && kn.outputs[0] == run.lp.mlp_branch)
            && self.act_buf(i, run.lp.mlp_branch) == self.buf.tmp
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
