// ---- norm_bwd_dw: the norm backward and its weight/bias gradients in one pass ----
//
// norm_bwd_dw_{dtype}: dx as norm_bwd computes it, and dw[c] += sum_n dy * xhat, db[c] += sum_n dy
// (f32, either may be null) from the same reads of dy and r, so the gradients need no second pass
// over the rows (the separate colred_norm reads dy and r again).
// Launch: grid = chunks (one block per chunk of `rows_per_chunk` consecutive rows; the last may
// hold fewer, none is empty), block NORM_DW_THREADS. Each block writes its chunk's partial sums
// part[o][chunk][c] (o 0: dy * xhat, o 1: dy), then the blocks that arrive last add them in a
// fixed order into dw/db, as colred does (reduce.cu): chunk k belongs to group k % 8, the block
// completing a group sums its chunks in chunk order over the group's first partial, the block
// completing the last group adds the 8 group sums in order. Counters: cnt[0] (all groups) and
// cnt[1 + g], zero before the launch and left zero (atomicInc wraps), the same 9 words as the
// first column tile of colred; no atomics touch a sum, so results are bit-identical run to run.
//
// Rows of the spec's width (CT = MS_D_MODEL, 16-byte aligned, at most 256 x 16 elements): a row
// group of LANES threads (32..256) handles one row at a time, each thread holding at most 16
// elements of it in registers (16-byte vectors vi = lane, lane + LANES, ...), its sums reduced by
// warp shuffles (and shared memory across the row's warps); the block's 256 / LANES row groups
// take rows n0 + g, n0 + g + groups, ... and keep per-column sums of dy * xhat and dy in
// registers, added into the chunk's partials in row-group order at the end. Other rows: the
// element-wise path, one row at a time per block, each thread owning columns tid, tid + 256, ...
// and accumulating them into the chunk's partials (the same thread reads and writes a column).
// Traffic: reads dy, r (+dres) once, writes dx, plus chunks x C x 2 floats of partials.

#define NORM_DW_THREADS 256
#define NORM_DW_GROUPS 8

template <typename T, int CT>
struct NormRows {
    static const int VN = 16 / (int)sizeof(T);
    static const int NV = CT > 0 ? CT / VN : 0;
    // Vectors a thread holds at most: 16 elements.
    static const int PER = 16 / VN;
    static const int LANES = NV <= 32 * PER ? 32 : NV <= 64 * PER ? 64 : NV <= 128 * PER ? 128 : 256;
    static const int V = NV > 0 ? (NV + LANES - 1) / LANES : 1;
    static const bool WIDTH_OK = CT > 0 && CT % VN == 0 && NV <= NORM_DW_THREADS * PER;
};

template <typename T, int CT>
__device__ bool norm_rows_ok(const void* a, const void* b, const void* c, const void* d, const void* e) {
    typedef NormRows<T, CT> G;
    if (!G::WIDTH_OK || blockDim.x != NORM_DW_THREADS) return false;
    return (!a || aligned16(a)) && (!b || aligned16(b)) && (!c || aligned16(c)) && (!d || aligned16(d)) &&
           (!e || aligned16(e));
}

// The register path (see the top). pw / pb: this chunk's partials (null: no gradient wanted).
template <typename T, int CT>
__device__ void norm_bwd_dw_rows(T* dx, const T* dy, const T* r, const T* w, const float* rstd,
                                 const float* mean, const T* dres, float* pw, float* pb, int N,
                                 int rows_per_chunk, float offset, int is_layer) {
    typedef NormRows<T, CT> G;
    const int VN = G::VN;
    __shared__ float red[2][NORM_DW_THREADS / 32];
    const int groups = NORM_DW_THREADS / G::LANES;
    const int wpr = G::LANES / 32;
    const int rg = threadIdx.x / G::LANES, lt = threadIdx.x % G::LANES;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = blockIdx.x * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    float aw[G::V][VN], ab[G::V][VN];
#pragma unroll
    for (int k = 0; k < G::V; k++)
#pragma unroll
        for (int e = 0; e < VN; e++) aw[k][e] = ab[k][e] = 0.f;
    for (int base = n0; base < n1; base += groups) {
        const int n = base + rg;
        const bool live = n < n1;
        const size_t row = live ? (size_t)n : 0;
        const float rs = live ? rstd[row] : 0.f;
        const float mu = live && is_layer ? mean[row] : 0.f;
        float xh[G::V][VN], g[G::V][VN];
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int k = 0; k < G::V; k++) {
            const int vi = lt + k * G::LANES;
            if (!live || vi >= G::NV) continue;
            const int c = vi * VN;
            float d[VN], wv[VN];
            ld16(r + row * CT + c, xh[k]);
            ld16(dy + row * CT + c, d);
            if (w) ld16(w + c, wv);
#pragma unroll
            for (int e = 0; e < VN; e++) {
                xh[k][e] = (xh[k][e] - mu) * rs;
                aw[k][e] += d[e] * xh[k][e];
                ab[k][e] += d[e];
                g[k][e] = d[e] * (w ? offset + wv[e] : 1.f);
                sg += g[k][e];
                sgx += g[k][e] * xh[k][e];
            }
        }
        sg = warp_sum(sg);
        sgx = warp_sum(sgx);
        if (wpr > 1) {
            // The row's warps' sums in warp order (every thread of the block runs this).
            __syncthreads();
            if (lane == 0) {
                red[0][warp] = sg;
                red[1][warp] = sgx;
            }
            __syncthreads();
            sg = 0.f;
            sgx = 0.f;
            for (int i = 0; i < wpr; i++) {
                sg += red[0][rg * wpr + i];
                sgx += red[1][rg * wpr + i];
            }
        }
        const float mean_g = is_layer ? sg / CT : 0.f;
        const float mean_gx = sgx / CT;
#pragma unroll
        for (int k = 0; k < G::V; k++) {
            const int vi = lt + k * G::LANES;
            if (!live || vi >= G::NV) continue;
            const int c = vi * VN;
            float o[VN], dr[VN];
            if (dres) ld16(dres + row * CT + c, dr);
#pragma unroll
            for (int e = 0; e < VN; e++)
                o[e] = rs * (g[k][e] - mean_g - xh[k][e] * mean_gx) + (dres ? dr[e] : 0.f);
            st16(dx + row * CT + c, o);
        }
    }
    if (!pw) return;
    // The row groups' column sums into the chunk's partials, in row-group order.
    for (int j = 0; j < groups; j++) {
        if (rg == j) {
#pragma unroll
            for (int k = 0; k < G::V; k++) {
                const int vi = lt + k * G::LANES;
                if (vi >= G::NV) continue;
#pragma unroll
                for (int e = 0; e < VN; e++) {
                    const int c = vi * VN + e;
                    pw[c] = j == 0 ? aw[k][e] : pw[c] + aw[k][e];
                    pb[c] = j == 0 ? ab[k][e] : pb[c] + ab[k][e];
                }
            }
        }
        __syncthreads();
    }
}

// The element-wise path (see the top): any width, alignment and block size.
template <typename T, int CT>
__device__ void norm_bwd_dw_elem(T* dx, const T* dy, const T* r, const T* w, const float* rstd,
                                 const float* mean, const T* dres, float* pw, float* pb, int N, int C_,
                                 int rows_per_chunk, float offset, int is_layer) {
    const int C = CT ? CT : C_;
    __shared__ float scratch[32];
    const int n0 = blockIdx.x * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    for (int n = n0; n < n1; n++) {
        const size_t row = n;
        const float rs = rstd[row];
        const float mu = is_layer ? mean[row] : 0.f;
        float sg = 0.f, sgx = 0.f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float xhat = (lf(r + row * C + c) - mu) * rs;
            float g = lf(dy + row * C + c) * (w ? offset + lf(w + c) : 1.f);
            sg += g;
            sgx += g * xhat;
        }
        const float mean_g = is_layer ? block_sum(sg, scratch) / C : 0.f;
        const float mean_gx = block_sum(sgx, scratch) / C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float xhat = (lf(r + row * C + c) - mu) * rs;
            float d = lf(dy + row * C + c);
            float g = d * (w ? offset + lf(w + c) : 1.f);
            if (pw) {
                pw[c] = n == n0 ? d * xhat : pw[c] + d * xhat;
                pb[c] = n == n0 ? d : pb[c] + d;
            }
            float o = rs * (g - mean_g - xhat * mean_gx);
            if (dres) o += lf(dres + row * C + c);
            sf(dx + row * C + c, o);
        }
    }
}

// The finish: the last-arriving blocks add the chunks' partials into out0 (dw) and out1 (db) in
// the fixed order described at the top. part: [2][gridDim.x][C].
__device__ void norm_dw_finish(float* out0, float* out1, unsigned* cnt, float* part, int C) {
    __shared__ unsigned last;
    const int chunks = gridDim.x;
    const int g = blockIdx.x % NORM_DW_GROUPS;
    const int groups = min(chunks, NORM_DW_GROUPS);
    float* outs[2] = {out0, out1};
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned members = (unsigned)((chunks - 1 - g) / NORM_DW_GROUPS + 1);
        last = atomicInc(cnt + 1 + g, members - 1) == members - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int o = 0; o < 2; o++) {
        if (!outs[o]) continue;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float* p = part + (size_t)o * chunks * C + c;
            float a = 0.f;
            for (int k = g; k < chunks; k += NORM_DW_GROUPS) a += __ldcg(p + (size_t)k * C);
            p[(size_t)g * C] = a;
        }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicInc(cnt, (unsigned)groups - 1) == (unsigned)groups - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int o = 0; o < 2; o++) {
        if (!outs[o]) continue;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float* p = part + (size_t)o * chunks * C + c;
            float a = __ldcg(p);
#pragma unroll
            for (int i = 1; i < NORM_DW_GROUPS; i++) a += i < groups ? __ldcg(p + (size_t)i * C) : 0.f;
            outs[o][c] += a;
        }
    }
}

#define NORM_DW_INSTANTIATE(SUF, T)                                                                   \
    extern "C" __global__ void norm_bwd_dw_##SUF(                                                     \
        T* dx, const T* dy, const T* r, const T* w, const float* rstd, const float* mean, const T* dres, \
        float* dw, float* db, unsigned* cnt, float* part, int N, int C, int rows_per_chunk, float offset, \
        int is_layer) {                                                                               \
        const bool acc = dw || db;                                                                    \
        float* pw = acc ? part + (size_t)blockIdx.x * C : 0;                                          \
        float* pb = acc ? part + ((size_t)gridDim.x + blockIdx.x) * C : 0;                            \
        if (MS_D_MODEL && C == MS_D_MODEL && norm_rows_ok<T, MS_D_MODEL>(dx, dy, r, w, dres))         \
            norm_bwd_dw_rows<T, MS_D_MODEL>(dx, dy, r, w, rstd, mean, dres, pw, pb, N, rows_per_chunk, \
                                            offset, is_layer);                                        \
        else if (MS_D_MODEL && C == MS_D_MODEL)                                                       \
            norm_bwd_dw_elem<T, MS_D_MODEL>(dx, dy, r, w, rstd, mean, dres, pw, pb, N, C,              \
                                            rows_per_chunk, offset, is_layer);                        \
        else                                                                                          \
            norm_bwd_dw_elem<T, 0>(dx, dy, r, w, rstd, mean, dres, pw, pb, N, C, rows_per_chunk,       \
                                   offset, is_layer);                                                 \
        if (acc) norm_dw_finish(dw, db, cnt, part, C);                                                \
    }
NORM_DW_INSTANTIATE(f32, float)
NORM_DW_INSTANTIATE(bf16, bf16)
