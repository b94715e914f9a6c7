//! The executor: runs the [`Program`] of a spec forward, and backward with activation
//! checkpointing.
//!
//! Forward runs each layer's nodes in order, then drops the activations its [`Policy`] does not
//! save (the layer input is always kept). Backward walks the layers in reverse; each op's backward
//! asks the layer's store for the activations it reads, and a missing one is recomputed, by the
//! same node function, from the nearest saved ones (recursively). Every op is deterministic and
//! dropout masks are counter-based, so recomputed values are bit-identical to the first forward and
//! the gradients are bit-identical under every policy.
//!
//! Dropout is on only when a seed is set ([`Executor::set_dropout_seed`]); a trainer sets a new
//! seed per step. `forward` never drops out.

use modelspec_dsl::ir::{Ffn, Layer, LayerCheckpoint, ModelSpec, Moe, Norm, Position, QkNormScope};
use modelspec_dsl::plan::Dtype;

use crate::error::{Error, Result};
use crate::ops::attention::{self, AttentionCfg};
use crate::ops::dropout::{DropSite, Dropout};
use crate::ops::mlp::{self, MlpGrad, MlpRef};
use crate::ops::moe::{self, AuxStats, Routing};
use crate::ops::rope::{self, RopeTable};

mod decode;
use crate::ops::{activation, cross_entropy, embedding, linear, norm, softcap};
use crate::program::{Act, LayerProgram, N_ACTS, Program};
use crate::tensor::{Float, ParamSource, Params, Tensor};
pub use decode::KvCache;

/// Which activations each layer keeps for backward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Each layer's own `checkpoint` from the IR; with a global `budget` in the spec, the save
    /// sets that `modelspec_dsl::plan` resolves for the call's batch and sequence (f32).
    FromSpec,
    /// The same policy for every layer.
    Uniform(LayerCheckpoint),
    /// One policy per layer (what the budget planner produces).
    PerLayer(Vec<LayerCheckpoint>),
}

/// What [`Executor::loss_and_grads`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput<T: Float = f32> {
    /// The training objective: `ce_loss + aux coefficient · aux_loss`.
    pub loss: f64,
    /// Mean next-token cross-entropy.
    pub ce_loss: f64,
    /// The MoE load-balancing loss before its coefficient (0 without MoE).
    pub aux_loss: f64,
    /// Logits `[batch, seq, vocab_padded]`.
    pub logits: Tensor<T>,
    /// d loss / d parameter, by canonical name.
    pub grads: Params<T>,
}

/// Runs a spec on the CPU.
#[derive(Debug, Clone)]
pub struct Executor {
    spec: ModelSpec,
    program: Program,
    dropout_seed: Option<u64>,
    aux_loss: bool,
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Shape {
    batch: usize,
    seq: usize,
    rows: usize,
    d: usize,
}

/// The activations of one layer held between passes.
struct Store<T: Float> {
    acts: Vec<Option<Vec<T>>>,
    routing: Option<Routing>,
}

impl<T: Float> Store<T> {
    fn new(input: Vec<T>) -> Self {
        let mut acts: Vec<Option<Vec<T>>> = (0..N_ACTS).map(|_| None).collect();
        acts[Act::Input as usize] = Some(input);
        Store {
            acts,
            routing: None,
        }
    }
    fn get(&self, a: Act) -> &[T] {
        self.acts[a as usize]
            .as_deref()
            .unwrap_or_else(|| panic!("activation `{}` not materialised", a.name()))
    }
}

/// Everything a layer's nodes need besides the store.
struct LayerCtx<'a, T: Float> {
    layer: &'a Layer,
    lp: &'a LayerProgram,
    params: &'a dyn ParamSource<T>,
    shape: Shape,
    rope: Option<RopeTable<T>>,
    attn: AttentionCfg,
    drop_attn_branch: Option<Dropout>,
    drop_mlp_branch: Option<Dropout>,
    /// Decoding: the cached keys (after qk-norm and RoPE) and values of the positions before
    /// this call's rows, `[p0, kv_dim]` each; attention then reads them ahead of the new rows.
    past: Option<decode::Past<'a, T>>,
}

fn p<'a, T: Float>(params: &'a dyn ParamSource<T>, name: &str) -> &'a [T] {
    params
        .param(name)
        .map(|t| t.data())
        .unwrap_or_else(|| panic!("parameter `{name}` missing after validation"))
}

fn norm_params<'a, T: Float>(
    params: &'a dyn ParamSource<T>,
    prefix: &str,
    n: &Norm,
) -> (Option<&'a [T]>, Option<&'a [T]>) {
    let w = n.weight.then(|| p(params, &format!("{prefix}.weight")));
    let b = n.bias.then(|| p(params, &format!("{prefix}.bias")));
    (w, b)
}

fn proj<'a, T: Float>(
    params: &'a dyn ParamSource<T>,
    prefix: &str,
    bias: bool,
) -> (&'a [T], Option<&'a [T]>) {
    (
        p(params, &format!("{prefix}.weight")),
        bias.then(|| p(params, &format!("{prefix}.bias"))),
    )
}

fn mlp_ref<'a, T: Float>(
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
    }
}

/// Gradient buffers, moved out of the map while an op accumulates into them.
struct Grads<T: Float> {
    params: Params<T>,
}

impl<T: Float> Grads<T> {
    fn take(&mut self, name: &str) -> Vec<T> {
        std::mem::take(
            self.params
                .get_mut(name)
                .unwrap_or_else(|| panic!("gradient `{name}` missing"))
                .vec_mut(),
        )
    }
    fn take_opt(&mut self, name: &str, present: bool) -> Option<Vec<T>> {
        present.then(|| self.take(name))
    }
    fn put(&mut self, name: &str, v: Vec<T>) {
        *self
            .params
            .get_mut(name)
            .unwrap_or_else(|| panic!("gradient `{name}` missing"))
            .vec_mut() = v;
    }
    fn put_opt(&mut self, name: &str, v: Option<Vec<T>>) {
        if let Some(v) = v {
            self.put(name, v);
        }
    }

    /// Linear backward for parameter prefix `prefix`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        params: &dyn ParamSource<T>,
        prefix: &str,
        bias: bool,
        x: &[T],
        dy: &[T],
        rows: usize,
        in_dim: usize,
        out_dim: usize,
        dx: Option<&mut [T]>,
    ) {
        let wn = format!("{prefix}.weight");
        let bn = format!("{prefix}.bias");
        let mut dw = self.take(&wn);
        let mut db = self.take_opt(&bn, bias);
        linear::backward(
            x,
            dy,
            rows,
            in_dim,
            out_dim,
            p(params, &wn),
            dx,
            &mut dw,
            db.as_deref_mut(),
        );
        self.put(&wn, dw);
        self.put_opt(&bn, db);
    }

    /// Norm backward for parameter prefix `prefix`, applied to `width`-rows.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &mut self,
        params: &dyn ParamSource<T>,
        prefix: &str,
        n: &Norm,
        width: usize,
        x: &[T],
        dy: &[T],
        dx: &mut [T],
    ) {
        let wn = format!("{prefix}.weight");
        let bn = format!("{prefix}.bias");
        let (w, _) = norm_params(params, prefix, n);
        let mut dw = self.take_opt(&wn, n.weight);
        let mut db = self.take_opt(&bn, n.bias);
        norm::backward(x, dy, width, n, w, dx, dw.as_deref_mut(), db.as_deref_mut());
        self.put_opt(&wn, dw);
        self.put_opt(&bn, db);
    }

    /// MLP backward for parameter prefix `prefix`.
    #[allow(clippy::too_many_arguments)]
    fn mlp(
        &mut self,
        m: &MlpRef<'_, T>,
        prefix: &str,
        bias: bool,
        x: &[T],
        gate: Option<&[T]>,
        up: &[T],
        act: &[T],
        dout: &[T],
        rows: usize,
        dx: &mut [T],
    ) {
        let names = |s: &str| (format!("{prefix}.{s}.weight"), format!("{prefix}.{s}.bias"));
        let (gw, gb) = names("gate");
        let (uw, ub) = names("up");
        let (dwn, dbn) = names("down");
        let gated = m.kind.is_gated();
        let mut g_w = self.take_opt(&gw, gated);
        let mut g_b = self.take_opt(&gb, gated && bias);
        let mut u_w = self.take(&uw);
        let mut u_b = self.take_opt(&ub, bias);
        let mut d_w = self.take(&dwn);
        let mut d_b = self.take_opt(&dbn, bias);
        let grads = MlpGrad {
            gate: g_w.as_deref_mut().map(|w| (w, g_b.as_deref_mut())),
            up: (&mut u_w, u_b.as_deref_mut()),
            down: (&mut d_w, d_b.as_deref_mut()),
        };
        mlp::backward(m, x, gate, up, act, dout, rows, grads, dx);
        self.put_opt(&gw, g_w);
        self.put_opt(&gb, g_b);
        self.put(&uw, u_w);
        self.put_opt(&ub, u_b);
        self.put(&dwn, d_w);
        self.put_opt(&dbn, d_b);
    }
}

fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

fn add_into<T: Float>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

impl<'a, T: Float> LayerCtx<'a, T> {
    fn prefix(&self, s: &str) -> String {
        format!("layers.{}.{s}", self.lp.index)
    }

    fn moe(&self) -> &'a Moe {
        match &self.layer.ffn {
            Ffn::Moe(m) => m,
            Ffn::Mlp(_) => unreachable!("MoE activation in a dense layer"),
        }
    }

    fn dense_ref(&self) -> MlpRef<'a, T> {
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

    fn expert_ref(&self, e: usize) -> MlpRef<'a, T> {
        let moe = self.moe();
        mlp_ref(
            self.params,
            &self.prefix(&format!("moe.experts.{e}")),
            &moe.expert,
            self.shape.d,
            moe.expert.hidden as usize,
        )
    }

    fn shared_ref(&self) -> MlpRef<'a, T> {
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

    /// Makes `a` (and whatever it needs) present in `store`.
    fn ensure(&self, store: &mut Store<T>, a: Act) {
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
            let (routing, _) = moe::route(self.moe(), store.get(Act::RouterLogits));
            store.routing = Some(routing);
        }
        let value = self.compute(store, a);
        store.acts[a as usize] = Some(value);
    }

    fn ensure_all(&self, store: &mut Store<T>, acts: &[Act]) {
        for &a in acts {
            self.ensure(store, a);
        }
    }

    /// Computes activation `a` from its (present) inputs.
    fn compute(&self, store: &Store<T>, a: Act) -> Vec<T> {
        let Shape { rows, d, .. } = self.shape;
        let att = &self.layer.attention;
        let (heads, kv_heads, hd) = (
            att.heads as usize,
            att.kv_heads as usize,
            att.head_dim as usize,
        );
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let block_norm = &self.layer.block.norm;
        let norm_into = |x: &[T], prefix: &str, n: &Norm, width: usize| {
            let (w, b) = norm_params(self.params, &self.prefix(prefix), n);
            let mut y = vec![T::ZERO; x.len()];
            norm::forward(x, width, n, w, b, &mut y);
            y
        };
        let lin = |x: &[T], prefix: &str, bias: bool, in_dim: usize, out_dim: usize| {
            let (w, b) = proj(self.params, &self.prefix(prefix), bias);
            let mut y = vec![T::ZERO; rows * out_dim];
            linear::forward(x, rows, in_dim, w, b, out_dim, &mut y);
            y
        };
        match a {
            Act::Input => unreachable!("the layer input is never computed"),
            Act::AttnNorm => norm_into(store.get(Act::Input), "attn_norm", block_norm, d),
            Act::Q => lin(store.get(self.lp.attn_in), "attn.q", att.qkv_bias, d, qd),
            Act::K => lin(store.get(self.lp.attn_in), "attn.k", att.qkv_bias, d, kvd),
            Act::V => lin(store.get(self.lp.attn_in), "attn.v", att.qkv_bias, d, kvd),
            Act::QNormed | Act::KNormed => {
                let qk = att
                    .qk_norm
                    .as_ref()
                    .expect("qk-norm activation without qk-norm");
                let (src, prefix, width) = match (a, qk.scope) {
                    (Act::QNormed, QkNormScope::Head) => (Act::Q, "attn.q_norm", hd),
                    (Act::QNormed, QkNormScope::Full) => (Act::Q, "attn.q_norm", qd),
                    (_, QkNormScope::Head) => (Act::K, "attn.k_norm", hd),
                    (_, QkNormScope::Full) => (Act::K, "attn.k_norm", kvd),
                };
                norm_into(store.get(src), prefix, &qk.norm, width)
            }
            Act::QRope | Act::KRope => {
                let table = self.rope.as_ref().expect("rope activation without rope");
                let (src, h) = if a == Act::QRope {
                    (
                        if att.qk_norm.is_some() {
                            Act::QNormed
                        } else {
                            Act::Q
                        },
                        heads,
                    )
                } else {
                    (
                        if att.qk_norm.is_some() {
                            Act::KNormed
                        } else {
                            Act::K
                        },
                        kv_heads,
                    )
                };
                let x = store.get(src);
                let mut y = vec![T::ZERO; x.len()];
                rope::forward(table, x, h, hd, &mut y);
                y
            }
            Act::Attn => {
                let mut y = vec![T::ZERO; rows * qd];
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
            Act::AttnOut => lin(store.get(Act::Attn), "attn.o", att.out_bias, qd, d),
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
                let mut y = vec![T::ZERO; rows * m.hidden];
                linear::forward(store.get(self.lp.mlp_in), rows, d, w, b, m.hidden, &mut y);
                y
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
                if kind.is_gated() {
                    activation::forward_gated(f, store.get(g), up, &mut y);
                } else {
                    activation::forward(f, up, &mut y);
                }
                y
            }
            Act::MlpOut if matches!(self.layer.ffn, Ffn::Mlp(_)) => {
                let m = self.dense_ref();
                let mut y = vec![T::ZERO; rows * d];
                mlp::down(&m, store.get(Act::ActOut), rows, &mut y);
                y
            }
            Act::MlpOut => {
                let moe = self.moe();
                let routing = store.routing.as_ref().expect("routing");
                let mut y = vec![T::ZERO; rows * d];
                moe::combine(
                    routing,
                    store.get(Act::RouterWeights),
                    store.get(Act::ExpertOut),
                    d,
                    &mut y,
                );
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
                false,
                d,
                self.moe().experts as usize,
            ),
            Act::RouterWeights => moe::route(self.moe(), store.get(Act::RouterLogits)).1,
            Act::ExpertIn => {
                let routing = store.routing.as_ref().expect("routing");
                let mut y = vec![T::ZERO; routing.expert.len() * d];
                moe::gather(routing, store.get(self.lp.mlp_in), d, &mut y);
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
                let mut y = vec![T::ZERO; rows * m.hidden];
                linear::forward(store.get(self.lp.mlp_in), rows, d, w, b, m.hidden, &mut y);
                y
            }
            Act::SharedOut => {
                let m = self.shared_ref();
                let mut y = vec![T::ZERO; rows * d];
                mlp::down(&m, store.get(Act::SharedAct), rows, &mut y);
                y
            }
            Act::MlpPostNorm => norm_into(store.get(Act::MlpOut), "mlp_post_norm", block_norm, d),
        }
    }

    /// The layer output from a store holding the branch activations.
    fn output(&self, store: &Store<T>) -> Vec<T> {
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
    fn forward(
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

    /// Backward through the layer: returns d loss / d input, accumulating parameter gradients.
    fn backward(
        &self,
        store: &mut Store<T>,
        dy: &[T],
        grads: &mut Grads<T>,
        aux_dprobs: Option<&[T]>,
    ) -> Vec<T> {
        let Shape { rows, d, .. } = self.shape;
        let lp = self.lp;
        let layer = self.layer;
        let att = &layer.attention;
        let (heads, kv_heads, hd) = (
            att.heads as usize,
            att.kv_heads as usize,
            att.head_dim as usize,
        );
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let block_norm = layer.block.norm;
        let params = self.params;
        let zeros = |n: usize| vec![T::ZERO; n];

        let mut d_input = zeros(rows * d);
        // Output = stream + drop(mlp_branch) [+ drop(attn_branch) when parallel].
        let mut d_mlp_branch = zeros(rows * d);
        match &self.drop_mlp_branch {
            Some(drop) => drop.backward_acc(dy, &mut d_mlp_branch),
            None => d_mlp_branch.copy_from_slice(dy),
        }
        let mut d_attn_branch = zeros(rows * d);
        let mut d_resid_mid = zeros(rows * d);
        if lp.parallel {
            add_into(&mut d_input, dy);
            match &self.drop_attn_branch {
                Some(drop) => drop.backward_acc(dy, &mut d_attn_branch),
                None => d_attn_branch.copy_from_slice(dy),
            }
        } else {
            d_resid_mid.copy_from_slice(dy);
        }

        // FFN branch.
        let d_mlp_out = if lp.mlp_branch == Act::MlpPostNorm {
            self.ensure(store, Act::MlpOut);
            let mut g = zeros(rows * d);
            grads.norm(
                params,
                &self.prefix("mlp_post_norm"),
                &block_norm,
                d,
                store.get(Act::MlpOut),
                &d_mlp_branch,
                &mut g,
            );
            g
        } else {
            d_mlp_branch
        };
        let mut d_mlp_in = zeros(rows * d);
        match &layer.ffn {
            Ffn::Mlp(m) => {
                let gated = m.activation.is_gated();
                let mut need = vec![lp.mlp_in, Act::Up, Act::ActOut];
                if gated {
                    need.push(Act::Gate);
                }
                self.ensure_all(store, &need);
                let r = self.dense_ref();
                grads.mlp(
                    &r,
                    &self.prefix("mlp"),
                    m.bias,
                    store.get(lp.mlp_in),
                    gated.then(|| store.get(Act::Gate)),
                    store.get(Act::Up),
                    store.get(Act::ActOut),
                    &d_mlp_out,
                    rows,
                    &mut d_mlp_in,
                );
            }
            Ffn::Moe(moe) => {
                self.moe_backward(store, moe, &d_mlp_out, grads, aux_dprobs, &mut d_mlp_in)
            }
        }
        match lp.mlp_in {
            Act::MlpNorm => {
                let src = if lp.parallel {
                    Act::Input
                } else {
                    Act::ResidMid
                };
                self.ensure(store, src);
                let dst = if lp.parallel {
                    &mut d_input
                } else {
                    &mut d_resid_mid
                };
                grads.norm(
                    params,
                    &self.prefix("mlp_norm"),
                    &block_norm,
                    d,
                    store.get(src),
                    &d_mlp_in,
                    dst,
                );
            }
            Act::ResidMid => add_into(&mut d_resid_mid, &d_mlp_in),
            Act::Input => add_into(&mut d_input, &d_mlp_in),
            // Shared norm: folded into the attention input's gradient below.
            _ => {}
        }
        if !lp.parallel {
            add_into(&mut d_input, &d_resid_mid);
            match &self.drop_attn_branch {
                Some(drop) => drop.backward_acc(&d_resid_mid, &mut d_attn_branch),
                None => add_into(&mut d_attn_branch, &d_resid_mid),
            }
        }

        // Attention branch.
        let d_attn_out = if lp.attn_branch == Act::AttnPostNorm {
            self.ensure(store, Act::AttnOut);
            let mut g = zeros(rows * d);
            grads.norm(
                params,
                &self.prefix("attn_post_norm"),
                &block_norm,
                d,
                store.get(Act::AttnOut),
                &d_attn_branch,
                &mut g,
            );
            g
        } else {
            d_attn_branch
        };
        self.ensure(store, Act::Attn);
        let mut d_attn = zeros(rows * qd);
        grads.linear(
            params,
            &self.prefix("attn.o"),
            att.out_bias,
            store.get(Act::Attn),
            &d_attn_out,
            rows,
            qd,
            d,
            Some(&mut d_attn),
        );
        self.ensure_all(store, &[lp.q_final, lp.k_final, Act::V]);
        let mut dq_f = zeros(rows * qd);
        let mut dk_f = zeros(rows * kvd);
        let mut dv = zeros(rows * kvd);
        attention::backward(
            &self.attn,
            store.get(lp.q_final),
            store.get(lp.k_final),
            store.get(Act::V),
            &d_attn,
            &mut dq_f,
            &mut dk_f,
            &mut dv,
        );
        let (mut dq, mut dk) = (dq_f, dk_f);
        if let Some(table) = &self.rope {
            let mut g = zeros(rows * qd);
            rope::backward(table, &dq, heads, hd, &mut g);
            dq = g;
            let mut g = zeros(rows * kvd);
            rope::backward(table, &dk, kv_heads, hd, &mut g);
            dk = g;
        }
        if let Some(qk) = &att.qk_norm {
            self.ensure_all(store, &[Act::Q, Act::K]);
            let (qw, kw) = match qk.scope {
                QkNormScope::Head => (hd, hd),
                QkNormScope::Full => (qd, kvd),
            };
            let mut g = zeros(rows * qd);
            grads.norm(
                params,
                &self.prefix("attn.q_norm"),
                &qk.norm,
                qw,
                store.get(Act::Q),
                &dq,
                &mut g,
            );
            dq = g;
            let mut g = zeros(rows * kvd);
            grads.norm(
                params,
                &self.prefix("attn.k_norm"),
                &qk.norm,
                kw,
                store.get(Act::K),
                &dk,
                &mut g,
            );
            dk = g;
        }
        self.ensure(store, lp.attn_in);
        let x = store.get(lp.attn_in);
        let mut d_attn_in = zeros(rows * d);
        grads.linear(
            params,
            &self.prefix("attn.q"),
            att.qkv_bias,
            x,
            &dq,
            rows,
            d,
            qd,
            Some(&mut d_attn_in),
        );
        grads.linear(
            params,
            &self.prefix("attn.k"),
            att.qkv_bias,
            x,
            &dk,
            rows,
            d,
            kvd,
            Some(&mut d_attn_in),
        );
        grads.linear(
            params,
            &self.prefix("attn.v"),
            att.qkv_bias,
            x,
            &dv,
            rows,
            d,
            kvd,
            Some(&mut d_attn_in),
        );
        if lp.mlp_in == Act::AttnNorm {
            add_into(&mut d_attn_in, &d_mlp_in);
        }
        if lp.attn_in == Act::AttnNorm {
            grads.norm(
                params,
                &self.prefix("attn_norm"),
                &block_norm,
                d,
                store.get(Act::Input),
                &d_attn_in,
                &mut d_input,
            );
        } else {
            add_into(&mut d_input, &d_attn_in);
        }
        d_input
    }

    fn moe_backward(
        &self,
        store: &mut Store<T>,
        moe: &Moe,
        d_mlp_out: &[T],
        grads: &mut Grads<T>,
        aux_dprobs: Option<&[T]>,
        d_mlp_in: &mut [T],
    ) {
        let Shape { rows, d, .. } = self.shape;
        let lp = self.lp;
        let params = self.params;
        let gated = moe.expert.activation.is_gated();
        // Shared experts.
        if let Some(shared) = &moe.shared {
            let mut need = vec![lp.mlp_in, Act::SharedUp, Act::SharedAct, Act::SharedOut];
            if gated {
                need.push(Act::SharedGate);
            }
            self.ensure_all(store, &need);
            let x = store.get(lp.mlp_in);
            let so = store.get(Act::SharedOut);
            let mut d_shared_out = vec![T::ZERO; rows * d];
            if shared.gate {
                let (w, _) = proj(params, &self.prefix("moe.shared_gate"), false);
                let mut g = vec![T::ZERO; rows];
                linear::forward(x, rows, d, w, None, 1, &mut g);
                let mut d_logit = vec![T::ZERO; rows];
                for n in 0..rows {
                    let s = sigmoid(g[n]);
                    let dyr = &d_mlp_out[n * d..(n + 1) * d];
                    let sor = &so[n * d..(n + 1) * d];
                    let dot: T = dyr.iter().zip(sor).map(|(&a, &b)| a * b).sum();
                    d_logit[n] = dot * s * (T::ONE - s);
                    for (o, &v) in d_shared_out[n * d..(n + 1) * d].iter_mut().zip(dyr) {
                        *o = v * s;
                    }
                }
                grads.linear(
                    params,
                    &self.prefix("moe.shared_gate"),
                    false,
                    x,
                    &d_logit,
                    rows,
                    d,
                    1,
                    Some(&mut *d_mlp_in),
                );
            } else {
                d_shared_out.copy_from_slice(d_mlp_out);
            }
            let r = self.shared_ref();
            grads.mlp(
                &r,
                &self.prefix("moe.shared"),
                moe.expert.bias,
                x,
                gated.then(|| store.get(Act::SharedGate)),
                store.get(Act::SharedUp),
                store.get(Act::SharedAct),
                &d_shared_out,
                rows,
                d_mlp_in,
            );
        }
        // Routed experts.
        let mut need = vec![
            Act::RouterLogits,
            Act::RouterWeights,
            Act::ExpertIn,
            Act::Up,
            Act::ActOut,
            Act::ExpertOut,
        ];
        if gated {
            need.push(Act::Gate);
        }
        self.ensure_all(store, &need);
        let routing = store.routing.as_ref().expect("routing");
        let k = routing.top_k;
        let slots = rows * k;
        let mut d_expert_out = vec![T::ZERO; slots * d];
        let mut d_weights = vec![T::ZERO; slots];
        moe::combine_backward(
            routing,
            store.get(Act::RouterWeights),
            store.get(Act::ExpertOut),
            d_mlp_out,
            d,
            &mut d_expert_out,
            &mut d_weights,
        );
        let hidden = moe.expert.hidden as usize;
        let mut d_expert_in = vec![T::ZERO; slots * d];
        let (xin, up, act) = (
            store.get(Act::ExpertIn),
            store.get(Act::Up),
            store.get(Act::ActOut),
        );
        let gate = gated.then(|| store.get(Act::Gate));
        for e in 0..routing.experts {
            let (r0, r1) = (routing.offsets[e], routing.offsets[e + 1]);
            if r0 == r1 {
                continue;
            }
            let r = self.expert_ref(e);
            let (h0, h1) = (r0 * hidden, r1 * hidden);
            grads.mlp(
                &r,
                &self.prefix(&format!("moe.experts.{e}")),
                moe.expert.bias,
                &xin[r0 * d..r1 * d],
                gate.map(|g| &g[h0..h1]),
                &up[h0..h1],
                &act[h0..h1],
                &d_expert_out[r0 * d..r1 * d],
                r1 - r0,
                &mut d_expert_in[r0 * d..r1 * d],
            );
        }
        moe::gather_backward(routing, &d_expert_in, d, d_mlp_in);
        let mut d_logits = vec![T::ZERO; rows * moe.experts as usize];
        moe::route_backward(
            moe,
            store.get(Act::RouterLogits),
            routing,
            &d_weights,
            aux_dprobs,
            &mut d_logits,
        );
        grads.linear(
            params,
            &self.prefix("moe.router"),
            false,
            store.get(lp.mlp_in),
            &d_logits,
            rows,
            d,
            moe.experts as usize,
            Some(d_mlp_in),
        );
    }
}

impl Executor {
    /// An executor for `spec` (lowers its program; dropout off, aux loss included).
    pub fn new(spec: &ModelSpec) -> Result<Executor> {
        if spec.layers.len() as u64 != spec.n_layers {
            return Err(Error::BadSpec(format!(
                "n_layers is {} but there are {} layer rows",
                spec.n_layers,
                spec.layers.len()
            )));
        }
        if spec.vocab == 0
            || spec.vocab_padded < spec.vocab
            || spec.d_model == 0
            || spec.context == 0
        {
            return Err(Error::BadSpec(format!(
                "vocab {} (padded {}), d_model {} and context {} must be positive, padded ≥ vocab",
                spec.vocab, spec.vocab_padded, spec.d_model, spec.context
            )));
        }
        for layer in &spec.layers {
            let a = &layer.attention;
            if a.head_dim == 0 || a.window == Some(0) {
                return Err(Error::BadSpec(format!(
                    "layer {}: head_dim {} and window {:?} must be positive",
                    layer.index, a.head_dim, a.window
                )));
            }
            if a.heads == 0 || a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
                return Err(Error::BadSpec(format!(
                    "layer {}: heads {} not divisible by kv_heads {}",
                    layer.index, a.heads, a.kv_heads
                )));
            }
            if let Position::Rope(r) = &layer.position
                && (!r.rotary_dims.is_multiple_of(2)
                    || r.rotary_dims > a.head_dim
                    || r.rotary_dims == 0)
            {
                return Err(Error::BadSpec(format!(
                    "layer {}: rotary_dims {} invalid for head_dim {}",
                    layer.index, r.rotary_dims, a.head_dim
                )));
            }
            if let Ffn::Moe(m) = &layer.ffn
                && (m.top_k == 0 || m.top_k > m.experts)
            {
                return Err(Error::BadSpec(format!(
                    "layer {}: top_k {} with {} experts",
                    layer.index, m.top_k, m.experts
                )));
            }
        }
        let moe_experts: Vec<u64> = spec
            .layers
            .iter()
            .filter_map(|l| match &l.ffn {
                Ffn::Moe(m) if m.aux_loss > 0.0 => Some(m.experts),
                _ => None,
            })
            .collect();
        if moe_experts.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::BadSpec(
                "the load-balancing loss needs the same expert count in every MoE layer".into(),
            ));
        }
        Ok(Executor {
            spec: spec.clone(),
            program: Program::lower(spec)?,
            dropout_seed: None,
            aux_loss: true,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The lowered program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Turns dropout on with `seed` (training) or off with `None` (the default). The mask of each
    /// element depends only on `(seed, layer, site, index)`.
    pub fn set_dropout_seed(&mut self, seed: Option<u64>) {
        self.dropout_seed = seed;
    }

    /// Whether `loss_and_grads` adds the MoE load-balancing loss (default true; HF adds it only
    /// with `output_router_logits`).
    pub fn set_aux_loss(&mut self, on: bool) {
        self.aux_loss = on;
    }

    /// Validates the input; returns the call's shape.
    fn shape(&self, tokens: &[u32], batch: usize) -> Result<Shape> {
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(Error::BadBatch {
                tokens: tokens.len(),
                batch,
            });
        }
        let seq = tokens.len() / batch;
        if self.spec.max_sequence().is_some_and(|max| seq as u64 > max) {
            return Err(Error::SequenceTooLong {
                seq,
                context: self.spec.context,
            });
        }
        if let Some((position, &token)) = tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as u64 >= self.spec.vocab)
        {
            return Err(Error::TokenOutOfRange {
                token,
                position,
                vocab: self.spec.vocab,
            });
        }
        Ok(Shape {
            batch,
            seq,
            rows: tokens.len(),
            d: self.spec.d_model as usize,
        })
    }

    fn layer_ctx<'a, T: Float>(
        &'a self,
        i: usize,
        params: &'a dyn ParamSource<T>,
        shape: Shape,
        training: bool,
    ) -> LayerCtx<'a, T> {
        let layer = &self.spec.layers[i];
        let a = &layer.attention;
        let seed = if training { self.dropout_seed } else { None };
        let drop = |p: f64, site: DropSite| seed.and_then(|s| Dropout::new(p, s, i as u64, site));
        let attn = AttentionCfg {
            batch: shape.batch,
            seq: shape.seq,
            heads: a.heads as usize,
            kv_heads: a.kv_heads as usize,
            head_dim: a.head_dim as usize,
            scale: a.scale,
            softcap: a.softcap,
            window: a.window.map(|w| w as usize),
            alibi: matches!(layer.position, Position::Alibi)
                .then(|| attention::alibi_slopes(a.heads as usize)),
            dropout: drop(self.spec.dropout.attention, DropSite::AttentionProbs),
        };
        let rope = match &layer.position {
            Position::Rope(r) => Some(RopeTable::new(r, shape.seq)),
            _ => None,
        };
        LayerCtx {
            layer,
            lp: &self.program.layers[i],
            params,
            shape,
            rope,
            attn,
            drop_attn_branch: drop(self.spec.dropout.residual, DropSite::AttentionResidual),
            drop_mlp_branch: drop(self.spec.dropout.residual, DropSite::MlpResidual),
            past: None,
        }
    }

    fn embed<T: Float>(
        &self,
        params: &dyn ParamSource<T>,
        tokens: &[u32],
        shape: Shape,
        training: bool,
    ) -> Vec<T> {
        let d = shape.d;
        let mut x = vec![T::ZERO; shape.rows * d];
        let pos = self
            .spec
            .embedding
            .learned_positions
            .then(|| p(params, "pos_embed.weight"));
        embedding::forward(
            tokens,
            p(params, "embed.weight"),
            d,
            self.spec.embedding.scale,
            pos,
            shape.seq,
            &mut x,
        );
        if let Some(drop) = self.embed_dropout(training) {
            drop.apply_inplace(&mut x, 0);
        }
        x
    }

    fn embed_dropout(&self, training: bool) -> Option<Dropout> {
        let seed = if training { self.dropout_seed } else { None };
        seed.and_then(|s| {
            Dropout::new(
                self.spec.dropout.embedding,
                s,
                u64::MAX,
                DropSite::Embedding,
            )
        })
    }

    /// `(normed final hidden, logits)` from the last hidden state.
    fn head<T: Float>(
        &self,
        params: &dyn ParamSource<T>,
        h: &[T],
        shape: Shape,
    ) -> (Vec<T>, Vec<T>) {
        let d = shape.d;
        let vp = self.spec.vocab_padded as usize;
        let normed = match &self.spec.final_norm {
            Some(n) => {
                let (w, b) = norm_params(params, "final_norm", n);
                let mut y = vec![T::ZERO; h.len()];
                norm::forward(h, d, n, w, b, &mut y);
                y
            }
            None => h.to_vec(),
        };
        let w = if self.spec.embedding.tied {
            p(params, "embed.weight")
        } else {
            p(params, "lm_head.weight")
        };
        let b = self.spec.logits.bias.then(|| p(params, "lm_head.bias"));
        let mut logits = vec![T::ZERO; shape.rows * vp];
        linear::forward(&normed, shape.rows, d, w, b, vp, &mut logits);
        if let Some(cap) = self.spec.logits.softcap {
            softcap::forward_inplace(&mut logits, cap);
        }
        (normed, logits)
    }

    /// The per-layer policies `policy` resolves to for a call of `batch` sequences of `seq`
    /// tokens: with [`Policy::FromSpec`] and a global budget in the spec, the save sets of
    /// `modelspec_dsl::plan` (f32 activations).
    pub fn layer_policies(
        &self,
        policy: &Policy,
        batch: usize,
        seq: usize,
    ) -> Result<Vec<LayerCheckpoint>> {
        let n = self.program.layers.len();
        Ok(match policy {
            Policy::FromSpec if self.spec.checkpoint.budget.is_some() => {
                let plan = modelspec_dsl::plan::plan(
                    &self.spec,
                    batch as u64,
                    seq as u64,
                    Dtype::F32,
                    None,
                )
                .map_err(|e| Error::Checkpoint(e.to_string()))?;
                plan.layer_checkpoints()
            }
            Policy::FromSpec => self
                .spec
                .layers
                .iter()
                .map(|l| l.checkpoint.clone())
                .collect(),
            Policy::Uniform(c) => vec![c.clone(); n],
            Policy::PerLayer(v) => {
                if v.len() != n {
                    return Err(Error::PolicyLayers {
                        got: v.len(),
                        expected: n,
                    });
                }
                v.clone()
            }
        })
    }

    /// Starts a [`Run`] of `tokens` (`batch` equal sequences, row-major) with `params`: checks the
    /// input and the parameters. [`Executor::forward`] and [`Executor::loss_and_grads`] are loops
    /// over the run's steps; generated code calls the same steps unrolled.
    pub fn run<'a, T: Float>(
        &'a self,
        params: &'a dyn ParamSource<T>,
        tokens: &'a [u32],
        batch: usize,
        mode: Mode,
    ) -> Result<Run<'a, T>> {
        let shape = self.shape(tokens, batch)?;
        params.check_params(&self.spec)?;
        let aux_coef = match mode {
            Mode::Train if self.aux_loss => self.spec.layers.iter().find_map(|l| match &l.ffn {
                Ffn::Moe(m) if m.aux_loss > 0.0 => Some(m.aux_loss),
                _ => None,
            }),
            _ => None,
        };
        let aux = aux_coef.map(|_| {
            let e = self.spec.layers.iter().find_map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(m.experts as usize),
                Ffn::Mlp(_) => None,
            });
            AuxStats::new(e.unwrap_or(0))
        });
        Ok(Run {
            exec: self,
            params,
            tokens,
            shape,
            mode,
            aux_coef,
            aux,
            aux_dprobs: None,
            grads: None,
        })
    }

    /// Logits `[batch, seq, vocab_padded]` of `tokens` (`batch` equal sequences, row-major), in
    /// evaluation mode (no dropout).
    pub fn forward<T: Float>(
        &self,
        params: &Params<T>,
        tokens: &[u32],
        batch: usize,
    ) -> Result<Tensor<T>> {
        let mut run = self.run(params, tokens, batch, Mode::Eval)?;
        let mut x = run.embed();
        for (i, layer) in self.spec.layers.iter().enumerate() {
            (x, _) = run.layer(i, x, &layer.checkpoint)?;
        }
        let head = run.head(x)?;
        run.logits(head)
    }

    /// Mean next-token loss of `tokens` in evaluation mode.
    pub fn loss<T: Float>(&self, params: &Params<T>, tokens: &[u32], batch: usize) -> Result<f64> {
        let logits = self.forward(params, tokens, batch)?;
        let seq = tokens.len() / batch;
        Ok(cross_entropy::forward(
            logits.data(),
            self.spec.vocab_padded as usize,
            tokens,
            seq,
        ))
    }

    /// Forward and backward: the loss, the logits, and the gradient of every parameter. Dropout is
    /// on when a seed is set. `policy` chooses what each layer saves; the gradients do not depend
    /// on it (bit for bit).
    pub fn loss_and_grads<T: Float>(
        &self,
        params: &Params<T>,
        tokens: &[u32],
        batch: usize,
        policy: &Policy,
    ) -> Result<StepOutput<T>> {
        let mut run = self.run(params, tokens, batch, Mode::Train)?;
        let policies = run.layer_policies(policy)?;
        let mut x = run.embed();
        let mut saved = Vec::with_capacity(policies.len());
        for (i, layer_policy) in policies.iter().enumerate() {
            let (y, s) = run.layer(i, x, layer_policy)?;
            saved.push(s);
            x = y;
        }
        let head = run.head(x)?;
        let mut dx = run.head_backward(&head)?;
        for (i, s) in saved.into_iter().enumerate().rev() {
            dx = run.layer_backward(i, s, dx)?;
        }
        run.embed_backward(dx)?;
        run.finish(head)
    }
}

/// What a [`Run`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Logits only: no dropout, no load-balancing loss, nothing saved for backward (the layers'
    /// checkpoint policies are ignored).
    Eval,
    /// Forward then backward: dropout when a seed is set, the load-balancing loss when enabled,
    /// and each layer saves what its checkpoint policy says.
    Train,
}

/// The residual stream between two steps of a [`Run`], or its gradient: `[batch·seq, d_model]`,
/// row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Hidden<T: Float = f32> {
    data: Vec<T>,
}

impl<T: Float> Hidden<T> {
    /// The values, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The values, moved out.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
}

/// What [`Run::layer`] leaves for [`Run::layer_backward`]: the layer input and the activations
/// its checkpoint policy saves; backward recomputes the rest. Empty in [`Mode::Eval`].
pub struct Saved<T: Float = f32> {
    layer: usize,
    store: Option<Store<T>>,
}

impl<T: Float> Saved<T> {
    /// The layer it belongs to.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// The names of the activations held, in declaration order (empty in [`Mode::Eval`]).
    pub fn names(&self) -> Vec<&'static str> {
        self.store.as_ref().map_or_else(Vec::new, |store| {
            Act::ALL
                .iter()
                .filter(|a| store.acts[**a as usize].is_some())
                .map(|a| a.name())
                .collect()
        })
    }
}

impl<T: Float> std::fmt::Debug for Saved<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("layer", &self.layer)
            .field("names", &self.names())
            .finish()
    }
}

/// The losses of a training [`Run`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// The training objective: `ce_loss + aux coefficient · aux_loss`.
    pub loss: f64,
    /// Mean next-token cross-entropy.
    pub ce_loss: f64,
    /// The MoE load-balancing loss before its coefficient (0 without MoE).
    pub aux_loss: f64,
}

/// What [`Run::head`] returns: the logits, the losses (training), and what
/// [`Run::head_backward`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Head<T: Float = f32> {
    /// The last layer's output (kept for the final norm's backward; empty in eval).
    hidden: Vec<T>,
    /// The final-normed hidden state (the classifier's input; empty in eval).
    normed: Vec<T>,
    logits: Vec<T>,
    losses: Option<Losses>,
}

impl<T: Float> Head<T> {
    /// Logits `[batch, seq, vocab_padded]`, row-major.
    pub fn logits(&self) -> &[T] {
        &self.logits
    }

    /// The logits, moved out.
    pub fn into_logits(self) -> Vec<T> {
        self.logits
    }

    /// The losses ([`Mode::Train`] only).
    pub fn losses(&self) -> Option<Losses> {
        self.losses
    }
}

/// One pass over a batch, step by step: [`Run::embed`], [`Run::layer`] for each layer in order,
/// [`Run::head`]; for training then [`Run::head_backward`], [`Run::layer_backward`] for each
/// layer in reverse, [`Run::embed_backward`] and [`Run::finish`]. Made by [`Executor::run`].
///
/// The executor's `forward` and `loss_and_grads` are exactly these calls in a loop, and generated
/// models make the same calls in straight-line code, so both give bit-identical results. Each
/// layer's checkpoint policy is an argument of its step; recomputation is bit-exact, so the
/// policy changes memory, never the numbers.
///
/// ```
/// use modelspec_dsl::ir::LayerCheckpoint;
/// use modelspec_runtime::{exec::{Executor, Mode}, Params};
/// # fn demo(spec: &modelspec_dsl::ModelSpec) -> Result<(), modelspec_runtime::Error> {
/// let params = Params::<f32>::init(spec, 0);
/// let exec = Executor::new(spec)?;
/// let tokens = [1, 2, 3, 4];
/// let mut run = exec.run(&params, &tokens, 1, Mode::Train)?;
/// let mut x = run.embed();
/// let mut saved = Vec::new();
/// for i in 0..spec.layers.len() {
///     let (y, s) = run.layer(i, x, &LayerCheckpoint::Full)?;
///     saved.push(s);
///     x = y;
/// }
/// let head = run.head(x)?;
/// let mut dx = run.head_backward(&head)?;
/// for (i, s) in saved.into_iter().enumerate().rev() {
///     dx = run.layer_backward(i, s, dx)?;
/// }
/// run.embed_backward(dx)?;
/// let step = run.finish(head)?;
/// # Ok(()) }
/// ```
pub struct Run<'a, T: Float = f32> {
    exec: &'a Executor,
    params: &'a dyn ParamSource<T>,
    tokens: &'a [u32],
    shape: Shape,
    mode: Mode,
    /// The load-balancing coefficient when the loss includes it.
    aux_coef: Option<f64>,
    /// Routing statistics of the MoE layers seen so far (with `aux_coef`).
    aux: Option<AuxStats>,
    /// d aux loss / d router probabilities, set by `head`.
    aux_dprobs: Option<Vec<T>>,
    /// Parameter gradients, from `head_backward` on.
    grads: Option<Grads<T>>,
}

impl<T: Float> std::fmt::Debug for Run<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("model", &self.exec.spec.name)
            .field("batch", &self.shape.batch)
            .field("seq", &self.shape.seq)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<'a, T: Float> Run<'a, T> {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.shape.batch
    }

    /// Tokens per sequence.
    pub fn seq(&self) -> usize {
        self.shape.seq
    }

    /// The per-layer policies `policy` resolves to for this run's batch and sequence length
    /// ([`Executor::layer_policies`]): with [`Policy::FromSpec`] and a global budget, the
    /// planner's save sets.
    pub fn layer_policies(&self, policy: &Policy) -> Result<Vec<LayerCheckpoint>> {
        self.exec
            .layer_policies(policy, self.shape.batch, self.shape.seq)
    }

    fn misuse(what: String) -> Error {
        Error::Run(what)
    }

    fn check_hidden(&self, x: &Hidden<T>, step: &str) -> Result<()> {
        let want = self.shape.rows * self.shape.d;
        if x.data.len() == want {
            Ok(())
        } else {
            Err(Self::misuse(format!(
                "`{step}` got {} values, expected {want} ([{}, {}])",
                x.data.len(),
                self.shape.rows,
                self.shape.d
            )))
        }
    }

    fn check_layer(&self, i: usize, step: &str) -> Result<()> {
        let n = self.exec.program.layers.len();
        if i < n {
            Ok(())
        } else {
            Err(Self::misuse(format!(
                "`{step}` of layer {i}; the model has {n} layers"
            )))
        }
    }

    /// The token (and learned position) embedding, with embedding dropout when training.
    pub fn embed(&self) -> Hidden<T> {
        let training = self.mode == Mode::Train;
        Hidden {
            data: self
                .exec
                .embed(self.params, self.tokens, self.shape, training),
        }
    }

    /// Layer `i` forward from its input `x` under `policy`: the layer output, and what backward
    /// needs (the activations `policy` saves; in [`Mode::Eval`] nothing).
    pub fn layer(
        &mut self,
        i: usize,
        x: Hidden<T>,
        policy: &LayerCheckpoint,
    ) -> Result<(Hidden<T>, Saved<T>)> {
        self.check_layer(i, "layer")?;
        self.check_hidden(&x, "layer")?;
        let exec = self.exec;
        let training = self.mode == Mode::Train;
        let keep = if training {
            exec.program.layers[i].save_set(policy)?
        } else {
            [false; N_ACTS]
        };
        let ctx = exec.layer_ctx(i, self.params, self.shape, training);
        let aux = match (&exec.spec.layers[i].ffn, self.aux.as_mut()) {
            (Ffn::Moe(m), Some(a)) if m.aux_loss > 0.0 => Some(a),
            _ => None,
        };
        let (out, store) = ctx.forward(x.data, Some(&keep), aux);
        Ok((
            Hidden { data: out },
            Saved {
                layer: i,
                store: training.then_some(store),
            },
        ))
    }

    /// The final norm and the classifier (with the logit softcap); when training, also the
    /// losses.
    pub fn head(&mut self, x: Hidden<T>) -> Result<Head<T>> {
        self.check_hidden(&x, "head")?;
        let (normed, logits) = self.exec.head(self.params, &x.data, self.shape);
        if self.mode == Mode::Eval {
            return Ok(Head {
                hidden: Vec::new(),
                normed: Vec::new(),
                logits,
                losses: None,
            });
        }
        let vp = self.exec.spec.vocab_padded as usize;
        let ce_loss = cross_entropy::forward(&logits, vp, self.tokens, self.shape.seq);
        let aux_loss = self.aux.as_ref().map_or(0.0, |a| a.loss());
        let loss = ce_loss + self.aux_coef.unwrap_or(0.0) * aux_loss;
        self.aux_dprobs = self
            .aux
            .as_ref()
            .zip(self.aux_coef)
            .map(|(a, c)| a.dprobs(c));
        Ok(Head {
            hidden: x.data,
            normed,
            logits,
            losses: Some(Losses {
                loss,
                ce_loss,
                aux_loss,
            }),
        })
    }

    /// Logits `[batch, seq, vocab_padded]` of `head` as a tensor.
    pub fn logits(&self, head: Head<T>) -> Result<Tensor<T>> {
        let vp = self.exec.spec.vocab_padded as usize;
        Tensor::from_vec(&[self.shape.batch, self.shape.seq, vp], head.logits)
    }

    /// Backward through the loss, the logit softcap, the classifier and the final norm: d loss /
    /// d last layer output. Starts the parameter gradients.
    pub fn head_backward(&mut self, head: &Head<T>) -> Result<Hidden<T>> {
        if head.losses.is_none() {
            return Err(Self::misuse(
                "`head_backward` needs a `head` of a training run".into(),
            ));
        }
        let exec = self.exec;
        let spec = &exec.spec;
        let params = self.params;
        let Shape { rows, d, seq, .. } = self.shape;
        let vp = spec.vocab_padded as usize;
        let grads = self.grads.insert(Grads {
            params: Params::zeros(spec),
        });
        let logits = &head.logits;
        let mut dlogits = vec![T::ZERO; logits.len()];
        cross_entropy::backward(logits, vp, self.tokens, seq, 1.0, &mut dlogits);
        if let Some(cap) = spec.logits.softcap {
            softcap::backward_inplace(logits, &mut dlogits, cap);
        }
        let mut d_normed = vec![T::ZERO; rows * d];
        let head_name = if spec.embedding.tied {
            "embed"
        } else {
            "lm_head"
        };
        {
            let wn = format!("{head_name}.weight");
            let mut dw = grads.take(&wn);
            let mut db = grads.take_opt("lm_head.bias", spec.logits.bias);
            linear::backward(
                &head.normed,
                &dlogits,
                rows,
                d,
                vp,
                p(params, &wn),
                Some(&mut d_normed),
                &mut dw,
                db.as_deref_mut(),
            );
            grads.put(&wn, dw);
            grads.put_opt("lm_head.bias", db);
        }
        drop(dlogits);
        let dh = match &spec.final_norm {
            Some(n) => {
                let mut g = vec![T::ZERO; rows * d];
                grads.norm(params, "final_norm", n, d, &head.hidden, &d_normed, &mut g);
                g
            }
            None => d_normed,
        };
        Ok(Hidden { data: dh })
    }

    /// Backward through layer `i` from d loss / d its output: d loss / d its input, accumulating
    /// its parameters' gradients. Recomputes, from what `saved` holds, every activation its
    /// policy dropped.
    pub fn layer_backward(
        &mut self,
        i: usize,
        saved: Saved<T>,
        dy: Hidden<T>,
    ) -> Result<Hidden<T>> {
        self.check_layer(i, "layer_backward")?;
        self.check_hidden(&dy, "layer_backward")?;
        if saved.layer != i {
            return Err(Self::misuse(format!(
                "`layer_backward` of layer {i} got the saved state of layer {}",
                saved.layer
            )));
        }
        let Some(mut store) = saved.store else {
            return Err(Self::misuse(format!(
                "`layer_backward` of layer {i}: its forward ran in eval mode"
            )));
        };
        let exec = self.exec;
        let Some(grads) = self.grads.as_mut() else {
            return Err(Self::misuse(format!(
                "`layer_backward` of layer {i} before `head_backward`"
            )));
        };
        let ctx = exec.layer_ctx(i, self.params, self.shape, true);
        let aux = match &exec.spec.layers[i].ffn {
            Ffn::Moe(m) if m.aux_loss > 0.0 => self.aux_dprobs.as_deref(),
            _ => None,
        };
        Ok(Hidden {
            data: ctx.backward(&mut store, &dy.data, grads, aux),
        })
    }

    /// Backward through the embedding dropout and the token (and position) embedding.
    pub fn embed_backward(&mut self, dy: Hidden<T>) -> Result<()> {
        self.check_hidden(&dy, "embed_backward")?;
        let exec = self.exec;
        let spec = &exec.spec;
        let Some(grads) = self.grads.as_mut() else {
            return Err(Self::misuse(
                "`embed_backward` before `head_backward`".into(),
            ));
        };
        let mut d_embed = dy.data;
        if let Some(drop) = exec.embed_dropout(true) {
            let mut g = vec![T::ZERO; d_embed.len()];
            drop.backward_acc(&d_embed, &mut g);
            d_embed = g;
        }
        let mut dtable = grads.take("embed.weight");
        let mut dpos = grads.take_opt("pos_embed.weight", spec.embedding.learned_positions);
        embedding::backward(
            self.tokens,
            &d_embed,
            self.shape.d,
            spec.embedding.scale,
            self.shape.seq,
            &mut dtable,
            dpos.as_deref_mut(),
        );
        grads.put("embed.weight", dtable);
        grads.put_opt("pos_embed.weight", dpos);
        Ok(())
    }

    /// The losses, the logits and every parameter's gradient, after the backward steps.
    pub fn finish(self, head: Head<T>) -> Result<StepOutput<T>> {
        let (Some(losses), Some(grads)) = (head.losses, self.grads) else {
            return Err(Self::misuse(
                "`finish` needs a training run through `head_backward`".into(),
            ));
        };
        let vp = self.exec.spec.vocab_padded as usize;
        Ok(StepOutput {
            loss: losses.loss,
            ce_loss: losses.ce_loss,
            aux_loss: losses.aux_loss,
            logits: Tensor::from_vec(&[self.shape.batch, self.shape.seq, vp], head.logits)?,
            grads: grads.params,
        })
    }
}
