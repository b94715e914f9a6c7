//! The IR: one resolved model description that every consumer reads.
//!
//! Every front end (the `.mspec` DSL, YAML, HF `config.json`) lowers into [`ModelSpec`]: global sizes
//! plus one fully resolved [`Layer`] row per transformer block. Nothing here is optional "to be
//! filled in later": every default is explicit, and every derived size (head_dim, kv groups, rotary
//! dims) is resolved once here, so the cost model, the tensor program, the executors and the code
//! generator never re-derive one on their own.
//!
//! The serde form of this module is the YAML/JSON interchange format (`modelspec expand`).
//!
//! Data flow:
//! ```text
//! .mspec ─► pest pairs ─► ast::Model (spans) ─► lower ─► ModelSpec ─► check (diagnostics)
//! YAML   ───────────────────────────────────────────────► ModelSpec ─► check
//! config.json ─► hf::import (field spans) ──────────────► ModelSpec ─► check
//! ```

use serde::{Deserialize, Serialize};

mod names;
mod queries;

/// A fully resolved model: global sizes and one row per layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's identifier (a Rust-friendly snake_case name, e.g. `llama_3_1_8b`).
    pub name: String,
    /// Vocabulary size as the tokenizer sees it.
    pub vocab: u64,
    /// Rows of the embedding / lm_head matrices: `vocab` rounded up to `vocab_pad_multiple`.
    pub vocab_padded: u64,
    /// The multiple the embedding rows are padded to (1 = no padding).
    pub vocab_pad_multiple: u64,
    /// Width of the residual stream.
    pub d_model: u64,
    /// Number of transformer blocks; equals `layers.len()`.
    pub n_layers: u64,
    /// Maximum sequence length (positions).
    pub context: u64,
    /// Dropout rates (0 = off).
    pub dropout: Dropout,
    /// Token (and optional learned position) embedding.
    pub embedding: Embedding,
    /// The norm applied to the last hidden state before the classifier (`None`: no final norm).
    pub final_norm: Option<Norm>,
    /// The classifier head.
    pub logits: Logits,
    /// How checkpoints name and lay out tensors.
    pub weights: WeightLayout,
    /// Global checkpoint options (per-layer policies live in each [`Layer`]).
    pub checkpoint: CheckpointGlobal,
    /// One resolved row per layer, `layers[i].index == i`.
    pub layers: Vec<Layer>,
}

/// Dropout probabilities, each in `[0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    /// After the embedding (token + position).
    pub embedding: f64,
    /// On the attention probabilities.
    pub attention: f64,
    /// On each sub-block's output before it is added to the residual stream.
    pub residual: f64,
}

/// Token embedding options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    /// The lm_head shares the token embedding matrix.
    pub tied: bool,
    /// Multiplier applied to the token embedding output (Gemma: sqrt(d_model)); 1.0 = none.
    pub scale: f64,
    /// How `scale` was written, for round-tripping (`sqrt(d_model)` or a number).
    pub scale_expr: ScaleExpr,
    /// Learned absolute position embeddings (GPT-2's `wpe`) with `context` rows.
    pub learned_positions: bool,
}

/// How a scale factor was specified.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleExpr {
    /// A literal number.
    Literal,
    /// `sqrt(d_model)`.
    SqrtDModel,
}

/// Normalisation kind and parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Norm {
    /// RMSNorm or LayerNorm.
    pub kind: NormKind,
    /// Epsilon added to the variance.
    pub eps: f64,
    /// Added to the learned weight: Gemma's `x * (1 + w)` is offset 1.
    pub offset: f64,
    /// Has a learned per-channel weight.
    pub weight: bool,
    /// Has a learned per-channel bias (LayerNorm only).
    pub bias: bool,
}

/// Which normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) * (offset + w)`.
    Rms,
    /// `(x - mean) / sqrt(var + eps) * (offset + w) + b`.
    Layer,
}

/// Where norms sit around each sub-block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormPlacement {
    /// `x + f(norm(x))` (GPT-2, Llama).
    Pre,
    /// `x + norm(f(x))` (OLMo-2).
    Post,
    /// `x + norm_post(f(norm_pre(x)))` (Gemma-2/3).
    Sandwich,
}

impl NormPlacement {
    /// A norm before each sub-block (`pre` and `sandwich`).
    pub fn pre(self) -> bool {
        matches!(self, NormPlacement::Pre | NormPlacement::Sandwich)
    }
    /// A norm after each sub-block (`post` and `sandwich`).
    pub fn post(self) -> bool {
        matches!(self, NormPlacement::Post | NormPlacement::Sandwich)
    }
}

/// The classifier head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logits {
    /// `softcap * tanh(logits / softcap)` when set.
    pub softcap: Option<f64>,
    /// lm_head has a bias (phi-2).
    pub bias: bool,
}

/// The checkpoint naming convention and fused layouts: how a spec maps onto HF weight files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightLayout {
    /// The naming scheme of tensors in the checkpoint.
    pub naming: Naming,
    /// How q, k and v projections are stored.
    pub qkv: QkvLayout,
    /// SwiGLU/GeGLU gate and up projections stored as one `gate_up_proj` (phi3).
    pub fused_gate_up: bool,
}

/// Tensor naming families of HF checkpoints. A naming family is a file-format choice, not an
/// architecture switch: the math is decided only by the other fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// `model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`... (Llama, Mistral,
    /// Qwen, Gemma, Phi-3, OLMo-2, Mixtral's `block_sparse_moe`, Qwen-MoE's `mlp.experts`).
    Llama,
    /// `transformer.h.N.attn.c_attn` with Conv1D `[in, out]` weights (GPT-2).
    Gpt2,
    /// `gpt_neox.layers.N.attention.query_key_value` (Pythia).
    GptNeox,
    /// `transformer.h.N.self_attention.query_key_value` (Falcon).
    Falcon,
    /// `model.layers.N.self_attn.dense`, `mlp.fc1`, `model.final_layernorm` (Phi-1/2).
    Phi,
}

/// How the q/k/v projections are laid out in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkvLayout {
    /// Three separate tensors.
    Separate,
    /// One tensor, rows `[q; k; v]` (GPT-2's c_attn, Phi-3's qkv_proj).
    Fused,
    /// One tensor, grouped per kv head: `[q_g0.., k_g, v_g]` for each kv group (GPT-NeoX, Falcon).
    FusedPerHead,
}

/// Global activation-checkpoint options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckpointGlobal {
    /// A memory budget the planner resolves into per-layer save sets.
    pub budget: Option<Budget>,
}

/// A memory budget for saved activations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A fraction in `[0, 1]` of the no-checkpoint activation memory.
    Fraction(f64),
    /// An absolute number of bytes.
    Bytes(u64),
}

/// One resolved transformer block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Position in the stack, from 0.
    pub index: u64,
    /// Self-attention.
    pub attention: Attention,
    /// Positional encoding applied in this layer's attention.
    pub position: Position,
    /// Norms and residual wiring.
    pub block: Block,
    /// The feed-forward part: a dense MLP or a mixture of experts.
    pub ffn: Ffn,
    /// This layer's activation-checkpoint policy.
    pub checkpoint: LayerCheckpoint,
}

/// Norms and residual structure of one block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// The norm used around attention and MLP.
    pub norm: Norm,
    /// Where the norms sit.
    pub placement: NormPlacement,
    /// `x + attn(norm(x)) + mlp(norm(x))` (GPT-NeoX, Phi-2, Falcon) instead of sequential.
    pub parallel_residual: bool,
    /// With `parallel_residual`: one norm feeds both attention and MLP (Phi-2, Falcon-7B).
    pub shared_norm: bool,
}

/// Self-attention of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attention {
    /// Query heads.
    pub heads: u64,
    /// Key/value heads (= heads: MHA; 1: MQA; between: GQA). Divides `heads`.
    pub kv_heads: u64,
    /// Width of one head (explicit, or d_model / heads).
    pub head_dim: u64,
    /// Bias on q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub out_bias: bool,
    /// Normalisation of queries and keys (before RoPE unless [`QkNorm::after_rope`]).
    pub qk_norm: Option<QkNorm>,
    /// `softcap * tanh(scores / softcap)` on attention scores.
    pub softcap: Option<f64>,
    /// Multiplier on q·k (resolved: default head_dim^-0.5).
    pub scale: f64,
    /// Sliding window: a query attends to the last `window` positions including itself.
    pub window: Option<u64>,
    /// Chunked local attention (Llama 4): positions are cut into chunks of `chunk`, and a query
    /// attends causally to the keys of its own chunk only. Absent: no chunking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u64>,
    /// Attention sinks (GPT-OSS): a learned logit per query head (`attn.sinks`, `[heads]`) joins
    /// each softmax's denominator and takes part of the probability mass, without a value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sinks: bool,
    /// A position-dependent multiplier on the queries (Llama 4's temperature tuning of its NoPE
    /// layers). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<QueryTemperature>,
    /// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2): queries and keys/values through
    /// low-rank latents instead of q/k/v projections. Absent: q/k/v projections. With it,
    /// `head_dim` is the query/key width `nope_dim + rope_dim`, `kv_heads` equals `heads`, and
    /// `qkv_bias` puts biases on the down projections (`q_a`, `kv_a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mla: Option<Mla>,
}

/// Multi-head latent attention. Per token, with `x` the attention input:
/// ```text
/// q      = q_b(norm_q(q_a(x)))  (q_rank set)   or   q(x)      [heads, nope_dim + rope_dim]
/// [c; r] = kv_a(x)              c: [kv_rank], r: [rope_dim] (one rotary key shared by all heads)
/// [k_nope_h; v_h] = kv_b(norm_kv(c))_h           [nope_dim], [v_dim] per head
/// k_h    = [k_nope_h; rope(r)],  q_h = [q_nope_h; rope(q_rope_h)]
/// ```
/// then causal attention per head (query/key width `nope_dim + rope_dim`, value width `v_dim`)
/// and `o` from `heads · v_dim`. RoPE rotates the last `rope_dim` dims of each query head and the
/// shared key; decoding caches `norm_kv(c)` and `rope(r)` per position, not per-head keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mla {
    /// Rank of the query latent (`q_lora_rank`); `None`: a direct query projection (V2-Lite).
    pub q_rank: Option<u64>,
    /// Rank of the joint key/value latent (`kv_lora_rank`).
    pub kv_rank: u64,
    /// Query/key dims per head without RoPE (`qk_nope_head_dim`).
    pub nope_dim: u64,
    /// Query/key dims per head with RoPE (`qk_rope_head_dim`), also the shared key's width.
    pub rope_dim: u64,
    /// Value dims per head (`v_head_dim`).
    pub v_dim: u64,
    /// The norm of both latents (DeepSeek: RMSNorm, eps 1e-6, whatever `rms_norm_eps` says).
    pub norm: Norm,
}

impl Mla {
    /// Elements a decoder caches per token and layer: the normalised latent and the rotated key.
    pub fn cache_width(&self) -> u64 {
        self.kv_rank + self.rope_dim
    }
}

impl Attention {
    /// Width of one value head: `head_dim`, or MLA's `v_dim`.
    pub fn v_head_dim(&self) -> u64 {
        self.mla.map_or(self.head_dim, |m| m.v_dim)
    }

    /// Elements a decoder caches per token for this layer: keys and values of every kv head, or
    /// MLA's latent and rotary key.
    pub fn cache_width(&self) -> u64 {
        match &self.mla {
            Some(m) => m.cache_width(),
            None => self.kv_heads * (self.head_dim + self.v_head_dim()),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

/// Llama 4's attention temperature tuning: the query at absolute position `t` is multiplied by
/// `1 + scale · ln(1 + floor((t + 1) / floor))` before the scores are formed, which sharpens
/// attention at long range. The multiplier is 1 for `t + 1 < floor`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryTemperature {
    /// Positions per step of the logarithm (HF's `floor_scale`), at least 1.
    pub floor: u64,
    /// Strength (HF's `attn_scale`), positive.
    pub scale: f64,
}

impl QueryTemperature {
    /// The multiplier on the query at absolute position `t`.
    pub fn factor(&self, t: u64) -> f64 {
        // HF computes it in f32: log1p(floor((t + 1) / floor_scale)) * attn_scale + 1.
        let steps = ((t as f32 + 1.0) / self.floor as f32).floor();
        (steps.ln_1p() * self.scale as f32 + 1.0) as f64
    }
}

/// Query/key normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QkNorm {
    /// The norm applied.
    pub norm: Norm,
    /// Per head (weights of size head_dim) or over the whole projection (heads*head_dim).
    pub scope: QkNormScope,
    /// Applied to the rotated queries and keys instead of before RoPE (Llama 4's L2 norm).
    #[serde(default, skip_serializing_if = "is_false")]
    pub after_rope: bool,
}

/// What a qk-norm normalises over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNormScope {
    /// Each head separately (Qwen3, Gemma-3).
    Head,
    /// The whole q (or k) projection (OLMo-2).
    Full,
}

/// Positional encoding of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Position {
    /// No positional information in this layer.
    None,
    /// Learned absolute positions, added once at the embedding (see [`Embedding::learned_positions`]).
    Learned,
    /// ALiBi linear biases with the standard geometric slopes per head.
    Alibi,
    /// Rotary position embedding.
    Rope(Rope),
}

/// Rotary embedding, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rope {
    /// Base frequency.
    pub theta: f64,
    /// Fraction of head_dim rotated, in (0, 1].
    pub fraction: f64,
    /// Rotated dimensions per head = head_dim * fraction (even).
    pub rotary_dims: u64,
    /// Pairing of dimensions.
    pub style: RopeStyle,
    /// Context-extension scaling.
    pub scaling: RopeScaling,
}

/// How rotary dimensions are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// (i, i + d/2) pairs: HF's `rotate_half`.
    HalfSplit,
    /// (2i, 2i+1) pairs: GPT-J / original RoFormer.
    Interleaved,
}

/// RoPE scaling variants, as HF's `rope_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Dynamic NTK: theta grows with the sequence beyond `original_context`.
    DynamicNtk {
        /// Scale factor.
        factor: f64,
        /// Pretraining context.
        original_context: u64,
    },
    /// YaRN.
    Yarn {
        /// Scale factor.
        factor: f64,
        /// Pretraining context.
        original_context: u64,
        /// Extrapolation boundary (fast).
        beta_fast: f64,
        /// Interpolation boundary (slow).
        beta_slow: f64,
        /// Attention temperature multiplier applied to cos/sin (resolved: 0.1 ln(factor) + 1).
        attention_factor: f64,
        /// Round the correction range outwards to whole dimensions (HF's `truncate`, default
        /// true; GPT-OSS sets it false).
        #[serde(default = "default_true", skip_serializing_if = "is_true")]
        truncate: bool,
        /// DeepSeek's `mscale` and `mscale_all_dim` as written (`[mscale, mscale_all_dim]`),
        /// kept for export: `attention_factor` is resolved from them (`m(mscale) /
        /// m(mscale_all_dim)` with `m(s) = 0.1 s ln(factor) + 1`), and an MLA layer's softmax
        /// scale carries `m(mscale_all_dim)²`. Absent: not written.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mscale: Option<[f64; 2]>,
    },
    /// Llama 3.1's piecewise frequency scaling.
    Llama3 {
        /// Scale factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Pretraining context.
        original_context: u64,
    },
    /// LongRoPE (Phi-3): per-dimension factors, short below `original_context`, long above.
    Longrope {
        /// rotary_dims/2 factors used up to `original_context`.
        short_factor: Vec<f64>,
        /// rotary_dims/2 factors used beyond it.
        long_factor: Vec<f64>,
        /// Pretraining context.
        original_context: u64,
        /// Multiplier on cos/sin (resolved from the context ratio when not given).
        attention_factor: f64,
    },
}

/// YaRN's magnitude correction `m(s) = 0.1 · s · ln(factor) + 1` (1 when `factor ≤ 1`), as
/// transformers' `get_mscale`.
pub fn yarn_mscale(factor: f64, s: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * s * factor.ln() + 1.0
    }
}

/// YaRN's default attention factor (the multiplier on cos/sin): `m(mscale) / m(mscale_all_dim)`
/// when DeepSeek's pair is given and both are non-zero, else `m(1)`.
pub fn yarn_attention_factor(factor: f64, mscale: Option<[f64; 2]>) -> f64 {
    match mscale {
        Some([m, all]) if m != 0.0 && all != 0.0 => {
            yarn_mscale(factor, m) / yarn_mscale(factor, all)
        }
        _ => yarn_mscale(factor, 1.0),
    }
}

/// The feed-forward part of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Ffn {
    /// A dense MLP.
    Mlp(Mlp),
    /// A mixture of experts.
    Moe(Moe),
}

/// A dense MLP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mlp {
    /// The activation structure.
    pub activation: MlpKind,
    /// Hidden width.
    pub hidden: u64,
    /// Biases on the projections.
    pub bias: bool,
}

/// MLP activation structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `down(gelu(up(x)))`, exact erf GELU.
    Gelu,
    /// `down(gelu_tanh(up(x)))`.
    GeluTanh,
    /// `down(relu(up(x))²)`.
    ReluSquared,
    /// `down(silu(gate(x)) * up(x))`.
    Swiglu,
    /// `down(gelu(gate(x)) * up(x))`, exact erf GELU.
    Geglu,
    /// `down(gelu_tanh(gate(x)) * up(x))` (Gemma).
    GegluTanh,
}

impl MlpKind {
    /// Gated variants have separate gate and up projections.
    pub fn is_gated(self) -> bool {
        matches!(self, MlpKind::Swiglu | MlpKind::Geglu | MlpKind::GegluTanh)
    }
}

/// A mixture of experts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moe {
    /// Routed experts.
    pub experts: u64,
    /// Experts per token.
    pub top_k: u64,
    /// Each expert's MLP (activation, hidden, bias).
    pub expert: Mlp,
    /// Order of softmax and top-k in the router.
    pub router: RouterOrder,
    /// Renormalise the top-k weights to sum to 1.
    pub renormalize: bool,
    /// Always-on shared experts.
    pub shared: Option<SharedExperts>,
    /// Load-balancing auxiliary loss coefficient (0 = none).
    pub aux_loss: f64,
    /// The router projection has a bias (`moe.router.bias`, GPT-OSS).
    #[serde(default, skip_serializing_if = "is_false")]
    pub router_bias: bool,
    /// A learned per-expert bias (`moe.router.correction_bias`, DeepSeek-V3's
    /// `e_score_correction_bias`) added to the sigmoid scores for *choosing* the experts only: the
    /// weights stay the uncorrected scores, and the bias gets no gradient (HF keeps it as a
    /// buffer, outside `parameters()`). Needs the `sigmoid_topk` router.
    #[serde(default, skip_serializing_if = "is_false")]
    pub correction_bias: bool,
    /// Group-limited routing (DeepSeek-V3's `n_group` / `topk_group`). Absent: one group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<ExpertGroups>,
    /// Multiplier on the routed weights after any renormalisation (`routed_scaling_factor`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub routed_scale: f64,
    /// Where the router weights apply: the experts' outputs (the usual), or their inputs.
    #[serde(default, skip_serializing_if = "Weighting::is_output")]
    pub weighting: Weighting,
    /// GPT-OSS's clamped SwiGLU in the routed experts (with `expert: swiglu`). Absent: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamp: Option<SwigluClamp>,
}

impl Default for Moe {
    /// One SwiGLU expert of width 1, top-1, softmax router: placeholder sizes, and every optional
    /// routing feature off (no biases, one group, scale 1, weights on the outputs, no clamp).
    fn default() -> Self {
        Moe {
            experts: 1,
            top_k: 1,
            expert: Mlp {
                activation: MlpKind::Swiglu,
                hidden: 1,
                bias: false,
            },
            router: RouterOrder::SoftmaxTopk,
            renormalize: false,
            shared: None,
            aux_loss: 0.0,
            router_bias: false,
            correction_bias: false,
            groups: None,
            routed_scale: 1.0,
            weighting: Weighting::Output,
            clamp: None,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// Router order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterOrder {
    /// softmax over all experts, then take top-k (Qwen-MoE, Mixtral with renormalisation).
    SoftmaxTopk,
    /// top-k over logits, then softmax over those k.
    TopkSoftmax,
    /// `sigmoid` of each logit, then the top-k scores (plus the correction bias when the spec has
    /// one, within the chosen groups when it has groups); the weights are the chosen sigmoid
    /// scores, renormalised when `renormalize` (DeepSeek-V3, GLM-4.5). Without a correction bias
    /// the choice is made on the logits, which sigmoid orders the same way (Llama 4).
    SigmoidTopk,
}

/// Group-limited routing: the experts are cut into `count` equal groups of consecutive indices;
/// each group scores the sum of its two best (bias-corrected) scores, and a token picks its
/// experts only from its `top` best groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertGroups {
    /// Number of groups (`n_group`); divides the number of experts.
    pub count: u64,
    /// Groups a token may route into (`topk_group`), in `1..=count`.
    pub top: u64,
}

/// Where the router weights multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// `Σ_s w_s · expert_s(x)`.
    #[default]
    Output,
    /// `Σ_s expert_s(w_s · x)` (Llama 4).
    Input,
}

impl Weighting {
    fn is_output(&self) -> bool {
        *self == Weighting::Output
    }
}

/// GPT-OSS's clamped SwiGLU: with `g = min(gate, limit)` and `u = clamp(up, -limit, limit)`,
/// `act = (u + 1) · g · sigmoid(alpha · g)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwigluClamp {
    /// The sigmoid's slope (GPT-OSS: 1.702), positive.
    pub alpha: f64,
    /// The clamp bound (GPT-OSS: 7.0), positive.
    pub limit: f64,
}

/// Shared experts that every token passes through.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedExperts {
    /// Number of shared experts (they are stored as one MLP of width count*hidden).
    pub count: u64,
    /// Hidden width of each.
    pub hidden: u64,
    /// A learned sigmoid gate `sigmoid(x·w)` scales the shared output (Qwen2-MoE).
    pub gate: bool,
}

/// Activation-checkpoint policy of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "tensors")]
pub enum LayerCheckpoint {
    /// Save every activation.
    None,
    /// Keep only the layer input; recompute the rest in backward.
    Full,
    /// Save only these named tensors.
    Save(Vec<String>),
    /// Recompute these named tensors, save the rest.
    Recompute(Vec<String>),
    /// Recompute cheap fusible pointwise ops, never a matmul.
    Auto,
}
