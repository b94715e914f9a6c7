model qwen2 {
    vocab 64   d_model 24   layers 2   context 64
    embedding { tied }
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 2  qkv_bias }
    position rope(theta = 1000, scaling = yarn(factor = 4, original_context = 16, beta_fast = 32, beta_slow = 1, attention_factor = 1.138629436111989))
    mlp swiglu(hidden = 40)
    layers[1] { attention { window 5 } }
}
