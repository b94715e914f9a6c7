// ---- attention forward on Hopper's tensor cores (wgmma), fed by the bulk tensor copy engine ----
//
// attn_hopper_fwd_{,plain_,poly_,pp_}d{64,128} and attn_hopper_fwd_plain_m192_d64: the forward of
// attention_simple.cu's contract (layout, scores, mask, ALiBi, softcap, lse [B, H, T] in natural
// log) for bf16 at head dims 64 and 128
// (values as wide as queries), compiled for compute_90a only (wgmma, setmaxnreg) as a module of
// its own (ops/attention/cuda/hopper.rs). Source order: kernels/common.cuh, matmul/hopper_mma.cuh
// (mbarriers, bulk copies, the K-major descriptor), this file.
//
// Work: tiles of 128 (or 192: `_m192`) queries of one (head, batch); blocks of a producer
// warpgroup and one consumer warpgroup a 64 queries take them one after the other as they free
// up (ah_tile, ah_next: persistent, one block a multiprocessor, or one block a tile). Warpgroup 0
// produces: its first thread brings a tile's Q (128 or 192 x D) into one of AH_QBUFS(D) buffers, then
// for each key tile of 128 rows the tile sees, last (the diagonal) first, the K tile and the V
// tile into stage s of a ring of AH_STAGES(D), completing on k_full[s] / v_full[s]; it waits for
// k_empty[s] / v_empty[s] (every consumer done with the stage) before reusing one, and for
// that buffer's q_empty before the tile after next's Q. The other warpgroups consume, each for 64 of the queries:
//   S = Q K^T         D/16 wgmma m64n128k16, both operands K-major in shared memory;
//   online softmax    on S's registers (a thread holds 2 rows x 32 columns, rows reduced over the
//                     4 lanes of a quad), exp2 with the scale folded in, as attention_mma.cu;
//   O += P V          8 wgmma m64nDk16 with P as the A operand in registers (S's accumulator
//                     layout is the A fragment layout, packed to bf16) and V N-major in shared
//                     memory (the instruction's transposed B: V's rows are keys, K's dimension);
// in one of three schedules (ah_consume), then store O and lse from registers.
// Tiles in shared memory are panels of 64 columns (128-byte rows, the 128-byte swizzle the tensor
// maps write), a D128 tile two panels one after the other. Q and K descriptors are hg_desc's; V's
// (N-major) name the stride between 8-key groups (1024 bytes, SBO) and between the panels (LBO).
// Accumulator layout (m64nN): warp w of the warpgroup owns rows 16w..16w+15, lane l rows l/4 and
// l/4 + 8, d[4j + 2h + e] at row l/4 + 8h, column 8j + 2(l%4) + e.
// Rows past T of a tile read the next sequence's rows (or zeros past the tensor): keys there are
// masked (j < T), queries there are computed and never stored.

// Keys a tile; a tile's queries are 64 a consumer warpgroup (NC of them: 128 or 192).
#define AH_BN 128
// Stages of the K/V ring a head dim: as many as shared memory holds beside Q (4 x 32 KiB at
// D64, 3 x 64 KiB at D128), to cover the L2's and DRAM's latency.
#define AH_STAGES(D) ((D) == 64 ? 4 : 3)
// Q buffers a head dim: two at D64, so that the producer brings the next tile's Q (and its first
// K/V tiles) while the consumers still run the current tile's S products; one at D128, where
// a second Q tile would cost a ring stage.
#define AH_QBUFS(D) ((D) == 64 ? 2 : 1)

// S (m64n128, f32) = A B^T (+ S when `acc`), A and B K-major tiles in shared memory.
__device__ __forceinline__ void ah_wgmma_ss_n128(float* d, unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(acc)
        : "memory");
}

// O (m64n64, f32) += A B, A (m64k16 bf16) in registers, B an N-major tile in shared memory.
__device__ __forceinline__ void ah_wgmma_rs_n64(float* d, const unsigned* a, unsigned long long db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1)
        : "memory");
}

// O (m64n128, f32) += A B, A (m64k16 bf16) in registers, B an N-major tile in shared memory.
__device__ __forceinline__ void ah_wgmma_rs_n128(float* d, const unsigned* a, unsigned long long db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1)
        : "memory");
}

// The descriptor of an N-major tile with the 128-byte swizzle (64 N-elements a 128-byte row, one
// row a K index): leading byte offset `lbo` between 64-wide panels of N, stride byte offset 1024
// between groups of 8 rows along K.
__device__ __forceinline__ unsigned long long ah_desc_n_major(const void* p, unsigned lbo) {
    unsigned long long d = (unsigned long long)((hg_smem(p) & 0x3FFFF) >> 4);
    d |= (unsigned long long)((lbo >> 4) & 0x3FFF) << 16;
    d |= (unsigned long long)(1024 >> 4) << 32;
    d |= 1ull << 62;
    return d;
}

// What a consumer thread knows of its rows and the scores: rows r0 and r0 + 8, columns 8j + c0 +
// {0, 1} of each tile; row r sees the keys lo[r]..hi[r] (the mask of attention_simple.cu's
// header is an interval a row: causal, window, chunk, T).
struct AhRows {
    int r0, c0;
    int lo[2], hi[2];
    float slope, qk_scale, softcap;
    const float* alibi;
};

// S's product for key tile (stage) kt: D/16 wgmma m64n128k16 from the warpgroup's Q rows qw and
// the K tile, both K-major (panel p of 64 columns, 32-byte steps within a panel; Q's panels
// QPANEL bytes apart), issued as one group (not waited for).
template <int D, int QPANEL>
__device__ __forceinline__ void ah_qk(float* sc, const unsigned char* qw, const unsigned char* kt) {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const int p = kk / 4, c = 2 * (kk % 4);
        ah_wgmma_ss_n128(sc, hg_desc(qw + p * QPANEL) + c, hg_desc(kt + p * AH_BN * 128) + c, kk > 0);
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

// O += P V for V tile vt: 8 wgmma m64nDk16, P's k step kk in pa[4kk..4kk+3], V N-major (keys
// 16kk.. start 2048 bytes on: two 8-row groups), issued as one group (not waited for).
template <int D>
__device__ __forceinline__ void ah_pv(float* acc, const unsigned* pa, const unsigned char* vt) {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < AH_BN / 16; kk++) {
        const unsigned long long dv = ah_desc_n_major(vt + kk * 2048, AH_BN * 128);
        if constexpr (D == 128) {
            ah_wgmma_rs_n128(acc, pa + 4 * kk, dv);
        } else {
            ah_wgmma_rs_n64(acc, pa + 4 * kk, dv);
        }
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

// 2^x for x <= 0 on the FMA pipe (FlashAttention-4's offload of the MUFU unit, which at D64 is
// as busy as the tensor cores): n = round(x) by the 1.5 * 2^23 addition, 2^(x - n) for
// x - n in [-1/2, 1/2] by a cubic fitted for relative error (at most 7.5e-5, below bf16's 2^-9
// rounding of P), n added to the exponent bits (the addend's low mantissa bits are n + 2^22,
// and the 2^22 shifts out). x is clamped at -126 so that masked scores (-inf) give 0.
__device__ __forceinline__ float ah_exp2_poly(float x) {
    x = fmaxf(x, -126.f);
    const float t = x + 12582912.f;
    const float f = x - (t - 12582912.f);
    const float p = fmaf(fmaf(fmaf(0.05517161637544632f, f, 0.24261116981506348f), f, 0.6932610273361206f), f,
                         0.9999280571937561f);
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// The online softmax of key tile k0 on S's registers, in place: sc becomes exp2(score - new max)
// with the scores in log2 units (scaled, biased, capped, masked); the rows' maxima m and sums l
// are updated, corr is the factor the O accumulated so far takes.
// POLY: every fourth exponential on the FMA pipe (ah_exp2_poly).
template <int POLY>
__device__ __forceinline__ void ah_softmax(float* sc, float* m, float* l, float* corr, int k0, const AhRows& a) {
    // Without ALiBi and softcap the scale is folded into the exponent's FFMA (mul: sc's units).
    float mul = a.qk_scale;
    if (a.alibi || a.softcap > 0.f) {
        if (a.alibi) {
#pragma unroll
            for (int i = 0; i < 64; i++) sc[i] += alibi_bias(a.slope, k0 + 8 * (i >> 2) + a.c0 + (i & 1));
        }
#pragma unroll
        for (int i = 0; i < 64; i++) sc[i] *= a.qk_scale;
        if (a.softcap > 0.f) {
#pragma unroll
            for (int i = 0; i < 64; i++) sc[i] = a.softcap * tanhf(sc[i] / a.softcap) * LOG2E;
        }
        mul = 1.f;
    }
    // Masking only where the tile reaches past one of this thread's rows' intervals.
    if (k0 < max(a.lo[0], a.lo[1]) || k0 + AH_BN - 1 > min(a.hi[0], a.hi[1])) {
#pragma unroll
        for (int i = 0; i < 64; i++) {
            const int col = k0 + 8 * (i >> 2) + a.c0 + (i & 1), r = (i >> 1) & 1;
            if (col < a.lo[r] || col > a.hi[r]) sc[i] = NEG_INF;
        }
    }
    // Each row's maximum over its 32 scores as a tree (depth 5; the loop's order was a chain of
    // 32 dependent FMNMX, whose latency nothing hides while both consumer warpgroups wait on it).
    float mx[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float t[16];
#pragma unroll
        for (int j = 0; j < 16; j++) t[j] = fmaxf(sc[4 * j + 2 * r], sc[4 * j + 2 * r + 1]);
#pragma unroll
        for (int j = 0; j < 8; j++) t[j] = fmaxf(t[j], t[j + 8]);
#pragma unroll
        for (int j = 0; j < 4; j++) t[j] = fmaxf(t[j], t[j + 4]);
        t[0] = fmaxf(fmaxf(t[0], t[2]), fmaxf(t[1], t[3]));
        mx[r] = t[0];
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float mnew = fmaxf(m[r], mx[r] * mul);  // mul > 0: the max commutes with it
        base[r] = mnew == NEG_INF ? 0.f : mnew;
        corr[r] = exp2f(m[r] - base[r]);
        m[r] = mnew;
        l[r] *= corr[r];
    }
#pragma unroll
    for (int i = 0; i < 64; i++) {
        const float x = fmaf(sc[i], mul, -base[(i >> 1) & 1]);
        sc[i] = POLY && (i & 3) == 3 ? ah_exp2_poly(x) : exp2f(x);
        l[(i >> 1) & 1] += sc[i];
    }
}

// P (bf16) as the A operand from the exponentials: k step kk (keys 16kk..16kk+15) is
// pa[4kk..4kk+3] = (row r0, keys 16kk + c0), (r0 + 8, same), (r0, 16kk + 8 + c0), (r0 + 8, same):
// S's column blocks 2kk and 2kk + 1.
__device__ __forceinline__ void ah_pack(const float* sc, unsigned* pa) {
#pragma unroll
    for (int j = 0; j < 16; j++) {
        pa[2 * j] = pack_bf16x2(sc[4 * j], sc[4 * j + 1]);
        pa[2 * j + 1] = pack_bf16x2(sc[4 * j + 2], sc[4 * j + 3]);
    }
}

template <int R>
__device__ __forceinline__ void ah_rescale(float* acc, const float* corr) {
#pragma unroll
    for (int i = 0; i < R; i++) acc[i] *= corr[(i >> 1) & 1];
}

// A block's work tile: bm queries (64 a consumer warpgroup) of one (head, batch), and the key tiles [kb_first, kb_end)
// they see. Tiles are numbered in groups of `group` heads whose keys and values fit the L2
// together (the host's choice), within a group the causal triangle's long rows first, head after
// head: tile i is, with r = i % (group nqb) and gh the heads of its group (fewer in the last),
// query block nqb - 1 - r / gh of head-batch hb = (i / (group nqb)) group + r % gh, head hb % H,
// batch hb / H. Consecutive heads share a kv head under GQA. Blocks take tiles in this order as
// they free up (ah_next), so the long rows spread over the blocks and the blocks in flight work
// on a group's heads.
struct AhTile {
    int q0, h, b, kb_first, kb_end;
};

__device__ __forceinline__ AhTile ah_tile(int i, int nqb, int bm, int group, int T_, int H, int B, int window,
                                          int chunk, int causal) {
    AhTile w;
    const int per = group * nqb, g = i / per, r = i % per;
    const int gh = min(group, H * B - g * group);
    const int hb = g * group + r % gh;
    w.q0 = (nqb - 1 - r / gh) * bm;
    w.h = hb % H;
    w.b = hb / H;
    const int kmax = causal ? min(T_, w.q0 + bm) : T_;
    w.kb_first = attn_first_key(w.q0, window, chunk) / AH_BN;
    w.kb_end = (kmax + AH_BN - 1) / AH_BN;
    return w;
}

// The block's j-th tile: its own index for the first, then the next one no block has taken
// (sched[0] counts those past the first wave). When every block has run out, the last one resets
// both counters for the next launch (sched[1] counts the blocks done), so no memset precedes a
// launch and a captured graph replays it as is.
__device__ __forceinline__ int ah_next(int j, int* sched) {
    return j == 0 ? blockIdx.x : gridDim.x + atomicAdd(&sched[0], 1);
}

__device__ __forceinline__ void ah_done(int* sched) {
    if (atomicAdd(&sched[1], 1) == (int)gridDim.x - 1) {
        atomicExch(&sched[0], 0);
        atomicExch(&sched[1], 0);
    }
}

// Named barriers 1 and 2 (0 is __syncthreads') of the ping-pong: consumer warpgroup w may issue
// its S product once the other has arrived on barrier 1 + w (256 threads: its own 128 waiting,
// the other's 128 arriving).
__device__ __forceinline__ void ah_turn_wait(int w) {
    asm volatile("bar.sync %0, 256;" ::"r"(1 + w) : "memory");
}
__device__ __forceinline__ void ah_turn_pass(int w) {
    asm volatile("bar.arrive %0, 256;" ::"r"(1 + (w ^ 1)) : "memory");
}

// One consumer warpgroup's work on a tile: O's rows qw0.. from Q (in qw) and the ring's key tiles,
// whose running count `n` (over the block's tiles: stage n % AH_STAGES(D), phase (n / AH_STAGES(D)) & 1)
// it advances; releases Q (q_empty) once its last S product is done. OVERLAP 0 (plain): per key
// tile S, wait, softmax, P V, wait. OVERLAP 1 (FlashAttention-3's intra-warpgroup pipelining):
// tile it's S product is issued before tile it-1's P V, and the softmax of tile it runs while
// P V runs; O is rescaled once that product is done, and P is packed after it (P V reads the
// previous P from the registers until then). PP (two consumer warpgroups cw 0 and 1): FlashAttention-3's
// ping-pong, the warpgroups take turns (ah_turn_*) at their tensor-core work on a key tile, P V
// of the tile before and S of this one issued together, so one's softmax runs while the other's
// products do, instead of both waiting on the same K tile and then contending for the tensor
// cores and the MUFU unit at once.
template <int D, int OVERLAP, int POLY, int PP, int QPANEL>
__device__ __forceinline__ void ah_consume(float* acc, float* m, float* l, int& n, int ntiles, int kb_end,
                                           const AhRows& a, const unsigned char* qw, const unsigned char* sk,
                                           const unsigned char* sv, unsigned long long* k_full,
                                           unsigned long long* v_full, unsigned long long* k_empty,
                                           unsigned long long* v_empty, unsigned long long* q_empty, int t,
                                           int cw) {
    constexpr int TILE = AH_BN * D * 2, R = D / 2;
    float sc[64], corr[2];
    unsigned pa[32];
#define AH_STAGE(n) ((n) % AH_STAGES(D))
#define AH_PHASE(n) (((n) / AH_STAGES(D)) & 1)
    if (PP) {
        // A turn: the warpgroup's whole tensor-core work on a key tile (P V of the tile before,
        // S of this one, issued together), then the softmax while the other warpgroup's turn
        // runs. Tile 0's turn is S alone, the last one P V alone: ntiles + 1 turns a tile.
#pragma unroll 1
        for (int it = 0; it <= ntiles; it++) {
            const int s = AH_STAGE(n), sp = AH_STAGE(n - 1);
            if (it < ntiles) hg_bar_wait(&k_full[s], AH_PHASE(n));
            if (it > 0) hg_bar_wait(&v_full[sp], AH_PHASE(n - 1));
            ah_turn_wait(cw);
            if (it < ntiles) ah_qk<D, QPANEL>(sc, qw, sk + s * TILE);
            if (it > 0) {
                hg_pin<R>(acc);
                ah_pv<D>(acc, pa, sv + sp * TILE);
            }
            ah_turn_pass(cw);
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            hg_pin<64>(sc);
            hg_pin<R>(acc);
            if (t == 0) {
                if (it > 0) hg_bar_arrive(&v_empty[sp]);
                if (it < ntiles) hg_bar_arrive(&k_empty[s]);
                if (it == ntiles - 1) hg_bar_arrive(q_empty);
            }
            if (it < ntiles) {
                ah_softmax<POLY>(sc, m, l, corr, (kb_end - 1 - it) * AH_BN, a);
                ah_rescale<R>(acc, corr);
                ah_pack(sc, pa);
                n++;
            }
        }
    } else if (OVERLAP) {
        // Key tile 0 alone: S, softmax, P.
        hg_bar_wait(&k_full[AH_STAGE(n)], AH_PHASE(n));
        ah_qk<D, QPANEL>(sc, qw, sk + AH_STAGE(n) * TILE);
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        hg_pin<64>(sc);
        if (t == 0) hg_bar_arrive(&k_empty[AH_STAGE(n)]);
        ah_softmax<POLY>(sc, m, l, corr, (kb_end - 1) * AH_BN, a);
        ah_pack(sc, pa);
#pragma unroll 1
        for (int it = 1; it < ntiles; it++) {
            const int s = AH_STAGE(n + 1), sp = AH_STAGE(n);
            hg_bar_wait(&k_full[s], AH_PHASE(n + 1));
            ah_qk<D, QPANEL>(sc, qw, sk + s * TILE);
            hg_bar_wait(&v_full[sp], AH_PHASE(n));
            hg_pin<R>(acc);
            ah_pv<D>(acc, pa, sv + sp * TILE);
            // S is the older group: done when at most the P V group is in flight.
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
            hg_pin<64>(sc);
            if (t == 0) hg_bar_arrive(&k_empty[s]);
            ah_softmax<POLY>(sc, m, l, corr, (kb_end - 1 - it) * AH_BN, a);
            // The softmax's results pinned here: arithmetic may move past an asm that only
            // clobbers memory, and the compiler would sink the exponentials below the wait.
            hg_pin<64>(sc);
            hg_pin<2>(l);
            hg_pin<2>(corr);
            // And a block boundary that depends on every exponential (their row sums, never
            // negative): ptxas schedules the wait as early as its block allows, which without it
            // is before the exponentials. Not at D128, where holding S, P and O at once then
            // spills (and plain is the default schedule).
            if constexpr (D == 64) {
                if (l[0] + l[1] < 0.f) asm volatile("trap;");
            }
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            hg_pin<R>(acc);
            ah_rescale<R>(acc, corr);
            ah_pack(sc, pa);
            if (t == 0) hg_bar_arrive(&v_empty[sp]);
            n++;
        }
        // Every S product is done: Q may be refilled while the last P V and the stores run.
        if (t == 0) hg_bar_arrive(q_empty);
        hg_bar_wait(&v_full[AH_STAGE(n)], AH_PHASE(n));
        hg_pin<R>(acc);
        ah_pv<D>(acc, pa, sv + AH_STAGE(n) * TILE);
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        hg_pin<R>(acc);
        if (t == 0) hg_bar_arrive(&v_empty[AH_STAGE(n)]);
        n++;
    } else {
#pragma unroll 1
        for (int it = 0; it < ntiles; it++, n++) {
            const int s = AH_STAGE(n);
            hg_bar_wait(&k_full[s], AH_PHASE(n));
            ah_qk<D, QPANEL>(sc, qw, sk + s * TILE);
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            hg_pin<64>(sc);
            if (t == 0) {
                hg_bar_arrive(&k_empty[s]);
                if (it == ntiles - 1) hg_bar_arrive(q_empty);
            }
            ah_softmax<POLY>(sc, m, l, corr, (kb_end - 1 - it) * AH_BN, a);
            ah_rescale<R>(acc, corr);
            ah_pack(sc, pa);
            hg_bar_wait(&v_full[s], AH_PHASE(n));
            hg_pin<R>(acc);
            ah_pv<D>(acc, pa, sv + s * TILE);
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            hg_pin<R>(acc);
            if (t == 0) hg_bar_arrive(&v_empty[s]);
        }
    }
#undef AH_STAGE
#undef AH_PHASE
}

// The kernel: blocks take the work tiles as they free up (a grid of one block a tile, or
// persistent: one a streaming multiprocessor). The producer runs ahead across tiles: it takes
// the next tile as soon as a Q buffer is free (with two, once the tile before the current one is
// done with its last S product; with one, the current one), publishes its index in shared
// memory before Q's copy (the mbarrier's arrival releases it, the consumers' wait acquires it),
// and brings its K/V tiles into the same ring, so a tile's loads overlap the previous tile's
// products and stores. An index past the tiles, published with
// a plain arrival, ends the consumers.
template <int D, int OVERLAP, int POLY, int PP, int NC>
__device__ __forceinline__ void attn_hopper_fwd(const HgTmaMap& mq, const HgTmaMap& mk, const HgTmaMap& mv,
                                                bf16* o, float* lse, int T_, int H, int KV, int B, int ldo,
                                                float scale, float softcap, int window, int chunk, int causal,
                                                const float* alibi, int* sched, int group) {
    constexpr int BM = 64 * NC;          // queries a tile
    constexpr int TILE = AH_BN * D * 2;  // bytes of a K or V tile
    constexpr int PANEL = AH_BN * 128;   // bytes of one 64-column panel of a K or V tile
    constexpr int QTILE = BM * D * 2, QPANEL = BM * 128;  // and of Q's
    constexpr int R = D / 2;             // O accumulators a thread
    extern __shared__ unsigned char ah_raw[];
    constexpr int ST = AH_STAGES(D), QB = AH_QBUFS(D);
    __shared__ int tile_slot[QB];  // the index of the tile whose Q each Q buffer holds
    __shared__ __align__(8) unsigned long long q_full[QB], q_empty[QB], k_full[ST], v_full[ST], k_empty[ST],
        v_empty[ST];
    // The swizzled tiles need 1024-byte alignment (the host asks for 1 KiB more than the tiles).
    unsigned char* const sq = ah_raw + ((1024 - (hg_smem(ah_raw) & 1023)) & 1023);
    unsigned char* const sk = sq + QB * QTILE;
    unsigned char* const sv = sk + ST * TILE;
    // Warp-uniform role (see hopper.cu: a divergent-looking branch serialises the wgmma).
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), t = threadIdx.x % 128;
    const int nqb = (T_ + BM - 1) / BM, ntotal = nqb * H * B;
    if (threadIdx.x == 0) {
        for (int b = 0; b < QB; b++) {
            hg_bar_init(&q_full[b], 1);
            hg_bar_init(&q_empty[b], NC);
        }
        for (int s = 0; s < ST; s++) {
            hg_bar_init(&k_full[s], 1);
            hg_bar_init(&v_full[s], 1);
            hg_bar_init(&k_empty[s], NC);
            hg_bar_init(&v_empty[s], NC);
        }
        hg_bar_init_fence();
    }
    __syncthreads();
    if (wg == 0) {
        // The producer needs few registers; the consumers take them (at most 64K a block:
        // 128 x 40 + 256 x 232 with two consumer warpgroups, 128 x 40 + 384 x 152 with three).
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (t == 0) {
            int n = 0;  // key tiles loaded so far
            for (int j = 0;; j++) {
                const int qb = j % QB;
                hg_bar_wait(&q_empty[qb], ((j / QB) & 1) ^ 1);
                const int i = ah_next(j, sched);
                *(volatile int*)&tile_slot[qb] = i;
                if (i >= ntotal) {
                    hg_bar_arrive(&q_full[qb]);
                    ah_done(sched);
                    break;
                }
                const AhTile w = ah_tile(i, nqb, BM, group, T_, H, B, window, chunk, causal);
                const int kvh = w.h / (H / KV);
                hg_bar_expect_tx(&q_full[qb], QTILE);
                for (int p = 0; p < D / 64; p++)
                    hg_tma_load(sq + qb * QTILE + p * QPANEL, &mq, &q_full[qb], w.h * D + p * 64, w.b * T_ + w.q0);
                for (int kb = w.kb_end - 1; kb >= w.kb_first; kb--, n++) {
                    const int s = n % ST;
                    const unsigned parity = ((n / ST) & 1) ^ 1;
                    const int row = w.b * T_ + kb * AH_BN;
                    hg_bar_wait(&k_empty[s], parity);
                    hg_bar_expect_tx(&k_full[s], TILE);
                    for (int p = 0; p < D / 64; p++)
                        hg_tma_load(sk + s * TILE + p * PANEL, &mk, &k_full[s], kvh * D + p * 64, row);
                    hg_bar_wait(&v_empty[s], parity);
                    hg_bar_expect_tx(&v_full[s], TILE);
                    for (int p = 0; p < D / 64; p++)
                        hg_tma_load(sv + s * TILE + p * PANEL, &mv, &v_full[s], kvh * D + p * 64, row);
                }
            }
        }
        return;
    }
    if constexpr (NC == 3) {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 152;\n" ::: "memory");
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    }
    const int cw = wg - 1, lane = t % 32;
    int n = 0;  // key tiles consumed so far
    // The ping-pong's first turn is warpgroup 0's; its last pass (warpgroup 1's) is taken after
    // the loop, so that every arrival on a named barrier is matched.
    if (PP && cw == 1) ah_turn_pass(cw);
    for (int j = 0;; j++) {
        const int qb = j % QB;
        hg_bar_wait(&q_full[qb], (j / QB) & 1);
        const int i = *(volatile int*)&tile_slot[qb];
        if (i >= ntotal) break;
        const unsigned char* const qw = sq + qb * QTILE + 64 * 128 * cw;
        const AhTile w = ah_tile(i, nqb, BM, group, T_, H, B, window, chunk, causal);
        AhRows a;
        a.r0 = w.q0 + 64 * cw + 16 * (t / 32) + lane / 4;  // this thread's rows: r0 and r0 + 8
        a.c0 = 2 * (lane % 4);                             // and columns 8j + c0 + {0, 1}
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = a.r0 + 8 * r;
            a.lo[r] = attn_first_key(row, window, chunk);
            int hi = causal ? min(row, T_ - 1) : T_ - 1;
            if (chunk > 0) hi = min(hi, (row / chunk + 1) * chunk - 1);
            a.hi[r] = hi;
        }
        a.alibi = alibi;
        a.slope = alibi ? alibi[w.h] : 0.f;
        a.qk_scale = softcap > 0.f ? scale : scale * LOG2E;
        a.softcap = softcap;
        float acc[R];
#pragma unroll
        for (int k = 0; k < R; k++) acc[k] = 0.f;
        float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
        ah_consume<D, OVERLAP, POLY, PP, QPANEL>(acc, m, l, n, w.kb_end - w.kb_first, w.kb_end, a, qw, sk, sv,
                                                 k_full, v_full, k_empty, v_empty, &q_empty[qb], t, cw);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        }
        const float inv[2] = {l[0] > 0.f ? 1.f / l[0] : 0.f, l[1] > 0.f ? 1.f / l[1] : 0.f};
        bf16* const ob = o + (size_t)w.b * T_ * ldo + (size_t)w.h * D;
#pragma unroll
        for (int jj = 0; jj < D / 8; jj++) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int row = a.r0 + 8 * r;
                if (row < T_)
                    *(u32*)(ob + (size_t)row * ldo + 8 * jj + a.c0) =
                        pack_bf16x2(acc[4 * jj + 2 * r] * inv[r], acc[4 * jj + 2 * r + 1] * inv[r]);
            }
        }
        if (lane % 4 == 0) {
            const float LN2 = 0.6931471805599453f;
            float* const lrow = lse + ((size_t)w.b * H + w.h) * T_;
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int row = a.r0 + 8 * r;
                if (row < T_) lrow[row] = l[r] > 0.f ? (m[r] + log2f(l[r])) * LN2 : 0.f;
            }
        }
    }
    if (PP && cw == 0) ah_turn_wait(cw);
}

// The entry points, one a head dim and schedule (`_plain`: OVERLAP 0; `_poly`: overlapped, a
// quarter of the exponentials on the FMA pipe; `_pp`: plain, the two consumer warpgroups in
// ping-pong), and `_m192`: three consumer warpgroups (192 queries a tile; plain at D64 only,
// where 152 registers a consumer thread hold it); the maps stay __grid_constant__ parameters so
// that their addresses are the ones the bulk copies read.
#define AH_ENTRY(NAME, D, OVERLAP, POLY, PP, NC)                                                                \
    extern "C" __global__ void __launch_bounds__(128 * ((NC) + 1), 1)                                           \
        NAME(const __grid_constant__ HgTmaMap mq, const __grid_constant__ HgTmaMap mk,                          \
             const __grid_constant__ HgTmaMap mv, bf16* o, float* lse, int T_, int H, int KV, int B, int ldo,   \
             float scale, float softcap, int window, int chunk, int causal, const float* alibi, int* sched,     \
             int group) {                                                                                       \
        attn_hopper_fwd<D, OVERLAP, POLY, PP, NC>(mq, mk, mv, o, lse, T_, H, KV, B, ldo, scale, softcap,      \
                                                  window, chunk, causal, alibi, sched, group);                  \
    }
AH_ENTRY(attn_hopper_fwd_d64, 64, 1, 0, 0, 2)
AH_ENTRY(attn_hopper_fwd_d128, 128, 1, 0, 0, 2)
AH_ENTRY(attn_hopper_fwd_plain_d64, 64, 0, 0, 0, 2)
AH_ENTRY(attn_hopper_fwd_plain_d128, 128, 0, 0, 0, 2)
AH_ENTRY(attn_hopper_fwd_poly_d64, 64, 1, 1, 0, 2)
AH_ENTRY(attn_hopper_fwd_poly_d128, 128, 1, 1, 0, 2)
AH_ENTRY(attn_hopper_fwd_pp_d64, 64, 0, 0, 1, 2)
AH_ENTRY(attn_hopper_fwd_pp_d128, 128, 0, 0, 1, 2)
AH_ENTRY(attn_hopper_fwd_plain_m192_d64, 64, 0, 0, 0, 3)
