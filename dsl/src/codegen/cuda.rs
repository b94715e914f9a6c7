//! The CUDA side: the spec's kernels as CUDA C with its sizes as compile-time constants, and one
//! launch function per kernel whose grid, block and shared-memory sizes follow from them.
//!
//! One kernel is emitted per distinct configuration the spec uses (a norm of a given kind and
//! width, an attention of given heads/window/softcap, ...), named `{op}_{dtype}_{config}`.
//! Everything that depends on the batch (rows, sequence length) is a launch argument; everything
//! the spec fixes is a constant in the source, so NVRTC can unroll and fold it. Tables that other
//! code already computes for the CPU (RoPE inverse frequencies, ALiBi slopes) are kernel
//! arguments rather than re-derived here. The source needs no CUDA headers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{CudaSource, Layout, lit_usize};
use crate::ir::{Ffn, MlpKind, ModelSpec, Norm, NormKind, Position, RopeStyle};

/// Threads per block of the row-wise kernels (norms, softmax rows).
const ROW_BLOCK: u32 = 256;
/// Threads per block of the element-wise kernels.
const ELEMENTWISE_BLOCK: u32 = 256;

/// One grid dimension: a constant, a launch argument, or a launch argument divided (rounding up).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GridDim {
    /// A number fixed by the spec.
    Const(u32),
    /// A launch argument (`rows`, `seq`, `batch`, `n`).
    Arg(&'static str),
    /// `ceil(arg / divisor)`.
    CeilDiv(&'static str, u32),
}

/// Grid, block and dynamic shared memory of a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchShape {
    /// Blocks in x, y, z.
    pub grid: [GridDim; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, bytes.
    pub shared_mem_bytes: u32,
}

impl LaunchShape {
    /// The launch arguments the grid depends on, in order of first use.
    pub fn args(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for d in &self.grid {
            if let GridDim::Arg(a) | GridDim::CeilDiv(a, _) = d
                && !out.contains(a)
            {
                out.push(*a);
            }
        }
        out
    }
}

/// One specialised kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The `extern "C"` symbol.
    pub name: String,
    /// What it computes, its launch shape and its memory traffic (the comment above it).
    pub doc: String,
    /// Its CUDA C definition.
    pub source: String,
    /// How it is launched.
    pub launch: LaunchShape,
}

fn fl(v: f64) -> String {
    // A float literal CUDA reads back to the same f32.
    let s = format!("{:?}", v as f32);
    format!("{s}f")
}

fn norm_tag(n: &Norm) -> String {
    let kind = match n.kind {
        NormKind::Rms => "rmsnorm",
        NormKind::Layer => "layernorm",
    };
    let mut s = kind.to_string();
    if n.offset != 0.0 {
        s.push_str("_offset");
    }
    if !n.weight {
        s.push_str("_noaffine");
    }
    if n.bias {
        s.push_str("_bias");
    }
    s
}

fn norm_kernel(n: &Norm, width: u64) -> Kernel {
    let name = format!("{}_fwd_f32_d{width}", norm_tag(n));
    let is_layer = n.kind == NormKind::Layer;
    let mut src = String::new();
    let _ = writeln!(
        src,
        "extern \"C\" __global__ void {name}(float* y, const float* x, const float* w, const float* b) {{"
    );
    let _ = writeln!(src, "    const int C = {width};");
    let _ = writeln!(src, "    __shared__ float scratch[32];");
    let _ = writeln!(src, "    const float* xr = x + (size_t)blockIdx.x * C;");
    let _ = writeln!(src, "    float* yr = y + (size_t)blockIdx.x * C;");
    if is_layer {
        let _ = writeln!(src, "    float sum = 0.f;");
        let _ = writeln!(
            src,
            "    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += xr[c];"
        );
        let _ = writeln!(src, "    const float mu = ms_block_sum(sum, scratch) / C;");
    } else {
        let _ = writeln!(src, "    const float mu = 0.f;");
    }
    let _ = writeln!(src, "    float acc = 0.f;");
    let _ = writeln!(
        src,
        "    for (int c = threadIdx.x; c < C; c += blockDim.x) {{ float v = xr[c] - mu; acc += v * v; }}"
    );
    let _ = writeln!(
        src,
        "    const float rstd = rsqrtf(ms_block_sum(acc, scratch) / C + {});",
        fl(n.eps)
    );
    let _ = writeln!(
        src,
        "    for (int c = threadIdx.x; c < C; c += blockDim.x) {{"
    );
    let scale = if n.weight {
        format!("({} + w[c])", fl(n.offset))
    } else {
        "1.f".into()
    };
    let bias = if n.bias { " + b[c]" } else { "" };
    let _ = writeln!(src, "        yr[c] = (xr[c] - mu) * rstd * {scale}{bias};");
    let _ = writeln!(src, "    }}");
    let _ = writeln!(src, "}}");
    let doc = format!(
        "{name}: y = {} of each {width}-wide row of x{}.\n\
         Launch: grid rows, block {ROW_BLOCK}. Traffic: reads x {} and w/b once, writes y once.",
        if is_layer { "LayerNorm" } else { "RMSNorm" },
        if n.weight {
            format!(" scaled by ({} + w)", n.offset)
        } else {
            String::new()
        },
        if is_layer { "three times" } else { "twice" },
    );
    Kernel {
        name,
        doc,
        source: src,
        launch: LaunchShape {
            grid: [GridDim::Arg("rows"), GridDim::Const(1), GridDim::Const(1)],
            block: [ROW_BLOCK, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

fn embed_kernel(spec: &ModelSpec) -> Kernel {
    let d = spec.d_model;
    let name = format!("embed_fwd_f32_d{d}");
    let scale = fl(spec.embedding.scale);
    let pos = if spec.embedding.learned_positions {
        " + pos[(size_t)t * D + c]"
    } else {
        ""
    };
    let source = format!(
        "extern \"C\" __global__ void {name}(float* out, const unsigned int* tokens, const float* table, const float* pos, int seq) {{\n\
         \x20   const int D = {d};\n\
         \x20   const size_t row = blockIdx.x;\n\
         \x20   const int t = (int)(row % (size_t)seq);\n\
         \x20   const float* e = table + (size_t)tokens[row] * D;\n\
         \x20   (void)t; (void)pos;\n\
         \x20   for (int c = threadIdx.x; c < D; c += blockDim.x) out[row * D + c] = e[c] * {scale}{pos};\n\
         }}\n"
    );
    let doc = format!(
        "{name}: out[row] = table[tokens[row]] * {}{}.\n\
         Launch: grid rows (batch * seq), block {ROW_BLOCK}. Traffic: one embedding row read and written per token.",
        spec.embedding.scale,
        if spec.embedding.learned_positions {
            " + pos[row % seq]"
        } else {
            ""
        }
    );
    Kernel {
        name,
        doc,
        source,
        launch: LaunchShape {
            grid: [GridDim::Arg("rows"), GridDim::Const(1), GridDim::Const(1)],
            block: [ROW_BLOCK, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

fn rope_kernel(heads: u64, head_dim: u64, rotary: u64, style: RopeStyle) -> Kernel {
    let style_tag = match style {
        RopeStyle::HalfSplit => "half",
        RopeStyle::Interleaved => "interleaved",
    };
    let name = format!("rope_fwd_f32_h{heads}_d{head_dim}_r{rotary}_{style_tag}");
    let half = rotary / 2;
    let (i0, i1) = match style {
        RopeStyle::HalfSplit => ("i", "i + R / 2"),
        RopeStyle::Interleaved => ("2 * i", "2 * i + 1"),
    };
    let source = format!(
        "extern \"C\" __global__ void {name}(float* x, const float* inv_freq, const int* positions, float attention_factor) {{\n\
         \x20   const int H = {heads}, D = {head_dim}, R = {rotary};\n\
         \x20   const int i = threadIdx.x;\n\
         \x20   if (i >= R / 2) return;\n\
         \x20   const size_t row = blockIdx.x;\n\
         \x20   float* v = x + (row * H + blockIdx.y) * D;\n\
         \x20   float s, c;\n\
         \x20   sincosf((float)positions[row] * inv_freq[i], &s, &c);\n\
         \x20   s *= attention_factor; c *= attention_factor;\n\
         \x20   const float a = v[{i0}], b = v[{i1}];\n\
         \x20   v[{i0}] = a * c - b * s;\n\
         \x20   v[{i1}] = b * c + a * s;\n\
         }}\n"
    );
    let doc = format!(
        "{name}: rotates the first {rotary} of {head_dim} dims of each of {heads} heads in place \
         ({style_tag} pairs); inv_freq [{half}] comes from the CPU's RoPE tables (every scaling variant).\n\
         Launch: grid (rows, {heads}), block {half}. Traffic: each rotated element read and written once."
    );
    Kernel {
        name,
        doc,
        source,
        launch: LaunchShape {
            grid: [
                GridDim::Arg("rows"),
                GridDim::Const(heads as u32),
                GridDim::Const(1),
            ],
            block: [half.max(1) as u32, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

#[derive(Clone, PartialEq, PartialOrd)]
struct AttnKey {
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    window: Option<u64>,
    softcap: Option<f64>,
    scale: f64,
    alibi: bool,
}

fn attention_kernel(k: &AttnKey) -> Kernel {
    let mut name = format!(
        "attention_fwd_f32_h{}_kv{}_d{}",
        k.heads, k.kv_heads, k.head_dim
    );
    if let Some(w) = k.window {
        name.push_str(&format!("_w{w}"));
    }
    if let Some(c) = k.softcap {
        name.push_str(&format!("_cap{}", c as u64));
    }
    if k.alibi {
        name.push_str("_alibi");
    }
    let d = k.head_dim;
    let per_lane = d.div_ceil(32);
    let start = match k.window {
        Some(w) => format!("max(0, t - {} + 1)", w),
        None => "0".to_string(),
    };
    let cap = match k.softcap {
        Some(c) => format!("        s = {} * tanhf(s / {});\n", fl(c), fl(c)),
        None => String::new(),
    };
    let alibi = if k.alibi {
        "        s += alibi[h] * (float)j * SCALE;\n"
    } else {
        ""
    };
    let source = format!(
        "extern \"C\" __global__ void {name}(float* out, const float* q, const float* k, const float* v, const float* alibi, int seq) {{\n\
         \x20   const int H = {h}, KV = {kv}, D = {d}, G = H / KV, PER_LANE = {per_lane};\n\
         \x20   const float SCALE = {scale};\n\
         \x20   const int t = blockIdx.x, h = blockIdx.y, bt = blockIdx.z, lane = threadIdx.x;\n\
         \x20   const size_t qrow = (size_t)bt * seq + t;\n\
         \x20   const float* qh = q + (qrow * H + h) * D;\n\
         \x20   float qv[PER_LANE], acc[PER_LANE];\n\
         \x20   for (int p = 0; p < PER_LANE; ++p) {{ int c = lane + 32 * p; qv[p] = c < D ? qh[c] : 0.f; acc[p] = 0.f; }}\n\
         \x20   float m = NEG_INF_F, l = 0.f;\n\
         \x20   (void)alibi;\n\
         \x20   for (int j = {start}; j <= t; ++j) {{\n\
         \x20       const size_t krow = ((size_t)bt * seq + j) * KV + h / G;\n\
         \x20       float dot = 0.f;\n\
         \x20       for (int p = 0; p < PER_LANE; ++p) {{ int c = lane + 32 * p; if (c < D) dot += qv[p] * k[krow * D + c]; }}\n\
         \x20       float s = ms_warp_sum(dot) * SCALE;\n\
         {alibi}{cap}\
         \x20       const float m_new = fmaxf(m, s);\n\
         \x20       const float corr = __expf(m - m_new), pj = __expf(s - m_new);\n\
         \x20       l = l * corr + pj;\n\
         \x20       for (int p = 0; p < PER_LANE; ++p) {{ int c = lane + 32 * p; if (c < D) acc[p] = acc[p] * corr + pj * v[krow * D + c]; }}\n\
         \x20       m = m_new;\n\
         \x20   }}\n\
         \x20   float* o = out + (qrow * H + h) * D;\n\
         \x20   for (int p = 0; p < PER_LANE; ++p) {{ int c = lane + 32 * p; if (c < D) o[c] = acc[p] / l; }}\n\
         }}\n",
        h = k.heads,
        kv = k.kv_heads,
        scale = fl(k.scale),
    );
    let doc = format!(
        "{name}: causal softmax(q·kᵀ · {}{}{}) · v for {} query heads sharing {} kv heads of width {}{}, \
         online softmax (nothing of size T×T in memory).\n\
         Launch: grid (seq, {}, batch), block 32 (one warp per query). Traffic: each query reads the \
         keys and values in its window once.",
        k.scale,
        if k.alibi { " + alibi" } else { "" },
        k.softcap
            .map(|c| format!(", softcap {c}"))
            .unwrap_or_default(),
        k.heads,
        k.kv_heads,
        k.head_dim,
        k.window
            .map(|w| format!(", window {w}"))
            .unwrap_or_default(),
        k.heads,
    );
    Kernel {
        name,
        doc,
        source,
        launch: LaunchShape {
            grid: [
                GridDim::Arg("seq"),
                GridDim::Const(k.heads as u32),
                GridDim::Arg("batch"),
            ],
            block: [32, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

fn act_kernel(kind: MlpKind, hidden: u64) -> Kernel {
    let (tag, expr) = match kind {
        MlpKind::Gelu => ("gelu", "ms_gelu(u)"),
        MlpKind::GeluTanh => ("gelu_tanh", "ms_gelu_tanh(u)"),
        MlpKind::ReluSquared => ("relu2", "fmaxf(u, 0.f) * fmaxf(u, 0.f)"),
        MlpKind::Swiglu => ("swiglu", "g / (1.f + __expf(-g)) * u"),
        MlpKind::Geglu => ("geglu", "ms_gelu(g) * u"),
        MlpKind::GegluTanh => ("geglu_tanh", "ms_gelu_tanh(g) * u"),
    };
    let name = format!("{tag}_fwd_f32_h{hidden}");
    let gate = if kind.is_gated() {
        "const float g = gate[i]; "
    } else {
        "(void)gate; "
    };
    let source = format!(
        "extern \"C\" __global__ void {name}(float* out, const float* gate, const float* up, unsigned long long n) {{\n\
         \x20   const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;\n\
         \x20   if (i >= n) return;\n\
         \x20   {gate}const float u = up[i];\n\
         \x20   out[i] = {expr};\n\
         }}\n"
    );
    let doc = format!(
        "{name}: the {tag} activation of [rows, {hidden}] MLP pre-activations, element-wise.\n\
         Launch: grid ceil(n / {ELEMENTWISE_BLOCK}), block {ELEMENTWISE_BLOCK}. Traffic: reads {} and writes n elements once.",
        if kind.is_gated() { "gate and up" } else { "up" }
    );
    Kernel {
        name,
        doc,
        source,
        launch: LaunchShape {
            grid: [
                GridDim::CeilDiv("n", ELEMENTWISE_BLOCK),
                GridDim::Const(1),
                GridDim::Const(1),
            ],
            block: [ELEMENTWISE_BLOCK, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

fn router_kernel(experts: u64, top_k: u64, softmax_first: bool, renormalize: bool) -> Kernel {
    let order = if softmax_first {
        "softmax_topk"
    } else {
        "topk_softmax"
    };
    let name = format!(
        "moe_router_f32_e{experts}_k{top_k}_{order}{}",
        if renormalize { "_norm" } else { "" }
    );
    let source = format!(
        "extern \"C\" __global__ void {name}(float* weights, int* ids, const float* logits, unsigned long long rows) {{\n\
         \x20   const int E = {experts}, K = {top_k};\n\
         \x20   const size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x;\n\
         \x20   if (r >= rows) return;\n\
         \x20   const float* x = logits + r * E;\n\
         \x20   float mx = NEG_INF_F;\n\
         \x20   for (int e = 0; e < E; ++e) mx = fmaxf(mx, x[e]);\n\
         \x20   float z = 0.f;\n\
         \x20   for (int e = 0; e < E; ++e) z += __expf(x[e] - mx);\n\
         \x20   float taken_sum = 0.f, top_z = 0.f;\n\
         \x20   for (int k = 0; k < K; ++k) {{\n\
         \x20       int best = -1; float bv = NEG_INF_F;\n\
         \x20       for (int e = 0; e < E; ++e) {{\n\
         \x20           bool taken = false;\n\
         \x20           for (int j = 0; j < k; ++j) taken |= ids[r * K + j] == e;\n\
         \x20           if (!taken && (best < 0 || x[e] > bv)) {{ best = e; bv = x[e]; }}\n\
         \x20       }}\n\
         \x20       ids[r * K + k] = best;\n\
         \x20       weights[r * K + k] = {softmax_first_expr};\n\
         \x20       taken_sum += weights[r * K + k];\n\
         \x20       top_z += __expf(bv - mx);\n\
         \x20   }}\n\
         \x20   (void)z; (void)taken_sum; (void)top_z;\n\
         \x20   for (int k = 0; k < K; ++k) weights[r * K + k] /= {norm};\n\
         }}\n",
        softmax_first_expr = if softmax_first {
            "__expf(bv - mx) / z"
        } else {
            "__expf(bv - mx)"
        },
        norm = match (softmax_first, renormalize) {
            (true, true) => "taken_sum",
            (true, false) => "1.f",
            (false, _) => "top_z",
        },
    );
    let doc = format!(
        "{name}: per token, {} over {experts} router logits and the top {top_k} experts{}.\n\
         Launch: grid ceil(rows / {ELEMENTWISE_BLOCK}), block {ELEMENTWISE_BLOCK} (one thread per token). \
         Traffic: reads {experts} logits, writes {top_k} ids and weights per token.",
        if softmax_first {
            "softmax then top-k"
        } else {
            "top-k then softmax"
        },
        if renormalize && softmax_first {
            ", renormalised to sum 1"
        } else {
            ""
        }
    );
    Kernel {
        name,
        doc,
        source,
        launch: LaunchShape {
            grid: [
                GridDim::CeilDiv("rows", ELEMENTWISE_BLOCK),
                GridDim::Const(1),
                GridDim::Const(1),
            ],
            block: [ELEMENTWISE_BLOCK, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

fn cross_entropy_kernel(spec: &ModelSpec) -> Kernel {
    let v = spec.vocab_padded;
    let name = format!("cross_entropy_fwd_f32_v{v}");
    let cap = match spec.logits.softcap {
        Some(c) => format!("{} * tanhf(x / {})", fl(c), fl(c)),
        None => "x".to_string(),
    };
    let source = format!(
        "__device__ __forceinline__ float {name}_logit(float x) {{ return {cap}; }}\n\
         extern \"C\" __global__ void {name}(float* loss, const float* logits, const unsigned int* targets) {{\n\
         \x20   const int V = {v}, VOCAB = {vocab};\n\
         \x20   __shared__ float scratch[32];\n\
         \x20   const size_t row = blockIdx.x;\n\
         \x20   const float* x = logits + row * V;\n\
         \x20   float mx = NEG_INF_F;\n\
         \x20   for (int c = threadIdx.x; c < VOCAB; c += blockDim.x) mx = fmaxf(mx, {name}_logit(x[c]));\n\
         \x20   mx = ms_block_max(mx, scratch);\n\
         \x20   float z = 0.f;\n\
         \x20   for (int c = threadIdx.x; c < VOCAB; c += blockDim.x) z += __expf({name}_logit(x[c]) - mx);\n\
         \x20   z = ms_block_sum(z, scratch);\n\
         \x20   if (threadIdx.x == 0) loss[row] = logf(z) + mx - {name}_logit(x[targets[row]]);\n\
         }}\n",
        vocab = spec.vocab,
    );
    let doc = format!(
        "{name}: per row, -log softmax(logits{})[target] over the {} real vocabulary entries of {v} rows.\n\
         Launch: grid rows, block {ROW_BLOCK}. Traffic: reads each logit row twice, writes one float.",
        spec.logits
            .softcap
            .map(|c| format!(" softcapped at {c}"))
            .unwrap_or_default(),
        spec.vocab
    );
    Kernel {
        name,
        doc,
        source,
        launch: LaunchShape {
            grid: [GridDim::Arg("rows"), GridDim::Const(1), GridDim::Const(1)],
            block: [ROW_BLOCK, 1, 1],
            shared_mem_bytes: 0,
        },
    }
}

/// The kernels `spec` needs, one per distinct configuration, in a fixed order.
pub fn kernels(spec: &ModelSpec) -> Vec<Kernel> {
    let mut by_name: BTreeMap<String, Kernel> = BTreeMap::new();
    let mut add = |k: Kernel| {
        by_name.entry(k.name.clone()).or_insert(k);
    };
    add(embed_kernel(spec));
    for layer in &spec.layers {
        add(norm_kernel(&layer.block.norm, spec.d_model));
        let a = &layer.attention;
        if let Some(qk) = &a.qk_norm {
            match qk.scope {
                crate::ir::QkNormScope::Head => add(norm_kernel(&qk.norm, a.head_dim)),
                crate::ir::QkNormScope::Full => {
                    add(norm_kernel(&qk.norm, a.heads * a.head_dim));
                    add(norm_kernel(&qk.norm, a.kv_heads * a.head_dim));
                }
            }
        }
        if let Position::Rope(r) = &layer.position {
            add(rope_kernel(a.heads, a.head_dim, r.rotary_dims, r.style));
            add(rope_kernel(a.kv_heads, a.head_dim, r.rotary_dims, r.style));
        }
        add(attention_kernel(&AttnKey {
            heads: a.heads,
            kv_heads: a.kv_heads,
            head_dim: a.head_dim,
            window: a.window,
            softcap: a.softcap,
            scale: a.scale,
            alibi: matches!(layer.position, Position::Alibi),
        }));
        match &layer.ffn {
            Ffn::Mlp(m) => add(act_kernel(m.activation, m.hidden)),
            Ffn::Moe(m) => {
                add(router_kernel(
                    m.experts,
                    m.top_k,
                    m.router == crate::ir::RouterOrder::SoftmaxTopk,
                    m.renormalize,
                ));
                add(act_kernel(m.expert.activation, m.expert.hidden));
                if let Some(s) = &m.shared {
                    add(act_kernel(m.expert.activation, s.count * s.hidden));
                }
            }
        }
    }
    if let Some(n) = &spec.final_norm {
        add(norm_kernel(n, spec.d_model));
    }
    add(cross_entropy_kernel(spec));
    by_name.into_values().collect()
}

const PRELUDE: &str = r#"// Helpers shared by the kernels below; no CUDA headers needed (NVRTC compiles this as is).
#define NEG_INF_F (__int_as_float(0xff800000))

__device__ __forceinline__ float ms_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float ms_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Reduction over a block whose size is a multiple of 32; `scratch` holds 32 floats.
__device__ __forceinline__ float ms_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = ms_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return ms_warp_sum(v);
}
__device__ __forceinline__ float ms_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = ms_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF_F;
    return ms_warp_max(v);
}
__device__ __forceinline__ float ms_gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float ms_gelu_tanh(float x) {
    return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}
"#;

/// The CUDA C source of `spec`'s kernels.
pub fn source(spec: &ModelSpec) -> String {
    let mut out = format!(
        "// @generated by modelspec from the spec `{}`: kernels specialised to its sizes.\n\
         // d_model {}, {} layers, vocab {} (rows {}).\n\n{PRELUDE}",
        super::comment_text(&spec.name),
        spec.d_model,
        spec.n_layers,
        spec.vocab,
        spec.vocab_padded
    );
    for k in kernels(spec) {
        out.push('\n');
        for line in k.doc.lines() {
            out.push_str("// ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&k.source);
    }
    out
}

fn grid_expr(d: &GridDim) -> TokenStream {
    match d {
        GridDim::Const(n) => {
            let n = proc_macro2::Literal::u32_unsuffixed(*n);
            quote!(#n)
        }
        GridDim::Arg(a) => {
            let a = format_ident!("{}", a);
            quote!(#a as u32)
        }
        GridDim::CeilDiv(a, n) => {
            let a = format_ident!("{}", a);
            let n = lit_usize(*n as u64);
            quote!(#a.div_ceil(#n) as u32)
        }
    }
}

/// `pub struct {Type}Kernels` with `CUDA_SOURCE` and one launch function per kernel.
pub(crate) fn emit(layout: &Layout<'_>, src: &str, how: &CudaSource) -> TokenStream {
    let ty = &layout.ty;
    let k_ty = format_ident!("{}Kernels", ty);
    let source = match how {
        CudaSource::Inline => {
            let lit = super::model_impl::raw_str(src);
            quote!(#lit)
        }
        CudaSource::IncludeStr(path) => quote!(::std::include_str!(#path)),
    };
    let fns = kernels(layout.spec).into_iter().map(|k| {
        let f = format_ident!("{}", k.name);
        let name = &k.name;
        let args: Vec<_> = k
            .launch
            .args()
            .into_iter()
            .map(|a| format_ident!("{}", a))
            .collect();
        let [gx, gy, gz] = [&k.launch.grid[0], &k.launch.grid[1], &k.launch.grid[2]].map(grid_expr);
        let [bx, by, bz] = k.launch.block.map(proc_macro2::Literal::u32_unsuffixed);
        let shared = proc_macro2::Literal::u32_unsuffixed(k.launch.shared_mem_bytes);
        let docs = k.doc.lines().map(|l| {
            let l = format!(" {l}");
            quote!(#[doc = #l])
        });
        quote! {
            #(#docs)*
            pub fn #f(#(#args: usize),*) -> ::modelspec::KernelLaunch {
                ::modelspec::KernelLaunch {
                    kernel: #name,
                    grid: [#gx, #gy, #gz],
                    block: [#bx, #by, #bz],
                    shared_mem_bytes: #shared,
                }
            }
        }
    });
    let doc = format!(
        " The CUDA kernels of [`{ty}`], specialised to its sizes, and their launch shapes."
    );
    let name = layout.spec.name.as_str();
    let allow = super::structs::allow_names(&k_ty.to_string());
    quote! {
        #[doc = #doc]
        #allow
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct #k_ty;

        impl #k_ty {
            /// CUDA C source of every kernel below (compiled by NVRTC at first use).
            pub const CUDA_SOURCE: &str = #source;

            /// Compile [`Self::CUDA_SOURCE`] for `gpu` (NVRTC, cached on disk) and load it; launch
            /// a kernel with its launch function's [`::modelspec::KernelLaunch::launch`].
            pub fn load(
                gpu: &::modelspec::runtime::cuda::Gpu,
            ) -> ::modelspec::Result<::std::sync::Arc<::modelspec::runtime::cuda::gpu::Module>> {
                ::modelspec::load_kernels(gpu, #name, Self::CUDA_SOURCE)
            }

            #(#fns)*
        }
    }
}
