//! What a layer keeps from forward to backward, in the planner's vocabulary.

/// Which of a layer's activations the trainer keeps from forward to backward; the others are
/// recomputed at the start of that layer's backward into one set of buffers shared by all layers.
/// The layer input (the residual stream entering the layer) is always kept.
///
/// Mapping from the planner's named tensors ([`modelspec_dsl::tensors::layer_tensors`]): the
/// trainer materialises a few of them as one buffer, so a buffer is kept when the plan saves any of
/// its tensors:
/// - `attn_norm` -> `attn_norm` (+ its f32 statistics);
/// - `qkv` -> `q`, `k`, `v`, `q_normed`, `k_normed`, `q_rope`, `k_rope`: one `[q; k; v]` buffer
///   with qk-norm and RoPE applied in place (an alias: the planner counts `q`, `q_normed` and
///   `q_rope` as three tensors, the trainer keeps one); the qk-norms' inputs are kept besides, as
///   are the post-norms' inputs;
/// - `attn` -> `attn` (+ the f32 log-sum-exp);
/// - `resid_mid` -> `resid_mid` or `attn_out` (the trainer folds the output projection into the
///   residual add and keeps the sum, of the same size); a parallel layer's backward reads none of
///   it, so there the buffer only carries the stream to the next layer and is never recomputed;
/// - `mlp_norm` -> `mlp_norm`;
/// - `mlp_in` -> `gate`, `up` (one buffer) of a dense MLP;
/// - `act` -> `act` of a dense MLP;
/// - `moe` -> any of `router_logits`, `router_weights`, `expert_in`, `gate`, `up`, `act`,
///   `expert_out`, `shared_out` of a mixture-of-experts layer: the MoE block's own saved region
///   (`MoeLayer::saved_bytes`) is one unit, kept or recomputed whole.
///
/// `mlp_out` is never kept: it is folded into the next layer's input, which is kept anyway (an
/// alias the planner's cost model counts separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSaves {
    /// The attention norm's output and statistics.
    pub attn_norm: bool,
    /// The q/k/v projection after RoPE.
    pub qkv: bool,
    /// The attention output and its log-sum-exp.
    pub attn: bool,
    /// The residual stream after the attention branch.
    pub resid_mid: bool,
    /// The MLP norm's output and statistics.
    pub mlp_norm: bool,
    /// The dense MLP's input projection(s), before the activation.
    pub mlp_in: bool,
    /// The dense MLP activation's output.
    pub act: bool,
    /// A mixture-of-experts block's saved state (routing, expert activations).
    pub moe: bool,
}

impl LayerSaves {
    /// Keep everything (policy `none`).
    pub const ALL: LayerSaves = LayerSaves {
        attn_norm: true,
        qkv: true,
        attn: true,
        resid_mid: true,
        mlp_norm: true,
        mlp_in: true,
        act: true,
        moe: true,
    };
    /// Keep only the layer input (policy `full`).
    pub const INPUT_ONLY: LayerSaves = LayerSaves {
        attn_norm: false,
        qkv: false,
        attn: false,
        resid_mid: false,
        mlp_norm: false,
        mlp_in: false,
        act: false,
        moe: false,
    };

    /// The buffers that keep the planner's `saved` named tensors (see the type's docs).
    pub fn from_saved(saved: &[&str]) -> LayerSaves {
        let any = |names: &[&str]| names.iter().any(|n| saved.contains(n));
        LayerSaves {
            attn_norm: any(&["attn_norm"]),
            qkv: any(&["q", "k", "v", "q_normed", "k_normed", "q_rope", "k_rope"]),
            attn: any(&["attn"]),
            resid_mid: any(&["resid_mid", "attn_out"]),
            mlp_norm: any(&["mlp_norm"]),
            mlp_in: any(&["gate", "up"]),
            act: any(&["act"]),
            moe: any(&[
                "router_logits",
                "router_weights",
                "expert_in",
                "gate",
                "up",
                "act",
                "expert_out",
                "shared_out",
            ]),
        }
    }

    /// One entry per layer of a resolved plan.
    pub fn from_plan(plan: &modelspec_dsl::plan::Plan) -> Vec<LayerSaves> {
        plan.layers
            .iter()
            .map(|l| LayerSaves::from_saved(&l.saved))
            .collect()
    }

    /// The seven dense groups in layout order (see `layout`).
    pub(super) fn groups(&self) -> [bool; 7] {
        [
            self.attn_norm,
            self.qkv,
            self.attn,
            self.resid_mid,
            self.mlp_norm,
            self.mlp_in,
            self.act,
        ]
    }
}
