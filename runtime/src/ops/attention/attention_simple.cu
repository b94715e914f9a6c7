// ---- attention, reference-grade path (f32 parity runs, and bf16 shapes the tensor-core path
// does not cover): one warp per query (forward, dQ) or per key (dK/dV), online softmax, nothing
// of size T x T in memory. Layout: q [B*T, ldq] with head h at column h*D, k [B*T, ldk] with kv
// head h / (H/KV) at column kvh*D, v [B*T, ldv] at column kvh*DV (DV = D, except in latent
// attention, whose values are narrower or wider than its queries and keys); o [B*T, ldo] with
// head h at column h*DV; lse [B, H, T] natural-log logsumexp of the scores.
// Scores: s = scale * (q.k + alibi), then softcap * tanh(s / softcap) when softcap > 0; alibi is
// alibi_bias(slopes[h], j) when `alibi` (f32 [H] slopes) is not null, else 0. Key j is visible to
// query i when j < T, (!causal || j <= i), (window <= 0 || i - j < window) and (chunk <= 0 ||
// i / chunk == j / chunk) (Llama 4's chunked attention). D, DV <= 256.

// One past the last query that may see key j (window and chunk; causal masks from below).
__device__ __forceinline__ int attn_query_end(int j, int T, int window, int chunk) {
    int i1 = window > 0 ? min(T, j + window) : T;
    return chunk > 0 ? min(i1, (j / chunk + 1) * chunk) : i1;
}

// attn_simple_fwd_{dtype}: launch grid (ceil(T/4), H, B), block 128 (4 warps, one query each).
// Traffic: each query reads every visible key and value row once (from L2): O(T^2 D) bytes.
template <typename T>
__device__ void attn_simple_fwd(T* o, float* lse, const T* q, const T* k, const T* v, int T_, int H, int KV, int D,
                                int DV, int ldq, int ldk, int ldv, int ldo, float scale, float softcap, int window,
                                int chunk, int causal, const float* alibi) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i = blockIdx.x * 4 + warp, h = blockIdx.y, b = blockIdx.z;
    if (i >= T_) return;
    int kvh = h / (H / KV);
    const float slope = alibi ? alibi[h] : 0.f;
    const T* qr = q + ((size_t)b * T_ + i) * ldq + (size_t)h * D;
    float qv[ATTN_MAXD_LANE], acc[ATTN_MAXD_LANE] = {};
    attn_lane_load(qr, D, lane, qv);
    float m = NEG_INF, l = 0.f;
    int j0 = attn_first_key(i, window, chunk);
    int j1 = causal ? i + 1 : T_;
    for (int j = j0; j < j1; j++) {
        const T* kr = k + ((size_t)b * T_ + j) * ldk + (size_t)kvh * D;
        const T* vr = v + ((size_t)b * T_ + j) * ldv + (size_t)kvh * DV;
        attn_online_key(qv, acc, kr, vr, D, DV, lane, alibi != nullptr, slope, j, scale, softcap, m, l);
    }
    float inv = l > 0.f ? 1.f / l : 0.f;
    T* orow = o + ((size_t)b * T_ + i) * ldo + (size_t)h * DV;
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        if (d < DV) sf(orow + d, acc[e] * inv);
    }
    if (lane == 0) lse[((size_t)b * H + h) * T_ + i] = l > 0.f ? m + __logf(l) : 0.f;
}

// attn_delta_{dtype}: delta[b,h,i] = sum_d dO[i,d] * O[i,d] (f32), the softmax-backward row term;
// D is the value (output) head width. Launch grid (ceil(T/4), H, B), block 128. Traffic: reads O
// and dO once.
template <typename T>
__device__ void attn_delta(float* delta, const T* o, const T* dout, int T_, int H, int D, int ldo) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i = blockIdx.x * 4 + warp, h = blockIdx.y, b = blockIdx.z;
    if (i >= T_) return;
    size_t off = ((size_t)b * T_ + i) * ldo + (size_t)h * D;
    float a = 0.f;
    for (int d = lane; d < D; d += 32) a += lf(o + off + d) * lf(dout + off + d);
    a = warp_sum(a);
    if (lane == 0) delta[((size_t)b * H + h) * T_ + i] = a;
}

// Recompute p and dS for (query i, key j) given s_raw = q.k (+ the ALiBi bias): returns dS with
// respect to q.k (the bias is constant, so it is also the gradient of the biased score).
__device__ __forceinline__ float attn_ds(float dot, float dp, float lse_i, float delta_i, float scale,
                                         float softcap, float* p_out) {
    float s = dot * scale, dcap = 1.f;
    if (softcap > 0.f) {
        float t = tanhf(s / softcap);
        s = softcap * t;
        dcap = 1.f - t * t;
    }
    float p = __expf(s - lse_i);
    *p_out = p;
    return p * (dp - delta_i) * dcap * scale;
}

// attn_simple_dq_{dtype}: dq[i] = sum_j dS[i,j] k[j]. Launch grid (ceil(T/4), H, B), block 128.
template <typename T>
__device__ void attn_simple_dq(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                               const float* delta, int T_, int H, int KV, int D, int DV, int ldq, int ldk,
                               int ldv, int ldo, float scale, float softcap, int window, int chunk, int causal,
                               const float* alibi) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i = blockIdx.x * 4 + warp, h = blockIdx.y, b = blockIdx.z;
    if (i >= T_) return;
    int kvh = h / (H / KV);
    const float slope = alibi ? alibi[h] : 0.f;
    const T* qr = q + ((size_t)b * T_ + i) * ldq + (size_t)h * D;
    const T* dor = dout + ((size_t)b * T_ + i) * ldo + (size_t)h * DV;
    float qv[ATTN_MAXD_LANE], dov[ATTN_MAXD_LANE], acc[ATTN_MAXD_LANE] = {};
    attn_lane_load(qr, D, lane, qv);
    attn_lane_load(dor, DV, lane, dov);
    float lse_i = lse[((size_t)b * H + h) * T_ + i], delta_i = delta[((size_t)b * H + h) * T_ + i];
    int j0 = attn_first_key(i, window, chunk);
    int j1 = causal ? i + 1 : T_;
    for (int j = j0; j < j1; j++) {
        const T* kr = k + ((size_t)b * T_ + j) * ldk + (size_t)kvh * D;
        const T* vr = v + ((size_t)b * T_ + j) * ldv + (size_t)kvh * DV;
        float dot = 0.f, dp = 0.f;
#pragma unroll
        for (int e = 0; e < ATTN_MAXD_LANE; e++) {
            int d = lane + 32 * e;
            if (d < D) dot += qv[e] * lf(kr + d);
            if (d < DV) dp += dov[e] * lf(vr + d);
        }
        dot = warp_sum(dot);
        dp = warp_sum(dp);
        if (alibi) dot += alibi_bias(slope, j);
        float p;
        float ds = attn_ds(dot, dp, lse_i, delta_i, scale, softcap, &p);
#pragma unroll
        for (int e = 0; e < ATTN_MAXD_LANE; e++) {
            int d = lane + 32 * e;
            if (d < D) acc[e] += ds * lf(kr + d);
        }
    }
    T* out = dq + ((size_t)b * T_ + i) * ldq + (size_t)h * D;
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        if (d < D) sf(out + d, acc[e]);
    }
}

// attn_simple_dkv_{dtype}: for key j of kv head g: dv[j] = sum_{h in group, i} p[i,j] dO[i];
// dk[j] = sum dS[i,j] q[i]. Launch grid (ceil(T/4), KV, B), block 128 (one warp per key).
template <typename T>
__device__ void attn_simple_dkv(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                const float* delta, int T_, int H, int KV, int D, int DV, int ldq, int ldk,
                                int ldv, int ldo, float scale, float softcap, int window, int chunk, int causal,
                                const float* alibi) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = blockIdx.x * 4 + warp, g = blockIdx.y, b = blockIdx.z;
    if (j >= T_) return;
    int group = H / KV;
    const T* kr = k + ((size_t)b * T_ + j) * ldk + (size_t)g * D;
    const T* vr = v + ((size_t)b * T_ + j) * ldv + (size_t)g * DV;
    float kv_[ATTN_MAXD_LANE], vv[ATTN_MAXD_LANE], dka[ATTN_MAXD_LANE] = {}, dva[ATTN_MAXD_LANE] = {};
    attn_lane_load(kr, D, lane, kv_);
    attn_lane_load(vr, DV, lane, vv);
    int i0 = causal ? j : 0;
    int i1 = attn_query_end(j, T_, window, chunk);
    for (int hh = 0; hh < group; hh++) {
        int h = g * group + hh;
        const float bias = alibi ? alibi_bias(alibi[h], j) : 0.f;
        for (int i = i0; i < i1; i++) {
            const T* qr = q + ((size_t)b * T_ + i) * ldq + (size_t)h * D;
            const T* dor = dout + ((size_t)b * T_ + i) * ldo + (size_t)h * DV;
            float dot = 0.f, dp = 0.f;
#pragma unroll
            for (int e = 0; e < ATTN_MAXD_LANE; e++) {
                int d = lane + 32 * e;
                if (d < D) dot += kv_[e] * lf(qr + d);
                if (d < DV) dp += vv[e] * lf(dor + d);
            }
            dot = warp_sum(dot) + bias;
            dp = warp_sum(dp);
            float p;
            size_t r = ((size_t)b * H + h) * T_ + i;
            float ds = attn_ds(dot, dp, lse[r], delta[r], scale, softcap, &p);
#pragma unroll
            for (int e = 0; e < ATTN_MAXD_LANE; e++) {
                int d = lane + 32 * e;
                if (d < DV) dva[e] += p * lf(dor + d);
                if (d < D) dka[e] += ds * lf(qr + d);
            }
        }
    }
    T* dkr = dk + ((size_t)b * T_ + j) * ldk + (size_t)g * D;
    T* dvr = dv + ((size_t)b * T_ + j) * ldv + (size_t)g * DV;
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        if (d < D) sf(dkr + d, dka[e]);
        if (d < DV) sf(dvr + d, dva[e]);
    }
}

// attn_sinks_fwd_{dtype}: folds each head's sink logit into a finished forward (any path), row
// by row: lse' = logaddexp(lse, sink_h), o *= exp(lse - lse'), lse = lse'. The backward's
// probabilities exp(s - lse') and delta = rowsum(dO o) then already include the sink.
// Launch: grid B*T (one row each), block 128, dynamic shared memory H floats.
template <typename T>
__device__ void attn_sinks_fwd(T* o, float* lse, const T* sinks, int T_, int H, int D, int ldo) {
    extern __shared__ float s_factor[];
    size_t row = blockIdx.x;
    size_t b = row / T_, i = row % T_;
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        float* l = lse + (b * H + h) * T_ + i;
        float old = *l, sink = lf(sinks + h);
        float hi = fmaxf(old, sink);
        float lnew = hi + logf(expf(old - hi) + expf(sink - hi));
        *l = lnew;
        s_factor[h] = expf(old - lnew);
    }
    __syncthreads();
    T* orow = o + row * ldo;
    for (int c = threadIdx.x; c < H * D; c += blockDim.x) sf(orow + c, lf(orow + c) * s_factor[c / D]);
}

// attn_sinks_bwd_{dtype}: dsinks[h] += -sum_{b,i} exp(sink_h - lse'[b,h,i]) * (dO[b,i,h] . o[b,i,h])
// (the sink's probability times the softmax-backward row term; the sink has no value). Launch:
// grid H, block 256; each thread takes rows t, t + 256, ... and the block sums them in a fixed
// order: deterministic.
template <typename T>
__device__ void attn_sinks_bwd(float* dsinks, const T* dout, const T* o, const float* lse, const T* sinks, int B,
                               int T_, int H, int D, int ldo) {
    __shared__ float part[32];
    int h = blockIdx.x;
    float sink = lf(sinks + h), acc = 0.f;
    for (size_t row = threadIdx.x; row < (size_t)B * T_; row += blockDim.x) {
        size_t b = row / T_, i = row % T_;
        const T* orow = o + row * ldo + (size_t)h * D;
        const T* drow = dout + row * ldo + (size_t)h * D;
        float dot = 0.f;
        for (int d = 0; d < D; d++) dot += lf(orow + d) * lf(drow + d);
        acc -= expf(sink - lse[(b * H + h) * T_ + i]) * dot;
    }
    acc = warp_sum(acc);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) total += part[w];
        dsinks[h] += total;
    }
}

// attn_qscale_{dtype}: q[r, c] *= 1 + scale * log1p(floor((pos + 1) / floor)) for c < W, pos =
// r % T (Llama 4's query temperature; the factor in f32 as transformers computes it). The same
// pass scales dq in the backward. Launch: one thread per element, block 256.
template <typename T>
__device__ void attn_qscale(T* q, int N, int T_, int W, int ld, float floor_, float scale) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * W) return;
    size_t r = idx / W, c = idx % W;
    float pos = (float)(r % T_);
    float f = attn_temperature(pos, floor_, scale);
    T* p = q + r * ld + c;
    sf(p, lf(p) * f);
}

#define ATTN_SIMPLE_ARGS int T_, int H, int KV, int D, int DV, int ldq, int ldk, int ldv, int ldo, float scale, \
                         float softcap, int window, int chunk, int causal, const float* alibi
#define ATTN_SIMPLE_PASS T_, H, KV, D, DV, ldq, ldk, ldv, ldo, scale, softcap, window, chunk, causal, alibi
#define ATTN_SIMPLE_INSTANTIATE(SUF, T)                                                              \
    extern "C" __global__ void attn_simple_fwd_##SUF(T* o, float* lse, const T* q, const T* k,        \
                                                     const T* v, ATTN_SIMPLE_ARGS) {                  \
        attn_simple_fwd<T>(o, lse, q, k, v, ATTN_SIMPLE_PASS);                                       \
    }                                                                                                \
    extern "C" __global__ void attn_delta_##SUF(float* delta, const T* o, const T* dout, int T_, int H, \
                                                int D, int ldo) {                                    \
        attn_delta<T>(delta, o, dout, T_, H, D, ldo);                                                \
    }                                                                                                \
    extern "C" __global__ void attn_simple_dq_##SUF(T* dq, const T* q, const T* k, const T* v,        \
                                                    const T* dout, const float* lse,                 \
                                                    const float* delta, ATTN_SIMPLE_ARGS) {          \
        attn_simple_dq<T>(dq, q, k, v, dout, lse, delta, ATTN_SIMPLE_PASS);                          \
    }                                                                                                \
    extern "C" __global__ void attn_simple_dkv_##SUF(T* dk, T* dv, const T* q, const T* k,            \
                                                     const T* v, const T* dout, const float* lse,    \
                                                     const float* delta, ATTN_SIMPLE_ARGS) {         \
        attn_simple_dkv<T>(dk, dv, q, k, v, dout, lse, delta, ATTN_SIMPLE_PASS);                     \
    }
#define ATTN_SHARED_INSTANTIATE(SUF, T)                                                              \
    extern "C" __global__ void attn_sinks_fwd_##SUF(T* o, float* lse, const T* sinks, int T_, int H,  \
                                                    int D, int ldo) {                                \
        attn_sinks_fwd<T>(o, lse, sinks, T_, H, D, ldo);                                             \
    }                                                                                                \
    extern "C" __global__ void attn_sinks_bwd_##SUF(float* dsinks, const T* dout, const T* o,         \
                                                    const float* lse, const T* sinks, int B, int T_, \
                                                    int H, int D, int ldo) {                         \
        attn_sinks_bwd<T>(dsinks, dout, o, lse, sinks, B, T_, H, D, ldo);                            \
    }                                                                                                \
    extern "C" __global__ void attn_qscale_##SUF(T* q, int N, int T_, int W, int ld, float floor_,    \
                                                 float scale) {                                      \
        attn_qscale<T>(q, N, T_, W, ld, floor_, scale);                                              \
    }
ATTN_SHARED_INSTANTIATE(f32, float)
ATTN_SHARED_INSTANTIATE(bf16, bf16)
ATTN_SIMPLE_INSTANTIATE(f32, float)
ATTN_SIMPLE_INSTANTIATE(bf16, bf16)
