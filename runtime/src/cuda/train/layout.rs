//! The activation arena: every layer's kept buffers sized by that layer's own widths, one set of
//! shared buffers for what layers recompute (each the largest over the layers that need it), and
//! the scratch the backward and the head use (the largest over all layers).

use super::super::gpu::DevPtr;
use super::super::reduce::ReduceScratch;
use super::config::{FfnCfg, LayerCfg};
use super::saves::{GROUPS, LayerSaves};

/// The sizes the arena derives from, besides the layers' own configurations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub batch: usize,
    pub seq: usize,
    /// `batch * seq` token rows.
    pub n: usize,
    /// d_model.
    pub c: usize,
    /// Bytes per element of the compute dtype.
    pub es: usize,
    /// Padded vocabulary (the classifier's width).
    pub vp: usize,
    /// Row stride of the logits chunk ([`modelspec_dsl::codegen::logits_stride`]: `vp` rounded
    /// up so that every row is aligned).
    pub ld: usize,
    /// Rows of logits materialised at once: at most 512 MiB of them, the rows split evenly
    /// between the fewest chunks that respect that (gpt2-124m's 16384 rows: 4 x 4096, not 3 x
    /// 5336 + 376, whose last GEMMs would run a sliver of the tensor cores' tiles).
    pub chunk: usize,
}

impl Shape {
    pub fn new(batch: usize, seq: usize, c: usize, es: usize, vp: usize) -> Shape {
        let n = batch * seq;
        let ld = modelspec_dsl::codegen::logits_stride(vp as u64) as usize;
        Shape {
            batch,
            seq,
            n,
            c,
            es,
            vp,
            ld,
            chunk: logits_chunk(n, ld * es),
        }
    }
}

/// The logits chunk's rows for `n` token rows of `row_bytes` each (see [`Shape::chunk`]): the
/// fewest chunks of at most 512 MiB (and at least 64 rows), the rows spread evenly over them.
fn logits_chunk(n: usize, row_bytes: usize) -> usize {
    let most = ((512usize << 20) / row_bytes.max(1)).clamp(64, n.max(64));
    n.div_ceil(n.div_ceil(most).max(1)).max(1)
}

/// One layer's buffers (0 where the layer has no such tensor). Buffers the layer does not keep
/// point into the shared recompute set.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LayerBufs {
    /// The layer input (the residual stream entering the layer), always kept.
    pub resid: DevPtr,
    /// Attention norm output and f32 statistics (pre-norm layers).
    pub ln1: DevPtr,
    pub rstd1: DevPtr,
    pub mean1: DevPtr,
    /// `[q; k; v]` after qk-norm and RoPE, `[n, width]`.
    pub qkv: DevPtr,
    /// Attention output `[n, qd]` and its f32 log-sum-exp `[batch, heads, seq]`.
    pub atty: DevPtr,
    pub lse: DevPtr,
    /// The stream after the attention branch.
    pub resid_mid: DevPtr,
    /// The MLP's own norm output and statistics (pre-norm layers without a shared norm).
    pub ln2: DevPtr,
    pub rstd2: DevPtr,
    pub mean2: DevPtr,
    /// Dense MLP: `[gate; up]` (or up) before the activation `[n, hw]`, the activation `[n, hidden]`.
    pub h: DevPtr,
    pub act: DevPtr,
    /// qk-norm: q and k as projected (contiguous `[n, qd]`, `[n, kvd]`), and f32 statistics.
    pub qraw: DevPtr,
    pub kraw: DevPtr,
    pub qrstd: DevPtr,
    pub qmean: DevPtr,
    pub krstd: DevPtr,
    pub kmean: DevPtr,
    /// Post/sandwich norms: the branch outputs before their post-norm, and statistics.
    pub pa_in: DevPtr,
    pub pa_rstd: DevPtr,
    pub pa_mean: DevPtr,
    pub pm_in: DevPtr,
    pub pm_rstd: DevPtr,
    pub pm_mean: DevPtr,
    /// A MoE layer's saved region (`MoeLayer::saved_bytes`).
    pub moe_saved: DevPtr,
    /// Latent attention: the query latent `[n, q_rank]`, its norm output and f32 statistics.
    pub q_lat: DevPtr,
    pub q_latn: DevPtr,
    pub q_lat_rstd: DevPtr,
    pub q_lat_mean: DevPtr,
    /// Latent attention: the joint latent as two blocks, `[n, kv_rank]` then the rotary key
    /// before RoPE `[n, rope]` (`kv_lat + n·kv_rank` elements), its norm output `[n, kv_rank]`
    /// and f32 statistics.
    pub kv_lat: DevPtr,
    pub kv_latn: DevPtr,
    pub kv_lat_rstd: DevPtr,
    pub kv_lat_mean: DevPtr,
}

/// Where every activation and scratch buffer lives in the one activation arena.
pub(super) struct Layout {
    pub layers: Vec<LayerBufs>,
    pub resid_final: DevPtr,
    pub lnf: DevPtr,
    pub rstdf: DevPtr,
    pub meanf: DevPtr,
    /// Carries a branch's output to the residual add that consumes it.
    pub tmp: DevPtr,
    pub dlnf: DevPtr,
    /// The stream gradient, two buffers that alternate.
    pub g_a: DevPtr,
    pub g_b: DevPtr,
    /// d(norm output) of the layer being differentiated.
    pub d_ln: DevPtr,
    pub d_act: DevPtr,
    pub dh: DevPtr,
    pub dqkv: DevPtr,
    pub d_atty: DevPtr,
    pub logits: DevPtr,
    /// cuDNN's dQ accumulator (f32, at least `n x max(qd, d_model)`); after every layer's
    /// backward, the embedding backward's partial sums.
    pub dq_acc: DevPtr,
    pub delta: DevPtr,
    /// Post-norm backward scratch: the gradient of a branch output before its post-norm.
    pub d_post: DevPtr,
    /// qk-norm scratch, `[n, max qd]` each (0 without qk-norm).
    pub qk_a: DevPtr,
    pub qk_b: DevPtr,
    /// Latent attention scratch (0 without): `kv` `[n, heads·(nope + v)]` in the forward and
    /// its gradient in the backward (at least as wide as the widest latent); three more of the
    /// widest latent (`kv_rank + rope` or `q_rank`) for the latents' copies and gradients.
    pub mla_kv: DevPtr,
    pub mla_a: DevPtr,
    pub mla_b: DevPtr,
    pub mla_c: DevPtr,
    /// MoE scratch (the largest `MoeLayer::scratch_bytes`).
    pub moe_scratch: DevPtr,
    /// f32 scalar: the MoE aux loss of the step (with its coefficient).
    pub aux: DevPtr,
    /// The column reductions' partial sums (bias and norm gradients), sized for the widest
    /// reduction of the step (the classifier's padded vocabulary, at most).
    pub reduce: ReduceScratch,
    /// Bytes kept from forward to backward by the layers (their inputs and saved buffers).
    pub saved_bytes: usize,
    /// Bytes of the shared buffers that recomputed tensors go to.
    pub recompute_bytes: usize,
    /// The whole arena.
    pub total_bytes: usize,
}

/// A bump allocator over device addresses (256-byte aligned).
struct Bump {
    base: DevPtr,
    cur: DevPtr,
}

impl Bump {
    fn take(&mut self, bytes: usize) -> DevPtr {
        if bytes == 0 {
            return 0;
        }
        let p = self.cur;
        self.cur += bytes.div_ceil(256) as u64 * 256;
        p
    }
    fn used(&self) -> usize {
        (self.cur - self.base) as usize
    }
}

/// The byte sizes of a layer's dense groups ([`LayerSaves::groups`] order: attn_norm, q_raw,
/// k_raw, qkv, attn, attn_out, resid_mid, mlp_norm, mlp_in, act, mlp_out, q_latent,
/// q_latent_norm, kv_latent, kv_latent_norm), each as its buffers
/// (a value and its f32 statistics), in `LayerBufs` order; 0 where the layer has no such tensor.
fn group_sizes(l: &LayerCfg, s: &Shape) -> [[usize; 3]; GROUPS] {
    let (n, c, es) = (s.n, s.c, s.es);
    let stats = [n * c * es, n * 4, n * 4];
    let lse = s.batch * l.heads * s.seq * 4;
    let (hidden, hw) = l.mlp_widths();
    let ((q_rows, _), (k_rows, _)) = l.qk_rows(n);
    let qk = |cols: usize, rows: usize| {
        if l.qk.is_some() {
            [n * cols * es, rows * 4, rows * 4]
        } else {
            [0; 3]
        }
    };
    let post = if l.post { stats } else { [0; 3] };
    let (q_rank, kv_rank, rope) = l.mla.map_or((0, 0, 0), |m| {
        (m.q_rank.unwrap_or(0), m.kv_rank, m.dims.rope)
    });
    let latent = |width: usize| [n * width * es, 0, 0];
    let latent_norm = |width: usize| {
        if width > 0 {
            [n * width * es, n * 4, n * 4]
        } else {
            [0; 3]
        }
    };
    [
        if l.attn_norm { stats } else { [0; 3] },
        qk(l.qd, q_rows),
        qk(l.kvd, k_rows),
        [n * l.width * es, 0, 0],
        [n * l.od * es, lse, 0],
        post,
        [n * c * es, 0, 0],
        if l.mlp_norm { stats } else { [0; 3] },
        [n * hw * es, 0, 0],
        [n * hidden * es, 0, 0],
        post,
        latent(q_rank),
        latent_norm(q_rank),
        latent(kv_rank + rope),
        latent_norm(kv_rank),
    ]
}

/// Carves the arena at `base` (0 to size it). `moe[i]` is layer i's MoE `(saved, scratch)` bytes.
pub(super) fn layout(
    cfg: &[LayerCfg],
    s: &Shape,
    saves: &[LayerSaves],
    moe: &[Option<(usize, usize)>],
    base: DevPtr,
) -> Layout {
    let mut b = Bump { base, cur: base };
    let (n, c, es) = (s.n, s.c, s.es);
    let save = |i: usize| saves.get(i).copied().unwrap_or(LayerSaves::ALL);
    let moe_of = |i: usize| moe.get(i).copied().flatten().unwrap_or((0, 0));
    // The layer inputs and the buffers each layer keeps.
    let mut layers = Vec::with_capacity(cfg.len());
    let mut own: Vec<[[DevPtr; 3]; GROUPS]> = Vec::with_capacity(cfg.len());
    for (i, l) in cfg.iter().enumerate() {
        let keep = save(i).groups();
        let sizes = group_sizes(l, s);
        let mut lb = LayerBufs {
            resid: b.take(n * c * es),
            ..LayerBufs::default()
        };
        let mut g = [[0 as DevPtr; 3]; GROUPS];
        for j in 0..GROUPS {
            if keep[j] {
                for (p, bytes) in g[j].iter_mut().zip(sizes[j]) {
                    *p = b.take(bytes);
                }
            }
        }
        own.push(g);
        if matches!(l.ffn, FfnCfg::Moe) && save(i).moe {
            lb.moe_saved = b.take(moe_of(i).0);
        }
        layers.push(lb);
    }
    let saved_bytes = b.used();
    // One shared set for whatever some layer recomputes, each buffer the largest such layer's.
    let mut shared_sizes = [[0usize; 3]; GROUPS];
    let mut moe_shared = 0usize;
    for (i, l) in cfg.iter().enumerate() {
        let keep = save(i).groups();
        let sizes = group_sizes(l, s);
        for j in 0..GROUPS {
            if !keep[j] {
                for (m, x) in shared_sizes[j].iter_mut().zip(sizes[j]) {
                    *m = (*m).max(x);
                }
            }
        }
        if matches!(l.ffn, FfnCfg::Moe) && !save(i).moe {
            moe_shared = moe_shared.max(moe_of(i).0);
        }
    }
    let mut shared = [[0 as DevPtr; 3]; GROUPS];
    for j in 0..GROUPS {
        for (p, bytes) in shared[j].iter_mut().zip(shared_sizes[j]) {
            *p = b.take(bytes);
        }
    }
    let moe_shared_ptr = b.take(moe_shared);
    let recompute_bytes = b.used() - saved_bytes;
    for (i, lb) in layers.iter_mut().enumerate() {
        let keep = save(i).groups();
        let sizes = group_sizes(&cfg[i], s);
        let pick = |j: usize, k: usize| {
            if sizes[j][k] == 0 {
                0
            } else if keep[j] {
                own[i][j][k]
            } else {
                shared[j][k]
            }
        };
        [lb.ln1, lb.rstd1, lb.mean1] = [pick(0, 0), pick(0, 1), pick(0, 2)];
        [lb.qraw, lb.qrstd, lb.qmean] = [pick(1, 0), pick(1, 1), pick(1, 2)];
        [lb.kraw, lb.krstd, lb.kmean] = [pick(2, 0), pick(2, 1), pick(2, 2)];
        lb.qkv = pick(3, 0);
        [lb.atty, lb.lse] = [pick(4, 0), pick(4, 1)];
        [lb.pa_in, lb.pa_rstd, lb.pa_mean] = [pick(5, 0), pick(5, 1), pick(5, 2)];
        lb.resid_mid = pick(6, 0);
        [lb.ln2, lb.rstd2, lb.mean2] = [pick(7, 0), pick(7, 1), pick(7, 2)];
        lb.h = pick(8, 0);
        lb.act = pick(9, 0);
        [lb.pm_in, lb.pm_rstd, lb.pm_mean] = [pick(10, 0), pick(10, 1), pick(10, 2)];
        lb.q_lat = pick(11, 0);
        [lb.q_latn, lb.q_lat_rstd, lb.q_lat_mean] = [pick(12, 0), pick(12, 1), pick(12, 2)];
        lb.kv_lat = pick(13, 0);
        [lb.kv_latn, lb.kv_lat_rstd, lb.kv_lat_mean] = [pick(14, 0), pick(14, 1), pick(14, 2)];
        if matches!(cfg[i].ffn, FfnCfg::Moe) && !save(i).moe {
            lb.moe_saved = moe_shared_ptr;
        }
    }
    // Scratch: the largest over the layers.
    let max = |f: &dyn Fn(&LayerCfg) -> usize| cfg.iter().map(f).max().unwrap_or(0);
    let (qd, width) = (max(&|l| l.qd), max(&|l| l.width));
    let (hidden, hw) = (max(&|l| l.mlp_widths().0), max(&|l| l.mlp_widths().1));
    let heads = max(&|l| l.heads);
    let od = max(&|l| l.od);
    let mla_kv_width = max(&|l| l.mla.map_or(0, |m| m.kv_width()));
    let mla_latent = max(&|l| {
        l.mla
            .map_or(0, |m| (m.kv_rank + m.dims.rope).max(m.q_rank.unwrap_or(0)))
    });
    let any_post = cfg.iter().any(|l| l.post);
    let any_qk = cfg.iter().any(|l| l.qk.is_some());
    let moe_scratch_bytes = (0..cfg.len()).map(|i| moe_of(i).1).max().unwrap_or(0);
    let mut take = |bytes: usize| b.take(bytes);
    let resid_final = take(n * c * es);
    let lnf = take(n * c * es);
    let rstdf = take(n * 4);
    let meanf = take(n * 4);
    let tmp = take(n * c * es);
    let dlnf = take(n * c * es);
    let g_a = take(n * c * es);
    let g_b = take(n * c * es);
    let d_ln = take(n * c * es);
    let d_act = take(n * hidden * es);
    let dh = take(n * hw * es);
    let dqkv = take(n * width * es);
    let d_atty = take(n * od * es);
    let logits = take(s.chunk * s.ld * es);
    // Also the embedding backward's partial sums (`n x c` f32), after every layer's backward.
    let dq_acc = take(n * qd.max(c) * 4);
    let delta = take(s.batch * heads * s.seq * 4);
    let d_post = if any_post { take(n * c * es) } else { 0 };
    let (qk_a, qk_b) = if any_qk {
        (take(n * qd * es), take(n * qd * es))
    } else {
        (0, 0)
    };
    let mla_kv = take(n * mla_kv_width.max(mla_latent) * es);
    let mla_a = take(n * mla_latent * es);
    let mla_b = take(n * mla_latent * es);
    let mla_c = take(n * mla_latent * es);
    let moe_scratch = take(moe_scratch_bytes);
    let aux = take(4);
    let widest = max(&|l| l.mla_widest());
    let reduce_bytes = ReduceScratch::bytes_for(c.max(width).max(hw).max(qd).max(widest).max(s.vp));
    let reduce = ReduceScratch::new(take(reduce_bytes), reduce_bytes);
    Layout {
        layers,
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
        mla_kv,
        mla_a,
        mla_b,
        mla_c,
        moe_scratch,
        aux,
        reduce,
        saved_bytes,
        recompute_bytes,
        total_bytes: b.used(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelspec_dsl::load::{Format, load_str};
    use modelspec_dsl::program::LayerProgram;

    /// Layers of different widths, one parallel, one post-norm with qk-norm.
    const MIXED: &str = "model t_layout {
        vocab 150   d_model 96   layers 4   context 64
        norm rms(eps = 1e-5)
        attention { heads 4  kv_heads 2  head_dim 32 }
        position rope(theta = 10000)
        mlp swiglu(hidden = 160)
        layers[1] { attention { heads 6  kv_heads 6  head_dim 16 }  mlp gelu(hidden = 400) }
        layers[2] { placement sandwich  attention { qk_norm rms(eps = 1e-6) } }
        layers[3] { parallel_residual  mlp relu_squared(hidden = 96) }
    }";

    fn setup(saves: &[LayerSaves]) -> (Vec<LayerCfg>, Shape, Layout) {
        let spec = load_str(MIXED, "t.mspec", Format::Mspec).expect("valid");
        let cfg: Vec<LayerCfg> = spec
            .layers
            .iter()
            .map(|l| LayerCfg::new(l, &LayerProgram::structure(l), None, None))
            .collect();
        let s = Shape::new(2, 24, 96, 4, spec.vocab_padded as usize);
        let lay = layout(&cfg, &s, saves, &[], 1 << 20);
        (cfg, s, lay)
    }

    #[test]
    fn logits_chunks_are_even_and_bounded() {
        // gpt2-124m, bf16, B16 T1024: 5336 rows fit 512 MiB; 4 chunks of 4096.
        let gpt2 = Shape::new(16, 1024, 768, 2, 50304);
        assert_eq!((gpt2.ld, gpt2.chunk), (50304, 4096));
        // llama-3.2-1b, bf16, B8 T2048: 2093 rows fit; 8 chunks of 2048.
        assert_eq!(Shape::new(8, 2048, 2048, 2, 128256).chunk, 2048);
        // Uneven: 10000 rows, 3000 fit: 4 chunks of 2500.
        assert_eq!(logits_chunk(10000, (512 << 20) / 3000), 2500);
        // Few rows: one chunk of all of them; a tiny vocabulary: one chunk.
        assert_eq!(logits_chunk(48, 1 << 30), 48);
        assert_eq!(logits_chunk(48, 256), 48);
        for n in [1, 63, 64, 65, 4097, 16384, 100_000] {
            for row_bytes in [256, 100_608, 256_512, 1 << 30] {
                let chunk = logits_chunk(n, row_bytes);
                // At most 512 MiB of rows, but never fewer than 64 (or all n when fewer).
                let bound = ((512usize << 20) / row_bytes).clamp(64, n.max(64));
                assert!(chunk >= 1 && chunk <= bound, "{n} {row_bytes}");
                let chunks = n.div_ceil(chunk);
                // The fewest chunks: one fewer could not hold n rows within the bound.
                assert!(
                    chunks == 1 || n.div_ceil(chunks - 1) > bound,
                    "{n} {row_bytes}"
                );
                // Even: the rows spread over those chunks, the last one not a sliver.
                assert_eq!(chunk, n.div_ceil(chunks), "{n} {row_bytes}");
            }
        }
    }

    /// (pointer, bytes) of a layer's buffers that exist, by name.
    fn buffers(l: &LayerCfg, s: &Shape, b: &LayerBufs) -> Vec<(&'static str, DevPtr, usize)> {
        let g = group_sizes(l, s);
        let (n, es) = (s.n, s.es);
        let v = vec![
            ("resid", b.resid, n * s.c * es),
            ("ln1", b.ln1, g[0][0]),
            ("qraw", b.qraw, g[1][0]),
            ("qrstd", b.qrstd, g[1][1]),
            ("kraw", b.kraw, g[2][0]),
            ("qkv", b.qkv, g[3][0]),
            ("atty", b.atty, g[4][0]),
            ("lse", b.lse, g[4][1]),
            ("pa_in", b.pa_in, g[5][0]),
            ("resid_mid", b.resid_mid, g[6][0]),
            ("ln2", b.ln2, g[7][0]),
            ("h", b.h, g[8][0]),
            ("act", b.act, g[9][0]),
            ("pm_in", b.pm_in, g[10][0]),
        ];
        v.into_iter().filter(|x| x.2 > 0).collect()
    }

    #[test]
    fn kept_buffers_are_disjoint_and_sized_by_their_layer() {
        let (cfg, s, lay) = setup(&[]);
        let mut spans: Vec<(DevPtr, DevPtr, String)> = Vec::new();
        for (i, (l, b)) in cfg.iter().zip(&lay.layers).enumerate() {
            for (name, p, bytes) in buffers(l, &s, b) {
                assert_ne!(p, 0, "layer {i} {name}");
                spans.push((p, p + bytes as u64, format!("layer {i} {name}")));
            }
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{} overlaps {}", w[0].2, w[1].2);
        }
        let end = (1u64 << 20) + lay.saved_bytes as u64;
        assert!(spans.last().is_some_and(|x| x.1 <= end));
        assert_eq!(lay.recompute_bytes, 0);
        // Layers own buffers of their own widths: layer 1's MLP (gelu 400) is the widest.
        assert_eq!(cfg[1].mlp_widths(), (400, 400));
        assert!(lay.layers[2].ln2 != 0 && lay.layers[3].ln2 != 0);
    }

    #[test]
    fn reduction_scratch_serves_the_widest_reduction() {
        let (cfg, s, lay) = setup(&[]);
        let widest = cfg
            .iter()
            .map(|l| l.width.max(l.mlp_widths().1).max(l.qd))
            .fold(s.vp.max(s.c), usize::max);
        assert!(lay.reduce.bytes >= ReduceScratch::bytes_for(widest));
        assert!(lay.reduce.ptr >= (1 << 20) + lay.saved_bytes as u64);
        assert!(lay.reduce.ptr + lay.reduce.bytes as u64 <= (1 << 20) + lay.total_bytes as u64);
    }

    #[test]
    fn recomputed_buffers_share_one_set_sized_by_the_largest_layer() {
        let saves = vec![LayerSaves::INPUT_ONLY; 4];
        let (cfg, s, lay) = setup(&saves);
        let shared_start = (1u64 << 20) + lay.saved_bytes as u64;
        let shared_end = shared_start + lay.recompute_bytes as u64;
        for (i, (l, b)) in cfg.iter().zip(&lay.layers).enumerate() {
            for (name, p, bytes) in buffers(l, &s, b) {
                let own = name == "resid";
                if own {
                    assert!(p + bytes as u64 <= shared_start, "layer {i} {name} kept");
                } else {
                    assert!(
                        p >= shared_start && p + bytes as u64 <= shared_end,
                        "layer {i} {name} in the shared set"
                    );
                }
            }
        }
        // Each shared buffer is one pointer for every layer, and the largest use of each does not
        // run into the next shared buffer.
        let mut largest: std::collections::BTreeMap<DevPtr, (usize, String)> = Default::default();
        for (i, (l, b)) in cfg.iter().zip(&lay.layers).enumerate() {
            for (name, p, bytes) in buffers(l, &s, b) {
                if p >= shared_start {
                    let e = largest.entry(p).or_insert((0, String::new()));
                    if bytes > e.0 {
                        *e = (bytes, format!("layer {i} {name}"));
                    }
                }
            }
        }
        let spans: Vec<(DevPtr, usize, String)> =
            largest.into_iter().map(|(p, (b, n))| (p, b, n)).collect();
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 as u64 <= w[1].0,
                "{} overlaps {}",
                w[0].2,
                w[1].2
            );
        }
        let act: Vec<DevPtr> = lay.layers.iter().map(|b| b.act).collect();
        assert!(act.windows(2).all(|w| w[0] == w[1]));
    }
}
