model gemma2 {
    vocab 64   d_model 24   layers 2   context 64
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)  placement sandwich
    attention { heads 6  kv_heads 3  head_dim 8  softcap 3  scale 0.2886751345948129  window 5 }
    position rope(theta = 1000)
    mlp geglu_tanh(hidden = 40)
    logits { softcap 2.5 }
    layers[1] { attention { window none } }
}
