// ---- attention backward on Hopper's tensor cores: first step (docs/attention_hopper_bwd.md) ----
//
// attn_hopper_bwd_d64: dK, dV (bf16) and dQ (f32 atomics into dq_acc [B*T, H*D], as
// attention_mma.cu's backward) for bf16 at head dim 64, causal or not, without window, chunk,
// softcap or ALiBi (the host refuses those). Needs delta (attn_delta) and lse from any forward.
// Same module as attention_hopper.cu (after it: its wgmma forms and descriptors are used here).
//
// Work: a block a key tile of 128 keys of one (kv head, batch); a producer warpgroup brings K and
// V once, then the Q and dO tiles (64 queries) of every query head of the kv group and every
// query tile that sees the keys, through a ring of AB_STAGES; two consumer warpgroups of 64 keys
// each compute, per query tile:
//   S^T = K Q^T, dP^T = V dO^T    SS wgmma m64n64k16, both operands K-major;
//   P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - delta) scale   on the accumulators' registers;
//   dV += P^T dO, dK += dS^T Q    RS wgmma (P^T, dS^T as A fragments), dO and Q N-major;
//   dQ = dS K                     SS wgmma with A transposed: dS^T stored by the threads into
//                                 shared memory in the 128-byte swizzle (rows = keys), K N-major;
//                                 added to dq_acc by f32 atomics (the warpgroup's 64 keys; the
//                                 other warpgroup adds its own).
// Accumulator layout (m64nN): warp w of the warpgroup owns rows 16w..16w+15, lane l rows l/4 and
// l/4 + 8, d[4j + 2h + e] at row l/4 + 8h, column 8j + 2(l%4) + e.

#define AB_BN 128  // keys a block
#define AB_BM 64   // queries a step
#define AB_STAGES 2

// D (m64n64, f32) = A B^T (+ D when `acc`), A and B K-major tiles in shared memory.
__device__ __forceinline__ void ab_wgmma_ss_n64(float* d, unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(acc)
        : "memory");
}

// D (m64n64, f32) = A B (+ D when `acc`), A transposed (M-major: rows are K) and B N-major, both
// in shared memory.
__device__ __forceinline__ void ab_wgmma_ss_n64_tt(float* d, unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(acc)
        : "memory");
}

// The 32 accumulators of an m64n64 tile as 16 A-fragment registers (bf16 pairs), k step kk in
// pa[4kk..4kk+3] (as ah_pack for 64 accumulators).
__device__ __forceinline__ void ab_pack(const float* x, unsigned* pa) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
        pa[2 * j] = pack_bf16x2(x[4 * j], x[4 * j + 1]);
        pa[2 * j + 1] = pack_bf16x2(x[4 * j + 2], x[4 * j + 3]);
    }
}

// Warpgroup-local barrier (named barrier 1 + cw, the warpgroup's 128 threads).
__device__ __forceinline__ void ab_wg_sync(int cw) {
    asm volatile("bar.sync %0, 128;" ::"r"(1 + cw) : "memory");
}

extern "C" __global__ void __launch_bounds__(384, 1)
    attn_hopper_bwd_d64(const __grid_constant__ HgTmaMap mq, const __grid_constant__ HgTmaMap mk,
                        const __grid_constant__ HgTmaMap mv, const __grid_constant__ HgTmaMap mdo, bf16* dk,
                        bf16* dv, float* dq_acc, const float* lse, const float* delta, int T_, int H, int KV,
                        int ldk, int ldv, float scale, int causal) {
    constexpr int D = 64;
    constexpr int KTILE = AB_BN * D * 2;  // bytes of the K or V tile
    constexpr int QTILE = AB_BM * D * 2;  // bytes of a Q or dO tile
    constexpr int STILE = 64 * AB_BM * 2; // bytes of a warpgroup's dS^T
    extern __shared__ unsigned char ab_raw[];
    __shared__ __align__(8) unsigned long long kv_full, qd_full[AB_STAGES], qd_empty[AB_STAGES];
    __shared__ float ab_stats[2][2][AB_BM];  // per consumer warpgroup: lse (log2 units), delta
    unsigned char* const sk = ab_raw + ((1024 - (hg_smem(ab_raw) & 1023)) & 1023);
    unsigned char* const sv = sk + KTILE;
    unsigned char* const sq = sv + KTILE;               // stage s: Q at sq + 2 s QTILE, dO after it
    unsigned char* const sds = sq + 2 * AB_STAGES * QTILE;  // warpgroup cw's dS^T at sds + cw STILE
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0), t = threadIdx.x % 128;
    const int k0 = blockIdx.x * AB_BN, kvh = blockIdx.y, b = blockIdx.z, group = H / KV;
    const int nqb = (T_ + AB_BM - 1) / AB_BM, qb0 = causal ? k0 / AB_BM : 0, nq = nqb - qb0;
    const int total = group * nq;
    if (threadIdx.x == 0) {
        hg_bar_init(&kv_full, 1);
        for (int s = 0; s < AB_STAGES; s++) {
            hg_bar_init(&qd_full[s], 1);
            hg_bar_init(&qd_empty[s], 2);
        }
        hg_bar_init_fence();
    }
    __syncthreads();
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (t == 0) {
            hg_bar_expect_tx(&kv_full, 2 * KTILE);
            hg_tma_load(sk, &mk, &kv_full, kvh * D, b * T_ + k0);
            hg_tma_load(sv, &mv, &kv_full, kvh * D, b * T_ + k0);
            for (int n = 0; n < total; n++) {
                const int s = n % AB_STAGES, h = kvh * group + n / nq, q0 = (qb0 + n % nq) * AB_BM;
                hg_bar_wait(&qd_empty[s], ((n / AB_STAGES) & 1) ^ 1);
                hg_bar_expect_tx(&qd_full[s], 2 * QTILE);
                hg_tma_load(sq + 2 * s * QTILE, &mq, &qd_full[s], h * D, b * T_ + q0);
                hg_tma_load(sq + 2 * s * QTILE + QTILE, &mdo, &qd_full[s], h * D, b * T_ + q0);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int cw = wg - 1, lane = t % 32;
    const unsigned char* const kw = sk + cw * 64 * 128;  // this warpgroup's 64 keys of K and V
    const unsigned char* const vw = sv + cw * 64 * 128;
    unsigned char* const dsw = sds + cw * STILE;
    // This thread's accumulator rows (keys) kr and kr + 8, columns 8j + c0 + {0, 1}.
    const int krl = 16 * (t / 32) + lane / 4, kr = k0 + 64 * cw + krl, c0 = 2 * (lane % 4);
    float dva[32], dka[32];
#pragma unroll
    for (int i = 0; i < 32; i++) dva[i] = dka[i] = 0.f;
    hg_bar_wait(&kv_full, 0);
    for (int n = 0; n < total; n++) {
        const int s = n % AB_STAGES, h = kvh * group + n / nq, q0 = (qb0 + n % nq) * AB_BM;
        const unsigned char* const qt = sq + 2 * s * QTILE;
        const unsigned char* const dot = qt + QTILE;
        // The query tile's lse (log2 units; +inf past T, so that P is 0 there) and delta.
        {
            const int q = q0 + (t % 64);
            const size_t row = ((size_t)b * H + h) * T_ + q;
            if (t < 64) {
                ab_stats[cw][0][t] = q < T_ ? lse[row] * LOG2E : -NEG_INF;
            } else {
                ab_stats[cw][1][t - 64] = q < T_ ? delta[row] : 0.f;
            }
        }
        hg_bar_wait(&qd_full[s], (n / AB_STAGES) & 1);
        ab_wg_sync(cw);
        float st[32], dpt[32];
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) ab_wgmma_ss_n64(st, hg_desc(kw) + 2 * kk, hg_desc(qt) + 2 * kk, kk > 0);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) ab_wgmma_ss_n64(dpt, hg_desc(vw) + 2 * kk, hg_desc(dot) + 2 * kk, kk > 0);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        hg_pin<32>(st);
        hg_pin<32>(dpt);
        // P^T and dS^T in place; dS^T also into shared memory (the 128-byte swizzle: 16-byte
        // chunk c of row r at chunk c ^ (r % 8)) for dQ's product.
        const float* const ls = ab_stats[cw][0];
        const float* const dl = ab_stats[cw][1];
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int ql = 8 * (i >> 2) + c0 + (i & 1), key = kr + 8 * ((i >> 1) & 1);
            float p = exp2f(st[i] * scale * LOG2E - ls[ql]);
            if (key >= T_ || (causal && key > q0 + ql)) p = 0.f;
            st[i] = p;
            dpt[i] = p * (dpt[i] - dl[ql]) * scale;
        }
        unsigned pa[16], pds[16];
        ab_pack(st, pa);
        ab_pack(dpt, pds);
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int r = krl + 8 * hh, col = 8 * j + c0;  // 2 bf16 at (r, col), 4 bytes
                const int chunk = (col * 2) >> 4, within = (col * 2) & 15;
                *(unsigned*)(dsw + r * 128 + ((chunk ^ (r & 7)) << 4) + within) = pds[2 * j + hh];
            }
        }
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        ab_wg_sync(cw);
        float dqa[32];
#pragma unroll
        for (int i = 0; i < 32; i++) dqa[i] = 0.f;
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < AB_BM / 16; kk++) {
            ah_wgmma_rs_n64(dva, pa + 4 * kk, ah_desc_n_major(dot + kk * 2048, 64 * 128));
            ah_wgmma_rs_n64(dka, pds + 4 * kk, ah_desc_n_major(qt + kk * 2048, 64 * 128));
        }
#pragma unroll
        for (int kk = 0; kk < 64 / 16; kk++)
            ab_wgmma_ss_n64_tt(dqa, ah_desc_n_major(dsw + kk * 2048, 64 * 128),
                               ah_desc_n_major(kw + kk * 2048, 64 * 128), kk > 0);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        hg_pin<32>(dva);
        hg_pin<32>(dka);
        hg_pin<32>(dqa);
        if (t == 0) hg_bar_arrive(&qd_empty[s]);
        // dQ's rows are the tile's queries 16 (t / 32) + lane / 4 (+ 8), its columns the head dims.
        float* const dqb = dq_acc + ((size_t)b * T_) * H * D + (size_t)h * D;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int q = q0 + krl + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + c0 + (i & 1);
            if (q < T_) atomicAdd(dqb + (size_t)q * H * D + col, dqa[i]);
        }
    }
    bf16* const dkb = dk + (size_t)b * T_ * ldk + (size_t)kvh * D;
    bf16* const dvb = dv + (size_t)b * T_ * ldv + (size_t)kvh * D;
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int key = kr + 8 * hh, col = 8 * j + c0;
            if (key < T_) {
                *(u32*)(dkb + (size_t)key * ldk + col) = pack_bf16x2(dka[4 * j + 2 * hh], dka[4 * j + 2 * hh + 1]);
                *(u32*)(dvb + (size_t)key * ldv + col) = pack_bf16x2(dva[4 * j + 2 * hh], dva[4 * j + 2 * hh + 1]);
            }
        }
    }
}
