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
// Launch: grid-stride, block 256. Traffic: reads w,g,m,v, writes w,m,v,param: 28 + |T| B/elt.
template <typename T>
__device__ void adamw(float* master, T* param, const float* grad, float* m, float* v, size_t n,
                      size_t decay_end, float b1, float b2, float omb1, float omb2, float step_size,
                      float inv_bc2_sqrt, float eps, float decay, float gs1, float gs2) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float g = __fmul_rn(__fmul_rn(grad[i], gs1), gs2);
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(omb1, g));
        float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(omb2, g), g));
        m[i] = mi;
        v[i] = vi;
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_bc2_sqrt), eps);
        float w = master[i];
        float d = i < decay_end ? decay : 1.f;
        w = __fsub_rn(__fmul_rn(w, d), __fdiv_rn(__fmul_rn(step_size, mi), denom));
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
        adamw<T>(master, param, grad, m, v, n, decay_end, b1, b2, omb1, omb2, step_size,              \
                 inv_bc2_sqrt, eps, decay, gs1, gs2);                                                 \
    }
ADAMW_INSTANTIATE(f32, float)
ADAMW_INSTANTIATE(bf16, bf16)
