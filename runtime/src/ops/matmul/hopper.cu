// ---- hopper_gemm: C = A B^T on Hopper's tensor cores (wgmma), fed by the bulk tensor copy engine ----
//
// An own GEMM for the epilogues cuBLASLt cannot fuse (docs/hopper_gemm.md), steps 1-2: bf16 in,
// f32 accumulation, bf16 out, plain, with a bias, with the GELU and its kept pre-activation, or
// times the GELU's derivative at a kept pre-activation (DGELU).
// A [M, K] and B [N, K] row-major bf16 (the linear layer's input and weight: both K-major,
// wgmma's native layout), C [M, N] bf16 with row stride ldc. Compiled for compute_90a only
// (wgmma, setmaxnreg); a separate module from the kernel library.
//
// Block: 3 warpgroups, 384 threads, one 128 x BN tile of C (BN 128 or 256). Warpgroup 0
// produces: its first thread issues, per K step of 64, `cp.async.bulk.tensor.2d` for the A tile
// (128 x 64) and the B tile (BN x 64) into stage s of a ring of HG_STAGES, completing on
// full[s]; it first waits for empty[s] (both consumers released the stage). Warpgroups 1 and 2
// consume: each waits for full[s], issues four `wgmma.mma_async m64nBNk16` (16 columns of K each)
// over its 64 rows of the tile as one group, waits for the previous step's group (one group
// stays in flight) and arrives on that step's empty barrier. Tiles are rows of 64 bf16 = 128
// bytes with the 128-byte swizzle, as the host's tensor maps write them and the wgmma
// descriptors read them (stride byte offset 1024: 8 rows; K steps of 16 advance the start
// address by 32 bytes). Accumulators: BN / 2 f32 a thread, the m64nN layout: warp w of the
// warpgroup owns rows 16w..16w+15, lane l rows l/4 and l/4 + 8, columns 8j + 2(l%4) + {0, 1}
// for j < BN / 8.

#define HG_BM 128
#define HG_BK 64
#define HG_STAGES 4
#define HG_THREADS 384
// Bytes of one stage for tiles BN columns wide: the A and B tiles.
#define HG_STAGE_BYTES(BN) ((HG_BM + (BN)) * HG_BK * 2)

// A CUtensorMap (opaque, 128 bytes, 64-byte aligned), passed by value.
struct __align__(64) HgTmaMap {
    unsigned long long v[16];
};

__device__ __forceinline__ unsigned hg_smem(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void hg_bar_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(hg_smem(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void hg_bar_expect_tx(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(hg_smem(bar)), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void hg_bar_arrive(unsigned long long* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(hg_smem(bar)) : "memory");
}

// Waits until the phase of parity `parity` of `bar` has completed (a fresh barrier counts its
// phase of parity 1 as completed).
__device__ __forceinline__ void hg_bar_wait(unsigned long long* bar, unsigned parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "HG_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra HG_WAIT;\n"
        "}\n" ::"r"(hg_smem(bar)),
        "r"(parity)
        : "memory");
}

__device__ __forceinline__ void hg_tma_load(void* dst, const HgTmaMap* map, unsigned long long* bar, int inner,
                                            int outer) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
            hg_smem(dst)),
        "l"((unsigned long long)map), "r"(hg_smem(bar)), "r"(inner), "r"(outer)
        : "memory");
}

// A shared-memory matrix descriptor for a K-major tile with the 128-byte swizzle whose rows are
// 128 bytes: start address >> 4 (bits 0-13), leading byte offset 1 (unused for this layout),
// stride byte offset 1024 >> 4 (bits 32-45: 8 rows), swizzle mode 1 (128 bytes, bits 62-63).
__device__ __forceinline__ unsigned long long hg_desc(const void* p) {
    unsigned long long d = (unsigned long long)((hg_smem(p) & 0x3FFFF) >> 4);
    d |= 1ull << 16;
    d |= (unsigned long long)(1024 >> 4) << 32;
    d |= 1ull << 62;
    return d;
}

__device__ __forceinline__ void hg_wgmma_m64n128k16(float* d, unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n"
        ".reg .pred acc;\n"
        "setp.ne.b32 acc, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, acc, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(1)
        : "memory");
}

__device__ __forceinline__ void hg_wgmma_m64n256k16(float* d, unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n"
        ".reg .pred acc;\n"
        "setp.ne.b32 acc, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, acc, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1)
        : "memory");
}

// One K step of 16 for a tile BN wide: m64n128k16 or m64n256k16.
template <int BN>
__device__ __forceinline__ void hg_wgmma(float* d, unsigned long long da, unsigned long long db) {
    if (BN == 256) {
        hg_wgmma_m64n256k16(d, da, db);
    } else {
        hg_wgmma_m64n128k16(d, da, db);
    }
}

// Keeps the accumulators in place across the asynchronous wgmma (no copies of them between the
// fence and the wait): an empty asm that reads and writes each one.
template <int R>
__device__ __forceinline__ void hg_pin(float* d) {
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// bf16 bits of x, rounded to nearest even (NaN kept a NaN).
__device__ __forceinline__ unsigned short hg_bf16(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

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

template <int EPI, int BN>
__device__ __forceinline__ void hopper_gemm(const HgTmaMap& map_a, const HgTmaMap& map_b, unsigned short* c,
                                            const unsigned short* bias, unsigned short* aux, int ldaux, int M,
                                            int N, int K, int ldc) {
    extern __shared__ unsigned char hg_raw[];
    __shared__ __align__(8) unsigned long long full[HG_STAGES], empty[HG_STAGES];
    // The swizzled tiles need 1024-byte alignment (the host asks for 1 KiB more than the ring).
    unsigned char* ring = hg_raw + ((1024 - (hg_smem(hg_raw) & 1023)) & 1023);
    // The warpgroup index through a shuffle, so the compiler sees it warp-uniform (a role branch
    // it takes for divergent serialises the consumers' wgmma: ptxas C7520).
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), t = threadIdx.x % 128;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * HG_BM;
    // Accumulators a thread: the m64nBN fragment.
    const int R = BN / 2;
    const int ktiles = (K + HG_BK - 1) / HG_BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < HG_STAGES; s++) {
            hg_bar_init(&full[s], 1);
            hg_bar_init(&empty[s], 2);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    if (wg == 0) {
        // The producer needs few registers; the consumers' 128 accumulators (tiles 256 wide)
        // take them.
        if (BN == 256) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (t == 0) {
            for (int kt = 0; kt < ktiles; kt++) {
                const int s = kt % HG_STAGES;
                const unsigned parity = ((kt / HG_STAGES) & 1) ^ 1;
                hg_bar_wait(&empty[s], parity);
                unsigned char* a = ring + s * HG_STAGE_BYTES(BN);
                unsigned char* b = a + HG_BM * HG_BK * 2;
                hg_bar_expect_tx(&full[s], HG_STAGE_BYTES(BN));
                hg_tma_load(a, &map_a, &full[s], kt * HG_BK, m0);
                hg_tma_load(b, &map_b, &full[s], kt * HG_BK, n0);
            }
        }
        return;
    }
    if (BN == 256) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int half = wg - 1;  // which 64 rows of the tile
    float d[R];
#pragma unroll
    for (int i = 0; i < R; i++) d[i] = 0.f;
    // Not unrolled: copies of the loop body make ptxas serialise the wgmma (C7511).
#pragma unroll 1
    for (int kt = 0; kt < ktiles; kt++) {
        const int s = kt % HG_STAGES;
        hg_bar_wait(&full[s], (kt / HG_STAGES) & 1);
        const unsigned char* a = ring + s * HG_STAGE_BYTES(BN) + half * 64 * 128;
        const unsigned char* b = ring + s * HG_STAGE_BYTES(BN) + HG_BM * HG_BK * 2;
        hg_pin<R>(d);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
        // K steps of 16 bf16 = 32 bytes: +2 in the descriptors' address field (16-byte units).
        const unsigned long long da = hg_desc(a), db = hg_desc(b);
#pragma unroll
        for (int kk = 0; kk < HG_BK / 16; kk++) hg_wgmma<BN>(d, da + 2 * kk, db + 2 * kk);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        // The previous K step's group is done: its stage goes back to the producer while this
        // step's wgmma run.
        asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
        if (kt > 0 && t == 0) hg_bar_arrive(&empty[(kt - 1) % HG_STAGES]);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    hg_pin<R>(d);
    hg_store<EPI, BN>(d, m0 + half * 64, n0, t, c, bias, aux, ldaux, M, N, ldc);
}

// ---- the persistent ping-pong variant (docs/hopper_gemm.md, step 3) ----
//
// Grid: one block an SM (at most one a tile); block b walks the 128 x 128 tiles b, b + grid, ...
// (its j-th: local index j), along N within a row of tiles. The producer thread streams every
// tile's K steps through one ring of HG_PP_STAGES stages, in local order. Consumer warpgroup w
// (0 or 1) computes the tiles with j % 2 == w, each whole (its rows 0-63 and 64-127 as two m64n128
// fragments: 128 accumulators a thread), so one warpgroup's epilogue runs while the other's
// wgmma run: the epilogue is off the tensor cores' critical path. A stage is released by the one
// warpgroup that read it (empty count 1). Order: a warpgroup starts waiting on the ring for its
// next tile only after the other has passed its last wait of the tile before (turn[]), so no
// warpgroup ever waits on a stage two phases ahead (the parity would alias).
#define HG_PP_STAGES 5
#define HG_PP_STAGE_BYTES (2 * 128 * HG_BK * 2)
// Bytes of a consumer warpgroup's staged DGELU pre-activation tile (hg_stage): 128 x 128 bf16.
#define HG_PP_AUX_BYTES (128 * 128 * 2)

// The 2-CTA cluster form (CL = 2, docs/hopper_gemm.md): the cluster's two blocks take the
// tiles (2 mp + rank, nt) of one pair (mp, nt) at a time, which share B's tile: each block's
// producer loads its own A tile and half of the B tile (64 rows), multicast into both blocks'
// stage at the same offset, so the L2 serves 3/4 of the ring's bytes. Stage s of a block is then
// written by both producers, so it is free only when both blocks' consumers have read it: every
// consumer release arrives on its own and on the peer's empty barrier (count 2). Both blocks walk
// the same pairs in the same order (a pair past M's tiles still loads, zero-filled, and stores
// nothing), so their rings stay in step. Cluster barriers after the barriers' initialisation
// (before any remote arrival or multicast) and before the consumers exit (no remote arrival
// lands in a block that has gone).
__device__ __forceinline__ unsigned hg_cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ void hg_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Arrives on the barrier at `bar`'s offset in cluster block `peer`. The default (CTA-scope)
// release: what it orders is the warpgroup's wgmma reads of the stage, already complete
// (wait_group); `.release.cluster` costs a GPU-wide memory barrier before every arrival
// (MEMBAR.ALL.GPU in the SASS), which made the first cluster form 1.8x slower.
__device__ __forceinline__ void hg_bar_arrive_peer(unsigned long long* bar, unsigned peer) {
    asm volatile(
        "{\n"
        ".reg .b32 ra;\n"
        "mapa.shared::cluster.u32 ra, %0, %1;\n"
        "mbarrier.arrive.shared::cluster.b64 _, [ra];\n"
        "}\n" ::"r"(hg_smem(bar)),
        "r"(peer)
        : "memory");
}

// hg_tma_load into the same offset of every block in `mask`, completing on each one's `bar`.
__device__ __forceinline__ void hg_tma_load_mc(void* dst, const HgTmaMap* map, unsigned long long* bar, int inner,
                                               int outer, unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, "
        "%4}], [%2], %5;" ::"r"(hg_smem(dst)),
        "l"((unsigned long long)map), "r"(hg_smem(bar)), "r"(inner), "r"(outer), "h"(mask)
        : "memory");
}

template <int EPI, int CL>
__device__ __forceinline__ void hopper_gemm_pp(const HgTmaMap& map_a, const HgTmaMap& map_b, unsigned short* c,
                                               const unsigned short* bias, unsigned short* aux, int ldaux, int M,
                                               int N, int K, int ldc) {
    extern __shared__ unsigned char hg_raw[];
    __shared__ __align__(8) unsigned long long full[HG_PP_STAGES], empty[HG_PP_STAGES], turn[2];
    unsigned char* ring = hg_raw + ((1024 - (hg_smem(hg_raw) & 1023)) & 1023);
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), t = threadIdx.x % 128;
    const int ktiles = (K + HG_BK - 1) / HG_BK;
    // Work units: tiles (CL 1) or pairs of tiles one above the other (CL 2); this block's unit
    // u is the tile (u / tiles_n * CL + rank, u % tiles_n).
    const int tiles_n = (N + 127) / 128, tiles_m = (M + HG_BM - 1) / HG_BM;
    const int units = tiles_n * ((tiles_m + CL - 1) / CL);
    const int rank = CL == 2 ? (int)hg_cluster_rank() : 0;
    const int unit0 = blockIdx.x / CL, nunits = gridDim.x / CL;
    if (threadIdx.x == 0) {
        for (int s = 0; s < HG_PP_STAGES; s++) {
            hg_bar_init(&full[s], 1);
            hg_bar_init(&empty[s], CL);
        }
        hg_bar_init(&turn[0], 1);
        hg_bar_init(&turn[1], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    if (CL == 2) {
        hg_cluster_sync();
    } else {
        __syncthreads();
    }
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (t == 0) {
            int q = 0;
            for (int u = unit0; u < units; u += nunits) {
                const int m0 = ((u / tiles_n) * CL + rank) * HG_BM, n0 = (u % tiles_n) * 128;
                for (int kt = 0; kt < ktiles; kt++, q++) {
                    const int s = q % HG_PP_STAGES;
                    hg_bar_wait(&empty[s], ((q / HG_PP_STAGES) & 1) ^ 1);
                    unsigned char* a = ring + s * HG_PP_STAGE_BYTES;
                    hg_bar_expect_tx(&full[s], HG_PP_STAGE_BYTES);
                    hg_tma_load(a, &map_a, &full[s], kt * HG_BK, m0);
                    if (CL == 2) {
                        hg_tma_load_mc(a + (128 + 64 * rank) * HG_BK * 2, &map_b, &full[s], kt * HG_BK, n0 + 64 * rank,
                                       (unsigned short)3);
                    } else {
                        hg_tma_load(a + 128 * HG_BK * 2, &map_b, &full[s], kt * HG_BK, n0);
                    }
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int w = wg - 1;
    // This warpgroup's part of what follows the ring: its bias row (hg_stage), then either its
    // DGELU pre-activation tile (hg_stage; its bytes double as the output's scratch) or each
    // warp's 1 KiB of output scratch (hg_put16: C's, and the GELU's pre-activation's).
    unsigned char* stage = ring + HG_PP_STAGES * HG_PP_STAGE_BYTES;
    unsigned* sbias_w = (unsigned*)(stage + w * 256);
    uint4* saux_w = (uint4*)(stage + 512 + w * HG_PP_AUX_BYTES);
    const unsigned scratch_w = hg_smem(stage + 512) + (unsigned)((w * 4 + (t / 32)) * 1024);
    float d[2][64];
    // k: how many tiles this warpgroup has done (its turn barrier's phases).
    int k = 0;
    // A stage read: released to this block's producer and, in a cluster, the peer's.
    auto release = [&](int s) {
        hg_bar_arrive(&empty[s]);
        if (CL == 2) hg_bar_arrive_peer(&empty[s], (unsigned)(rank ^ 1));
    };
    for (int j = w, u = unit0 + w * nunits; u < units; j += 2, u += 2 * nunits, k++) {
        const int m0 = ((u / tiles_n) * CL + rank) * HG_BM, n0 = (u % tiles_n) * 128;
        // The epilogue's operands come in while the mainloop runs, once the warpgroup's last
        // epilogue has read the staging (uniform: every thread of the block sees the same vec).
        const bool has_bias = (EPI == HG_EPI_BIAS || EPI == HG_EPI_GELU) && bias;
        const bool staged = hg_vec<EPI, 128>(n0, N, c, ldc, aux, ldaux) && (!has_bias || ((size_t)bias & 3) == 0);
        if (staged && (has_bias || EPI == HG_EPI_DGELU)) {
            hg_wg_sync(w);
            hg_stage<EPI>(sbias_w, saux_w, t, m0, n0, M, bias, aux, ldaux);
        }
        // The other warpgroup has passed its last ring wait of local tile j - 1.
        if (j > 0) hg_bar_wait(&turn[1 - w], (w == 1 ? k : k - 1) & 1);
#pragma unroll
        for (int i = 0; i < 64; i++) d[0][i] = d[1][i] = 0.f;
        const int q0 = j * ktiles;
#pragma unroll 1
        for (int kt = 0; kt < ktiles; kt++) {
            const int q = q0 + kt, s = q % HG_PP_STAGES;
            hg_bar_wait(&full[s], (q / HG_PP_STAGES) & 1);
            const unsigned char* a = ring + s * HG_PP_STAGE_BYTES;
            const unsigned char* b = a + 128 * HG_BK * 2;
            hg_pin<64>(d[0]);
            hg_pin<64>(d[1]);
            asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
            const unsigned long long da0 = hg_desc(a), da1 = hg_desc(a + 64 * 128), db = hg_desc(b);
#pragma unroll
            for (int kk = 0; kk < HG_BK / 16; kk++) {
                hg_wgmma_m64n128k16(d[0], da0 + 2 * kk, db + 2 * kk);
                hg_wgmma_m64n128k16(d[1], da1 + 2 * kk, db + 2 * kk);
            }
            asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
            if (kt > 0 && t == 0) release((q - 1) % HG_PP_STAGES);
        }
        // Every ring wait of this tile is behind: the other warpgroup may start its next tile.
        if (t == 0) hg_bar_arrive(&turn[w]);
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        hg_pin<64>(d[0]);
        hg_pin<64>(d[1]);
        if (t == 0) release((q0 + ktiles - 1) % HG_PP_STAGES);
        if (staged) {
            if (has_bias || EPI == HG_EPI_DGELU) {
                asm volatile("cp.async.wait_all;" ::: "memory");
                hg_wg_sync(w);  // the bias row came in through 64 threads
            }
            const unsigned* sb = has_bias ? sbias_w : nullptr;
            hg_store_pp<EPI>(d[0], m0, 0, n0, t, c, ldc, aux, ldaux, M, sb, hg_smem(saux_w), scratch_w);
            hg_store_pp<EPI>(d[1], m0, 1, n0, t, c, ldc, aux, ldaux, M, sb, hg_smem(saux_w), scratch_w);
        } else {
            hg_store<EPI, 128>(d[0], m0, n0, t, c, bias, aux, ldaux, M, N, ldc);
            hg_store<EPI, 128>(d[1], m0 + 64, n0, t, c, bias, aux, ldaux, M, N, ldc);
        }
    }
    // No block leaves while its peer may still arrive on its barriers.
    if (CL == 2) hg_cluster_sync();
}


#define HG_PP_ENTRY(NAME, EPI)                                                                                \
    extern "C" __global__ void __launch_bounds__(HG_THREADS, 1)                                               \
        NAME(const __grid_constant__ HgTmaMap map_a, const __grid_constant__ HgTmaMap map_b, unsigned short* c, \
             const unsigned short* bias, unsigned short* aux, int ldaux, int M, int N, int K, int ldc) {       \
        hopper_gemm_pp<EPI, 1>(map_a, map_b, c, bias, aux, ldaux, M, N, K, ldc);                              \
    }
HG_PP_ENTRY(hopper_gemm_pp_bf16, HG_EPI_NONE)
HG_PP_ENTRY(hopper_gemm_pp_bias_bf16, HG_EPI_BIAS)
HG_PP_ENTRY(hopper_gemm_pp_gelu_aux_bf16, HG_EPI_GELU)
HG_PP_ENTRY(hopper_gemm_pp_dgelu_bf16, HG_EPI_DGELU)

// The same in clusters of two blocks (B's tile multicast; the grid even).
#define HG_PC_ENTRY(NAME, EPI)                                                                                \
    extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(HG_THREADS, 1)                     \
        NAME(const __grid_constant__ HgTmaMap map_a, const __grid_constant__ HgTmaMap map_b, unsigned short* c, \
             const unsigned short* bias, unsigned short* aux, int ldaux, int M, int N, int K, int ldc) {       \
        hopper_gemm_pp<EPI, 2>(map_a, map_b, c, bias, aux, ldaux, M, N, K, ldc);                              \
    }
HG_PC_ENTRY(hopper_gemm_pc_bf16, HG_EPI_NONE)
HG_PC_ENTRY(hopper_gemm_pc_bias_bf16, HG_EPI_BIAS)
HG_PC_ENTRY(hopper_gemm_pc_gelu_aux_bf16, HG_EPI_GELU)
HG_PC_ENTRY(hopper_gemm_pc_dgelu_bf16, HG_EPI_DGELU)

// dst [cols, rows] (dense) = src [rows, cols] (row stride ld_src) transposed, bf16, in 32 x 32
// tiles through shared memory; blocks of 32 x 8 threads. Turns a GEMM operand given [k, n] into
// the [n, k] the kernels above read (HopperGemm::try_run_kn).
extern "C" __global__ void __launch_bounds__(256) hopper_transpose_bf16(const unsigned short* src, int ld_src,
                                                                        unsigned short* dst, int rows, int cols) {
    __shared__ unsigned short tile[32][34];
    const int c = blockIdx.x * 32 + threadIdx.x;
    for (int i = threadIdx.y; i < 32; i += 8) {
        const int r = blockIdx.y * 32 + i;
        if (r < rows && c < cols) tile[i][threadIdx.x] = src[(size_t)r * ld_src + c];
    }
    __syncthreads();
    const int r = blockIdx.y * 32 + threadIdx.x;
    for (int i = threadIdx.y; i < 32; i += 8) {
        const int cc = blockIdx.x * 32 + i;
        if (cc < cols && r < rows) dst[(size_t)cc * rows + r] = tile[threadIdx.x][i];
    }
}

// The entry points (one a epilogue), sharing one body; the maps stay __grid_constant__
// parameters so that their addresses are the ones the bulk copies read.
#define HG_ENTRY(NAME, EPI, BN)                                                                               \
    extern "C" __global__ void __launch_bounds__(HG_THREADS, 1)                                               \
        NAME(const __grid_constant__ HgTmaMap map_a, const __grid_constant__ HgTmaMap map_b, unsigned short* c, \
             const unsigned short* bias, unsigned short* aux, int ldaux, int M, int N, int K, int ldc) {       \
        hopper_gemm<EPI, BN>(map_a, map_b, c, bias, aux, ldaux, M, N, K, ldc);                               \
    }
HG_ENTRY(hopper_gemm_bf16, HG_EPI_NONE, 128)
HG_ENTRY(hopper_gemm_bias_bf16, HG_EPI_BIAS, 128)
HG_ENTRY(hopper_gemm_gelu_aux_bf16, HG_EPI_GELU, 128)
HG_ENTRY(hopper_gemm_n256_bf16, HG_EPI_NONE, 256)
HG_ENTRY(hopper_gemm_n256_bias_bf16, HG_EPI_BIAS, 256)
HG_ENTRY(hopper_gemm_n256_gelu_aux_bf16, HG_EPI_GELU, 256)
HG_ENTRY(hopper_gemm_dgelu_bf16, HG_EPI_DGELU, 128)
HG_ENTRY(hopper_gemm_n256_dgelu_bf16, HG_EPI_DGELU, 256)
