// ---- fused classifier tail: softcap + log-softmax + NLL + its gradient, in place ----

// xent_{dtype}: for each row n of logits [N, ld] (V valid columns), with z = softcap ?
// cap * tanh(l / cap) : l:
//   loss[n] = logsumexp(z) - z[target[n]]   (0 when target < 0: ignored position)
//   when write_grad: logits[n, j] <- dscale * (softmax(z)_j - [j == target]) * dz/dl
// (columns V..ld, the padded vocabulary, become 0) so the logits chunk buffer becomes d(loss * dscale)/d(logits) without any extra buffer. The
// caller feeds this a chunk of rows at a time, so full [N, V] logits never exist at once.
// Launch: grid rows, block 512. Traffic: reads the row twice (max/sum pass, grad pass), writes it once.
// The spec's padded vocabulary (`#define MS_VOCAB_PADDED`, set by the library's instance): chunks
// whose row stride is exactly that (the classifier's) run an instantiation with the stride as a
// compile-time constant; other strides (tests) pass it at run time (LD = 0).
#ifndef MS_VOCAB_PADDED
#define MS_VOCAB_PADDED 0
#endif
template <typename T, int LD>
__device__ void xent(T* logits, float* loss, const int* target, int V, int ld_, float softcap, float dscale,
                     int write_grad) {
    const int ld = LD ? LD : ld_;
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    T* lr = logits + row * ld;
    int tgt = target[row];
    float mx = NEG_INF, s = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float z = lf(lr + j);
        if (softcap > 0.f) z = softcap * tanhf(z / softcap);
        if (z > mx) {
            s = s * __expf(mx - z) + 1.f;
            mx = z;
        } else {
            s += __expf(z - mx);
        }
    }
    float gmx = block_max(mx, scratch);
    s = (mx == NEG_INF) ? 0.f : s * __expf(mx - gmx);
    float gs = block_sum(s, scratch);
    float lse = gmx + __logf(gs);
    if (threadIdx.x == 0) {
        float zt = 0.f;
        if (tgt >= 0) {
            zt = lf(lr + tgt);
            if (softcap > 0.f) zt = softcap * tanhf(zt / softcap);
        }
        loss[row] = tgt >= 0 ? lse - zt : 0.f;
    }
    __syncthreads();  // thread 0 read lr[tgt] before anyone overwrites it
    if (!write_grad) return;
    for (int j = threadIdx.x; j < ld; j += blockDim.x) {
        if (j >= V) {  // padded vocabulary rows get no gradient
            sf(lr + j, 0.f);
            continue;
        }
        float l = lf(lr + j);
        float z = l, dzdl = 1.f;
        if (softcap > 0.f) {
            float t = tanhf(l / softcap);
            z = softcap * t;
            dzdl = 1.f - t * t;
        }
        float g = tgt >= 0 ? (__expf(z - lse) - (j == tgt ? 1.f : 0.f)) * dscale * dzdl : 0.f;
        sf(lr + j, g);
    }
}
#define XENT_INSTANTIATE(SUF, T)                                                                     \
    extern "C" __global__ void xent_##SUF(T* logits, float* loss, const int* target, int V, int ld,   \
                                          float softcap, float dscale, int write_grad) {             \
        if (MS_VOCAB_PADDED && ld == MS_VOCAB_PADDED)                                                \
            xent<T, MS_VOCAB_PADDED>(logits, loss, target, V, ld, softcap, dscale, write_grad);       \
        else                                                                                         \
            xent<T, 0>(logits, loss, target, V, ld, softcap, dscale, write_grad);                    \
    }
XENT_INSTANTIATE(f32, float)
XENT_INSTANTIATE(bf16, bf16)
