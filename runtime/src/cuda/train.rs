//! A training step on the GPU for dense decoder specs whose layers share one block structure:
//! pre-, post- or sandwich norms, sequential or parallel residual (one shared norm or two),
//! qk-norm per head or over the whole projection, RoPE (per-layer tables) or learned positions,
//! per-layer sliding windows. Forward, fused classifier + cross-entropy, backward and one fused
//! AdamW launch, all on one stream.
//!
//! Parameters live in four arenas with one layout: f32 master weights, the working copy in the
//! compute dtype (bf16, or f32 for parity), f32 gradients, and AdamW's m and v. Matrices come first
//! in parameter-table order, so q/k/v (and gate/up) of a layer are adjacent and act as one fused
//! `[q; k; v]` (`[gate; up]`) matrix in a single GEMM; one AdamW launch covers every parameter.
//!
//! Saved activations (per layer, compute dtype): the block input, both norm outputs, the qkv
//! projection (after RoPE), the attention output, the mid residual, the MLP hidden pre- and
//! post-activation; plus f32 norm statistics and the attention log-sum-exp. Logits exist one row
//! chunk at a time: the cross-entropy kernel turns each chunk into its gradient in place, and the
//! classifier's backward runs right after it.

use super::error::{CudaError, Result};
use super::gemm::{Gemm, RowMajorGemm};
use super::gpu::{DevPtr, Dtype, Gpu, GpuBuf};
use super::ops::{Act, AttnShape, Kernels, NormKind};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::{Ffn, MlpKind, NormPlacement, Position, QkNormScope, RopeStyle};
use std::collections::BTreeMap;
use std::sync::Arc;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// PyTorch's defaults except the learning rate (1e-4, as the reference benchmark).
    fn default() -> Self {
        AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Which of a layer's activations the trainer keeps from forward to backward; the others are
/// recomputed at the start of that layer's backward into one set of buffers shared by all layers.
/// The layer input (the residual stream entering the layer) is always kept.
///
/// Mapping from the planner's named tensors ([`modelspec_dsl::tensors::layer_tensors`]): the
/// trainer materialises a few of them as one buffer, so a buffer is kept when the plan saves any of
/// its tensors:
/// `attn_norm` -> `attn_norm` (+ its f32 statistics); `qkv` -> `q`, `k`, `v`, `q_normed`,
/// `k_normed`, `q_rope`, `k_rope` (one `[q; k; v]` buffer, qk-norm and RoPE applied in place; the
/// qk-norms' inputs are kept besides, as are the post-norms' inputs); `attn` -> `attn` (+ the f32 log-sum-exp);
/// `resid_mid` -> `resid_mid` or `attn_out` (the trainer folds the output projection into the
/// residual add and keeps the sum, of the same size); `mlp_norm` -> `mlp_norm`; `mlp_in` ->
/// `gate`, `up` (one buffer); `act` -> `act`. `mlp_out` is never kept: it is folded into the next
/// layer's input, which is kept anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSaves {
    /// The attention norm's output and statistics.
    pub attn_norm: bool,
    /// The q/k/v projection after RoPE.
    pub qkv: bool,
    /// The attention output and its log-sum-exp.
    pub attn: bool,
    /// The residual stream after the attention branch.
    pub resid_mid: bool,
    /// The MLP norm's output and statistics.
    pub mlp_norm: bool,
    /// The MLP's input projection(s), before the activation.
    pub mlp_in: bool,
    /// The activation's output.
    pub act: bool,
}

impl LayerSaves {
    /// Keep everything (policy `none`).
    pub const ALL: LayerSaves = LayerSaves {
        attn_norm: true,
        qkv: true,
        attn: true,
        resid_mid: true,
        mlp_norm: true,
        mlp_in: true,
        act: true,
    };
    /// Keep only the layer input (policy `full`).
    pub const INPUT_ONLY: LayerSaves = LayerSaves {
        attn_norm: false,
        qkv: false,
        attn: false,
        resid_mid: false,
        mlp_norm: false,
        mlp_in: false,
        act: false,
    };

    /// The buffers that keep the planner's `saved` named tensors (see the type's docs).
    pub fn from_saved(saved: &[&str]) -> LayerSaves {
        let any = |names: &[&str]| names.iter().any(|n| saved.contains(n));
        LayerSaves {
            attn_norm: any(&["attn_norm"]),
            qkv: any(&["q", "k", "v", "q_normed", "k_normed", "q_rope", "k_rope"]),
            attn: any(&["attn"]),
            resid_mid: any(&["resid_mid", "attn_out"]),
            mlp_norm: any(&["mlp_norm"]),
            mlp_in: any(&["gate", "up"]),
            act: any(&["act"]),
        }
    }

    /// One entry per layer of a resolved plan.
    pub fn from_plan(plan: &modelspec_dsl::plan::Plan) -> Vec<LayerSaves> {
        plan.layers
            .iter()
            .map(|l| LayerSaves::from_saved(&l.saved))
            .collect()
    }
}

struct Layer {
    saves: LayerSaves,
    resid: DevPtr,
    ln1: DevPtr,
    rstd1: DevPtr,
    mean1: DevPtr,
    qkv: DevPtr,
    atty: DevPtr,
    lse: DevPtr,
    resid_mid: DevPtr,
    ln2: DevPtr,
    rstd2: DevPtr,
    mean2: DevPtr,
    h: DevPtr,
    act: DevPtr,
    /// qk-norm (else 0): q and k as projected (contiguous `[n, qd]`, `[n, kvd]`), the norms'
    /// inputs, and their f32 statistics.
    qraw: DevPtr,
    kraw: DevPtr,
    qrstd: DevPtr,
    qmean: DevPtr,
    krstd: DevPtr,
    kmean: DevPtr,
    /// Post/sandwich norms (else 0): the branch outputs before their post-norm, and statistics.
    pa_in: DevPtr,
    pa_rstd: DevPtr,
    pa_mean: DevPtr,
    pm_in: DevPtr,
    pm_rstd: DevPtr,
    pm_mean: DevPtr,
}

/// The block structure every layer shares (checked uniform by `unsupported_feature`).
#[derive(Debug, Clone, Copy)]
struct Feat {
    /// Norms before attention and MLP (pre-norm, sandwich).
    pre: bool,
    /// Norms on the branch outputs before the residual add (post-norm, sandwich).
    post: bool,
    /// Attention and MLP both read the layer input; the output adds both branches.
    parallel: bool,
    /// With `parallel`: one norm feeds both branches.
    shared_norm: bool,
    /// qk-norm: `Some(per_head)`.
    qk_norm: Option<bool>,
}

impl Feat {
    fn new(spec: &ModelSpec) -> Feat {
        let Some(l) = spec.layers.first() else {
            return Feat {
                pre: true,
                post: false,
                parallel: false,
                shared_norm: false,
                qk_norm: None,
            };
        };
        let b = &l.block;
        Feat {
            pre: matches!(b.placement, NormPlacement::Pre | NormPlacement::Sandwich),
            post: matches!(b.placement, NormPlacement::Post | NormPlacement::Sandwich),
            parallel: b.parallel_residual,
            shared_norm: b.parallel_residual && b.shared_norm,
            qk_norm: l
                .attention
                .qk_norm
                .as_ref()
                .map(|q| q.scope == QkNormScope::Head),
        }
    }
}

/// The sizes the trainer's buffers derive from.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    n: usize,
    c: usize,
    heads: usize,
    kvh: usize,
    width: usize,
    qd: usize,
    kvd: usize,
    hidden: usize,
    hw: usize,
    nl: usize,
    feat: Feat,
    es: usize,
    vp: usize,
    chunk: usize,
}

impl Dims {
    fn new(spec: &ModelSpec, dt: Dtype, batch: usize, seq: usize) -> Dims {
        let (c, heads, kvh, hd) = spec.layers.first().map_or((0, 0, 0, 0), |l| {
            let a = &l.attention;
            (
                spec.d_model as usize,
                a.heads as usize,
                a.kv_heads as usize,
                a.head_dim as usize,
            )
        });
        let (hidden, hw) = match spec.layers.first().map(|l| &l.ffn) {
            Some(Ffn::Mlp(m)) => (
                m.hidden as usize,
                if m.activation.is_gated() {
                    2 * m.hidden as usize
                } else {
                    m.hidden as usize
                },
            ),
            _ => (0, 0),
        };
        let n = batch * seq;
        let es = dt.size();
        let vp = spec.vocab_padded as usize;
        Dims {
            batch,
            seq,
            n,
            c,
            heads,
            kvh,
            width: (heads + 2 * kvh) * hd,
            qd: heads * hd,
            kvd: kvh * hd,
            hidden,
            hw,
            nl: spec.layers.len(),
            feat: Feat::new(spec),
            es,
            vp,
            chunk: ((512usize << 20) / (vp.max(1) * es)).clamp(64, n.max(64)),
        }
    }
}

/// Where every activation and scratch buffer lives in the one activation arena.
struct Layout {
    layers: Vec<Layer>,
    emb: DevPtr,
    resid_final: DevPtr,
    lnf: DevPtr,
    rstdf: DevPtr,
    meanf: DevPtr,
    tmp: DevPtr,
    dlnf: DevPtr,
    g_a: DevPtr,
    g_b: DevPtr,
    d_ln: DevPtr,
    d_act: DevPtr,
    dh: DevPtr,
    dqkv: DevPtr,
    d_atty: DevPtr,
    logits: DevPtr,
    dq_acc: DevPtr,
    delta: DevPtr,
    /// Post-norm backward scratch: the gradient of a branch output before its post-norm.
    d_post: DevPtr,
    /// qk-norm scratch, `[n, qd]` each (0 without qk-norm).
    qk_a: DevPtr,
    qk_b: DevPtr,
    /// Bytes kept from forward to backward by the layers (their inputs and saved buffers).
    saved_bytes: usize,
    /// Bytes of the shared buffers that recomputed tensors go to.
    recompute_bytes: usize,
    /// The whole arena.
    total_bytes: usize,
}

/// Carves the arena at `base` (0 to size it).
fn layout(d: &Dims, saves: &[LayerSaves], base: DevPtr) -> Layout {
    let mut b = Bump { base, cur: base };
    let (n, c, es) = (d.n, d.c, d.es);
    let lse_elems = d.batch * d.heads * d.seq;
    // The layer inputs and the buffers each layer keeps.
    let emb = b.take(n * c * es);
    let mut slots: Vec<(DevPtr, [DevPtr; 12])> = Vec::new();
    let group = |b: &mut Bump, keep: [bool; 7]| {
        let mut take = |bytes: usize| b.take(bytes);
        let mut ptr = [0 as DevPtr; 12];
        if keep[0] {
            ptr[0] = take(n * c * es);
            ptr[1] = take(n * 4);
            ptr[2] = take(n * 4);
        }
        if keep[1] {
            ptr[3] = take(n * d.width * es);
        }
        if keep[2] {
            ptr[4] = take(n * d.qd * es);
            ptr[5] = take(lse_elems * 4);
        }
        if keep[3] {
            ptr[6] = take(n * c * es);
        }
        if keep[4] {
            ptr[7] = take(n * c * es);
            ptr[8] = take(n * 4);
            ptr[9] = take(n * 4);
        }
        if keep[5] {
            ptr[10] = take(n * d.hw * es);
        }
        if keep[6] {
            ptr[11] = take(n * d.hidden * es);
        }
        ptr
    };
    let keep = |s: &LayerSaves| {
        [
            s.attn_norm,
            s.qkv,
            s.attn,
            s.resid_mid,
            s.mlp_norm,
            s.mlp_in,
            s.act,
        ]
    };
    // Per layer besides: qk-norm's inputs and the post-norms' inputs (always kept: small next to
    // the rest, and their recomputation would re-run a projection).
    let f = d.feat;
    let (q_rows, k_rows) = match f.qk_norm {
        Some(true) => (n * d.heads, n * d.kvh),
        _ => (n, n),
    };
    let mut extras: Vec<[DevPtr; 12]> = Vec::new();
    for i in 0..d.nl {
        let resid = if i == 0 { emb } else { b.take(n * c * es) };
        let s = saves.get(i).copied().unwrap_or(LayerSaves::ALL);
        slots.push((resid, group(&mut b, keep(&s))));
        let mut e = [0 as DevPtr; 12];
        if f.qk_norm.is_some() {
            e[0] = b.take(n * d.qd * es);
            e[1] = b.take(n * d.kvd * es);
            e[2] = b.take(q_rows * 4);
            e[3] = b.take(q_rows * 4);
            e[4] = b.take(k_rows * 4);
            e[5] = b.take(k_rows * 4);
        }
        if f.post {
            e[6] = b.take(n * c * es);
            e[7] = b.take(n * 4);
            e[8] = b.take(n * 4);
            e[9] = b.take(n * c * es);
            e[10] = b.take(n * 4);
            e[11] = b.take(n * 4);
        }
        extras.push(e);
    }
    let saved_bytes = b.used();
    // One shared set for whatever some layer recomputes.
    let mut missing = [false; 7];
    for i in 0..d.nl {
        let s = saves.get(i).copied().unwrap_or(LayerSaves::ALL);
        for (m, k) in missing.iter_mut().zip(keep(&s)) {
            *m |= !k;
        }
    }
    let shared = group(&mut b, missing);
    let recompute_bytes = b.used() - saved_bytes;
    let mut take = |bytes: usize| b.take(bytes);
    let layers = slots
        .iter()
        .enumerate()
        .map(|(i, (resid, own))| {
            let s = saves.get(i).copied().unwrap_or(LayerSaves::ALL);
            let k = keep(&s);
            let pick = |j: usize, g: usize| if k[g] { own[j] } else { shared[j] };
            let e = extras[i];
            Layer {
                saves: s,
                qraw: e[0],
                kraw: e[1],
                qrstd: e[2],
                qmean: e[3],
                krstd: e[4],
                kmean: e[5],
                pa_in: e[6],
                pa_rstd: e[7],
                pa_mean: e[8],
                pm_in: e[9],
                pm_rstd: e[10],
                pm_mean: e[11],
                resid: *resid,
                ln1: pick(0, 0),
                rstd1: pick(1, 0),
                mean1: pick(2, 0),
                qkv: pick(3, 1),
                atty: pick(4, 2),
                lse: pick(5, 2),
                resid_mid: pick(6, 3),
                ln2: pick(7, 4),
                rstd2: pick(8, 4),
                mean2: pick(9, 4),
                h: pick(10, 5),
                act: pick(11, 6),
            }
        })
        .collect();
    let resid_final = take(n * c * es);
    let lnf = take(n * c * es);
    let rstdf = take(n * 4);
    let meanf = take(n * 4);
    let (tmp, dlnf, g_a, g_b, d_ln) = (
        take(n * c * es),
        take(n * c * es),
        take(n * c * es),
        take(n * c * es),
        take(n * c * es),
    );
    let (d_act, dh, dqkv, d_atty, logits) = (
        take(n * d.hidden * es),
        take(n * d.hw * es),
        take(n * d.width * es),
        take(n * d.qd * es),
        take(d.chunk * d.vp * es),
    );
    let dq_acc = take(n * d.qd * 4);
    let delta = take(lse_elems * 4);
    let d_post = if f.post { take(n * c * es) } else { 0 };
    let (qk_a, qk_b) = if f.qk_norm.is_some() {
        (take(n * d.qd * es), take(n * d.qd * es))
    } else {
        (0, 0)
    };
    Layout {
        layers,
        emb,
        resid_final,
        lnf,
        rstdf,
        meanf,
        tmp,
        dlnf,
        g_a,
        g_b,
        d_ln,
        d_act,
        dh,
        dqkv,
        d_atty,
        logits,
        dq_acc,
        delta,
        d_post,
        qk_a,
        qk_b,
        saved_bytes,
        recompute_bytes,
        total_bytes: b.used(),
    }
}

/// A bump allocator over device addresses (256-byte aligned).
struct Bump {
    base: DevPtr,
    cur: DevPtr,
}

impl Bump {
    fn take(&mut self, bytes: usize) -> DevPtr {
        let p = self.cur;
        self.cur += bytes.div_ceil(256) as u64 * 256;
        p
    }
    fn used(&self) -> usize {
        (self.cur - self.base) as usize
    }
}

/// A dense decoder's parameters, optimizer state and activations on one GPU.
pub struct GpuTrainer {
    gpu: Arc<Gpu>,
    kernels: Kernels,
    gemm: Arc<Gemm>,
    spec: ModelSpec,
    dt: Dtype,
    batch: usize,
    seq: usize,
    offsets: BTreeMap<String, usize>,
    total: usize,
    master: GpuBuf<f32>,
    work: GpuBuf<u8>,
    grad: GpuBuf<f32>,
    adam_m: GpuBuf<f32>,
    adam_v: GpuBuf<f32>,
    _acts: GpuBuf<u8>,
    /// Where every activation and scratch buffer lives in `_acts`.
    buf: Layout,
    chunk: usize,
    loss_rows: GpuBuf<f32>,
    /// The distinct RoPE tables (cos, sin `[seq, rot/2]`, rot, interleaved) ...
    ropes: Vec<(GpuBuf<f32>, GpuBuf<f32>, usize, bool)>,
    /// ... and which one each layer uses (`None`: no RoPE).
    rope_of: Vec<Option<usize>>,
    tokens: GpuBuf<i32>,
    targets: GpuBuf<i32>,
    valid_targets: usize,
    step: u32,
    bytes: usize,
    saved_bytes: usize,
    recompute_bytes: usize,
    /// Optimizer settings used by [`GpuTrainer::step`].
    pub adamw: AdamW,
}

fn unsupported(why: String) -> CudaError {
    CudaError::BadLaunch {
        kernel: "gpu trainer".into(),
        why,
    }
}

impl GpuTrainer {
    /// Allocates everything for `batch` sequences of `seq` tokens and initialises the weights
    /// (normal(0, 0.02) matrices and embeddings, unit norm weights, zero biases; `seed`). Every
    /// activation is kept for backward (checkpoint policy `none`).
    pub fn new(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<GpuTrainer> {
        Self::with_checkpoint(gpu, spec, dt, batch, seq, seed, &[])
    }

    /// Why the GPU trainer cannot run `spec` (the first unsupported feature, named), or `None`.
    pub fn unsupported_feature(spec: &ModelSpec) -> Option<String> {
        let Some(l0) = spec.layers.first() else {
            return Some("a spec without layers".into());
        };
        if spec.final_norm.is_none() {
            return Some("a spec without a final norm".into());
        }
        for l in &spec.layers {
            let i = l.index;
            let a = &l.attention;
            let why = if matches!(l.ffn, Ffn::Moe(_)) {
                format!("mixture-of-experts MLP (layer {i})")
            } else if !matches!(
                l.position,
                Position::Rope(_) | Position::Learned | Position::None
            ) {
                format!("position encoding {:?} (layer {i})", l.position)
            } else if a.head_dim != l0.attention.head_dim
                || a.heads != l0.attention.heads
                || a.kv_heads != l0.attention.kv_heads
            {
                format!("per-layer attention sizes (layer {i} differs from layer 0)")
            } else if a.softcap != l0.attention.softcap || a.scale != l0.attention.scale {
                format!("per-layer attention softcap/scale (layer {i} differs from layer 0)")
            } else if a.qk_norm != l0.attention.qk_norm {
                format!("per-layer qk-norm (layer {i} differs from layer 0)")
            } else if l.ffn != l0.ffn {
                format!("per-layer MLP (layer {i} differs from layer 0)")
            } else if l.block != l0.block {
                format!("per-layer block structure or norm (layer {i} differs from layer 0)")
            } else {
                continue;
            };
            return Some(why);
        }
        None
    }

    /// As [`GpuTrainer::new`], keeping for backward only what `saves` says per layer (one entry
    /// per layer, e.g. [`LayerSaves::from_plan`]; an empty slice keeps everything) and
    /// recomputing the rest at the start of each layer's backward. Gradients do not depend on it.
    pub fn with_checkpoint(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        seed: u64,
        saves: &[LayerSaves],
    ) -> Result<GpuTrainer> {
        if let Some(why) = Self::unsupported_feature(spec) {
            return Err(unsupported(format!(
                "unsupported: {why}; the GPU trainer covers dense specs whose layers share one block structure"
            )));
        }
        if !saves.is_empty() && saves.len() != spec.layers.len() {
            return Err(unsupported(format!(
                "{} checkpoint entries for {} layers",
                saves.len(),
                spec.layers.len()
            )));
        }
        let l0 = spec
            .layers
            .first()
            .ok_or_else(|| unsupported("the spec has no layers".into()))?;
        if let Some(max) = spec.max_sequence()
            && seq as u64 > max
        {
            return Err(unsupported(format!("seq {seq} exceeds the context {max}")));
        }
        let kernels = Kernels::load(
            gpu,
            &spec.name,
            &[l0.attention.head_dim as usize],
            spec_defines(spec),
        )?;
        let gemm = gpu.gemm()?;
        let params = modelspec_dsl::params::parameters(spec);
        // Matrices first (table order keeps q/k/v and gate/up adjacent), then vectors.
        let mut offsets = BTreeMap::new();
        let mut total = 0usize;
        let mut init: Vec<(usize, usize, f32)> = Vec::new(); // (offset, numel, std or -1 for ones, 0 zeros)
        for pass in 0..2 {
            for p in &params {
                let is_matrix = p.shape.len() == 2;
                if (pass == 0) != is_matrix {
                    continue;
                }
                let n = p.numel() as usize;
                offsets.insert(p.name.clone(), total);
                let kind = if is_matrix {
                    0.02
                } else if p.name.ends_with(".bias") {
                    0.0
                } else {
                    -1.0
                };
                init.push((total, n, kind));
                // 16-byte aligned bf16 views, except inside a fused group: q/k/v (and gate/up)
                // weights and biases must be exactly adjacent to act as one matrix and one bias.
                let fused_with_next = ["attn.q.", "attn.k.", "mlp.gate."]
                    .iter()
                    .any(|m| p.name.contains(m));
                total += if fused_with_next {
                    n
                } else {
                    n.div_ceil(8) * 8
                };
            }
        }
        let mut host = vec![0f32; total];
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for (off, n, kind) in init {
            for x in &mut host[off..off + n] {
                *x = if kind > 0.0 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let u1 = ((rng >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let u2 = (rng >> 11) as f64 / (1u64 << 53) as f64;
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                        * kind
                } else if kind < 0.0 {
                    1.0 - l0.block.norm.offset as f32
                } else {
                    0.0
                };
            }
        }
        let mut bytes = 0usize;
        let master = gpu.upload(&host)?;
        drop(host);
        let work = gpu.zeros::<u8>(total * dt.size())?;
        let grad = gpu.zeros::<f32>(total)?;
        let adam_m = gpu.zeros::<f32>(total)?;
        let adam_v = gpu.zeros::<f32>(total)?;
        bytes += total * (16 + dt.size());
        match dt {
            Dtype::Bf16 => {
                kernels.cast(Dtype::F32, Dtype::Bf16, work.ptr(), master.ptr(), total)?
            }
            Dtype::F32 => kernels.add(Dtype::F32, work.ptr(), master.ptr(), grad.ptr(), total)?,
        }

        let dims = Dims::new(spec, dt, batch, seq);
        let n = dims.n;
        let sizing = layout(&dims, saves, 0);
        let acts = gpu.zeros::<u8>(sizing.total_bytes)?;
        bytes += sizing.total_bytes;
        let lay = layout(&dims, saves, acts.ptr());
        // One table pair per distinct RoPE (Gemma-3's local and global layers differ).
        let mut ropes = Vec::new();
        let mut rope_of = Vec::with_capacity(spec.layers.len());
        let mut seen: Vec<&modelspec_dsl::ir::Rope> = Vec::new();
        for l in &spec.layers {
            rope_of.push(match &l.position {
                Position::Rope(r) => Some(match seen.iter().position(|s| *s == r) {
                    Some(j) => j,
                    None => {
                        let (cs, sn) = super::rope::tables(r, seq);
                        ropes.push((
                            gpu.upload(&cs)?,
                            gpu.upload(&sn)?,
                            r.rotary_dims as usize,
                            r.style == RopeStyle::Interleaved,
                        ));
                        seen.push(r);
                        ropes.len() - 1
                    }
                }),
                _ => None,
            });
        }
        let (saved_bytes, recompute_bytes) = (lay.saved_bytes, lay.recompute_bytes);
        let loss_rows = gpu.zeros::<f32>(n)?;
        let tokens = gpu.zeros::<i32>(n)?;
        let targets = gpu.zeros::<i32>(n)?;
        bytes += 12 * n + (32 << 20);
        Ok(GpuTrainer {
            gpu: gpu.clone(),
            kernels,
            gemm,
            spec: spec.clone(),
            dt,
            batch,
            seq,
            offsets,
            total,
            master,
            work,
            grad,
            adam_m,
            adam_v,
            _acts: acts,
            buf: lay,
            chunk: dims.chunk,
            loss_rows,
            ropes,
            rope_of,
            tokens,
            targets,
            valid_targets: n,
            step: 0,
            bytes,
            saved_bytes,
            recompute_bytes,
            adamw: AdamW::default(),
        })
    }

    /// Device bytes [`GpuTrainer::new`] will allocate for `spec` at this batch shape: parameters
    /// and optimizer state (16 B + one working copy per parameter), saved activations, scratch
    /// (one logits chunk of at most 512 MiB), the cuBLASLt workspace.
    pub fn predicted_bytes(spec: &ModelSpec, dt: Dtype, batch: usize, seq: usize) -> usize {
        Self::predicted_bytes_with(spec, dt, batch, seq, &[])
    }

    /// As [`GpuTrainer::predicted_bytes`] for [`GpuTrainer::with_checkpoint`] with `saves`.
    pub fn predicted_bytes_with(
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        saves: &[LayerSaves],
    ) -> usize {
        let params: usize = modelspec_dsl::params::parameters(spec)
            .iter()
            .map(|p| (p.numel() as usize).div_ceil(8) * 8)
            .sum();
        let dims = Dims::new(spec, dt, batch, seq);
        let n = dims.n;
        params * (16 + dt.size()) + layout(&dims, saves, 0).total_bytes + 12 * n + (32 << 20)
    }

    /// Bytes of activations kept from forward to backward by the layers: every layer's input
    /// plus its saved buffers (what the planner's `activation_bytes` predicts).
    pub fn saved_activation_bytes(&self) -> usize {
        self.saved_bytes
    }

    /// Bytes of the buffers shared by the layers for recomputed activations (0 under `none`).
    pub fn recompute_buffer_bytes(&self) -> usize {
        self.recompute_bytes
    }

    /// Bytes this trainer allocated on the device (parameters, optimizer state, activations,
    /// scratch, the cuBLASLt workspace).
    pub fn device_bytes(&self) -> usize {
        self.bytes
    }

    /// Number of parameter elements.
    pub fn param_count(&self) -> usize {
        modelspec_dsl::params::parameters(&self.spec)
            .iter()
            .map(|p| p.numel() as usize)
            .sum()
    }

    /// Sets the batch: `tokens` `[batch*seq]`, next-token targets (HF shift: the last position
    /// of each sequence is ignored) unless `targets` is given (-1 = ignore).
    pub fn set_batch(&mut self, tokens: &[u32], targets: Option<&[i32]>) -> Result<()> {
        let n = self.batch * self.seq;
        if tokens.len() != n || targets.is_some_and(|t| t.len() != n) {
            return Err(unsupported(format!(
                "expected {n} tokens (batch {} x seq {})",
                self.batch, self.seq
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as u64 >= self.spec.vocab_padded) {
            return Err(unsupported(format!("token {bad} outside the vocabulary")));
        }
        let tok: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let tgt: Vec<i32> = match targets {
            Some(t) => t.to_vec(),
            None => (0..n)
                .map(|i| {
                    if (i + 1) % self.seq == 0 {
                        -1
                    } else {
                        tok[i + 1]
                    }
                })
                .collect(),
        };
        self.valid_targets = tgt.iter().filter(|&&t| t >= 0).count().max(1);
        self.gpu.write(&mut self.tokens, &tok)?;
        self.gpu.write(&mut self.targets, &tgt)
    }

    fn w(&self, name: &str) -> Result<DevPtr> {
        let off = self
            .offsets
            .get(name)
            .ok_or_else(|| unsupported(format!("no parameter `{name}`")))?;
        Ok(self.work.ptr() + (off * self.dt.size()) as u64)
    }
    fn wo(&self, name: &str) -> DevPtr {
        self.offsets
            .get(name)
            .map_or(0, |off| self.work.ptr() + (off * self.dt.size()) as u64)
    }
    fn g(&self, name: &str) -> DevPtr {
        self.offsets.get(name).map_or(0, |off| self.grad.at(*off))
    }

    // Row-major GEMM C[m,n] = A op(B) with the compute dtype.
    #[allow(clippy::too_many_arguments)]
    fn mm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        ta: bool,
        b: DevPtr,
        ldb: usize,
        tb: bool,
        c: DevPtr,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        let g = RowMajorGemm {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            lda,
            ldb,
            ldc,
            batch: None,
        };
        // SAFETY: every operand is a view into this trainer's arenas, sized at construction.
        unsafe { self.gemm.run(self.dt, &g, a, b, c, 1.0, beta) }
    }
    // C = A B^T + bias (bias 0: none), the forward projections.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        let g = RowMajorGemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
            lda: k,
            ldb: k,
            ldc: n,
            batch: None,
        };
        // SAFETY: as in `mm`.
        unsafe {
            if bias != 0 {
                self.gemm.run_bias(self.dt, &g, a, w, c, bias)
            } else {
                self.gemm.run(self.dt, &g, a, w, c, 1.0, 0.0)
            }
        }
    }

    // Weight gradient: C (f32) = A^T B.
    #[allow(clippy::too_many_arguments)]
    fn mm_grad(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        b: DevPtr,
        ldb: usize,
        c: DevPtr,
        beta: f32,
    ) -> Result<()> {
        let g = RowMajorGemm {
            m,
            n,
            k,
            trans_a: true,
            trans_b: false,
            lda,
            ldb,
            ldc: n,
            batch: None,
        };
        // SAFETY: as in `mm`.
        unsafe { self.gemm.run_f32_out(self.dt, &g, a, b, c, 1.0, beta) }
    }

    /// One training step (forward, loss, backward, AdamW) on the batch set by
    /// [`GpuTrainer::set_batch`]. Asynchronous: read the loss with [`GpuTrainer::loss`].
    pub fn step(&mut self) -> Result<()> {
        self.run_step(None, true)
    }

    /// Forward, loss and backward without the optimizer step: afterwards [`GpuTrainer::loss`],
    /// [`GpuTrainer::grad`] and [`GpuTrainer::grads`] read this batch's loss and gradients.
    /// With `logits`, also returns the logits `[batch*seq, vocab]` (f32, rounded to the compute
    /// dtype as the kernels saw them; synchronises once per logits chunk).
    pub fn forward_backward(&mut self, logits: bool) -> Result<Option<Vec<f32>>> {
        let mut out = Vec::new();
        self.run_step(logits.then_some(&mut out), false)?;
        Ok(logits.then_some(out))
    }

    fn run_step(&mut self, mut capture: Option<&mut Vec<f32>>, optimizer: bool) -> Result<()> {
        let spec = &self.spec;
        let k = &self.kernels;
        let dt = self.dt;
        let es = dt.size() as u64;
        let l0 = &spec.layers[0];
        let a = &l0.attention;
        let (c, heads, kvh, hd) = (
            spec.d_model as usize,
            a.heads as usize,
            a.kv_heads as usize,
            a.head_dim as usize,
        );
        let (qd, kvd) = (heads * hd, kvh * hd);
        let width = qd + 2 * kvd;
        let Ffn::Mlp(mlp) = &l0.ffn else {
            unreachable!("checked in new")
        };
        let hidden = mlp.hidden as usize;
        let gated = mlp.activation.is_gated();
        let hw = if gated { 2 * hidden } else { hidden };
        let act = match mlp.activation {
            MlpKind::Gelu => Act::Gelu,
            MlpKind::GeluTanh => Act::GeluTanh,
            MlpKind::ReluSquared => Act::ReluSquared,
            MlpKind::Swiglu => Act::Swiglu,
            MlpKind::Geglu => Act::Geglu,
            MlpKind::GegluTanh => Act::GegluTanh,
        };
        let norm = l0.block.norm;
        let nk = if norm.kind == modelspec_dsl::ir::NormKind::Layer {
            NormKind::Layer
        } else {
            NormKind::Rms
        };
        let (eps, off) = (norm.eps as f32, norm.offset as f32);
        let fnorm = spec.final_norm.unwrap_or(norm);
        let nkf = if fnorm.kind == modelspec_dsl::ir::NormKind::Layer {
            NormKind::Layer
        } else {
            NormKind::Rms
        };
        let (epsf, offf) = (fnorm.eps as f32, fnorm.offset as f32);
        let n = self.batch * self.seq;
        let (vocab, vp) = (spec.vocab as usize, spec.vocab_padded as usize);
        let mut shape = AttnShape::dense(self.batch, self.seq, heads, kvh, hd);
        shape.ldq = width;
        shape.ldk = width;
        shape.ldv = width;
        shape.scale = a.scale as f32;
        shape.softcap = a.softcap.unwrap_or(0.0) as f32;
        shape.window = a.window.unwrap_or(0) as usize;
        let colsum = |out: DevPtr, x: DevPtr, width: usize| {
            if out != 0 {
                k.colsum(dt, out, x, n, width)
            } else {
                Ok(())
            }
        };

        // A block norm (the spec's block norm over rows of d_model) named `name`: forward, and
        // backward with its weight/bias gradients.
        let norm_fwd = |y: DevPtr,
                        r_out: DevPtr,
                        rstd: DevPtr,
                        mean: DevPtr,
                        x: DevPtr,
                        res: DevPtr,
                        name: &str| {
            k.norm_fwd(
                dt,
                nk,
                y,
                r_out,
                rstd,
                mean,
                x,
                res,
                self.wo(&format!("{name}.weight")),
                self.wo(&format!("{name}.bias")),
                n,
                c,
                eps,
                off,
            )
        };
        let norm_bwd = |dx: DevPtr,
                        dy: DevPtr,
                        x: DevPtr,
                        rstd: DevPtr,
                        mean: DevPtr,
                        dres: DevPtr,
                        name: &str|
         -> Result<()> {
            let weight = format!("{name}.weight");
            k.norm_bwd(
                dt,
                nk,
                dx,
                dy,
                x,
                self.wo(&weight),
                rstd,
                mean,
                dres,
                n,
                c,
                off,
            )?;
            k.norm_dw(
                dt,
                nk,
                self.g(&weight),
                self.g(&format!("{name}.bias")),
                dy,
                x,
                rstd,
                mean,
                n,
                c,
            )
        };

        // SAFETY: the grad arena is this trainer's own.
        unsafe { self.gpu.memset_raw(self.grad.ptr(), self.total * 4) }?;
        // ---- forward ----
        let wpe = self.wo("pos_embed.weight");
        k.embed_fwd(
            dt,
            self.buf.emb,
            self.tokens.ptr(),
            self.w("embed.weight")?,
            wpe,
            n,
            self.seq,
            c,
            spec.embedding.scale as f32,
        )?;
        // One layer's forward; with `recompute`, only what the layer did not keep, from its input.
        //
        // Data flow (`tmp` carries a branch's output to the add that consumes it):
        //   x = stream + tmp (previous layer's last branch; fused into the attention norm when
        //   pre-norm) -> attn_in = norm(x) or x -> qkv (-> qk-norm -> RoPE) -> attention -> o-proj
        //   (-> post-norm) = tmp -> resid_mid = x + tmp (fused into the MLP norm when sequential
        //   pre-norm) -> mlp_in = norm(resid_mid) | resid_mid | (parallel) norm(x) | ln1 | x ->
        //   gate/up -> act -> down (-> post-norm) = tmp; the next layer (or the final norm) adds
        //   tmp to resid_mid.
        let f = Feat::new(spec);
        let (qn_rows, qn_w, kn_rows, kn_w) = match f.qk_norm {
            Some(true) => (n * heads, hd, n * kvh, hd),
            _ => (n, qd, n, kvd),
        };
        let (qk_kind, qk_eps, qk_off) = match &a.qk_norm {
            Some(q) if q.norm.kind == modelspec_dsl::ir::NormKind::Layer => {
                (NormKind::Layer, q.norm.eps as f32, q.norm.offset as f32)
            }
            Some(q) => (NormKind::Rms, q.norm.eps as f32, q.norm.offset as f32),
            None => (NormKind::Rms, 0.0, 0.0),
        };
        // The two qk-norms: (column of the fused buffer, saved input, rows, width, rstd, mean,
        // parameter prefix, columns).
        let qk_parts = |lay: &Layer| {
            [
                (
                    0,
                    lay.qraw,
                    qn_rows,
                    qn_w,
                    lay.qrstd,
                    lay.qmean,
                    "attn.q_norm",
                    qd,
                ),
                (
                    qd,
                    lay.kraw,
                    kn_rows,
                    kn_w,
                    lay.krstd,
                    lay.kmean,
                    "attn.k_norm",
                    kvd,
                ),
            ]
        };
        let rope_at = |i: usize| self.rope_of[i].map(|j| &self.ropes[j]);
        let attn_input = |lay: &Layer| if f.pre { lay.ln1 } else { lay.resid };
        let mlp_input = |lay: &Layer| match (f.parallel, f.pre) {
            (true, _) if f.shared_norm => lay.ln1,
            (_, true) => lay.ln2,
            (true, false) => lay.resid,
            (false, false) => lay.resid_mid,
        };
        let layer_fwd = |i: usize, recompute: bool| -> Result<()> {
            let lay = &self.buf.layers[i];
            let sv = lay.saves;
            let p = |s: &str| format!("layers.{i}.{s}");
            // In recomputation every input comes from the kept layer input (bit-identical: the
            // norm kernel normalises the residual as stored).
            let (x_in, res_in, r_out) = if recompute || i == 0 {
                (lay.resid, 0, 0)
            } else {
                (self.buf.layers[i - 1].resid_mid, self.buf.tmp, lay.resid)
            };
            if f.pre {
                if !recompute || !sv.attn_norm {
                    norm_fwd(
                        lay.ln1,
                        r_out,
                        lay.rstd1,
                        lay.mean1,
                        x_in,
                        res_in,
                        &p("attn_norm"),
                    )?;
                }
            } else if r_out != 0 {
                k.add(dt, r_out, x_in, res_in, n * c)?;
            }
            if !recompute || !sv.qkv {
                self.linear(
                    n,
                    width,
                    c,
                    attn_input(lay),
                    self.w(&p("attn.q.weight"))?,
                    self.wo(&p("attn.q.bias")),
                    lay.qkv,
                )?;
                if f.qk_norm.is_some() {
                    // Through contiguous copies, where per-head rows are plain rows of head_dim.
                    for (col, raw, rows, w_, rstd, mean, name, cols) in qk_parts(lay) {
                        let at = lay.qkv + col as u64 * es;
                        k.copy2d(dt, raw, cols, at, width, n, cols)?;
                        k.norm_fwd(
                            dt,
                            qk_kind,
                            self.buf.qk_a,
                            0,
                            rstd,
                            mean,
                            raw,
                            0,
                            self.wo(&p(&format!("{name}.weight"))),
                            self.wo(&p(&format!("{name}.bias"))),
                            rows,
                            w_,
                            qk_eps,
                            qk_off,
                        )?;
                        k.copy2d(dt, at, width, self.buf.qk_a, cols, n, cols)?;
                    }
                }
                if let Some((cs, sn, rot, il)) = rope_at(i) {
                    k.rope(
                        dt,
                        lay.qkv,
                        cs.ptr(),
                        sn.ptr(),
                        n,
                        self.seq,
                        heads,
                        hd,
                        width,
                        *rot,
                        *il,
                        false,
                    )?;
                    k.rope(
                        dt,
                        lay.qkv + qd as u64 * es,
                        cs.ptr(),
                        sn.ptr(),
                        n,
                        self.seq,
                        kvh,
                        hd,
                        width,
                        *rot,
                        *il,
                        false,
                    )?;
                }
            }
            let (q, kk, v) = (
                lay.qkv,
                lay.qkv + qd as u64 * es,
                lay.qkv + (qd + kvd) as u64 * es,
            );
            if !recompute || !sv.attn {
                let mut lshape = shape;
                lshape.window = spec.layers[i].attention.window.unwrap_or(0) as usize;
                k.attn_fwd(dt, &lshape, lay.atty, lay.lse, q, kk, v)?;
            }
            if !recompute || !sv.resid_mid {
                // The attention branch (post-normed) into tmp, then resid_mid = x + tmp.
                let o_out = if f.post { lay.pa_in } else { self.buf.tmp };
                self.linear(
                    n,
                    c,
                    qd,
                    lay.atty,
                    self.w(&p("attn.o.weight"))?,
                    self.wo(&p("attn.o.bias")),
                    o_out,
                )?;
                if f.post {
                    norm_fwd(
                        self.buf.tmp,
                        0,
                        lay.pa_rstd,
                        lay.pa_mean,
                        lay.pa_in,
                        0,
                        &p("attn_post_norm"),
                    )?;
                }
                if f.pre && !f.parallel {
                    norm_fwd(
                        lay.ln2,
                        lay.resid_mid,
                        lay.rstd2,
                        lay.mean2,
                        lay.resid,
                        self.buf.tmp,
                        &p("mlp_norm"),
                    )?;
                } else {
                    k.add(dt, lay.resid_mid, lay.resid, self.buf.tmp, n * c)?;
                }
            } else if f.pre && !f.parallel && !sv.mlp_norm {
                norm_fwd(
                    lay.ln2,
                    0,
                    lay.rstd2,
                    lay.mean2,
                    lay.resid_mid,
                    0,
                    &p("mlp_norm"),
                )?;
            }
            // A parallel block's own MLP norm reads the layer input.
            if f.parallel && f.pre && !f.shared_norm && (!recompute || !sv.mlp_norm) {
                norm_fwd(
                    lay.ln2,
                    0,
                    lay.rstd2,
                    lay.mean2,
                    lay.resid,
                    0,
                    &p("mlp_norm"),
                )?;
            }
            let first = if gated {
                p("mlp.gate.weight")
            } else {
                p("mlp.up.weight")
            };
            if !recompute || !sv.mlp_in {
                self.linear(
                    n,
                    hw,
                    c,
                    mlp_input(lay),
                    self.w(&first)?,
                    self.wo(&if gated {
                        p("mlp.gate.bias")
                    } else {
                        p("mlp.up.bias")
                    }),
                    lay.h,
                )?;
            }
            if !recompute || !sv.act {
                k.act_fwd(
                    dt,
                    act,
                    lay.act,
                    lay.h,
                    lay.h + hidden as u64 * es,
                    n,
                    hidden,
                    hw,
                )?;
            }
            if recompute {
                return Ok(());
            }
            let down_out = if f.post { lay.pm_in } else { self.buf.tmp };
            self.linear(
                n,
                c,
                hidden,
                lay.act,
                self.w(&p("mlp.down.weight"))?,
                self.wo(&p("mlp.down.bias")),
                down_out,
            )?;
            if f.post {
                norm_fwd(
                    self.buf.tmp,
                    0,
                    lay.pm_rstd,
                    lay.pm_mean,
                    lay.pm_in,
                    0,
                    &p("mlp_post_norm"),
                )?;
            }
            Ok(())
        };

        for i in 0..self.buf.layers.len() {
            layer_fwd(i, false)?;
        }
        let last = self.buf.layers.last().map_or(self.buf.emb, |l| l.resid_mid);
        k.norm_fwd(
            dt,
            nkf,
            self.buf.lnf,
            self.buf.resid_final,
            self.buf.rstdf,
            self.buf.meanf,
            last,
            self.buf.tmp,
            self.wo("final_norm.weight"),
            self.wo("final_norm.bias"),
            n,
            c,
            epsf,
            offf,
        )?;
        // ---- classifier + loss + its backward, one row chunk at a time ----
        let (head, dhead) = if spec.embedding.tied {
            (self.w("embed.weight")?, self.g("embed.weight"))
        } else {
            (self.w("lm_head.weight")?, self.g("lm_head.weight"))
        };
        let head_bias = self.wo("lm_head.bias");
        let dscale = 1.0 / self.valid_targets as f32;
        let softcap = spec.logits.softcap.unwrap_or(0.0) as f32;
        let mut r0 = 0;
        while r0 < n {
            let rows = self.chunk.min(n - r0);
            let x = self.buf.lnf + (r0 * c) as u64 * es;
            self.linear(rows, vp, c, x, head, head_bias, self.buf.logits)?;
            if let Some(out) = capture.as_deref_mut() {
                // SAFETY: the logits chunk is `rows * vp` elements of this trainer's arena.
                let raw = unsafe {
                    self.gpu
                        .download_raw(self.buf.logits, rows * vp * dt.size())
                }?;
                // The kernels keep the logits before the final softcap (the loss kernel applies
                // it); the captured logits are the model's output, after it.
                let cap = |x: f32| {
                    if softcap > 0.0 {
                        softcap * (x / softcap).tanh()
                    } else {
                        x
                    }
                };
                for row in raw.chunks(vp * dt.size()) {
                    out.extend(
                        row[..vocab * dt.size()]
                            .chunks(dt.size())
                            .map(|b| match dt {
                                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                                Dtype::Bf16 => f32::from_bits(
                                    u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
                                ),
                            })
                            .map(cap),
                    );
                }
            }
            k.xent(
                dt,
                self.buf.logits,
                self.loss_rows.at(r0),
                self.targets.at(r0),
                rows,
                vocab,
                vp,
                softcap,
                Some(dscale),
            )?;
            self.mm(
                rows,
                c,
                vp,
                self.buf.logits,
                vp,
                false,
                head,
                c,
                false,
                self.buf.dlnf + (r0 * c) as u64 * es,
                c,
                0.0,
            )?;
            self.mm_grad(vp, c, rows, self.buf.logits, vp, x, c, dhead, 1.0)?;
            if head_bias != 0 {
                k.colsum(dt, self.g("lm_head.bias"), self.buf.logits, rows, vp)?;
            }
            r0 += rows;
        }
        // ---- backward ----
        let (mut g, mut g2) = (self.buf.g_a, self.buf.g_b);
        k.norm_bwd(
            dt,
            nkf,
            g,
            self.buf.dlnf,
            self.buf.resid_final,
            self.wo("final_norm.weight"),
            self.buf.rstdf,
            self.buf.meanf,
            0,
            n,
            c,
            offf,
        )?;
        k.norm_dw(
            dt,
            nkf,
            self.g("final_norm.weight"),
            self.g("final_norm.bias"),
            self.buf.dlnf,
            self.buf.resid_final,
            self.buf.rstdf,
            self.buf.meanf,
            n,
            c,
        )?;
        for (i, lay) in self.buf.layers.iter().enumerate().rev() {
            if lay.saves != LayerSaves::ALL {
                layer_fwd(i, true)?;
            }
            let p = |s: &str| format!("layers.{i}.{s}");
            // g = d(layer output). The MLP branch first, through its post-norm.
            let d_mlp = if f.post {
                norm_bwd(
                    self.buf.d_post,
                    g,
                    lay.pm_in,
                    lay.pm_rstd,
                    lay.pm_mean,
                    0,
                    &p("mlp_post_norm"),
                )?;
                self.buf.d_post
            } else {
                g
            };
            self.mm(
                n,
                hidden,
                c,
                d_mlp,
                c,
                false,
                self.w(&p("mlp.down.weight"))?,
                hidden,
                false,
                self.buf.d_act,
                hidden,
                0.0,
            )?;
            self.mm_grad(
                c,
                hidden,
                n,
                d_mlp,
                c,
                lay.act,
                hidden,
                self.g(&p("mlp.down.weight")),
                0.0,
            )?;
            colsum(self.g(&p("mlp.down.bias")), d_mlp, c)?;
            k.act_bwd(
                dt,
                act,
                self.buf.dh,
                self.buf.dh + hidden as u64 * es,
                self.buf.d_act,
                lay.h,
                lay.h + hidden as u64 * es,
                n,
                hidden,
                hw,
            )?;
            let first = if gated { "mlp.gate" } else { "mlp.up" };
            self.mm_grad(
                hw,
                c,
                n,
                self.buf.dh,
                hw,
                mlp_input(lay),
                c,
                self.g(&p(&format!("{first}.weight"))),
                0.0,
            )?;
            colsum(self.g(&p(&format!("{first}.bias"))), self.buf.dh, hw)?;
            self.mm(
                n,
                c,
                hw,
                self.buf.dh,
                hw,
                false,
                self.w(&p(&format!("{first}.weight")))?,
                c,
                false,
                self.buf.d_ln,
                c,
                0.0,
            )?;
            // d_ln = d(MLP input). `acc` collects the gradient of the stream the MLP input came
            // from: d(resid_mid) = g + norm'(d_ln) when sequential, g + norm'(d_ln) towards the
            // layer input when parallel; a shared norm waits for the attention's part of d_ln.
            let acc = if f.shared_norm {
                g
            } else {
                let x_mlp = if f.parallel { lay.resid } else { lay.resid_mid };
                if f.pre {
                    norm_bwd(
                        g2,
                        self.buf.d_ln,
                        x_mlp,
                        lay.rstd2,
                        lay.mean2,
                        g,
                        &p("mlp_norm"),
                    )?;
                } else {
                    k.add(dt, g2, g, self.buf.d_ln, n * c)?;
                }
                g2
            };
            // The attention branch's gradient: d(resid_mid) when sequential, d(output) when
            // parallel; through its post-norm.
            let d_branch = if f.parallel { g } else { g2 };
            let d_attn = if f.post {
                norm_bwd(
                    self.buf.d_post,
                    d_branch,
                    lay.pa_in,
                    lay.pa_rstd,
                    lay.pa_mean,
                    0,
                    &p("attn_post_norm"),
                )?;
                self.buf.d_post
            } else {
                d_branch
            };
            self.mm(
                n,
                qd,
                c,
                d_attn,
                c,
                false,
                self.w(&p("attn.o.weight"))?,
                qd,
                false,
                self.buf.d_atty,
                qd,
                0.0,
            )?;
            self.mm_grad(
                c,
                qd,
                n,
                d_attn,
                c,
                lay.atty,
                qd,
                self.g(&p("attn.o.weight")),
                0.0,
            )?;
            colsum(self.g(&p("attn.o.bias")), d_attn, c)?;
            let (q, kk, v) = (
                lay.qkv,
                lay.qkv + qd as u64 * es,
                lay.qkv + (qd + kvd) as u64 * es,
            );
            let (dq, dk, dv) = (
                self.buf.dqkv,
                self.buf.dqkv + qd as u64 * es,
                self.buf.dqkv + (qd + kvd) as u64 * es,
            );
            let mut bshape = shape;
            bshape.window = spec.layers[i].attention.window.unwrap_or(0) as usize;
            bshape.ldo = qd;
            k.attn_bwd(
                dt,
                &bshape,
                dq,
                dk,
                dv,
                self.buf.dq_acc,
                self.buf.delta,
                self.buf.d_atty,
                lay.atty,
                lay.lse,
                q,
                kk,
                v,
            )?;
            if let Some((cs, sn, rot, il)) = rope_at(i) {
                k.rope(
                    dt,
                    dq,
                    cs.ptr(),
                    sn.ptr(),
                    n,
                    self.seq,
                    heads,
                    hd,
                    width,
                    *rot,
                    *il,
                    true,
                )?;
                k.rope(
                    dt,
                    dk,
                    cs.ptr(),
                    sn.ptr(),
                    n,
                    self.seq,
                    kvh,
                    hd,
                    width,
                    *rot,
                    *il,
                    true,
                )?;
            }
            if f.qk_norm.is_some() {
                for (col, raw, rows, w_, rstd, mean, name, cols) in qk_parts(lay) {
                    let at = self.buf.dqkv + col as u64 * es;
                    k.copy2d(dt, self.buf.qk_a, cols, at, width, n, cols)?;
                    k.norm_bwd(
                        dt,
                        qk_kind,
                        self.buf.qk_b,
                        self.buf.qk_a,
                        raw,
                        self.wo(&p(&format!("{name}.weight"))),
                        rstd,
                        mean,
                        0,
                        rows,
                        w_,
                        qk_off,
                    )?;
                    k.norm_dw(
                        dt,
                        qk_kind,
                        self.g(&p(&format!("{name}.weight"))),
                        self.g(&p(&format!("{name}.bias"))),
                        self.buf.qk_a,
                        raw,
                        rstd,
                        mean,
                        rows,
                        w_,
                    )?;
                    k.copy2d(dt, at, width, self.buf.qk_b, cols, n, cols)?;
                }
            }
            self.mm_grad(
                width,
                c,
                n,
                self.buf.dqkv,
                width,
                attn_input(lay),
                c,
                self.g(&p("attn.q.weight")),
                0.0,
            )?;
            colsum(self.g(&p("attn.q.bias")), self.buf.dqkv, width)?;
            // A shared norm's input gradient adds the attention's part to the MLP's.
            self.mm(
                n,
                c,
                width,
                self.buf.dqkv,
                width,
                false,
                self.w(&p("attn.q.weight"))?,
                c,
                false,
                self.buf.d_ln,
                c,
                if f.shared_norm { 1.0 } else { 0.0 },
            )?;
            // d(layer input) = acc + norm'(d_ln) (acc + d_ln without pre-norm), into whichever of
            // g, g2 `acc` is not; it becomes g for the layer below.
            let out = if acc == g { g2 } else { g };
            if f.pre {
                norm_bwd(
                    out,
                    self.buf.d_ln,
                    lay.resid,
                    lay.rstd1,
                    lay.mean1,
                    acc,
                    &p("attn_norm"),
                )?;
            } else {
                k.add(dt, out, acc, self.buf.d_ln, n * c)?;
            }
            if out != g {
                std::mem::swap(&mut g, &mut g2);
            }
        }
        let dwpe = self.g("pos_embed.weight");
        k.embed_bwd(
            dt,
            self.g("embed.weight"),
            dwpe,
            self.tokens.ptr(),
            g,
            n,
            self.seq,
            c,
            spec.embedding.scale as f32,
        )?;
        if !optimizer {
            return Ok(());
        }
        // ---- optimizer ----
        self.step += 1;
        let o = self.adamw;
        k.adamw(
            dt,
            self.master.ptr(),
            self.work.ptr(),
            self.grad.ptr(),
            self.adam_m.ptr(),
            self.adam_v.ptr(),
            self.total,
            o.lr,
            o.beta1,
            o.beta2,
            o.eps,
            o.weight_decay,
            self.step,
            1.0,
        )
    }

    /// Replaces the weights (f32 master and working copy) with `params` (canonical names, e.g. from
    /// `Params::init` or a checkpoint) and resets the optimizer state.
    pub fn set_params(&mut self, params: &crate::Params<f32>) -> Result<()> {
        params
            .check(&self.spec)
            .map_err(|e| unsupported(e.to_string()))?;
        let mut host = self.gpu.download(&self.master)?;
        for (name, t) in params.iter() {
            let off = *self
                .offsets
                .get(name)
                .ok_or_else(|| unsupported(format!("no parameter `{name}`")))?;
            host[off..off + t.numel()].copy_from_slice(t.data());
        }
        self.gpu.write(&mut self.master, &host)?;
        self.gpu.memset_zero(&mut self.adam_m)?;
        self.gpu.memset_zero(&mut self.adam_v)?;
        self.step = 0;
        match self.dt {
            Dtype::Bf16 => self.kernels.cast(
                Dtype::F32,
                Dtype::Bf16,
                self.work.ptr(),
                self.master.ptr(),
                self.total,
            ),
            Dtype::F32 => {
                self.gpu.memset_zero(&mut self.grad)?;
                self.kernels.add(
                    Dtype::F32,
                    self.work.ptr(),
                    self.master.ptr(),
                    self.grad.ptr(),
                    self.total,
                )
            }
        }
    }

    /// Mean loss of the last step (synchronises).
    pub fn loss(&self) -> Result<f32> {
        let rows = self.gpu.download(&self.loss_rows)?;
        Ok((rows.iter().map(|&x| x as f64).sum::<f64>() / self.valid_targets as f64) as f32)
    }

    /// Every parameter's f32 gradient after the last step, by canonical name (synchronises).
    pub fn grads(&self) -> Result<crate::Params<f32>> {
        let all = self.gpu.download(&self.grad)?;
        let mut out = crate::Params::new();
        for p in modelspec_dsl::params::parameters(&self.spec) {
            let off = self.offsets[&p.name];
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let t = crate::Tensor::from_vec(&shape, all[off..off + p.numel() as usize].to_vec())
                .map_err(|e| unsupported(e.to_string()))?;
            out.insert(p.name, t);
        }
        Ok(out)
    }

    /// The f32 gradient of parameter `name` after the last step (synchronises).
    pub fn grad(&self, name: &str) -> Result<Vec<f32>> {
        let off = *self
            .offsets
            .get(name)
            .ok_or_else(|| unsupported(format!("no parameter `{name}`")))?;
        let numel = modelspec_dsl::params::parameters(&self.spec)
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.numel() as usize);
        let all = self.gpu.download(&self.grad)?;
        Ok(all[off..off + numel].to_vec())
    }
}

/// The spec's sizes as `#define`s of its kernel module.
fn spec_defines(spec: &ModelSpec) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    d.insert("MS_D_MODEL".into(), spec.d_model.to_string());
    d.insert("MS_VOCAB_PADDED".into(), spec.vocab_padded.to_string());
    if let Some(l) = spec.layers.first() {
        d.insert("MS_HEADS".into(), l.attention.heads.to_string());
        d.insert("MS_KV_HEADS".into(), l.attention.kv_heads.to_string());
        d.insert("MS_HEAD_DIM".into(), l.attention.head_dim.to_string());
    }
    d
}
