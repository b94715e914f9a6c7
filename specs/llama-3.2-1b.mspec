# Llama 3.2 1B, HF `meta-llama/Llama-3.2-1B`.
# params: 1,235,814,400
#
# A small Llama 3: tied embeddings, GQA (32 query heads, 8 kv heads of 64), Llama 3 RoPE scaling.
model llama_3_2_1b {
    vocab 128256   d_model 2048   layers 16   context 131072
    embedding { tied }
    norm rms(eps = 1e-5)
    attention { heads 32  kv_heads 8  head_dim 64 }
    position rope(
        theta = 500000,
        scaling = llama3(factor = 32, low_freq_factor = 1, high_freq_factor = 4, original_context = 8192),
    )
    mlp swiglu(hidden = 8192)
}
