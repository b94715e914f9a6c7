//! The supported HF `model_type`s and the defaults transformers gives each config class.
//!
//! A config.json omits every field that equals its class default, so the import needs these to
//! resolve a file the way transformers does. Values follow the `__init__` defaults of each
//! `*Config` class; `tests/hf_defaults.rs` checks them (and the defaults the import keeps in
//! `import/`: windows, rotary fractions, Gemma's attention scale) against every class's
//! `to_dict()` in transformers 5.17 (`tests/fixtures/config_defaults.json`).

/// A supported HF model family (one `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `llama` (LlamaConfig).
    Llama,
    /// `mistral` (MistralConfig).
    Mistral,
    /// `mixtral` (MixtralConfig).
    Mixtral,
    /// `qwen2` (Qwen2Config).
    Qwen2,
    /// `qwen2_moe` (Qwen2MoeConfig).
    Qwen2Moe,
    /// `qwen3` (Qwen3Config).
    Qwen3,
    /// `qwen3_moe` (Qwen3MoeConfig).
    Qwen3Moe,
    /// `gemma` (GemmaConfig).
    Gemma,
    /// `gemma2` (Gemma2Config).
    Gemma2,
    /// `gemma3_text` (Gemma3TextConfig).
    Gemma3Text,
    /// `phi` (PhiConfig, Phi-1/1.5/2).
    Phi,
    /// `phi3` (Phi3Config).
    Phi3,
    /// `gpt2` (GPT2Config).
    Gpt2,
    /// `gpt_neox` (GPTNeoXConfig, Pythia).
    GptNeox,
    /// `falcon` (FalconConfig).
    Falcon,
    /// `olmo2` (Olmo2Config).
    Olmo2,
    /// `glm4_moe` (Glm4MoeConfig, GLM-4.5): DeepSeek-V3's sigmoid router with GQA attention.
    Glm4Moe,
    /// `gpt_oss` (GptOssConfig): attention sinks, alternating sliding/full layers, YaRN.
    GptOss,
    /// `llama4_text` (Llama4TextConfig): NoPE layers, chunked attention, an L2 qk-norm after
    /// RoPE, the NoPE layers' query temperature, interleaved (complex-pair) RoPE.
    Llama4Text,
    /// `smollm3` (SmolLM3Config): Llama with every `no_rope_layer_interval`-th layer NoPE.
    SmolLm3,
    /// `deepseek_v3` (DeepseekV3Config, DeepSeek-V3, Kimi-K2): multi-head latent attention and
    /// the sigmoid router with a correction bias and group-limited top-k.
    DeepseekV3,
    /// `deepseek_v2` (DeepseekV2Config, DeepSeek-V2-Lite): multi-head latent attention and a
    /// softmax router with shared experts.
    DeepseekV2,
}

/// Every supported family, in the order error messages list them.
pub const ALL: [Family; 22] = [
    Family::Llama,
    Family::Mistral,
    Family::Mixtral,
    Family::Qwen2,
    Family::Qwen2Moe,
    Family::Qwen3,
    Family::Qwen3Moe,
    Family::Gemma,
    Family::Gemma2,
    Family::Gemma3Text,
    Family::Phi,
    Family::Phi3,
    Family::Gpt2,
    Family::GptNeox,
    Family::Falcon,
    Family::Olmo2,
    Family::Glm4Moe,
    Family::GptOss,
    Family::Llama4Text,
    Family::SmolLm3,
    Family::DeepseekV3,
    Family::DeepseekV2,
];

/// Class defaults of one config class; `None` means "derived" (see each field).
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `vocab_size`.
    pub vocab: u64,
    /// `hidden_size` / `n_embd`.
    pub hidden: u64,
    /// `intermediate_size` (`None`: 4 × hidden, GPT-2's `n_inner` and Falcon's `ffn_hidden_size`).
    pub intermediate: Option<u64>,
    /// `num_hidden_layers` / `n_layer`.
    pub layers: u64,
    /// `num_attention_heads` / `n_head`.
    pub heads: u64,
    /// `num_key_value_heads` (`None`: equal to heads).
    pub kv_heads: Option<u64>,
    /// `head_dim` (`None`: hidden / heads).
    pub head_dim: Option<u64>,
    /// `max_position_embeddings` / `n_positions`.
    pub context: u64,
    /// `rms_norm_eps` / `layer_norm_eps` / `layer_norm_epsilon`.
    pub eps: f64,
    /// `tie_word_embeddings`.
    pub tied: bool,
    /// `rope_theta` (or `rotary_emb_base`).
    pub rope_theta: f64,
    /// The activation name when the config omits it.
    pub act: &'static str,
}

impl Family {
    /// The `model_type` string of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Mixtral => "mixtral",
            Family::Qwen2 => "qwen2",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3Text => "gemma3_text",
            Family::Phi => "phi",
            Family::Phi3 => "phi3",
            Family::Gpt2 => "gpt2",
            Family::GptNeox => "gpt_neox",
            Family::Falcon => "falcon",
            Family::Olmo2 => "olmo2",
            Family::Glm4Moe => "glm4_moe",
            Family::GptOss => "gpt_oss",
            Family::Llama4Text => "llama4_text",
            Family::SmolLm3 => "smollm3",
            Family::DeepseekV3 => "deepseek_v3",
            Family::DeepseekV2 => "deepseek_v2",
        }
    }

    /// The family of a `model_type`, if supported.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        ALL.into_iter().find(|f| f.model_type() == model_type)
    }

    /// The supported model_types, comma-separated, for error messages.
    pub fn supported_list() -> String {
        ALL.iter()
            .map(|f| f.model_type())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the family is one of the Llama-style decoders sharing Llama's config keys.
    pub fn llama_like(self) -> bool {
        !matches!(
            self,
            Family::Gpt2 | Family::GptNeox | Family::Falcon | Family::Phi
        )
    }

    /// Whether the family has a mixture of experts.
    pub fn is_moe(self) -> bool {
        matches!(
            self,
            Family::Mixtral
                | Family::Qwen2Moe
                | Family::Qwen3Moe
                | Family::Glm4Moe
                | Family::DeepseekV3
                | Family::DeepseekV2
        )
    }

    /// Whether the family has Qwen's `use_sliding_window` / `max_window_layers` switches.
    pub fn qwen_windows(self) -> bool {
        matches!(
            self,
            Family::Qwen2 | Family::Qwen2Moe | Family::Qwen3 | Family::Qwen3Moe
        )
    }

    /// Whether the family has DeepSeek's multi-head latent attention.
    pub fn is_mla(self) -> bool {
        matches!(self, Family::DeepseekV3 | Family::DeepseekV2)
    }

    /// Whether the family is a Gemma (`1 + w` norms, `sqrt(d_model)` embedding scale).
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3Text)
    }

    /// The config class defaults.
    pub fn defaults(self) -> Defaults {
        let llama = Defaults {
            vocab: 32000,
            hidden: 4096,
            intermediate: Some(11008),
            layers: 32,
            heads: 32,
            kv_heads: None,
            head_dim: None,
            context: 2048,
            eps: 1e-6,
            tied: false,
            rope_theta: 10000.0,
            act: "silu",
        };
        match self {
            Family::Llama => llama,
            Family::Mistral => Defaults {
                intermediate: Some(14336),
                kv_heads: Some(8),
                context: 131072,
                ..llama
            },
            Family::Mixtral => Defaults {
                intermediate: Some(14336),
                kv_heads: Some(8),
                context: 131072,
                eps: 1e-5,
                rope_theta: 1e6,
                ..llama
            },
            Family::Qwen2 => Defaults {
                vocab: 151936,
                intermediate: Some(22016),
                kv_heads: Some(32),
                context: 32768,
                ..llama
            },
            Family::Qwen2Moe => Defaults {
                vocab: 151936,
                hidden: 2048,
                intermediate: Some(5632),
                layers: 24,
                heads: 16,
                kv_heads: Some(16),
                context: 32768,
                ..llama
            },
            Family::Qwen3 => Defaults {
                vocab: 151936,
                intermediate: Some(22016),
                kv_heads: Some(32),
                head_dim: Some(128),
                context: 32768,
                ..llama
            },
            Family::Qwen3Moe => Defaults {
                vocab: 151936,
                hidden: 2048,
                intermediate: Some(6144),
                layers: 24,
                heads: 32,
                kv_heads: Some(4),
                context: 32768,
                ..llama
            },
            Family::Gemma => Defaults {
                vocab: 256000,
                hidden: 3072,
                intermediate: Some(24576),
                layers: 28,
                heads: 16,
                kv_heads: Some(16),
                head_dim: Some(256),
                context: 8192,
                tied: true,
                act: "gelu_pytorch_tanh",
                ..llama
            },
            Family::Gemma2 => Defaults {
                vocab: 256000,
                hidden: 2304,
                intermediate: Some(9216),
                layers: 26,
                heads: 8,
                kv_heads: Some(4),
                head_dim: Some(256),
                context: 8192,
                tied: true,
                act: "gelu_pytorch_tanh",
                ..llama
            },
            Family::Gemma3Text => Defaults {
                vocab: 262208,
                hidden: 2304,
                intermediate: Some(9216),
                layers: 26,
                heads: 8,
                kv_heads: Some(4),
                head_dim: Some(256),
                context: 131072,
                tied: true,
                rope_theta: 1e6,
                act: "gelu_pytorch_tanh",
                ..llama
            },
            Family::Phi => Defaults {
                vocab: 51200,
                hidden: 2048,
                intermediate: Some(8192),
                layers: 24,
                heads: 32,
                eps: 1e-5,
                act: "gelu_new",
                ..llama
            },
            Family::Phi3 => Defaults {
                vocab: 32064,
                hidden: 3072,
                intermediate: Some(8192),
                context: 4096,
                eps: 1e-5,
                ..llama
            },
            Family::Gpt2 => Defaults {
                vocab: 50257,
                hidden: 768,
                intermediate: None,
                layers: 12,
                heads: 12,
                context: 1024,
                eps: 1e-5,
                tied: true,
                act: "gelu_new",
                ..llama
            },
            Family::GptNeox => Defaults {
                vocab: 50432,
                hidden: 6144,
                intermediate: Some(24576),
                layers: 44,
                heads: 64,
                context: 2048,
                eps: 1e-5,
                act: "gelu",
                ..llama
            },
            Family::Falcon => Defaults {
                vocab: 65024,
                hidden: 4544,
                intermediate: None,
                layers: 32,
                heads: 71,
                context: 2048,
                eps: 1e-5,
                tied: true,
                act: "gelu",
                ..llama
            },
            Family::Olmo2 => Defaults {
                vocab: 50304,
                context: 2048,
                eps: 1e-5,
                ..llama
            },
            Family::Glm4Moe => Defaults {
                vocab: 151552,
                intermediate: Some(10944),
                layers: 46,
                heads: 96,
                kv_heads: Some(8),
                context: 131072,
                eps: 1e-5,
                ..llama
            },
            Family::GptOss => Defaults {
                vocab: 201088,
                hidden: 2880,
                intermediate: Some(2880),
                layers: 36,
                heads: 64,
                kv_heads: Some(8),
                head_dim: Some(64),
                context: 131072,
                eps: 1e-5,
                rope_theta: 150000.0,
                ..llama
            },
            Family::Llama4Text => Defaults {
                vocab: 202048,
                hidden: 5120,
                // The routed experts' width; dense layers read `intermediate_size_mlp` (16384).
                intermediate: Some(8192),
                layers: 48,
                heads: 40,
                kv_heads: Some(8),
                head_dim: Some(128),
                context: 131072,
                eps: 1e-5,
                rope_theta: 500000.0,
                ..llama
            },
            Family::SmolLm3 => Defaults {
                vocab: 128256,
                hidden: 2048,
                intermediate: Some(11008),
                layers: 36,
                heads: 16,
                kv_heads: Some(4),
                context: 32768,
                tied: true,
                rope_theta: 2000000.0,
                ..llama
            },
            Family::DeepseekV3 => Defaults {
                vocab: 129280,
                hidden: 7168,
                intermediate: Some(18432),
                layers: 61,
                heads: 128,
                kv_heads: Some(128),
                context: 4096,
                ..llama
            },
            Family::DeepseekV2 => Defaults {
                vocab: 102400,
                ..llama
            },
        }
    }
}
