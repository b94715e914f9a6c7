//! DeepSeek's multi-head latent attention (`deepseek_v3`, `deepseek_v2`): the latent ranks, the
//! split of each query/key head into its no-RoPE and RoPE parts, the value width, and how the
//! shared rotary key pairs its dimensions.

use super::*;

/// Latent attention settings of an MLA family, with the RoPE pairing its checkpoints expect.
pub(super) struct MlaPlan {
    pub(super) mla: Mla,
    pub(super) style: RopeStyle,
}

/// The MLA settings of `family` (`None` for families without latent attention). transformers
/// builds the latent norms with eps 1e-6 whatever `rms_norm_eps` says, and requires as many
/// key/value heads as query heads (the latent expands into one key and value per head).
pub(super) fn mla_settings(cfg: &mut Cfg<'_>, family: Family, heads: u64) -> Option<MlaPlan> {
    if !family.is_mla() {
        return None;
    }
    // `q_lora_rank: null` (DeepSeek-V2-Lite) projects the queries directly.
    let q_rank = match cfg.root.get("q_lora_rank") {
        Some(m) if m.value.is_null() => {
            cfg.origin("attention.mla.q_rank", "q_lora_rank");
            None
        }
        _ => Some(cfg.size("attention.mla.q_rank", &["q_lora_rank"], 1536)),
    };
    let kv_rank = cfg.size("attention.mla.kv_rank", &["kv_lora_rank"], 512);
    let nope_dim = cfg.size("attention.mla.nope_dim", &["qk_nope_head_dim"], 128);
    let rope_dim = cfg.size("attention.mla.rope_dim", &["qk_rope_head_dim"], 64);
    let v_dim = cfg.size("attention.mla.v_dim", &["v_head_dim"], 128);
    if let Some(kv) = cfg.opt_u64("attention.kv_heads", "num_key_value_heads")
        && kv != heads
    {
        cfg.error(
            "num_key_value_heads",
            format!("latent attention expands its latent into one key and value per query head, so num_key_value_heads must equal num_attention_heads ({heads}), found {kv}"),
            Some(format!("set \"num_key_value_heads\": {heads}")),
        );
    }
    // DeepSeek-V3 rotates (2i, 2i+1) pairs unless `rope_interleave` is false; V2 always does
    // (as complex numbers).
    let interleaved = match family {
        Family::DeepseekV3 => cfg.flag("position.style", "rope_interleave", true),
        _ => true,
    };
    Some(MlaPlan {
        mla: Mla {
            q_rank,
            kv_rank,
            nope_dim,
            rope_dim,
            v_dim,
            norm: Norm {
                kind: NormKind::Rms,
                eps: 1e-6,
                offset: 0.0,
                weight: true,
                bias: false,
            },
        },
        style: if interleaved {
            RopeStyle::Interleaved
        } else {
            RopeStyle::HalfSplit
        },
    })
}

/// The softmax scale of latent attention: `(nope_dim + rope_dim)^-0.5`, times `m(mscale_all_dim)²`
/// under YaRN with a non-zero `mscale_all_dim` (transformers' `yarn_apply_mscale`).
pub(super) fn mla_scale(mla: &Mla, scaling: &RopeScaling) -> f64 {
    // `qk_head_dim ** -0.5` as Python computes it (pow, not 1 / sqrt: they differ in the last bit).
    let base = ((mla.nope_dim + mla.rope_dim) as f64).powf(-0.5);
    match scaling {
        RopeScaling::Yarn {
            factor,
            mscale: Some([_, all]),
            ..
        } if *all != 0.0 => {
            let m = yarn_mscale(*factor, *all);
            base * m * m
        }
        _ => base,
    }
}
