//! Text of the printer's longer values: RoPE scalings and latent attention.

use super::num;
use crate::ir::*;

/// `mla none` or `mla(q_rank = .., kv_rank = .., nope_dim = .., rope_dim = .., v_dim = ..)`,
/// with the latents' norm (written by `norm`) when it is not DeepSeek's `rms(eps = 1e-6)`.
pub(super) fn mla(m: &Option<Mla>, norm: impl Fn(&Norm) -> String) -> String {
    let Some(m) = m else {
        return "mla none".into();
    };
    let mut args = Vec::new();
    if let Some(r) = m.q_rank {
        args.push(format!("q_rank = {r}"));
    }
    args.push(format!("kv_rank = {}", m.kv_rank));
    args.push(format!("nope_dim = {}", m.nope_dim));
    args.push(format!("rope_dim = {}", m.rope_dim));
    args.push(format!("v_dim = {}", m.v_dim));
    let deepseek = Norm {
        kind: NormKind::Rms,
        eps: 1e-6,
        offset: 0.0,
        weight: true,
        bias: false,
    };
    if m.norm != deepseek {
        args.push(format!("norm = {}", norm(&m.norm)));
    }
    format!("mla({})", args.join(", "))
}

/// The text of a RoPE scaling (`yarn(...)`, ...).
pub(super) fn scaling(s: &RopeScaling) -> String {
    let list = |v: &[f64]| v.iter().map(|f| num(*f)).collect::<Vec<_>>().join(", ");
    match s {
        RopeScaling::None => "none".into(),
        RopeScaling::Linear { factor } => format!("linear(factor = {})", num(*factor)),
        RopeScaling::DynamicNtk {
            factor,
            original_context,
        } => {
            format!(
                "dynamic_ntk(factor = {}, original_context = {original_context})",
                num(*factor)
            )
        }
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
            mscale,
        } => {
            let mscale = match mscale {
                Some([m, all]) => format!(", mscale = {}, mscale_all_dim = {}", num(*m), num(*all)),
                None => String::new(),
            };
            format!(
                "yarn(factor = {}, original_context = {original_context}, beta_fast = {}, beta_slow = {}, attention_factor = {}{}{mscale})",
                num(*factor),
                num(*beta_fast),
                num(*beta_slow),
                num(*attention_factor),
                if *truncate { "" } else { ", truncate = false" }
            )
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => format!(
            "llama3(factor = {}, low_freq_factor = {}, high_freq_factor = {}, original_context = {original_context})",
            num(*factor),
            num(*low_freq_factor),
            num(*high_freq_factor)
        ),
        RopeScaling::Longrope {
            short_factor,
            long_factor,
            original_context,
            attention_factor,
        } => {
            format!(
                "longrope(short = [{}], long = [{}], original_context = {original_context}, attention_factor = {})",
                list(short_factor),
                list(long_factor),
                num(*attention_factor)
            )
        }
    }
}
