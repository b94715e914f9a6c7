//! Inference on the GPU with a key/value cache: a forward-only executor for decoding. A batch of
//! sequences is prefilled with its prompts, then extended by one token per sequence per step;
//! each call leaves the logits of every sequence's last position on the device, downloaded for
//! host sampling ([`GpuDecoder::logits`]) or reduced to the greedy choice on the device
//! ([`GpuDecoder::argmax`]). [`GpuDecoder::decode`] is the CPU's [`crate::exec::Executor::decode`]
//! on the GPU: one sequence, the window to condition on, its last position's logits.
//!
//! Each layer runs its program's named fusions ([`crate::program::LayerProgram::kernels`]) on
//! the call's new rows, in the layer's own configuration; `layer` holds the launch sequence of
//! each fusion. What differs from a training step is that rows are not whole sequences: row r
//! belongs to sequence `seq[r]` at position `pos[r]`, so the token embedding (learned positions)
//! and RoPE read each row's own position, and attention appends the rows' keys (after qk-norm and
//! RoPE) and values to the layer's cache (`[batch, kv_heads, capacity, head_dim]`, compute dtype)
//! and then attends from each row over its sequence's cached positions (`kernels/decode.cu`:
//! GQA, sliding windows, score softcap, ALiBi, the layer's scale). Norms, GEMMs (cuBLASLt),
//! activations and the residual adds are the trainer's kernels; mixture-of-experts layers run
//! `cuda::moe` on the call's rows; latent attention layers (DeepSeek-V2/V3, `mla`) cache the
//! normalised latent and the rotated shared key per position and expand them into per-head keys
//! and values for each call, as the CPU decoder does. The final norm and the classifier run on each sequence's last
//! row only; the final logit softcap is applied as the logits become f32.
//!
//! In f32 the logits equal the CPU decoder's up to the order of float sums
//! (`runtime/tests/cuda_decode.rs` holds them to 1e-4 relative at every step). Specs the GPU
//! trainer refuses ([`GpuTrainer::unsupported_feature`]) are refused here with its reason.
//!
//! ```no_run
//! use modelspec_runtime::cuda::{Dtype, Gpu, decode::GpuDecoder};
//! # fn demo(spec: &modelspec_dsl::ModelSpec, params: &modelspec_runtime::Params)
//! #     -> Result<(), modelspec_runtime::cuda::decode::DecodeError> {
//! let gpu = Gpu::new(0)?;
//! let mut dec = GpuDecoder::new(&gpu, spec, Dtype::F32, params, 2, 64)?;
//! dec.prefill(&[&[1, 2, 3], &[4, 5]])?;
//! let mut next = dec.argmax(spec.vocab as usize)?;
//! for _ in 0..10 {
//!     dec.step(&next)?;
//!     next = dec.argmax(spec.vocab as usize)?;
//! }
//! # Ok(()) }
//! ```

mod arena;
mod kernels;
mod layer;
mod mla;
mod sample;
mod walk;
mod weights;

use std::collections::BTreeMap;
use std::sync::Arc;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::ir::Ffn;
use thiserror::Error;

use super::error::CudaError;
use super::gemm::{Gemm, RowMajorGemm};
use super::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use super::layer::PositionTables;
use super::moe::MoeLayer;
use super::ops::Kernels;
use super::train::GpuTrainer;
use crate::ops::rope::inv_freq;
use crate::program::LayerProgram;
use crate::tensor::ParamSource;
use arena::{Acts, Cache, RopeSlot, Widths};
use kernels::{DecodeKernels, Rows};
pub use kernels::{KERNEL_NAMES, kernel_source};
use layer::LayerPlan;
use weights::Weights;

/// Why GPU decoding failed.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The CUDA side failed (no device, a compile error, a launch).
    #[error(transparent)]
    Cuda(#[from] CudaError),
    /// The input is not valid for the spec, exactly as the CPU executor says (a token outside
    /// the vocabulary, a window past the context, a missing or misshapen parameter).
    #[error(transparent)]
    Input(#[from] crate::Error),
    /// What the GPU decoder does not do, and what to do instead.
    #[error("GPU decoding: {0}")]
    Unsupported(String),
}

/// The result type of GPU decoding.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Per-sequence output buffers of a call (`batch` rows).
struct Head {
    /// Each sequence's last row, gathered `[batch, d]`.
    last: GpuBuf<u8>,
    /// After the final norm `[batch, d]`.
    normed: GpuBuf<u8>,
    /// Row stride of the two logits buffers: `vocab_padded` rounded up to 64
    /// ([`modelspec_dsl::codegen::logits_stride`], as the trainer's logits chunk), so that every
    /// row starts aligned for cuBLASLt; columns past `vocab_padded` stay zero.
    ld: usize,
    /// Classifier output `[batch, ld]` in the compute dtype.
    logits: GpuBuf<u8>,
    /// After the final softcap, f32 `[batch, ld]`.
    logits_f32: GpuBuf<f32>,
    /// Greedy choices `[batch]`.
    argmax: GpuBuf<i32>,
}

/// A decoder on one GPU: the spec's weights in the compute dtype, a key/value cache for `batch`
/// sequences of up to `capacity` positions, and the work buffers of a call (see the module docs).
pub struct GpuDecoder {
    gpu: Arc<Gpu>,
    k: Kernels,
    dk: DecodeKernels,
    gemm: Arc<Gemm>,
    spec: ModelSpec,
    dt: Dtype,
    layers: Vec<LayerPlan>,
    widths: Widths,
    w: Weights,
    ropes: Vec<RopeSlot>,
    /// ALiBi slopes, one buffer per distinct head count.
    alibi: Vec<GpuBuf<f32>>,
    cache: Cache,
    acts: Option<Acts>,
    /// Row metadata of a call: `[tok; seq; pos]` of its rows, then each sequence's last row.
    meta: GpuBuf<i32>,
    /// Mixture-of-experts blocks by the row count they were built for.
    moe: BTreeMap<usize, Vec<Option<MoeLayer>>>,
    head: Head,
    /// Whether the head buffers hold a call's logits.
    has_logits: bool,
}

/// What one call's launches read: the decoder's kernels, weights, buffers and the rows.
struct Pass<'a> {
    k: &'a Kernels,
    dk: &'a DecodeKernels,
    gemm: &'a Gemm,
    w: &'a Weights,
    acts: &'a Acts,
    cache: &'a Cache,
    ropes: &'a [RopeSlot],
    alibi: &'a [GpuBuf<f32>],
    moe: &'a [Option<MoeLayer>],
    rows: Rows,
    /// Positions the longest sequence holds after this call (latent attention expands its
    /// cache up to there).
    used: usize,
    dt: Dtype,
    /// Bytes per element of `dt`.
    es: u64,
    d: usize,
}

fn unsupported(why: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported(why.into())
}

impl GpuDecoder {
    /// Why the GPU decoder cannot run `spec` (what the GPU trainer refuses, with its reason, and
    /// any activation of a layer's program that no decode launch sequence computes), or `None`.
    pub fn unsupported_feature(spec: &ModelSpec) -> Option<String> {
        GpuTrainer::unsupported_feature(spec).or_else(|| {
            spec.layers
                .iter()
                .find_map(|l| layer::unsupported_layer(&LayerProgram::structure(l)))
        })
    }

    /// A decoder for `batch` sequences of up to `capacity` positions each (at most the spec's
    /// context where it has one), computing in `dt`, with `params` (canonical names, f32) on the
    /// device.
    pub fn new(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        params: &dyn ParamSource<f32>,
        batch: usize,
        capacity: usize,
    ) -> Result<GpuDecoder> {
        if let Some(why) = Self::unsupported_feature(spec) {
            return Err(unsupported(format!(
                "`{}` uses {why}, which the GPU does not run yet",
                spec.name
            )));
        }
        // The CPU's checks of the spec itself (sizes, divisibility).
        crate::exec::Executor::new(spec)?;
        if batch == 0 || capacity == 0 {
            return Err(unsupported(format!(
                "a decoder needs at least one sequence and one position (batch {batch}, capacity {capacity})"
            )));
        }
        let capacity = spec
            .max_sequence()
            .map_or(capacity, |max| capacity.min(max as usize));
        let k = Kernels::for_spec(gpu, spec)?;
        let dk = DecodeKernels::load(gpu)?;
        let gemm = gpu.gemm()?;
        let tables = PositionTables::new(gpu, spec)?;
        let mut ropes = Vec::with_capacity(tables.ropes.len());
        for r in &tables.ropes {
            ropes.push(RopeSlot::new(gpu, r, 1, capacity)?);
        }
        let layers: Vec<LayerPlan> = (0..spec.layers.len())
            .map(|i| LayerPlan::new(spec, i, tables.rope_of[i], tables.alibi_of[i]))
            .collect();
        let alibi = tables.alibi;
        let es = dt.bytes();
        let d = spec.d_model as usize;
        let widths = Widths::of(&layers, d);
        let w = Weights::upload(gpu, spec, dt, params)?;
        gpu.check_fits(Cache::bytes_for(&layers, batch, capacity, es))?;
        let cache = Cache::new(gpu, &layers, batch, capacity, es)?;
        let ld = modelspec_dsl::codegen::logits_stride(spec.vocab_padded) as usize;
        let head = Head {
            last: gpu.zeros::<u8>(batch * d * es)?,
            normed: gpu.zeros::<u8>(batch * d * es)?,
            ld,
            logits: gpu.zeros::<u8>(batch * ld * es)?,
            logits_f32: gpu.zeros::<f32>(batch * ld)?,
            argmax: gpu.zeros::<i32>(batch)?,
        };
        let mut dec = GpuDecoder {
            gpu: gpu.clone(),
            k,
            dk,
            gemm,
            spec: spec.clone(),
            dt,
            layers,
            widths,
            w,
            ropes,
            alibi,
            cache,
            acts: None,
            meta: gpu.zeros::<i32>(1)?,
            moe: BTreeMap::new(),
            head,
            has_logits: false,
        };
        // A step's buffers now: an unsupported MoE size or too little memory fails here.
        dec.ensure_rows(batch)?;
        Ok(dec)
    }

    /// Sequences per call.
    pub fn batch(&self) -> usize {
        self.cache.batch
    }

    /// Positions each sequence may hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity
    }

    /// Positions cached per sequence.
    pub fn lens(&self) -> &[usize] {
        &self.cache.lens
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Dtype {
        self.dt
    }

    /// Device bytes held: weights, cache, work buffers.
    pub fn device_bytes(&self) -> usize {
        self.w.bytes() + self.cache.bytes + self.acts.as_ref().map_or(0, |a| a.bytes)
    }

    /// Replaces the weights (canonical names, f32) and forgets every cached sequence.
    pub fn set_params(&mut self, params: &dyn ParamSource<f32>) -> Result<()> {
        self.w = Weights::upload(&self.gpu, &self.spec, self.dt, params)?;
        self.reset();
        Ok(())
    }

    /// Forgets every cached sequence.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.has_logits = false;
    }

    /// Starts over with one prompt per sequence (`batch` non-empty prompts, lengths may differ):
    /// afterwards the logits are those of each prompt's last position.
    pub fn prefill(&mut self, prompts: &[&[u32]]) -> Result<()> {
        self.reset();
        self.extend(prompts)
    }

    /// Appends one token to each sequence (`batch` tokens).
    pub fn step(&mut self, tokens: &[u32]) -> Result<()> {
        let rows: Vec<&[u32]> = tokens.iter().map(std::slice::from_ref).collect();
        self.extend(&rows)
    }

    /// Appends `new[b]` (non-empty) to sequence b for every sequence: their keys and values join
    /// the cache, and the logits become those of each sequence's new last position.
    pub fn extend(&mut self, new: &[&[u32]]) -> Result<()> {
        let lens = self.check_new(new)?;
        self.prepare_ropes(&lens)?;
        let rows: usize = new.iter().map(|s| s.len()).sum();
        self.ensure_rows(rows)?;
        // Row metadata: [tok; seq; pos] per row, then each sequence's last row.
        let mut meta = vec![0i32; 3 * rows + new.len()];
        let mut r = 0;
        for (b, ids) in new.iter().enumerate() {
            let p0 = self.cache.lens[b];
            for (j, &t) in ids.iter().enumerate() {
                meta[r] = t as i32;
                meta[rows + r] = b as i32;
                meta[2 * rows + r] = (p0 + j) as i32;
                r += 1;
            }
            meta[3 * rows + b] = (r - 1) as i32;
        }
        self.gpu.write(&mut self.meta, &meta)?;
        self.has_logits = false;
        self.run(rows, lens.iter().copied().max().unwrap_or(0))?;
        for (b, ids) in new.iter().enumerate() {
            self.cache.lens[b] = lens[b];
            self.cache.tokens[b].extend_from_slice(ids);
        }
        self.has_logits = true;
        Ok(())
    }

    /// The logits `[batch, vocab_padded]` (f32, after the final softcap) of each sequence's last
    /// position after the last call (synchronises).
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.need_logits()?;
        let rows = self.gpu.download(&self.head.logits_f32)?;
        let vp = self.spec.vocab_padded as usize;
        Ok(rows
            .chunks(self.head.ld)
            .flat_map(|row| &row[..vp])
            .copied()
            .collect())
    }

    /// Each sequence's most likely next id among the first `vocab` (ties to the lower id, as the
    /// host sampler's greedy pick), computed on the device (synchronises).
    pub fn argmax(&self, vocab: usize) -> Result<Vec<u32>> {
        self.need_logits()?;
        let vp = self.spec.vocab_padded as usize;
        let v = vocab.clamp(1, vp);
        self.dk.argmax(
            self.head.argmax.ptr(),
            self.head.logits_f32.ptr(),
            self.cache.batch,
            v,
            self.head.ld,
        )?;
        let ids = self.gpu.download(&self.head.argmax)?;
        Ok(ids.into_iter().map(|i| i.max(0) as u32).collect())
    }

    /// [`crate::exec::Executor::decode`] on the GPU (a decoder of batch 1): the logits
    /// `[vocab_padded]` of the last position of `window`. When the cache holds a prefix of the
    /// window, only the new ids run; otherwise (a new prompt, a window that slid, a RoPE whose
    /// frequencies changed with the length) it starts over. The capacity grows as needed.
    pub fn decode(&mut self, window: &[u32]) -> Result<Vec<f32>> {
        if self.cache.batch != 1 {
            return Err(unsupported(format!(
                "decode(window) runs one sequence; this decoder has {}: use prefill and step",
                self.cache.batch
            )));
        }
        if window.is_empty() {
            return Err(crate::Error::BadBatch {
                tokens: 0,
                batch: 1,
            }
            .into());
        }
        let len = window.len();
        self.check_length(len)?;
        if len > self.cache.capacity {
            let max = self.spec.max_sequence().map_or(usize::MAX, |m| m as usize);
            self.grow(len.max(2 * self.cache.capacity).min(max))?;
        }
        let cached = self.cache.lens[0];
        let reuse = cached > 0
            && cached < len
            && window.starts_with(&self.cache.tokens[0])
            && !self.ropes_stale(len);
        if !reuse {
            self.reset();
        }
        let p0 = self.cache.lens[0];
        self.extend(&[&window[p0..]])?;
        self.logits()
    }

    /// A new, empty cache of `capacity` positions per sequence.
    fn grow(&mut self, capacity: usize) -> Result<()> {
        let es = self.dt.bytes();
        // Frees the old cache before allocating the new one.
        self.cache = Cache::new(&self.gpu, &[], 1, 1, es)?;
        self.cache = Cache::new(&self.gpu, &self.layers, 1, capacity, es)?;
        self.has_logits = false;
        Ok(())
    }

    fn need_logits(&self) -> Result<()> {
        if self.has_logits {
            Ok(())
        } else {
            Err(unsupported(
                "no logits yet: call prefill, step, extend or decode first",
            ))
        }
    }

    /// `len` positions against the spec's context, as the CPU checks a window.
    fn check_length(&self, len: usize) -> Result<()> {
        if self.spec.max_sequence().is_some_and(|max| len as u64 > max) {
            return Err(crate::Error::SequenceTooLong {
                seq: len,
                context: self.spec.context,
            }
            .into());
        }
        Ok(())
    }

    /// Checks a call's new ids; returns each sequence's length after it.
    fn check_new(&self, new: &[&[u32]]) -> Result<Vec<usize>> {
        let batch = self.cache.batch;
        if new.len() != batch {
            return Err(unsupported(format!(
                "{} sequences given to a decoder of batch {batch}",
                new.len()
            )));
        }
        let mut lens = Vec::with_capacity(batch);
        for (b, ids) in new.iter().enumerate() {
            if ids.is_empty() {
                return Err(unsupported(format!(
                    "sequence {b} has no new ids: every sequence takes at least one per call"
                )));
            }
            if let Some((j, &token)) = ids
                .iter()
                .enumerate()
                .find(|(_, t)| u64::from(**t) >= self.spec.vocab)
            {
                return Err(crate::Error::TokenOutOfRange {
                    token,
                    position: self.cache.lens[b] + j,
                    vocab: self.spec.vocab,
                }
                .into());
            }
            let len = self.cache.lens[b] + ids.len();
            self.check_length(len)?;
            if len > self.cache.capacity {
                return Err(unsupported(format!(
                    "sequence {b} would hold {len} positions; the cache holds {} (build the decoder with a larger capacity)",
                    self.cache.capacity
                )));
            }
            lens.push(len);
        }
        Ok(lens)
    }

    /// Whether a table must change for windows of `len` positions while keys rotated with the
    /// old one are cached.
    fn ropes_stale(&self, len: usize) -> bool {
        self.ropes.iter().any(|s| inv_freq(&s.rope, len) != s.freqs)
    }

    /// Makes every RoPE table serve the sequences' new lengths `lens` (the CPU derives the
    /// frequencies from each window's length: they must agree across the batch, and with the
    /// cached keys').
    fn prepare_ropes(&mut self, lens: &[usize]) -> Result<()> {
        let longest = lens.iter().copied().max().unwrap_or(1);
        let cached = self.cache.lens.iter().any(|&l| l > 0);
        for slot in &mut self.ropes {
            let want = inv_freq(&slot.rope, longest);
            if lens.iter().any(|&l| inv_freq(&slot.rope, l) != want) {
                return Err(unsupported(
                    "these sequences' lengths give their RoPE different frequencies (dynamic NTK or LongRoPE past the pretraining context): decode them one at a time",
                ));
            }
            if slot.serves(longest) {
                continue;
            }
            if want != slot.freqs && cached {
                return Err(unsupported(
                    "the RoPE frequencies change at this length (dynamic NTK or LongRoPE past the pretraining context), so the cached keys are stale: prefill again",
                ));
            }
            *slot = RopeSlot::new(&self.gpu, &slot.rope, longest, self.cache.capacity)?;
        }
        Ok(())
    }

    /// Work buffers and mixture-of-experts blocks for calls of `rows` rows.
    fn ensure_rows(&mut self, rows: usize) -> Result<()> {
        if !self.moe.contains_key(&rows) {
            if self.moe.len() >= 8 {
                self.moe.clear();
            }
            let mut blocks = Vec::with_capacity(self.layers.len());
            for (i, l) in self.spec.layers.iter().enumerate() {
                blocks.push(match l.ffn {
                    Ffn::Moe(_) => Some(MoeLayer::new(&self.gpu, &self.spec, i, rows, self.dt)?),
                    Ffn::Mlp(_) => None,
                });
            }
            self.moe.insert(rows, blocks);
        }
        let moe_bytes = self.moe[&rows].iter().flatten().fold((0, 0), |acc, m| {
            (acc.0.max(m.saved_bytes()), acc.1.max(m.scratch_bytes()))
        });
        let fits = self.acts.as_ref().is_some_and(|a| {
            a.rows >= rows && a.moe_saved_bytes >= moe_bytes.0 && a.moe_scratch_bytes >= moe_bytes.1
        });
        if !fits {
            let cap = rows.max(self.acts.as_ref().map_or(0, |a| a.rows));
            self.acts = None;
            let acts = Acts::new(&self.gpu, cap, &self.widths, self.dt.bytes(), moe_bytes)?;
            self.acts = Some(acts);
            self.meta = self.gpu.zeros::<i32>(3 * cap + self.cache.batch)?;
        }
        Ok(())
    }

    /// Embedding, every layer's fusions and the head on `rows` rows (metadata written).
    fn run(&self, rows: usize, used: usize) -> Result<()> {
        let acts = self
            .acts
            .as_ref()
            .ok_or_else(|| unsupported("no work buffers"))?;
        let meta = self.meta.ptr();
        let pass = Pass {
            k: &self.k,
            dk: &self.dk,
            gemm: &self.gemm,
            w: &self.w,
            acts,
            cache: &self.cache,
            ropes: &self.ropes,
            alibi: &self.alibi,
            moe: &self.moe[&rows],
            rows: Rows {
                n: rows,
                tok: meta,
                seq: meta + (rows * 4) as u64,
                pos: meta + (2 * rows * 4) as u64,
            },
            used,
            dt: self.dt,
            es: self.dt.bytes() as u64,
            d: self.spec.d_model as usize,
        };
        let spec = &self.spec;
        self.dk.embed(
            self.dt,
            acts.x,
            &pass.rows,
            self.w.w("embed.weight")?,
            self.w.wo("pos_embed.weight"),
            pass.d,
            spec.embedding.scale as f32,
        )?;
        for l in &self.layers {
            for kernel in &l.kernels {
                pass.run(l, kernel)?;
            }
            pass.output(l)?;
        }
        self.head(&pass, meta + (3 * rows * 4) as u64)
    }

    /// Final norm, classifier and softcap on each sequence's last row (`last`: their indices).
    fn head(&self, pass: &Pass<'_>, last: DevPtr) -> Result<()> {
        let (dt, d, batch) = (self.dt, pass.d, self.cache.batch);
        let spec = &self.spec;
        let vp = spec.vocab_padded as usize;
        // A step's rows are the sequences' last rows already, in order.
        let x = if pass.rows.n == batch {
            pass.acts.x
        } else {
            self.dk
                .gather(dt, self.head.last.ptr(), pass.acts.x, last, batch, d)?;
            self.head.last.ptr()
        };
        let norm = spec
            .final_norm
            .ok_or_else(|| unsupported("a spec without a final norm"))?;
        self.k.norm_fwd(
            dt,
            norm.kind,
            self.head.normed.ptr(),
            0,
            pass.acts.rstd,
            pass.acts.mean,
            x,
            0,
            self.w.wo("final_norm.weight"),
            self.w.wo("final_norm.bias"),
            batch,
            d,
            norm.eps as f32,
            norm.offset as f32,
        )?;
        let classifier = if spec.embedding.tied {
            self.w.w("embed.weight")?
        } else {
            self.w.w("lm_head.weight")?
        };
        let g = RowMajorGemm {
            ldc: self.head.ld,
            ..RowMajorGemm::linear(batch, vp, d)
        };
        // SAFETY: the head's buffers hold `batch` rows of d and of ld >= vp; the classifier is
        // [vp, d].
        unsafe {
            self.gemm.linear_as(
                dt,
                &g,
                self.head.normed.ptr(),
                classifier,
                self.w.wo("lm_head.bias"),
                self.head.logits.ptr(),
            )
        }?;
        let softcap = spec.logits.softcap.unwrap_or(0.0) as f32;
        // Whole rows of ld: the padding columns are zeros the GEMM never writes.
        self.dk.logits(
            dt,
            self.head.logits_f32.ptr(),
            self.head.logits.ptr(),
            batch * self.head.ld,
            softcap,
        )?;
        Ok(())
    }
}
