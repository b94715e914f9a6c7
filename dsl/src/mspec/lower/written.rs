//! Written settings: what the user wrote, before defaults (`LayerW` and its parts, as `Option`s),
//! and how a rule's delta merges into a layer's row.

use super::*;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NormW {
    pub kind: Option<NormKind>,
    pub eps: Option<f64>,
    pub offset: Option<f64>,
    pub weight: Option<bool>,
    pub bias: Option<bool>,
}

impl NormW {
    pub(super) fn merge(&mut self, d: &NormW) {
        if d.kind.is_some() && d.kind != self.kind {
            *self = d.clone();
            return;
        }
        merge_opt(&mut self.eps, d.eps);
        merge_opt(&mut self.offset, d.offset);
        merge_opt(&mut self.weight, d.weight);
        merge_opt(&mut self.bias, d.bias);
    }
    pub(super) fn resolve(&self) -> Norm {
        let kind = self.kind.unwrap_or(NormKind::Rms);
        Norm {
            kind,
            eps: self.eps.unwrap_or(1e-5),
            offset: self.offset.unwrap_or(0.0),
            weight: self.weight.unwrap_or(true),
            bias: self.bias.unwrap_or(kind.centred()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QkW {
    pub norm: NormW,
    pub scope: Option<QkNormScope>,
    /// `order = after_rope` (true) or `order = before_rope` (false).
    pub after_rope: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AttnW {
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub qkv_bias: Option<bool>,
    pub out_bias: Option<bool>,
    pub qk_norm: Option<Option<QkW>>,
    pub softcap: Option<Option<f64>>,
    pub scale: Option<f64>,
    pub window: Option<Option<u64>>,
    pub chunk: Option<Option<u64>>,
    pub sinks: Option<bool>,
    pub temperature: Option<Option<TempW>>,
    /// `mla(...)` (Some(Some)), `mla none` (Some(None)).
    pub mla: Option<Option<MlaW>>,
}

/// `mla(q_rank = .., kv_rank = .., nope_dim = .., rope_dim = .., v_dim = .., norm = ..)` as
/// written: the four sizes but `q_rank` are required; the norm defaults to `rms(eps = 1e-6)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MlaW {
    pub q_rank: Option<u64>,
    pub kv_rank: u64,
    pub nope_dim: u64,
    pub rope_dim: u64,
    pub v_dim: u64,
    pub norm: Option<NormW>,
}

/// `temperature(floor = N, scale = x)` as written (both required).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TempW {
    pub floor: u64,
    pub scale: f64,
}

impl AttnW {
    pub(super) fn merge(&mut self, d: &AttnW) {
        merge_opt(&mut self.heads, d.heads);
        merge_opt(&mut self.kv_heads, d.kv_heads);
        merge_opt(&mut self.head_dim, d.head_dim);
        merge_opt(&mut self.qkv_bias, d.qkv_bias);
        merge_opt(&mut self.out_bias, d.out_bias);
        match (&mut self.qk_norm, &d.qk_norm) {
            (Some(Some(cur)), Some(Some(new))) => {
                cur.norm.merge(&new.norm);
                merge_opt(&mut cur.scope, new.scope);
                merge_opt(&mut cur.after_rope, new.after_rope);
            }
            (cur, Some(new)) => *cur = Some(new.clone()),
            (_, None) => {}
        }
        merge_opt(&mut self.softcap, d.softcap);
        merge_opt(&mut self.scale, d.scale);
        merge_opt(&mut self.window, d.window);
        merge_opt(&mut self.chunk, d.chunk);
        merge_opt(&mut self.sinks, d.sinks);
        merge_opt(&mut self.temperature, d.temperature);
        if d.mla.is_some() {
            self.mla = d.mla.clone();
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScalingW {
    pub scaling: RopeScaling,
    /// Longrope without an explicit `attention_factor`: resolved from the context ratio.
    pub longrope_default_attention: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RopeW {
    pub theta: Option<f64>,
    pub fraction: Option<f64>,
    pub rotary_dims: Option<u64>,
    pub style: Option<RopeStyle>,
    pub scaling: Option<ScalingW>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PosW {
    None,
    Learned,
    Alibi,
    Rope(RopeW),
}

impl PosW {
    pub(super) fn merge(&mut self, d: &PosW) {
        match (self, d) {
            (PosW::Rope(cur), PosW::Rope(new)) => {
                merge_opt(&mut cur.theta, new.theta);
                merge_opt(&mut cur.fraction, new.fraction);
                merge_opt(&mut cur.rotary_dims, new.rotary_dims);
                merge_opt(&mut cur.style, new.style);
                if new.scaling.is_some() {
                    cur.scaling = new.scaling.clone();
                }
            }
            (cur, new) => *cur = new.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MlpW {
    pub kind: MlpKind,
    pub hidden: Option<u64>,
    pub bias: Option<bool>,
    /// GPT-OSS's clamp bound and sigmoid slope (`swiglu(limit = 7, alpha = 1.702)`).
    pub limit: Option<f64>,
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SharedW {
    pub count: Option<u64>,
    pub hidden: Option<u64>,
    pub gate: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MoeW {
    pub experts: Option<u64>,
    pub top_k: Option<u64>,
    pub expert: Option<MlpW>,
    pub router: Option<RouterOrder>,
    pub renormalize: Option<bool>,
    pub shared: Option<Option<SharedW>>,
    pub aux_loss: Option<f64>,
    pub router_bias: Option<bool>,
    pub correction_bias: Option<bool>,
    pub groups: Option<u64>,
    pub top_groups: Option<u64>,
    pub routed_scale: Option<f64>,
    pub weighting: Option<Weighting>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FfnW {
    Mlp(MlpW),
    Moe(MoeW),
}

impl FfnW {
    pub(super) fn merge(&mut self, d: &FfnW) {
        match (self, d) {
            (FfnW::Mlp(cur), FfnW::Mlp(new)) => {
                cur.kind = new.kind;
                merge_opt(&mut cur.hidden, new.hidden);
                merge_opt(&mut cur.bias, new.bias);
                merge_opt(&mut cur.limit, new.limit);
                merge_opt(&mut cur.alpha, new.alpha);
            }
            (FfnW::Moe(cur), FfnW::Moe(new)) => {
                merge_opt(&mut cur.experts, new.experts);
                merge_opt(&mut cur.top_k, new.top_k);
                if new.expert.is_some() {
                    cur.expert = new.expert.clone();
                }
                merge_opt(&mut cur.router, new.router);
                merge_opt(&mut cur.renormalize, new.renormalize);
                if new.shared.is_some() {
                    cur.shared = new.shared.clone();
                }
                merge_opt(&mut cur.aux_loss, new.aux_loss);
                merge_opt(&mut cur.router_bias, new.router_bias);
                merge_opt(&mut cur.correction_bias, new.correction_bias);
                merge_opt(&mut cur.groups, new.groups);
                merge_opt(&mut cur.top_groups, new.top_groups);
                merge_opt(&mut cur.routed_scale, new.routed_scale);
                merge_opt(&mut cur.weighting, new.weighting);
            }
            (cur, new) => *cur = new.clone(),
        }
    }
}

/// Per-layer settings as written (model level: the base; a rule: a delta).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LayerW {
    pub attn: AttnW,
    pub pos: Option<PosW>,
    pub norm: Option<NormW>,
    pub placement: Option<NormPlacement>,
    pub parallel_residual: Option<bool>,
    pub shared_norm: Option<bool>,
    pub ffn: Option<FfnW>,
    pub ckpt: Option<LayerCheckpoint>,
}

impl LayerW {
    pub(super) fn merge(&mut self, d: &LayerW) {
        self.attn.merge(&d.attn);
        match (&mut self.pos, &d.pos) {
            (Some(cur), Some(new)) => cur.merge(new),
            (cur, Some(new)) => *cur = Some(new.clone()),
            _ => {}
        }
        match (&mut self.norm, &d.norm) {
            (Some(cur), Some(new)) => cur.merge(new),
            (cur, Some(new)) => *cur = Some(new.clone()),
            _ => {}
        }
        merge_opt(&mut self.placement, d.placement);
        merge_opt(&mut self.parallel_residual, d.parallel_residual);
        merge_opt(&mut self.shared_norm, d.shared_norm);
        match (&mut self.ffn, &d.ffn) {
            (Some(cur), Some(new)) => cur.merge(new),
            (cur, Some(new)) => *cur = Some(new.clone()),
            _ => {}
        }
        if d.ckpt.is_some() {
            self.ckpt = d.ckpt.clone();
        }
    }
}

pub(super) fn merge_opt<T: Clone>(cur: &mut Option<T>, new: Option<T>) {
    if new.is_some() {
        *cur = new;
    }
}

/// One item of a layer selector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SelItem {
    Index(u64),
    Range(u64, u64),
    Every { step: u64, offset: u64 },
    Even,
    Odd,
    All,
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) items: Vec<SelItem>,
    pub(super) span: Span,
    pub(super) delta: LayerW,
    /// The keys the rule writes (IR paths, as `mark` names them) and where.
    pub(super) keys: BTreeMap<String, Span>,
}
