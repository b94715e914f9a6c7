// ---- MLP activations: forward and backward, plain and gated ----

// The spec's dense MLP, set by the library's instance (`#define MS_D_FF` / `MS_ACT`, both or
// neither): launches of exactly that width and kind run an instantiation where both are
// compile-time constants (the kind's switch folds away, the row split divides by a constant);
// other launches (MoE experts: their module has no instance; tests) pass them at run time.
#ifndef MS_D_FF
#define MS_D_FF 0
#endif
#ifndef MS_ACT
#define MS_ACT -1
#endif

// act_fwd_{dtype}: the MLP activation. kind: 0 gelu(erf), 1 gelu_tanh, 2 relu^2, 3 swiglu,
// 4 geglu(erf), 5 geglu_tanh (the codes of modelspec-dsl's codegen::act_code). Gated kinds
// compute act(gate) * up. gate/up rows have stride ld (they may be the two halves of one fused
// projection). out [N, hidden].
// Launch: block 256; with `vec` (hidden and ld multiples of 8 bf16 / 4 f32, every pointer 16-byte
// aligned: the launcher checks) one thread per 16 bytes of output, else one per element.
// Traffic: 2-3 x N*hidden elements.
__device__ __forceinline__ float act_apply(float x, int kind) {
    switch (kind) {
        case 0: case 4: return gelu_erf(x);
        case 1: case 5: return gelu_tanh(x);
        case 2: { float r = fmaxf(x, 0.f); return r * r; }
        default: return silu(x);
    }
}
__device__ __forceinline__ float act_grad(float x, int kind) {
    switch (kind) {
        case 0: case 4: return gelu_erf_grad(x);
        case 1: case 5: return gelu_tanh_grad(x);
        case 2: return x > 0.f ? 2.f * x : 0.f;
        default: return silu_grad(x);
    }
}
// HIDDEN > 0 / KIND >= 0: the width / kind as compile-time constants (the run-time arguments
// then equal them); 0 / -1: the run-time arguments.
template <typename T, int HIDDEN, int KIND>
__device__ void act_fwd(T* out, const T* gate, const T* up, int N, int hidden_rt, int ld, int kind_rt,
                        int vec) {
    const int hidden = HIDDEN > 0 ? HIDDEN : hidden_rt;
    const int kind = KIND >= 0 ? KIND : kind_rt;
    const bool gated = kind >= 3;
    if (vec) {
        // One thread per 16 bytes of a row (the launcher checks widths, stride and alignment).
        const int VN = 16 / (int)sizeof(T), hv = hidden / VN;
        size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (v >= (size_t)N * hv) return;
        size_t n = v / hv;
        int j = (int)(v - n * hv) * VN;
        float g[16 / sizeof(T)], u[16 / sizeof(T)];
        ld16(gate + n * ld + j, g);
        if (gated) ld16(up + n * ld + j, u);
#pragma unroll
        for (int e = 0; e < VN; e++) g[e] = act_apply(g[e], kind) * (gated ? u[e] : 1.f);
        st16(out + n * hidden + j, g);
        return;
    }
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * hidden) return;
    size_t n = idx / hidden, j = idx % hidden;
    float a = act_apply(lf(gate + n * ld + j), kind);
    if (gated) a *= lf(up + n * ld + j);
    sf(out + idx, a);
}
// act_bwd_{dtype}: dgate = dout * act'(gate) (* up); dup = dout * act(gate) (gated kinds).
// dgate/dup share the input's row stride ld. Launch and traffic as act_fwd; HIDDEN/KIND as there.
template <typename T, int HIDDEN, int KIND>
__device__ void act_bwd(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int N, int hidden_rt,
                        int ld, int kind_rt, int vec) {
    const int hidden = HIDDEN > 0 ? HIDDEN : hidden_rt;
    const int kind = KIND >= 0 ? KIND : kind_rt;
    const bool gated = kind >= 3;
    if (vec) {
        const int VN = 16 / (int)sizeof(T), hv = hidden / VN;
        size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (v >= (size_t)N * hv) return;
        size_t n = v / hv;
        int j = (int)(v - n * hv) * VN;
        float g[16 / sizeof(T)], u[16 / sizeof(T)], d[16 / sizeof(T)], dg[16 / sizeof(T)];
        ld16(gate + n * ld + j, g);
        ld16(dout + n * hidden + j, d);
        if (gated) {
            ld16(up + n * ld + j, u);
#pragma unroll
            for (int e = 0; e < VN; e++) {
                dg[e] = d[e] * u[e] * act_grad(g[e], kind);
                u[e] = d[e] * act_apply(g[e], kind);
            }
            st16(dup + n * ld + j, u);
        } else {
#pragma unroll
            for (int e = 0; e < VN; e++) dg[e] = d[e] * act_grad(g[e], kind);
        }
        st16(dgate + n * ld + j, dg);
        return;
    }
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * hidden) return;
    size_t n = idx / hidden, j = idx % hidden;
    float g = lf(gate + n * ld + j), d = lf(dout + idx);
    if (gated) {
        float u = lf(up + n * ld + j);
        sf(dgate + n * ld + j, d * u * act_grad(g, kind));
        sf(dup + n * ld + j, d * act_apply(g, kind));
    } else {
        sf(dgate + n * ld + j, d * act_grad(g, kind));
    }
}
// Whether a launch is the spec's dense MLP (the instantiation with compile-time width and kind).
__device__ __forceinline__ bool act_is_spec(int hidden, int kind) {
    return MS_D_FF > 0 && MS_ACT >= 0 && hidden == MS_D_FF && kind == MS_ACT;
}

// act_clamped_fwd_{dtype}: GPT-OSS's clamped SwiGLU (the CPU's activation::forward_clamped):
// g = min(gate, limit), u = clamp(up, -limit, limit), out = (u + 1) * (g * sigmoid(alpha * g)).
// gate/up rows have stride ld; out [N, hidden]. Launch: grid ceil(N * hidden / 256), block 256,
// one thread per element. Traffic: 3 x N*hidden elements.
template <typename T>
__device__ void act_clamped_fwd(T* out, const T* gate, const T* up, int N, int hidden, int ld, float alpha,
                                float limit) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * hidden) return;
    size_t n = idx / hidden, j = idx % hidden;
    float g = lf(gate + n * ld + j), u = lf(up + n * ld + j);
    g = g > limit ? limit : g;
    u = u > limit ? limit : (u < -limit ? -limit : u);
    float glu = g * (1.f / (1.f + __expf(-g * alpha)));
    sf(out + idx, (u + 1.f) * glu);
}
// act_clamped_bwd_{dtype}: its backward (activation::backward_clamped): dgate = dout * (u + 1) *
// d(g sigmoid(alpha g))/dg where gate <= limit (else 0), dup = dout * g sigmoid(alpha g) where
// -limit <= up <= limit (else 0): a clamped value passes no gradient, one at the bound does.
// Written, not accumulated; dgate/dup share the inputs' row stride ld. Launch and traffic as
// act_clamped_fwd (5 x N*hidden elements).
template <typename T>
__device__ void act_clamped_bwd(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int N,
                                int hidden, int ld, float alpha, float limit) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * hidden) return;
    size_t n = idx / hidden, j = idx % hidden;
    float gi = lf(gate + n * ld + j), ui = lf(up + n * ld + j), d = lf(dout + idx);
    float g = gi > limit ? limit : gi;
    bool inside = ui <= limit && ui >= -limit;
    float u = inside ? ui : (ui > limit ? limit : -limit);
    float s = 1.f / (1.f + __expf(-g * alpha));
    float dglu = s + g * alpha * s * (1.f - s);
    sf(dgate + n * ld + j, gi <= limit ? d * (u + 1.f) * dglu : 0.f);
    sf(dup + n * ld + j, inside ? d * g * s : 0.f);
}

#define ACT_INSTANTIATE(SUF, T)                                                                       \
    extern "C" __global__ void act_fwd_##SUF(T* out, const T* gate, const T* up, int N, int hidden,    \
                                             int ld, int kind, int vec) {                             \
        if (act_is_spec(hidden, kind))                                                                \
            act_fwd<T, MS_D_FF, MS_ACT>(out, gate, up, N, hidden, ld, kind, vec);                     \
        else                                                                                          \
            act_fwd<T, 0, -1>(out, gate, up, N, hidden, ld, kind, vec);                               \
    }                                                                                                 \
    extern "C" __global__ void act_bwd_##SUF(T* dgate, T* dup, const T* dout, const T* gate,           \
                                             const T* up, int N, int hidden, int ld, int kind,        \
                                             int vec) {                                               \
        if (act_is_spec(hidden, kind))                                                                \
            act_bwd<T, MS_D_FF, MS_ACT>(dgate, dup, dout, gate, up, N, hidden, ld, kind, vec);        \
        else                                                                                          \
            act_bwd<T, 0, -1>(dgate, dup, dout, gate, up, N, hidden, ld, kind, vec);                  \
    }                                                                                                 \
    extern "C" __global__ void act_clamped_fwd_##SUF(T* out, const T* gate, const T* up, int N,        \
                                                     int hidden, int ld, float alpha, float limit) {  \
        act_clamped_fwd<T>(out, gate, up, N, hidden, ld, alpha, limit);                               \
    }                                                                                                 \
    extern "C" __global__ void act_clamped_bwd_##SUF(T* dgate, T* dup, const T* dout, const T* gate,   \
                                                     const T* up, int N, int hidden, int ld,          \
                                                     float alpha, float limit) {                      \
        act_clamped_bwd<T>(dgate, dup, dout, gate, up, N, hidden, ld, alpha, limit);                  \
    }
ACT_INSTANTIATE(f32, float)
ACT_INSTANTIATE(bf16, bf16)
