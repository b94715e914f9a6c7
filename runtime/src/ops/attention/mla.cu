// ---- latent attention (DeepSeek-V2/V3): the per-head keys and values attention reads, from the
// latent's up-projection and the shared rotary key, and their gradients back ----
// kv [N, H*(NOPE+DV)] holds per head its key part (NOPE wide), then its value (DV wide); the
// shared rotary key pe [N, ROPE] is one head wide. Keys are H heads of NOPE+ROPE: the head's own
// key part, then pe (the same for every head; RoPE rotates it afterwards, in place, on every head,
// as it does the queries).

// mla_split_{dtype}: k [N, ld] with head h at column h*(NOPE+ROPE) = [kv[h, :NOPE]; pe], and
// v [N, ld] with head h at column h*DV = kv[h, NOPE:]; pe has row stride ldpe. Launch: one thread
// per (row, column of k and v), block 256. Traffic: reads kv and pe once (pe once per head, from
// cache), writes k and v.
template <typename T>
__device__ void mla_split(T* k, T* v, int ld, const T* kv, const T* pe, int ldpe, int N, int H, int NOPE,
                          int ROPE, int DV) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int KD = NOPE + ROPE, KVD = NOPE + DV, KW = H * KD;
    int W = KW + H * DV;
    if (idx >= (size_t)N * W) return;
    size_t r = idx / W;
    int c = (int)(idx % W);
    const T* kvr = kv + r * H * KVD;
    if (c < KW) {
        int h = c / KD, e = c % KD;
        float x = e < NOPE ? lf(kvr + h * KVD + e) : lf(pe + r * ldpe + (e - NOPE));
        sf(k + r * ld + c, x);
    } else {
        c -= KW;
        int h = c / DV, e = c % DV;
        sf(v + r * ld + c, lf(kvr + h * KVD + NOPE + e));
    }
}

// mla_merge_{dtype}: the transpose of mla_split: dkv [N, H*(NOPE+DV)] (written) from dk's key
// parts and dv, and dpe [N, ROPE] (written) the sum over the heads of dk's rotary parts, in head
// order (f32 sum, one thread per element: deterministic), row stride ldpe. dk, dv [N, ld] as k,
// v above. Launch: one thread per (row, column of dkv and dpe), block 256.
template <typename T>
__device__ void mla_merge(T* dkv, T* dpe, int ldpe, const T* dk, const T* dv, int ld, int N, int H, int NOPE,
                          int ROPE, int DV) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int KD = NOPE + ROPE, KVD = NOPE + DV, KVW = H * KVD;
    int W = KVW + ROPE;
    if (idx >= (size_t)N * W) return;
    size_t r = idx / W;
    int c = (int)(idx % W);
    if (c < KVW) {
        int h = c / KVD, e = c % KVD;
        float x = e < NOPE ? lf(dk + r * ld + h * KD + e) : lf(dv + r * ld + h * DV + (e - NOPE));
        sf(dkv + r * KVW + c, x);
    } else {
        int e = c - KVW;
        float s = 0.f;
        for (int h = 0; h < H; h++) s += lf(dk + r * ld + h * KD + NOPE + e);
        sf(dpe + r * ldpe + e, s);
    }
}

#define MLA_INSTANTIATE(SUF, T)                                                                       \
    extern "C" __global__ void mla_split_##SUF(T* k, T* v, int ld, const T* kv, const T* pe, int ldpe, \
                                               int N, int H, int NOPE, int ROPE, int DV) {           \
        mla_split<T>(k, v, ld, kv, pe, ldpe, N, H, NOPE, ROPE, DV);                                   \
    }                                                                                                 \
    extern "C" __global__ void mla_merge_##SUF(T* dkv, T* dpe, int ldpe, const T* dk, const T* dv,    \
                                               int ld, int N, int H, int NOPE, int ROPE, int DV) {   \
        mla_merge<T>(dkv, dpe, ldpe, dk, dv, ld, N, H, NOPE, ROPE, DV);                               \
    }
MLA_INSTANTIATE(f32, float)
MLA_INSTANTIATE(bf16, bf16)
