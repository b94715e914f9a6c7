//! Canonical parameter names ↔ HF checkpoint names, for every [`Naming`] family.
//!
//! [`checkpoint_layout`] walks the spec layer by layer and says, for each tensor the checkpoint
//! stores, its HF name, its shape and which canonical tensors (or row blocks of them) it holds.
//! The naming family decides names and fused layouts only; which tensors exist is decided by the
//! parameter table (`modelspec_dsl::params`), so a canonical tensor the family has no name for is
//! reported instead of silently dropped.

use std::collections::BTreeMap;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::{Ffn, Layer, Naming, NormPlacement, QkvLayout, RouterOrder, Weighting};
use modelspec_dsl::params::parameters;

use super::WeightsError;
use super::layout::{CheckpointTensor, Piece, rows_cols};

/// How MoE expert weights are named in a `llama`-family checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MoeNaming {
    /// `mlp.gate`, `mlp.experts.{e}.{gate,up,down}_proj` (Qwen2-MoE and Qwen3-MoE Hub files).
    Qwen,
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.{e}.{w1,w3,w2}` (Mixtral Hub files).
    Mixtral,
    /// transformers 5's native layout: `mlp.gate`, `mlp.experts.gate_up_proj`
    /// `[E, 2·hidden, d_model]` (each expert's gate rows, then its up rows) and
    /// `mlp.experts.down_proj` `[E, d_model, hidden]`. The default for saving: the IR does not say
    /// whether an MoE is "Mixtral" or "Qwen", transformers 5 loads per-expert names only in its
    /// own family's spelling, and it loads this layout for Mixtral, Qwen2-MoE and Qwen3-MoE alike.
    #[default]
    Stacked,
    /// GPT-OSS's layout: `mlp.router` (with a bias), `mlp.experts.gate_up_proj`
    /// `[E, d_model, 2·hidden]` with each expert's gate and up columns alternating, its
    /// `gate_up_proj_bias` `[E, 2·hidden]` likewise, `mlp.experts.down_proj` `[E, hidden, d_model]`
    /// and `down_proj_bias` `[E, d_model]`. What [`MoeNaming::Stacked`] means for a spec whose
    /// experts or router have biases (transformers 5 keeps GPT-OSS in its own layout).
    GptOss,
    /// Llama 4's layout: every FFN under `feed_forward` (dense layers'
    /// `feed_forward.{gate,up,down}_proj` too), `feed_forward.router`,
    /// `feed_forward.experts.gate_up_proj` `[E, d_model, 2·hidden]` (gate columns, then up),
    /// `feed_forward.experts.down_proj` `[E, hidden, d_model]`, `feed_forward.shared_expert`.
    /// What [`MoeNaming::Stacked`] means for a spec whose router weights its experts' inputs.
    Llama4,
}

impl MoeNaming {
    /// The naming a checkpoint of `spec` uses under this choice: `Stacked` (transformers 5's
    /// native layout) becomes the native layout of the model kinds that have their own.
    pub fn resolve(self, spec: &ModelSpec) -> MoeNaming {
        if self != MoeNaming::Stacked {
            return self;
        }
        let moes = || {
            spec.layers.iter().filter_map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(m),
                Ffn::Mlp(_) => None,
            })
        };
        if moes().any(|m| m.weighting == Weighting::Input) {
            MoeNaming::Llama4
        } else if moes().any(|m| m.router_bias || m.expert.bias || m.clamp.is_some()) {
            MoeNaming::GptOss
        } else {
            MoeNaming::Stacked
        }
    }
}

/// Choices a checkpoint makes that the IR does not fix: detected when loading, chosen when saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// Names carry the base-model prefix (`model.`, `transformer.`, `gpt_neox.`); GPT-2 files
    /// saved from `GPT2Model` lack it.
    pub base_prefix: bool,
    /// How MoE experts are named (llama family only).
    pub moe: MoeNaming,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            base_prefix: true,
            moe: MoeNaming::default(),
        }
    }
}

impl Dialect {
    /// Guesses the dialect of a checkpoint from its tensor names.
    pub fn detect<'a>(
        spec: &ModelSpec,
        names: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Dialect {
        let prefix = base_prefix(spec.weights.naming);
        let has_prefixed = names.clone().into_iter().any(|n| n.starts_with(prefix));
        let any = |pat: &str| names.clone().into_iter().any(|n| n.contains(pat));
        let moe = if any(".block_sparse_moe.") {
            MoeNaming::Mixtral
        } else if any(".feed_forward.") {
            MoeNaming::Llama4
        } else if any(".mlp.router.") {
            MoeNaming::GptOss
        } else if names
            .into_iter()
            .any(|n| n.ends_with(".mlp.experts.gate_up_proj"))
        {
            MoeNaming::Stacked
        } else {
            MoeNaming::Qwen
        };
        Dialect {
            base_prefix: has_prefixed,
            moe,
        }
    }
}

/// The base-model prefix of a naming family.
pub fn base_prefix(naming: Naming) -> &'static str {
    match naming {
        Naming::Llama | Naming::Phi => "model.",
        Naming::Gpt2 | Naming::Falcon => "transformer.",
        Naming::GptNeox => "gpt_neox.",
    }
}

/// Name of the classifier weight in a family's checkpoints.
pub fn lm_head_name(naming: Naming) -> &'static str {
    match naming {
        Naming::GptNeox => "embed_out",
        _ => "lm_head",
    }
}

/// Checkpoint tensors that carry no parameter (causal-mask buffers, cached RoPE frequencies) and
/// are skipped when loading.
pub fn is_ignorable(name: &str) -> bool {
    let last2: Vec<&str> = name.rsplitn(3, '.').take(2).collect();
    name.ends_with("rotary_emb.inv_freq")
        || matches!(
            last2.as_slice(),
            ["bias" | "masked_bias", "attn" | "attention"]
        )
}

/// Canonical shapes of every parameter of `spec`.
pub fn canonical_shapes(spec: &ModelSpec) -> BTreeMap<String, Vec<usize>> {
    parameters(spec)
        .into_iter()
        .map(|p| (p.name, p.shape.iter().map(|&d| d as usize).collect()))
        .collect()
}

/// Every tensor of `spec`'s checkpoint in naming family `spec.weights.naming` and `dialect`, in
/// the parameter-table order. Errors when a canonical parameter has no name in the family.
pub fn checkpoint_layout(
    spec: &ModelSpec,
    dialect: Dialect,
) -> Result<Vec<CheckpointTensor>, WeightsError> {
    let shapes = canonical_shapes(spec);
    let naming = spec.weights.naming;
    let base = if dialect.base_prefix {
        base_prefix(naming)
    } else {
        ""
    };
    let mut b = Builder {
        shapes: &shapes,
        qkv: spec.weights.qkv,
        fused_gate_up: spec.weights.fused_gate_up,
        out: Vec::new(),
    };
    let dialect = Dialect {
        moe: dialect.moe.resolve(spec),
        ..dialect
    };
    let (embed, pos, fin) = match naming {
        Naming::Llama | Naming::Phi => ("embed_tokens", "embed_positions", ""),
        Naming::Gpt2 => ("wte", "wpe", "ln_f"),
        Naming::GptNeox => ("embed_in", "embed_positions", "final_layer_norm"),
        Naming::Falcon => ("word_embeddings", "embed_positions", "ln_f"),
    };
    let fin = match naming {
        Naming::Llama => "norm",
        Naming::Phi => "final_layernorm",
        _ => fin,
    };
    b.plain(&format!("{base}{embed}.weight"), "embed.weight");
    b.plain(&format!("{base}{pos}.weight"), "pos_embed.weight");
    for layer in &spec.layers {
        let layer_prefix = match naming {
            Naming::Llama | Naming::Phi | Naming::GptNeox => {
                format!("{base}layers.{}.", layer.index)
            }
            Naming::Gpt2 | Naming::Falcon => format!("{base}h.{}.", layer.index),
        };
        b.layer(naming, dialect, layer, &layer_prefix);
    }
    b.affine(&format!("{base}{fin}"), "final_norm");
    b.affine(lm_head_name(naming), "lm_head");

    let mut covered: BTreeMap<&str, usize> = BTreeMap::new();
    for ct in &b.out {
        for p in &ct.pieces {
            *covered.entry(p.canonical.as_str()).or_default() += p.rows;
        }
    }
    let unmapped: Vec<String> = shapes
        .iter()
        .filter(|(name, shape)| covered.get(name.as_str()).copied() != Some(rows_cols(shape).0))
        .map(|(name, _)| name.clone())
        .collect();
    if !unmapped.is_empty() {
        return Err(WeightsError::Unsupported {
            naming: format!("{naming:?}").to_lowercase(),
            params: unmapped,
        });
    }
    Ok(b.out)
}

struct Builder<'a> {
    shapes: &'a BTreeMap<String, Vec<usize>>,
    qkv: QkvLayout,
    fused_gate_up: bool,
    out: Vec<CheckpointTensor>,
}

impl Builder<'_> {
    fn rows(&self, canonical: &str) -> Option<usize> {
        self.shapes.get(canonical).map(|s| rows_cols(s).0)
    }

    /// Pushes `name` made of whole canonical tensors `parts` (all present, or nothing is pushed).
    fn concat(&mut self, name: &str, parts: &[String], transpose: bool) {
        let mut pieces = Vec::new();
        for part in parts {
            let Some(rows) = self.rows(part) else { return };
            pieces.push(Piece {
                canonical: part.clone(),
                row_start: 0,
                rows,
            });
        }
        self.push_pieces(name, pieces, transpose, None);
    }

    fn push_pieces(
        &mut self,
        name: &str,
        pieces: Vec<Piece>,
        transpose: bool,
        shape: Option<Vec<usize>>,
    ) {
        let Some(first) = pieces.first() else { return };
        let first_shape = &self.shapes[&first.canonical];
        let total: usize = pieces.iter().map(|p| p.rows).sum();
        let shape = shape.unwrap_or_else(|| {
            let mut s = first_shape.clone();
            s[0] = total;
            if transpose && s.len() == 2 {
                s.swap(0, 1);
            }
            s
        });
        // A transposed vector (a Conv1D bias) is stored as it is.
        let transpose = transpose && first_shape.len() == 2;
        self.out.push(CheckpointTensor {
            name: name.to_string(),
            shape,
            pieces,
            transpose,
            blocks: 1,
            interleave: false,
        });
    }

    fn plain(&mut self, name: &str, canonical: &str) {
        self.concat(name, &[canonical.to_string()], false);
    }

    /// `{name}.weight` / `{name}.bias` from `{canonical}.weight` / `.bias`, whichever exist.
    fn affine(&mut self, name: &str, canonical: &str) {
        self.plain(&format!("{name}.weight"), &format!("{canonical}.weight"));
        self.plain(&format!("{name}.bias"), &format!("{canonical}.bias"));
    }

    /// A linear map (`transpose`: Conv1D `[in, out]` storage) with its optional bias.
    fn linear(&mut self, name: &str, canonical: &str, transpose: bool) {
        self.concat(
            &format!("{name}.weight"),
            &[format!("{canonical}.weight")],
            transpose,
        );
        self.plain(&format!("{name}.bias"), &format!("{canonical}.bias"));
    }

    /// Several linear maps fused by rows (`[q; k; v]`, `[gate; up]`).
    fn fused_linear(&mut self, name: &str, canonicals: &[String], transpose: bool) {
        for suffix in ["weight", "bias"] {
            let parts: Vec<String> = canonicals.iter().map(|c| format!("{c}.{suffix}")).collect();
            self.concat(
                &format!("{name}.{suffix}"),
                &parts,
                transpose && suffix == "weight",
            );
        }
    }

    /// q/k/v fused per kv group: for each group, its query heads, then its key head, then its
    /// value head, each `head_dim` rows (GPT-NeoX with one query head per group, Falcon).
    fn per_head_qkv(&mut self, name: &str, attn: &str, layer: &Layer) {
        let a = &layer.attention;
        let (hd, groups) = (a.head_dim as usize, a.kv_heads as usize);
        let per_group = (a.heads / a.kv_heads.max(1)) as usize;
        for suffix in ["weight", "bias"] {
            let [q, k, v] = ["q", "k", "v"].map(|x| format!("{attn}.{x}.{suffix}"));
            if !self.shapes.contains_key(&q) {
                continue;
            }
            let mut pieces = Vec::new();
            for g in 0..groups {
                for h in 0..per_group {
                    pieces.push(Piece {
                        canonical: q.clone(),
                        row_start: (g * per_group + h) * hd,
                        rows: hd,
                    });
                }
                pieces.push(Piece {
                    canonical: k.clone(),
                    row_start: g * hd,
                    rows: hd,
                });
                pieces.push(Piece {
                    canonical: v.clone(),
                    row_start: g * hd,
                    rows: hd,
                });
            }
            self.push_pieces(&format!("{name}.{suffix}"), pieces, false, None);
        }
    }

    fn layer(&mut self, naming: Naming, dialect: Dialect, layer: &Layer, p: &str) {
        let c = format!("layers.{}", layer.index);
        let attn = format!("{c}.attn");
        let qkv = [
            format!("{attn}.q"),
            format!("{attn}.k"),
            format!("{attn}.v"),
        ];
        let block = &layer.block;
        match naming {
            Naming::Llama => {
                self.affine(&format!("{p}input_layernorm"), &format!("{c}.attn_norm"));
                match block.placement {
                    NormPlacement::Pre => {
                        self.affine(
                            &format!("{p}post_attention_layernorm"),
                            &format!("{c}.mlp_norm"),
                        );
                    }
                    NormPlacement::Sandwich => {
                        self.affine(
                            &format!("{p}post_attention_layernorm"),
                            &format!("{c}.attn_post_norm"),
                        );
                        self.affine(
                            &format!("{p}pre_feedforward_layernorm"),
                            &format!("{c}.mlp_norm"),
                        );
                        self.affine(
                            &format!("{p}post_feedforward_layernorm"),
                            &format!("{c}.mlp_post_norm"),
                        );
                    }
                    NormPlacement::Post => {
                        self.affine(
                            &format!("{p}post_attention_layernorm"),
                            &format!("{c}.attn_post_norm"),
                        );
                        self.affine(
                            &format!("{p}post_feedforward_layernorm"),
                            &format!("{c}.mlp_post_norm"),
                        );
                    }
                }
                let sa = format!("{p}self_attn");
                match self.qkv {
                    QkvLayout::Separate => {
                        for (x, canon) in ["q", "k", "v"].iter().zip(&qkv) {
                            self.linear(&format!("{sa}.{x}_proj"), canon, false);
                        }
                    }
                    QkvLayout::Fused => self.fused_linear(&format!("{sa}.qkv_proj"), &qkv, false),
                    QkvLayout::FusedPerHead => {
                        self.per_head_qkv(&format!("{sa}.qkv_proj"), &attn, layer)
                    }
                }
                self.affine(&format!("{sa}.q_norm"), &format!("{attn}.q_norm"));
                self.affine(&format!("{sa}.k_norm"), &format!("{attn}.k_norm"));
                // DeepSeek's latent attention (present only in specs that have it).
                for (hf, canon) in [
                    ("q_a_proj", "q_a"),
                    ("q_b_proj", "q_b"),
                    ("kv_a_proj_with_mqa", "kv_a"),
                    ("kv_b_proj", "kv_b"),
                ] {
                    self.linear(&format!("{sa}.{hf}"), &format!("{attn}.{canon}"), false);
                }
                self.affine(&format!("{sa}.q_a_layernorm"), &format!("{attn}.q_a_norm"));
                self.affine(
                    &format!("{sa}.kv_a_layernorm"),
                    &format!("{attn}.kv_a_norm"),
                );
                self.linear(&format!("{sa}.o_proj"), &format!("{attn}.o"), false);
                // GPT-OSS's per-head sink logits.
                self.plain(&format!("{sa}.sinks"), &format!("{attn}.sinks"));
                self.llama_ffn(dialect, layer, p, &c);
            }
            Naming::Phi => {
                self.affine(&format!("{p}input_layernorm"), &format!("{c}.attn_norm"));
                self.affine(
                    &format!("{p}post_attention_layernorm"),
                    &format!("{c}.mlp_norm"),
                );
                let sa = format!("{p}self_attn");
                match self.qkv {
                    QkvLayout::Fused => self.fused_linear(&format!("{sa}.qkv_proj"), &qkv, false),
                    _ => {
                        for (x, canon) in ["q", "k", "v"].iter().zip(&qkv) {
                            self.linear(&format!("{sa}.{x}_proj"), canon, false);
                        }
                    }
                }
                self.affine(&format!("{sa}.q_layernorm"), &format!("{attn}.q_norm"));
                self.affine(&format!("{sa}.k_layernorm"), &format!("{attn}.k_norm"));
                self.linear(&format!("{sa}.dense"), &format!("{attn}.o"), false);
                self.linear(&format!("{p}mlp.fc1"), &format!("{c}.mlp.up"), false);
                self.linear(&format!("{p}mlp.fc2"), &format!("{c}.mlp.down"), false);
            }
            Naming::Gpt2 => {
                self.affine(&format!("{p}ln_1"), &format!("{c}.attn_norm"));
                self.affine(&format!("{p}ln_2"), &format!("{c}.mlp_norm"));
                self.fused_linear(&format!("{p}attn.c_attn"), &qkv, true);
                self.linear(&format!("{p}attn.c_proj"), &format!("{attn}.o"), true);
                self.linear(&format!("{p}mlp.c_fc"), &format!("{c}.mlp.up"), true);
                self.linear(&format!("{p}mlp.c_proj"), &format!("{c}.mlp.down"), true);
            }
            Naming::GptNeox => {
                self.affine(&format!("{p}input_layernorm"), &format!("{c}.attn_norm"));
                self.affine(
                    &format!("{p}post_attention_layernorm"),
                    &format!("{c}.mlp_norm"),
                );
                self.neox_attention_mlp(&format!("{p}attention"), p, &c, &qkv, layer);
            }
            Naming::Falcon => {
                if block.parallel_residual && !block.shared_norm {
                    self.affine(&format!("{p}ln_attn"), &format!("{c}.attn_norm"));
                    self.affine(&format!("{p}ln_mlp"), &format!("{c}.mlp_norm"));
                } else {
                    self.affine(&format!("{p}input_layernorm"), &format!("{c}.attn_norm"));
                    self.affine(
                        &format!("{p}post_attention_layernorm"),
                        &format!("{c}.mlp_norm"),
                    );
                }
                self.neox_attention_mlp(&format!("{p}self_attention"), p, &c, &qkv, layer);
            }
        }
    }

    /// The attention and MLP of a GPT-NeoX-style layer (GPT-NeoX under `attention`, Falcon under
    /// `self_attention`): `{sa}.query_key_value` (fused, or interleaved per head), `{sa}.dense`,
    /// `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`. `p` is the HF layer prefix, `c` the canonical one.
    fn neox_attention_mlp(&mut self, sa: &str, p: &str, c: &str, qkv: &[String], layer: &Layer) {
        let attn = format!("{c}.attn");
        match self.qkv {
            QkvLayout::Fused => self.fused_linear(&format!("{sa}.query_key_value"), qkv, false),
            _ => self.per_head_qkv(&format!("{sa}.query_key_value"), &attn, layer),
        }
        self.linear(&format!("{sa}.dense"), &format!("{attn}.o"), false);
        self.linear(
            &format!("{p}mlp.dense_h_to_4h"),
            &format!("{c}.mlp.up"),
            false,
        );
        self.linear(
            &format!("{p}mlp.dense_4h_to_h"),
            &format!("{c}.mlp.down"),
            false,
        );
    }

    /// The feed-forward part of a llama-family layer: dense (`mlp.{gate,up,down}_proj` or Phi-3's
    /// fused `gate_up_proj`) or MoE in one of the [`MoeNaming`]s.
    fn llama_ffn(&mut self, dialect: Dialect, layer: &Layer, p: &str, c: &str) {
        match &layer.ffn {
            Ffn::Mlp(mlp) => {
                let m = format!("{c}.mlp");
                let f = if dialect.moe == MoeNaming::Llama4 {
                    format!("{p}feed_forward")
                } else {
                    format!("{p}mlp")
                };
                if mlp.activation.is_gated() && self.fused_gate_up {
                    self.fused_linear(
                        &format!("{f}.gate_up_proj"),
                        &[format!("{m}.gate"), format!("{m}.up")],
                        false,
                    );
                } else {
                    self.linear(&format!("{f}.gate_proj"), &format!("{m}.gate"), false);
                    self.linear(&format!("{f}.up_proj"), &format!("{m}.up"), false);
                }
                self.linear(&format!("{f}.down_proj"), &format!("{m}.down"), false);
            }
            Ffn::Moe(moe) if matches!(dialect.moe, MoeNaming::GptOss | MoeNaming::Llama4) => {
                let m = format!("{c}.moe");
                let llama4 = dialect.moe == MoeNaming::Llama4;
                let f = format!("{p}{}", if llama4 { "feed_forward" } else { "mlp" });
                self.linear(&format!("{f}.router"), &format!("{m}.router"), false);
                self.transposed_experts(&format!("{f}.experts"), &m, moe.experts as usize, !llama4);
                for (hf, canon) in [("gate", "gate"), ("up", "up"), ("down", "down")] {
                    self.linear(
                        &format!("{f}.shared_expert.{hf}_proj"),
                        &format!("{m}.shared.{canon}"),
                        false,
                    );
                }
            }
            Ffn::Moe(moe) => {
                let m = format!("{c}.moe");
                let block = match dialect.moe {
                    MoeNaming::Mixtral => "block_sparse_moe",
                    _ => "mlp",
                };
                self.linear(&format!("{p}{block}.gate"), &format!("{m}.router"), false);
                self.plain(
                    &format!("{p}{block}.gate.e_score_correction_bias"),
                    &format!("{m}.router.correction_bias"),
                );
                match dialect.moe {
                    MoeNaming::Qwen | MoeNaming::Mixtral => {
                        let names = if dialect.moe == MoeNaming::Mixtral {
                            ["w1", "w3", "w2"]
                        } else {
                            ["gate_proj", "up_proj", "down_proj"]
                        };
                        for e in 0..moe.experts {
                            let hf = format!("{p}{block}.experts.{e}");
                            let canon = format!("{m}.experts.{e}");
                            for (hf_part, canon_part) in names.iter().zip(["gate", "up", "down"]) {
                                self.linear(
                                    &format!("{hf}.{hf_part}"),
                                    &format!("{canon}.{canon_part}"),
                                    false,
                                );
                            }
                        }
                    }
                    MoeNaming::Stacked | MoeNaming::GptOss | MoeNaming::Llama4 => {
                        self.stacked_experts(&format!("{p}mlp.experts"), &m, moe.experts as usize)
                    }
                }
                // DeepSeek-style checkpoints (the sigmoid router, or ungated shared experts as
                // DeepSeek-V2's) say `shared_experts`, Qwen's (gated) `shared_expert`.
                let deepseek =
                    moe.router == RouterOrder::SigmoidTopk || moe.shared.is_some_and(|s| !s.gate);
                let shared = if deepseek {
                    format!("{p}mlp.shared_experts")
                } else {
                    format!("{p}mlp.shared_expert")
                };
                self.linear(
                    &format!("{shared}.gate_proj"),
                    &format!("{m}.shared.gate"),
                    false,
                );
                self.linear(
                    &format!("{shared}.up_proj"),
                    &format!("{m}.shared.up"),
                    false,
                );
                self.linear(
                    &format!("{shared}.down_proj"),
                    &format!("{m}.shared.down"),
                    false,
                );
                self.linear(
                    &format!("{p}mlp.shared_expert_gate"),
                    &format!("{m}.shared_gate"),
                    false,
                );
            }
        }
    }

    /// Expert tensors stored `[E, in, out]` (GPT-OSS, Llama 4): per expert, `gate_up_proj` is
    /// `[gate; up]` transposed to `[d_model, 2·hidden]` (the two interleaved column by column when
    /// `interleave`, GPT-OSS), `down_proj` the down weight transposed to `[hidden, d_model]`; the
    /// biases, when present, `gate_up_proj_bias` `[E, 2·hidden]` (interleaved alike) and
    /// `down_proj_bias` `[E, d_model]`.
    fn transposed_experts(&mut self, name: &str, m: &str, experts: usize, interleave: bool) {
        for (suffix, part, transpose) in [("", "weight", true), ("_bias", "bias", false)] {
            let (gate_up, down) = self.expert_pieces(m, experts, part);
            for (tensor, pieces) in [("gate_up_proj", gate_up), ("down_proj", down)] {
                let Some(first) = pieces.first() else {
                    continue;
                };
                let (rows, cols) = rows_cols(&self.shapes[&first.canonical]);
                let per_expert = pieces.len() / experts.max(1);
                let block_rows = rows * per_expert;
                let shape = if transpose {
                    vec![experts, cols, block_rows]
                } else {
                    vec![experts, block_rows]
                };
                self.out.push(CheckpointTensor {
                    name: format!("{name}.{tensor}{suffix}"),
                    shape,
                    pieces,
                    transpose,
                    blocks: experts,
                    interleave: interleave && tensor == "gate_up_proj",
                });
            }
        }
    }

    /// Every expert's whole `part` (`weight` or `bias`) tensors of MoE block `m` that the spec
    /// has: `(gate and up in turn, down)`, expert by expert.
    fn expert_pieces(&self, m: &str, experts: usize, part: &str) -> (Vec<Piece>, Vec<Piece>) {
        let whole = |canonical: String| {
            self.rows(&canonical).map(|rows| Piece {
                canonical,
                row_start: 0,
                rows,
            })
        };
        let mut gate_up = Vec::new();
        let mut down = Vec::new();
        for e in 0..experts {
            let canon = format!("{m}.experts.{e}");
            gate_up.extend(whole(format!("{canon}.gate.{part}")));
            gate_up.extend(whole(format!("{canon}.up.{part}")));
            down.extend(whole(format!("{canon}.down.{part}")));
        }
        (gate_up, down)
    }

    /// transformers 5's stacked expert tensors (no `.weight` suffix).
    fn stacked_experts(&mut self, name: &str, m: &str, experts: usize) {
        let (gate_up, down) = self.expert_pieces(m, experts, "weight");
        if let Some(first) = gate_up.first() {
            let cols = rows_cols(&self.shapes[&first.canonical]).1;
            let rows: usize = gate_up.iter().map(|p| p.rows).sum::<usize>() / experts.max(1);
            self.push_pieces(
                &format!("{name}.gate_up_proj"),
                gate_up,
                false,
                Some(vec![experts, rows, cols]),
            );
        }
        if let Some(first) = down.first() {
            let (rows, cols) = rows_cols(&self.shapes[&first.canonical]);
            self.push_pieces(
                &format!("{name}.down_proj"),
                down,
                false,
                Some(vec![experts, rows, cols]),
            );
        }
    }
}
