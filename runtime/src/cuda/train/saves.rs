//! What a layer keeps from forward to backward: the planner's saved units, one buffer each.

use modelspec_dsl::ModelSpec;
use modelspec_dsl::plan::Plan;
use modelspec_dsl::program::{Act, Kernel, LayerProgram, N_ACTS};

/// Which of a layer's buffers the trainer keeps from forward to backward; the others are
/// recomputed at the start of that layer's backward into one set of buffers shared by all layers.
/// The layer input (the residual stream entering the layer) is always kept.
///
/// Each field is one unit of the layer's program (`LayerProgram::unit_of`), which the planner
/// saves or recomputes whole, so the trainer keeps exactly the bytes the plan lists (the planner
/// counts a norm's f32 statistics with the tensor they are kept beside):
/// - `attn_norm` -> `attn_norm` (+ its statistics);
/// - `q_raw`, `k_raw` -> `q`, `k` as projected, under qk-norm (+ the qk-norm's statistics);
/// - `qkv` -> the unit of `v`: one `[q; k; v]` buffer as attention reads it (qk-norm and RoPE
///   applied in place): `q_rope`, `k_rope`, `v` (or `q_normed`, `k_normed`, `v`; or `q`, `k`, `v`);
/// - `attn` -> `attn` (+ its f32 log-sum-exp);
/// - `attn_out` -> `attn_out` under post-norm (the post-norm's input and statistics);
/// - `resid_mid` -> `resid_mid`;
/// - `mlp_norm` -> `mlp_norm` (+ its statistics);
/// - `mlp_in` -> `gate` and `up` (one buffer) of a dense MLP;
/// - `act` -> `act` of a dense MLP;
/// - `mlp_out` -> `mlp_out` under post-norm (the post-norm's input and statistics);
/// - `moe` -> the unit of `router_logits`: a mixture-of-experts block's routed state
///   (`MoeLayer::saved_bytes`);
/// - `q_latent`, `q_latent_norm` (+ its statistics), `kv_latent`, `kv_latent_norm` (+ its
///   statistics) -> latent attention's tensors of those names. Its `q`, `kv` and `k_rope` are
///   never kept (only a layout move or RoPE reads them: recomputing the `[q; k; v]` unit re-runs
///   them); `q_rope`, `k` and `v` are the `[q; k; v]` unit.
///
/// Tensors that no backward op reads are never kept (`attn_out` and `mlp_out` under pre-norm:
/// they are folded into the next residual add; the post-norms' outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSaves {
    /// The attention norm's output and statistics.
    pub attn_norm: bool,
    /// The query projection before qk-norm, and the q-norm's statistics.
    pub q_raw: bool,
    /// The key projection before qk-norm, and the k-norm's statistics.
    pub k_raw: bool,
    /// The `[q; k; v]` buffer attention reads.
    pub qkv: bool,
    /// The attention output and its log-sum-exp.
    pub attn: bool,
    /// The output projection under post-norm, and the post-norm's statistics.
    pub attn_out: bool,
    /// The residual stream after the attention branch.
    pub resid_mid: bool,
    /// The MLP norm's output and statistics.
    pub mlp_norm: bool,
    /// The dense MLP's input projection(s), before the activation.
    pub mlp_in: bool,
    /// The dense MLP activation's output.
    pub act: bool,
    /// The FFN output under post-norm, and the post-norm's statistics.
    pub mlp_out: bool,
    /// A mixture-of-experts block's saved state (routing, expert activations).
    pub moe: bool,
    /// Latent attention's query latent.
    pub q_latent: bool,
    /// Latent attention's normalised query latent and its statistics.
    pub q_latent_norm: bool,
    /// Latent attention's joint latent (with the rotary key before RoPE).
    pub kv_latent: bool,
    /// Latent attention's normalised joint latent and its statistics.
    pub kv_latent_norm: bool,
}

impl LayerSaves {
    /// Keep everything (policy `none`).
    pub const ALL: LayerSaves = LayerSaves {
        attn_norm: true,
        q_raw: true,
        k_raw: true,
        qkv: true,
        attn: true,
        attn_out: true,
        resid_mid: true,
        mlp_norm: true,
        mlp_in: true,
        act: true,
        mlp_out: true,
        moe: true,
        q_latent: true,
        q_latent_norm: true,
        kv_latent: true,
        kv_latent_norm: true,
    };
    /// Keep only the layer input (policy `full`).
    pub const INPUT_ONLY: LayerSaves = LayerSaves {
        attn_norm: false,
        q_raw: false,
        k_raw: false,
        qkv: false,
        attn: false,
        attn_out: false,
        resid_mid: false,
        mlp_norm: false,
        mlp_in: false,
        act: false,
        mlp_out: false,
        moe: false,
        q_latent: false,
        q_latent_norm: false,
        kv_latent: false,
        kv_latent_norm: false,
    };

    /// The buffers of layer program `lp` that keep the activations `keep` marks (indexed by
    /// `Act as usize`, as `LayerProgram::save_set` returns them).
    pub fn from_keep(lp: &LayerProgram, keep: &[bool; N_ACTS]) -> LayerSaves {
        let k = |a: Act| lp.node(a).is_some() && keep[a as usize];
        let dense = lp.node(Act::RouterLogits).is_none();
        LayerSaves {
            attn_norm: k(Act::AttnNorm),
            // Kept only where a backward reads them: the qk-norms' and post-norms' inputs.
            q_raw: k(Act::Q) && lp.node(Act::QNormed).is_some(),
            k_raw: k(Act::K) && lp.node(Act::KNormed).is_some(),
            qkv: k(lp.q_final),
            attn: k(Act::Attn),
            attn_out: k(Act::AttnOut) && lp.node(Act::AttnPostNorm).is_some(),
            resid_mid: k(Act::ResidMid),
            mlp_norm: k(Act::MlpNorm),
            mlp_in: dense && (k(Act::Gate) || k(Act::Up)),
            act: dense && k(Act::ActOut),
            mlp_out: k(Act::MlpOut) && lp.node(Act::MlpPostNorm).is_some(),
            moe: !dense && k(Act::RouterLogits),
            q_latent: k(Act::QLatent),
            q_latent_norm: k(Act::QLatentNorm),
            kv_latent: k(Act::KvLatent),
            kv_latent_norm: k(Act::KvLatentNorm),
        }
    }

    /// The buffers that keep the tensors named in `saved` (a plan's saved list) of `layer`.
    pub fn from_saved(layer: &modelspec_dsl::ir::Layer, saved: &[&str]) -> LayerSaves {
        let lp = LayerProgram::structure(layer);
        let mut keep = [false; N_ACTS];
        for node in &lp.nodes {
            keep[node.output as usize] = saved.contains(&node.output.owner().name());
        }
        LayerSaves::from_keep(&lp, &keep)
    }

    /// One entry per layer of a resolved plan of `spec`.
    pub fn from_plan(spec: &ModelSpec, plan: &Plan) -> Vec<LayerSaves> {
        spec.layers
            .iter()
            .zip(&plan.layers)
            .map(|(layer, l)| LayerSaves::from_saved(layer, &l.saved))
            .collect()
    }

    /// Which activations of layer program `lp` these buffers keep (indexed by `Act as usize`; the
    /// layer input always): each unit's members when its buffer is kept.
    pub fn keep(&self, lp: &LayerProgram) -> [bool; N_ACTS] {
        let dense = lp.node(Act::RouterLogits).is_none();
        let qk_norm = lp.node(Act::QNormed).is_some();
        let mut keep = [false; N_ACTS];
        keep[Act::Input as usize] = true;
        for node in &lp.nodes {
            let a = node.output;
            keep[a as usize] = match lp.unit_of(a) {
                u if u == lp.q_final => self.qkv,
                Act::AttnNorm => self.attn_norm,
                Act::Q => self.q_raw && qk_norm,
                Act::K => self.k_raw && qk_norm,
                Act::Attn => self.attn,
                Act::AttnOut => self.attn_out,
                Act::ResidMid => self.resid_mid,
                Act::MlpNorm => self.mlp_norm,
                Act::Gate | Act::Up if dense => self.mlp_in,
                Act::ActOut if dense => self.act,
                Act::MlpOut => self.mlp_out,
                Act::RouterLogits => self.moe,
                Act::QLatent => self.q_latent,
                Act::QLatentNorm => self.q_latent_norm,
                Act::KvLatent => self.kv_latent,
                Act::KvLatentNorm => self.kv_latent_norm,
                _ => false,
            };
        }
        keep
    }

    /// The dense groups in layout order (see `layout`).
    pub(super) fn groups(&self) -> [bool; GROUPS] {
        [
            self.attn_norm,
            self.q_raw,
            self.k_raw,
            self.qkv,
            self.attn,
            self.attn_out,
            self.resid_mid,
            self.mlp_norm,
            self.mlp_in,
            self.act,
            self.mlp_out,
            self.q_latent,
            self.q_latent_norm,
            self.kv_latent,
            self.kv_latent_norm,
        ]
    }
}

/// Number of dense groups (every field of [`LayerSaves`] but `moe`).
pub(super) const GROUPS: usize = 15;

/// One layer as the trainer runs it: its program, grouped into kernels (the named fusions), what
/// it keeps and which kernels it re-runs at the start of its backward.
pub(super) struct LayerRun {
    pub lp: LayerProgram,
    pub kernels: Vec<Kernel>,
    /// Kept activations, by `Act as usize`.
    pub keep: [bool; N_ACTS],
    /// Per kernel: re-run before the layer's backward.
    pub redo: Vec<bool>,
}

impl LayerRun {
    /// Layer `i` of `spec` keeping `saves`.
    pub fn new(spec: &ModelSpec, i: usize, saves: &LayerSaves) -> LayerRun {
        let lp = LayerProgram::lower(spec, &spec.layers[i]);
        let kernels = lp.kernels();
        let keep = saves.keep(&lp);
        let mut needed = [false; N_ACTS];
        for t in lp.costs.iter().filter(|t| t.needed) {
            if let Some(a) = lp.act_named(t.name) {
                needed[a as usize] = true;
            }
        }
        let redo = lp.recompute(&kernels, &keep, &needed);
        LayerRun {
            lp,
            kernels,
            keep,
            redo,
        }
    }

    /// Whether the layer re-runs anything before its backward.
    pub fn recomputes(&self) -> bool {
        self.redo.iter().any(|&r| r)
    }
}
