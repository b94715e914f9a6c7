// ---- column reductions: out[c] += sum over rows n of a summand of row n, column c ----
//
// Bias gradients (sum of x), norm weight/bias gradients (sum of dy * xhat and of dy) and the MoE
// experts' bias gradients all run through this one kernel; `cuda/reduce.rs` plans the launch.
// Deterministic: no atomics in the sums, every sum is taken in an order fixed by (N, C) alone, so
// a result is bit-identical from run to run.
//
// One launch, colred_{mode}_{dtype}: grid (column tiles, row chunks), block (32, 8).
// Chunk sums: thread (tx, ty) owns the 8 consecutive columns c0 = tile * 256 + tx * 8 .. c0 + 7
// and the rows chunk_start + ty, + 8, ... of its chunk, summing them in f32; the 8 row lanes are
// then summed in lane order through shared memory and the block writes its chunk's partial sums
// part[o][chunk][c] (o: the output, 0 or 1). Rows are read in 16-byte vectors (8 bf16, or two of
// 4 f32) when `vec` (the launcher checks that every row start is 16-byte aligned), else element
// by element; the last, partial group of 8 columns of a row always reads elements.
// Finish, in two levels, by the blocks that arrive last (arrival counters, never in the sums):
// the chunks of a tile form 8 groups, chunk k in group k % 8. The block that completes group g
// of its tile (the last of its chunks to arrive) sums that group's partials in chunk order,
// L_g = ((0 + part[g]) + part[g + 8]) + ..., and stores L_g over part[g] (only it reads group g).
// The block that completes the last group of the tile adds out_o[c] += (((L_0 + L_1) + L_2) ...
// + L_7) (L_g = 0 for a group with no chunk). Every sum's order is fixed by (N, C), whichever
// block arrives last, and it is the order of the former separate second stage (lane g summing
// chunks g, g + 8, ..., then the lanes in order), so results are those bits too.
// The counters (9 per tile: cnt[tile * 9] for the tile, cnt[tile * 9 + 1 + g] for group g) must
// be zero before the first launch; atomicInc wraps each back to 0 on its last arrival, so every
// launch leaves them zero for the next one (no memset launch).
// Traffic: reads the rows once (twice the data for the norm mode), writes chunks x C floats and
// reads them back once from L2.

#define COLRED_COLS 8
#define COLRED_TX 32
#define COLRED_TY 8
#define COLRED_TILE (COLRED_COLS * COLRED_TX)

// Columns c0 .. c0 + 7 of the row at p as f32, 0 past C.
template <typename T>
__device__ __forceinline__ void colred_load(const T* p, int c0, int C, int vec, float* v) {
    if (vec && c0 + COLRED_COLS <= C) {
#pragma unroll
        for (int k = 0; k < COLRED_COLS; k += 16 / (int)sizeof(T)) ld16(p + c0 + k, v + k);
    } else {
#pragma unroll
        for (int k = 0; k < COLRED_COLS; k++) v[k] = c0 + k < C ? lf(p + c0 + k) : 0.f;
    }
}

// MODE 0: one output, the summand x[n, c].
// MODE 1 (norm weight and bias gradients): output 0 sums dy[n, c] * xhat[n, c] and output 1
// sums dy[n, c], with x = dy and xhat = (r[n, c] - mean[n]) * rstd[n] (mean 0 when null, RMS).
// x and r have rows of stride ld; part holds [outputs][gridDim.y][C] floats; out_o null: that
// output is skipped.
template <typename T, int MODE>
__device__ void colred(float* out0, float* out1, unsigned* cnt, float* part, const T* x, const T* r,
                       const float* rstd, const float* mean, int N, int C, int ld, int rows_per_chunk,
                       int vec) {
    const int NO = MODE == 1 ? 2 : 1;
    __shared__ float sm[NO][COLRED_TY][COLRED_TILE];
    __shared__ unsigned last;
    int c0 = blockIdx.x * COLRED_TILE + threadIdx.x * COLRED_COLS;
    int n0 = blockIdx.y * rows_per_chunk;
    int n1 = min(N, n0 + rows_per_chunk);
    float acc[NO][COLRED_COLS];
#pragma unroll
    for (int o = 0; o < NO; o++)
#pragma unroll
        for (int k = 0; k < COLRED_COLS; k++) acc[o][k] = 0.f;
    if (c0 < C) {
#pragma unroll 4
        for (int n = n0 + threadIdx.y; n < n1; n += COLRED_TY) {
            float v[COLRED_COLS];
            colred_load(x + (size_t)n * ld, c0, C, vec, v);
            if (MODE == 1) {
                float h[COLRED_COLS];
                colred_load(r + (size_t)n * ld, c0, C, vec, h);
                float mu = mean ? mean[n] : 0.f, rs = rstd[n];
#pragma unroll
                for (int k = 0; k < COLRED_COLS; k++) {
                    acc[0][k] += v[k] * ((h[k] - mu) * rs);
                    acc[NO - 1][k] += v[k];
                }
            } else {
#pragma unroll
                for (int k = 0; k < COLRED_COLS; k++) acc[0][k] += v[k];
            }
        }
    }
#pragma unroll
    for (int o = 0; o < NO; o++)
#pragma unroll
        for (int k = 0; k < COLRED_COLS; k++) sm[o][threadIdx.y][threadIdx.x * COLRED_COLS + k] = acc[o][k];
    __syncthreads();
    // One column of the tile per thread, its 8 row lanes summed in lane order.
    int t = threadIdx.y * COLRED_TX + threadIdx.x;
    int c = blockIdx.x * COLRED_TILE + t;
    const int chunks = gridDim.y;
    float* outs[2] = {out0, MODE == 1 ? out1 : nullptr};
    if (c < C) {
#pragma unroll
        for (int o = 0; o < NO; o++) {
            if (!outs[o]) continue;
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < COLRED_TY; i++) s += sm[o][i][t];
            part[((size_t)o * chunks + blockIdx.y) * C + c] = s;
        }
    }
    // Group g of this tile: chunks g, g + 8, ... (members of them); the block that completes it
    // sums them in chunk order.
    unsigned* tc = cnt + blockIdx.x * (1 + COLRED_TY);
    const int g = blockIdx.y % COLRED_TY;
    const int groups = min(chunks, COLRED_TY);
    __threadfence();
    __syncthreads();
    if (t == 0) {
        unsigned members = (unsigned)((chunks - 1 - g) / COLRED_TY + 1);
        last = atomicInc(tc + 1 + g, members - 1) == members - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (c < C) {
#pragma unroll
        for (int o = 0; o < NO; o++) {
            if (!outs[o]) continue;
            float* p = part + (size_t)o * chunks * C + c;
            float a = 0.f;
#pragma unroll 8
            for (int k = g; k < chunks; k += COLRED_TY) a += __ldcg(p + (size_t)k * C);
            p[(size_t)g * C] = a;
        }
    }
    // The tile: the block that completes its last group adds the groups in order.
    __threadfence();
    __syncthreads();
    if (t == 0) last = atomicInc(tc, (unsigned)groups - 1) == (unsigned)groups - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (c >= C) return;
#pragma unroll
    for (int o = 0; o < NO; o++) {
        if (!outs[o]) continue;
        const float* p = part + (size_t)o * chunks * C + c;
        float a = __ldcg(p);
#pragma unroll
        for (int i = 1; i < COLRED_TY; i++) a += i < groups ? __ldcg(p + (size_t)i * C) : 0.f;
        outs[o][c] += a;
    }
}

#define COLRED_INSTANTIATE(SUF, T)                                                                  \
    extern "C" __global__ void colred_sum_##SUF(float* out, unsigned* cnt, float* part, const T* x,  \
                                                int N, int C, int ld, int rows_per_chunk, int vec) { \
        colred<T, 0>(out, 0, cnt, part, x, 0, 0, 0, N, C, ld, rows_per_chunk, vec);                 \
    }                                                                                               \
    extern "C" __global__ void colred_norm_##SUF(float* dw, float* db, unsigned* cnt, float* part,   \
                                                 const T* dy, const T* r, const float* rstd,         \
                                                 const float* mean, int N, int C, int ld,            \
                                                 int rows_per_chunk, int vec) {                      \
        colred<T, 1>(dw, db, cnt, part, dy, r, rstd, mean, N, C, ld, rows_per_chunk, vec);           \
    }
COLRED_INSTANTIATE(f32, float)
COLRED_INSTANTIATE(bf16, bf16)
