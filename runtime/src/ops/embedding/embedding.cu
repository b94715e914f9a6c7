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
// embed_bwd_{dtype}: dwte[tok[n]] += dout[n] * scale; dwpe[n % T] += dout[n] (f32 atomics:
// tokens repeat). Launch: grid N, block 256. Traffic: reads dout once, N*C atomics.
template <typename T>
__device__ void embed_bwd(float* dwte, float* dwpe, const int* tok, const T* dout, int T_, int C, float scale) {
    size_t n = blockIdx.x;
    size_t id = tok[n];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = lf(dout + n * C + c);
        atomicAdd(dwte + id * C + c, d * scale);
        if (dwpe) atomicAdd(dwpe + (size_t)(n % T_) * C + c, d);
    }
}

#define EMBED_INSTANTIATE(SUF, T)                                                                     \
    extern "C" __global__ void embed_fwd_##SUF(T* out, const int* tok, const T* wte, const T* wpe,     \
                                               int T_, int C, float scale) {                          \
        embed_fwd<T>(out, tok, wte, wpe, T_, C, scale);                                               \
    }                                                                                                 \
    extern "C" __global__ void embed_bwd_##SUF(float* dwte, float* dwpe, const int* tok, const T* dout, \
                                               int T_, int C, float scale) {                          \
        embed_bwd<T>(dwte, dwpe, tok, dout, T_, C, scale);                                            \
    }
EMBED_INSTANTIATE(f32, float)
EMBED_INSTANTIATE(bf16, bf16)
