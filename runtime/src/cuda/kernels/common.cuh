// Shared helpers for every modelspec kernel. Self-contained: no CUDA headers are needed, so NVRTC
// compiles these sources without an include path (bf16 is handled as raw 16-bit storage and
// converted with integer arithmetic or inline PTX).
typedef unsigned short bf16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NEG_INF (__int_as_float(0xff800000))
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float bf16_to_f32(bf16 x) { return __uint_as_float(((u32)x) << 16); }

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// ALiBi bias of key position j (within its sequence) for a head of slope `slope`, as Falcon/HF
// build it: slope * j in f32, rounded to bf16. The bias is added to q.k before the scale.
__device__ __forceinline__ float alibi_bias(float slope, int j) { return bf16_to_f32(f32_to_bf16(slope * (float)j)); }

// Two floats to a packed pair of bf16 (lo in the low half), as mma operands want.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Loads and stores that hide the storage type: compute is always f32.
__device__ __forceinline__ float lf(const float* p) { return *p; }
__device__ __forceinline__ float lf(const bf16* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void sf(float* p, float v) { *p = v; }
__device__ __forceinline__ void sf(bf16* p, float v) { *p = f32_to_bf16(v); }
// v rounded to the storage type T (identity for float).
template <typename T>
__device__ __forceinline__ float round_to(float v) {
    T t;
    sf(&t, v);
    return lf(&t);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// ---- warp-per-row attention (attention_simple.cu, decode.cu): a head row of D <= 256 elements
// spread over a warp, element d in slot d / 32 of lane d % 32.
#define ATTN_MAXD_LANE 8  // 256 / 32

// This lane's slots of the head row r (D elements; 0 past D).
template <typename T>
__device__ __forceinline__ void attn_lane_load(const T* r, int D, int lane, float* v) {
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        v[e] = d < D ? lf(r + d) : 0.f;
    }
}

// The first key query i may see (window and chunk; causal masks from above).
__device__ __forceinline__ int attn_first_key(int i, int window, int chunk) {
    int j0 = window > 0 ? max(0, i - window + 1) : 0;
    return chunk > 0 ? max(j0, i / chunk * chunk) : j0;
}

// Whether query i sees key j (the mask of attention_simple.cu's header: causal, window, chunk).
__device__ __forceinline__ bool attn_visible(int i, int j, int T, int causal, int window, int chunk) {
    return j < T && (!causal || j <= i) && (window <= 0 || i - j < window) && (chunk <= 0 || i / chunk == j / chunk);
}

// Whether a tile of queries [q0, q0 + bm) and keys [k0, k0 + bn) holds pairs from different
// chunks (then it needs the per-element mask).
__device__ __forceinline__ bool attn_tile_spans_chunks(int q0, int bm, int k0, int bn, int chunk) {
    return chunk > 0 && min(q0, k0) / chunk != max(q0 + bm - 1, k0 + bn - 1) / chunk;
}

// Llama 4's query temperature at position `pos`: 1 + scale * log1p(floor((pos + 1) / floor)), in
// f32 as transformers computes it.
__device__ __forceinline__ float attn_temperature(float pos, float floor_, float scale) {
    return log1pf(floorf((pos + 1.f) / floor_)) * scale + 1.f;
}

// One key j (row kr, value row vr) of a warp's online softmax for the query in qv: the score
// s = scale * (q.k + alibi_bias(slope, j) when `alibi`), softcap * tanh(s / softcap) when
// softcap > 0; the running max m and sum l are updated and acc = acc * corr + p * v. q and k
// are D wide, v (and acc) DV wide.
template <typename T>
__device__ __forceinline__ void attn_online_key(const float* qv, float* acc, const T* kr, const T* vr, int D,
                                                int DV, int lane, bool alibi, float slope, int j, float scale,
                                                float softcap, float& m, float& l) {
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        if (d < D) dot += qv[e] * lf(kr + d);
    }
    dot = warp_sum(dot);
    if (alibi) dot += alibi_bias(slope, j);
    float s = dot * scale;
    if (softcap > 0.f) s = softcap * tanhf(s / softcap);
    float mn = fmaxf(m, s);
    float corr = __expf(m - mn);
    float p = __expf(s - mn);
    l = l * corr + p;
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        if (d < DV) acc[e] = acc[e] * corr + p * lf(vr + d);
    }
    m = mn;
}

// ---- RoPE (ops/rope/rope.cu's `rope`, decode.cu's `dec_rope`): one thread per (row, head, pair).

// The row n, head h and pair i of thread `idx` over N rows of `heads` heads of `half` pairs;
// false past the end.
__device__ __forceinline__ bool rope_thread(size_t idx, int N, int heads, int half, size_t* n, int* h, int* i) {
    if (idx >= (size_t)N * heads * half) return false;
    *i = idx % half;
    *h = (idx / half) % heads;
    *n = idx / ((size_t)half * heads);
    return true;
}

// Rotates pair i of the head at p by the angle of (c, s): HalfSplit pairs (i, i + half),
// interleaved pairs (2i, 2i + 1).
template <typename T>
__device__ __forceinline__ void rope_rotate(T* p, int i, int half, int interleaved, float c, float s) {
    int a = interleaved ? 2 * i : i;
    int b = interleaved ? 2 * i + 1 : i + half;
    float x1 = lf(p + a), x2 = lf(p + b);
    sf(p + a, x1 * c - x2 * s);
    sf(p + b, x2 * c + x1 * s);
}

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_erf_grad(float x) {
    float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
    float pdf = 0.3989422804014327f * __expf(-0.5f * x * x);
    return cdf + x * pdf;
}
__device__ __forceinline__ float gelu_tanh(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.f + tanhf(u));
}
__device__ __forceinline__ float gelu_tanh_grad(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    float du = 0.7978845608028654f * (1.f + 3.f * 0.044715f * x * x);
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
}
__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float silu_grad(float x) {
    float s = 1.f / (1.f + __expf(-x));
    return s * (1.f + x * (1.f - s));
}

// 16-byte vector access: 8 bf16 or 4 f32 per load/store, converted to/from f32 (the address must
// be 16-byte aligned: callers check their rows' alignment and strides).
__device__ __forceinline__ void ld16(const float* p, float* out) {
    float4 v = *(const float4*)p;
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
__device__ __forceinline__ void ld16(const bf16* p, float* out) {
    uint4 v = *(const uint4*)p;
    u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        out[2 * k] = __uint_as_float(w[k] << 16);
        out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}
// Asks L2 for the 128-byte line at p (no register, no wait): a load issued later in the same
// row then finds it there instead of paying a second HBM latency.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
__device__ __forceinline__ void st16(float* p, const float* in) { *(float4*)p = make_float4(in[0], in[1], in[2], in[3]); }
__device__ __forceinline__ void st16(bf16* p, const float* in) {
    u32 w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (u32)f32_to_bf16(in[2 * k]) | ((u32)f32_to_bf16(in[2 * k + 1]) << 16);
    *(uint4*)p = make_uint4(w[0], w[1], w[2], w[3]);
}
