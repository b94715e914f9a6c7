// ---- AdamW: the fused optimizer step over a parameter arena (launcher in cuda.rs) ----

// adamw_{dtype}: one AdamW step over the whole parameter arena (every tensor in one launch), on
// f32 master weights; writes the working copy `param` (nullable). The host's rule and arithmetic
// (mod.rs beside this file): the f32 scalars formed on the host in f64, and the operations in the host
// loop's order, each rounded as there (the _rn intrinsics: no FMA contraction; under fast math
// only subnormals differ, flushed to zero):
//   g = grad * gs1 * gs2                      (the mean over micro-batches, then the clip factor)
//   m = b1 m + omb1 g;  v = b2 v + (omb2 g) g
//   w = w * (i < decay_end ? decay : 1) - (step_size m) / (sqrt(v) inv_bc2_sqrt + eps)
// Decaying parameters are laid out first, so one offset splits decay from no decay.
// Launch: grid-stride, block 256, a thread 4 elements a turn in 16-byte vectors where every
// pointer allows (the host's grid covers n / 4); otherwise, and for the last n % 4, one at a time.
// Traffic: reads w,g,m,v, writes w,m,v,param: 28 + |T| B/elt.
struct AdamwScalars {
    size_t decay_end;
    float b1, b2, omb1, omb2, step_size, inv_bc2_sqrt, eps, decay, gs1, gs2;
};

// Element i: updates m, v and w in place (the arithmetic above).
__device__ __forceinline__ void adamw_elt(const AdamwScalars& a, size_t i, float g, float& m, float& v,
                                          float& w) {
    g = __fmul_rn(__fmul_rn(g, a.gs1), a.gs2);
    m = __fadd_rn(__fmul_rn(a.b1, m), __fmul_rn(a.omb1, g));
    v = __fadd_rn(__fmul_rn(a.b2, v), __fmul_rn(__fmul_rn(a.omb2, g), g));
    float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), a.inv_bc2_sqrt), a.eps);
    float d = i < a.decay_end ? a.decay : 1.f;
    w = __fsub_rn(__fmul_rn(w, d), __fdiv_rn(__fmul_rn(a.step_size, m), denom));
}

// Four working-copy elements from 16 bytes of f32 (one 16-byte or 8-byte store).
__device__ __forceinline__ void st4(float* p, float4 w) { *(float4*)p = w; }
__device__ __forceinline__ void st4(bf16* p, float4 w) {
    *(uint2*)p = make_uint2((u32)f32_to_bf16(w.x) | ((u32)f32_to_bf16(w.y) << 16),
                            (u32)f32_to_bf16(w.z) | ((u32)f32_to_bf16(w.w) << 16));
}

// Which rows of a [rows, width] parameter a masked launch updates: those whose mask word is
// `want` (the trainer's overlapped AdamW splits the embedding by the batch's tokens).
struct AdamwRows {
    const unsigned* mask;
    size_t width;
    unsigned want;
};

// Whether element i is left to the other masked launch.
template <bool MASKED>
__device__ __forceinline__ bool adamw_skip(const AdamwRows& r, size_t i) {
    return MASKED && r.mask[i / r.width] != r.want;
}

template <typename T, bool MASKED>
__device__ void adamw(float* master, T* param, const float* grad, float* m, float* v, size_t n,
                      const AdamwScalars& a, const AdamwRows& r) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    // A masked vector must lie in one row.
    const bool vec = (((size_t)master | (size_t)grad | (size_t)m | (size_t)v) & 15) == 0 &&
                     ((size_t)param & (4 * sizeof(T) - 1)) == 0 && (!MASKED || r.width % 4 == 0);
    size_t done = 0;
    if (vec) {
        done = n / 4 * 4;
        for (size_t j = t; j < n / 4; j += stride) {
            if (adamw_skip<MASKED>(r, 4 * j)) continue;
            float4 w4 = ((const float4*)master)[j], g4 = ((const float4*)grad)[j];
            float4 m4 = ((const float4*)m)[j], v4 = ((const float4*)v)[j];
            adamw_elt(a, 4 * j, g4.x, m4.x, v4.x, w4.x);
            adamw_elt(a, 4 * j + 1, g4.y, m4.y, v4.y, w4.y);
            adamw_elt(a, 4 * j + 2, g4.z, m4.z, v4.z, w4.z);
            adamw_elt(a, 4 * j + 3, g4.w, m4.w, v4.w, w4.w);
            ((float4*)m)[j] = m4;
            ((float4*)v)[j] = v4;
            ((float4*)master)[j] = w4;
            if (param) st4(param + 4 * j, w4);
        }
    }
    for (size_t i = done + t; i < n; i += stride) {
        if (adamw_skip<MASKED>(r, i)) continue;
        float mi = m[i], vi = v[i], w = master[i];
        adamw_elt(a, i, grad[i], mi, vi, w);
        m[i] = mi;
        v[i] = vi;
        master[i] = w;
        if (param) sf(param + i, w);
    }
}

// The entry points adamw_f32 and adamw_bf16, by the working copy's dtype.
#define ADAMW_INSTANTIATE(SUF, T)                                                                    \
    extern "C" __global__ void adamw_##SUF(float* master, T* param, const float* grad, float* m,       \
                                           float* v, size_t n, size_t decay_end, float b1, float b2,  \
                                           float omb1, float omb2, float step_size,                   \
                                           float inv_bc2_sqrt, float eps, float decay, float gs1,     \
                                           float gs2) {                                               \
        const AdamwScalars a = {decay_end, b1, b2, omb1, omb2, step_size, inv_bc2_sqrt, eps, decay, gs1, \
                                gs2};                                                                   \
        adamw<T, false>(master, param, grad, m, v, n, a, AdamwRows{});                                 \
    }
ADAMW_INSTANTIATE(f32, float)
ADAMW_INSTANTIATE(bf16, bf16)

// adamw_dev_{dtype}: the same step with its scalars read from device memory, s[0..10] = b1, b2,
// omb1, omb2, step_size, inv_bc2_sqrt, eps, decay, gs1, gs2 (StepScalars::words in mod.rs): the
// form a captured CUDA graph replays with each step's values (the trainer's AdamW overlapped
// with its backward, one launch a layer's parameter range). With a non-null `mask`, only the
// elements of the rows r (rows of `width`) with mask[r] == want.
template <typename T>
__device__ void adamw_dev(float* master, T* param, const float* grad, float* m, float* v, size_t n,
                          size_t decay_end, const float* s, const unsigned* mask, size_t width, unsigned want) {
    const AdamwScalars a = {decay_end, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9]};
    const AdamwRows r = {mask, width, want};
    if (mask)
        adamw<T, true>(master, param, grad, m, v, n, a, r);
    else
        adamw<T, false>(master, param, grad, m, v, n, a, r);
}
#define ADAMW_DEV_INSTANTIATE(SUF, T)                                                                 \
    extern "C" __global__ void adamw_dev_##SUF(float* master, T* param, const float* grad, float* m,    \
                                               float* v, size_t n, size_t decay_end, const float* s,    \
                                               const unsigned* mask, size_t width, unsigned want) {     \
        adamw_dev<T>(master, param, grad, m, v, n, decay_end, s, mask, width, want);                     \
    }
ADAMW_DEV_INSTANTIATE(f32, float)
ADAMW_DEV_INSTANTIATE(bf16, bf16)

// mask[tokens[i]] = 1 for the n tokens of a batch (the mask zeroed before): the embedding rows
// the batch's embedding backward adds to, for the split update above.
extern "C" __global__ void adamw_mark_rows(const int* tokens, int n, unsigned* mask) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && tokens[i] >= 0) mask[tokens[i]] = 1u;
}
