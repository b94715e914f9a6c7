// ---- pointwise and small kernels: gradient sums, the gradient norm, bias add, copies, casts ----
// (AdamW's fused step is in runtime/src/ops/adamw/adamw.cu.)

// grad_sum_f32: sum = g (first) or sum + g, over n elements (gradient accumulation; the host adds
// micro-batch gradients in the same order). Grid-stride, block 256.
extern "C" __global__ void grad_sum_f32(float* sum, const float* g, size_t n, int first) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        sum[i] = first ? g[i] : __fadd_rn(sum[i], g[i]);
}

// sumsq_partials_f32: partial[b] = sum of x[i]^2 in f64 over the elements block b visits
// (grid-stride, then a fixed shared-memory tree): the same grid always adds in the same order, so
// the norm is deterministic. Launch: grid = the partials' count, block 256.
extern "C" __global__ void sumsq_partials_f32(const float* x, size_t n, double* partial) {
    __shared__ double acc[256];
    double s = 0.0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double v = (double)x[i];
        s += v * v;
    }
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = acc[0];
}

// sum_partials_f64: partial[count] = the sum of partial[0..count), one block of 256 in a fixed
// order.
extern "C" __global__ void sum_partials_f64(double* partial, int count) {
    __shared__ double acc[256];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[count] = acc[0];
}

// bias_add_{dtype}: x[n, j] += bias[j] for j < width, rows of stride ld. One thread per element.
template <typename T>
__device__ void bias_add(T* x, const T* bias, int N, int width, int ld) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * width) return;
    size_t n = idx / width, j = idx % width;
    sf(x + n * ld + j, lf(x + n * ld + j) + lf(bias + j));
}

// copy2d_{dtype}: dst[n, j] = src[n, j] for j < width, rows of strides ldd and lds (a column block
// of a fused [q; k; v] buffer to a contiguous one and back). One thread per element.
template <typename T>
__device__ void copy2d(T* dst, int ldd, const T* src, int lds, int N, int width) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * width) return;
    size_t n = idx / width, j = idx % width;
    dst[n * ldd + j] = src[n * lds + j];
}

// cast_{a}_to_{b}, add_{dtype} (out = a + b), scale_{dtype} (x *= s): one thread per element.
#define POINTWISE_INSTANTIATE(SUF, T)                                                                \
    extern "C" __global__ void bias_add_##SUF(T* x, const T* bias, int N, int width, int ld) {         \
        bias_add<T>(x, bias, N, width, ld);                                                           \
    }                                                                                                 \
    extern "C" __global__ void copy2d_##SUF(T* dst, int ldd, const T* src, int lds, int N, int width) { \
        copy2d<T>(dst, ldd, src, lds, N, width);                                                      \
    }                                                                                                 \
    extern "C" __global__ void add_##SUF(T* out, const T* a, const T* b, size_t n) {                   \
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;                                     \
        if (i < n) sf(out + i, lf(a + i) + lf(b + i));                                                \
    }                                                                                                 \
    extern "C" __global__ void scale_##SUF(T* x, float s, size_t n) {                                  \
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;                                     \
        if (i < n) sf(x + i, lf(x + i) * s);                                                          \
    }
POINTWISE_INSTANTIATE(f32, float)
POINTWISE_INSTANTIATE(bf16, bf16)

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(in[i]);
}
extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_to_f32(in[i]);
}
