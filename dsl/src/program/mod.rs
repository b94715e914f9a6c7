//! The tensor program: the one encoding of a block. A [`ModelSpec`] is lowered here, once, to
//! the per-layer sequence of ops over named tensors; everything else reads it: the tensor
//! vocabulary of checkpoint clauses ([`crate::tensors::layer_tensors`]), the planner's costs and
//! saved units ([`crate::plan`]), the CPU executor, the CUDA trainer (which walks
//! [`LayerProgram::kernels`], the program grouped into its named fusions) and the code generator.
//!
//! Each layer is a list of [`Node`]s in forward order; a node computes one activation ([`Act`])
//! from earlier ones. Public activations carry the names of the checkpoint vocabulary
//! (`save(...)` / `recompute(...)`); a few private ones (the shared experts'
//! hidden activations) belong to a public owner and follow its save decision. The executor runs
//! these nodes in forward order, keeps the saved ones, and in backward recomputes a missing
//! activation from the nearest saved ones by the same node, so recomputation is bit-exact.
//! Things that are not activations are always recomputed: norm statistics, attention probabilities
//! (recomputed from q and k, as flash attention does), dropout masks (counter-based), routing
//! indices (from `router_logits`).
//!
//! Which activations a policy keeps is decided by the checkpoint planner (`modelspec_dsl::plan`),
//! never here: [`LayerProgram::save_set`] asks `plan::fixed_saves` over the layer's tensor costs,
//! so `auto` and every other policy keep on the CPU exactly the tensors `modelspec plan` lists as
//! saved.

use crate::ir::{Ffn, Layer, LayerCheckpoint, ModelSpec, Position};
use crate::plan::{self, Dtype, TensorCost};
use thiserror::Error;

mod fuse;
mod walk;
pub use fuse::{Fusion, Kernel};
pub use walk::{KernelRow, WalkError, check_walk, describe, launch_sequence, lowered_walk};

/// Why a program cannot be built or a policy applied to it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProgramError {
    /// A checkpoint clause names a tensor this layer does not have.
    #[error(
        "layer {layer}: checkpoint clause names `{name}`, which is not a tensor of this layer (it has: {known})"
    )]
    UnknownTensor {
        /// The layer.
        layer: usize,
        /// The unknown name.
        name: String,
        /// The layer's tensor names, comma-separated.
        known: String,
    },
}

/// An activation of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Act {
    /// The layer input (the residual stream); always saved.
    Input,
    /// `attn_norm`.
    AttnNorm,
    /// `q_latent`: latent attention's query down-projection `[rows, q_rank]`.
    QLatent,
    /// `q_latent_norm`: its norm, the query up-projection's input.
    QLatentNorm,
    /// `kv_latent`: latent attention's joint down-projection `[rows, kv_rank + rope_dim]` (the
    /// key/value latent, then the shared rotary key before RoPE).
    KvLatent,
    /// `kv_latent_norm`: the normalised key/value latent `[rows, kv_rank]` (what a decoder caches).
    KvLatentNorm,
    /// `kv`: the latent's up-projection `[rows, heads·(nope_dim + v_dim)]`, per head its key part
    /// then its value.
    Kv,
    /// `q`.
    Q,
    /// `k`.
    K,
    /// `v`.
    V,
    /// `q_normed`.
    QNormed,
    /// `k_normed`.
    KNormed,
    /// `q_rope`.
    QRope,
    /// `k_rope`.
    KRope,
    /// `attn`: attention output before the output projection, `[rows, heads·head_dim]`.
    Attn,
    /// `attn_out`: after the output projection.
    AttnOut,
    /// `attn_post_norm`.
    AttnPostNorm,
    /// `resid_mid`: the residual stream between attention and MLP (sequential blocks).
    ResidMid,
    /// `mlp_norm`.
    MlpNorm,
    /// `gate`: the gate projection (dense MLP, or the routed experts' rows).
    Gate,
    /// `up`.
    Up,
    /// `act`: the activation output.
    ActOut,
    /// `mlp_out`: the FFN output (dense MLP, or the combined MoE output with shared experts).
    MlpOut,
    /// `router_logits`.
    RouterLogits,
    /// `router_weights`: `[rows, top_k]`.
    RouterWeights,
    /// `expert_in`: the dispatched token rows in expert order, `[rows·top_k, d_model]`.
    ExpertIn,
    /// `expert_out`: each dispatched row's expert output, `[rows·top_k, d_model]`.
    ExpertOut,
    /// Shared experts' gate projection (private, owned by `shared_out`).
    SharedGate,
    /// Shared experts' up projection (private, owned by `shared_out`).
    SharedUp,
    /// Shared experts' activation (private, owned by `shared_out`).
    SharedAct,
    /// `shared_out`: the shared experts' output before the optional sigmoid gate.
    SharedOut,
    /// `mlp_post_norm`.
    MlpPostNorm,
}

/// Number of [`Act`] variants.
pub const N_ACTS: usize = Act::MlpPostNorm as usize + 1;

impl Act {
    /// Every activation, in declaration order.
    pub const ALL: [Act; N_ACTS] = [
        Act::Input,
        Act::AttnNorm,
        Act::QLatent,
        Act::QLatentNorm,
        Act::KvLatent,
        Act::KvLatentNorm,
        Act::Kv,
        Act::Q,
        Act::K,
        Act::V,
        Act::QNormed,
        Act::KNormed,
        Act::QRope,
        Act::KRope,
        Act::Attn,
        Act::AttnOut,
        Act::AttnPostNorm,
        Act::ResidMid,
        Act::MlpNorm,
        Act::Gate,
        Act::Up,
        Act::ActOut,
        Act::MlpOut,
        Act::RouterLogits,
        Act::RouterWeights,
        Act::ExpertIn,
        Act::ExpertOut,
        Act::SharedGate,
        Act::SharedUp,
        Act::SharedAct,
        Act::SharedOut,
        Act::MlpPostNorm,
    ];

    /// The checkpoint-clause name (private activations: `shared_out.gate` etc.).
    pub fn name(self) -> &'static str {
        match self {
            Act::Input => "input",
            Act::AttnNorm => "attn_norm",
            Act::QLatent => "q_latent",
            Act::QLatentNorm => "q_latent_norm",
            Act::KvLatent => "kv_latent",
            Act::KvLatentNorm => "kv_latent_norm",
            Act::Kv => "kv",
            Act::Q => "q",
            Act::K => "k",
            Act::V => "v",
            Act::QNormed => "q_normed",
            Act::KNormed => "k_normed",
            Act::QRope => "q_rope",
            Act::KRope => "k_rope",
            Act::Attn => "attn",
            Act::AttnOut => "attn_out",
            Act::AttnPostNorm => "attn_post_norm",
            Act::ResidMid => "resid_mid",
            Act::MlpNorm => "mlp_norm",
            Act::Gate => "gate",
            Act::Up => "up",
            Act::ActOut => "act",
            Act::MlpOut => "mlp_out",
            Act::RouterLogits => "router_logits",
            Act::RouterWeights => "router_weights",
            Act::ExpertIn => "expert_in",
            Act::ExpertOut => "expert_out",
            Act::SharedGate => "shared_out.gate",
            Act::SharedUp => "shared_out.up",
            Act::SharedAct => "shared_out.act",
            Act::SharedOut => "shared_out",
            Act::MlpPostNorm => "mlp_post_norm",
        }
    }

    /// The public activation whose save decision a private one follows (itself when public).
    pub fn owner(self) -> Act {
        match self {
            Act::SharedGate | Act::SharedUp | Act::SharedAct => Act::SharedOut,
            a => a,
        }
    }
}

/// What kind of work a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// A norm (row statistics and a pointwise map).
    Norm,
    /// A matrix product (projection).
    Matmul,
    /// Rotary embedding (pointwise).
    Rope,
    /// Attention (two matmuls per head and a softmax).
    Attention,
    /// A residual add, with dropout on the branch when training.
    Residual,
    /// A pointwise activation.
    Activation,
    /// Router softmax / top-k.
    Route,
    /// Token dispatch to experts (a gather).
    Dispatch,
    /// Routed + shared expert combination (weighted sum).
    Combine,
    /// A copy of parts of its inputs into another layout (latent attention's per-head keys and
    /// values from `kv` and the shared rotary key): no arithmetic, and its backward reads no
    /// input.
    Split,
}

/// One op of a layer: computes `output` from `inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The activation computed.
    pub output: Act,
    /// What kind of op it is.
    pub op: OpKind,
    /// The activations it reads.
    pub inputs: Vec<Act>,
}

/// The lowered program of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerProgram {
    /// Layer index.
    pub index: usize,
    /// Nodes in forward order.
    pub nodes: Vec<Node>,
    /// The attention input (`attn_norm`, or `input` without pre-norms).
    pub attn_in: Act,
    /// The queries attention reads (`q_rope`, `q_normed` or `q`).
    pub q_final: Act,
    /// The keys attention reads.
    pub k_final: Act,
    /// The attention branch added to the residual (`attn_post_norm` or `attn_out`).
    pub attn_branch: Act,
    /// The FFN input.
    pub mlp_in: Act,
    /// The FFN branch added to the residual (`mlp_post_norm` or `mlp_out`).
    pub mlp_branch: Act,
    /// Whether the block is parallel-residual.
    pub parallel: bool,
    /// The planner's view of the layer's public tensors, in forward order (sizes at one token;
    /// only the names and the `needed` / `fusible` flags matter to [`LayerProgram::save_set`]).
    pub costs: Vec<TensorCost>,
}

impl LayerProgram {
    /// Lowers one layer of `spec`, with the planner's costs of its tensors: the structure is
    /// lowered once, and the costs read it ([`plan::program_costs`]).
    pub fn lower(spec: &ModelSpec, layer: &Layer) -> LayerProgram {
        let mut lp = LayerProgram::structure(layer);
        lp.costs = plan::program_costs(spec, layer, &lp, 1, 1, Dtype::F32);
        lp
    }

    /// Lowers one layer: its nodes and wiring, without costs (what the tensor vocabulary and the
    /// cost model read).
    pub fn structure(layer: &Layer) -> LayerProgram {
        let block = &layer.block;
        let pre = block.placement.pre();
        let post = block.placement.post();
        let mut nodes = Vec::new();
        let mut node = |output: Act, op: OpKind, inputs: &[Act]| {
            nodes.push(Node {
                output,
                op,
                inputs: inputs.to_vec(),
            })
        };
        let attn_in = if pre { Act::AttnNorm } else { Act::Input };
        if pre {
            node(Act::AttnNorm, OpKind::Norm, &[Act::Input]);
        }
        let rope = matches!(layer.position, Position::Rope(_));
        let (q, k) = match &layer.attention.mla {
            Some(m) => {
                let q_in = if m.q_rank.is_some() {
                    node(Act::QLatent, OpKind::Matmul, &[attn_in]);
                    node(Act::QLatentNorm, OpKind::Norm, &[Act::QLatent]);
                    Act::QLatentNorm
                } else {
                    attn_in
                };
                node(Act::Q, OpKind::Matmul, &[q_in]);
                node(Act::KvLatent, OpKind::Matmul, &[attn_in]);
                node(Act::KvLatentNorm, OpKind::Norm, &[Act::KvLatent]);
                node(Act::Kv, OpKind::Matmul, &[Act::KvLatentNorm]);
                let (q, k_pe) = if rope {
                    node(Act::QRope, OpKind::Rope, &[Act::Q]);
                    node(Act::KRope, OpKind::Rope, &[Act::KvLatent]);
                    (Act::QRope, Act::KRope)
                } else {
                    (Act::Q, Act::KvLatent)
                };
                node(Act::K, OpKind::Split, &[Act::Kv, k_pe]);
                node(Act::V, OpKind::Split, &[Act::Kv]);
                (q, Act::K)
            }
            None => {
                node(Act::Q, OpKind::Matmul, &[attn_in]);
                node(Act::K, OpKind::Matmul, &[attn_in]);
                node(Act::V, OpKind::Matmul, &[attn_in]);
                Self::qk_chain(layer, &mut node)
            }
        };
        node(Act::Attn, OpKind::Attention, &[q, k, Act::V]);
        node(Act::AttnOut, OpKind::Matmul, &[Act::Attn]);
        let attn_branch = if post {
            node(Act::AttnPostNorm, OpKind::Norm, &[Act::AttnOut]);
            Act::AttnPostNorm
        } else {
            Act::AttnOut
        };
        let parallel = block.parallel_residual;
        let stream = if parallel {
            Act::Input
        } else {
            node(Act::ResidMid, OpKind::Residual, &[Act::Input, attn_branch]);
            Act::ResidMid
        };
        let mlp_in = if pre && parallel && block.shared_norm {
            Act::AttnNorm
        } else if pre {
            node(Act::MlpNorm, OpKind::Norm, &[stream]);
            Act::MlpNorm
        } else {
            stream
        };
        match &layer.ffn {
            Ffn::Mlp(mlp) => {
                if mlp.activation.is_gated() {
                    node(Act::Gate, OpKind::Matmul, &[mlp_in]);
                    node(Act::Up, OpKind::Matmul, &[mlp_in]);
                    node(Act::ActOut, OpKind::Activation, &[Act::Gate, Act::Up]);
                } else {
                    node(Act::Up, OpKind::Matmul, &[mlp_in]);
                    node(Act::ActOut, OpKind::Activation, &[Act::Up]);
                }
                node(Act::MlpOut, OpKind::Matmul, &[Act::ActOut]);
            }
            Ffn::Moe(moe) => {
                node(Act::RouterLogits, OpKind::Matmul, &[mlp_in]);
                node(Act::RouterWeights, OpKind::Route, &[Act::RouterLogits]);
                node(
                    Act::ExpertIn,
                    OpKind::Dispatch,
                    &[mlp_in, Act::RouterLogits],
                );
                if moe.expert.activation.is_gated() {
                    node(
                        Act::Gate,
                        OpKind::Matmul,
                        &[Act::ExpertIn, Act::RouterLogits],
                    );
                    node(Act::Up, OpKind::Matmul, &[Act::ExpertIn, Act::RouterLogits]);
                    node(Act::ActOut, OpKind::Activation, &[Act::Gate, Act::Up]);
                } else {
                    node(Act::Up, OpKind::Matmul, &[Act::ExpertIn, Act::RouterLogits]);
                    node(Act::ActOut, OpKind::Activation, &[Act::Up]);
                }
                node(
                    Act::ExpertOut,
                    OpKind::Matmul,
                    &[Act::ActOut, Act::RouterLogits],
                );
                let mut combine_in = vec![Act::ExpertOut, Act::RouterWeights, Act::RouterLogits];
                if let Some(shared) = &moe.shared {
                    if moe.expert.activation.is_gated() {
                        node(Act::SharedGate, OpKind::Matmul, &[mlp_in]);
                        node(Act::SharedUp, OpKind::Matmul, &[mlp_in]);
                        node(
                            Act::SharedAct,
                            OpKind::Activation,
                            &[Act::SharedGate, Act::SharedUp],
                        );
                    } else {
                        node(Act::SharedUp, OpKind::Matmul, &[mlp_in]);
                        node(Act::SharedAct, OpKind::Activation, &[Act::SharedUp]);
                    }
                    node(Act::SharedOut, OpKind::Matmul, &[Act::SharedAct]);
                    combine_in.push(Act::SharedOut);
                    if shared.gate {
                        combine_in.push(mlp_in);
                    }
                }
                node(Act::MlpOut, OpKind::Combine, &combine_in);
            }
        }
        let mlp_branch = if post {
            node(Act::MlpPostNorm, OpKind::Norm, &[Act::MlpOut]);
            Act::MlpPostNorm
        } else {
            Act::MlpOut
        };
        LayerProgram {
            index: layer.index as usize,
            nodes,
            attn_in,
            q_final: q,
            k_final: k,
            attn_branch,
            mlp_in,
            mlp_branch,
            parallel,
            costs: Vec::new(),
        }
    }

    /// The qk-norm and RoPE nodes of q/k attention, in their order; returns the queries and keys
    /// attention reads.
    fn qk_chain(layer: &Layer, node: &mut impl FnMut(Act, OpKind, &[Act])) -> (Act, Act) {
        let rope = matches!(layer.position, Position::Rope(_));
        let (mut q, mut k) = (Act::Q, Act::K);
        // Llama 4 normalises the rotated queries and keys: its norm nodes follow the RoPE ones.
        let after_rope = rope && layer.attention.qk_norm.is_some_and(|n| n.after_rope);
        for is_norm in [!after_rope, after_rope] {
            if is_norm && layer.attention.qk_norm.is_some() {
                node(Act::QNormed, OpKind::Norm, &[q]);
                node(Act::KNormed, OpKind::Norm, &[k]);
                (q, k) = (Act::QNormed, Act::KNormed);
            } else if !is_norm && rope {
                node(Act::QRope, OpKind::Rope, &[q]);
                node(Act::KRope, OpKind::Rope, &[k]);
                (q, k) = (Act::QRope, Act::KRope);
            }
        }
        (q, k)
    }

    /// The node computing `act`, if this layer has it.
    pub fn node(&self, act: Act) -> Option<&Node> {
        self.nodes.iter().find(|n| n.output == act)
    }

    /// The unit `act` is kept in: tensors that share one buffer in the executors are saved or
    /// recomputed together, and the planner decides per unit. The units are the fused
    /// `[q; k; v]` buffer as attention reads it (q and k after qk-norm and RoPE, which run in place,
    /// and v), the dense MLP's `[gate; up]` projection, and a mixture-of-experts block's routed
    /// state (router logits and weights, dispatched rows, expert projections and activations,
    /// expert outputs, shared experts); every other tensor is its own unit. A unit is named by its
    /// first member in forward order; a private activation is in its owner's unit.
    pub fn unit_of(&self, act: Act) -> Act {
        let act = act.owner();
        let moe = self.node(Act::RouterLogits).is_some();
        if act == self.q_final || act == self.k_final || act == Act::V {
            self.q_final
        } else if moe
            && matches!(
                act,
                Act::RouterLogits
                    | Act::RouterWeights
                    | Act::ExpertIn
                    | Act::Gate
                    | Act::Up
                    | Act::ActOut
                    | Act::ExpertOut
                    | Act::SharedOut
            )
        {
            Act::RouterLogits
        } else if act == Act::Up && self.node(Act::Gate).is_some() {
            Act::Gate
        } else {
            act
        }
    }

    /// The public activation named `name`, if this layer has it.
    pub fn act_named(&self, name: &str) -> Option<Act> {
        self.nodes
            .iter()
            .map(|n| n.output)
            .find(|a| a.owner() == *a && a.name() == name)
    }

    /// The public activation names of this layer, in forward order: the checkpoint vocabulary
    /// ([`crate::tensors::layer_tensors`] returns this).
    pub fn tensor_names(&self) -> Vec<&'static str> {
        self.nodes
            .iter()
            .filter(|n| n.output.owner() == n.output)
            .map(|n| n.output.name())
            .collect()
    }

    /// Which activations are kept after forward under `policy` (indexed by `Act as usize`):
    /// `input`, and what the planner saves under `policy` (`plan::fixed_saves`; a private
    /// activation follows its owner). Errors when a clause names a tensor this layer lacks.
    pub fn save_set(&self, policy: &LayerCheckpoint) -> Result<[bool; N_ACTS], ProgramError> {
        let names = self.tensor_names();
        if let LayerCheckpoint::Save(list) | LayerCheckpoint::Recompute(list) = policy
            && let Some(bad) = list.iter().find(|n| !names.contains(&n.as_str()))
        {
            return Err(ProgramError::UnknownTensor {
                layer: self.index,
                name: bad.clone(),
                known: names.join(", "),
            });
        }
        let saves = plan::fixed_saves(policy, &self.costs);
        let mut keep = [false; N_ACTS];
        keep[Act::Input as usize] = true;
        for node in &self.nodes {
            let owner = node.output.owner().name();
            keep[node.output as usize] = self
                .costs
                .iter()
                .zip(&saves)
                .any(|(t, &saved)| saved && t.name == owner);
        }
        Ok(keep)
    }
}

/// The whole model's program: one [`LayerProgram`] per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Per layer, in order.
    pub layers: Vec<LayerProgram>,
}

impl Program {
    /// Lowers every layer of `spec`.
    pub fn lower(spec: &ModelSpec) -> Program {
        Program {
            layers: spec
                .layers
                .iter()
                .map(|layer| LayerProgram::lower(spec, layer))
                .collect(),
        }
    }
}
