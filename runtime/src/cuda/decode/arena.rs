//! The decoder's device memory besides the weights: the activation arena for up to `rows` new
//! rows per call (shared by every layer: decoding keeps nothing for a backward), the key/value
//! cache, and the RoPE tables at the positions the cache spans.

use modelspec_dsl::ir::{Rope, RopeStyle};

use super::layer::LayerPlan;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Gpu, GpuBuf};
use crate::ops::rope::{RopeTable, inv_freq};

/// Byte alignment of every buffer in the arenas.
const ALIGN: usize = 256;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The widest of each activation over the layers (elements per row).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Widths {
    pub d: usize,
    /// The fused `[q; k; v]` row.
    pub qkv: usize,
    /// The q (or k) columns, for the qk-norm's contiguous copies.
    pub qd: usize,
    /// A dense MLP's `[gate; up]` row.
    pub hw: usize,
    pub hidden: usize,
    /// Norm rows per token (per-head qk-norms: one per head).
    pub heads: usize,
    /// The attention output row (`heads · v_head_dim`).
    pub od: usize,
    /// Latent attention's widest latent row (`kv_rank + rope` or `q_rank`; 0 without).
    pub mla: usize,
}

impl Widths {
    pub fn of(layers: &[LayerPlan], d: usize) -> Widths {
        let mut w = Widths {
            d,
            heads: 1,
            ..Default::default()
        };
        for l in layers.iter().map(|l| &l.cfg) {
            let (hidden, hw) = l.mlp_widths();
            w.qkv = w.qkv.max(l.width);
            w.qd = w.qd.max(l.qd);
            w.od = w.od.max(l.od);
            w.mla = w.mla.max(
                l.mla
                    .map_or(0, |m| (m.kv_rank + m.dims.rope).max(m.q_rank.unwrap_or(0))),
            );
            w.heads = w.heads.max(l.heads);
            w.hw = w.hw.max(hw);
            w.hidden = w.hidden.max(hidden);
        }
        w
    }
}

/// Activation buffers for up to `rows` new rows (views into one allocation).
pub(super) struct Acts {
    /// Rows they hold.
    pub rows: usize,
    _buf: GpuBuf<u8>,
    /// The residual stream: each layer's input, overwritten by its output.
    pub x: DevPtr,
    pub attn_norm: DevPtr,
    pub qkv: DevPtr,
    pub qk_raw: DevPtr,
    pub qk_out: DevPtr,
    pub attn: DevPtr,
    pub attn_out: DevPtr,
    pub attn_post: DevPtr,
    pub resid_mid: DevPtr,
    pub mlp_norm: DevPtr,
    pub h: DevPtr,
    pub act: DevPtr,
    pub mlp_out: DevPtr,
    pub mlp_post: DevPtr,
    /// f32 norm statistics (written by the norm kernels, read by nobody here).
    pub rstd: DevPtr,
    pub mean: DevPtr,
    /// The mixture-of-experts block's regions (0 bytes without MoE layers).
    pub moe_saved: DevPtr,
    pub moe_scratch: DevPtr,
    /// Latent attention's rows (0 bytes without): the latents, their norms and a contiguous
    /// copy, `[rows, Widths::mla]` each.
    pub mla_a: DevPtr,
    pub mla_b: DevPtr,
    pub mla_c: DevPtr,
    /// Bytes of the MoE regions.
    pub moe_saved_bytes: usize,
    pub moe_scratch_bytes: usize,
    /// Bytes of the allocation.
    pub bytes: usize,
}

impl Acts {
    /// Buffers for `rows` rows of the widths `w` in elements of `es` bytes, plus the MoE
    /// regions' bytes.
    pub fn new(gpu: &Gpu, rows: usize, w: &Widths, es: usize, moe: (usize, usize)) -> Result<Acts> {
        let row = |width: usize| align(rows * width * es);
        let sizes = [
            row(w.d),      // x
            row(w.d),      // attn_norm
            row(w.qkv),    // qkv
            row(w.qd),     // qk_raw
            row(w.qd),     // qk_out
            row(w.od),     // attn
            row(w.d),      // attn_out
            row(w.d),      // attn_post
            row(w.d),      // resid_mid
            row(w.d),      // mlp_norm
            row(w.hw),     // h
            row(w.hidden), // act
            row(w.d),      // mlp_out
            row(w.d),      // mlp_post
            align(rows * w.heads * 4),
            align(rows * w.heads * 4),
            align(moe.0),
            align(moe.1),
            row(w.mla),
            row(w.mla),
            row(w.mla),
        ];
        let bytes: usize = sizes.iter().sum();
        let buf = gpu.zeros::<u8>(bytes)?;
        let mut at = buf.ptr();
        let mut p = [0u64; 21];
        for (slot, size) in p.iter_mut().zip(sizes) {
            *slot = at;
            at += size as u64;
        }
        Ok(Acts {
            rows,
            _buf: buf,
            x: p[0],
            attn_norm: p[1],
            qkv: p[2],
            qk_raw: p[3],
            qk_out: p[4],
            attn: p[5],
            attn_out: p[6],
            attn_post: p[7],
            resid_mid: p[8],
            mlp_norm: p[9],
            h: p[10],
            act: p[11],
            mlp_out: p[12],
            mlp_post: p[13],
            rstd: p[14],
            mean: p[15],
            moe_saved: p[16],
            moe_scratch: p[17],
            mla_a: p[18],
            mla_b: p[19],
            mla_c: p[20],
            moe_saved_bytes: moe.0,
            moe_scratch_bytes: moe.1,
            bytes,
        })
    }
}

/// The key/value cache: per layer `[batch, kv_heads, capacity, head_dim]` keys and values in the
/// compute dtype (latent attention: what DeepSeek caches, the normalised latents `[batch,
/// capacity, kv_rank]` and the rotated shared keys `[batch, capacity, rope]`), and how many
/// positions of each sequence it holds. Latent attention layers also share one expansion of
/// their cache into per-head keys and values (`mla_k`, `mla_v`, through `mla_kv`), rebuilt by each
/// call.
pub(super) struct Cache {
    pub batch: usize,
    pub capacity: usize,
    _buf: GpuBuf<u8>,
    /// Per layer, the keys' and values' addresses (latent attention: latents and rotated keys).
    layers: Vec<(DevPtr, DevPtr)>,
    /// Latent attention's expansion: the cached latents' up-projection `[batch, capacity,
    /// heads·(nope + v)]`, the keys `[batch, heads, capacity, nope + rope]` and the values
    /// `[batch, heads, capacity, v]` (0 without latent attention).
    pub mla_kv: DevPtr,
    pub mla_k: DevPtr,
    pub mla_v: DevPtr,
    /// Positions cached per sequence.
    pub lens: Vec<usize>,
    /// The ids whose keys and values are cached, per sequence.
    pub tokens: Vec<Vec<u32>>,
    pub bytes: usize,
}

impl Cache {
    /// An empty cache of `capacity` positions for `batch` sequences.
    pub fn new(
        gpu: &Gpu,
        layers: &[LayerPlan],
        batch: usize,
        capacity: usize,
        es: usize,
    ) -> Result<Cache> {
        let (sizes, expansion) = Self::sizes(layers, batch, capacity, es);
        let bytes = Self::bytes_for(layers, batch, capacity, es);
        let buf = gpu.zeros::<u8>(bytes)?;
        let mut at = buf.ptr();
        let mut ptrs = Vec::with_capacity(layers.len());
        for (k, v) in sizes {
            ptrs.push((at, at + k as u64));
            at += (k + v) as u64;
        }
        let mut take = |bytes: usize| {
            let p = if bytes == 0 { 0 } else { at };
            at += bytes as u64;
            p
        };
        let (mla_kv, mla_k, mla_v) = (take(expansion[0]), take(expansion[1]), take(expansion[2]));
        Ok(Cache {
            batch,
            capacity,
            _buf: buf,
            layers: ptrs,
            mla_kv,
            mla_k,
            mla_v,
            lens: vec![0; batch],
            tokens: vec![Vec::new(); batch],
            bytes,
        })
    }

    /// Per layer the bytes of its keys and of its values (latent attention: of its latents and
    /// of its rotated keys), and the bytes of latent attention's expansion buffers.
    fn sizes(
        layers: &[LayerPlan],
        batch: usize,
        capacity: usize,
        es: usize,
    ) -> (Vec<(usize, usize)>, [usize; 3]) {
        let cells = batch * capacity * es;
        let mut expansion = [0usize; 3];
        let sizes = layers
            .iter()
            .map(|l| match l.cfg.mla {
                Some(m) => {
                    let d = m.dims;
                    let per = [m.kv_width(), d.heads * (d.nope + d.rope), d.heads * d.v];
                    for (e, w) in expansion.iter_mut().zip(per) {
                        *e = (*e).max(align(cells * w));
                    }
                    (align(cells * m.kv_rank), align(cells * d.rope))
                }
                None => {
                    let kv = align(cells * l.cfg.kv_heads * l.cfg.head_dim);
                    (kv, kv)
                }
            })
            .collect();
        (sizes, expansion)
    }

    /// Bytes of a cache of `capacity` positions for `batch` sequences of `layers`.
    pub fn bytes_for(layers: &[LayerPlan], batch: usize, capacity: usize, es: usize) -> usize {
        let (sizes, expansion) = Self::sizes(layers, batch, capacity, es);
        sizes.iter().map(|(k, v)| k + v).sum::<usize>() + expansion.iter().sum::<usize>()
    }

    /// Layer i's keys and values.
    pub fn layer(&self, i: usize) -> (DevPtr, DevPtr) {
        self.layers[i]
    }

    /// Forgets every sequence (the memory stays).
    pub fn clear(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
        self.tokens.iter_mut().for_each(Vec::clear);
    }
}

/// One distinct RoPE of the spec: its cos/sin table on the device, for positions `0..rows`, with
/// the frequencies (and attention factor) it was computed from.
pub(super) struct RopeSlot {
    pub rope: Rope,
    pub rot: usize,
    pub interleaved: bool,
    /// `inv_freq(rope, len)` of the table: the CPU derives it from the window's length (dynamic
    /// NTK and LongRoPE change it past the pretraining context).
    pub freqs: (Vec<f64>, f64),
    pub rows: usize,
    pub cos: GpuBuf<f32>,
    pub sin: GpuBuf<f32>,
}

impl RopeSlot {
    /// The table for windows of `len` positions, with room for `capacity` rows.
    pub fn new(gpu: &Gpu, rope: &Rope, len: usize, capacity: usize) -> Result<RopeSlot> {
        let freqs = inv_freq(rope, len);
        // A table of `capacity` rows has the same frequencies when they do not depend on the
        // length (every scaling but dynamic NTK and LongRoPE past their context).
        let rows = if inv_freq(rope, capacity) == freqs {
            capacity
        } else {
            len
        };
        let table = RopeTable::<f32>::new(rope, rows);
        Ok(RopeSlot {
            rope: rope.clone(),
            rot: rope.rotary_dims as usize,
            interleaved: rope.style == RopeStyle::Interleaved,
            freqs,
            rows,
            cos: gpu.upload(&table.cos)?,
            sin: gpu.upload(&table.sin)?,
        })
    }

    /// Whether this table serves windows of `len` positions.
    pub fn serves(&self, len: usize) -> bool {
        len <= self.rows && inv_freq(&self.rope, len) == self.freqs
    }
}
