model gemma {
    vocab 64   d_model 24   layers 2   context 64
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)
    attention { heads 6  kv_heads 2  head_dim 8 }
    position rope(theta = 1000)
    mlp geglu_tanh(hidden = 40)
}
