// ---- column reductions: out[c] += sum over rows n of a summand of row n, column c ----
//
// Bias gradients (sum of x), norm weight/bias gradients (sum of dy * xhat and of dy) and the MoE
// experts' bias gradients all run through these two kernels; `cuda/reduce.rs` plans the launch.
// Deterministic: no atomics, every sum is taken in an order fixed by (N, C) alone, so a result is
// bit-identical from run to run.
//
// Stage 1 (colred_part_{mode}_{dtype}): grid (column tiles, row chunks), block (32, 8). Thread
// (tx, ty) owns the 8 consecutive columns c0 = tile * 256 + tx * 8 .. c0 + 7 and the rows
// chunk_start + ty, + 8, ... of its chunk, summing them in f32; the 8 row lanes are then summed
// in lane order through shared memory and the block writes its chunk's partial sums
// part[o][chunk][c] (o: the output, 0 or 1). Rows are read in 16-byte vectors (8 bf16, or two of
// 4 f32) when `vec` (the launcher checks that every row start is 16-byte aligned), else element
// by element; the last, partial group of 8 columns of a row always reads elements.
// Traffic: reads the rows once (twice the data for the norm mode), writes chunks x C floats.
//
// Stage 2 (colred_finish): grid (ceil(C / 32), outputs), block (32, 8): lane ty sums chunks
// ty, ty + 8, ... of its column, the lanes are summed in lane order, and out_o[c] += the total.

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
// x and r have rows of stride ld; part holds [outputs][gridDim.y][C] floats.
template <typename T, int MODE>
__device__ void colred_part(float* part, const T* x, const T* r, const float* rstd, const float* mean,
                            int N, int C, int ld, int rows_per_chunk, int vec) {
    const int NO = MODE == 1 ? 2 : 1;
    __shared__ float sm[NO][COLRED_TY][COLRED_TILE];
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
    if (c >= C) return;
#pragma unroll
    for (int o = 0; o < NO; o++) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < COLRED_TY; i++) s += sm[o][i][t];
        part[((size_t)o * gridDim.y + blockIdx.y) * C + c] = s;
    }
}

// out_o[c] += sum over k < chunks of part[o][k][c], o = blockIdx.y (out_o null: nothing).
__device__ void colred_finish_dev(float* out0, float* out1, const float* part, int chunks, int C) {
    __shared__ float s[COLRED_TY][33];
    float* out = blockIdx.y ? out1 : out0;
    if (!out) return;
    int c = blockIdx.x * 32 + threadIdx.x;
    const float* p = part + (size_t)blockIdx.y * chunks * C;
    float a = 0.f;
    if (c < C)
        for (int k = threadIdx.y; k < chunks; k += COLRED_TY) a += p[(size_t)k * C + c];
    s[threadIdx.y][threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int i = 1; i < COLRED_TY; i++) a += s[i][threadIdx.x];
        out[c] += a;
    }
}

#define COLRED_INSTANTIATE(SUF, T)                                                                  \
    extern "C" __global__ void colred_part_sum_##SUF(float* part, const T* x, int N, int C, int ld,  \
                                                     int rows_per_chunk, int vec) {                  \
        colred_part<T, 0>(part, x, 0, 0, 0, N, C, ld, rows_per_chunk, vec);                          \
    }                                                                                               \
    extern "C" __global__ void colred_part_norm_##SUF(float* part, const T* dy, const T* r,           \
                                                      const float* rstd, const float* mean, int N,   \
                                                      int C, int ld, int rows_per_chunk, int vec) {  \
        colred_part<T, 1>(part, dy, r, rstd, mean, N, C, ld, rows_per_chunk, vec);                   \
    }
COLRED_INSTANTIATE(f32, float)
COLRED_INSTANTIATE(bf16, bf16)

extern "C" __global__ void colred_finish(float* out0, float* out1, const float* part, int chunks, int C) {
    colred_finish_dev(out0, out1, part, chunks, C);
}
