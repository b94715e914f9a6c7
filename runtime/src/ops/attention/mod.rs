//! Causal scaled-dot-product attention with grouped kv heads, sliding window or chunks, score
//! softcap, ALiBi, attention sinks, a per-position query temperature and dropout on the
//! probabilities.
//!
//! For a query at position `i` and a key at `j` (same sequence), head `h` of kv group
//! `g = h / (heads / kv_heads)`:
//! ```text
//! s_ij = scale · (τ_i q_i · k_j + alibi_h(j))        alibi: Falcon's order, bias before the scale
//! s_ij = softcap · tanh(s_ij / softcap)              when softcap is set (Gemma-2)
//! visible iff j ≤ i and (no window or i − window < j)   (HF's sliding window)
//!             and (no chunk or ⌊j / chunk⌋ = ⌊i / chunk⌋)  (Llama 4's chunked attention)
//! p_i  = softmax_j(s_ij)   over visible keys, plus the sink logit σ_h in the denominator:
//!        p_ij = e^{s_ij} / (e^{σ_h} + Σ_j' e^{s_ij'})   (GPT-OSS; the sink has no value)
//! p̃ = dropout(p);   o_i  = Σ_j p̃_ij v_j
//! ```
//! `τ_i` is the query temperature of Llama 4's NoPE layers (1 without it). The gradient of a
//! sink is `dσ_h = −Σ_i p_i,sink · Σ_j p_ij dp_ij`: the sink takes part in the softmax with an
//! upstream gradient of 0.
//! `q: [batch·seq, heads·head_dim]`, `k: [batch·seq, kv_heads·head_dim]`, `v: [batch·seq,
//! kv_heads·v_head_dim]`, `o: [batch·seq, heads·v_head_dim]` (heads side by side in a row, as the
//! projections produce them; the value width is the head width except in latent attention). Scores and probabilities are formed per (sequence,
//! head) with gemm, in parallel over (sequence, head) with rayon; backward recomputes them from
//! q and k (as flash attention does), so nothing of size seq² is kept between passes.

pub(crate) mod cuda;

use rayon::prelude::*;

use modelspec_dsl::ir::QueryTemperature;

use super::dropout::Dropout;
use super::matmul::{matmul_raw, serial_gemms};
use crate::tensor::Float;

/// Shape and options of one attention call.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionCfg {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Multiplier on q·k.
    pub scale: f64,
    /// Score softcap.
    pub softcap: Option<f64>,
    /// Sliding window (keys `i − window < j ≤ i`).
    pub window: Option<usize>,
    /// Per-head ALiBi slopes (see [`alibi_slopes`]), bias `slope · j` added before the scale.
    pub alibi: Option<Vec<f64>>,
    /// Dropout on the probabilities (training only).
    pub dropout: Option<Dropout>,
    /// Chunked attention: keys of the query's own chunk of `chunk` positions only.
    pub chunk: Option<usize>,
    /// Per-head sink logits (`[heads]`) that join each softmax's denominator.
    pub sinks: Option<Vec<f64>>,
    /// The query temperature `τ_i`, by absolute position.
    pub temperature: Option<QueryTemperature>,
    /// Width of one value head when it differs from `head_dim` (latent attention's `v_dim`);
    /// `None`: `head_dim`. `v` is then `[batch·seq, kv_heads·v_head_dim]` and the output
    /// `[batch·seq, heads·v_head_dim]`.
    pub v_head_dim: Option<usize>,
}

/// ALiBi slopes as HF's `build_alibi_tensor`: the geometric sequence for the closest power of two,
/// then every other slope of the next power of two for the remaining heads. HF rounds the slopes
/// to bfloat16; so does this.
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest).map(|p| base.powi(p as i32)).collect();
    if closest != heads {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let remaining = (heads - closest).min(closest);
        slopes.extend((0..remaining).map(|i| extra_base.powi((1 + 2 * i) as i32)));
    }
    slopes
        .into_iter()
        .map(|s| round_bf16(s as f32) as f64)
        .collect()
}

/// Rounds to the nearest bfloat16 (ties to even), as `tensor.bfloat16()` does.
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(rounded)
}

/// The ALiBi bias of head slope `slope` at key position `j`: HF computes `slope_bf16 · j` in
/// bfloat16.
#[inline]
fn alibi_bias(slope: f64, j: usize) -> f64 {
    round_bf16(slope as f32 * j as f32) as f64
}

/// A raw pointer that may cross threads: tasks write disjoint blocks through it.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

impl AttentionCfg {
    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Width of one value head.
    fn vd(&self) -> usize {
        self.v_head_dim.unwrap_or(self.head_dim)
    }
    /// Width of the output: heads × value width.
    fn out_dim(&self) -> usize {
        self.heads * self.vd()
    }
    /// Width of `v`: kv heads × value width.
    fn kv_v_dim(&self) -> usize {
        self.kv_heads * self.vd()
    }
    #[inline]
    fn first_visible(&self, i: usize) -> usize {
        let window = match self.window {
            Some(w) => (i + 1).saturating_sub(w),
            None => 0,
        };
        match self.chunk {
            Some(c) => window.max(i / c * c),
            None => window,
        }
    }

    /// The query multiplier `τ` at absolute position `i` (1 without a temperature).
    #[inline]
    fn tau<T: Float>(&self, i: usize) -> Option<T> {
        self.temperature.map(|t| T::from_f64(t.factor(i as u64)))
    }

    /// Row blocks `[r0, r1)` of the score matrix with the first column `c0` any of their rows can
    /// see; only the `[r0, r1) × [c0, r1)` part is ever formed (causal and window masks skip the
    /// rest, about half the work at long sequences).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.seq.div_ceil(BLOCK)).map(move |blk| {
            let r0 = blk * BLOCK;
            let r1 = (r0 + BLOCK).min(self.seq);
            (r0, r1, self.first_visible(r0))
        })
    }

    /// Fills `probs` (`[seq, seq]`, row i: probabilities of query i), `capped` (the scores
    /// after scale and softcap) and, with sinks, `sink_p` (`[seq]`: each row's sink
    /// probability) for sequence `b`, head `h`. Entries outside the visible range of `probs` are
    /// 0; those of `capped` are unspecified.
    #[allow(clippy::too_many_arguments)]
    fn probabilities<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        b: usize,
        h: usize,
        capped: &mut [T],
        probs: &mut [T],
        sink_p: &mut [T],
    ) {
        let (t, hd, qd, kvd) = (self.seq, self.head_dim, self.q_dim(), self.kv_dim());
        let g = h / self.group();
        for (r0, r1, c0) in self.blocks() {
            // SAFETY: q and k are read-only and sized [batch·seq, q_dim] / [batch·seq, kv_dim];
            // the views stay inside sequence b, head h; `capped` is this task's own buffer.
            unsafe {
                matmul_raw(
                    r1 - r0,
                    r1 - c0,
                    hd,
                    capped.as_mut_ptr().add(r0 * t + c0),
                    t,
                    q.as_ptr().add((b * t + r0) * qd + h * hd),
                    qd,
                    1,
                    k.as_ptr().add((b * t + c0) * kvd + g * hd),
                    1,
                    kvd,
                    false,
                    T::ONE,
                );
            }
        }
        let scale = T::from_f64(self.scale);
        let cap = self.softcap.map(T::from_f64);
        let slope = self.alibi.as_ref().map(|s| s[h]);
        let sink = self.sinks.as_ref().map(|s| T::from_f64(s[h]));
        for i in 0..t {
            let lo = self.first_visible(i);
            // Separate passes over the visible span so the plain ones vectorise.
            let srow = &mut capped[i * t + lo..i * t + i + 1];
            if let Some(tau) = self.tau::<T>(i) {
                srow.iter_mut().for_each(|s| *s *= tau);
            }
            match slope {
                Some(slope) => {
                    for (j, s) in (lo..).zip(srow.iter_mut()) {
                        *s = (*s + T::from_f64(alibi_bias(slope, j))) * scale;
                    }
                }
                None => srow.iter_mut().for_each(|s| *s *= scale),
            }
            if let Some(c) = cap {
                srow.iter_mut().for_each(|s| *s = c * (*s / c).tanh());
            }
            let mut max = srow.iter().copied().fold(T::NEG_INF, T::max);
            if let Some(s) = sink {
                max = max.max(s);
            }
            let prow = &mut probs[i * t..(i + 1) * t];
            prow[..lo].fill(T::ZERO);
            prow[i + 1..].fill(T::ZERO);
            let visible = &mut prow[lo..=i];
            let mut sum = T::ZERO;
            for (p, &s) in visible.iter_mut().zip(srow.iter()) {
                let e = (s - max).exp();
                *p = e;
                sum += e;
            }
            let sink_e = sink.map(|s| (s - max).exp());
            if let Some(e) = sink_e {
                sum += e;
            }
            let inv = T::ONE / sum;
            visible.iter_mut().for_each(|p| *p *= inv);
            if let Some(e) = sink_e {
                sink_p[i] = e * inv;
            }
        }
    }

    /// Applies dropout to the visible entries of `probs` of sequence `b`, head `h` in place
    /// (element `(i, j)` keyed by its index in `[batch, heads, seq, seq]`).
    fn drop_probs<T: Float>(&self, probs: &mut [T], b: usize, h: usize) {
        if let Some(d) = &self.dropout {
            let t = self.seq;
            let base = ((b * self.heads + h) * t * t) as u64;
            let s = T::from_f64(1.0 / (1.0 - d.p));
            for i in 0..t {
                for j in self.first_visible(i)..=i {
                    let v = &mut probs[i * t + j];
                    *v = if d.keep(base + (i * t + j) as u64) {
                        *v * s
                    } else {
                        T::ZERO
                    };
                }
            }
        }
    }
}

/// Rows per block of the score matrix.
const BLOCK: usize = 64;

/// `out = attention(q, k, v)`, overwriting `out: [batch·seq, heads·v_head_dim]`.
pub fn forward<T: Float>(cfg: &AttentionCfg, q: &[T], k: &[T], v: &[T], out: &mut [T]) {
    let (t, qd, kvd) = (cfg.seq, cfg.q_dim(), cfg.kv_dim());
    let (vd, od, kvvd) = (cfg.vd(), cfg.out_dim(), cfg.kv_v_dim());
    assert_eq!(q.len(), cfg.batch * t * qd);
    assert_eq!(k.len(), cfg.batch * t * kvd);
    assert_eq!(v.len(), cfg.batch * t * kvvd);
    assert_eq!(out.len(), cfg.batch * t * od);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..cfg.batch * cfg.heads).into_par_iter().for_each_init(
        || (vec![T::ZERO; t * t], vec![T::ZERO; t * t], vec![T::ZERO; t]),
        |(capped, probs, sink_p), bh| {
            serial_gemms(|| {
                let (b, h) = (bh / cfg.heads, bh % cfg.heads);
                let g = h / cfg.group();
                cfg.probabilities(q, k, b, h, capped, probs, sink_p);
                cfg.drop_probs(probs, b, h);
                for (r0, r1, c0) in cfg.blocks() {
                    // SAFETY: task (b, h) alone writes rows of sequence b, columns of head h.
                    unsafe {
                        matmul_raw(
                            r1 - r0,
                            vd,
                            r1 - c0,
                            out_ptr.get().add((b * t + r0) * od + h * vd),
                            od,
                            probs.as_ptr().add(r0 * t + c0),
                            t,
                            1,
                            v.as_ptr().add((b * t + c0) * kvvd + g * vd),
                            kvvd,
                            1,
                            false,
                            T::ONE,
                        );
                    }
                }
            })
        },
    );
}

/// Attention of `m` new queries of one sequence, at positions `p0..p0 + m`, over the keys and
/// values of positions `0..p0 + m`: a decoder's cache (`k_past`, `v_past`: `[p0, kv_dim]`) then
/// the new rows (`k_new`, `v_new`: `[m, kv_dim]`); `q`, `out`: `[m, heads·head_dim]`. The masks, ALiBi bias (at the
/// keys' absolute positions), scale and softcap are those of [`forward`] for the whole sequence,
/// so row `r` equals row `p0 + r` of [`forward`] over all `p0 + m` positions (up to the order of
/// floating-point sums). `cfg.batch` must be 1; dropout is not applied (decoding is inference).
pub fn forward_cached<'a, T: Float>(
    cfg: &AttentionCfg,
    q: &[T],
    (k_past, k_new): (&'a [T], &'a [T]),
    (v_past, v_new): (&'a [T], &'a [T]),
    out: &mut [T],
) {
    let (hd, qd, kvd) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
    let (vd, od, kvvd) = (cfg.vd(), cfg.out_dim(), cfg.kv_v_dim());
    let m = q.len() / qd;
    let p0 = k_past.len() / kvd;
    assert_eq!(cfg.batch, 1);
    assert_eq!(q.len(), m * qd);
    assert_eq!(k_past.len(), p0 * kvd);
    assert_eq!(v_past.len(), p0 * kvvd);
    assert_eq!(k_new.len(), m * kvd);
    assert_eq!(v_new.len(), m * kvvd);
    assert_eq!(out.len(), m * od);
    // Row j of the whole sequence, kv head g, of heads `width` wide: in the cache or among the
    // new rows.
    let at = |past: &'a [T], new: &'a [T], j: usize, g: usize, width: usize| -> &'a [T] {
        let (rows, r) = if j < p0 { (past, j) } else { (new, j - p0) };
        let row = width * cfg.kv_heads;
        &rows[r * row + g * width..r * row + (g + 1) * width]
    };
    let scale = T::from_f64(cfg.scale);
    let cap = cfg.softcap.map(T::from_f64);
    // One task per (new row, head): a single decoded token still spreads over the heads.
    out.par_chunks_mut(vd)
        .enumerate()
        .for_each_init(Vec::new, |scores, (task, oh)| {
            let (r, h) = (task / cfg.heads, task % cfg.heads);
            let i = p0 + r;
            let lo = cfg.first_visible(i);
            let g = h / cfg.group();
            let qh = &q[r * qd + h * hd..r * qd + (h + 1) * hd];
            let slope = cfg.alibi.as_ref().map(|s| s[h]);
            let tau = cfg.tau::<T>(i);
            scores.clear();
            for j in lo..=i {
                let kh = at(k_past, k_new, j, g, hd);
                let mut s = qh.iter().zip(kh).fold(T::ZERO, |acc, (&a, &b)| acc + a * b);
                if let Some(tau) = tau {
                    s *= tau;
                }
                s = match slope {
                    Some(slope) => (s + T::from_f64(alibi_bias(slope, j))) * scale,
                    None => s * scale,
                };
                if let Some(c) = cap {
                    s = c * (s / c).tanh();
                }
                scores.push(s);
            }
            let sink = cfg.sinks.as_ref().map(|s| T::from_f64(s[h]));
            let mut max = scores.iter().copied().fold(T::NEG_INF, T::max);
            if let Some(s) = sink {
                max = max.max(s);
            }
            let mut sum = T::ZERO;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            if let Some(s) = sink {
                sum += (s - max).exp();
            }
            let inv = T::ONE / sum;
            oh.fill(T::ZERO);
            for (j, &e) in (lo..=i).zip(scores.iter()) {
                let p = e * inv;
                let vh = at(v_past, v_new, j, g, vd);
                for (o, &x) in oh.iter_mut().zip(vh) {
                    *o += p * x;
                }
            }
        });
}

/// Accumulates `dq`, `dk`, `dv` from `dout`. Recomputes the probabilities from `q` and `k`.
/// With sinks, use [`backward_with_sinks`] to get their gradient too.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    cfg: &AttentionCfg,
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    backward_with_sinks(cfg, q, k, v, dout, dq, dk, dv, None);
}

/// [`backward`], also accumulating the sinks' gradient into `dsinks` (`[heads]`) when given.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_sinks<T: Float>(
    cfg: &AttentionCfg,
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dsinks: Option<&mut [T]>,
) {
    let (t, hd, qd, kvd) = (cfg.seq, cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
    let (vd, od, kvvd) = (cfg.vd(), cfg.out_dim(), cfg.kv_v_dim());
    assert_eq!(dq.len(), q.len());
    assert_eq!(dk.len(), k.len());
    assert_eq!(dv.len(), v.len());
    assert_eq!(dout.len(), cfg.batch * t * od);
    // Per-head key/value gradients, summed over each kv group afterwards in head order, so the
    // result does not depend on scheduling.
    let (per_head, per_head_v) = (t * hd, t * vd);
    let mut dk_heads = vec![T::ZERO; cfg.batch * cfg.heads * per_head];
    let mut dv_heads = vec![T::ZERO; cfg.batch * cfg.heads * per_head_v];
    // Each (sequence, head)'s share of its sink's gradient, summed in order afterwards.
    let mut dsink_parts = vec![T::ZERO; cfg.batch * cfg.heads];
    let dq_ptr = SyncPtr(dq.as_mut_ptr());
    let scale = T::from_f64(cfg.scale);
    dk_heads
        .par_chunks_exact_mut(per_head)
        .zip(dv_heads.par_chunks_exact_mut(per_head_v))
        .zip(dsink_parts.par_iter_mut())
        .enumerate()
        .for_each_init(
            || {
                (
                    vec![T::ZERO; t * t],
                    vec![T::ZERO; t * t],
                    vec![T::ZERO; t * t],
                    vec![T::ZERO; t * t],
                    vec![T::ZERO; t],
                )
            },
            |(capped, probs, dropped, dprobs, sink_p), (bh, ((dk_h, dv_h), dsink))| {
                serial_gemms(|| {
                    let (b, h) = (bh / cfg.heads, bh % cfg.heads);
                    let g = h / cfg.group();
                    cfg.probabilities(q, k, b, h, capped, probs, sink_p);
                    let p_used: &[T] = if cfg.dropout.is_some() {
                        dropped.copy_from_slice(probs);
                        cfg.drop_probs(dropped, b, h);
                        dropped
                    } else {
                        probs
                    };
                    let o_off = |r: usize| (b * t + r) * qd + h * hd;
                    let kv_off = |r: usize| (b * t + r) * kvd + g * hd;
                    let out_off = |r: usize| (b * t + r) * od + h * vd;
                    let v_off = |r: usize| (b * t + r) * kvvd + g * vd;
                    for (r0, r1, c0) in cfg.blocks() {
                        // SAFETY: reads of q/k/v/dout stay inside sequence b; dprobs, dv_h are this
                        // task's own buffers.
                        unsafe {
                            // dP̃ = dO · Vᵀ
                            matmul_raw(
                                r1 - r0,
                                r1 - c0,
                                vd,
                                dprobs.as_mut_ptr().add(r0 * t + c0),
                                t,
                                dout.as_ptr().add(out_off(r0)),
                                od,
                                1,
                                v.as_ptr().add(v_off(c0)),
                                1,
                                kvvd,
                                false,
                                T::ONE,
                            );
                            // dV_h[c0..r1] += P̃ᵀ · dO
                            matmul_raw(
                                r1 - c0,
                                vd,
                                r1 - r0,
                                dv_h.as_mut_ptr().add(c0 * vd),
                                vd,
                                p_used.as_ptr().add(r0 * t + c0),
                                1,
                                t,
                                dout.as_ptr().add(out_off(r0)),
                                od,
                                1,
                                true,
                                T::ONE,
                            );
                        }
                    }
                    // dS = P ⊙ (dP − Σ_j P dP) through dropout and the softcap; 0 outside the mask.
                    let cap = cfg.softcap.map(T::from_f64);
                    let keep_scale = cfg.dropout.map(|d| (d, T::from_f64(1.0 / (1.0 - d.p))));
                    let base = ((b * cfg.heads + h) * t * t) as u64;
                    for i in 0..t {
                        let lo = cfg.first_visible(i);
                        let prow = &probs[i * t..(i + 1) * t];
                        let drow = &mut dprobs[i * t..(i + 1) * t];
                        if let Some((d, s)) = keep_scale {
                            for (j, v) in drow.iter_mut().enumerate().take(i + 1).skip(lo) {
                                *v = if d.keep(base + (i * t + j) as u64) {
                                    *v * s
                                } else {
                                    T::ZERO
                                };
                            }
                        }
                        let p = &prow[lo..=i];
                        let dot: T = p.iter().zip(&drow[lo..=i]).map(|(&a, &b)| a * b).sum();
                        if cfg.sinks.is_some() {
                            *dsink -= sink_p[i] * dot;
                        }
                        drow[..lo].fill(T::ZERO);
                        drow[i + 1..].fill(T::ZERO);
                        let span = &mut drow[lo..=i];
                        for (v, &pj) in span.iter_mut().zip(p) {
                            *v = pj * (*v - dot);
                        }
                        if let Some(c) = cap {
                            for (v, &s) in span.iter_mut().zip(&capped[i * t + lo..=i * t + i]) {
                                let th = s / c;
                                *v *= T::ONE - th * th;
                            }
                        }
                        // Through the query temperature: d(q·k) = τ_i dS.
                        if let Some(tau) = cfg.tau::<T>(i) {
                            span.iter_mut().for_each(|v| *v *= tau);
                        }
                    }
                    for (r0, r1, c0) in cfg.blocks() {
                        // SAFETY: dq rows of sequence b, columns of head h are written only by this
                        // task; dk_h is its own buffer.
                        unsafe {
                            // dQ_h[r0..r1] += scale · dS · K_g
                            matmul_raw(
                                r1 - r0,
                                hd,
                                r1 - c0,
                                dq_ptr.get().add(o_off(r0)),
                                qd,
                                dprobs.as_ptr().add(r0 * t + c0),
                                t,
                                1,
                                k.as_ptr().add(kv_off(c0)),
                                kvd,
                                1,
                                true,
                                scale,
                            );
                            // dK_h[c0..r1] += scale · dSᵀ · Q_h
                            matmul_raw(
                                r1 - c0,
                                hd,
                                r1 - r0,
                                dk_h.as_mut_ptr().add(c0 * hd),
                                hd,
                                dprobs.as_ptr().add(r0 * t + c0),
                                1,
                                t,
                                q.as_ptr().add(o_off(r0)),
                                qd,
                                1,
                                true,
                                scale,
                            );
                        }
                    }
                })
            },
        );
    if let Some(ds) = dsinks {
        for (bh, &part) in dsink_parts.iter().enumerate() {
            ds[bh % cfg.heads] += part;
        }
    }
    for b in 0..cfg.batch {
        for h in 0..cfg.heads {
            let g = h / cfg.group();
            let (src, src_v) = (
                (b * cfg.heads + h) * per_head,
                (b * cfg.heads + h) * per_head_v,
            );
            for i in 0..t {
                let dst = (b * t + i) * kvd + g * hd;
                for c in 0..hd {
                    dk[dst + c] += dk_heads[src + i * hd + c];
                }
                let dst = (b * t + i) * kvvd + g * vd;
                for c in 0..vd {
                    dv[dst + c] += dv_heads[src_v + i * vd + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_match_hf_for_powers_of_two_and_others() {
        let s8 = alibi_slopes(8);
        assert_eq!(s8[0], 0.5);
        assert_eq!(s8[7], 1.0 / 256.0);
        let s6 = alibi_slopes(6);
        // closest power 4: 2^-2, 2^-4, 2^-6, 2^-8; extra from 8: 2^-1, 2^-3
        assert_eq!(s6, vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 512.0), 1.0 + 1.0 / 64.0 * 0.5);
    }
}
