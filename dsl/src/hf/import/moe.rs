//! Mixture-of-experts settings: which layers are MoE, experts, top-k, router order, shared experts.

use super::*;

/// MoE settings and which layers are sparse.
pub(super) struct MoePlan {
    pub(super) moe: Moe,
    pub(super) sparse_step: u64,
    pub(super) mlp_only: std::collections::BTreeSet<u64>,
    /// Layers below this index are dense (DeepSeek-V3 / GLM-4.5's `first_k_dense_replace`).
    pub(super) first_dense: u64,
    /// An explicit list of the MoE layers (Llama 4's `moe_layers`), overriding the rest.
    pub(super) only: Option<std::collections::BTreeSet<u64>>,
}

impl MoePlan {
    fn new(moe: Moe) -> MoePlan {
        MoePlan {
            moe,
            sparse_step: 1,
            mlp_only: Default::default(),
            first_dense: 0,
            only: None,
        }
    }

    pub(super) fn is_moe_layer(&self, i: u64) -> bool {
        if let Some(only) = &self.only {
            return only.contains(&i);
        }
        i >= self.first_dense
            && !self.mlp_only.contains(&i)
            && (i + 1).is_multiple_of(self.sparse_step)
    }
}

/// Experts (or shared experts) without biases: every family but GPT-OSS.
fn bias_free(activation: MlpKind, hidden: u64) -> Mlp {
    Mlp {
        activation,
        hidden,
        bias: false,
    }
}

/// `count` always-on shared experts of width `hidden` without a sigmoid gate.
fn ungated_shared(count: u64, hidden: u64) -> SharedExperts {
    SharedExperts {
        count,
        hidden,
        gate: false,
    }
}

/// A list of layer indices (`mlp_only_layers`, `moe_layers`); `None` when absent or null.
fn layer_list(cfg: &mut Cfg<'_>, key: &str) -> Option<std::collections::BTreeSet<u64>> {
    let m = cfg.root.get(key)?;
    if m.value.is_null() {
        return None;
    }
    let mut out = std::collections::BTreeSet::new();
    match m.value.as_array() {
        Ok(items) => {
            for item in items {
                match item.as_u64() {
                    Ok(n) => {
                        out.insert(n);
                    }
                    Err(e) => cfg.diags.push(Diagnostic {
                        file: cfg.file.to_string(),
                        span: item.span.clone(),
                        field: key.into(),
                        message: e.message,
                        hint: Some("list layer indices".into()),
                    }),
                }
            }
        }
        Err(e) => cfg.error(key, e.message, None),
    }
    Some(out)
}

/// The load-balancing loss's coefficient as transformers applies it: `router_aux_loss_coef` joins
/// the training loss only when `output_router_logits` is set (its default is off, so a published
/// Mixtral or Qwen-MoE config trains without it); 0 otherwise. The exporter writes the flag back
/// as `aux_loss > 0`.
fn aux_coefficient(cfg: &mut Cfg<'_>) -> f64 {
    if cfg.flag("ffn.aux_loss", "output_router_logits", false) {
        cfg.float("ffn.aux_loss", &["router_aux_loss_coef"], 0.001)
    } else {
        0.0
    }
}

/// GPT-OSS (`gpt_oss`): a router with a bias, top-k of the logits then a softmax over those k,
/// experts with biases and the clamped SwiGLU (transformers hard-codes `alpha` 1.702 and `limit`
/// 7.0, whatever the config's `swiglu_limit` says), every layer sparse. The auxiliary loss joins
/// the training loss only with `output_router_logits`.
fn gpt_oss(cfg: &mut Cfg<'_>, activation: MlpKind, intermediate: u64) -> MoePlan {
    let experts = cfg.size("ffn.experts", &["num_local_experts", "num_experts"], 128);
    let top_k = cfg.size("ffn.top_k", &["num_experts_per_tok"], 4);
    cfg.origin("ffn.expert.hidden", "intermediate_size");
    let aux_loss = aux_coefficient(cfg);
    MoePlan::new(Moe {
        experts,
        top_k,
        expert: Mlp {
            activation,
            hidden: intermediate,
            bias: true,
        },
        router: RouterOrder::TopkSoftmax,
        aux_loss,
        router_bias: true,
        clamp: Some(SwigluClamp {
            alpha: 1.702,
            limit: 7.0,
        }),
        ..Default::default()
    })
}

/// Llama 4 (`llama4_text`): top-k of the logits with the sigmoid of each chosen logit as its
/// weight, applied to the expert's *input*; one shared expert of the routed width always added;
/// MoE layers from `moe_layers`, else every `interleave_moe_layer_step`-th layer (the others are
/// dense with `intermediate_size_mlp`). transformers adds no auxiliary loss.
fn llama4_text(cfg: &mut Cfg<'_>, activation: MlpKind, intermediate: u64) -> MoePlan {
    let experts = cfg.size("ffn.experts", &["num_local_experts"], 16);
    let top_k = cfg.size("ffn.top_k", &["num_experts_per_tok"], 1);
    cfg.origin("ffn.expert.hidden", "intermediate_size");
    let step = cfg.size("ffn", &["interleave_moe_layer_step"], 1);
    let only = layer_list(cfg, "moe_layers");
    if only.is_none() && step == 0 {
        cfg.error(
            "interleave_moe_layer_step",
            "must be at least 1".into(),
            Some("1 makes every layer a mixture of experts".into()),
        );
    }
    MoePlan {
        sparse_step: step.max(1),
        only,
        ..MoePlan::new(Moe {
            experts,
            top_k,
            expert: bias_free(activation, intermediate),
            router: RouterOrder::SigmoidTopk,
            shared: Some(ungated_shared(1, intermediate)),
            weighting: Weighting::Input,
            ..Default::default()
        })
    }
}

/// The class defaults of DeepSeek-V3's router settings in one family's config class.
struct SigmoidDefaults {
    experts: u64,
    hidden: u64,
    scale: f64,
    groups: u64,
    top_groups: u64,
    first_dense: u64,
}

/// GLM-4.5 (`glm4_moe`) and DeepSeek-V3 (`deepseek_v3`): DeepSeek-V3's router. Sigmoid scores
/// with the selection-only correction bias, group-limited top-k, renormalised (`norm_topk_prob`)
/// and scaled (`routed_scaling_factor`) weights, `n_shared_experts` always-on experts of the
/// routed width, and the first `first_k_dense_replace` layers dense. transformers adds no
/// auxiliary loss.
fn sigmoid_router(cfg: &mut Cfg<'_>, activation: MlpKind, d: SigmoidDefaults) -> MoePlan {
    let experts = cfg.size(
        "ffn.experts",
        &["n_routed_experts", "num_local_experts"],
        d.experts,
    );
    let top_k = cfg.size("ffn.top_k", &["num_experts_per_tok"], 8);
    let hidden = cfg.size("ffn.expert.hidden", &["moe_intermediate_size"], d.hidden);
    let renormalize = cfg.flag("ffn.renormalize", "norm_topk_prob", true);
    let routed_scale = cfg.float("ffn.routed_scale", &["routed_scaling_factor"], d.scale);
    let groups = cfg.size("ffn.groups.count", &["n_group"], d.groups);
    let top_groups = cfg.size("ffn.groups.top", &["topk_group"], d.top_groups);
    let shared = cfg.size("ffn.shared.count", &["n_shared_experts"], 1);
    let first_dense = cfg.size("ffn", &["first_k_dense_replace"], d.first_dense);
    MoePlan {
        first_dense,
        ..MoePlan::new(Moe {
            experts,
            top_k,
            expert: bias_free(activation, hidden),
            router: RouterOrder::SigmoidTopk,
            renormalize,
            // HF builds the shared MLP even for 0 shared experts, as a zero-width MLP.
            shared: (shared > 0).then_some(ungated_shared(shared, hidden)),
            aux_loss: 0.0,
            correction_bias: true,
            // One group keeps every expert: the same routing as no groups.
            groups: (groups != 1 || top_groups != 1).then_some(ExpertGroups {
                count: groups,
                top: top_groups,
            }),
            routed_scale,
            ..Default::default()
        })
    }
}

/// DeepSeek-V2 (`deepseek_v2`): softmax scores over all experts, the top `num_experts_per_tok`
/// taken unrenormalised (transformers' V2 router ignores `norm_topk_prob`) and scaled by
/// `routed_scaling_factor`; `n_shared_experts` always-on experts of the routed width; the first
/// `first_k_dense_replace` layers dense. Only `topk_method` "greedy" (DeepSeek-V2-Lite) is read:
/// "group_limited_greedy" groups by the best score, not DeepSeek-V3's best two.
fn deepseek_v2(cfg: &mut Cfg<'_>, activation: MlpKind) -> MoePlan {
    let experts = cfg.size("ffn.experts", &["n_routed_experts", "num_experts"], 64);
    if cfg.find(&["num_experts_per_tok"]).is_none() {
        cfg.error(
            "model_type",
            "a deepseek_v2 config needs \"num_experts_per_tok\" (DeepseekV2Config has no default)"
                .into(),
            Some("DeepSeek-V2-Lite routes each token to 6 experts".into()),
        );
    }
    let top_k = cfg.size("ffn.top_k", &["num_experts_per_tok"], 1);
    let hidden = cfg.size("ffn.expert.hidden", &["moe_intermediate_size"], 1407);
    let routed_scale = cfg.float("ffn.routed_scale", &["routed_scaling_factor"], 1.0);
    let shared = cfg.size("ffn.shared.count", &["n_shared_experts"], 2);
    let first_dense = cfg.size("ffn", &["first_k_dense_replace"], 0);
    let method = cfg.string("ffn.router", &["topk_method"], "greedy");
    if method != "greedy" {
        cfg.error(
            "topk_method",
            format!("DeepSeek-V2's router \"{method}\" is not supported"),
            Some(
                "only \"greedy\" (DeepSeek-V2-Lite) is: a softmax over all experts, then the top k"
                    .into(),
            ),
        );
    }
    MoePlan {
        first_dense,
        ..MoePlan::new(Moe {
            experts,
            top_k,
            expert: bias_free(activation, hidden),
            router: RouterOrder::SoftmaxTopk,
            renormalize: false,
            shared: (shared > 0).then_some(ungated_shared(shared, hidden)),
            routed_scale,
            ..Default::default()
        })
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
            let aux_loss = aux_coefficient(cfg);
            Some(MoePlan::new(Moe {
                experts,
                top_k,
                expert: bias_free(activation, intermediate),
                router: RouterOrder::SoftmaxTopk,
                renormalize: true,
                shared: None,
                aux_loss,
                ..Default::default()
            }))
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
            let aux_loss = aux_coefficient(cfg);
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
            let mlp_only = layer_list(cfg, "mlp_only_layers").unwrap_or_default();
            Some(MoePlan {
                sparse_step,
                mlp_only,
                ..MoePlan::new(Moe {
                    experts,
                    top_k,
                    expert: bias_free(activation, hidden),
                    router: RouterOrder::SoftmaxTopk,
                    renormalize,
                    shared,
                    aux_loss,
                    ..Default::default()
                })
            })
        }
        Family::Glm4Moe => Some(sigmoid_router(
            cfg,
            activation,
            SigmoidDefaults {
                experts: 128,
                hidden: 1408,
                scale: 1.0,
                groups: 1,
                top_groups: 1,
                first_dense: 1,
            },
        )),
        Family::DeepseekV3 => Some(sigmoid_router(
            cfg,
            activation,
            SigmoidDefaults {
                experts: 256,
                hidden: 2048,
                scale: 2.5,
                groups: 8,
                top_groups: 4,
                first_dense: 3,
            },
        )),
        Family::DeepseekV2 => Some(deepseek_v2(cfg, activation)),
        Family::GptOss => Some(gpt_oss(cfg, activation, intermediate)),
        Family::Llama4Text => Some(llama4_text(cfg, activation, intermediate)),
        _ => None,
    }
}
