model qwen3 {
    vocab 64   d_model 24   layers 2   context 64
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 2  head_dim 10  bias  qk_norm rms(eps = 1e-6) }
    position rope(theta = 1000, scaling = yarn(factor = 2, original_context = 16, beta_fast = 16, beta_slow = 2, attention_factor = 1.0693147180559945))
    mlp swiglu(hidden = 40)
    layers[1] { attention { window 5 } }
}
