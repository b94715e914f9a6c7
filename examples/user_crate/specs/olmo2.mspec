model olmo2 {
    vocab 64   d_model 24   layers 2   context 64
    placement post
    attention { heads 6  kv_heads 2  qk_norm(rms, scope = full) }
    position rope(theta = 500, scaling = llama3(factor = 8, low_freq_factor = 1, high_freq_factor = 2, original_context = 16))
    mlp swiglu(hidden = 40)
}
