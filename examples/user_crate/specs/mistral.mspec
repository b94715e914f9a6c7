model mistral {
    vocab 64   d_model 24   layers 2   context 64
    embedding { tied }
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 3  head_dim 6  window 5 }
    position rope(theta = 1000, scaling = linear(factor = 2.5))
    mlp swiglu(hidden = 40)
}
