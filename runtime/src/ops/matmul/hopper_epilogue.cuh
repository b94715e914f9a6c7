// ---- hopper_gemm's epilogues: the arithmetic, the staging of their operands, the stores ----
//
// The second of the own GEMM's sources (after hopper_mma.cuh, before hopper.cu).

// Epilogues, applied to the f32 accumulators before the bf16 store (cuBLASLt's definitions, so
// that cuda_epilogue's references hold for both):
//   HG_EPI_NONE  C = acc
//   HG_EPI_BIAS  C = acc + bias[col]
//   HG_EPI_GELU  pre = acc + bias[col] (bias may be null), aux[row, col] = pre (bf16),
//                C = gelu_tanh(pre) from the f32 pre
//   HG_EPI_DGELU C = acc * gelu_tanh'(aux[row, col]) (a GELU's backward; aux the forward's pre)
#define HG_EPI_NONE 0
#define HG_EPI_BIAS 1
#define HG_EPI_GELU 2
#define HG_EPI_DGELU 3

__device__ __forceinline__ float hg_f32(unsigned short b) { return __uint_as_float((unsigned)b << 16); }

// tanh by the special-function unit: one MUFU op where tanhf is a branch and ~15 FP32 ops
// (the GELU epilogues' cost in docs/hopper_gemm.md). Relative error below 2^-10.9, an eighth of
// the bf16 rounding (2^-8) every result of these kernels goes through.
__device__ __forceinline__ float hg_tanh(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// GELU, tanh form (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float hg_gelu(float x) {
    return 0.5f * x * (1.f + hg_tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// Its derivative.
__device__ __forceinline__ float hg_gelu_grad(float x) {
    const float k = 0.7978845608028654f;
    const float t = hg_tanh(k * (x + 0.044715f * x * x * x));
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * x * x);
}

// p[i] for a run-time i without indexing the register array (which would put it in local memory).
__device__ __forceinline__ unsigned hg_pick(const unsigned (&p)[4], int i) {
    return i == 0 ? p[0] : i == 1 ? p[1] : i == 2 ? p[2] : p[3];
}

// A 4 x 4 transpose of 32-bit values across the four lanes of a quad (lanes 4r..4r+3, `q` the
// lane's index in it): afterwards lane q's p[i] is what lane i's p[q] was. Its own inverse. In the
// accumulator fragment a quad holds one row, lane q the columns 8j + 2q, +1: four j's of bf16
// pairs become, after the transpose, lane q's 16 contiguous bytes of column block j0 + q.
__device__ __forceinline__ void hg_quad_transpose(unsigned (&p)[4], int q) {
    const unsigned r1 = __shfl_xor_sync(0xffffffffu, hg_pick(p, q ^ 1), 1);
    const unsigned r2 = __shfl_xor_sync(0xffffffffu, hg_pick(p, q ^ 2), 2);
    const unsigned r3 = __shfl_xor_sync(0xffffffffu, hg_pick(p, q ^ 3), 3);
    unsigned o[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int k = i ^ q;
        o[i] = k == 0 ? p[i] : k == 1 ? r1 : k == 2 ? r2 : r3;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) p[i] = o[i];
}

// Two bf16 (round to nearest even) in one word, lo in the low half: one cvt.
__device__ __forceinline__ unsigned hg_pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Whether a tile's epilogue takes the 16-byte path of hg_store: the tile lies wholly inside N
// and C's (and the pre-activation's) rows are 16-byte aligned. The same for every thread of a
// tile, so a block branches on it uniformly.
template <int EPI, int BN>
__device__ __forceinline__ bool hg_vec(int n0, int N, const unsigned short* c, int ldc, const unsigned short* aux,
                                       int ldaux) {
    const bool uses_aux = EPI == HG_EPI_GELU || EPI == HG_EPI_DGELU;
    return n0 + BN <= N && (ldc & 7) == 0 && ((size_t)c & 15) == 0 &&
           (!uses_aux || ((ldaux & 7) == 0 && ((size_t)aux & 15) == 0));
}

// 16 bytes global -> shared, asynchronously (completed by cp.async.wait_all), bypassing L1.
__device__ __forceinline__ void hg_cp16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(hg_smem(dst)), "l"(src) : "memory");
}

// The ping-pong epilogue's operands, staged in shared memory while the tile's mainloop runs (a
// global load in the epilogue waits behind the stores before it: one DRAM latency per load).
// `sbias`: the tile's 128 bias values (256 bytes) as 64 bf16 pairs in q-major order (pair 4 j + q
// at word 16 q + j, so that lane q of a quad reads its 16 pairs as four 16-byte loads), copied
// a pair a thread by the warpgroup's first 64 threads (the caller stages only a 4-byte aligned bias). `saux` (DGELU): 32 KiB, each
// thread's own 16 chunks of the pre-activation, the ones hg_store reads, at [slot * 128 + t]
// (slot = (half * 2 + h) * 4 + j0 / 4): conflict-free, and no thread reads another's, so the
// thread's own cp.async.wait_all suffices for them.
template <int EPI>
__device__ __forceinline__ void hg_stage(unsigned* sbias, uint4* saux, int t, int m0, int n0, int M,
                                         const unsigned short* bias, const unsigned short* aux, int ldaux) {
    if ((EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && t < 64)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(hg_smem(sbias + (t & 3) * 16 + (t >> 2))),
                     "l"(bias + n0 + 2 * t)
                     : "memory");
    if (EPI == HG_EPI_DGELU) {
        const int warp = t / 32, lane = t % 32, q = lane & 3;
#pragma unroll
        for (int half = 0; half < 2; half++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = m0 + half * 64 + warp * 16 + lane / 4 + 8 * h;
                if (row >= M) continue;
#pragma unroll
                for (int jj = 0; jj < 4; jj++)
                    hg_cp16(saux + ((half * 2 + h) * 4 + jj) * 128 + t,
                            aux + (size_t)row * ldaux + n0 + 8 * (4 * jj + q));
            }
    }
}

// A barrier of the 128 threads of consumer warpgroup w (ids 1 and 2; 0 is __syncthreads').
__device__ __forceinline__ void hg_wg_sync(int w) {
    asm volatile("bar.sync %0, 128;" ::"r"(1 + w) : "memory");
}

// The 16-byte epilogues' arithmetic on a lane's four column pairs of one row (x[i]: columns
// 8 (j0 + i) + 2q and + 1 of the accumulator fragment, gathered by hg_pairs): DGELU's factor at the
// kept pre-activation words g[i], the bias pairs b[i] where `biased`, then GELU with its
// pre-activation kept in a[i] (bf16 pairs, the even column in the low half throughout).
__device__ __forceinline__ void hg_pairs(const float* d, int j0, int h, float (&x)[4][2]) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        x[i][0] = d[4 * (j0 + i) + 2 * h];
        x[i][1] = d[4 * (j0 + i) + 2 * h + 1];
    }
}
template <int EPI>
__device__ __forceinline__ void hg_epi_math(float (&x)[4][2], const unsigned (&g)[4], const unsigned (&b)[4],
                                            bool biased, unsigned (&a)[4]) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (EPI == HG_EPI_DGELU) {
            x[i][0] *= hg_gelu_grad(hg_f32((unsigned short)(g[i] & 0xffffu)));
            x[i][1] *= hg_gelu_grad(hg_f32((unsigned short)(g[i] >> 16)));
        }
        if ((EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && biased) {
            x[i][0] += hg_f32((unsigned short)(b[i] & 0xffffu));
            x[i][1] += hg_f32((unsigned short)(b[i] >> 16));
        }
        if (EPI == HG_EPI_GELU) {
            a[i] = hg_pack(x[i][0], x[i][1]);
            x[i][0] = hg_gelu(x[i][0]);
            x[i][1] = hg_gelu(x[i][1]);
        }
    }
}

// A warp's four 8 x 8 bf16 matrices (the accumulator fragment's layout: lane l holds row l / 4,
// columns 2 (l % 4), +1 of matrix i in p[i]) into shared memory at `at` (this lane's row
// address), and back.
__device__ __forceinline__ void hg_stmatrix4(unsigned at, const unsigned (&p)[4]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(at), "r"(p[0]), "r"(p[1]),
                 "r"(p[2]), "r"(p[3])
                 : "memory");
}
__device__ __forceinline__ void hg_ldmatrix4(unsigned at, unsigned (&p)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(p[0]), "=r"(p[1]), "=r"(p[2]), "=r"(p[3])
                 : "r"(at)
                 : "memory");
}

// Stores a warp's fragment words p (matrices j0..j0+3 of rows `row`.. as above) to `dst` (this
// lane's row of the 8, its 16 bytes of columns 8 (j0 + l % 4)..): stmatrix writes matrix k's row
// r at scratch byte (4 r + k) 16, so lane l reads its 16 bytes at l 16, one 16-byte store a
// lane. `scratch`: the warp's 512 bytes.
__device__ __forceinline__ void hg_put16(unsigned scratch, int lane, const unsigned (&p)[4], unsigned short* dst,
                                         bool live) {
    __syncwarp();  // the last reads of the scratch are behind
    hg_stmatrix4(scratch + (((lane & 7) * 4 + (lane >> 3)) << 4), p);
    __syncwarp();
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(scratch + (lane << 4))
                 : "memory");
    if (live) *(uint4*)dst = v;
}

// The ping-pong's epilogue of one m64 x 128 fragment (`half` 0 or 1 of the tile at m0, n0) on a
// tile wholly inside N (hg_vec) whose operands hg_stage brought in: the bias from `sbias` (or
// none), DGELU's pre-activation from `saux` by ldmatrix (hg_stage's layout holds each matrix
// row as 16 contiguous bytes: matrix k's row r of a slot is thread 4 r + k's chunk), outputs
// through the warp's scratch (hg_put16; DGELU reuses the slot's pre-activation bytes, read just
// before). No shuffles, one cvt a pair, 16-byte stores.
template <int EPI>
__device__ __forceinline__ void hg_store_pp(const float* d, int m0, int half, int n0, int t, unsigned short* c,
                                            int ldc, unsigned short* aux, int ldaux, int M, const unsigned* sbias,
                                            unsigned saux, unsigned scratch) {
    const int warp = t / 32, lane = t % 32, q = lane & 3;
    const unsigned mrow = (unsigned)(((lane & 7) * 4 + (lane >> 3)) << 4);
    // The lane's 16 bias pairs (columns 8 j + 2 q, + 1), read once: four 16-byte loads.
    unsigned bq[16];
    if ((EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && sbias) {
#pragma unroll
        for (int jj = 0; jj < 4; jj++) {
            const uint4 v = *(const uint4*)(sbias + 16 * q + 4 * jj);
            bq[4 * jj] = v.x, bq[4 * jj + 1] = v.y, bq[4 * jj + 2] = v.z, bq[4 * jj + 3] = v.w;
        }
    }
#pragma unroll
    for (int j0 = 0; j0 < 16; j0 += 4) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = m0 + half * 64 + warp * 16 + 8 * h + lane / 4;
            const bool live = row < M;
            const size_t at = (size_t)row * ldc + n0 + 8 * (j0 + q);
            float x[4][2];
            hg_pairs(d, j0, h, x);
            unsigned out_scratch = scratch, g[4] = {0u, 0u, 0u, 0u}, b[4] = {0u, 0u, 0u, 0u}, a[4];
            if (EPI == HG_EPI_DGELU) {
                // This slot's 32 chunks of this warp: 512 bytes, then C's scratch.
                out_scratch = saux + (unsigned)((((half * 2 + h) * 4 + j0 / 4) * 128 + warp * 32) << 4);
                hg_ldmatrix4(out_scratch + mrow, g);
            }
            if ((EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && sbias) {
#pragma unroll
                for (int i = 0; i < 4; i++) b[i] = bq[j0 + i];
            }
            hg_epi_math<EPI>(x, g, b, sbias != nullptr, a);
            if (EPI == HG_EPI_GELU)
                hg_put16(scratch + 512, lane, a, aux + (size_t)row * ldaux + n0 + 8 * (j0 + q), live);
            unsigned p[4];
#pragma unroll
            for (int i = 0; i < 4; i++) p[i] = hg_pack(x[i][0], x[i][1]);
            hg_put16(out_scratch, lane, p, c + at, live);
        }
    }
}

// The epilogue of one warpgroup's m64 x BN fragment `d` (rows row0.., columns n0..): applies EPI
// and stores C (and the GELU's pre-activation), skipping what lies past M and N. When the tile
// lies wholly inside N and the rows are 16-byte aligned, each quad's four column blocks are
// transposed across its lanes (hg_quad_transpose) so that every lane stores, and DGELU loads,
// 16 bytes at a time; otherwise bf16 pairs, 4 bytes at a time.
template <int EPI, int BN>
__device__ __forceinline__ void hg_store(const float* d, int row0, int n0, int t, unsigned short* c,
                                         const unsigned short* bias, unsigned short* aux, int ldaux, int M, int N,
                                         int ldc) {
    const int warp = t / 32, lane = t % 32;
    const int r0 = row0 + warp * 16 + lane / 4;
    if (hg_vec<EPI, BN>(n0, N, c, ldc, aux, ldaux)) {
        const int q = lane & 3;
#pragma unroll
        for (int j0 = 0; j0 < BN / 8; j0 += 4) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = r0 + 8 * h;
                const bool live = row < M;  // the same for the whole quad
                float x[4][2];
                hg_pairs(d, j0, h, x);
                const size_t at = (size_t)row * ldc + n0 + 8 * (j0 + q);
                unsigned g[4] = {0u, 0u, 0u, 0u}, b[4] = {0u, 0u, 0u, 0u}, a[4];
                if (EPI == HG_EPI_DGELU) {
                    if (live) {
                        const uint4 v = *(const uint4*)(aux + (size_t)row * ldaux + n0 + 8 * (j0 + q));
                        g[0] = v.x, g[1] = v.y, g[2] = v.z, g[3] = v.w;
                    }
                    hg_quad_transpose(g, q);
                }
                if ((EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && bias) {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int col = n0 + 8 * (j0 + i) + 2 * q;
                        b[i] = (unsigned)bias[col] | ((unsigned)bias[col + 1] << 16);
                    }
                }
                hg_epi_math<EPI>(x, g, b, bias != nullptr, a);
                if (EPI == HG_EPI_GELU) {
                    hg_quad_transpose(a, q);
                    if (live)
                        *(uint4*)(aux + (size_t)row * ldaux + n0 + 8 * (j0 + q)) = make_uint4(a[0], a[1], a[2], a[3]);
                }
                unsigned p[4];
#pragma unroll
                for (int i = 0; i < 4; i++) p[i] = hg_pack(x[i][0], x[i][1]);
                hg_quad_transpose(p, q);
                if (live) *(uint4*)(c + at) = make_uint4(p[0], p[1], p[2], p[3]);
            }
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = n0 + 8 * j + 2 * (lane % 4);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = r0 + 8 * h;
            if (row >= M) continue;
            if (col >= N) continue;
            const bool pair = col + 1 < N;
            float x0 = d[4 * j + 2 * h], x1 = d[4 * j + 2 * h + 1];
            if (EPI == HG_EPI_DGELU) {
                const unsigned short* q = aux + (size_t)row * ldaux + col;
                x0 *= hg_gelu_grad(hg_f32(q[0]));
                if (pair) x1 *= hg_gelu_grad(hg_f32(q[1]));
            }
            if ((EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && bias) {
                x0 += hg_f32(bias[col]);
                if (pair) x1 += hg_f32(bias[col + 1]);
            }
            if (EPI == HG_EPI_GELU) {
                unsigned short* q = aux + (size_t)row * ldaux + col;
                if (pair) {
                    *(unsigned*)q = (unsigned)hg_bf16(x0) | ((unsigned)hg_bf16(x1) << 16);
                } else {
                    q[0] = hg_bf16(x0);
                }
                x0 = hg_gelu(x0);
                x1 = hg_gelu(x1);
            }
            unsigned short* p = c + (size_t)row * ldc + col;
            if (pair) {
                *(unsigned*)p = (unsigned)hg_bf16(x0) | ((unsigned)hg_bf16(x1) << 16);
            } else {
                p[0] = hg_bf16(x0);
            }
        }
    }
}
