// ---- attention, tensor-core path (bf16 in, f32 accumulate): flash-style forward and backward
// with mma.sync m16n8k16 (sm_80+; on sm_90 these are HMMA, not wgmma). Same layout, masking, ALiBi
// (`alibi`: f32 [H] slopes or null) and lse conventions as attention_simple.cu. Head dims are template constants (instantiated per spec).

__device__ __forceinline__ void mma16816(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
// Four 8x8 b16 matrices, transposed on the way: lane l supplies the row address of matrix l/8.
__device__ __forceinline__ void ldsm_x4_t(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ u32 lds32(const bf16* p) { return *(const u32*)p; }

// Asynchronous global -> shared copies (cp.async, sm_80+): all of a tile's loads are in flight at
// once and overlap the math on the previous tile. src-size 0 zero-fills (rows past T).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Starts copying `rows` rows of D bf16 (row stride ld in global) into shared memory (row stride
// D+8, which keeps 32-bit fragment loads and ldmatrix conflict-free); rows at or past `limit`
// are zero-filled. 16 bytes per thread per step.
template <int D>
__device__ __forceinline__ void tile_load(bf16* s, const bf16* g, int ld, int row0, int rows, int limit) {
    constexpr int CH = D / 8;
    for (int idx = threadIdx.x; idx < rows * CH; idx += blockDim.x) {
        int r = idx / CH, c = (idx % CH) * 8;
        bool ok = row0 + r < limit;
        cp_async16(s + r * (D + 8) + c, g + (size_t)(ok ? row0 + r : 0) * ld + c, ok);
    }
}


// attn_fwd_bf16_d{D}: O = softmax(mask(cap(scale (Q K^T + alibi)))) V, per (64-query block, head, batch).
// Launch: grid (ceil(T/64), H, B), block 128 (4 warps x 16 query rows), dynamic shared memory
// 4 * BN * (D+8) * 2 bytes (K and V tiles, double-buffered with cp.async). Q fragments stay in registers; S and P never leave
// registers (the C fragment of S is re-packed as the A fragment of P V). Traffic: Q, O once;
// K, V once per query block that sees them (T/64 x from L2 for long T).
template <int D, int BN>
__device__ void attn_fwd_mma(bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, int T_, int H,
                             int KV, int ldq, int ldk, int ldv, int ldo, float scale, float softcap, int window,
                             int chunk, int causal, const float* alibi) {
    constexpr int BM = 64, STR = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // Buffer b holds K at smem + 2*b*BN*STR and V right after it (pointer arithmetic, not an
    // indexed array, so nothing lands in local memory).
    bf16* const sbase = (bf16*)smem_raw;
#define KBUF(b) (sbase + (b) * 2 * BN * STR)
#define VBUF(b) (sbase + (b) * 2 * BN * STR + BN * STR)
    const int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (H / KV);
    const float slope = alibi ? alibi[h] : 0.f;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int q0 = qb * BM;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    const bf16* qbase = q + (size_t)b * T_ * ldq + (size_t)h * D;
    const bf16* kbase = k + (size_t)b * T_ * ldk + (size_t)kvh * D;
    const bf16* vbase = v + (size_t)b * T_ * ldv + (size_t)kvh * D;

    u32 qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int c = kk * 16 + t4 * 2;
        qf[kk][0] = r0 < T_ ? lds32(qbase + (size_t)r0 * ldq + c) : 0u;
        qf[kk][1] = r1 < T_ ? lds32(qbase + (size_t)r1 * ldq + c) : 0u;
        qf[kk][2] = r0 < T_ ? lds32(qbase + (size_t)r0 * ldq + c + 8) : 0u;
        qf[kk][3] = r1 < T_ ? lds32(qbase + (size_t)r1 * ldq + c + 8) : 0u;
    }
    float oacc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    const float qk_scale = softcap > 0.f ? scale : scale * LOG2E;

    int kmax = causal ? min(T_, q0 + BM) : T_;
    int kmin = attn_first_key(q0, window, chunk);
    const int kb_first = kmin / BN, kb_end = (kmax + BN - 1) / BN;
    tile_load<D>(KBUF(0), kbase, ldk, kb_first * BN, BN, T_);
    tile_load<D>(VBUF(0), vbase, ldv, kb_first * BN, BN, T_);
    cp_async_commit();
    for (int kb = kb_first; kb < kb_end; kb++) {
        const int k0 = kb * BN;
        const int buf = (kb - kb_first) & 1;
        const bf16* Ks = KBUF(buf);
        const bf16* Vs = VBUF(buf);
        if (kb + 1 < kb_end) {  // prefetch the next tile into the other buffer
            tile_load<D>(KBUF(buf ^ 1), kbase, ldk, k0 + BN, BN, T_);
            tile_load<D>(VBUF(buf ^ 1), vbase, ldv, k0 + BN, BN, T_);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                const bf16* kp = Ks + (j * 8 + g) * STR + kk * 16 + t4 * 2;
                mma16816(s[j], qf[kk], lds32(kp), lds32(kp + 8));
            }
        }
        // Masking is needed only where the tile crosses T, the diagonal or the window edge.
        bool edge = (k0 + BN > T_) || (causal && k0 + BN > q0) || (window > 0 && q0 + BM - 1 - k0 >= window) ||
                    attn_tile_spans_chunks(q0, BM, k0, BN, chunk);
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[j][e];
                if (alibi) x += alibi_bias(slope, k0 + j * 8 + t4 * 2 + (e & 1));
                x *= qk_scale;
                if (softcap > 0.f) x = softcap * tanhf(x / softcap) * LOG2E;
                if (edge) {
                    int row = e < 2 ? r0 : r1;
                    int col = k0 + j * 8 + t4 * 2 + (e & 1);
                    bool ok = attn_visible(row, col, T_, causal, window, chunk);
                    x = ok ? x : NEG_INF;
                }
                s[j][e] = x;
            }
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float base0 = mx0 == NEG_INF ? 0.f : mx0, base1 = mx1 == NEG_INF ? 0.f : mx1;
        const float c0 = exp2f(m0 - base0), c1 = exp2f(m1 - base1);
        m0 = mx0;
        m1 = mx1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            oacc[n][0] *= c0;
            oacc[n][1] *= c0;
            oacc[n][2] *= c1;
            oacc[n][3] *= c1;
        }
        u32 pf[BN / 16][4];
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            float p0 = exp2f(s[j][0] - base0), p1 = exp2f(s[j][1] - base0);
            float p2 = exp2f(s[j][2] - base1), p3 = exp2f(s[j][3] - base1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            pf[j / 2][(j & 1) * 2 + 0] = pack_bf16x2(p0, p1);
            pf[j / 2][(j & 1) * 2 + 1] = pack_bf16x2(p2, p3);
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
            for (int n = 0; n < D / 8; n += 2) {
                u32 bv[4];
                ldsm_x4_t(bv, Vs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * STR + (n + (lane >> 4)) * 8);
                mma16816(oacc[n], pf[kk], bv[0], bv[1]);
                mma16816(oacc[n + 1], pf[kk], bv[2], bv[3]);
            }
        }
        __syncthreads();  // this buffer is refilled by the prefetch two tiles on
    }
#undef KBUF
#undef VBUF
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    bf16* obase = o + (size_t)b * T_ * ldo + (size_t)h * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + t4 * 2;
        if (r0 < T_) *(u32*)(obase + (size_t)r0 * ldo + c) = pack_bf16x2(oacc[n][0] * inv0, oacc[n][1] * inv0);
        if (r1 < T_) *(u32*)(obase + (size_t)r1 * ldo + c) = pack_bf16x2(oacc[n][2] * inv1, oacc[n][3] * inv1);
    }
    if (t4 == 0) {
        const float LN2 = 0.6931471805599453f;
        float* lrow = lse + ((size_t)b * H + h) * T_;
        if (r0 < T_) lrow[r0] = l0 > 0.f ? (m0 + log2f(l0)) * LN2 : 0.f;
        if (r1 < T_) lrow[r1] = l1 > 0.f ? (m1 + log2f(l1)) * LN2 : 0.f;
    }
}

// attn_bwd_bf16_d{D}: per (128-key block, kv head, batch): loops over the heads of the kv group
// and the query blocks that see these keys, recomputes P^T = exp(S^T - lse) (S with the ALiBi bias), and accumulates
// dV = P^T dO and dK = dS^T Q in registers (16 keys per warp); dQ += dS K goes to an f32 buffer
// [B*T, H*D] through atomics (attn_dq_convert turns it into the gradient's dtype). Needs delta
// from attn_delta_bf16. Launch: grid (ceil(T/128), KV, B), block 256 (8 warps x 16 keys), dynamic
// shared memory (2 * 128 * (D+8) + 4 * 64 * (D+8) + 64 * 136) * 2 + 1024 bytes (Q, dO, lse, delta
// double-buffered with cp.async). Traffic: K, V, dK, dV once; Q, dO, lse, delta once per key block
// that sees them; dQ: one f32 atomic per element per 128-key block (128 keys rather than 64
// halve both the atomics and the Q/dO re-reads). D must be a multiple of 32.
template <int D>
__device__ void attn_bwd_mma(bf16* dk, bf16* dv, float* dq_acc, const bf16* q, const bf16* k, const bf16* v,
                             const bf16* dout, const float* lse, const float* delta, int T_, int H, int KV,
                             int ldq, int ldk, int ldv, int ldo, float scale, float softcap, int window,
                             int chunk, int causal, const float* alibi) {
    constexpr int BM = 64, BN = 128, STR = D + 8, SSTR = BN + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Ks = (bf16*)smem_raw;
    bf16* Vs = Ks + BN * STR;
    // Buffer b: Q at qd_base + 2*b*BM*STR, dO right after; lse/delta at f_base + 2*b*BM (+BM).
    bf16* const qd_base = Vs + BN * STR;
    bf16* dSs = Vs + BN * STR + 4 * BM * STR;
    float* const f_base = (float*)(dSs + BM * SSTR);
    const int kb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int group = H / KV;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int k0 = kb * BN;
    const int kr0 = k0 + warp * 16 + g, kr1 = kr0 + 8;
    tile_load<D>(Ks, k + (size_t)b * T_ * ldk + (size_t)kvh * D, ldk, k0, BN, T_);
    tile_load<D>(Vs, v + (size_t)b * T_ * ldv + (size_t)kvh * D, ldv, k0, BN, T_);
    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.f;
        dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.f;
    }
    const int nqb = (T_ + BM - 1) / BM;
    const int qb0 = causal ? k0 / BM : 0;
    const int qb1 = min(nqb, (attn_query_end(k0 + BN - 1, T_, window, chunk) + BM - 1) / BM);
    const int nq = max(qb1 - qb0, 0);
    const int total = group * nq;
    const float LN2 = 0.6931471805599453f;
    // Issues the copies of (head, query block) pair `it` into buffer `buf`.
    auto issue = [&](int it, int buf) {
        const int h = kvh * group + it / nq;
        const int q0 = (qb0 + it % nq) * BM;
        tile_load<D>(qd_base + buf * 2 * BM * STR, q + (size_t)b * T_ * ldq + (size_t)h * D, ldq, q0, BM, T_);
        tile_load<D>(qd_base + buf * 2 * BM * STR + BM * STR, dout + (size_t)b * T_ * ldo + (size_t)h * D, ldo, q0, BM, T_);
        if (threadIdx.x < BM) {
            int qi = q0 + threadIdx.x;
            bool ok = qi < T_;
            size_t row = ((size_t)b * H + h) * T_ + (ok ? qi : 0);
            cp_async4(f_base + buf * 2 * BM + threadIdx.x, lse + row, ok);
            cp_async4(f_base + buf * 2 * BM + BM + threadIdx.x, delta + row, ok);
        }
    };
    if (total > 0) issue(0, 0);
    cp_async_commit();
    for (int it = 0; it < total; it++) {
        const int buf = it & 1;
        const int h = kvh * group + it / nq;
        const int q0 = (qb0 + it % nq) * BM;
        const bf16* Qs = qd_base + buf * 2 * BM * STR;
        const bf16* dOs = Qs + BM * STR;
        const float* lse_s = f_base + buf * 2 * BM;
        const float* delta_s = lse_s + BM;
        const float slope = alibi ? alibi[h] : 0.f;
        if (it + 1 < total) {
            issue(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        {
            // S^T = K Q^T for this warp's 16 keys x 64 queries.
            float st[BM / 8][4];
#pragma unroll
            for (int j = 0; j < BM / 8; j++) st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                u32 a[4];
                const bf16* ka = Ks + (warp * 16 + g) * STR + kk * 16 + t4 * 2;
                a[0] = lds32(ka);
                a[1] = lds32(ka + 8 * STR);
                a[2] = lds32(ka + 8);
                a[3] = lds32(ka + 8 * STR + 8);
#pragma unroll
                for (int j = 0; j < BM / 8; j++) {
                    const bf16* qp = Qs + (j * 8 + g) * STR + kk * 16 + t4 * 2;
                    mma16816(st[j], a, lds32(qp), lds32(qp + 8));
                }
            }
            const bool edge = (q0 + BM > T_) || (k0 + BN > T_) || (causal && q0 < k0 + BN) ||
                              (window > 0 && q0 + BM - 1 - k0 >= window) ||
                              attn_tile_spans_chunks(q0, BM, k0, BN, chunk);
#pragma unroll
            for (int j = 0; j < BM / 8; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = e < 2 ? kr0 : kr1;
                    int qi = q0 + j * 8 + t4 * 2 + (e & 1);
                    float x = st[j][e];
                    if (alibi) x += alibi_bias(slope, key);
                    x *= scale;
                    if (softcap > 0.f) x = softcap * tanhf(x / softcap);
                    float p = exp2f((x - lse_s[qi - q0]) * LOG2E);
                    if (edge) {
                        bool ok = qi < T_ && attn_visible(qi, key, T_, causal, window, chunk);
                        p = ok ? p : 0.f;
                    }
                    st[j][e] = p;
                }
            }
            // dV += P^T dO
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) {
                u32 pa[4];
                pa[0] = pack_bf16x2(st[2 * kk][0], st[2 * kk][1]);
                pa[1] = pack_bf16x2(st[2 * kk][2], st[2 * kk][3]);
                pa[2] = pack_bf16x2(st[2 * kk + 1][0], st[2 * kk + 1][1]);
                pa[3] = pack_bf16x2(st[2 * kk + 1][2], st[2 * kk + 1][3]);
#pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    u32 bv[4];
                    ldsm_x4_t(bv, dOs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * STR + (n + (lane >> 4)) * 8);
                    mma16816(dva[n], pa, bv[0], bv[1]);
                    mma16816(dva[n + 1], pa, bv[2], bv[3]);
                }
            }
            // dP^T = V dO^T
            float dpt[BM / 8][4];
#pragma unroll
            for (int j = 0; j < BM / 8; j++) dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                u32 a[4];
                const bf16* va = Vs + (warp * 16 + g) * STR + kk * 16 + t4 * 2;
                a[0] = lds32(va);
                a[1] = lds32(va + 8 * STR);
                a[2] = lds32(va + 8);
                a[3] = lds32(va + 8 * STR + 8);
#pragma unroll
                for (int j = 0; j < BM / 8; j++) {
                    const bf16* dp = dOs + (j * 8 + g) * STR + kk * 16 + t4 * 2;
                    mma16816(dpt[j], a, lds32(dp), lds32(dp + 8));
                }
            }
            // dS^T = P^T (dP^T - delta) * dcap * scale, kept in st; also stored as dS [q][key].
#pragma unroll
            for (int j = 0; j < BM / 8; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int ql = j * 8 + t4 * 2 + (e & 1);
                    float p = st[j][e];
                    float ds = p * (dpt[j][e] - delta_s[ql]) * scale;
                    if (softcap > 0.f && p > 0.f) {
                        // cap * tanh = log(p) + lse: recover tanh from p instead of keeping it.
                        float tt = (__log2f(p) * LN2 + lse_s[ql]) / softcap;
                        ds *= 1.f - tt * tt;
                    }
                    st[j][e] = ds;
                    int kl = warp * 16 + g + (e < 2 ? 0 : 8);
                    dSs[ql * SSTR + kl] = f32_to_bf16(ds);
                }
            }
            // dK += dS^T Q
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) {
                u32 pa[4];
                pa[0] = pack_bf16x2(st[2 * kk][0], st[2 * kk][1]);
                pa[1] = pack_bf16x2(st[2 * kk][2], st[2 * kk][3]);
                pa[2] = pack_bf16x2(st[2 * kk + 1][0], st[2 * kk + 1][1]);
                pa[3] = pack_bf16x2(st[2 * kk + 1][2], st[2 * kk + 1][3]);
#pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    u32 bq[4];
                    ldsm_x4_t(bq, Qs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * STR + (n + (lane >> 4)) * 8);
                    mma16816(dka[n], pa, bq[0], bq[1]);
                    mma16816(dka[n + 1], pa, bq[2], bq[3]);
                }
            }
            __syncthreads();
            // dQ[q] += dS[q][:] K: warp w takes queries (w%4)*16.. (16 of them) and half the head
            // dims (w/4), against all 128 keys.
            const int qw = warp & 3, dhalf = warp >> 2;
            u32 sa[BN / 16][4];
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                const bf16* sp = dSs + (qw * 16 + g) * SSTR + kk * 16 + t4 * 2;
                sa[kk][0] = lds32(sp);
                sa[kk][1] = lds32(sp + 8 * SSTR);
                sa[kk][2] = lds32(sp + 8);
                sa[kk][3] = lds32(sp + 8 * SSTR + 8);
            }
            const int qa = q0 + qw * 16 + g, qc = qa + 8;
            float* dqbase = dq_acc + (size_t)b * T_ * H * D + (size_t)h * D;
#pragma unroll
            for (int n = dhalf * (D / 16); n < (dhalf + 1) * (D / 16); n += 2) {
                float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++) {
                    u32 bk[4];
                    ldsm_x4_t(bk, Ks + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * STR + (n + (lane >> 4)) * 8);
                    mma16816(acc[0], sa[kk], bk[0], bk[1]);
                    mma16816(acc[1], sa[kk], bk[2], bk[3]);
                }
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    int c = (n + u) * 8 + t4 * 2;
                    if (qa < T_) {
                        atomicAdd(dqbase + (size_t)qa * H * D + c, acc[u][0]);
                        atomicAdd(dqbase + (size_t)qa * H * D + c + 1, acc[u][1]);
                    }
                    if (qc < T_) {
                        atomicAdd(dqbase + (size_t)qc * H * D + c, acc[u][2]);
                        atomicAdd(dqbase + (size_t)qc * H * D + c + 1, acc[u][3]);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    bf16* dkbase = dk + (size_t)b * T_ * ldk + (size_t)kvh * D;
    bf16* dvbase = dv + (size_t)b * T_ * ldv + (size_t)kvh * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + t4 * 2;
        if (kr0 < T_) {
            *(u32*)(dkbase + (size_t)kr0 * ldk + c) = pack_bf16x2(dka[n][0], dka[n][1]);
            *(u32*)(dvbase + (size_t)kr0 * ldv + c) = pack_bf16x2(dva[n][0], dva[n][1]);
        }
        if (kr1 < T_) {
            *(u32*)(dkbase + (size_t)kr1 * ldk + c) = pack_bf16x2(dka[n][2], dka[n][3]);
            *(u32*)(dvbase + (size_t)kr1 * ldv + c) = pack_bf16x2(dva[n][2], dva[n][3]);
        }
    }
}

// attn_dq_convert_bf16: dq[n, h*D + d] = dq_acc[n, h*D + d] for n < B*T (f32 -> bf16, row stride
// ldq). Launch: one thread per element of dq_acc, block 256. Traffic: 4 B read, 2 B written per elt.
extern "C" __global__ void attn_dq_convert_bf16(bf16* dq, const float* dq_acc, int rows, int width, int ldq) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * width) return;
    size_t n = i / width, c = i % width;
    dq[n * ldq + c] = f32_to_bf16(dq_acc[i]);
}

#define ATTN_MMA_ARGS int T_, int H, int KV, int ldq, int ldk, int ldv, int ldo, float scale, float softcap, \
                      int window, int chunk, int causal, const float* alibi
#define ATTN_MMA_PASS T_, H, KV, ldq, ldk, ldv, ldo, scale, softcap, window, chunk, causal, alibi
// Instantiated per spec (one line per head dim, emitted by the Rust side): the backward keeps
// 16 x D of dK and dV per warp in registers, so it exists for D <= 128 only.
#define ATTN_FWD_INSTANTIATE(DIM, BNF)                                                                \
    extern "C" __global__ void __launch_bounds__(128) attn_fwd_bf16_d##DIM(                           \
        bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, ATTN_MMA_ARGS) {            \
        attn_fwd_mma<DIM, BNF>(o, lse, q, k, v, ATTN_MMA_PASS);                                      \
    }
#define ATTN_BWD_INSTANTIATE(DIM)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_bf16_d##DIM(                           \
        bf16* dk, bf16* dv, float* dq_acc, const bf16* q, const bf16* k, const bf16* v,               \
        const bf16* dout, const float* lse, const float* delta, ATTN_MMA_ARGS) {                      \
        attn_bwd_mma<DIM>(dk, dv, dq_acc, q, k, v, dout, lse, delta, ATTN_MMA_PASS);                 \
    }
