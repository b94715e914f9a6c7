//! The parameter table: every learned tensor of a [`ModelSpec`], with its canonical name and shape.
//!
//! This is the one place that turns the IR into parameters. The cost model sums it, the runtime
//! allocates from it, weight I/O maps its canonical names onto checkpoint names (see
//! `modelspec_runtime::weights`), and the code generator emits struct fields from it.
//!
//! Canonical names (shapes are `[out, in]` for linear maps, as `torch.nn.Linear` stores them):
//! ```text
//! embed.weight                       [vocab_padded, d_model]
//! pos_embed.weight                   [context, d_model]            learned positions
//! layers.{i}.attn_norm.{weight,bias} [d_model]                     pre/sandwich, or shared norm
//! layers.{i}.attn.{q,k,v}.weight     [heads*hd | kv_heads*hd, d_model]   (+ .bias)
//! layers.{i}.attn.{q,k}_norm.weight  [hd] per-head, [heads*hd | kv_heads*hd] full (+ .bias)
//! layers.{i}.attn.q_a.weight         [q_rank, d_model]  (+ .bias)  latent attention with a q latent
//! layers.{i}.attn.q_a_norm.weight    [q_rank]
//! layers.{i}.attn.q_b.weight         [heads*(nope+rope), q_rank]   (without a q latent: attn.q)
//! layers.{i}.attn.kv_a.weight        [kv_rank+rope, d_model] (+ .bias)   latent, then rotary key
//! layers.{i}.attn.kv_a_norm.weight   [kv_rank]
//! layers.{i}.attn.kv_b.weight        [heads*(nope+v), kv_rank]     per head: key rows, value rows
//! layers.{i}.attn.o.weight           [d_model, heads*hd | heads*v] (+ .bias)
//! layers.{i}.attn.sinks              [heads]                       attention sinks
//! layers.{i}.attn_post_norm.*        [d_model]                     post/sandwich
//! layers.{i}.mlp_norm.*              [d_model]                     pre/sandwich, not shared
//! layers.{i}.mlp.{gate,up}.weight    [hidden, d_model]  mlp.down.weight [d_model, hidden] (+ .bias)
//! layers.{i}.moe.router.weight       [experts, d_model]            (+ .bias [experts])
//! layers.{i}.moe.router.correction_bias [experts]                   a buffer: not trained or counted
//! layers.{i}.moe.experts.{e}.{gate,up,down}.weight
//! layers.{i}.moe.shared.{gate,up,down}.weight   count*hidden wide
//! layers.{i}.moe.shared_gate.weight  [1, d_model]
//! layers.{i}.mlp_post_norm.*         [d_model]                     post/sandwich
//! final_norm.{weight,bias}           [d_model]
//! lm_head.weight                     [vocab_padded, d_model]       untied ; lm_head.bias [vocab_padded]
//! ```

use crate::ir::{Ffn, Mlp, ModelSpec, Norm, QkNormScope};

/// One learned tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Canonical name (see the module docs).
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<u64>,
    /// The layer it belongs to, if any.
    pub layer: Option<u64>,
    /// For MoE expert weights: which expert (used for active-parameter counts).
    pub expert: Option<u64>,
    /// Learned by gradient descent and counted in the parameter totals. `false` for a buffer
    /// that checkpoints store but training leaves alone (DeepSeek-V3's expert-selection bias,
    /// which HF keeps outside `parameters()`): its gradient is zero and no count includes it.
    pub trained: bool,
}

impl Param {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Elements counted in parameter totals: [`Param::numel`], or 0 for a buffer.
    pub fn counted(&self) -> u64 {
        if self.trained { self.numel() } else { 0 }
    }
}

struct Table {
    out: Vec<Param>,
    layer: Option<u64>,
    expert: Option<u64>,
}

impl Table {
    fn push(&mut self, name: String, shape: Vec<u64>) {
        self.out.push(Param {
            name,
            shape,
            layer: self.layer,
            expert: self.expert,
            trained: true,
        });
    }
    fn buffer(&mut self, name: String, shape: Vec<u64>) {
        self.push(name, shape);
        if let Some(last) = self.out.last_mut() {
            last.trained = false;
        }
    }
    fn norm(&mut self, prefix: &str, norm: &Norm, width: u64) {
        if norm.weight {
            self.push(format!("{prefix}.weight"), vec![width]);
        }
        if norm.bias {
            self.push(format!("{prefix}.bias"), vec![width]);
        }
    }
    fn linear(&mut self, prefix: &str, out: u64, inp: u64, bias: bool) {
        self.push(format!("{prefix}.weight"), vec![out, inp]);
        if bias {
            self.push(format!("{prefix}.bias"), vec![out]);
        }
    }
    fn mlp(&mut self, prefix: &str, mlp: &Mlp, d_model: u64) {
        if mlp.activation.is_gated() {
            self.linear(&format!("{prefix}.gate"), mlp.hidden, d_model, mlp.bias);
        }
        self.linear(&format!("{prefix}.up"), mlp.hidden, d_model, mlp.bias);
        self.linear(&format!("{prefix}.down"), d_model, mlp.hidden, mlp.bias);
    }
}

/// Every parameter of `spec`, in a fixed order (embedding, layers in order, final norm, head).
pub fn parameters(spec: &ModelSpec) -> Vec<Param> {
    let d = spec.d_model;
    let mut t = Table {
        out: Vec::new(),
        layer: None,
        expert: None,
    };
    t.push("embed.weight".into(), vec![spec.vocab_padded, d]);
    if spec.embedding.learned_positions {
        t.push("pos_embed.weight".into(), vec![spec.context, d]);
    }
    for layer in &spec.layers {
        let i = layer.index;
        t.layer = Some(i);
        let p = |s: &str| format!("layers.{i}.{s}");
        let block = &layer.block;
        let pre = block.placement.pre();
        let post = block.placement.post();
        if pre {
            t.norm(&p("attn_norm"), &block.norm, d);
        }
        let a = &layer.attention;
        let (qd, kvd) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
        if let Some(m) = &a.mla {
            // Latent attention: the down projections carry the biases, the direct query
            // projection (no query latent) never has one.
            match m.q_rank {
                Some(r) => {
                    t.linear(&p("attn.q_a"), r, d, a.qkv_bias);
                    t.norm(&p("attn.q_a_norm"), &m.norm, r);
                    t.linear(&p("attn.q_b"), qd, r, false);
                }
                None => t.linear(&p("attn.q"), qd, d, false),
            }
            t.linear(&p("attn.kv_a"), m.kv_rank + m.rope_dim, d, a.qkv_bias);
            t.norm(&p("attn.kv_a_norm"), &m.norm, m.kv_rank);
            t.linear(
                &p("attn.kv_b"),
                a.heads * (m.nope_dim + m.v_dim),
                m.kv_rank,
                false,
            );
        } else {
            t.linear(&p("attn.q"), qd, d, a.qkv_bias);
            t.linear(&p("attn.k"), kvd, d, a.qkv_bias);
            t.linear(&p("attn.v"), kvd, d, a.qkv_bias);
        }
        if let Some(qk) = &a.qk_norm {
            let (qw, kw) = match qk.scope {
                QkNormScope::Head => (a.head_dim, a.head_dim),
                QkNormScope::Full => (qd, kvd),
            };
            t.norm(&p("attn.q_norm"), &qk.norm, qw);
            t.norm(&p("attn.k_norm"), &qk.norm, kw);
        }
        t.linear(&p("attn.o"), d, a.heads * a.v_head_dim(), a.out_bias);
        if a.sinks {
            t.push(p("attn.sinks"), vec![a.heads]);
        }
        if post {
            t.norm(&p("attn_post_norm"), &block.norm, d);
        }
        if pre && !(block.parallel_residual && block.shared_norm) {
            t.norm(&p("mlp_norm"), &block.norm, d);
        }
        match &layer.ffn {
            Ffn::Mlp(mlp) => t.mlp(&p("mlp"), mlp, d),
            Ffn::Moe(moe) => {
                t.linear(&p("moe.router"), moe.experts, d, moe.router_bias);
                if moe.correction_bias {
                    t.buffer(p("moe.router.correction_bias"), vec![moe.experts]);
                }
                for e in 0..moe.experts {
                    t.expert = Some(e);
                    t.mlp(&p(&format!("moe.experts.{e}")), &moe.expert, d);
                }
                t.expert = None;
                if let Some(shared) = &moe.shared {
                    let width = Mlp {
                        hidden: shared.count * shared.hidden,
                        ..moe.expert
                    };
                    t.mlp(&p("moe.shared"), &width, d);
                    if shared.gate {
                        t.linear(&p("moe.shared_gate"), 1, d, false);
                    }
                }
            }
        }
        if post {
            t.norm(&p("mlp_post_norm"), &block.norm, d);
        }
    }
    t.layer = None;
    if let Some(norm) = &spec.final_norm {
        t.norm("final_norm", norm, d);
    }
    if !spec.embedding.tied {
        t.linear("lm_head", spec.vocab_padded, d, spec.logits.bias);
    } else if spec.logits.bias {
        t.push("lm_head.bias".into(), vec![spec.vocab_padded]);
    }
    t.out
}
