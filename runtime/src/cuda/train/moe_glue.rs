//! Mixture-of-experts layers: the executor's side of [`crate::cuda::moe`] (router, dispatch,
//! expert GEMMs, combine, shared experts, aux loss; forward and backward). A MoE layer gets its
//! saved region (kept, or one shared region when the plan recomputes it), the shared MoE scratch,
//! and runs where a dense MLP would; the whole block is one checkpointing unit.
//!
//! The aux loss: a step's forward adds `coef · aux` to the trainer's aux scalar once (the layers
//! share their routing statistics, [`MoeLayer::new_all`]; the trainer zeroes the scalar at the
//! start of each step); a recomputation passes no scalar, so the statistics stay as the step's
//! forward wrote them. Backward always includes the
//! aux loss's gradient from those statistics (zero while no forward has accumulated any).

use super::super::error::Result;
use super::super::gpu::{DevPtr, Dtype, Gpu};
use super::super::moe::MoeLayer;
use super::{Step, unsupported};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::Ffn;
use modelspec_dsl::plan::program_costs;
use modelspec_dsl::program::{Act, LayerProgram};
use std::sync::Arc;

/// One MoE layer of the trainer.
pub(super) type MoeSlot = MoeLayer;

/// The MoE block of every MoE layer of `spec` (`None` for dense layers), for `rows` token rows,
/// sharing one set of aux-loss statistics.
pub(super) fn build(
    gpu: &Arc<Gpu>,
    spec: &ModelSpec,
    rows: usize,
    dt: Dtype,
) -> Result<Vec<Option<MoeSlot>>> {
    let mut out: Vec<Option<MoeSlot>> = spec.layers.iter().map(|_| None).collect();
    if !spec.layers.iter().any(|l| matches!(l.ffn, Ffn::Moe(_))) {
        return Ok(out);
    }
    for m in MoeLayer::new_all(gpu, spec, rows, dt)? {
        let i = m.layer();
        out[i] = Some(m);
    }
    Ok(out)
}

/// `(saved, scratch)` bytes of each layer's MoE block.
pub(super) fn sizes(moe: &[Option<MoeSlot>]) -> Vec<Option<(usize, usize)>> {
    moe.iter()
        .map(|m| m.as_ref().map(|m| (m.saved_bytes(), m.scratch_bytes())))
        .collect()
}

/// `(saved, scratch)` bytes of each MoE layer without a device, whose programs (or structures)
/// are `lps`: the planner's bytes of the block's unit (`LayerProgram::unit_of`: routing, expert
/// inputs and activations, outputs), for both.
pub(super) fn predicted_sizes(
    spec: &ModelSpec,
    lps: &[LayerProgram],
    batch: usize,
    seq: usize,
    dt: Dtype,
) -> Vec<Option<(usize, usize)>> {
    let unit = Act::RouterLogits.name();
    spec.layers
        .iter()
        .zip(lps)
        .map(|(l, lp)| match l.ffn {
            Ffn::Moe(_) => {
                let costs = program_costs(spec, l, lp, batch as u64, seq as u64, dt);
                let bytes: u64 = costs
                    .iter()
                    .filter(|t| t.unit == unit)
                    .map(|t| t.bytes)
                    .sum();
                Some((bytes as usize, bytes as usize))
            }
            Ffn::Mlp(_) => None,
        })
        .collect()
}

impl Step<'_> {
    fn moe_of(&self, i: usize) -> Result<&MoeLayer> {
        self.moe
            .get(i)
            .and_then(|m| m.as_ref())
            .ok_or_else(|| unsupported(format!("layer {i} has no mixture-of-experts block")))
    }

    /// Layer i's MoE block forward: `out` from `x`, aux loss into `aux` (0: none, as in a
    /// recomputation).
    pub(super) fn moe_fwd(&self, i: usize, x: DevPtr, out: DevPtr, aux: DevPtr) -> Result<()> {
        let m = self.moe_of(i)?;
        let w = |name: &str| self.p.wo(&Self::pname(i, name));
        // The experts' GEMM shapes follow the routing, so none is timed (`Gemm::with_tuning`).
        self.gemm.with_tuning(false, || {
            m.forward(
                self.gemm,
                &w,
                x,
                out,
                self.buf.layers[i].moe_saved,
                self.buf.moe_scratch,
                aux,
            )
        })
    }

    /// Layer i's MoE block backward: `dx` from `dout`, weight gradients accumulated.
    pub(super) fn moe_bwd(&self, i: usize, x: DevPtr, dout: DevPtr, dx: DevPtr) -> Result<()> {
        let m = self.moe_of(i)?;
        let w = |name: &str| self.p.wo(&Self::pname(i, name));
        let g = |name: &str| self.p.g(&Self::pname(i, name));
        // As in `moe_fwd`.
        self.gemm.with_tuning(false, || {
            m.backward(
                self.gemm,
                &w,
                &g,
                x,
                dout,
                self.buf.layers[i].moe_saved,
                self.buf.moe_scratch,
                dx,
            )
        })
    }
}
