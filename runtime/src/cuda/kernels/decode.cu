// ---- decoding with a key/value cache (runtime/src/cuda/decode): the kernels that differ from
// training because rows are not whole sequences. A call runs N new rows; row r belongs to
// sequence seq[r] and sits at absolute position pos[r] of it (i32 arrays of N). Each layer's
// cache holds keys and values as [B, KV, L, D] in the compute dtype (B sequences, KV kv heads,
// L positions of capacity, head width D): keys after qk-norm and RoPE, as attention reads them.

// dec_embed_{dtype}: out[r] = wte[tok[r]] * scale (+ wpe[pos[r]]). Launch: grid N, block 256.
// Traffic: one row of wte (and wpe) read, one row written per new token.
template <typename T>
__device__ void dec_embed(T* out, const int* tok, const int* pos, const T* wte, const T* wpe, int C, float scale) {
    size_t r = blockIdx.x;
    size_t id = tok[r];
    size_t p = pos[r];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = lf(wte + id * C + c) * scale;
        if (wpe) v += lf(wpe + p * C + c);
        sf(out + r * C + c, v);
    }
}

// dec_rope_{dtype}: rotates the first `rot` dims of each of `heads` heads of x [N, ld] in place
// at the rows' own positions (the training kernel `rope` takes position n % T instead). Tables
// cos/sin [L, rot/2] f32; HalfSplit pairs (i, i + rot/2), interleaved pairs (2i, 2i + 1).
// Launch: one thread per (row, head, pair), block 256. Traffic: the rotated part of x once.
template <typename T>
__device__ void dec_rope(T* x, const float* cosv, const float* sinv, const int* pos, int N, int heads, int D,
                         int ld, int rot, int interleaved) {
    int half = rot / 2, h, i;
    size_t n;
    if (!rope_thread((size_t)blockIdx.x * blockDim.x + threadIdx.x, N, heads, half, &n, &h, &i)) return;
    size_t t = pos[n];
    rope_rotate(x + n * ld + (size_t)h * D, i, half, interleaved, cosv[t * half + i], sinv[t * half + i]);
}

// dec_kv_store_{dtype}: appends the new rows' keys and values to the cache:
// kc[seq[r], g, pos[r], :] = k[r, g*D : (g+1)*D] (and v alike); k and v rows of stride ld.
// Launch: one thread per (row, kv head, dim), block 256. Traffic: 2 x N*KV*D read and written.
template <typename T>
__device__ void dec_kv_store(T* kc, T* vc, const T* k, const T* v, const int* seq, const int* pos, int N, int KV,
                             int D, int ld, int L) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)N * KV * D;
    if (idx >= total) return;
    int d = idx % D;
    int g = (idx / D) % KV;
    size_t r = idx / ((size_t)D * KV);
    size_t dst = (((size_t)seq[r] * KV + g) * L + pos[r]) * D + d;
    size_t src = r * ld + (size_t)g * D + d;
    kc[dst] = k[src];
    vc[dst] = v[src];
}

// dec_mla_store_{dtype}: appends latent attention's new rows to its cache, which holds per
// position the normalised key/value latent and the rotated shared key (what DeepSeek caches):
// lat[seq[r], pos[r], :] = latent[r, :R] (row stride ldl), pe[seq[r], pos[r], :] = k_pe[r, :ROPE]
// (row stride ldp); lat [B, L, R], pe [B, L, ROPE]. Launch: one thread per (row, column of both).
template <typename T>
__device__ void dec_mla_store(T* lat, T* pe, const T* latent, int ldl, const T* k_pe, int ldp, const int* seq,
                              const int* pos, int N, int R, int ROPE, int L) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int W = R + ROPE;
    if (idx >= (size_t)N * W) return;
    size_t r = idx / W;
    int c = (int)(idx % W);
    size_t at = (size_t)seq[r] * L + pos[r];
    if (c < R)
        lat[at * R + c] = latent[r * ldl + c];
    else
        pe[at * ROPE + (c - R)] = k_pe[r * ldp + (c - R)];
}

// dec_mla_expand_{dtype}: the per-head keys and values of the first `used` cached positions of
// every sequence, from kv [B, L, H*(NOPE+DV)] (the cached latents' up-projection: per head its key
// part, then its value) and the cached rotated keys pe [B, L, ROPE], into the layout dec_attn
// reads: kc [B, H, L, NOPE+ROPE] = [kv_h[:NOPE]; pe], vc [B, H, L, DV] = kv_h[NOPE:]. Launch: one
// thread per (sequence, position < used, head, column of the key and the value).
template <typename T>
__device__ void dec_mla_expand(T* kc, T* vc, const T* kv, const T* pe, int B, int L, int used, int H, int NOPE,
                               int ROPE, int DV) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int KD = NOPE + ROPE, KVD = NOPE + DV, W = KD + DV;
    if (idx >= (size_t)B * used * H * W) return;
    int c = (int)(idx % W);
    int h = (int)((idx / W) % H);
    size_t j = (idx / ((size_t)W * H)) % used;
    size_t b = idx / ((size_t)W * H * used);
    size_t row = b * L + j;
    const T* kvr = kv + row * H * KVD + (size_t)h * KVD;
    size_t head = (b * H + h) * L + j;
    if (c < KD)
        kc[head * KD + c] = c < NOPE ? kvr[c] : pe[row * ROPE + (c - NOPE)];
    else
        vc[head * DV + (c - KD)] = kvr[NOPE + (c - KD)];
}

// dec_attn_{dtype}: one query row per (new row r, head h) over its sequence's cached keys
// 0..=pos[r] (the new rows' own keys are stored first):
//   s_j = scale * (q.k_j + alibi_bias(slope_h, j)), then softcap * tanh(s_j / softcap) when
//   softcap > 0; visible iff j <= i, (window <= 0 || i - j < window) and (chunk <= 0 ||
//   j / chunk == i / chunk); o = softmax(s) . v, with the head's sink logit (sinks: [H] in T, or
//   null) in the softmax's denominator. tau_scale > 0: the query is first multiplied by Llama 4's
//   temperature 1 + tau_scale * log1p(floor((i + 1) / tau_floor)).
// GQA: head h reads kv head h / (H / KV). ALiBi slopes f32 [H] (null: none). Keys are D wide,
// values (and o's heads) DV wide (DV = D but in latent attention); D, DV <= 256.
// Launch: grid (N, H), block 128: four warps take every fourth key each with an online softmax,
// then merge their (max, sum, acc) through shared memory. Traffic: each visible cached key and
// value row read once per query head (from L2 for the heads of one group).
#define DEC_WARPS 4
template <typename T>
__device__ void dec_attn(T* o, const T* q, const T* kc, const T* vc, const int* seq, const int* pos, int H, int KV,
                         int D, int DV, int ldq, int ldo, int L, float scale, float softcap, int window,
                         int chunk, const float* alibi, const T* sinks, float tau_floor, float tau_scale) {
    __shared__ float s_m[DEC_WARPS], s_l[DEC_WARPS];
    __shared__ float s_acc[DEC_WARPS][256];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    size_t r = blockIdx.x;
    int h = blockIdx.y;
    int b = seq[r], i = pos[r];
    int g = h / (H / KV);
    const float slope = alibi ? alibi[h] : 0.f;
    const T* qr = q + r * ldq + (size_t)h * D;
    const T* kb = kc + ((size_t)b * KV + g) * L * D;
    const T* vb = vc + ((size_t)b * KV + g) * L * DV;
    float qv[ATTN_MAXD_LANE], acc[ATTN_MAXD_LANE] = {};
    attn_lane_load(qr, D, lane, qv);
    if (tau_scale > 0.f) {
        float tau = attn_temperature((float)i, tau_floor, tau_scale);
#pragma unroll
        for (int e = 0; e < ATTN_MAXD_LANE; e++) qv[e] = round_to<T>(qv[e] * tau);
    }
    float m = NEG_INF, l = 0.f;
    int j0 = attn_first_key(i, window, chunk);
    for (int j = j0 + warp; j <= i; j += DEC_WARPS) {
        const T* kr = kb + (size_t)j * D;
        const T* vr = vb + (size_t)j * DV;
        attn_online_key(qv, acc, kr, vr, D, DV, lane, alibi != nullptr, slope, j, scale, softcap, m, l);
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < ATTN_MAXD_LANE; e++) {
        int d = lane + 32 * e;
        if (d < DV) s_acc[warp][d] = acc[e];
    }
    __syncthreads();
    // Key i is always visible, so at least one warp has a finite maximum.
    float mx = NEG_INF;
    for (int w = 0; w < DEC_WARPS; w++) mx = fmaxf(mx, s_m[w]);
    const float sink = sinks ? lf(sinks + h) : NEG_INF;
    mx = fmaxf(mx, sink);
    float total = sinks ? __expf(sink - mx) : 0.f, wgt[DEC_WARPS];
    for (int w = 0; w < DEC_WARPS; w++) {
        wgt[w] = s_l[w] > 0.f ? __expf(s_m[w] - mx) : 0.f;
        total += s_l[w] * wgt[w];
    }
    float inv = total > 0.f ? 1.f / total : 0.f;
    T* orow = o + r * ldo + (size_t)h * DV;
    for (int d = threadIdx.x; d < DV; d += blockDim.x) {
        float a = 0.f;
        for (int w = 0; w < DEC_WARPS; w++) a += s_acc[w][d] * wgt[w];
        sf(orow + d, a * inv);
    }
}

// dec_gather_{dtype}: out[b] = x[rows[b]] for B rows of width C (each sequence's last new row).
// Launch: grid B, block 256.
template <typename T>
__device__ void dec_gather(T* out, const T* x, const int* rows, int C) {
    size_t b = blockIdx.x;
    size_t r = rows[b];
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[b * C + c] = x[r * C + c];
}

// dec_logits_{dtype}: out (f32) = softcap * tanh(x / softcap), or x when softcap <= 0, over n
// elements (the final logit softcap, and the copy the host downloads). One thread per element.
template <typename T>
__device__ void dec_logits(float* out, const T* x, size_t n, float softcap) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = lf(x + i);
    out[i] = softcap > 0.f ? softcap * tanhf(v / softcap) : v;
}

#define DECODE_INSTANTIATE(SUF, T)                                                                   \
    extern "C" __global__ void dec_embed_##SUF(T* out, const int* tok, const int* pos, const T* wte,  \
                                               const T* wpe, int C, float scale) {                    \
        dec_embed<T>(out, tok, pos, wte, wpe, C, scale);                                              \
    }                                                                                                \
    extern "C" __global__ void dec_rope_##SUF(T* x, const float* c, const float* s, const int* pos,   \
                                              int N, int heads, int D, int ld, int rot,               \
                                              int interleaved) {                                      \
        dec_rope<T>(x, c, s, pos, N, heads, D, ld, rot, interleaved);                                 \
    }                                                                                                \
    extern "C" __global__ void dec_kv_store_##SUF(T* kc, T* vc, const T* k, const T* v,               \
                                                  const int* seq, const int* pos, int N, int KV,      \
                                                  int D, int ld, int L) {                             \
        dec_kv_store<T>(kc, vc, k, v, seq, pos, N, KV, D, ld, L);                                     \
    }                                                                                                \
    extern "C" __global__ void dec_attn_##SUF(T* o, const T* q, const T* kc, const T* vc,             \
                                              const int* seq, const int* pos, int H, int KV, int D,   \
                                              int DV, int ldq, int ldo, int L, float scale,           \
                                              float softcap, int window, int chunk,                   \
                                              const float* alibi, const T* sinks, float tau_floor,    \
                                              float tau_scale) {                                      \
        dec_attn<T>(o, q, kc, vc, seq, pos, H, KV, D, DV, ldq, ldo, L, scale, softcap, window, chunk, \
                    alibi, sinks, tau_floor, tau_scale);                                              \
    }                                                                                                \
    extern "C" __global__ void dec_mla_store_##SUF(T* lat, T* pe, const T* latent, int ldl,           \
                                                   const T* k_pe, int ldp, const int* seq,            \
                                                   const int* pos, int N, int R, int ROPE, int L) {   \
        dec_mla_store<T>(lat, pe, latent, ldl, k_pe, ldp, seq, pos, N, R, ROPE, L);                   \
    }                                                                                                \
    extern "C" __global__ void dec_mla_expand_##SUF(T* kc, T* vc, const T* kv, const T* pe, int B,    \
                                                    int L, int used, int H, int NOPE, int ROPE,       \
                                                    int DV) {                                         \
        dec_mla_expand<T>(kc, vc, kv, pe, B, L, used, H, NOPE, ROPE, DV);                             \
    }                                                                                                \
    extern "C" __global__ void dec_gather_##SUF(T* out, const T* x, const int* rows, int C) {         \
        dec_gather<T>(out, x, rows, C);                                                               \
    }                                                                                                \
    extern "C" __global__ void dec_logits_##SUF(float* out, const T* x, size_t n, float softcap) {    \
        dec_logits<T>(out, x, n, softcap);                                                            \
    }
DECODE_INSTANTIATE(f32, float)
DECODE_INSTANTIATE(bf16, bf16)

// dec_argmax: out[b] = the index of the largest of the first V logits of row b (f32, row stride
// ld); ties go to the lower index and NaN never wins, as the host sampler's greedy pick.
// Launch: grid B, block 256. Traffic: one read of V logits per row.
extern "C" __global__ void dec_argmax(int* out, const float* logits, int V, int ld) {
    __shared__ float s_v[256];
    __shared__ int s_i[256];
    const float* row = logits + (size_t)blockIdx.x * ld;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = row[j];
        if (v > best || (v == best && j < bi)) {
            best = v;
            bi = j;
        }
    }
    s_v[threadIdx.x] = best;
    s_i[threadIdx.x] = bi;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            float v = s_v[threadIdx.x + w];
            int j = s_i[threadIdx.x + w];
            if (v > s_v[threadIdx.x] || (v == s_v[threadIdx.x] && j < s_i[threadIdx.x])) {
                s_v[threadIdx.x] = v;
                s_i[threadIdx.x] = j;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s_i[0] == 0x7fffffff ? 0 : s_i[0];
}
