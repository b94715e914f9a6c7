// ---- norm: RMSNorm / LayerNorm fused with the residual add, forward and backward ----

// The spec's model width, set by the library's instance for the spec (`#define MS_D_MODEL`):
// rows of exactly that width (every block norm) run an instantiation whose row length and 1/C
// are compile-time constants; other widths (qk-norms, tests) pass C at run time (CT = 0).
#ifndef MS_D_MODEL
#define MS_D_MODEL 0
#endif

// Rows of the spec's width (CT > 0) held in registers, read and written in 16-byte vectors:
// thread t owns vectors t, t + blockDim, ... of the row (at most MAXV of them). Used when every
// pointer is 16-byte aligned and the block has enough threads to cover the row (`norm_vec_ok`),
// else the element-wise loops below run. One read of each input, one write of each output.
template <typename T>
__device__ __forceinline__ float as_stored(float v);
template <>
__device__ __forceinline__ float as_stored<float>(float v) { return v; }
template <>
__device__ __forceinline__ float as_stored<bf16>(float v) { return bf16_to_f32(f32_to_bf16(v)); }

__device__ __forceinline__ bool aligned16(const void* p) { return ((size_t)p & 15) == 0; }

template <typename T, int CT>
struct NormVec {
    static const int VN = 16 / (int)sizeof(T);
    static const int NV = CT > 0 ? CT / VN : 0;
    static const int MAXV = NV > 0 ? (NV + 127) / 128 : 1;
    static const bool WIDTH_OK = CT > 0 && CT % VN == 0;
};

template <typename T, int CT>
__device__ bool norm_vec_ok(const void* a, const void* b, const void* c, const void* d, const void* e,
                            const void* f) {
    typedef NormVec<T, CT> V;
    if (!V::WIDTH_OK || (int)blockDim.x * V::MAXV < V::NV) return false;
    return (!a || aligned16(a)) && (!b || aligned16(b)) && (!c || aligned16(c)) && (!d || aligned16(d)) &&
           (!e || aligned16(e)) && (!f || aligned16(f));
}

template <typename T, int CT>
__device__ void norm_fwd_vec(T* y, T* r_out, float* rstd_out, float* mean_out, const T* x, const T* res,
                             const T* w, const T* b, float eps, float offset, int is_layer) {
    typedef NormVec<T, CT> V;
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    float v[V::MAXV][V::VN];
    float sum = 0.f, sumsq = 0.f;
#pragma unroll
    for (int k = 0; k < V::MAXV; k++) {
        int vi = threadIdx.x + k * blockDim.x;
        if (vi >= V::NV) continue;
        size_t at = row * CT + (size_t)vi * V::VN;
        ld16(x + at, v[k]);
        if (res) {
            float t[V::VN];
            ld16(res + at, t);
#pragma unroll
            for (int e = 0; e < V::VN; e++) v[k][e] += t[e];
        }
        if (r_out) {
            // The residual as stored (see norm_fwd).
            st16(r_out + at, v[k]);
#pragma unroll
            for (int e = 0; e < V::VN; e++) v[k][e] = as_stored<T>(v[k][e]);
        }
#pragma unroll
        for (int e = 0; e < V::VN; e++) {
            sum += v[k][e];
            sumsq += v[k][e] * v[k][e];
        }
    }
    float mu = 0.f, var;
    if (is_layer) {
        mu = block_sum(sum, scratch) / CT;
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < V::MAXV; k++) {
            if (threadIdx.x + k * blockDim.x >= V::NV) continue;
#pragma unroll
            for (int e = 0; e < V::VN; e++) acc += (v[k][e] - mu) * (v[k][e] - mu);
        }
        var = block_sum(acc, scratch) / CT;
    } else {
        var = block_sum(sumsq, scratch) / CT;
    }
    float rstd = rsqrtf(var + eps);
    if (threadIdx.x == 0) {
        rstd_out[row] = rstd;
        if (mean_out) mean_out[row] = mu;
    }
#pragma unroll
    for (int k = 0; k < V::MAXV; k++) {
        int vi = threadIdx.x + k * blockDim.x;
        if (vi >= V::NV) continue;
        int c = vi * V::VN;
        float wv[V::VN], bv[V::VN], o[V::VN];
        if (w) ld16(w + c, wv);
        if (b) ld16(b + c, bv);
#pragma unroll
        for (int e = 0; e < V::VN; e++)
            o[e] = (v[k][e] - mu) * rstd * (w ? offset + wv[e] : 1.f) + (b ? bv[e] : 0.f);
        st16(y + row * CT + c, o);
    }
}

template <typename T, int CT>
__device__ void norm_bwd_vec(T* dx, const T* dy, const T* r, const T* w, const float* rstd,
                             const float* mean, const T* dres, float offset, int is_layer) {
    typedef NormVec<T, CT> V;
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    float rs = rstd[row];
    float mu = is_layer ? mean[row] : 0.f;
    float xh[V::MAXV][V::VN], g[V::MAXV][V::VN];
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int k = 0; k < V::MAXV; k++) {
        int vi = threadIdx.x + k * blockDim.x;
        if (vi >= V::NV) continue;
        int c = vi * V::VN;
        ld16(r + row * CT + c, xh[k]);
        ld16(dy + row * CT + c, g[k]);
        float wv[V::VN];
        if (w) ld16(w + c, wv);
#pragma unroll
        for (int e = 0; e < V::VN; e++) {
            xh[k][e] = (xh[k][e] - mu) * rs;
            g[k][e] *= w ? offset + wv[e] : 1.f;
            sg += g[k][e];
            sgx += g[k][e] * xh[k][e];
        }
    }
    float mean_g = is_layer ? block_sum(sg, scratch) / CT : 0.f;
    float mean_gx = block_sum(sgx, scratch) / CT;
#pragma unroll
    for (int k = 0; k < V::MAXV; k++) {
        int vi = threadIdx.x + k * blockDim.x;
        if (vi >= V::NV) continue;
        int c = vi * V::VN;
        float d[V::VN], dr[V::VN];
        if (dres) ld16(dres + row * CT + c, dr);
#pragma unroll
        for (int e = 0; e < V::VN; e++)
            d[e] = rs * (g[k][e] - mean_g - xh[k][e] * mean_gx) + (dres ? dr[e] : 0.f);
        st16(dx + row * CT + c, d);
    }
}

// norm_fwd_{dtype}: r = x (+ res); y = norm(r) * (offset + w) (+ b), r as stored in r_out.
//   RMS:   y = r * rstd * wf,            rstd = 1/sqrt(mean(r^2) + eps)
//   Layer: y = (r - mu) * rstd * wf + b, rstd = 1/sqrt(var(r) + eps)
// Writes y [N, C], r_out [N, C] (when res and r_out are given: the new residual stream), and the
// f32 statistics rstd [N] and mean [N] (mean only for LayerNorm) that the backward reads.
// Launch: grid N (one block per row), block 256 (multiple of 32). Traffic: reads x (+res) twice
// (second pass from L1/L2), reads w/b, writes y (+r_out): about 3-4 x N*C elements.
template <typename T, int CT>
__device__ void norm_fwd(T* y, T* r_out, float* rstd_out, float* mean_out, const T* x, const T* res,
                         const T* w, const T* b, int C_, float eps, float offset, int is_layer) {
    const int C = CT ? CT : C_;
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    const T* xr = x + row * C;
    const T* rr = res ? res + row * C : 0;
    float sum = 0.f, sumsq = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = lf(xr + c) + (rr ? lf(rr + c) : 0.f);
        if (r_out) {
            // Normalise the residual as stored (rounded to T): the backward and any
            // recomputation from the kept residual then see exactly these values.
            sf(r_out + row * C + c, v);
            v = lf(r_out + row * C + c);
        }
        sum += v;
        sumsq += v * v;
    }
    float mu = 0.f;
    if (is_layer) {
        mu = block_sum(sum, scratch) / C;
    }
    // Second moment about the mean, computed from a second read for LayerNorm (stable), or from
    // the first pass for RMSNorm.
    float var;
    if (is_layer) {
        float acc = 0.f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float v = r_out ? lf(r_out + row * C + c) : lf(xr + c) + (rr ? lf(rr + c) : 0.f);
            acc += (v - mu) * (v - mu);
        }
        var = block_sum(acc, scratch) / C;
    } else {
        var = block_sum(sumsq, scratch) / C;
    }
    float rstd = rsqrtf(var + eps);
    if (threadIdx.x == 0) {
        rstd_out[row] = rstd;
        if (mean_out) mean_out[row] = mu;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = r_out ? lf(r_out + row * C + c) : lf(xr + c) + (rr ? lf(rr + c) : 0.f);
        float wf = w ? offset + lf(w + c) : 1.f;
        float o = (v - mu) * rstd * wf + (b ? lf(b + c) : 0.f);
        sf(y + row * C + c, o);
    }
}

// norm_bwd_{dtype}: dx = d(norm)/dr . dy (+ dres): with xhat = (r - mu) * rstd, g = dy * wf:
//   RMS:   dx = rstd * (g - xhat * mean(g * xhat))
//   Layer: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// `dres` (nullable) is the gradient already flowing along the residual stream; it is added, so
// dx is the full gradient of the residual input. Weight/bias grads are a separate column
// reduction (`cuda/kernels/reduce.cu`). Launch: grid N, block 256. Traffic: reads r, dy twice,
// writes dx.
template <typename T, int CT>
__device__ void norm_bwd(T* dx, const T* dy, const T* r, const T* w, const float* rstd,
                         const float* mean, const T* dres, int C_, float offset, int is_layer) {
    const int C = CT ? CT : C_;
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    float rs = rstd[row];
    float mu = is_layer ? mean[row] : 0.f;
    float sg = 0.f, sgx = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (lf(r + row * C + c) - mu) * rs;
        float g = lf(dy + row * C + c) * (w ? offset + lf(w + c) : 1.f);
        sg += g;
        sgx += g * xhat;
    }
    float mean_g = is_layer ? block_sum(sg, scratch) / C : 0.f;
    float mean_gx = block_sum(sgx, scratch) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (lf(r + row * C + c) - mu) * rs;
        float g = lf(dy + row * C + c) * (w ? offset + lf(w + c) : 1.f);
        float d = rs * (g - mean_g - xhat * mean_gx);
        if (dres) d += lf(dres + row * C + c);
        sf(dx + row * C + c, d);
    }
}

#define NORM_INSTANTIATE(SUF, T)                                                                     \
    extern "C" __global__ void norm_fwd_##SUF(T* y, T* r_out, float* rstd, float* mean, const T* x,  \
                                              const T* res, const T* w, const T* b, int C, float eps, \
                                              float offset, int is_layer) {                           \
        if (MS_D_MODEL && C == MS_D_MODEL && norm_vec_ok<T, MS_D_MODEL>(y, r_out, x, res, w, b))      \
            norm_fwd_vec<T, MS_D_MODEL>(y, r_out, rstd, mean, x, res, w, b, eps, offset, is_layer);   \
        else if (MS_D_MODEL && C == MS_D_MODEL)                                                      \
            norm_fwd<T, MS_D_MODEL>(y, r_out, rstd, mean, x, res, w, b, C, eps, offset, is_layer);   \
        else                                                                                         \
            norm_fwd<T, 0>(y, r_out, rstd, mean, x, res, w, b, C, eps, offset, is_layer);            \
    }                                                                                                \
    extern "C" __global__ void norm_bwd_##SUF(T* dx, const T* dy, const T* r, const T* w,            \
                                              const float* rstd, const float* mean, const T* dres,   \
                                              int C, float offset, int is_layer) {                   \
        if (MS_D_MODEL && C == MS_D_MODEL && norm_vec_ok<T, MS_D_MODEL>(dx, dy, r, w, dres, 0))       \
            norm_bwd_vec<T, MS_D_MODEL>(dx, dy, r, w, rstd, mean, dres, offset, is_layer);            \
        else if (MS_D_MODEL && C == MS_D_MODEL)                                                      \
            norm_bwd<T, MS_D_MODEL>(dx, dy, r, w, rstd, mean, dres, C, offset, is_layer);            \
        else                                                                                         \
            norm_bwd<T, 0>(dx, dy, r, w, rstd, mean, dres, C, offset, is_layer);                     \
    }
NORM_INSTANTIATE(f32, float)
NORM_INSTANTIATE(bf16, bf16)
