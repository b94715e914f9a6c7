// ---- fused classifier tail: softcap + log-softmax + NLL + its gradient, in place ----

// The spec's padded vocabulary (`#define MS_VOCAB_PADDED`, set by the library's instance): chunks
// whose row stride is exactly that (the classifier's) run an instantiation with the stride as a
// compile-time constant; other strides (tests) pass it at run time (LD = 0).
#ifndef MS_VOCAB_PADDED
#define MS_VOCAB_PADDED 0
#endif

// One logit of the online log-sum-exp: running max `mx` and sum `s` of exp(z - mx).
__device__ __forceinline__ void lse_push(float z, float& mx, float& s) {
    if (z > mx) {
        s = s * __expf(mx - z) + 1.f;
        mx = z;
    } else {
        s += __expf(z - mx);
    }
}

// xent_{dtype}: for each row n of logits [N, ld] (V valid columns), with z = softcap ?
// cap * tanh(l / cap) : l:
//   loss[n] = logsumexp(z) - z[target[n]]   (0 when target < 0: ignored position)
//   when write_grad: logits[n, j] <- dscale * (softmax(z)_j - [j == target]) * dz/dl
// (columns V..ld become 0; the trainer passes V = ld, as its softmax spans the padded
// vocabulary like the CPU executor's and the exported HF model's) so the logits chunk buffer becomes
// d(loss * dscale)/d(logits) without any extra buffer. The caller feeds this a chunk of rows at a
// time, so full [N, V] logits never exist at once.
// Launch: grid rows, block 512. Traffic: reads the row twice (max/sum pass, grad pass; the second
// mostly from L2), writes it once; 16-byte vector accesses when the rows are 16-byte aligned and
// the stride a multiple of the vector (8 bf16 / 4 f32), else element by element.
template <typename T, int LD>
__device__ void xent(T* logits, float* loss, const int* target, int V, int ld_, float softcap, float dscale,
                     int write_grad) {
    const int ld = LD ? LD : ld_;
    const int VN = 16 / (int)sizeof(T);
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    T* lr = logits + row * ld;
    int tgt = target[row];
    const bool vec = (ld % VN == 0) && (((size_t)logits & 15) == 0);
    const int vv = vec ? (V / VN) * VN : 0;  // columns [0, vv) in vectors, [vv, V) one by one
    float mx = NEG_INF, s = 0.f;
    for (int j0 = threadIdx.x * VN; j0 < vv; j0 += blockDim.x * VN) {
        float z[16 / sizeof(T)];
        ld16(lr + j0, z);
#pragma unroll
        for (int e = 0; e < VN; e++) {
            float ze = softcap > 0.f ? softcap * tanhf(z[e] / softcap) : z[e];
            lse_push(ze, mx, s);
        }
    }
    for (int j = vv + threadIdx.x; j < V; j += blockDim.x) {
        float z = lf(lr + j);
        if (softcap > 0.f) z = softcap * tanhf(z / softcap);
        lse_push(z, mx, s);
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
    // d(loss)/d(logit j): padded columns (j >= V) and ignored rows get 0.
    auto grad = [&](int j, float l) -> float {
        if (j >= V || tgt < 0) return 0.f;
        float z = l, dzdl = 1.f;
        if (softcap > 0.f) {
            float t = tanhf(l / softcap);
            z = softcap * t;
            dzdl = 1.f - t * t;
        }
        return (__expf(z - lse) - (j == tgt ? 1.f : 0.f)) * dscale * dzdl;
    };
    if (vec) {
        for (int j0 = threadIdx.x * VN; j0 < ld; j0 += blockDim.x * VN) {
            float l[16 / sizeof(T)];
            ld16(lr + j0, l);
#pragma unroll
            for (int e = 0; e < VN; e++) l[e] = grad(j0 + e, l[e]);
            st16(lr + j0, l);
        }
    } else {
        for (int j = threadIdx.x; j < ld; j += blockDim.x) sf(lr + j, grad(j, lf(lr + j)));
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
