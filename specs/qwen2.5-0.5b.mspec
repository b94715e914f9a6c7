# Qwen2.5 0.5B, HF `Qwen/Qwen2.5-0.5B`.
# params: 494,032,768
#
# Llama-style blocks with biases on q, k and v only, GQA (14 heads, 2 kv heads), tied embeddings.
model qwen2_5_0_5b {
    vocab 151936   d_model 896   layers 24   context 32768
    embedding { tied }
    norm rms(eps = 1e-6)
    attention { heads 14  kv_heads 2  qkv_bias }
    position rope(theta = 1e6)
    mlp swiglu(hidden = 4864)
}
