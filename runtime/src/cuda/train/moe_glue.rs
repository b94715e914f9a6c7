//! Mixture-of-experts layers: the executor's side of `cuda::moe` (router, dispatch, expert GEMMs,
//! combine, shared experts, aux loss; forward and backward). A MoE layer gets its saved region
//! (kept, or one shared region when the plan recomputes it), the shared MoE scratch, and runs
//! where a dense MLP would; the whole block is one checkpointing unit.
//!
//! The block is reached through [`MoeBlock`], the API of `cuda::moe::MoeLayer`; [`build`] is the
//! one place that constructs it. While `cuda::moe` is not built in, [`MOE_BUILT`] is false, specs
//! with MoE layers are refused by `unsupported_feature`, and [`build`] answers
//! "mixture-of-experts: not built".

use super::super::error::Result;
use super::super::gemm::Gemm;
use super::super::gpu::{DevPtr, Dtype, Gpu};
use super::{Step, unsupported};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::Ffn;
use std::sync::Arc;

/// Whether `cuda::moe` is wired in (see [`build`]).
pub(super) const MOE_BUILT: bool = false;

/// What the executor needs of one MoE layer (the API of `cuda::moe::MoeLayer`).
pub(super) trait MoeBlock: Send + Sync {
    /// Device bytes kept from forward to backward.
    fn saved_bytes(&self) -> usize;
    /// Scratch for forward and backward, reusable across layers.
    fn scratch_bytes(&self) -> usize;
    /// `out [rows, d_model]` from the normed input `x`; the aux loss accumulates into `aux_loss`
    /// (an f32 device scalar). `w(name)`: parameter `layers.{i}.{name}` in the compute dtype.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        gemm: &Gemm,
        w: &dyn Fn(&str) -> DevPtr,
        x: DevPtr,
        out: DevPtr,
        saved: DevPtr,
        scratch: DevPtr,
        aux_loss: DevPtr,
    ) -> Result<()>;
    /// `dx` (overwritten) from `dout`; f32 gradients accumulate through `g(name)`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        gemm: &Gemm,
        w: &dyn Fn(&str) -> DevPtr,
        g: &dyn Fn(&str) -> DevPtr,
        x: DevPtr,
        dout: DevPtr,
        saved: DevPtr,
        scratch: DevPtr,
        dx: DevPtr,
    ) -> Result<()>;
}

/// One MoE layer of the trainer.
pub(super) type MoeSlot = Box<dyn MoeBlock>;

/// The MoE block of every MoE layer of `spec` (`None` for dense layers), for `rows` token rows.
/// To wire `cuda::moe` in: implement [`MoeBlock`] for `MoeLayer` (forwarding its methods), build
/// `Box::new(MoeLayer::new(gpu, spec, i, rows, dt)?)` here, and set [`MOE_BUILT`].
pub(super) fn build(
    gpu: &Arc<Gpu>,
    spec: &ModelSpec,
    rows: usize,
    dt: Dtype,
) -> Result<Vec<Option<MoeSlot>>> {
    let _ = (gpu, rows, dt);
    spec.layers
        .iter()
        .map(|l| match l.ffn {
            Ffn::Moe(_) => Err(unsupported(format!(
                "mixture-of-experts (layer {}): not built",
                l.index
            ))),
            Ffn::Mlp(_) => Ok(None),
        })
        .collect()
}

/// `(saved, scratch)` bytes of each layer's MoE block.
pub(super) fn sizes(moe: &[Option<MoeSlot>]) -> Vec<Option<(usize, usize)>> {
    moe.iter()
        .map(|m| m.as_ref().map(|m| (m.saved_bytes(), m.scratch_bytes())))
        .collect()
}

/// `(saved, scratch)` bytes of each MoE layer without a device: the planner's bytes of the
/// block's named tensors (routing, expert inputs and activations, outputs), for both.
pub(super) fn predicted_sizes(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dt: Dtype,
) -> Vec<Option<(usize, usize)>> {
    const MOE_TENSORS: [&str; 8] = [
        "router_logits",
        "router_weights",
        "expert_in",
        "gate",
        "up",
        "act",
        "expert_out",
        "shared_out",
    ];
    spec.layers
        .iter()
        .map(|l| match l.ffn {
            Ffn::Moe(_) => {
                let costs = modelspec_dsl::plan::layer_costs(spec, l, batch as u64, seq as u64, dt);
                let bytes: u64 = costs
                    .iter()
                    .filter(|t| MOE_TENSORS.contains(&t.name))
                    .map(|t| t.bytes)
                    .sum();
                Some((bytes as usize, bytes as usize))
            }
            Ffn::Mlp(_) => None,
        })
        .collect()
}

impl Step<'_> {
    fn moe_of(&self, i: usize) -> Result<&dyn MoeBlock> {
        self.moe
            .get(i)
            .and_then(|m| m.as_deref())
            .ok_or_else(|| unsupported(format!("mixture-of-experts (layer {i}): not built")))
    }

    /// Layer i's MoE block forward: `out` from `x`, aux loss into `aux`.
    pub(super) fn moe_fwd(&self, i: usize, x: DevPtr, out: DevPtr, aux: DevPtr) -> Result<()> {
        let m = self.moe_of(i)?;
        let w = |name: &str| self.p.wo(&Self::pname(i, name));
        m.forward(
            self.gemm,
            &w,
            x,
            out,
            self.buf.layers[i].moe_saved,
            self.buf.moe_scratch,
            aux,
        )
    }

    /// Layer i's MoE block backward: `dx` from `dout`, weight gradients accumulated.
    pub(super) fn moe_bwd(&self, i: usize, x: DevPtr, dout: DevPtr, dx: DevPtr) -> Result<()> {
        let m = self.moe_of(i)?;
        let w = |name: &str| self.p.wo(&Self::pname(i, name));
        let g = |name: &str| self.p.g(&Self::pname(i, name));
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
    }
}
