model qwen3_moe {
    vocab 64   d_model 24   layers 2   context 64
    embedding { tied }
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 2  head_dim 8  qk_norm rms(eps = 1e-6) }
    position rope(theta = 1000, scaling = linear(factor = 2))
    mlp swiglu(hidden = 28)
    layers[1] { moe { experts 4  top_k 2  expert swiglu(hidden = 12, bias = false)  router softmax_topk  renormalize  shared none  aux_loss 0 } }
}
