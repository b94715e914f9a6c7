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

// The kernels; hopper_mma.cuh (primitives) and hopper_epilogue.cuh (epilogues) come before
// this text in the compiled source.

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
        hg_bar_init_fence();
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
        hg_bar_init_fence();
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
                        hg_tma_load(a + (128 + 64 * rank) * HG_BK * 2, &map_b, &full[s], kt * HG_BK, n0 + 64 * rank,
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

// The ping-pong's entry points, one an epilogue: alone (CL 1) and in clusters of two blocks
// (CL 2, `__cluster_dims__`: B's tile multicast; the grid even).
#define HG_PP_ENTRY(NAME, EPI, CL, CLUSTER)                                                                   \
    extern "C" __global__ void CLUSTER __launch_bounds__(HG_THREADS, 1)                                       \
        NAME(const __grid_constant__ HgTmaMap map_a, const __grid_constant__ HgTmaMap map_b, unsigned short* c, \
             const unsigned short* bias, unsigned short* aux, int ldaux, int M, int N, int K, int ldc) {       \
        hopper_gemm_pp<EPI, CL>(map_a, map_b, c, bias, aux, ldaux, M, N, K, ldc);                             \
    }
HG_PP_ENTRY(hopper_gemm_pp_bf16, HG_EPI_NONE, 1, )
HG_PP_ENTRY(hopper_gemm_pp_bias_bf16, HG_EPI_BIAS, 1, )
HG_PP_ENTRY(hopper_gemm_pp_gelu_aux_bf16, HG_EPI_GELU, 1, )
HG_PP_ENTRY(hopper_gemm_pp_dgelu_bf16, HG_EPI_DGELU, 1, )
HG_PP_ENTRY(hopper_gemm_pc_bf16, HG_EPI_NONE, 2, __cluster_dims__(2, 1, 1))
HG_PP_ENTRY(hopper_gemm_pc_bias_bf16, HG_EPI_BIAS, 2, __cluster_dims__(2, 1, 1))
HG_PP_ENTRY(hopper_gemm_pc_gelu_aux_bf16, HG_EPI_GELU, 2, __cluster_dims__(2, 1, 1))
HG_PP_ENTRY(hopper_gemm_pc_dgelu_bf16, HG_EPI_DGELU, 2, __cluster_dims__(2, 1, 1))

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
