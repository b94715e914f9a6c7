//! What a spec's fields imply: the widths of a layer, the Rust type `model!` generates, the
//! longest sequence a model accepts.

use super::*;

impl ModelSpec {
    /// Query width: heads × head_dim of layer `i`.
    pub fn q_dim(&self, i: usize) -> u64 {
        let a = &self.layers[i].attention;
        a.heads * a.head_dim
    }
    /// Key/value width: kv_heads × head_dim of layer `i`.
    pub fn kv_dim(&self, i: usize) -> u64 {
        let a = &self.layers[i].attention;
        a.kv_heads * a.head_dim
    }
    /// Width of the attention output (the output projection's input) of layer `i`:
    /// heads × head_dim, or heads × v_dim with latent attention.
    pub fn attn_out_dim(&self, i: usize) -> u64 {
        let a = &self.layers[i].attention;
        a.heads * a.v_head_dim()
    }
}

impl ModelSpec {
    /// The name of the Rust struct `model!` generates for this spec: the snake_case name in
    /// UpperCamelCase, keeping an underscore before a segment that starts with a digit
    /// (`llama_3_1_8b` → `Llama_3_1_8b`, `gpt2_124m` → `Gpt2_124m`, `qwen3_30b_a3b` → `Qwen3_30bA3b`).
    pub fn rust_type(&self) -> String {
        let mut out = String::new();
        for segment in self
            .name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|s| !s.is_empty())
        {
            let mut chars = segment.chars();
            let Some(first) = chars.next() else { continue };
            if first.is_ascii_digit() {
                if !out.is_empty() {
                    out.push('_');
                }
                out.push(first);
            } else {
                out.push(first.to_ascii_uppercase());
            }
            out.extend(chars);
        }
        if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
            out.insert(0, 'M');
        }
        out
    }
}

impl ModelSpec {
    /// The longest sequence this model accepts: `context`, except for models whose positions are
    /// all rotary with dynamic-NTK scaling (which exists to run past the pretraining context and
    /// changes nothing below it), which have no limit (`None`).
    pub fn max_sequence(&self) -> Option<u64> {
        let extends = !self.embedding.learned_positions
            && self
                .layers
                .iter()
                .any(|l| matches!(l.position, Position::Rope(_)))
            && self.layers.iter().all(|l| match &l.position {
                Position::Rope(r) => matches!(r.scaling, RopeScaling::DynamicNtk { .. }),
                Position::None => true,
                Position::Learned | Position::Alibi => false,
            });
        if extends { None } else { Some(self.context) }
    }
}
