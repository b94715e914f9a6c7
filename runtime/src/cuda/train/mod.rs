//! A training step on the GPU that walks the spec layer by layer, each layer with its own
//! configuration (`spec.layers[i]`): heads, kv heads, head dim, scale, softcap, sliding window,
//! qk-norm (per head or over the projection), position (its own RoPE table, learned, none/NoPE,
//! ALiBi), pre/post/sandwich norms, sequential or parallel residual (one shared norm or two), and
//! the FFN (a dense MLP of its own width and activation, or mixture-of-experts). Forward, fused
//! classifier + cross-entropy, backward (recomputing what the plan does not keep) and one fused
//! AdamW launch, all on one stream (or AdamW layer by layer on a second, low-priority stream,
//! overlapped with the backward: `overlap`; the weight gradients on a third: `branch`).
//!
//! Layout of this module, by concept:
//! - [`saves`]: [`LayerSaves`], the planner's named tensors mapped onto the buffers kept;
//! - `config`: each layer's configuration, read once from its IR row;
//! - `layout`: the activation arena (per-layer buffers sized by the layer's own widths, shared
//!   recompute buffers and scratch sized by the largest layer that needs them);
//! - `params`: parameters, gradients and optimizer state (one layout, fused q/k/v and gate/up);
//! - `forward`, `backward`: one layer's forward (also its recomputation) and backward;
//! - `fold`: residual adds folded into the projections' GEMMs (opt-in);
//! - `head`: final norm, classifier and cross-entropy, one row chunk of logits at a time;
//! - `moe_glue`: mixture-of-experts layers through `cuda::moe`;
//! - `overlap`: AdamW overlapped with the backward;
//! - `branch`: the weight gradients on a stream beside the chain of input gradients.
//!
//! Saved activations (per layer, compute dtype): the block input, both norm outputs, the qkv
//! projection (after qk-norm and RoPE, applied in place), the attention output, the mid residual,
//! the MLP hidden pre- and post-activation (or a MoE block's saved region); plus f32 norm
//! statistics and the attention log-sum-exp. Logits exist one row chunk at a time: the
//! cross-entropy kernel turns each chunk into its gradient in place, and the classifier's
//! backward runs right after it.

mod attention;
mod backward;
mod branch;
mod config;
mod fold;
mod forward;
mod graph;
mod head;
mod layout;
mod linalg;
mod mla;
mod moe_glue;
mod overlap;
mod params;
pub mod saves;
mod state;
mod timeline;
mod walk;

pub use saves::LayerSaves;

use super::error::{CudaError, Result};
use super::gemm::Gemm;
use super::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use super::layer::PositionTables;
use super::ops::Kernels;
use config::LayerCfg;
use layout::{Layout, Shape, layout};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::RopeStyle;
use modelspec_dsl::program::{LayerProgram, Program};
use moe_glue::MoeSlot;
use params::ParamArena;
pub(crate) use params::arena_len;
use std::sync::Arc;

/// One distinct RoPE of the spec: cos and sin `[seq, rot/2]`, rotary dims, interleaved.
struct RopeTable {
    cos: GpuBuf<f32>,
    sin: GpuBuf<f32>,
    rot: usize,
    interleaved: bool,
}

/// A decoder's parameters, optimizer state and activations on one GPU.
pub struct GpuTrainer {
    gpu: Arc<Gpu>,
    kernels: Kernels,
    gemm: Arc<Gemm>,
    spec: ModelSpec,
    dt: Dtype,
    shape: Shape,
    params: ParamArena,
    cfg: Vec<LayerCfg>,
    /// Each layer's program, kernels, kept activations and recomputation.
    run: Vec<saves::LayerRun>,
    moe: Vec<Option<MoeSlot>>,
    /// Each layer's attention path (cuDNN or the own kernels).
    attn: attention::AttnPaths,
    _acts: GpuBuf<u8>,
    /// Where every activation and scratch buffer lives in `_acts`.
    buf: Layout,
    loss_rows: GpuBuf<f32>,
    ropes: Vec<RopeTable>,
    /// ALiBi slopes, one buffer per distinct head count.
    alibi: Vec<GpuBuf<f32>>,
    tokens: GpuBuf<i32>,
    /// The batch's [`crate::ops::embedding::scatter_plan`]: the embedding backward's order.
    scatter: GpuBuf<i32>,
    targets: GpuBuf<i32>,
    valid_targets: usize,
    aux_loss: bool,
    /// AdamW steps taken by [`GpuTrainer::step`] since the parameters were set.
    step: u64,
    bytes: usize,
    /// AdamW's settings for [`GpuTrainer::step`]'s fused update: the host optimizer's one
    /// configuration type (PyTorch's names and defaults), applied with the host's rule and
    /// arithmetic ([`crate::train::optim`]: norms, biases and embeddings never decay).
    pub adamw: crate::train::optim::AdamWConfig,
    /// The learning rate of [`GpuTrainer::step`] (1e-4 by default, as the reference benchmark).
    pub lr: f64,
    /// The step's forward and backward as a CUDA graph ([`graph`]).
    graph: graph::StepGraph,
    /// The in-step timeline, when on ([`timeline`]).
    timeline: Option<timeline::Timeline>,
    /// AdamW overlapped with the backward, when on ([`overlap`]).
    overlap: Option<overlap::Overlap>,
    /// The weight gradients beside the backward's chain, when on ([`branch`]).
    branch: Option<branch::Branch>,
    /// Whether a step has run (planned and timed its GEMMs): the branch waits for that.
    planned: std::sync::atomic::AtomicBool,
    /// Whether residual adds fold into the projections' GEMMs ([`fold`]).
    resid_epilogue: bool,
}

fn unsupported(why: String) -> CudaError {
    CudaError::BadLaunch {
        kernel: "gpu trainer".into(),
        why,
    }
}

/// Bytes besides parameters and the arena: loss rows, tokens, the embedding backward's order,
/// targets, the cuBLASLt workspace.
fn fixed_bytes(n: usize) -> usize {
    12 * n + (3 * n + 4) * 4 + (32 << 20)
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

    /// Which attention kernels the layers run (cuDNN's fused attention where it takes a layer's
    /// shape, else the own kernels), e.g. `cudnn 9.14.0 (16 of 16 layers), own kernels for the
    /// rest`. Chosen when the trainer is built; `MODELSPEC_ATTENTION=own|cudnn|auto` overrides.
    pub fn attention_paths(&self) -> String {
        self.attn.describe()
    }

    /// The GEMMs whose cuBLASLt algorithm this process chose by timing (at the first step;
    /// `MODELSPEC_GEMM_TUNE`), for benchmarks: each with the heuristic's pick's time and the
    /// chosen one's. Empty where the choices came from the machine's choices file.
    pub fn gemm_tuned(&self) -> Vec<super::gemm::Tuned> {
        self.gemm.tuned()
    }

    /// Which GEMM kernels ran: `cuBLASLt`, then `; residual adds in the projections' epilogues`
    /// where those fold ([`GpuTrainer::set_residual_epilogue`]) and `; own Hopper kernels for
    /// ...` naming the fused GEMMs that ran on the own kernels (epilogue, shape, schedule:
    /// [`Gemm::own_runs`](super::gemm::Gemm::own_runs); `MODELSPEC_OWN_GEMM`).
    pub fn gemm_paths(&self) -> String {
        let own = self.gemm.own_runs();
        let mut out = String::from("cuBLASLt");
        if self.resid_epilogue {
            out.push_str("; residual adds in the projections' epilogues");
        }
        if !own.is_empty() {
            out.push_str(&format!("; own Hopper kernels for {}", own.join(", ")));
        }
        out
    }

    /// The one way to build a trainer for a checkpoint policy (`eval`, `train` and `bench
    /// --device cuda` all use it): the planner resolves `policy` (the spec's own checkpoint
    /// settings when `None`) for `batch` x `seq` in `dt`, the trainer keeps what that plan saves
    /// and recomputes the rest, and the device's free memory is checked against the predicted
    /// footprint before anything is allocated.
    pub fn from_policy(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        seed: u64,
        policy: Option<&modelspec_dsl::plan::PolicyOverride>,
    ) -> Result<GpuTrainer> {
        if let Some(why) = Self::unsupported_feature(spec) {
            return Err(unsupported(format!("unsupported: {why}")));
        }
        let planned = modelspec_dsl::plan::plan(spec, batch as u64, seq as u64, dt, policy)?;
        // Each layer is lowered once, here: its program serves the saves, the footprint and the
        // trainer.
        let programs = Program::lower(spec).layers;
        let saves = LayerSaves::from_programs(&programs, &planned);
        let (lay, n) = Self::predicted_layout(spec, &programs, dt, batch, seq, &saves);
        gpu.check_fits(Self::footprint(spec, dt, &lay, n))?;
        Self::build(gpu, spec, programs, dt, batch, seq, seed, &saves)
    }

    /// Why the GPU trainer cannot run `spec` (the first unsupported feature, named), or `None`.
    /// Layers may differ in sizes, attention options (sinks, chunks, the query temperature, a
    /// qk-norm before or after RoPE, multi-head latent attention included), position encoding,
    /// block structure and FFN.
    pub fn unsupported_feature(spec: &ModelSpec) -> Option<String> {
        config::unsupported_feature(spec)
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
        let programs = Program::lower(spec).layers;
        Self::build(gpu, spec, programs, dt, batch, seq, seed, saves)
    }

    /// [`GpuTrainer::with_checkpoint`] with the layers already lowered (`LayerProgram::lower`,
    /// one program per layer of `spec`): the one place a trainer is built.
    #[allow(clippy::too_many_arguments)]
    fn build(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        programs: Vec<LayerProgram>,
        dt: Dtype,
        batch: usize,
        seq: usize,
        seed: u64,
        saves: &[LayerSaves],
    ) -> Result<GpuTrainer> {
        if let Some(why) = Self::unsupported_feature(spec) {
            return Err(unsupported(format!("unsupported: {why}")));
        }
        if !saves.is_empty() && saves.len() != spec.layers.len() {
            return Err(unsupported(format!(
                "{} checkpoint entries for {} layers",
                saves.len(),
                spec.layers.len()
            )));
        }
        if let Some(max) = spec.max_sequence()
            && seq as u64 > max
        {
            return Err(unsupported(format!("seq {seq} exceeds the context {max}")));
        }
        let kernels = Kernels::for_spec(gpu, spec)?;
        let gemm = gpu.gemm()?;
        let params = ParamArena::new(gpu, &kernels, spec, dt, seed)?;
        let shape = Shape::new(
            batch,
            seq,
            spec.d_model as usize,
            dt.bytes(),
            spec.vocab_padded as usize,
        );
        // One table pair per distinct RoPE, one slope buffer per distinct ALiBi head count.
        let tables = PositionTables::new(gpu, spec)?;
        let mut ropes: Vec<RopeTable> = Vec::with_capacity(tables.ropes.len());
        for r in &tables.ropes {
            let (cs, sn) = super::rope::tables(r, seq);
            ropes.push(RopeTable {
                cos: gpu.upload(&cs)?,
                sin: gpu.upload(&sn)?,
                rot: r.rotary_dims as usize,
                interleaved: r.style == RopeStyle::Interleaved,
            });
        }
        let cfg: Vec<LayerCfg> = (spec.layers.iter().zip(&programs).enumerate())
            .map(|(i, (l, lp))| LayerCfg::new(l, lp, tables.rope_of[i], tables.alibi_of[i]))
            .collect();
        let alibi = tables.alibi;
        let moe = moe_glue::build(gpu, spec, batch * seq, dt)?;
        let moe_sizes = moe_glue::sizes(&moe);
        let sizing = layout(&cfg, &shape, saves, &moe_sizes, 0);
        let acts = gpu.zeros::<u8>(sizing.total_bytes)?;
        let buf = layout(&cfg, &shape, saves, &moe_sizes, acts.ptr());
        let attn = attention::AttnPaths::choose(gpu, &kernels, &cfg, &shape, dt, |l| {
            l.alibi.map_or(0, |j| alibi[j].ptr())
        })?;
        let n = shape.n;
        let bytes = params.bytes() + buf.total_bytes + fixed_bytes(n) + attn.bytes();
        let moe_any = moe.iter().any(Option::is_some);
        let run: Vec<saves::LayerRun> = (programs.into_iter().enumerate())
            .map(|(i, lp)| saves::LayerRun::new(lp, saves.get(i).unwrap_or(&LayerSaves::ALL)))
            .collect();
        // Both on unless their switch turns them off.
        let overlap = match super::env_switch("MODELSPEC_ADAMW_OVERLAP") {
            Some(false) => None,
            _ => Some(overlap::Overlap::new(gpu, spec, &params)?),
        };
        let branch = match super::env_switch("MODELSPEC_WGRAD_BRANCH") {
            Some(false) => None,
            _ => Some(branch::Branch::for_trainer(gpu, &gemm, &run, &buf, &shape)?),
        };
        Ok(GpuTrainer {
            gpu: gpu.clone(),
            kernels,
            gemm,
            spec: spec.clone(),
            dt,
            shape,
            params,
            cfg,
            run,
            moe,
            attn,
            _acts: acts,
            buf,
            loss_rows: gpu.zeros::<f32>(n)?,
            ropes,
            alibi,
            tokens: gpu.zeros::<i32>(n)?,
            scatter: gpu.upload(&crate::ops::embedding::scatter_plan(&vec![0; n]))?,
            targets: gpu.zeros::<i32>(n)?,
            valid_targets: n,
            aux_loss: true,
            step: 0,
            bytes,
            adamw: Default::default(),
            lr: 1e-4,
            graph: graph::StepGraph::new(moe_any),
            timeline: None,
            overlap,
            branch,
            planned: Default::default(),
            resid_epilogue: super::env_switch("MODELSPEC_RESIDUAL_EPILOGUE") == Some(true),
        })
    }

    /// Device bytes [`GpuTrainer::new`] will allocate for `spec` at this batch shape: parameters
    /// and optimizer state (16 B + one working copy per parameter), saved activations, scratch
    /// (one logits chunk of at most 512 MiB), the cuBLASLt workspace.
    pub fn predicted_bytes(spec: &ModelSpec, dt: Dtype, batch: usize, seq: usize) -> usize {
        Self::predicted_bytes_with(spec, dt, batch, seq, &[])
    }

    /// As [`GpuTrainer::predicted_bytes`] for [`GpuTrainer::with_checkpoint`] with `saves`.
    /// Mixture-of-experts layers count their saved regions and scratch as `cuda::moe` sizes them
    /// (without a device: from the planner's tensor costs).
    pub fn predicted_bytes_with(
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        saves: &[LayerSaves],
    ) -> usize {
        let (lay, n) =
            Self::predicted_layout(spec, &saves::structures(spec), dt, batch, seq, saves);
        Self::footprint(spec, dt, &lay, n)
    }

    /// Device bytes of a trainer of `spec` in `dt` whose activation arena is `lay` over `n`
    /// token rows.
    fn footprint(spec: &ModelSpec, dt: Dtype, lay: &Layout, n: usize) -> usize {
        let total = params::param_offsets(spec).total;
        // The overlapped AdamW and the weight-gradient branch are on by default.
        let streams = overlap::Overlap::bytes(spec) + branch::Branch::bytes(lay.reduce.bytes);
        total * (16 + dt.bytes())
            + (params::NORM_BLOCKS + 1) * 8
            + lay.total_bytes
            + fixed_bytes(n)
            + streams
    }

    /// Bytes the layers of a trainer built with `saves` keep from forward to backward, without a
    /// device: every layer's input plus its kept buffers (what the planner's `activation_bytes`
    /// counts for the plan `saves` came from).
    pub fn predicted_saved_bytes(
        spec: &ModelSpec,
        dt: Dtype,
        batch: usize,
        seq: usize,
        saves: &[LayerSaves],
    ) -> usize {
        Self::predicted_layout(spec, &saves::structures(spec), dt, batch, seq, saves)
            .0
            .saved_bytes
    }

    /// The activation arena a trainer built with `saves` would carve (sized at address 0), and
    /// its token rows; `lps` are the layers' programs (or structures).
    fn predicted_layout(
        spec: &ModelSpec,
        lps: &[LayerProgram],
        dt: Dtype,
        batch: usize,
        seq: usize,
        saves: &[LayerSaves],
    ) -> (Layout, usize) {
        let shape = Shape::new(
            batch,
            seq,
            spec.d_model as usize,
            dt.bytes(),
            spec.vocab_padded as usize,
        );
        let cfg: Vec<LayerCfg> = (spec.layers.iter().zip(lps))
            .map(|(l, lp)| LayerCfg::new(l, lp, None, None))
            .collect();
        let moe_sizes = moe_glue::predicted_sizes(spec, lps, batch, seq, dt);
        (layout(&cfg, &shape, saves, &moe_sizes, 0), shape.n)
    }

    /// Bytes of activations kept from forward to backward by the layers: every layer's input
    /// plus its saved buffers (what the planner's `activation_bytes` predicts).
    pub fn saved_activation_bytes(&self) -> usize {
        self.buf.saved_bytes
    }

    /// Bytes of the buffers shared by the layers for recomputed activations (0 under `none`).
    pub fn recompute_buffer_bytes(&self) -> usize {
        self.buf.recompute_bytes
    }

    /// Bytes this trainer allocated on the device (parameters, optimizer state, activations,
    /// scratch, the cuBLASLt workspace, the overlapped AdamW's and the branch's buffers).
    pub fn device_bytes(&self) -> usize {
        let overlap = self
            .overlap
            .as_ref()
            .map_or(0, |_| overlap::Overlap::bytes(&self.spec));
        let branch =
            (self.branch.as_ref()).map_or(0, |_| branch::Branch::bytes(self.buf.reduce.bytes));
        self.bytes + overlap + branch
    }

    /// Number of parameter elements.
    pub fn param_count(&self) -> usize {
        modelspec_dsl::params::parameters(&self.spec)
            .iter()
            .map(|p| p.numel() as usize)
            .sum()
    }

    /// Whether [`GpuTrainer::loss`] includes the mixture-of-experts load-balancing loss (on by
    /// default, as in training; `eval` turns it off, as transformers without router logits). Off
    /// from the first step on, the aux statistics stay zero and so does the aux gradient.
    pub fn set_aux_loss(&mut self, on: bool) {
        self.aux_loss = on;
    }

    /// Sets the batch: `tokens` `[batch*seq]`, next-token targets (HF shift: the last position
    /// of each sequence is ignored) unless `targets` is given (-1 = ignore).
    pub fn set_batch(&mut self, tokens: &[u32], targets: Option<&[i32]>) -> Result<()> {
        let (n, seq) = (self.shape.n, self.shape.seq);
        if tokens.len() != n || targets.is_some_and(|t| t.len() != n) {
            return Err(unsupported(format!(
                "expected {n} tokens (batch {} x seq {seq})",
                self.shape.batch
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as u64 >= self.spec.vocab_padded) {
            return Err(unsupported(format!("token {bad} outside the vocabulary")));
        }
        let tok: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let tgt: Vec<i32> = match targets {
            Some(t) => t.to_vec(),
            None => (0..n)
                .map(|i| if (i + 1) % seq == 0 { -1 } else { tok[i + 1] })
                .collect(),
        };
        self.valid_targets = tgt.iter().filter(|&&t| t >= 0).count().max(1);
        self.gpu.write(&mut self.tokens, &tok)?;
        let plan = crate::ops::embedding::scatter_plan(tokens);
        self.gpu.write(&mut self.scatter, &plan)?;
        self.gpu.write(&mut self.targets, &tgt)
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

    /// Turns AdamW's overlap with the backward (`cuda/train/overlap.rs`) on or off (on by default;
    /// `MODELSPEC_ADAMW_OVERLAP=off` turns it off when the trainer is built). The update is the
    /// same arithmetic either way; only [`GpuTrainer::step`] without the timeline overlaps.
    pub fn set_adamw_overlap(&mut self, on: bool) -> Result<()> {
        self.overlap = match (on, self.overlap.take()) {
            (false, _) => None,
            (true, Some(o)) => Some(o),
            (true, None) => Some(overlap::Overlap::new(&self.gpu, &self.spec, &self.params)?),
        };
        Ok(())
    }

    /// How [`GpuTrainer::step`] runs AdamW, for logs and benchmarks.
    pub fn adamw_path(&self) -> &'static str {
        match self.overlap {
            Some(_) => "overlapped with the backward, layer by layer",
            None => "one launch after the backward",
        }
    }

    /// The borrowed view one step runs on; `adamw`: whether AdamW runs inside it ([`overlap`]).
    /// The weight-gradient branch takes part once a step has planned the GEMMs, and never under
    /// the timeline or when the logits are captured.
    fn ctx(&self, adamw: bool, logits: bool) -> Step<'_> {
        let planned = self.planned.load(std::sync::atomic::Ordering::Relaxed);
        let branch =
            (self.branch.as_ref()).filter(|_| planned && !logits && self.timeline.is_none());
        Step {
            k: &self.kernels,
            gemm: &self.gemm,
            gpu: &self.gpu,
            spec: &self.spec,
            p: &self.params,
            buf: &self.buf,
            cfg: &self.cfg,
            run: &self.run,
            moe: &self.moe,
            attn: &self.attn,
            ropes: &self.ropes,
            alibi: &self.alibi,
            dt: self.dt,
            es: self.dt.bytes() as u64,
            s: self.shape,
            tokens: self.tokens.ptr(),
            scatter: self.scatter.ptr(),
            targets: self.targets.ptr(),
            loss_rows: &self.loss_rows,
            valid_targets: self.valid_targets,
            aux_loss: self.aux_loss,
            timeline: self.timeline.as_ref(),
            overlap: if adamw { self.overlap.as_ref() } else { None },
            branch,
            resid_epilogue: self.resid_epilogue,
        }
    }

    fn run_step(&mut self, capture: Option<&mut Vec<f32>>, optimizer: bool) -> Result<()> {
        if optimizer
            && capture.is_none()
            && self.timeline.is_none()
            && let Some(o) = self.overlap.as_mut()
        {
            // AdamW inside the step, layer by layer ([`overlap`]).
            self.step += 1;
            o.set_scalars(&self.gpu, &self.adamw.scalars(self.step, self.lr))?;
            return self.fwd_bwd_graphed(true);
        }
        match capture {
            Some(logits) => self.fwd_bwd(Some(logits), false)?,
            None => self.fwd_bwd_graphed(false)?,
        }
        if !optimizer {
            return Ok(());
        }
        self.step += 1;
        let scalars = self.adamw.scalars(self.step, self.lr);
        // The optimizer needs the trainer mutably: the timeline steps aside meanwhile.
        let (timeline, gpu) = (self.timeline.take(), self.gpu.clone());
        let done = match &timeline {
            Some(t) => t.span(
                &gpu,
                || "adamw".into(),
                || self.apply_adamw(&scalars, [1.0, 1.0], false),
            ),
            None => self.apply_adamw(&scalars, [1.0, 1.0], false),
        };
        self.timeline = timeline;
        done
    }

    /// Zeroes the gradients, then forward, loss and backward of the batch (every launch on the
    /// trainer's stream, no host synchronisation unless `capture` asks for the logits or a MoE
    /// layer reads its expert counts); with `adamw`, also AdamW, overlapped ([`overlap`]).
    fn fwd_bwd(&self, capture: Option<&mut Vec<f32>>, adamw: bool) -> Result<()> {
        // The step's shapes are fixed: its GEMMs may take timed algorithm choices.
        self.gemm
            .with_tuning(true, || self.fwd_bwd_body(capture, adamw))
    }

    fn fwd_bwd_body(&self, capture: Option<&mut Vec<f32>>, adamw: bool) -> Result<()> {
        let st = self.ctx(adamw, capture.is_some());
        if let Some(b) = st.branch {
            b.begin();
        }
        // SAFETY: the grad arena and the aux scalar are this trainer's own.
        unsafe {
            self.gpu
                .memset_raw(self.params.grad.ptr(), self.params.total * 4)?;
            self.gpu.memset_raw(self.buf.aux, 4)?;
        }
        if let Some(o) = st.overlap {
            o.mark_rows(&st)?;
        }
        st.timed(|| "embed fwd".into(), || st.embed_fwd())?;
        for i in 0..self.cfg.len() {
            st.layer_fwd(i, false)?;
        }
        let mut g = st.timed(|| "head".into(), || st.head(capture))?;
        if let Some(o) = st.overlap {
            o.after_head(&st)?;
        }
        for i in (0..self.cfg.len()).rev() {
            st.join_branch_before_layer(i)?;
            if self.run[i].recomputes() {
                st.layer_fwd(i, true)?;
            }
            g = st.layer_bwd(i, g)?;
            if let Some(o) = st.overlap {
                o.after_layer(&st, i)?;
            }
        }
        st.timed(|| "embed bwd".into(), || st.embed_bwd(g))?;
        st.join_branch()?;
        if let Some(o) = st.overlap {
            o.finish(&st)?;
        }
        self.planned
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Replaces the weights (f32 master and working copy) with `params` (canonical names, e.g. from
    /// `Params::init` or a checkpoint) and resets the optimizer state.
    pub fn set_params(&mut self, params: &crate::Params<f32>) -> Result<()> {
        self.set_state(params, &Default::default())
    }

    /// Mean loss of the last step (synchronises): cross-entropy, plus the mixture-of-experts
    /// load-balancing loss (with its coefficient) when the spec has one and it is on.
    pub fn loss(&self) -> Result<f32> {
        let rows = self.gpu.download(&self.loss_rows)?;
        let ce = rows.iter().map(|&x| x as f64).sum::<f64>() / self.valid_targets as f64;
        let aux = if self.aux_loss && self.moe.iter().any(Option::is_some) {
            // SAFETY: `aux` is one f32 of this trainer's arena.
            let b = unsafe { self.gpu.download_raw(self.buf.aux, 4) }?;
            f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            0.0
        };
        Ok((ce + aux) as f32)
    }

    /// Every parameter's f32 gradient after the last step, by canonical name (synchronises).
    pub fn grads(&self) -> Result<crate::Params<f32>> {
        let all = self.gpu.download(&self.params.grad)?;
        let mut out = crate::Params::new();
        for p in modelspec_dsl::params::parameters(&self.spec) {
            let off = self.params.offsets[&p.name];
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
            .params
            .offsets
            .get(name)
            .ok_or_else(|| unsupported(format!("no parameter `{name}`")))?;
        let numel = modelspec_dsl::params::parameters(&self.spec)
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.numel() as usize);
        let all = self.gpu.download(&self.params.grad)?;
        Ok(all[off..off + numel].to_vec())
    }
}

/// What one step reads: the trainer's kernels, parameters, arena and per-layer configuration.
/// `forward`, `backward` and `head` add their methods to it.
struct Step<'a> {
    k: &'a Kernels,
    gemm: &'a Gemm,
    gpu: &'a Gpu,
    spec: &'a ModelSpec,
    p: &'a ParamArena,
    buf: &'a Layout,
    cfg: &'a [LayerCfg],
    run: &'a [saves::LayerRun],
    moe: &'a [Option<MoeSlot>],
    attn: &'a attention::AttnPaths,
    ropes: &'a [RopeTable],
    alibi: &'a [GpuBuf<f32>],
    dt: Dtype,
    /// Bytes per element of `dt`.
    es: u64,
    s: Shape,
    tokens: DevPtr,
    /// The batch's embedding-backward order (`GpuTrainer::scatter`).
    scatter: DevPtr,
    targets: DevPtr,
    loss_rows: &'a GpuBuf<f32>,
    valid_targets: usize,
    /// Whether MoE forwards accumulate the aux loss.
    aux_loss: bool,
    /// The in-step timeline, when on.
    timeline: Option<&'a timeline::Timeline>,
    /// AdamW overlapped with the backward, when this step runs it.
    overlap: Option<&'a overlap::Overlap>,
    /// The weight-gradient branch, when this step uses it.
    branch: Option<&'a branch::Branch>,
    /// Whether residual adds fold into the projections' GEMMs ([`fold`]).
    resid_epilogue: bool,
}
