// ---- RoPE: rotary position embedding of q and k, forward and backward, in place ----

// rope_{dtype}: rotate the first `rot` dims of every head of x [N, ld] in place (head h at
// column offset h*D), position t = n % T, tables cos/sin [T, rot/2] f32 built on the host.
// HalfSplit pairs (i, i + rot/2) as HF's rotate_half; interleaved pairs (2i, 2i+1).
// sign = +1 forward, -1 backward (the transpose of a rotation is the rotation by -theta).
// Launch: one thread per (token, head, pair): grid ceil(N*heads*rot/2 / 256), block 256.
// Traffic: reads and writes the rotated part of x once, reads the tables (cached).
template <typename T>
__device__ void rope(T* x, const float* cosv, const float* sinv, int N, int T_, int heads, int D,
                     int ld, int rot, int interleaved, float sign) {
    int half = rot / 2, h, i;
    size_t n;
    if (!rope_thread((size_t)blockIdx.x * blockDim.x + threadIdx.x, N, heads, half, &n, &h, &i)) return;
    int t = n % T_;
    float c = cosv[t * half + i], s = sign * sinv[t * half + i];
    rope_rotate(x + n * ld + (size_t)h * D, i, half, interleaved, c, s);
}

#define ROPE_INSTANTIATE(SUF, T)                                                                      \
    extern "C" __global__ void rope_##SUF(T* x, const float* c, const float* s, int N, int T_, int heads, \
                                          int D, int ld, int rot, int interleaved, float sign) {        \
        rope<T>(x, c, s, N, T_, heads, D, ld, rot, interleaved, sign);                                \
    }
ROPE_INSTANTIATE(f32, float)
ROPE_INSTANTIATE(bf16, bf16)
