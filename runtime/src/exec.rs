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
//!
//! Layout: this file holds the executor and its types; `forward` computes (and recomputes) a
//! layer's nodes, `backward` their gradients, `run` is the per-layer step API ([`Run`]), and
//! `decode` the key/value-cached decoding.

use modelspec_dsl::ir::{Ffn, Layer, LayerCheckpoint, ModelSpec, Moe, Norm, Position, QkNormScope};
use modelspec_dsl::plan::{self, Dtype, PolicyOverride};

use crate::error::{Error, Result};
use crate::ops::attention::{self, AttentionCfg};
use crate::ops::dropout::{DropSite, Dropout};
use crate::ops::mlp::{self, MlpGrad, MlpRef};
use crate::ops::moe::{self, AuxStats, Routing};
use crate::ops::rope::{self, RopeTable};

mod backward;
mod decode;
mod forward;
mod run;
use crate::ops::{activation, cross_entropy, embedding, linear, norm, softcap};
use crate::program::{Act, LayerProgram, N_ACTS, Program};
use crate::tensor::{Float, ParamSource, Params, Tensor};
pub use decode::KvCache;
use forward::{norm_params, p, proj};
pub use run::{Head, Hidden, Losses, Mode, Run, Saved};

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

impl Policy {
    /// The policy for an override of the spec's (`--checkpoint POLICY`, parsed by
    /// [`modelspec_dsl::plan::parse_policy`]) in calls of `batch` sequences of `seq` tokens: no
    /// override is [`Policy::FromSpec`], a per-layer policy applies to every layer, and a budget
    /// becomes the per-layer save sets the planner resolves for that shape (f32 activations), or
    /// the planner's error (an infeasible budget).
    pub fn from_override(
        spec: &ModelSpec,
        policy: Option<&PolicyOverride>,
        batch: usize,
        seq: usize,
    ) -> std::result::Result<Policy, plan::PlanError> {
        Ok(match policy {
            None => Policy::FromSpec,
            Some(PolicyOverride::Layer(p)) => Policy::Uniform(p.clone()),
            Some(budget @ PolicyOverride::Budget(_)) => {
                let planned = plan::plan(spec, batch as u64, seq as u64, Dtype::F32, Some(budget))?;
                Policy::PerLayer(planned.layer_checkpoints())
            }
        })
    }
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

/// Gradient buffers, moved out of the map while an op accumulates into them.
struct Grads<T: Float> {
    params: Params<T>,
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
            if a.head_dim == 0 || a.window == Some(0) || a.chunk == Some(0) {
                return Err(Error::BadSpec(format!(
                    "layer {}: head_dim {}, window {:?} and chunk {:?} must be positive",
                    layer.index, a.head_dim, a.window, a.chunk
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
            if let Some(m) = &a.mla {
                let rope_ok =
                    matches!(&layer.position, Position::Rope(r) if r.rotary_dims == m.rope_dim);
                if !rope_ok
                    || a.kv_heads != a.heads
                    || a.head_dim != m.nope_dim + m.rope_dim
                    || m.kv_rank == 0
                    || m.v_dim == 0
                    || m.q_rank == Some(0)
                    || a.qk_norm.is_some()
                {
                    return Err(Error::BadSpec(format!(
                        "layer {}: latent attention needs RoPE over its rope_dim, kv_heads = heads, head_dim = nope_dim + rope_dim, positive ranks and v_dim, and no qk-norm",
                        layer.index
                    )));
                }
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
            program: Program::lower(spec),
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
            chunk: a.chunk.map(|c| c as usize),
            sinks: a.sinks.then(|| {
                let name = format!("layers.{i}.attn.sinks");
                forward::p(params, &name)
                    .iter()
                    .map(|s| s.to_f64())
                    .collect()
            }),
            temperature: a.temperature,
            v_head_dim: a.mla.map(|m| m.v_dim as usize),
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
        let mut logits = linear::forward_new(&normed, shape.rows, d, w, b, vp);
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

    /// Logits `[batch, seq, vocab_padded]` of `tokens` (`batch` equal sequences, row-major), in
    /// evaluation mode (no dropout).
    pub fn forward<T: Float>(
        &self,
        params: &Params<T>,
        tokens: &[u32],
        batch: usize,
    ) -> Result<Tensor<T>> {
        on_pool(|| {
            let mut run = self.run(params, tokens, batch, Mode::Eval)?;
            let mut x = run.embed();
            for (i, layer) in self.spec.layers.iter().enumerate() {
                (x, _) = run.layer(i, x, &layer.checkpoint)?;
            }
            let head = run.head(x)?;
            run.logits(head)
        })
    }

    /// Mean next-token loss of `tokens` in evaluation mode.
    pub fn loss<T: Float>(&self, params: &Params<T>, tokens: &[u32], batch: usize) -> Result<f64> {
        // The loss's parallel loop on the pool too ([`Self::forward`] runs there already).
        on_pool(|| {
            let logits = self.forward(params, tokens, batch)?;
            let seq = tokens.len() / batch;
            Ok(cross_entropy::forward(
                logits.data(),
                self.spec.vocab_padded as usize,
                tokens,
                seq,
            ))
        })
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
        on_pool(|| {
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
        })
    }
}

/// Runs `f` on a thread of rayon's pool (this one, when it is already there): each op's parallel
/// loop inside is then a fork within the pool, not a job handed from an outside thread to the
/// pool and back (two thread wake-ups an op). On the bundled tiny spec (2 cores, fifteenth
/// session) 100 training steps took 19.3-20.3 s this way against 21.4-22.1 s, the same bits.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

fn add_into<T: Float>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}
