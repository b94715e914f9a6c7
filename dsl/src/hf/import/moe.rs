//! Mixture-of-experts settings: which layers are MoE, experts, top-k, router order, shared experts.

use super::*;

/// MoE settings and which layers are sparse.
pub(super) struct MoePlan {
    pub(super) moe: Moe,
    pub(super) sparse_step: u64,
    pub(super) mlp_only: std::collections::BTreeSet<u64>,
}

impl MoePlan {
    pub(super) fn is_moe_layer(&self, i: u64) -> bool {
        !self.mlp_only.contains(&i) && (i + 1).is_multiple_of(self.sparse_step)
    }
}

pub(super) fn moe_settings(
    cfg: &mut Cfg<'_>,
    family: Family,
    activation: MlpKind,
    intermediate: u64,
    _n: u64,
) -> Option<MoePlan> {
    match family {
        Family::Mixtral => {
            let experts = cfg.size("ffn.experts", &["num_local_experts", "num_experts"], 8);
            let top_k = cfg.size("ffn.top_k", &["num_experts_per_tok"], 2);
            let aux_loss = cfg.float("ffn.aux_loss", &["router_aux_loss_coef"], 0.001);
            Some(MoePlan {
                moe: Moe {
                    experts,
                    top_k,
                    expert: Mlp {
                        activation,
                        hidden: intermediate,
                        bias: false,
                    },
                    router: RouterOrder::SoftmaxTopk,
                    renormalize: true,
                    shared: None,
                    aux_loss,
                },
                sparse_step: 1,
                mlp_only: Default::default(),
            })
        }
        Family::Qwen2Moe | Family::Qwen3Moe => {
            let qwen2 = family == Family::Qwen2Moe;
            let experts = cfg.size(
                "ffn.experts",
                &["num_experts", "num_local_experts"],
                if qwen2 { 60 } else { 128 },
            );
            let top_k = cfg.size(
                "ffn.top_k",
                &["num_experts_per_tok"],
                if qwen2 { 4 } else { 8 },
            );
            let hidden = cfg.size(
                "ffn.expert.hidden",
                &["moe_intermediate_size"],
                if qwen2 { 1408 } else { 768 },
            );
            let renormalize = cfg.flag("ffn.renormalize", "norm_topk_prob", false);
            let aux_loss = cfg.float("ffn.aux_loss", &["router_aux_loss_coef"], 0.001);
            let sparse_step = cfg.size("ffn", &["decoder_sparse_step"], 1);
            let shared = if qwen2 {
                let h = cfg.size(
                    "ffn.shared.hidden",
                    &["shared_expert_intermediate_size"],
                    5632,
                );
                Some(SharedExperts {
                    count: 1,
                    hidden: h,
                    gate: true,
                })
            } else {
                None
            };
            let mut mlp_only = std::collections::BTreeSet::new();
            if let Some(m) = cfg.root.get("mlp_only_layers")
                && !m.value.is_null()
            {
                match m.value.as_array() {
                    Ok(items) => {
                        for item in items {
                            match item.as_u64() {
                                Ok(n) => {
                                    mlp_only.insert(n);
                                }
                                Err(e) => cfg.diags.push(Diagnostic {
                                    file: cfg.file.to_string(),
                                    span: item.span.clone(),
                                    field: "mlp_only_layers".into(),
                                    message: e.message,
                                    hint: Some("list layer indices".into()),
                                }),
                            }
                        }
                    }
                    Err(e) => cfg.error("mlp_only_layers", e.message, None),
                }
            }
            Some(MoePlan {
                moe: Moe {
                    experts,
                    top_k,
                    expert: Mlp {
                        activation,
                        hidden,
                        bias: false,
                    },
                    router: RouterOrder::SoftmaxTopk,
                    renormalize,
                    shared,
                    aux_loss,
                },
                sparse_step,
                mlp_only,
            })
        }
        _ => None,
    }
}
