// ---- norm, one warp per row: rows of the instance's width held in a warp's registers ----
//
// Rows of exactly MS_D_MODEL elements that fit a warp's registers (at most 8 16-byte vectors a
// lane: bf16 <= 2048, f32 <= 1024; `NormWarp::OK`; the host's `warp_rows` in ops/norm/cuda.rs
// launches them up to 4, where they measured faster than a block a row) run
// `norm_{fwd,bwd}_warp_{dtype}`: block 256 = 8 rows, warp w of block b owns
// row 8b + w, and the row's sums are warp shuffles (no shared memory, no __syncthreads), so a
// block keeps 8 rows in flight where `norm_fwd`/`norm_bwd` keep one and no lane idles at
// gpt2's 96 vectors a row. When every pointer is 16-byte aligned and the width a multiple of the
// vector, lane l owns the vectors l, l + 32, ... and the row stays in registers from its one read
// to its one write; otherwise the same kernel takes the row element by element (lane l owns
// elements l, l + 32, ...; correct for any alignment, slower), so the host's grid never depends
// on pointer alignment. Arithmetic and rounding as `norm_fwd` / `norm_bwd`: the residual
// normalised as stored, LayerNorm's variance a second pass about the mean, f32 statistics out,
// dres added last; only the order of the row's sums differs (each lane's elements in order, then
// a butterfly over the lanes), fixed, so results repeat bit for bit.

template <typename T, int CT>
struct NormWarp {
    static const int VN = 16 / (int)sizeof(T);
    static const bool OK = CT > 0 && CT <= 32 * 8 * VN;
    static const bool WIDTH_OK = CT > 0 && CT % VN == 0;
    // The width the kernels are instantiated with: CT when it qualifies, else a stand-in that
    // keeps the register arrays well-formed (those instances trap: the host never launches them).
    static const int W = OK ? CT : VN;
};

// 16-byte raw storage to f32, as ld16 converts (ld16 = load + unpack16).
template <typename T>
__device__ __forceinline__ void unpack16(uint4 v, float* out);
template <>
__device__ __forceinline__ void unpack16<float>(uint4 v, float* out) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
}
template <>
__device__ __forceinline__ void unpack16<bf16>(uint4 v, float* out) {
    u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        out[2 * k] = __uint_as_float(w[k] << 16);
        out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}

// A 16-byte vector's bits passed through an opaque move, so the compiler keeps the raw vector in
// registers between a row's two passes instead of the floats it converts to (twice the registers:
// a 2048-wide bf16 row would not fit).
__device__ __forceinline__ uint4 keep_raw(uint4 v) {
    asm volatile("mov.b32 %0, %0;" : "+r"(v.x));
    asm volatile("mov.b32 %0, %0;" : "+r"(v.y));
    asm volatile("mov.b32 %0, %0;" : "+r"(v.z));
    asm volatile("mov.b32 %0, %0;" : "+r"(v.w));
    return v;
}

// Row `row` of width CT by one warp in 16-byte vectors (VN elements): lane l owns vectors l,
// l + 32, ... (NV / 32 rounded up of them).
template <typename T, int CT>
__device__ __forceinline__ void norm_fwd_warp_vec(size_t row, int lane, T* y, T* r_out, float* rstd_out,
                                                  float* mean_out, const T* x, const T* res, const T* w,
                                                  const T* b, float eps, float offset, int is_layer) {
    const int VN = NormWarp<T, CT>::VN, NV = CT / VN, MAXV = (NV + 31) / 32;
    const size_t base = row * CT;
    // Every load of the row first (the r_out stores below may alias x or res for the compiler).
    uint4 rx[MAXV], rr[MAXV];
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        int u = lane + 32 * k;
        if (u < NV) rx[k] = *(const uint4*)(x + base + u * VN);
    }
    if (res) {
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            int u = lane + 32 * k;
            if (u < NV) rr[k] = *(const uint4*)(res + base + u * VN);
        }
    }
    float v[MAXV][VN];
    float sum = 0.f, sumsq = 0.f;
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        int u = lane + 32 * k;
        if (u >= NV) continue;
        unpack16<T>(rx[k], v[k]);
        if (res) {
            float t[VN];
            unpack16<T>(rr[k], t);
#pragma unroll
            for (int e = 0; e < VN; e++) v[k][e] += t[e];
        }
        if (r_out) {
            // The residual as stored (see norm_fwd).
            st16(r_out + base + u * VN, v[k]);
#pragma unroll
            for (int e = 0; e < VN; e++) v[k][e] = as_stored<T>(v[k][e]);
        }
#pragma unroll
        for (int e = 0; e < VN; e++) {
            sum += v[k][e];
            sumsq += v[k][e] * v[k][e];
        }
    }
    float mu = 0.f, var;
    if (is_layer) {
        mu = warp_sum(sum) / CT;
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            if (lane + 32 * k >= NV) continue;
#pragma unroll
            for (int e = 0; e < VN; e++) acc += (v[k][e] - mu) * (v[k][e] - mu);
        }
        var = warp_sum(acc) / CT;
    } else {
        var = warp_sum(sumsq) / CT;
    }
    float rstd = rsqrtf(var + eps);
    if (lane == 0) {
        rstd_out[row] = rstd;
        if (mean_out) mean_out[row] = mu;
    }
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        int u = lane + 32 * k;
        if (u >= NV) continue;
        int c = u * VN;
        float wv[VN], bv[VN], o[VN];
        if (w) ld16(w + c, wv);
        if (b) ld16(b + c, bv);
#pragma unroll
        for (int e = 0; e < VN; e++)
            o[e] = (v[k][e] - mu) * rstd * (w ? offset + wv[e] : 1.f) + (b ? bv[e] : 0.f);
        st16(y + base + c, o);
    }
}

// dx of row `row` by one warp in 16-byte vectors: r and dy kept as loaded (`keep_raw`), xhat and
// g = dy * wf recomputed by the same expressions in the second pass.
template <typename T, int CT>
__device__ __forceinline__ void norm_bwd_warp_vec(size_t row, int lane, T* dx, const T* dy, const T* r,
                                                  const T* w, const float* rstd, const float* mean,
                                                  const T* dres, float offset, int is_layer) {
    const int VN = NormWarp<T, CT>::VN, NV = CT / VN, MAXV = (NV + 31) / 32;
    const size_t base = row * CT;
    float rs = rstd[row];
    float mu = is_layer ? mean[row] : 0.f;
    uint4 rr[MAXV], rg[MAXV];
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        int u = lane + 32 * k;
        if (u >= NV) continue;
        rr[k] = *(const uint4*)(r + base + u * VN);
        rg[k] = *(const uint4*)(dy + base + u * VN);
        // dres is read after the row's sums: its lines asked for now (see norm_bwd_dw.cu).
        if (dres && (u & 7) == 0) prefetch_l2(dres + base + u * VN);
    }
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        int u = lane + 32 * k;
        if (u >= NV) continue;
        float xh[VN], g[VN], wv[VN];
        unpack16<T>(rr[k], xh);
        unpack16<T>(rg[k], g);
        if (w) ld16(w + u * VN, wv);
#pragma unroll
        for (int e = 0; e < VN; e++) {
            xh[e] = (xh[e] - mu) * rs;
            g[e] *= w ? offset + wv[e] : 1.f;
            sg += g[e];
            sgx += g[e] * xh[e];
        }
    }
    float mean_g = is_layer ? warp_sum(sg) / CT : 0.f;
    float mean_gx = warp_sum(sgx) / CT;
#pragma unroll
    for (int k = 0; k < MAXV; k++) {
        int u = lane + 32 * k;
        if (u >= NV) continue;
        int c = u * VN;
        float xh[VN], g[VN], wv[VN], dr[VN], d[VN];
        unpack16<T>(keep_raw(rr[k]), xh);
        unpack16<T>(keep_raw(rg[k]), g);
        if (w) ld16(w + c, wv);
        if (dres) ld16(dres + base + c, dr);
#pragma unroll
        for (int e = 0; e < VN; e++) {
            xh[e] = (xh[e] - mu) * rs;
            g[e] *= w ? offset + wv[e] : 1.f;
            d[e] = rs * (g[e] - mean_g - xh[e] * mean_gx) + (dres ? dr[e] : 0.f);
        }
        st16(dx + base + c, d);
    }
}

// The element-wise path of the same kernels (misaligned pointers, or a width that is not a
// multiple of the vector): lane l takes elements l, l + 32, ... and re-reads the row from
// L1/L2 in each pass, as `norm_fwd`/`norm_bwd`'s loops do over a block.
template <typename T, int CT>
__device__ void norm_fwd_warp_elems(size_t row, int lane, T* y, T* r_out, float* rstd_out, float* mean_out,
                                    const T* x, const T* res, const T* w, const T* b, float eps, float offset,
                                    int is_layer) {
    const size_t base = row * CT;
    float sum = 0.f, sumsq = 0.f;
    for (int c = lane; c < CT; c += 32) {
        float v = lf(x + base + c) + (res ? lf(res + base + c) : 0.f);
        if (r_out) {
            sf(r_out + base + c, v);
            v = as_stored<T>(v);
        }
        sum += v;
        sumsq += v * v;
    }
    float mu = 0.f, var;
    if (is_layer) {
        mu = warp_sum(sum) / CT;
        float acc = 0.f;
        for (int c = lane; c < CT; c += 32) {
            float v = r_out ? lf(r_out + base + c) : lf(x + base + c) + (res ? lf(res + base + c) : 0.f);
            acc += (v - mu) * (v - mu);
        }
        var = warp_sum(acc) / CT;
    } else {
        var = warp_sum(sumsq) / CT;
    }
    float rstd = rsqrtf(var + eps);
    if (lane == 0) {
        rstd_out[row] = rstd;
        if (mean_out) mean_out[row] = mu;
    }
    for (int c = lane; c < CT; c += 32) {
        float v = r_out ? lf(r_out + base + c) : lf(x + base + c) + (res ? lf(res + base + c) : 0.f);
        float o = (v - mu) * rstd * (w ? offset + lf(w + c) : 1.f) + (b ? lf(b + c) : 0.f);
        sf(y + base + c, o);
    }
}

template <typename T, int CT>
__device__ void norm_bwd_warp_elems(size_t row, int lane, T* dx, const T* dy, const T* r, const T* w,
                                    const float* rstd, const float* mean, const T* dres, float offset,
                                    int is_layer) {
    const size_t base = row * CT;
    float rs = rstd[row];
    float mu = is_layer ? mean[row] : 0.f;
    float sg = 0.f, sgx = 0.f;
    for (int c = lane; c < CT; c += 32) {
        float xh = (lf(r + base + c) - mu) * rs;
        float g = lf(dy + base + c) * (w ? offset + lf(w + c) : 1.f);
        sg += g;
        sgx += g * xh;
    }
    float mean_g = is_layer ? warp_sum(sg) / CT : 0.f;
    float mean_gx = warp_sum(sgx) / CT;
    for (int c = lane; c < CT; c += 32) {
        float xh = (lf(r + base + c) - mu) * rs;
        float g = lf(dy + base + c) * (w ? offset + lf(w + c) : 1.f);
        float d = rs * (g - mean_g - xh * mean_gx);
        if (dres) d += lf(dres + base + c);
        sf(dx + base + c, d);
    }
}

template <typename T, int CT>
__device__ __forceinline__ bool norm_warp_vec_ok(const void* a, const void* b, const void* c, const void* d,
                                                 const void* e, const void* f) {
    return NormWarp<T, CT>::WIDTH_OK && (!a || aligned16(a)) && (!b || aligned16(b)) && (!c || aligned16(c)) &&
           (!d || aligned16(d)) && (!e || aligned16(e)) && (!f || aligned16(f));
}

// The kernels' row: warp (threadIdx.x / 32) of the block's blockDim.x / 32 rows; -1 past the end.
__device__ __forceinline__ long long norm_warp_row(int N) {
    long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    return row < N ? row : -1;
}

// norm_fwd_warp_{dtype}: norm_fwd's contract for N rows of width C == MS_D_MODEL (NormWarp::OK).
// Launch: grid ceil(N / 8), block 256 (any multiple of 32: blockDim / 32 rows a block).
// norm_bwd_warp_{dtype}: norm_bwd's, same rows and launch.
#define NORM_WARP_INSTANTIATE(SUF, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                   \
        norm_fwd_warp_##SUF(T* y, T* r_out, float* rstd, float* mean, const T* x, const T* res,        \
                            const T* w, const T* b, int N, int C, float eps, float offset, int is_layer) { \
        typedef NormWarp<T, MS_D_MODEL> NW;                                                             \
        if (!NW::OK || C != MS_D_MODEL) __trap();                                                       \
        long long row = norm_warp_row(N);                                                               \
        if (row < 0) return;                                                                            \
        int lane = threadIdx.x & 31;                                                                    \
        if (norm_warp_vec_ok<T, MS_D_MODEL>(y, r_out, x, res, w, b))                                    \
            norm_fwd_warp_vec<T, NW::W>(row, lane, y, r_out, rstd, mean, x, res, w, b, eps, offset, is_layer); \
        else                                                                                            \
            norm_fwd_warp_elems<T, NW::W>(row, lane, y, r_out, rstd, mean, x, res, w, b, eps, offset, is_layer); \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                   \
        norm_bwd_warp_##SUF(T* dx, const T* dy, const T* r, const T* w, const float* rstd,             \
                            const float* mean, const T* dres, int N, int C, float offset, int is_layer) { \
        typedef NormWarp<T, MS_D_MODEL> NW;                                                             \
        if (!NW::OK || C != MS_D_MODEL) __trap();                                                       \
        long long row = norm_warp_row(N);                                                               \
        if (row < 0) return;                                                                            \
        int lane = threadIdx.x & 31;                                                                    \
        if (norm_warp_vec_ok<T, MS_D_MODEL>(dx, dy, r, w, dres, 0))                                     \
            norm_bwd_warp_vec<T, NW::W>(row, lane, dx, dy, r, w, rstd, mean, dres, offset, is_layer);    \
        else                                                                                            \
            norm_bwd_warp_elems<T, NW::W>(row, lane, dx, dy, r, w, rstd, mean, dres, offset, is_layer);  \
    }
NORM_WARP_INSTANTIATE(f32, float)
NORM_WARP_INSTANTIATE(bf16, bf16)
