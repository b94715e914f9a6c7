// ---- fused classifier tail: softcap + log-softmax + NLL + its gradient, in place ----

// The classifier's logits row stride (`#define MS_LOGITS_LD`, set by the library's instance: the
// padded vocabulary rounded up to 64, `modelspec_dsl::codegen::logits_stride`): chunks
// whose row stride is exactly that (the classifier's) run an instantiation with the stride as a
// compile-time constant; other strides (tests) pass it at run time (LD = 0).
#ifndef MS_LOGITS_LD
#define MS_LOGITS_LD 0
#endif

// One logit of the online log-sum-exp: running max `mx` and sum `s` of exp(z - mx).
__device__ __forceinline__ void lse_push(float z, float& mx, float& s) {
    if (z > mx) {
        s = s * __expf(mx - z) + 1.f;
        mx = z;
    } else {
        s += __expf(z - mx);
    }
}

// xent_{dtype}: for each row n of logits [N, ld] (V valid columns), with z = softcap ?
// cap * tanh(l / cap) : l:
//   loss[n] = logsumexp(z) - z[target[n]]   (0 when target < 0: ignored position)
//   when write_grad: logits[n, j] <- dscale * (softmax(z)_j - [j == target]) * dz/dl
// (columns V..ld become 0, whatever they held; the trainer passes V = the padded vocabulary, as
// its softmax spans it like the CPU executor's and the exported HF model's, and ld = MS_LOGITS_LD,
// that rounded up to 64, so V < ld for vocabularies without a pad multiple, e.g. gpt2's 50257 in
// rows of 50304, whose columns past V the classifier's GEMM never writes) so the logits chunk buffer becomes
// d(loss * dscale)/d(logits) without any extra buffer. The caller feeds this a chunk of rows at a
// time, so full [N, V] logits never exist at once.
// Launch: grid rows, block 512. Traffic: reads the row twice (max/sum pass, grad pass; the second
// from L2 only while the rows in flight fit it: not at gpt2's 100 KB rows), writes it once; 16-byte vector accesses when the rows are 16-byte aligned and
// the stride a multiple of the vector (8 bf16 / 4 f32), else element by element.
template <typename T, int LD>
__device__ void xent(T* logits, float* loss, const int* target, int V, int ld_, float softcap, float dscale,
                     int write_grad) {
    const int ld = LD ? LD : ld_;
    const int VN = 16 / (int)sizeof(T);
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    T* lr = logits + row * ld;
    int tgt = target[row];
    const bool vec = (ld % VN == 0) && (((size_t)logits & 15) == 0);
    const int vv = vec ? (V / VN) * VN : 0;  // columns [0, vv) in vectors, [vv, V) one by one
    float mx = NEG_INF, s = 0.f;
    for (int j0 = threadIdx.x * VN; j0 < vv; j0 += blockDim.x * VN) {
        float z[16 / sizeof(T)];
        ld16(lr + j0, z);
#pragma unroll
        for (int e = 0; e < VN; e++) {
            float ze = softcap > 0.f ? softcap * tanhf(z[e] / softcap) : z[e];
            lse_push(ze, mx, s);
        }
    }
    for (int j = vv + threadIdx.x; j < V; j += blockDim.x) {
        float z = lf(lr + j);
        if (softcap > 0.f) z = softcap * tanhf(z / softcap);
        lse_push(z, mx, s);
    }
    float gmx = block_max(mx, scratch);
    s = (mx == NEG_INF) ? 0.f : s * __expf(mx - gmx);
    float gs = block_sum(s, scratch);
    float lse = gmx + __logf(gs);
    if (threadIdx.x == 0) {
        float zt = 0.f;
        if (tgt >= 0) {
            zt = lf(lr + tgt);
            if (softcap > 0.f) zt = softcap * tanhf(zt / softcap);
        }
        loss[row] = tgt >= 0 ? lse - zt : 0.f;
    }
    __syncthreads();  // thread 0 read lr[tgt] before anyone overwrites it
    if (!write_grad) return;
    // d(loss)/d(logit j): padded columns (j >= V) and ignored rows get 0.
    auto grad = [&](int j, float l) -> float {
        if (j >= V || tgt < 0) return 0.f;
        float z = l, dzdl = 1.f;
        if (softcap > 0.f) {
            float t = tanhf(l / softcap);
            z = softcap * t;
            dzdl = 1.f - t * t;
        }
        return (__expf(z - lse) - (j == tgt ? 1.f : 0.f)) * dscale * dzdl;
    };
    if (vec) {
        for (int j0 = threadIdx.x * VN; j0 < ld; j0 += blockDim.x * VN) {
            float l[16 / sizeof(T)];
            ld16(lr + j0, l);
#pragma unroll
            for (int e = 0; e < VN; e++) l[e] = grad(j0 + e, l[e]);
            st16(lr + j0, l);
        }
    } else {
        for (int j = threadIdx.x; j < ld; j += blockDim.x) sf(lr + j, grad(j, lf(lr + j)));
    }
}
#define XENT_INSTANTIATE(SUF, T)                                                                     \
    extern "C" __global__ void xent_##SUF(T* logits, float* loss, const int* target, int V, int ld,   \
                                          float softcap, float dscale, int write_grad) {             \
        if (MS_LOGITS_LD && ld == MS_LOGITS_LD)                                                \
            xent<T, MS_LOGITS_LD>(logits, loss, target, V, ld, softcap, dscale, write_grad);       \
        else                                                                                         \
            xent<T, 0>(logits, loss, target, V, ld, softcap, dscale, write_grad);                    \
    }
XENT_INSTANTIATE(f32, float)
XENT_INSTANTIATE(bf16, bf16)

// ---- the row-resident path: one read and one write of each row ----
//
// For the classifier's stride (LD = MS_LOGITS_LD, 16-byte aligned rows) a block holds its whole
// row on chip between the passes, packed as stored (16-byte vectors of 8 bf16 or 4 f32): vector
// slots 0..RV of each thread in registers, the rest in dynamic shared memory. The passes (max,
// sum of exponentials, gradient) then read the row from there, so HBM sees one read and one
// write (the generic path reads it twice: at gpt2's 100 KB rows the second read misses L2).
//
// The plan (threads, slots, shared memory) is a compile-time function of LD and the element size,
// mirrored by `row_plan` in cuda.rs (the launcher passes its block size and shared memory):
// - two blocks an SM when the row fits 512 threads x XENT_ROW_REGV register slots plus at most
//   XENT_ROW_SMEM_TWO bytes of shared memory (gpt2's 50304 bf16: 13 slots, 5 in registers, 64 KB
//   shared), so one block's loads overlap the other's arithmetic;
// - else one block of 1024 threads an SM, up to XENT_ROW_SMEM_MAX bytes (sm_90's opt-in limit) of
//   shared memory (gpt2's f32 rows: 13 slots, 128 KB; llama's 128256 bf16: 16 slots, 176 KB);
// - else (llama's f32 rows: 501 KB) no resident path: the generic kernel runs.
// At most 64 registers a thread in both cases (__launch_bounds__). 5 register slots (20 registers)
// is the most that NVRTC's ptxas (sm_90, -Xptxas -v) fits without spilling for these rows: 6 spill
// 8-20 bytes, 4 leave registers unused.
#define XENT_ROW_REGV 5
#define XENT_ROW_SMEM_TWO 102400
#define XENT_ROW_SMEM_MAX 232448

template <int ES, int LD>
struct XentRowPlan {
    static constexpr int VN = 16 / ES;        // elements a vector
    static constexpr int NVT = LD / VN;       // vectors a row
    static constexpr int NV2 = (NVT + 511) / 512;
    static constexpr bool TWO = (NV2 > XENT_ROW_REGV ? NV2 - XENT_ROW_REGV : 0) * 512 * 16 <= XENT_ROW_SMEM_TWO;
    static constexpr int THREADS = TWO ? 512 : 1024;
    static constexpr int MINB = TWO ? 2 : 1;   // blocks an SM the registers must allow
    static constexpr int NV = (NVT + THREADS - 1) / THREADS;  // vector slots a thread
    static constexpr int RV = NV < XENT_ROW_REGV ? NV : XENT_ROW_REGV;  // of them in registers
    static constexpr int SV = NV - RV;                                   // in shared memory
    static constexpr int SMEM = SV * THREADS * 16;
    static constexpr bool OK = LD > 0 && LD % VN == 0 && SMEM <= XENT_ROW_SMEM_MAX;
};

// Asynchronous 16-byte global -> shared copy (cp.async, sm_80+, as the library's attention).
__device__ __forceinline__ void xr_cp_async16(void* smem, const void* gmem) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem) : "memory");
}

// A 16-byte vector as stored <-> its elements as f32.
__device__ __forceinline__ void xr_unpack(uint4 v, float* out, const bf16*) {
    u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        out[2 * k] = __uint_as_float(w[k] << 16);
        out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}
__device__ __forceinline__ void xr_unpack(uint4 v, float* out, const float*) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ uint4 xr_pack(const float* in, const bf16*) {
    u32 w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (u32)f32_to_bf16(in[2 * k]) | ((u32)f32_to_bf16(in[2 * k + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ uint4 xr_pack(const float* in, const float*) {
    return make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]), __float_as_uint(in[3]));
}

// f(i, v) for each slot i of a thread with its vector v (the last one only when `last`): the
// register slots unrolled (their index must be constant), the shared-memory ones (slot i at
// sv[(i - RV) * TH]) in a loop (unrolled, the compiler hoists every slot's loads and spills).
template <int NV, int RV, int TH, typename F>
__device__ __forceinline__ void xr_each(const uint4 (&reg)[RV], const uint4* sv, bool last, F f) {
#pragma unroll
    for (int i = 0; i < RV; i++)
        if (i < NV - 1 || last) f(i, reg[i]);
#pragma unroll 1
    for (int i = RV; i < NV; i++)
        if (i < NV - 1 || last) f(i, sv[(i - RV) * TH]);
}

// The same loss and gradient as xent<T, LD> (its comment has the formulas), for one row of LD
// elements held on chip. Launch: grid rows, block P::THREADS, P::SMEM bytes of dynamic shared
// memory; rows 16-byte aligned. Rows with an ignored target (< 0) are not read: loss 0 and, with
// write_grad, a zero gradient row.
template <typename T, int LD>
__device__ __forceinline__ void xent_row(T* logits, float* loss, const int* target, int V, float softcap,
                                         float dscale, int write_grad) {
    typedef XentRowPlan<sizeof(T), LD> P;
    constexpr int VN = P::VN, TH = P::THREADS, NV = P::NV, RV = P::RV;
    extern __shared__ __align__(16) uint4 xent_row_smem[];
    __shared__ float scratch[32];
    const int tid = threadIdx.x;
    const size_t row = blockIdx.x;
    // This thread's slot i is vector i * TH + tid of the row; only the last slot can fall past it.
    uint4* const gv = (uint4*)(logits + row * LD) + tid;
    uint4* const sv = xent_row_smem + tid;  // slot i >= RV lives at sv[(i - RV) * TH]
    const bool last = (P::NVT % TH) == 0 || (NV - 1) * TH + tid < P::NVT;
    auto valid = [&](int i) { return i < NV - 1 || last; };
    const int tgt = target[row];
    if (tgt < 0) {
        if (tid == 0) loss[row] = 0.f;
        if (write_grad) {
#pragma unroll
            for (int i = 0; i < NV; i++)
                if (valid(i)) gv[i * TH] = make_uint4(0u, 0u, 0u, 0u);
        }
        return;
    }
    // The target's logit, read before any thread overwrites the row (after the block_sum below).
    const float lt = tid == 0 ? lf(logits + row * LD + tgt) : 0.f;
    uint4 reg[RV];
    // Pass 1, the one read of the row: asynchronous copies into the shared-memory slots (in flight
    // together without passing through registers), plain loads into the register slots.
#pragma unroll 1
    for (int i = RV; i < NV; i++)
        if (valid(i)) xr_cp_async16(&sv[(i - RV) * TH], gv + i * TH);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < RV; i++)
        if (valid(i)) reg[i] = gv[i * TH];
    // Each thread reads back only its own slots: no barrier is needed between the passes.
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    // The max of the V valid columns; the softcap is increasing, so the max of the capped logits
    // is the cap of the max.
    float mx = NEG_INF;
    xr_each<NV, RV, TH>(reg, sv, last, [&](int i, uint4 v) {
        float l[VN];
        xr_unpack(v, l, (const T*)nullptr);
        const int j0 = (i * TH + tid) * VN;
#pragma unroll
        for (int e = 0; e < VN; e++) mx = fmaxf(mx, j0 + e < V ? l[e] : NEG_INF);
    });
    float gmx = block_max(mx, scratch);
    if (softcap > 0.f) gmx = softcap * tanhf(gmx / softcap);
    // Pass 2: the sum of exp(z - max) over the valid columns.
    float s = 0.f;
    xr_each<NV, RV, TH>(reg, sv, last, [&](int i, uint4 v) {
        float l[VN];
        xr_unpack(v, l, (const T*)nullptr);
        const int j0 = (i * TH + tid) * VN;
#pragma unroll
        for (int e = 0; e < VN; e++) {
            const float z = softcap > 0.f ? softcap * tanhf(l[e] / softcap) : l[e];
            const float ez = __expf(z - gmx);
            s += j0 + e < V ? ez : 0.f;
        }
    });
    const float lse = gmx + __logf(block_sum(s, scratch));
    if (tid == 0) loss[row] = lse - (softcap > 0.f ? softcap * tanhf(lt / softcap) : lt);
    if (!write_grad) return;
    // Pass 3: the gradient from the held row, written over it (padded columns get 0).
    xr_each<NV, RV, TH>(reg, sv, last, [&](int i, uint4 v) {
        float l[VN];
        xr_unpack(v, l, (const T*)nullptr);
        const int j0 = (i * TH + tid) * VN;
#pragma unroll
        for (int e = 0; e < VN; e++) {
            const int j = j0 + e;
            float z = l[e], dzdl = 1.f;
            if (softcap > 0.f) {
                const float t = tanhf(l[e] / softcap);
                z = softcap * t;
                dzdl = 1.f - t * t;
            }
            const float g = (__expf(z - lse) - (j == tgt ? 1.f : 0.f)) * dscale * dzdl;
            l[e] = j < V ? g : 0.f;
        }
        gv[i * TH] = xr_pack(l, (const T*)nullptr);
    });
}

// The entry's body: the resident path when this launch is the one it was planned for (stride LD,
// aligned rows, the plan's block size and shared memory), else the generic kernel, so a launch
// with another configuration is slower, never wrong.
template <typename T, int LD>
__device__ __forceinline__ void xent_row_entry(T* logits, float* loss, const int* target, int V, int ld,
                                               float softcap, float dscale, int write_grad) {
    typedef XentRowPlan<sizeof(T), LD> P;
    if constexpr (P::OK) {
        u32 dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (ld == LD && blockDim.x == P::THREADS && dyn >= (u32)P::SMEM && ((size_t)logits & 15) == 0) {
            xent_row<T, LD>(logits, loss, target, V, softcap, dscale, write_grad);
            return;
        }
    }
    xent<T, 0>(logits, loss, target, V, ld, softcap, dscale, write_grad);
}

// `xent_row_{dtype}_{MS_LOGITS_LD}`: the resident path of the spec's classifier stride, the
// stride in the name so the launcher finds it only in a library instantiated for that stride.
#define XENT_CAT_(a, b) a##b
#define XENT_CAT(a, b) XENT_CAT_(a, b)
#if MS_LOGITS_LD > 0
#define XENT_ROW_INSTANTIATE(SUF, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(XentRowPlan<sizeof(T), MS_LOGITS_LD>::THREADS,     \
                                                 XentRowPlan<sizeof(T), MS_LOGITS_LD>::MINB)        \
        XENT_CAT(xent_row_##SUF##_, MS_LOGITS_LD)(T * logits, float* loss, const int* target, int V, \
                                                     int ld, float softcap, float dscale,              \
                                                     int write_grad) {                                 \
        xent_row_entry<T, MS_LOGITS_LD>(logits, loss, target, V, ld, softcap, dscale, write_grad);  \
    }
XENT_ROW_INSTANTIATE(f32, float)
XENT_ROW_INSTANTIATE(bf16, bf16)
#endif
