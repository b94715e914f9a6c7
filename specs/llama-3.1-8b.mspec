# Llama 3.1 8B, HF `meta-llama/Llama-3.1-8B`.
# params: 8,030,261,248
#
# Grouped-query attention (32 query heads share 8 key/value heads), RMSNorm, SwiGLU, and RoPE
# with Llama 3.1's piecewise frequency scaling for the 128K context.
model llama_3_1_8b {
    vocab 128256   d_model 4096   layers 32   context 131072
    norm rms(eps = 1e-5)
    attention { heads 32  kv_heads 8 }
    position rope(
        theta = 500000,
        scaling = llama3(factor = 8, low_freq_factor = 1, high_freq_factor = 4, original_context = 8192),
    )
    mlp swiglu(hidden = 14336)
}
