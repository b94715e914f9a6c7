//! A layer's forward: each node of its program computed from the activations it reads, and the
//! recomputation of a dropped activation (from the nearest saved ones) that backward asks for.

use super::*;
use crate::ops::mla;
use modelspec_dsl::ir::Weighting;

pub(super) fn p<'a, T: Float>(params: &'a dyn ParamSource<T>, name: &str) -> &'a [T] {
    params
        .param(name)
        .map(|t| t.data())
        .unwrap_or_else(|| panic!("parameter `{name}` missing after validation"))
}

pub(super) fn norm_params<'a, T: Float>(
    params: &'a dyn ParamSource<T>,
    prefix: &str,
    n: &Norm,
) -> (Option<&'a [T]>, Option<&'a [T]>) {
    let w = n.weight.then(|| p(params, &format!("{prefix}.weight")));
    let b = n.bias.then(|| p(params, &format!("{prefix}.bias")));
    (w, b)
}

pub(super) fn proj<'a, T: Float>(
    params: &'a dyn ParamSource<T>,
    prefix: &str,
    bias: bool,
) -> (&'a [T], Option<&'a [T]>) {
    (
        p(params, &format!("{prefix}.weight")),
        bias.then(|| p(params, &format!("{prefix}.bias"))),
    )
}

pub(super) fn mlp_ref<'a, T: Float>(
    params: &'a dyn ParamSource<T>,
    prefix: &str,
    m: &modelspec_dsl::ir::Mlp,
    d: usize,
    hidden: usize,
) -> MlpRef<'a, T> {
    MlpRef {
        kind: m.activation,
        d,
        hidden,
        gate: m
            .activation
            .is_gated()
            .then(|| proj(params, &format!("{prefix}.gate"), m.bias)),
        up: proj(params, &format!("{prefix}.up"), m.bias),
        down: proj(params, &format!("{prefix}.down"), m.bias),
        clamp: None,
    }
}

impl<'a, T: Float> LayerCtx<'a, T> {
    pub(super) fn prefix(&self, s: &str) -> String {
        format!("layers.{}.{s}", self.lp.index)
    }

    pub(super) fn moe(&self) -> &'a Moe {
        match &self.layer.ffn {
            Ffn::Moe(m) => m,
            Ffn::Mlp(_) => unreachable!("MoE activation in a dense layer"),
        }
    }

    pub(super) fn dense_ref(&self) -> MlpRef<'a, T> {
        match &self.layer.ffn {
            Ffn::Mlp(m) => mlp_ref(
                self.params,
                &self.prefix("mlp"),
                m,
                self.shape.d,
                m.hidden as usize,
            ),
            Ffn::Moe(_) => unreachable!("dense MLP activation in an MoE layer"),
        }
    }

    pub(super) fn expert_ref(&self, e: usize) -> MlpRef<'a, T> {
        let moe = self.moe();
        MlpRef {
            clamp: moe.clamp,
            ..mlp_ref(
                self.params,
                &self.prefix(&format!("moe.experts.{e}")),
                &moe.expert,
                self.shape.d,
                moe.expert.hidden as usize,
            )
        }
    }

    /// Routes this layer's router logits (with the correction bias when the spec has one).
    pub(super) fn route(&self, logits: &[T]) -> (Routing, Vec<T>) {
        let moe = self.moe();
        let bias = moe
            .correction_bias
            .then(|| p(self.params, &self.prefix("moe.router.correction_bias")));
        moe::route_with(moe, logits, bias)
    }

    pub(super) fn shared_ref(&self) -> MlpRef<'a, T> {
        let moe = self.moe();
        let shared = moe
            .shared
            .as_ref()
            .expect("shared expert activation without shared experts");
        mlp_ref(
            self.params,
            &self.prefix("moe.shared"),
            &moe.expert,
            self.shape.d,
            (shared.count * shared.hidden) as usize,
        )
    }

    /// This layer's latent attention sizes (the layer has latent attention).
    pub(super) fn mla_dims(&self) -> (&'a modelspec_dsl::ir::Mla, crate::ops::mla::MlaDims) {
        let m = self
            .layer
            .attention
            .mla
            .as_ref()
            .expect("latent attention activation without latent attention");
        let dims = crate::ops::mla::MlaDims {
            heads: self.layer.attention.heads as usize,
            nope: m.nope_dim as usize,
            rope: m.rope_dim as usize,
            v: m.v_dim as usize,
        };
        (m, dims)
    }

    /// The one activation the node computing `a` reads (q/k norm and RoPE nodes, whose order
    /// the program decides).
    pub(super) fn source(&self, a: Act) -> Act {
        self.lp
            .node(a)
            .and_then(|n| n.inputs.first().copied())
            .unwrap_or_else(|| panic!("layer {} has no activation `{}`", self.lp.index, a.name()))
    }

    /// Input `n` of the node computing `a`.
    pub(super) fn source_at(&self, a: Act, n: usize) -> Act {
        self.lp
            .node(a)
            .and_then(|node| node.inputs.get(n).copied())
            .unwrap_or_else(|| panic!("layer {} has no input {n} of `{}`", self.lp.index, a.name()))
    }

    /// Makes `a` (and whatever it needs) present in `store`.
    pub(super) fn ensure(&self, store: &mut Store<T>, a: Act) {
        if store.acts[a as usize].is_some() {
            return;
        }
        let node = self
            .lp
            .node(a)
            .unwrap_or_else(|| panic!("layer {} has no activation `{}`", self.lp.index, a.name()));
        for &input in &node.inputs {
            self.ensure(store, input);
        }
        if node.inputs.contains(&Act::RouterLogits) && store.routing.is_none() {
            let (routing, _) = self.route(store.get(Act::RouterLogits));
            store.routing = Some(routing);
        }
        let value = self.compute(store, a);
        store.acts[a as usize] = Some(value);
    }

    pub(super) fn ensure_all(&self, store: &mut Store<T>, acts: &[Act]) {
        for &a in acts {
            self.ensure(store, a);
        }
    }

    /// Computes activation `a` from its (present) inputs.
    pub(super) fn compute(&self, store: &Store<T>, a: Act) -> Vec<T> {
        let Shape { rows, d, .. } = self.shape;
        let att = &self.layer.attention;
        let (heads, kv_heads, hd) = (
            att.heads as usize,
            att.kv_heads as usize,
            att.head_dim as usize,
        );
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let od = heads * att.v_head_dim() as usize;
        let block_norm = &self.layer.block.norm;
        let norm_into = |x: &[T], prefix: &str, n: &Norm, width: usize| {
            let (w, b) = norm_params(self.params, &self.prefix(prefix), n);
            let mut y = vec![T::ZERO; x.len()];
            norm::forward(x, width, n, w, b, &mut y);
            y
        };
        let lin = |x: &[T], prefix: &str, bias: bool, in_dim: usize, out_dim: usize| {
            let (w, b) = proj(self.params, &self.prefix(prefix), bias);
            linear::forward_new(x, rows, in_dim, w, b, out_dim)
        };
        match a {
            Act::Input => unreachable!("the layer input is never computed"),
            Act::AttnNorm => norm_into(store.get(Act::Input), "attn_norm", block_norm, d),
            Act::QLatent => {
                let (m, _) = self.mla_dims();
                let r = m.q_rank.unwrap_or(0) as usize;
                lin(store.get(self.lp.attn_in), "attn.q_a", att.qkv_bias, d, r)
            }
            Act::QLatentNorm => {
                let (m, _) = self.mla_dims();
                let r = m.q_rank.unwrap_or(0) as usize;
                norm_into(store.get(Act::QLatent), "attn.q_a_norm", &m.norm, r)
            }
            Act::KvLatent => {
                let (m, _) = self.mla_dims();
                let w = (m.kv_rank + m.rope_dim) as usize;
                lin(store.get(self.lp.attn_in), "attn.kv_a", att.qkv_bias, d, w)
            }
            Act::KvLatentNorm => {
                let (m, _) = self.mla_dims();
                let (r, w) = (m.kv_rank as usize, (m.kv_rank + m.rope_dim) as usize);
                let latent = mla::columns(store.get(Act::KvLatent), w, 0, r);
                norm_into(&latent, "attn.kv_a_norm", &m.norm, r)
            }
            Act::Kv => {
                let (m, dims) = self.mla_dims();
                let w = dims.heads * (dims.nope + dims.v);
                lin(
                    store.get(Act::KvLatentNorm),
                    "attn.kv_b",
                    false,
                    m.kv_rank as usize,
                    w,
                )
            }
            Act::Q if att.mla.is_some() => {
                let (m, _) = self.mla_dims();
                match m.q_rank {
                    Some(r) => lin(
                        store.get(Act::QLatentNorm),
                        "attn.q_b",
                        false,
                        r as usize,
                        qd,
                    ),
                    None => lin(store.get(self.lp.attn_in), "attn.q", false, d, qd),
                }
            }
            Act::K if att.mla.is_some() => {
                let (_, dims) = self.mla_dims();
                mla::keys(
                    dims,
                    store.get(Act::Kv),
                    store.get(self.source_at(Act::K, 1)),
                )
            }
            Act::V if att.mla.is_some() => {
                let (_, dims) = self.mla_dims();
                mla::values(dims, store.get(Act::Kv))
            }
            Act::QRope | Act::KRope if att.mla.is_some() => {
                let table = self.rope.as_ref().expect("rope activation without rope");
                let (m, dims) = self.mla_dims();
                let x = store.get(self.source(a));
                if a == Act::QRope {
                    let mut y = vec![T::ZERO; x.len()];
                    rope::forward_at(table, x, heads, hd, dims.nope, &mut y);
                    y
                } else {
                    // The shared key: the tail of the joint down-projection, one head wide.
                    let w = (m.kv_rank + m.rope_dim) as usize;
                    let pe = mla::columns(x, w, m.kv_rank as usize, dims.rope);
                    let mut y = vec![T::ZERO; pe.len()];
                    rope::forward(table, &pe, 1, dims.rope, &mut y);
                    y
                }
            }
            Act::Q => lin(store.get(self.lp.attn_in), "attn.q", att.qkv_bias, d, qd),
            Act::K => lin(store.get(self.lp.attn_in), "attn.k", att.qkv_bias, d, kvd),
            Act::V => lin(store.get(self.lp.attn_in), "attn.v", att.qkv_bias, d, kvd),
            Act::QNormed | Act::KNormed => {
                let qk = att
                    .qk_norm
                    .as_ref()
                    .expect("qk-norm activation without qk-norm");
                let (prefix, width) = match (a, qk.scope) {
                    (Act::QNormed, QkNormScope::Head) => ("attn.q_norm", hd),
                    (Act::QNormed, QkNormScope::Full) => ("attn.q_norm", qd),
                    (_, QkNormScope::Head) => ("attn.k_norm", hd),
                    (_, QkNormScope::Full) => ("attn.k_norm", kvd),
                };
                // The projection, or its rotation when the norm follows RoPE (Llama 4).
                norm_into(store.get(self.source(a)), prefix, &qk.norm, width)
            }
            Act::QRope | Act::KRope => {
                let table = self.rope.as_ref().expect("rope activation without rope");
                let h = if a == Act::QRope { heads } else { kv_heads };
                let x = store.get(self.source(a));
                let mut y = vec![T::ZERO; x.len()];
                rope::forward(table, x, h, hd, &mut y);
                y
            }
            Act::Attn => {
                let mut y = vec![T::ZERO; rows * od];
                let (q, k, v) = (
                    store.get(self.lp.q_final),
                    store.get(self.lp.k_final),
                    store.get(Act::V),
                );
                match &self.past {
                    None => attention::forward(&self.attn, q, k, v, &mut y),
                    Some(past) => attention::forward_cached(
                        &self.attn,
                        q,
                        (past.keys, k),
                        (past.values, v),
                        &mut y,
                    ),
                }
                y
            }
            Act::AttnOut => lin(store.get(Act::Attn), "attn.o", att.out_bias, od, d),
            Act::AttnPostNorm => {
                norm_into(store.get(Act::AttnOut), "attn_post_norm", block_norm, d)
            }
            Act::ResidMid => {
                let mut branch = store.get(self.lp.attn_branch).to_vec();
                if let Some(drop) = &self.drop_attn_branch {
                    drop.apply_inplace(&mut branch, 0);
                }
                let x = store.get(Act::Input);
                for (b, &v) in branch.iter_mut().zip(x) {
                    *b = v + *b;
                }
                branch
            }
            Act::MlpNorm => {
                let src = if self.lp.parallel {
                    Act::Input
                } else {
                    Act::ResidMid
                };
                norm_into(store.get(src), "mlp_norm", block_norm, d)
            }
            Act::Gate | Act::Up if matches!(self.layer.ffn, Ffn::Mlp(_)) => {
                let m = self.dense_ref();
                let (w, b) = if a == Act::Gate {
                    m.gate.expect("gate of an ungated MLP")
                } else {
                    m.up
                };
                linear::forward_new(store.get(self.lp.mlp_in), rows, d, w, b, m.hidden)
            }
            Act::Gate | Act::Up => {
                let routing = store.routing.as_ref().expect("routing");
                let hidden = self.moe().expert.hidden as usize;
                let x = store.get(Act::ExpertIn);
                let mut y = vec![T::ZERO; x.len() / d * hidden];
                for e in 0..routing.experts {
                    let (r0, r1) = (routing.offsets[e], routing.offsets[e + 1]);
                    if r0 == r1 {
                        continue;
                    }
                    let m = self.expert_ref(e);
                    let (w, b) = if a == Act::Gate {
                        m.gate.expect("gate of an ungated expert")
                    } else {
                        m.up
                    };
                    linear::forward(
                        &x[r0 * d..r1 * d],
                        r1 - r0,
                        d,
                        w,
                        b,
                        hidden,
                        &mut y[r0 * hidden..r1 * hidden],
                    );
                }
                y
            }
            Act::ActOut | Act::SharedAct => {
                let kind = match &self.layer.ffn {
                    Ffn::Mlp(m) => m.activation,
                    Ffn::Moe(m) => m.expert.activation,
                };
                let (g, u) = if a == Act::ActOut {
                    (Act::Gate, Act::Up)
                } else {
                    (Act::SharedGate, Act::SharedUp)
                };
                let up = store.get(u);
                let mut y = vec![T::ZERO; up.len()];
                let f = activation::Activation::of(kind);
                let clamp = match &self.layer.ffn {
                    Ffn::Moe(m) if a == Act::ActOut => m.clamp,
                    _ => None,
                };
                if let Some(c) = &clamp {
                    activation::forward_clamped(c, store.get(g), up, &mut y);
                } else if kind.is_gated() {
                    activation::forward_gated(f, store.get(g), up, &mut y);
                } else {
                    activation::forward(f, up, &mut y);
                }
                y
            }
            Act::MlpOut if matches!(self.layer.ffn, Ffn::Mlp(_)) => {
                let m = self.dense_ref();
                mlp::down_new(&m, store.get(Act::ActOut), rows)
            }
            Act::MlpOut => {
                let moe = self.moe();
                let routing = store.routing.as_ref().expect("routing");
                let mut y = vec![T::ZERO; rows * d];
                let ones;
                let weights = match moe.weighting {
                    Weighting::Output => store.get(Act::RouterWeights),
                    Weighting::Input => {
                        ones = vec![T::ONE; routing.expert.len()];
                        &ones[..]
                    }
                };
                moe::combine(routing, weights, store.get(Act::ExpertOut), d, &mut y);
                if let Some(shared) = &moe.shared {
                    let so = store.get(Act::SharedOut);
                    if shared.gate {
                        let g = lin(store.get(self.lp.mlp_in), "moe.shared_gate", false, d, 1);
                        for (n, row) in y.chunks_exact_mut(d).enumerate() {
                            let s = sigmoid(g[n]);
                            for (v, &o) in row.iter_mut().zip(&so[n * d..(n + 1) * d]) {
                                *v += s * o;
                            }
                        }
                    } else {
                        add_into(&mut y, so);
                    }
                }
                y
            }
            Act::RouterLogits => lin(
                store.get(self.lp.mlp_in),
                "moe.router",
                self.moe().router_bias,
                d,
                self.moe().experts as usize,
            ),
            Act::RouterWeights => self.route(store.get(Act::RouterLogits)).1,
            Act::ExpertIn => {
                let routing = store.routing.as_ref().expect("routing");
                let mut y = vec![T::ZERO; routing.expert.len() * d];
                let x = store.get(self.lp.mlp_in);
                match self.moe().weighting {
                    Weighting::Output => moe::gather(routing, x, d, &mut y),
                    Weighting::Input => {
                        // The weights are a function of the logits: recomputed, so that
                        // `expert_in` never depends on whether `router_weights` was kept.
                        let (_, w) = self.route(store.get(Act::RouterLogits));
                        moe::gather_weighted(routing, &w, x, d, &mut y);
                    }
                }
                y
            }
            Act::ExpertOut => {
                let routing = store.routing.as_ref().expect("routing");
                let hidden = self.moe().expert.hidden as usize;
                let act = store.get(Act::ActOut);
                let mut y = vec![T::ZERO; routing.expert.len() * d];
                for e in 0..routing.experts {
                    let (r0, r1) = (routing.offsets[e], routing.offsets[e + 1]);
                    if r0 == r1 {
                        continue;
                    }
                    let m = self.expert_ref(e);
                    mlp::down(
                        &m,
                        &act[r0 * hidden..r1 * hidden],
                        r1 - r0,
                        &mut y[r0 * d..r1 * d],
                    );
                }
                y
            }
            Act::SharedGate | Act::SharedUp => {
                let m = self.shared_ref();
                let (w, b) = if a == Act::SharedGate {
                    m.gate.expect("gate of ungated shared experts")
                } else {
                    m.up
                };
                linear::forward_new(store.get(self.lp.mlp_in), rows, d, w, b, m.hidden)
            }
            Act::SharedOut => {
                let m = self.shared_ref();
                mlp::down_new(&m, store.get(Act::SharedAct), rows)
            }
            Act::MlpPostNorm => norm_into(store.get(Act::MlpOut), "mlp_post_norm", block_norm, d),
        }
    }

    /// The layer output from a store holding the branch activations.
    pub(super) fn output(&self, store: &Store<T>) -> Vec<T> {
        let mut m = store.get(self.lp.mlp_branch).to_vec();
        if let Some(drop) = &self.drop_mlp_branch {
            drop.apply_inplace(&mut m, 0);
        }
        if self.lp.parallel {
            let mut a = store.get(self.lp.attn_branch).to_vec();
            if let Some(drop) = &self.drop_attn_branch {
                drop.apply_inplace(&mut a, 0);
            }
            let x = store.get(Act::Input);
            for ((o, &xi), &ai) in m.iter_mut().zip(x).zip(&a) {
                *o = (xi + ai) + *o;
            }
        } else {
            for (o, &r) in m.iter_mut().zip(store.get(Act::ResidMid)) {
                *o = r + *o;
            }
        }
        m
    }

    /// Runs the layer forward; drops what `keep` does not save. Returns the output and the store.
    pub(super) fn forward(
        &self,
        input: Vec<T>,
        keep: Option<&[bool; N_ACTS]>,
        aux: Option<&mut AuxStats>,
    ) -> (Vec<T>, Store<T>) {
        let mut store = Store::new(input);
        for node in &self.lp.nodes {
            self.ensure(&mut store, node.output);
        }
        if let Some(aux) = aux
            && let Some(routing) = &store.routing
        {
            aux.add(store.get(Act::RouterLogits), routing);
        }
        let out = self.output(&store);
        if let Some(keep) = keep {
            for (i, slot) in store.acts.iter_mut().enumerate() {
                if !keep[i] {
                    *slot = None;
                }
            }
        }
        (out, store)
    }
}
