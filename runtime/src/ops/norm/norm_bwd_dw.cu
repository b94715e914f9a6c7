// ---- norm_bwd_dw: the warp-per-row backward and the weight/bias gradients in one pass ----
//
// norm_bwd_dw_warp_{dtype}: dx as norm_bwd_warp computes it, and dw[c] += sum_n dy * xhat,
// db[c] += sum_n dy (f32, either may be null) from the same reads of dy and r, where the separate
// colred_norm (norm_dw) reads dy and r a second time. Rows of the library's width in 16-byte
// vectors only (`NormFused::OK`: at most 3 vectors a lane, bf16 <= 768, f32 <= 384 wide, every
// pointer 16-byte aligned: the host's `fused_rows` and alignment check; other rows run
// norm_bwd + norm_dw). The column sums take 2 x 3 vectors of registers a lane on top of the
// backward's, so the kernel is held to 128 registers (2 blocks, 16 rows in flight an SM; ptxas
// sm_90 at bf16 768: 128 registers, 40 bytes spilled); 4 vectors a lane would spill ~400 bytes.
// Launch: grid = chunks of `rows_per_chunk` consecutive rows (the last may hold fewer, none is
// empty; the host's plan depends on (N, C) only), block 256. Warp w of a block takes the chunk's
// rows w, w + 8, ... one at a time, as norm_bwd_warp does, and adds each row's dy * xhat and dy
// into per-lane column sums in registers (lane l owns the columns of vectors l, l + 32, ...).
// The block adds its 8 warps' sums in warp order through shared memory and writes its chunk's
// partials part[o][chunk][c] (o 0: dy * xhat, o 1: dy); the blocks that arrive last add the chunks
// into dw/db in colred's fixed order (reduce.cu): chunk k in group k % 8, the block completing a
// group sums its chunks in chunk order over the group's first partial, the block completing the
// last group adds the 8 group sums in order. Counters: cnt[0] and cnt[1 + g], colred's 9 words of
// its first column tile, zero before and left zero (atomicInc wraps); no atomics touch a sum, so
// results are bit-identical run to run.
// The tails run on the critical path (the kernel ends with the last group's block), so a thread
// advances all its sums (3 columns x 2 outputs at 768 wide) together, 8 partials at a time:
// 4 rounds of L2 loads for a group of 32 chunks where one sum after another took 12.
// Traffic: reads r, dy (+dres) once, writes dx, plus chunks x C x 2 floats of partials (written,
// then read once from L2).

#define NORM_DW_GROUPS 8
// Threads a block (the host launches BLOCK = 256; the kernel traps on any other).
#define NORM_DW_TPB 256

template <typename T, int CT>
struct NormFused {
    static const int VN = 16 / (int)sizeof(T);
    static const bool OK = CT > 0 && CT % VN == 0 && CT <= 32 * 3 * VN;
    // The width the kernel is instantiated with: CT when it qualifies, else a small stand-in
    // (that instance traps: the host never launches it).
    static const int W = OK ? CT : VN;
};

template <typename T, int CT>
__device__ __forceinline__ void norm_bwd_dw_warp(T* dx, const T* dy, const T* r, const T* w, const float* rstd,
                                                 const float* mean, const T* dres, float* dw, float* db,
                                                 unsigned* cnt, float* part, int N, int rows_per_chunk,
                                                 float offset, int is_layer) {
    const int VN = NormFused<T, CT>::VN, NV = CT / VN, MAXV = (NV + 31) / 32;
    __shared__ float red[2][CT];
    __shared__ unsigned last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const int n0 = blockIdx.x * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    float aw[MAXV][VN], ab[MAXV][VN];
#pragma unroll
    for (int k = 0; k < MAXV; k++)
#pragma unroll
        for (int e = 0; e < VN; e++) aw[k][e] = ab[k][e] = 0.f;
    for (int n = n0 + warp; n < n1; n += warps) {
        const size_t base = (size_t)n * CT;
        const float rs = rstd[n];
        const float mu = is_layer ? mean[n] : 0.f;
        uint4 rr[MAXV], rg[MAXV];
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            int u = lane + 32 * k;
            if (u >= NV) continue;
            rr[k] = *(const uint4*)(r + base + u * VN);
            rg[k] = *(const uint4*)(dy + base + u * VN);
            // dres is read after the row's sums: its lines (a lane in 8: 128 bytes) asked for now
            // (held in registers instead, it spills at this kernel's 128).
            if (dres && (u & 7) == 0) prefetch_l2(dres + base + u * VN);
        }
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            int u = lane + 32 * k;
            if (u >= NV) continue;
            float xh[VN], d[VN], wv[VN];
            unpack16<T>(rr[k], xh);
            unpack16<T>(rg[k], d);
            if (w) ld16(w + u * VN, wv);
#pragma unroll
            for (int e = 0; e < VN; e++) {
                xh[e] = (xh[e] - mu) * rs;
                // The weight gradient's summands as colred_norm forms them.
                aw[k][e] += d[e] * xh[e];
                ab[k][e] += d[e];
                float g = d[e] * (w ? offset + wv[e] : 1.f);
                sg += g;
                sgx += g * xh[e];
            }
        }
        const float mean_g = is_layer ? warp_sum(sg) / CT : 0.f;
        const float mean_gx = warp_sum(sgx) / CT;
#pragma unroll
        for (int k = 0; k < MAXV; k++) {
            int u = lane + 32 * k;
            if (u >= NV) continue;
            int c = u * VN;
            float xh[VN], g[VN], wv[VN], dr[VN], o[VN];
            unpack16<T>(keep_raw(rr[k]), xh);
            unpack16<T>(keep_raw(rg[k]), g);
            if (w) ld16(w + c, wv);
            if (dres) ld16(dres + base + c, dr);
#pragma unroll
            for (int e = 0; e < VN; e++) {
                xh[e] = (xh[e] - mu) * rs;
                g[e] *= w ? offset + wv[e] : 1.f;
                o[e] = rs * (g[e] - mean_g - xh[e] * mean_gx) + (dres ? dr[e] : 0.f);
            }
            st16(dx + base + c, o);
        }
    }
    // The block's warps' column sums, in warp order.
    for (int j = 0; j < warps; j++) {
        if (warp == j) {
#pragma unroll
            for (int k = 0; k < MAXV; k++) {
                int u = lane + 32 * k;
                if (u >= NV) continue;
#pragma unroll
                for (int e = 0; e < VN; e++) {
                    int c = u * VN + e;
                    red[0][c] = j == 0 ? aw[k][e] : red[0][c] + aw[k][e];
                    red[1][c] = j == 0 ? ab[k][e] : red[1][c] + ab[k][e];
                }
            }
        }
        __syncthreads();
    }
    const int chunks = gridDim.x;
    float* outs[2] = {dw, db};
    for (int c = threadIdx.x; c < CT; c += blockDim.x) {
#pragma unroll
        for (int o = 0; o < 2; o++)
            if (outs[o]) part[((size_t)o * chunks + blockIdx.x) * CT + c] = red[o][c];
    }
    // Group g: chunks g, g + 8, ...; the block that completes it sums them in chunk order.
    const int g = blockIdx.x % NORM_DW_GROUPS;
    const int groups = min(chunks, NORM_DW_GROUPS);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned members = (unsigned)((chunks - 1 - g) / NORM_DW_GROUPS + 1);
        last = atomicInc(cnt + 1 + g, members - 1) == members - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Each thread's columns c = threadIdx.x + NORM_DW_TPB * i, both outputs: all of its sums
    // advance together, so one batch of loads serves every sum (the order within each sum, chunk
    // by chunk, is unchanged: same bits).
    const int CPT = (CT + NORM_DW_TPB - 1) / NORM_DW_TPB;
    float a[2][CPT];
#pragma unroll
    for (int o = 0; o < 2; o++)
#pragma unroll
        for (int i = 0; i < CPT; i++) a[o][i] = 0.f;
    // The group's partials in chunk order (a group holds at most 32: the host's 256 chunks).
#pragma unroll 8
    for (int k = g; k < chunks; k += NORM_DW_GROUPS) {
#pragma unroll
        for (int o = 0; o < 2; o++)
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                const int c = threadIdx.x + NORM_DW_TPB * i;
                if (outs[o] && c < CT) a[o][i] += __ldcg(part + ((size_t)o * chunks + k) * CT + c);
            }
    }
#pragma unroll
    for (int o = 0; o < 2; o++)
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const int c = threadIdx.x + NORM_DW_TPB * i;
            if (outs[o] && c < CT) part[((size_t)o * chunks + g) * CT + c] = a[o][i];
        }
    // The block that completes the last group adds the groups in order.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicInc(cnt, (unsigned)groups - 1) == (unsigned)groups - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int o = 0; o < 2; o++)
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const int c = threadIdx.x + NORM_DW_TPB * i;
            if (!outs[o] || c >= CT) continue;
            const float* p = part + (size_t)o * chunks * CT + c;
            float s = __ldcg(p);
#pragma unroll
            for (int q = 1; q < NORM_DW_GROUPS; q++) s += q < groups ? __ldcg(p + (size_t)q * CT) : 0.f;
            outs[o][c] += s;
        }
}

#define NORM_BWD_DW_INSTANTIATE(SUF, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(256, 2)                                                \
        norm_bwd_dw_warp_##SUF(T* dx, const T* dy, const T* r, const T* w, const float* rstd,          \
                               const float* mean, const T* dres, float* dw, float* db, unsigned* cnt,   \
                               float* part, int N, int C, int rows_per_chunk, float offset, int is_layer) { \
        typedef NormFused<T, MS_D_MODEL> NF;                                                            \
        if (!NF::OK || C != MS_D_MODEL || blockDim.x != NORM_DW_TPB ||                                \
            !norm_warp_vec_ok<T, NF::W>(dx, dy, r, w, dres, 0))                                        \
            __trap();                                                                                   \
        norm_bwd_dw_warp<T, NF::W>(dx, dy, r, w, rstd, mean, dres, dw, db, cnt, part, N, rows_per_chunk, \
                                   offset, is_layer);                                                   \
    }
NORM_BWD_DW_INSTANTIATE(f32, float)
NORM_BWD_DW_INSTANTIATE(bf16, bf16)
