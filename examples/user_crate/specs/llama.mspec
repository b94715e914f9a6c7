model llama {
    vocab 64   d_model 24   layers 2   context 64
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 2  head_dim 8  bias }
    position rope(theta = 500, scaling = llama3(factor = 4, low_freq_factor = 1, high_freq_factor = 4, original_context = 8))
    mlp swiglu(hidden = 40, bias = true)
}
