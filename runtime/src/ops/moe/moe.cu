// ---- mixture of experts: routing, token permutation, combine, and their backward ----
//
// Shapes: N tokens (rows), D = d_model, E experts (<= MOE_MAX_EXPERTS), K = top_k (<= MOE_MAX_TOPK),
// S = N*K slots; slot n*K + s is token n's s-th pick (slots in top-k order). The dispatched
// (expert-sorted) layout puts expert e's rows at start[e] .. start[e] + count[e], tokens in slot
// order, and each expert's block begins at a multiple of MOE_ROW_ALIGN rows (aligned GEMM operands;
// the rows in between are never read). Router logits, weights and statistics are f32 whatever the
// storage type T of activations; compute is f32 everywhere.
//
// The CPU reference is runtime/src/ops/moe/mod.rs: same top-k order (descending, ties to the lower
// expert index), same softmax and sigmoid scores, same correction bias and expert groups, same
// renormalisation and routed scaling, same input-side weighting, same load-balancing loss.

#define MOE_MAX_EXPERTS 256
#define MOE_MAX_TOPK 8
#define MOE_ROW_ALIGN 8
#define MOE_CHUNK 256
#define MOE_PER_LANE (MOE_MAX_EXPERTS / 32)

// Warp argmax with the CPU's order: larger value first, equal values to the lower index.
__device__ __forceinline__ void moe_warp_argmax(float& v, int& i) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) {
            v = ov;
            i = oi;
        }
    }
}

// One row's values x[j] (j = lane + 32 t) held in registers; picks the k largest, descending,
// ties to the lower index; writes the picks to idx[0..k) (the same in every lane; idx may be
// null, and K is then not limited to MOE_MAX_TOPK) and returns this lane's picked bits (bit t:
// x[lane + 32 t] picked).
__device__ __forceinline__ unsigned moe_topk(const float* x, int E, int K, int* idx) {
    int lane = threadIdx.x & 31;
    unsigned taken = 0;  // bit t: x[lane + 32 t] already picked
    for (int s = 0; s < K; s++) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
#pragma unroll
        for (int t = 0; t < MOE_PER_LANE; t++) {
            int j = lane + 32 * t;
            if (j < E && !(taken & (1u << t)) && (x[t] > bv || (x[t] == bv && j < bi))) {
                bv = x[t];
                bi = j;
            }
        }
        moe_warp_argmax(bv, bi);
        if (bi >= E) bi = 0;  // only when every remaining value is NaN
        if (idx) idx[s] = bi;
        if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
    }
    return taken;
}

__device__ __forceinline__ float moe_sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// Group-limited routing (DeepSeek-V3's n_group / topk_group): the E experts form G groups of E / G
// consecutive experts; a group scores the sum of its two largest values of c (its one value when
// groups have one expert) and the TG best groups are kept, ties to the lower group, as the CPU's
// sigmoid_choice. Returns this lane's bits of the experts in kept groups (bit t: expert
// lane + 32 t). Costs G warp reductions per row.
__device__ __forceinline__ unsigned moe_group_keep(const float* c, int E, int G, int TG) {
    int lane = threadIdx.x & 31;
    int size = E / G;
    float gs[MOE_PER_LANE];  // group g's score, held by lane g % 32 in register g / 32
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) gs[t] = NEG_INF;
    for (int g = 0; g < G; g++) {
        float b1 = NEG_INF, b2 = NEG_INF;
#pragma unroll
        for (int t = 0; t < MOE_PER_LANE; t++) {
            int j = lane + 32 * t;
            if (j < E && j / size == g) {
                if (c[t] > b1) {
                    b2 = b1;
                    b1 = c[t];
                } else if (c[t] > b2) {
                    b2 = c[t];
                }
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float o1 = __shfl_xor_sync(0xffffffffu, b1, o);
            float o2 = __shfl_xor_sync(0xffffffffu, b2, o);
            float hi = fmaxf(b1, o1);
            b2 = fmaxf(fminf(b1, o1), fmaxf(b2, o2));
            b1 = hi;
        }
        float score = size > 1 ? b1 + b2 : b1;
#pragma unroll
        for (int t = 0; t < MOE_PER_LANE; t++)
            if ((g & 31) == lane && (g >> 5) == t) gs[t] = score;
    }
    unsigned kept_groups = moe_topk(gs, G, TG, nullptr);
    unsigned keep = 0;
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) {
        int g = min((lane + 32 * t) / size, G - 1);
        unsigned bits = __shfl_sync(0xffffffffu, kept_groups, g & 31);
        if ((bits >> (g >> 5)) & 1u) keep |= 1u << t;
    }
    return keep;
}

// The value of x[j] (held by lane j % 32 in register j / 32), broadcast to the whole warp. Every
// lane must call it with the same j.
__device__ __forceinline__ float moe_lane_value(const float* x, int j) {
    float v = 0.f;
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++)
        if ((j >> 5) == t) v = x[t];
    return __shfl_sync(0xffffffffu, v, j & 31);
}

// Softmax of one row held in registers (j = lane + 32 t < E), as the CPU: exp(x - max) * (1/sum).
__device__ __forceinline__ void moe_softmax(const float* x, float* p, int E) {
    int lane = threadIdx.x & 31;
    float mx = NEG_INF;
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++)
        if (lane + 32 * t < E) mx = fmaxf(mx, x[t]);
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) {
        p[t] = lane + 32 * t < E ? __expf(x[t] - mx) : 0.f;
        sum += p[t];
    }
    float inv = 1.f / warp_sum(sum);
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) p[t] *= inv;
}

// moe_route_{dtype}: the router for one row per warp (the CPU's route_with). order 0 = softmax then
// top-k (optionally renormalised to sum 1), 1 = top-k of the logits then softmax over the k picked,
// 2 = sigmoid scores s = sigmoid(l), the k best chosen on s + corr (the correction bias, when
// given; else on l) within the TG best of G groups (when G > 1), weights the chosen s
// (renormalised: s / (sum s + 1e-20)). Every order then multiplies the weights by `scale`.
// With a router bias `rbias` (T, [E]), the logits are x Wr^T + rbias: it is added here and the
// biased logits written back, so that backward and the aux loss read them.
// Writes expert[N*K] (int) and weight[N*K] (f32) in top-k order and, when `probs` is given, the
// full softmax probs[N, E] (the aux loss's statistics read them, whatever the order).
// Launch: grid ceil(N / 4), block 128 (4 warps, one row each). Traffic: reads logits [N, E] f32
// once (and writes them with a router bias), writes 2 x N*K words (+ N*E f32 with probs).
template <typename T>
__device__ void moe_route(float* logits, const T* rbias, const T* corr, int N, int E, int K, int order,
                          int renorm, float scale, int G, int TG, int* expert, float* weight,
                          float* probs) {
    int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) return;
    float x[MOE_PER_LANE], p[MOE_PER_LANE];
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) {
        int j = lane + 32 * t;
        x[t] = j < E ? logits[(size_t)n * E + j] : NEG_INF;
        if (rbias && j < E) {
            x[t] += lf(rbias + j);
            logits[(size_t)n * E + j] = x[t];
        }
    }
    int idx[MOE_MAX_TOPK];
    float w[MOE_MAX_TOPK];
    if (order == 0 || probs) moe_softmax(x, p, E);
    if (order == 0) {
        moe_topk(p, E, K, idx);
        float sum = 0.f;
        for (int s = 0; s < K; s++) {
            w[s] = moe_lane_value(p, idx[s]);
            sum += w[s];
        }
        if (renorm)
            for (int s = 0; s < K; s++) w[s] = w[s] / sum;
    } else if (order == 1) {
        moe_topk(x, E, K, idx);
        float mx = NEG_INF;
        for (int s = 0; s < K; s++) {
            w[s] = moe_lane_value(x, idx[s]);
            mx = fmaxf(mx, w[s]);
        }
        float sum = 0.f;
        for (int s = 0; s < K; s++) {
            w[s] = __expf(w[s] - mx);
            sum += w[s];
        }
        float inv = 1.f / sum;
        for (int s = 0; s < K; s++) w[s] *= inv;
    } else {
        float sg[MOE_PER_LANE], c[MOE_PER_LANE];
#pragma unroll
        for (int t = 0; t < MOE_PER_LANE; t++) {
            int j = lane + 32 * t;
            sg[t] = j < E ? moe_sigmoid(x[t]) : 0.f;
            c[t] = j < E ? (corr ? sg[t] + lf(corr + j) : x[t]) : NEG_INF;
        }
        if (G > 1) {
            unsigned keep = moe_group_keep(c, E, G, TG);
#pragma unroll
            for (int t = 0; t < MOE_PER_LANE; t++)
                if (!((keep >> t) & 1u)) c[t] = NEG_INF;
        }
        moe_topk(c, E, K, idx);
        float sum = 0.f;
        for (int s = 0; s < K; s++) {
            w[s] = moe_lane_value(sg, idx[s]);
            sum += w[s];
        }
        sum += 1e-20f;
        if (renorm)
            for (int s = 0; s < K; s++) w[s] = w[s] / sum;
    }
    for (int s = 0; s < K; s++) w[s] *= scale;
    if (lane < K) {
        float v = 0.f;
        int e = 0;
        for (int s = 0; s < K; s++)
            if (s == lane) {
                v = w[s];
                e = idx[s];
            }
        expert[(size_t)n * K + lane] = e;
        weight[(size_t)n * K + lane] = v;
    }
    if (probs) {
#pragma unroll
        for (int t = 0; t < MOE_PER_LANE; t++) {
            int j = lane + 32 * t;
            if (j < E) probs[(size_t)n * E + j] = p[t];
        }
    }
}

// moe_rank: the first pass of a stable counting sort of the S slots by expert. For chunk c of
// MOE_CHUNK slots: rank[slot] = how many earlier slots of the chunk chose the same expert, and
// hist[c * E + e] = how many slots of the chunk chose e (integer shared-memory atomics: the
// counts do not depend on their order).
// Launch: grid ceil(S / MOE_CHUNK), block MOE_CHUNK. Traffic: reads expert [S] once, writes rank
// [S] and hist [chunks, E] ints; the rank scan is MOE_CHUNK shared-memory reads per slot.
extern "C" __global__ void moe_rank(const int* expert, int S, int E, int* rank, int* hist) {
    __shared__ int ids[MOE_CHUNK];
    __shared__ int h[MOE_MAX_EXPERTS];
    int t = threadIdx.x;
    int slot = blockIdx.x * MOE_CHUNK + t;
    int id = slot < S ? expert[slot] : -1;
    ids[t] = id;
    for (int e = t; e < E; e += blockDim.x) h[e] = 0;
    __syncthreads();
    if (id >= 0) {
        int r = 0;
        for (int j = 0; j < t; j++) r += ids[j] == id;
        rank[slot] = r;
        atomicAdd(&h[id], 1);
    }
    __syncthreads();
    for (int e = t; e < E; e += blockDim.x) hist[(size_t)blockIdx.x * E + e] = h[e];
}

// moe_offsets: per expert, turns the chunk histogram into each chunk's first dispatched row for
// that expert (in place), and writes offsets[e] = start[e] (rows before expert e, each expert's
// block rounded up to MOE_ROW_ALIGN rows) and offsets[E + e] = count[e].
// Launch: grid 1, block MOE_MAX_EXPERTS (thread e owns expert e). Traffic: reads and writes hist
// [chunks, E] twice (serial over chunks per thread).
extern "C" __global__ void moe_offsets(int* hist, int chunks, int E, int* offsets) {
    __shared__ int start[MOE_MAX_EXPERTS];
    __shared__ int count[MOE_MAX_EXPERTS];
    int e = threadIdx.x;
    if (e < E) {
        int run = 0;
        for (int c = 0; c < chunks; c++) {
            int v = hist[(size_t)c * E + e];
            hist[(size_t)c * E + e] = run;
            run += v;
        }
        count[e] = run;
    }
    __syncthreads();
    if (e == 0) {
        int acc = 0;
        for (int i = 0; i < E; i++) {
            start[i] = acc;
            acc += (count[i] + MOE_ROW_ALIGN - 1) / MOE_ROW_ALIGN * MOE_ROW_ALIGN;
        }
    }
    __syncthreads();
    if (e < E) {
        for (int c = 0; c < chunks; c++) hist[(size_t)c * E + e] += start[e];
        offsets[e] = start[e];
        offsets[E + e] = count[e];
    }
}

// moe_place: row[slot] = the dispatched row of each slot: its chunk's first row for the expert
// plus its rank within the chunk. Launch: grid ceil(S / 256), block 256. Traffic: 3 ints per slot.
extern "C" __global__ void moe_place(const int* expert, const int* rank, const int* hist, int S, int E,
                                     int* row) {
    int slot = blockIdx.x * blockDim.x + threadIdx.x;
    if (slot >= S) return;
    row[slot] = hist[(size_t)(slot / MOE_CHUNK) * E + expert[slot]] + rank[slot];
}

// moe_aux_stats: this layer's load-balancing statistics, written to its own slot of the run's
// statistics: stats[e] = count[e], stats[E + e] = sum_n probs[n, e] (`stats` points at the slot).
// Overwriting, not accumulating, makes a recomputed forward harmless. Deterministic: a
// fixed-order block reduction per expert.
// Launch: grid E, block 256. Traffic: reads probs [N, E] f32 once (strided by E).
extern "C" __global__ void moe_aux_stats(const float* probs, const int* offsets, int N, int E, float* stats) {
    __shared__ float scratch[32];
    int e = blockIdx.x;
    float acc = 0.f;
    for (int n = threadIdx.x; n < N; n += blockDim.x) acc += probs[(size_t)n * E + e];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        stats[e] = (float)offsets[E + e];
        stats[E + e] = acc;
    }
}

// moe_aux_loss: *loss += scale * sum_e C_e P_e with C_e, P_e the counts and probability sums over
// all `layers` slots of stats [layers, 2E] (layer order), scale = coef * E / M^2 with M the rows
// over all those layers (HF's load_balancing_loss_func times its coefficient). When `counts` is
// given, also writes counts[e] = C_e (what the router backward needs) and adds nothing.
// Launch: grid 1, block 256. Traffic: 2E x layers floats.
extern "C" __global__ void moe_aux_loss(const float* stats, int layers, int E, float scale, float* loss,
                                        float* counts) {
    __shared__ float scratch[32];
    float acc = 0.f;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        float c = 0.f, p = 0.f;
        for (int l = 0; l < layers; l++) {
            c += stats[(size_t)l * 2 * E + e];
            p += stats[(size_t)l * 2 * E + E + e];
        }
        if (counts) counts[e] = c;
        acc += c * p;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0 && loss) *loss += scale * acc;
}

// moe_gather_{dtype}: xin[row[slot], :] = x[slot / K, :] (each token copied to its K dispatched
// rows), or weight[slot] * x[slot / K, :] when `weight` is given (the router weights on the
// experts' inputs, Llama 4: the CPU's gather_weighted). Launch: grid S, block 128. Traffic: reads
// N*K*D and writes N*K*D elements.
template <typename T>
__device__ void moe_gather(T* xin, const T* x, const int* row, const float* weight, int K, int D) {
    size_t slot = blockIdx.x;
    const T* src = x + (slot / K) * D;
    T* dst = xin + (size_t)row[slot] * D;
    if (weight) {
        float w = weight[slot];
        for (int c = threadIdx.x; c < D; c += blockDim.x) sf(dst + c, w * lf(src + c));
    } else {
        for (int c = threadIdx.x; c < D; c += blockDim.x) dst[c] = src[c];
    }
}

// moe_dweight_in_{dtype}: the router weights' gradient when they scale the experts' inputs:
// dweight[slot] = dxin[row[slot], :] . x[slot / K, :] (f32, fixed-order block reduction; written),
// the CPU's gather_weighted_backward. Launch: grid S, block 128. Traffic: reads 2 x N*K*D elements.
template <typename T>
__device__ void moe_dweight_in(float* dweight, const T* dxin, const T* x, const int* row, int K, int D) {
    __shared__ float scratch[32];
    size_t slot = blockIdx.x;
    const T* a = dxin + (size_t)row[slot] * D;
    const T* b = x + (slot / K) * D;
    float acc = 0.f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) acc += lf(a + c) * lf(b + c);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dweight[slot] = acc;
}

// moe_add_bias_{dtype}: c[r, j] += bias[j] for r < rows, j < n (rows of stride ldc): a linear
// layer's bias when its pointer is not 16-byte aligned for the GEMM epilogue (a fused gate/up
// pair's up bias directly after a gate bias of an odd multiple of 8 bytes). Launch: grid rows,
// block 256. Traffic: reads and writes rows x n elements.
template <typename T>
__device__ void moe_add_bias(T* c, const T* bias, int n, int ldc) {
    size_t r = blockIdx.x;
    for (int j = threadIdx.x; j < n; j += blockDim.x) sf(c + r * ldc + j, lf(c + r * ldc + j) + lf(bias + j));
}

// moe_rowdot_{dtype}: out[n] = x[n, :] . w (f32): the shared experts' gate logit.
// Launch: grid N, block 256. Traffic: reads x [N, D] once, w from cache.
template <typename T>
__device__ void moe_rowdot(float* out, const T* x, const T* w, int D) {
    __shared__ float scratch[32];
    size_t n = blockIdx.x;
    float acc = 0.f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) acc += lf(x + n * D + c) * lf(w + c);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[n] = acc;
}

// moe_combine_{dtype}: out[n, :] = sum_s weight[n, s] * eo[row[n, s], :] (s in top-k order, no
// atomics; weight 1 when `weight` is null: the weights went on the inputs), then + g * so[n, :] with g = sigmoid(glogit[n]) (or 1 without a gate) when the
// shared experts' output `so` is given.
// Launch: grid N, block 256. Traffic: reads K + 1 rows of D per token, writes one.
template <typename T>
__device__ void moe_combine(T* out, const T* eo, const float* weight, const int* row, int K, int D,
                            const T* so, const float* glogit) {
    size_t n = blockIdx.x;
    float g = glogit ? 1.f / (1.f + __expf(-glogit[n])) : 1.f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float acc = 0.f;
        for (int s = 0; s < K; s++)
            acc += (weight ? weight[n * K + s] : 1.f) * lf(eo + (size_t)row[n * K + s] * D + c);
        if (so) acc += g * lf(so + n * D + c);
        sf(out + n * D + c, acc);
    }
}

// moe_combine_bwd_{dtype}: backward of moe_combine for token n:
//   dweight[n, s] = dout[n, :] . eo[row[n, s], :]      (f32, fixed-order block reduction)
//   deo[row[n, s], :] = weight[n, s] * dout[n, :]      (each dispatched row written once)
// (weight 1 when null; no dweight when it is null) and with the shared gate: dglogit[n] = (dout[n, :] . so[n, :]) * g (1 - g), dso[n, :] =
// g * dout[n, :]. Launch: grid N, block 256. Traffic: reads dout and K (+1) rows of eo (so),
// writes K (+1) rows of D.
template <typename T>
__device__ void moe_combine_bwd(float* dweight, T* deo, const T* dout, const T* eo, const float* weight,
                                const int* row, int K, int D, T* dso, T* dglogit, const T* so,
                                const float* glogit) {
    __shared__ float scratch[32];
    size_t n = blockIdx.x;
    const T* dy = dout + n * D;
    for (int s = 0; s < K; s++) {
        size_t r = row[n * K + s];
        float w = weight ? weight[n * K + s] : 1.f;
        float acc = 0.f;
        for (int c = threadIdx.x; c < D; c += blockDim.x) {
            float d = lf(dy + c);
            if (dweight) acc += d * lf(eo + r * D + c);
            sf(deo + r * D + c, w * d);
        }
        if (dweight) {
            acc = block_sum(acc, scratch);
            if (threadIdx.x == 0) dweight[n * K + s] = acc;
        }
    }
    if (dso) {
        float g = 1.f / (1.f + __expf(-glogit[n]));
        float acc = 0.f;
        for (int c = threadIdx.x; c < D; c += blockDim.x) {
            float d = lf(dy + c);
            acc += d * lf(so + n * D + c);
            sf(dso + n * D + c, g * d);
        }
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) sf(dglogit + n, acc * g * (1.f - g));
    }
}

// moe_route_bwd_{dtype}: d logits of one row per warp (the CPU's route_backward), from the
// gradient of the routing weights dweight[n, :], first multiplied by `scale` (the routed scaling
// factor), and, when `stats` is given, the aux loss's gradient on every softmax probability,
// aux_scale * stats[e] (= coef * E * count_e / M^2, stats holding the run's per-expert counts):
//   softmax->top-k: dp[i_s] = dw_s (renormalised: (dw_s - sum_t dw_t w_t) / sum_t p[i_t]),
//   top-k->softmax: dl[i_s] = w_s (dw_s - sum_t w_t dw_t) directly (w recomputed, unscaled);
//   then dl[j] += p_j (dp_j - sum_i p_i dp_i);
//   sigmoid: ds_s = dw_s (renormalised: (dw_s - sum_t dw_t s_t / S) / S, S = sum_t s_t + 1e-20),
//   dl[i_s] = ds_s s_s (1 - s_s) and nothing else: the choice (correction bias, groups) passes no
//   gradient, and neither does the aux loss, exactly as the CPU.
// Written (not accumulated) to dlogits [N, E].
// Launch: grid ceil(N / 4), block 128 (4 warps). Traffic: reads logits [N, E] f32, writes dlogits.
template <typename T>
__device__ void moe_route_bwd(T* dlogits, const float* logits, const int* expert, const float* dweight,
                              const float* stats, float aux_scale, float scale, int N, int E, int K,
                              int order, int renorm) {
    int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float* l = logits + (size_t)n * E;
    float x[MOE_PER_LANE], p[MOE_PER_LANE], dp[MOE_PER_LANE], dl[MOE_PER_LANE];
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) {
        int j = lane + 32 * t;
        x[t] = j < E ? l[j] : NEG_INF;
        dp[t] = stats && order != 2 && j < E ? aux_scale * stats[j] : 0.f;
        dl[t] = 0.f;
    }
    const int* idx = expert + (size_t)n * K;
    float dw[MOE_MAX_TOPK];
    for (int s = 0; s < K; s++) dw[s] = dweight[(size_t)n * K + s] * scale;
    if (order == 2) {
        float sv[MOE_MAX_TOPK];
        float sum = 0.f;
        for (int s = 0; s < K; s++) {
            sv[s] = moe_sigmoid(moe_lane_value(x, idx[s]));
            sum += sv[s];
        }
        sum += 1e-20f;
        float dot = 0.f;
        if (renorm)
            for (int s = 0; s < K; s++) dot += dw[s] * sv[s] / sum;
        for (int s = 0; s < K; s++) {
            float ds = renorm ? (dw[s] - dot) / sum : dw[s];
#pragma unroll
            for (int t = 0; t < MOE_PER_LANE; t++)
                if (idx[s] == lane + 32 * t) dl[t] += ds * sv[s] * (1.f - sv[s]);
        }
#pragma unroll
        for (int t = 0; t < MOE_PER_LANE; t++) {
            int j = lane + 32 * t;
            if (j < E) sf(dlogits + (size_t)n * E + j, dl[t]);
        }
        return;
    }
    moe_softmax(x, p, E);
    if (order == 0) {
        // The picked probabilities, exactly as moe_route computed them.
        float psel[MOE_MAX_TOPK];
        float psum = 0.f;
        for (int s = 0; s < K; s++) {
            psel[s] = moe_lane_value(p, idx[s]);
            psum += psel[s];
        }
        float dot = 0.f;
        if (renorm)
            for (int s = 0; s < K; s++) dot += dw[s] * psel[s] / psum;
        for (int s = 0; s < K; s++) {
            float g = renorm ? (dw[s] - dot) / psum : dw[s];
#pragma unroll
            for (int t = 0; t < MOE_PER_LANE; t++)
                if (idx[s] == lane + 32 * t) dp[t] += g;
        }
    } else {
        // The softmax over the picked logits, exactly as moe_route computed it (before `scale`).
        float w[MOE_MAX_TOPK];
        float mx = NEG_INF;
        for (int s = 0; s < K; s++) {
            w[s] = moe_lane_value(x, idx[s]);
            mx = fmaxf(mx, w[s]);
        }
        float sum = 0.f;
        for (int s = 0; s < K; s++) {
            w[s] = __expf(w[s] - mx);
            sum += w[s];
        }
        float inv = 1.f / sum;
        float dot = 0.f;
        for (int s = 0; s < K; s++) {
            w[s] *= inv;
            dot += w[s] * dw[s];
        }
        for (int s = 0; s < K; s++) {
#pragma unroll
            for (int t = 0; t < MOE_PER_LANE; t++)
                if (idx[s] == lane + 32 * t) dl[t] += w[s] * (dw[s] - dot);
        }
    }
    float dot = 0.f;
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) dot += p[t] * dp[t];
    dot = warp_sum(dot);
#pragma unroll
    for (int t = 0; t < MOE_PER_LANE; t++) {
        int j = lane + 32 * t;
        if (j < E) sf(dlogits + (size_t)n * E + j, dl[t] + p[t] * (dp[t] - dot));
    }
}

// moe_dx_{dtype}: dx[n, :] = dxf[n, :] (f32, the router's and shared experts' part) +
// sum_s w[n, s] dxin[row[n, s], :] (the routed experts' part, s in order; w = weight when given:
// the router weights scaled the inputs, else 1) + dglogit[n] * wg (the shared
// gate's part, when given). Overwrites dx; no atomics.
// Launch: grid N, block 256. Traffic: reads 1 f32 + K rows of D per token, writes one row.
template <typename T>
__device__ void moe_dx(T* dx, const float* dxf, const T* dxin, const int* row, const float* weight, int K,
                       int D, const T* dglogit, const T* wg) {
    size_t n = blockIdx.x;
    float gl = dglogit ? lf(dglogit + n) : 0.f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float acc = dxf ? dxf[n * D + c] : 0.f;
        for (int s = 0; s < K; s++)
            acc += (weight ? weight[n * K + s] : 1.f) * lf(dxin + (size_t)row[n * K + s] * D + c);
        if (dglogit) acc += gl * lf(wg + c);
        sf(dx + n * D + c, acc);
    }
}

#define MOE_INSTANTIATE(SUF, T)                                                                      \
    extern "C" __global__ void moe_route_##SUF(float* logits, const T* rbias, const T* corr, int N,   \
                                               int E, int K, int order, int renorm, float scale,     \
                                               int G, int TG, int* expert, float* weight,            \
                                               float* probs) {                                       \
        moe_route<T>(logits, rbias, corr, N, E, K, order, renorm, scale, G, TG, expert, weight,      \
                     probs);                                                                         \
    }                                                                                                \
    extern "C" __global__ void moe_gather_##SUF(T* xin, const T* x, const int* row,                  \
                                                const float* weight, int K, int D) {                 \
        moe_gather<T>(xin, x, row, weight, K, D);                                                    \
    }                                                                                                \
    extern "C" __global__ void moe_dweight_in_##SUF(float* dweight, const T* dxin, const T* x,       \
                                                    const int* row, int K, int D) {                  \
        moe_dweight_in<T>(dweight, dxin, x, row, K, D);                                              \
    }                                                                                                \
    extern "C" __global__ void moe_add_bias_##SUF(T* c, const T* bias, int n, int ldc) {             \
        moe_add_bias<T>(c, bias, n, ldc);                                                            \
    }                                                                                                \
    extern "C" __global__ void moe_rowdot_##SUF(float* out, const T* x, const T* w, int D) {          \
        moe_rowdot<T>(out, x, w, D);                                                                 \
    }                                                                                                \
    extern "C" __global__ void moe_combine_##SUF(T* out, const T* eo, const float* weight,           \
                                                 const int* row, int K, int D, const T* so,          \
                                                 const float* glogit) {                              \
        moe_combine<T>(out, eo, weight, row, K, D, so, glogit);                                      \
    }                                                                                                \
    extern "C" __global__ void moe_combine_bwd_##SUF(float* dweight, T* deo, const T* dout,          \
                                                     const T* eo, const float* weight,               \
                                                     const int* row, int K, int D, T* dso,           \
                                                     T* dglogit, const T* so,                        \
                                                     const float* glogit) {                          \
        moe_combine_bwd<T>(dweight, deo, dout, eo, weight, row, K, D, dso, dglogit, so, glogit);     \
    }                                                                                                \
    extern "C" __global__ void moe_route_bwd_##SUF(T* dlogits, const float* logits,                  \
                                                   const int* expert, const float* dweight,          \
                                                   const float* stats, float aux_scale, float scale, \
                                                   int N, int E, int K, int order, int renorm) {     \
        moe_route_bwd<T>(dlogits, logits, expert, dweight, stats, aux_scale, scale, N, E, K, order,  \
                         renorm);                                                                    \
    }                                                                                                \
    extern "C" __global__ void moe_dx_##SUF(T* dx, const float* dxf, const T* dxin, const int* row,  \
                                            const float* weight, int K, int D, const T* dglogit,     \
                                            const T* wg) {                                           \
        moe_dx<T>(dx, dxf, dxin, row, weight, K, D, dglogit, wg);                                    \
    }
MOE_INSTANTIATE(f32, float)
MOE_INSTANTIATE(bf16, bf16)
