model gemma3_text {
    vocab 64   d_model 24   layers 3   context 64
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)  placement sandwich
    attention { heads 6  kv_heads 2  head_dim 8  qk_norm rms(eps = 1e-6, offset = 1)  scale 0.31622776601683794  window 5 }
    position rope(theta = 100)
    mlp geglu_tanh(hidden = 40)
    layers[1] {
        attention { window none }
        position rope(theta = 10000, scaling = linear(factor = 2))
    }
}
