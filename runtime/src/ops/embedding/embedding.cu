// ---- embedding: token rows (scaled, plus learned positions), forward and backward ----

// embed_fwd_{dtype}: out[n] = wte[tok[n]] * scale (+ wpe[n % T]). Launch: grid N, block 256.
// Traffic: reads one row of wte (and wpe) per token, writes N*C.
template <typename T>
__device__ void embed_fwd(T* out, const int* tok, const T* wte, const T* wpe, int T_, int C, float scale) {
    size_t n = blockIdx.x;
    size_t id = tok[n];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = lf(wte + id * C + c) * scale;
        if (wpe) v += lf(wpe + (size_t)(n % T_) * C + c);
        sf(out + n * C + c, v);
    }
}
// ---- the backward, deterministic: dwte[tok[n]] += dout[n] * scale; dwpe[n % T] += dout[n] ----
// Tokens repeat, so rows of dout add into one row of dwte. Instead of atomics (which add in
// arrival order: other bits every run), the host's plan (`scatter_plan` in mod.rs: `plan[0]` K
// pieces, `plan[1]` U tokens, then `order`, `piece`, `first`, each n-sized) fixes the order: each
// piece (at most SCATTER_PIECE positions of one token, in position order) is summed by one block,
// and each token's pieces are added to its row in piece order. A token with one piece (every
// token of a random batch, most of a text batch) is summed straight into its row.

// The token of piece k (k in [0, K)).
__device__ __forceinline__ int piece_token(const int* plan, const int* tok, int N, int k) {
    return tok[plan[2 + plan[2 + N + k]]];
}

// Whether piece k's token has other pieces (they are neighbours in the piece list).
__device__ __forceinline__ bool piece_shared(const int* plan, const int* tok, int N, int k) {
    int t = piece_token(plan, tok, N, k);
    return (k > 0 && piece_token(plan, tok, N, k - 1) == t) ||
           (k + 1 < plan[0] && piece_token(plan, tok, N, k + 1) == t);
}

// embed_bwd_pieces_{dtype}: partial[k] = Σ_{j in piece k} dout[order[j]] * scale, for the pieces
// of tokens with several. Launch: grid n (blocks past K return), block 256.
template <typename T>
__device__ void embed_bwd_pieces(float* partial, const int* plan, const int* tok, const T* dout, int N, int C,
                                 float scale) {
    int k = blockIdx.x;
    if (k >= plan[0] || !piece_shared(plan, tok, N, k)) return;
    const int* order = plan + 2;
    int s = plan[2 + N + k], e = plan[2 + N + k + 1];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.f;
        for (int j = s; j < e; j++) acc += lf(dout + (size_t)order[j] * C + c) * scale;
        partial[(size_t)k * C + c] = acc;
    }
}

// embed_bwd_rows_{dtype}: dwte[token u] += its one piece's rows (in position order), or its pieces'
// partial sums (in piece order). Launch: grid n (blocks past U return), block 256.
template <typename T>
__device__ void embed_bwd_rows(float* dwte, const int* plan, const int* tok, const T* dout, const float* partial,
                               int N, int C, float scale) {
    int u = blockIdx.x;
    if (u >= plan[1]) return;
    const int* order = plan + 2;
    const int* piece = plan + 2 + N;
    const int* first = plan + 3 + 2 * N;
    int p0 = first[u], p1 = first[u + 1];
    size_t row = piece_token(plan, tok, N, p0);
    float* dst = dwte + row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = dst[c];
        if (p1 - p0 == 1) {
            for (int j = piece[p0]; j < piece[p0 + 1]; j++) acc += lf(dout + (size_t)order[j] * C + c) * scale;
        } else {
            for (int k = p0; k < p1; k++) acc += partial[(size_t)k * C + c];
        }
        dst[c] = acc;
    }
}

// embed_bwd_pos_{dtype}: dwpe[t] += Σ_b dout[b * T + t], b in order. Launch: grid T, block 256.
template <typename T>
__device__ void embed_bwd_pos(float* dwpe, const T* dout, int B, int T_, int C) {
    size_t t = blockIdx.x;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = dwpe[t * C + c];
        for (int b = 0; b < B; b++) acc += lf(dout + ((size_t)b * T_ + t) * C + c);
        dwpe[t * C + c] = acc;
    }
}

#define EMBED_INSTANTIATE(SUF, T)                                                                     \
    extern "C" __global__ void embed_fwd_##SUF(T* out, const int* tok, const T* wte, const T* wpe,     \
                                               int T_, int C, float scale) {                          \
        embed_fwd<T>(out, tok, wte, wpe, T_, C, scale);                                               \
    }                                                                                                 \
    extern "C" __global__ void embed_bwd_pieces_##SUF(float* partial, const int* plan, const int* tok, \
                                                      const T* dout, int N, int C, float scale) {     \
        embed_bwd_pieces<T>(partial, plan, tok, dout, N, C, scale);                                   \
    }                                                                                                 \
    extern "C" __global__ void embed_bwd_rows_##SUF(float* dwte, const int* plan, const int* tok,      \
                                                    const T* dout, const float* partial, int N, int C, \
                                                    float scale) {                                    \
        embed_bwd_rows<T>(dwte, plan, tok, dout, partial, N, C, scale);                               \
    }                                                                                                 \
    extern "C" __global__ void embed_bwd_pos_##SUF(float* dwpe, const T* dout, int B, int T_, int C) { \
        embed_bwd_pos<T>(dwpe, dout, B, T_, C);                                                       \
    }
EMBED_INSTANTIATE(f32, float)
EMBED_INSTANTIATE(bf16, bf16)
