//! What the GPU trainer can run. Each layer's own configuration lives in [`crate::cuda::layer`]
//! (shared with the decoder) and is re-exported here for the trainer's modules.

pub(super) use crate::cuda::layer::{FfnCfg, LayerCfg, MlaCfg, NormCfg};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::Position;

/// Why the GPU executor cannot run `spec`, or `None`. Layers may differ in every respect (dense
/// and mixture-of-experts layers mixed); what remains unsupported is a spec without layers or
/// without a final norm, and attention shapes the kernels do not take. (MoE sizes past the MoE
/// kernels' limits are refused when the trainer is built.)
pub(super) fn unsupported_feature(spec: &ModelSpec) -> Option<String> {
    if spec.layers.is_empty() {
        return Some("a spec without layers".into());
    }
    if spec.final_norm.is_none() {
        return Some("a spec without a final norm".into());
    }
    for l in &spec.layers {
        let a = &l.attention;
        if a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
            return Some(format!(
                "heads {} not a multiple of kv_heads {} (layer {})",
                a.heads, a.kv_heads, l.index
            ));
        }
        if a.head_dim == 0 || a.head_dim > 256 {
            return Some(format!(
                "head_dim {} outside 1..=256 (layer {})",
                a.head_dim, l.index
            ));
        }
        if let Position::Rope(r) = &l.position
            && r.rotary_dims > a.head_dim
        {
            return Some(format!("rotary dims above head_dim (layer {})", l.index));
        }
        if let Some(m) = &a.mla {
            // Every head has its own key from the shared latent: the per-head layout assumes it.
            if a.kv_heads != a.heads {
                return Some(format!(
                    "latent attention with kv_heads {} unlike heads {} (layer {})",
                    a.kv_heads, a.heads, l.index
                ));
            }
            if m.v_dim == 0 || m.v_dim > 256 {
                return Some(format!(
                    "latent attention's v_dim {} outside 1..=256 (layer {})",
                    m.v_dim, l.index
                ));
            }
            if let Position::Rope(r) = &l.position
                && r.rotary_dims > m.rope_dim
            {
                return Some(format!(
                    "rotary dims {} above latent attention's rope_dim {} (layer {})",
                    r.rotary_dims, m.rope_dim, l.index
                ));
            }
        }
    }
    None
}
