// ---- RoPE: rotary position embedding of q and k, forward and backward, in place ----

// The spec's RoPE launches, set by the library's instance (`#define MS_N_HEADS`, `MS_N_KV_HEADS`,
// `MS_HEAD_DIM`, `MS_ROPE_DIMS`, all four or none): a launch on q (MS_N_HEADS heads) or k
// (MS_N_KV_HEADS heads) of that head dim and rotary dims runs an instantiation where the heads,
// head dim and pairs per head are compile-time constants (the per-thread index split divides by
// constants); other launches (latent attention's rope heads, tests) pass them at run time.
#ifndef MS_ROPE_DIMS
#define MS_ROPE_DIMS 0
#endif
#ifndef MS_HEAD_DIM
#define MS_HEAD_DIM 0
#endif
#ifndef MS_N_HEADS
#define MS_N_HEADS 0
#endif
#ifndef MS_N_KV_HEADS
#define MS_N_KV_HEADS 0
#endif

// rope_{dtype}: rotate the first `rot` dims of every head of x [N, ld] in place (head h at
// column offset h*D), position t = n % T, tables cos/sin [T, rot/2] f32 built on the host.
// HalfSplit pairs (i, i + rot/2) as HF's rotate_half; interleaved pairs (2i, 2i+1).
// sign = +1 forward, -1 backward (the transpose of a rotation is the rotation by -theta).
// HEADS / DH / ROT > 0: those as compile-time constants (the run-time arguments then equal
// them); 0: the run-time arguments.
// Launch: one thread per (token, head, pair): grid ceil(N*heads*rot/2 / 256), block 256.
// Traffic: reads and writes the rotated part of x once, reads the tables (cached).
template <typename T, int HEADS, int DH, int ROT>
__device__ void rope(T* x, const float* cosv, const float* sinv, int N, int T_, int heads_rt, int D_rt,
                     int ld, int rot_rt, int interleaved, float sign) {
    const int heads = HEADS > 0 ? HEADS : heads_rt, D = DH > 0 ? DH : D_rt;
    const int half = (ROT > 0 ? ROT : rot_rt) / 2;
    int h, i;
    size_t n;
    if (!rope_thread((size_t)blockIdx.x * blockDim.x + threadIdx.x, N, heads, half, &n, &h, &i)) return;
    int t = n % T_;
    float c = cosv[t * half + i], s = sign * sinv[t * half + i];
    rope_rotate(x + n * ld + (size_t)h * D, i, half, interleaved, c, s);
}
// Whether a launch has the spec's head dim and rotary dims over `spec_heads` heads.
__device__ __forceinline__ bool rope_is_spec(int heads, int D, int rot, int spec_heads) {
    return MS_ROPE_DIMS > 0 && D == MS_HEAD_DIM && rot == MS_ROPE_DIMS && heads == spec_heads;
}

#define ROPE_INSTANTIATE(SUF, T)                                                                          \
    extern "C" __global__ void rope_##SUF(T* x, const float* c, const float* s, int N, int T_, int heads, \
                                          int D, int ld, int rot, int interleaved, float sign) {          \
        if (rope_is_spec(heads, D, rot, MS_N_HEADS))                                                      \
            rope<T, MS_N_HEADS, MS_HEAD_DIM, MS_ROPE_DIMS>(x, c, s, N, T_, heads, D, ld, rot, interleaved, \
                                                           sign);                                         \
        else if (rope_is_spec(heads, D, rot, MS_N_KV_HEADS))                                              \
            rope<T, MS_N_KV_HEADS, MS_HEAD_DIM, MS_ROPE_DIMS>(x, c, s, N, T_, heads, D, ld, rot,          \
                                                              interleaved, sign);                         \
        else                                                                                              \
            rope<T, 0, 0, 0>(x, c, s, N, T_, heads, D, ld, rot, interleaved, sign);                       \
    }
ROPE_INSTANTIATE(f32, float)
ROPE_INSTANTIATE(bf16, bf16)
