//! Mixture of experts on the GPU, forward and backward: the CUDA counterpart of the CPU reference
//! (`ops/moe/mod.rs` with the executor's MoE step), op for op.
//!
//! Forward of one layer (`x: [rows, d]`, the normed input):
//! 1. router logits `x Wr^T` (cuBLASLt, f32 output even in bf16, so routing sees f32 logits);
//! 2. `moe_route`: adds the router bias (GPT-OSS) to the logits, then softmax→top-k (optionally
//!    renormalised), top-k→softmax, or the sigmoid router (DeepSeek-V3, GLM-4.5, Llama 4: choice
//!    on the scores plus the selection-only correction bias, within the best expert groups;
//!    weights the scores, optionally renormalised), each weight times the routed scaling factor;
//!    per row, ties to the lower expert index exactly as the CPU;
//! 3. token permutation on the device: a stable counting sort of the `rows·k` slots by expert
//!    (`moe_rank`, `moe_offsets`, `moe_place`), then `moe_gather` copies each token to its
//!    dispatched rows (times its routing weight when the weights go on the inputs, Llama 4). Expert `e` owns rows `start[e] .. start[e] + count[e]`, tokens in slot
//!    order as on the CPU; each block starts at a multiple of 8 rows so every GEMM operand is
//!    16-byte aligned;
//! 4. the experts: **one cuBLASLt GEMM per expert over its contiguous rows** (per projection;
//!    gate and up as one `[2 hidden, d]` GEMM when the two weights, and biases, are adjacent in
//!    memory; biases through the GEMM epilogue), the activation over all dispatched rows in one
//!    launch (GPT-OSS's clamped SwiGLU where the spec has it), then the down projection per
//!    expert. Sizing the per-expert GEMMs needs the per-expert counts on the host: this first
//!    version reads them back once per layer (one 2·experts·4-byte copy and a stream
//!    synchronisation in forward and again in backward). A device-side grouped GEMM would remove
//!    that read. Each distinct count is a new cuBLASLt plan (cached in [`Gemm`]);
//! 5. shared experts on all rows, their optional sigmoid gate `sigmoid(x · w_gate)`;
//! 6. `moe_combine`: `out[n] = Σ_s w[n, s] · expert_out[row(n, s)] (+ gate · shared_out[n])` (w 1
//!    when the weights went on the inputs), each output row summed by one block in slot order: no
//!    atomics, bit-reproducible.
//!
//! Backward (`backward.rs`) runs every step's gradient: the combine (d weights and d expert
//! outputs), the shared experts and their gate, the experts (down, activation, gate/up, with
//! weight gradients accumulated in f32 by cuBLASLt with beta 1), the input-side weights'
//! gradient (`moe_dweight_in`), the router through its softmax/top-k/sigmoid (`moe_route_bwd`, the
//! CPU's `route_backward` formula) with the aux loss's gradient and the router bias's, then
//! `moe_dx` adds the dispatched rows' gradients back per token in slot order. The correction bias
//! is a buffer: it gets no gradient.
//!
//! The load-balancing loss is HF's `load_balancing_loss_func` over the router logits of *all* the
//! spec's MoE layers with an aux loss, concatenated (as `ops/moe/mod.rs` computes it): it is not a sum
//! of per-layer terms. Its statistics (per-expert counts and probability sums) therefore live in
//! one small device buffer shared by those layers ([`MoeLayer::new_all`] or
//! [`MoeLayer::share_aux_stats`]), one slot per layer that its forward overwrites (so a forward
//! recomputed during backward changes nothing); the last such layer adds `coef · aux` to the
//! `aux_loss` scalar, and backward sums the slots' counts for the loss's gradient.

mod backward;
mod kernels;
mod layout;
mod mlp;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use modelspec_dsl::ir::{Ffn, ModelSpec, Moe, RouterOrder, Weighting};

use crate::cuda::error::{CudaError, Result};
use crate::cuda::gemm::Gemm;
use crate::cuda::ops::{act_bwd, act_fwd};
use crate::cuda::{Act, DevPtr, Dtype, Gpu, GpuBuf};
use crate::ops::activation::cuda::{act_clamped_bwd, act_clamped_fwd};
pub use kernels::{KERNEL_NAMES, kernel_source};
use kernels::{MoeKernels, RouteCfg};
use layout::{BwdLayout, Dims, FwdLayout, MAX_EXPERTS, MAX_TOP_K, SavedLayout, at};
use mlp::{MlpRows, MlpShape, Mm, need};

/// The load-balancing statistics shared by the MoE layers of one run: per layer with an aux
/// loss, `[counts; prob sums]` (`2 · experts` f32), and the layers that write them.
struct AuxStats {
    stats: GpuBuf<f32>,
    members: Mutex<BTreeSet<usize>>,
}

/// This layer's part in the aux loss.
struct Aux {
    shared: Arc<AuxStats>,
    /// Every layer of the spec with an aux loss, in order.
    layers: Vec<usize>,
    /// This layer's position in `layers` (its statistics slot).
    slot: usize,
    /// `coef · experts / M²` with `M = rows · layers.len()`.
    scale: f32,
}

/// The routing of one forward, read back (for tests and inspection).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeRouting {
    /// `[rows · top_k]`: each token's experts, in top-k order.
    pub experts: Vec<usize>,
    /// `[rows · top_k]`: their weights.
    pub weights: Vec<f32>,
    /// `[experts]`: tokens routed to each expert.
    pub counts: Vec<usize>,
}

/// One MoE layer of a spec on the GPU: its sizes, kernels and buffer layouts. It owns no
/// activation memory: forward and backward work in the caller's `saved` and `scratch` regions
/// ([`MoeLayer::saved_bytes`], [`MoeLayer::scratch_bytes`], both 256-byte aligned).
///
/// ```no_run
/// use modelspec_runtime::cuda::moe::MoeLayer;
/// use modelspec_runtime::cuda::{DevPtr, Dtype, Gpu};
/// # fn demo(spec: &modelspec_dsl::ModelSpec, x: DevPtr, out: DevPtr, aux: DevPtr,
/// #         w: &dyn Fn(&str) -> DevPtr) -> Result<(), modelspec_runtime::cuda::CudaError> {
/// let gpu = Gpu::new(0)?;
/// // Every MoE layer of the spec for 4 x 512 tokens, sharing the aux-loss statistics.
/// let layers = MoeLayer::new_all(&gpu, spec, 4 * 512, Dtype::Bf16)?;
/// let saved = gpu.zeros::<u8>(layers[0].saved_bytes())?;
/// let scratch = gpu.zeros::<u8>(layers[0].scratch_bytes())?;
/// let gemm = gpu.gemm()?;
/// layers[0].forward(&gemm, w, x, out, saved.ptr(), scratch.ptr(), aux)?;
/// # Ok(()) }
/// ```
pub struct MoeLayer {
    kernels: MoeKernels,
    layer: usize,
    dt: Dtype,
    moe: Moe,
    dims: Dims,
    saved: SavedLayout,
    fwd: FwdLayout,
    bwd: BwdLayout,
    aux: Option<Aux>,
}

impl std::fmt::Debug for MoeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoeLayer")
            .field("layer", &self.layer)
            .field("dt", &self.dt)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

fn bad(layer: usize, why: String) -> CudaError {
    CudaError::BadLaunch {
        kernel: format!("moe (layer {layer})"),
        why,
    }
}

impl MoeLayer {
    /// The MoE layer `layer` of `spec` for `rows` tokens per call in compute dtype `dt`. Compiles
    /// (or loads from the disk cache) the MoE kernels. Errors when the layer is not a mixture of
    /// experts or its sizes exceed the kernels' limits (256 experts, top-8).
    pub fn new(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        layer: usize,
        rows: usize,
        dt: Dtype,
    ) -> Result<MoeLayer> {
        let Some(l) = spec.layers.get(layer) else {
            return Err(bad(
                layer,
                format!("the spec has {} layers", spec.layers.len()),
            ));
        };
        let Ffn::Moe(moe) = l.ffn else {
            return Err(bad(layer, "not a mixture-of-experts layer".into()));
        };
        let (e, k) = (moe.experts as usize, moe.top_k as usize);
        if e == 0 || e > MAX_EXPERTS || k == 0 || k > MAX_TOP_K.min(e) {
            return Err(bad(
                layer,
                format!(
                    "{e} experts with top_k {k}: the kernels take 1..={MAX_EXPERTS} experts and top_k 1..={MAX_TOP_K} (at most the experts)"
                ),
            ));
        }
        if rows == 0 || rows * k > i32::MAX as usize / 2 {
            return Err(bad(layer, format!("{rows} rows")));
        }
        if let Some(g) = moe.groups
            && (g.count == 0
                || !moe.experts.is_multiple_of(g.count)
                || g.top == 0
                || g.top > g.count)
        {
            return Err(bad(
                layer,
                format!(
                    "{} expert groups with {} kept for {e} experts: the groups must divide the experts and keep 1..=groups",
                    g.count, g.top
                ),
            ));
        }
        let dims = Dims::new(&moe, spec.d_model as usize, rows, dt);
        let aux = if moe.aux_loss > 0.0 {
            Some(Self::aux_for(gpu, spec, layer, rows)?)
        } else {
            None
        };
        Ok(MoeLayer {
            kernels: MoeKernels::load(gpu)?,
            layer,
            dt,
            moe,
            dims,
            saved: SavedLayout::new(&dims),
            fwd: FwdLayout::new(&dims, aux.is_some()),
            bwd: BwdLayout::new(&dims, aux.is_some()),
            aux,
        })
    }

    /// Every MoE layer of `spec` (in layer order), sharing one set of aux-loss statistics.
    pub fn new_all(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        rows: usize,
        dt: Dtype,
    ) -> Result<Vec<MoeLayer>> {
        let mut out: Vec<MoeLayer> = Vec::new();
        for (i, l) in spec.layers.iter().enumerate() {
            if !matches!(l.ffn, Ffn::Moe(_)) {
                continue;
            }
            let mut layer = MoeLayer::new(gpu, spec, i, rows, dt)?;
            if let Some(first) = out.iter().find(|m| m.aux.is_some())
                && layer.aux.is_some()
            {
                layer.share_aux_stats(first)?;
            }
            out.push(layer);
        }
        Ok(out)
    }

    fn aux_for(gpu: &Arc<Gpu>, spec: &ModelSpec, layer: usize, rows: usize) -> Result<Aux> {
        // As the CPU executor: the coefficient of the first layer with an aux loss, the experts
        // of the first MoE layer, the rows of every layer with an aux loss.
        let mut layers = Vec::new();
        let mut coef = None;
        let mut experts = None;
        for (i, l) in spec.layers.iter().enumerate() {
            if let Ffn::Moe(m) = &l.ffn {
                experts.get_or_insert(m.experts);
                if m.aux_loss > 0.0 {
                    coef.get_or_insert(m.aux_loss);
                    layers.push(i);
                    if Some(m.experts) != experts {
                        return Err(bad(
                            layer,
                            "the aux loss needs the same number of experts in every MoE layer"
                                .into(),
                        ));
                    }
                }
            }
        }
        let e = experts.unwrap_or(0) as f64;
        let m = (rows * layers.len()) as f64;
        let scale = (coef.unwrap_or(0.0) * e / (m * m)) as f32;
        let slot = layers.iter().position(|&l| l == layer).unwrap_or(0);
        Ok(Aux {
            shared: Arc::new(AuxStats {
                stats: gpu.zeros::<f32>(layers.len() * 2 * e as usize)?,
                members: Mutex::new(BTreeSet::from([layer])),
            }),
            layers,
            slot,
            scale,
        })
    }

    /// Makes this layer use `other`'s aux-loss statistics (both layers of the same spec, rows
    /// and experts). Needed when the spec has more than one MoE layer with an aux loss;
    /// [`MoeLayer::new_all`] does it.
    pub fn share_aux_stats(&mut self, other: &MoeLayer) -> Result<()> {
        let (Some(mine), Some(theirs)) = (self.aux.as_mut(), other.aux.as_ref()) else {
            return Err(bad(
                self.layer,
                format!(
                    "sharing aux statistics with layer {}: both need an aux loss",
                    other.layer
                ),
            ));
        };
        if mine.layers != theirs.layers || self.dims.rows != other.dims.rows {
            return Err(bad(
                self.layer,
                format!("layer {} belongs to another spec or row count", other.layer),
            ));
        }
        mine.shared = theirs.shared.clone();
        mine.shared
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.layer);
        Ok(())
    }

    /// Device bytes forward keeps for backward.
    pub fn saved_bytes(&self) -> usize {
        self.saved.bytes
    }

    /// Device bytes of scratch for forward and for backward (one region serves both, and every
    /// layer of the same sizes). Allocate it zeroed (`Gpu::zeros`) once: its start holds the
    /// backward's column-reduction counters, which each backward leaves zero again and nothing
    /// else writes.
    pub fn scratch_bytes(&self) -> usize {
        self.fwd.bytes.max(self.bwd.bytes)
    }

    /// The layer's index in the spec.
    pub fn layer(&self) -> usize {
        self.layer
    }

    fn check_regions(&self, ptrs: &[(&str, DevPtr)]) -> Result<()> {
        for (what, p) in ptrs {
            if *p == 0 || p % 16 != 0 {
                return Err(bad(
                    self.layer,
                    format!("`{what}` must be a 16-byte aligned device pointer (got {p:#x})"),
                ));
            }
        }
        Ok(())
    }

    /// The routing kernels' configuration, with the router's bias pointers from `w`.
    fn route_cfg(&self, w: &dyn Fn(&str) -> DevPtr) -> Result<RouteCfg> {
        let m = &self.moe;
        let bias = |on: bool, name: &str| if on { need(w, self.layer, name) } else { Ok(0) };
        Ok(RouteCfg {
            order: match m.router {
                RouterOrder::SoftmaxTopk => 0,
                RouterOrder::TopkSoftmax => 1,
                RouterOrder::SigmoidTopk => 2,
            },
            renorm: m.renormalize as i32,
            scale: m.routed_scale as f32,
            groups: m.groups.map_or(0, |g| g.count as i32),
            top_groups: m.groups.map_or(0, |g| g.top as i32),
            router_bias: bias(m.router_bias, "moe.router.bias")?,
            correction: bias(m.correction_bias, "moe.router.correction_bias")?,
        })
    }

    /// The router weights scale the experts' inputs (Llama 4), not their outputs.
    fn input_weighted(&self) -> bool {
        self.moe.weighting == Weighting::Input
    }

    fn expert_shape(&self) -> MlpShape {
        MlpShape {
            d: self.dims.d,
            hidden: self.dims.hidden,
            gated: self.dims.gated,
            bias: self.moe.expert.bias,
            halves: self.dims.halves,
        }
    }

    /// The routed experts' activation `act` of the first `used` dispatched rows from their
    /// gate/up projection `proj` (the forward, and the backward's recomputation).
    fn expert_act(&self, proj: DevPtr, act: DevPtr, used: usize) -> Result<()> {
        let (dt, hidden, ld) = (self.dt, self.dims.hidden, self.dims.halves.ld);
        let (gin, uin) = self.expert_shape().act_inputs(proj, dt);
        let module = self.kernels.launcher();
        if let Some(c) = &self.moe.clamp {
            return act_clamped_fwd(module, dt, c, act, gin, uin, used, hidden, ld);
        }
        let kind = Act::from(self.moe.expert.activation);
        act_fwd(
            self.kernels.launcher(),
            dt,
            kind,
            act,
            gin,
            uin,
            used,
            hidden,
            ld,
        )
    }

    /// Backward of [`MoeLayer::expert_act`]: the d projections `d_proj` (same layout as `proj`)
    /// from the d activations of the first `used` rows.
    fn expert_act_bwd(
        &self,
        d_proj: DevPtr,
        d_act: DevPtr,
        proj: DevPtr,
        used: usize,
    ) -> Result<()> {
        let (dt, hidden, ld) = (self.dt, self.dims.hidden, self.dims.halves.ld);
        let shape = self.expert_shape();
        let (gin, uin) = shape.act_inputs(proj, dt);
        let (dg, du) = shape.act_inputs(d_proj, dt);
        let module = self.kernels.launcher();
        if let Some(c) = &self.moe.clamp {
            return act_clamped_bwd(module, dt, c, dg, du, d_act, gin, uin, used, hidden, ld);
        }
        let kind = Act::from(self.moe.expert.activation);
        act_bwd(module, dt, kind, dg, du, d_act, gin, uin, used, hidden, ld)
    }

    fn shared_shape(&self) -> MlpShape {
        MlpShape {
            hidden: self.dims.shared_hidden,
            halves: self.dims.shared_halves,
            ..self.expert_shape()
        }
    }

    /// `(start, count)` per expert from the saved offsets (one host read: synchronises).
    fn read_offsets(&self, saved: DevPtr) -> Result<(Vec<usize>, Vec<usize>)> {
        let e = self.dims.experts;
        // SAFETY: the offsets region of the caller's `saved` buffer, 2e i32 written by forward.
        let bytes = unsafe {
            self.kernels
                .gpu()
                .download_raw(at(saved, self.saved.offsets), 2 * e * 4)?
        };
        let v: Vec<usize> = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize)
            .collect();
        let (start, count) = v.split_at(e);
        Ok((start.to_vec(), count.to_vec()))
    }

    /// Rows of the dispatched layout in use (up to the last expert's last row).
    fn used_rows(start: &[usize], count: &[usize]) -> usize {
        start
            .iter()
            .zip(count)
            .map(|(s, c)| s + c)
            .max()
            .unwrap_or(0)
    }

    /// Reads back the routing that the last forward wrote into `saved` (synchronises).
    pub fn routing(&self, saved: DevPtr) -> Result<MoeRouting> {
        self.check_regions(&[("saved", saved)])?;
        let gpu = self.kernels.gpu();
        let s = self.dims.slots;
        // SAFETY: regions of the caller's `saved` buffer, written by forward.
        let (ex, w) = unsafe {
            (
                gpu.download_raw(at(saved, self.saved.expert), s * 4)?,
                gpu.download_raw(at(saved, self.saved.weight), s * 4)?,
            )
        };
        let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
        Ok(MoeRouting {
            experts: ex
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(word(b)).max(0) as usize)
                .collect(),
            weights: w
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(word(b)))
                .collect(),
            counts: self.read_offsets(saved)?.1,
        })
    }

    /// x: `[rows, d_model]` normed input (compute dtype); out: `[rows, d_model]` (written).
    /// `w(name)` gives the device pointer of parameter `layers.{i}.{name}` in the compute dtype
    /// (0 if absent). The aux loss (if the spec has one), already multiplied by its coefficient, is
    /// added to `aux_loss` (an f32 device scalar) by the spec's last MoE layer with an aux loss,
    /// from the statistics that every such layer's forward of this step wrote (so run them in
    /// layer order). Pass `aux_loss = 0` to skip the aux statistics (evaluation, or recomputing a
    /// layer in backward: recomputing with the pointer rewrites the same statistics, but the last
    /// layer would add the loss a second time).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gemm: &Gemm,
        w: &dyn Fn(&str) -> DevPtr,
        x: DevPtr,
        out: DevPtr,
        saved: DevPtr,
        scratch: DevPtr,
        aux_loss: DevPtr,
    ) -> Result<()> {
        self.check_regions(&[
            ("x", x),
            ("out", out),
            ("saved", saved),
            ("scratch", scratch),
        ])?;
        let (dims, dt, k, i) = (&self.dims, self.dt, &self.kernels, self.layer);
        let (n, d, e, topk) = (dims.rows, dims.d, dims.experts, dims.top_k);
        let sv = |off| at(saved, off);
        let fw = |off| at(scratch, off);
        let mm = Mm { gemm, dt, k };
        // 1. Router logits, f32.
        let wr = need(w, i, "moe.router.weight")?;
        mm.linear_f32(n, e, d, x, wr, sv(self.saved.logits))?;
        // 2. Routing (the router bias joins the logits there).
        let aux = self.aux.as_ref().filter(|_| aux_loss != 0);
        let cfg = self.route_cfg(w)?;
        let probs = if aux.is_some() { fw(self.fwd.probs) } else { 0 };
        let (expert, weight, row) = (
            sv(self.saved.expert),
            sv(self.saved.weight),
            sv(self.saved.row),
        );
        k.route(
            dt,
            &cfg,
            sv(self.saved.logits),
            n,
            e,
            topk,
            expert,
            weight,
            probs,
        )?;
        // 3. Permutation.
        let offsets = sv(self.saved.offsets);
        k.permute(
            expert,
            dims.slots,
            e,
            fw(self.fwd.rank),
            fw(self.fwd.hist),
            offsets,
            row,
        )?;
        if let Some(a) = aux {
            let members = a.shared.members.lock().unwrap_or_else(|e| e.into_inner());
            if members.len() != a.layers.len() {
                return Err(bad(
                    i,
                    format!(
                        "the aux loss spans layers {:?} but only {:?} share statistics: build the layers with MoeLayer::new_all or share_aux_stats",
                        a.layers, *members
                    ),
                ));
            }
            let stats = a.shared.stats.ptr();
            k.aux_stats(probs, offsets, n, e, stats + (a.slot * 2 * e * 4) as u64)?;
            if a.layers.last() == Some(&i) {
                k.aux_loss(stats, a.layers.len(), e, a.scale, aux_loss, 0)?;
            }
        }
        // The per-expert row counts size the expert GEMMs (see the module docs).
        let (start, count) = self.read_offsets(saved)?;
        let used = Self::used_rows(&start, &count);
        let expert_in = fw(self.fwd.expert_in);
        let (in_w, out_w) = if self.input_weighted() {
            (weight, 0)
        } else {
            (0, weight)
        };
        k.gather(dt, expert_in, x, row, in_w, dims.slots, topk, d)?;
        // 4. Routed experts.
        let shape = self.expert_shape();
        let (proj, act, eo) = (
            sv(self.saved.proj),
            fw(self.fwd.act),
            sv(self.saved.expert_out),
        );
        let mut weights = Vec::with_capacity(e);
        for ex in 0..e {
            let p = shape.params(w, i, &format!("moe.experts.{ex}"), dims.elem, true)?;
            weights.push(p);
        }
        let block = |ex: usize| MlpRows {
            r0: start[ex],
            rows: count[ex],
            x: expert_in,
            proj,
            act,
            out: eo,
        };
        for (ex, p) in weights.iter().enumerate() {
            if count[ex] > 0 {
                shape.project(&mm, p, &block(ex))?;
            }
        }
        self.expert_act(proj, act, used)?;
        for (ex, p) in weights.iter().enumerate() {
            if count[ex] > 0 {
                shape.down(&mm, p, &block(ex))?;
            }
        }
        // 5. Shared experts.
        let (mut so, mut glogit) = (0, 0);
        if dims.has_shared() {
            let sh = self.shared_shape();
            let p = sh.params(w, i, "moe.shared", dims.elem, true)?;
            so = if dims.shared_gate {
                sv(self.saved.shared_out)
            } else {
                fw(self.fwd.shared_out)
            };
            let rows = MlpRows {
                r0: 0,
                rows: n,
                x,
                proj: sv(self.saved.shared_proj),
                act: fw(self.fwd.shared_act),
                out: so,
            };
            sh.project(&mm, &p, &rows)?;
            let (gin, uin) = sh.act_inputs(rows.proj, dt);
            act_fwd(
                k.launcher(),
                dt,
                Act::from(self.moe.expert.activation),
                rows.act,
                gin,
                uin,
                n,
                dims.shared_hidden,
                dims.shared_halves.ld,
            )?;
            sh.down(&mm, &p, &rows)?;
            if dims.shared_gate {
                glogit = sv(self.saved.gate_logit);
                let wg = need(w, i, "moe.shared_gate.weight")?;
                k.rowdot(dt, glogit, x, wg, n, d)?;
            }
        }
        // 6. Combine.
        k.combine(dt, out, eo, out_w, row, n, topk, d, so, glogit)
    }
}
