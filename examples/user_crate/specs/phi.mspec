model phi {
    vocab 64   d_model 32   layers 2   context 64
    norm layer  parallel_residual  shared_norm
    attention { heads 4  kv_heads 2  bias }
    position rope(theta = 1000, fraction = 0.5)
    mlp gelu_tanh(hidden = 40, bias = true)
    logits { bias }
    weights { naming phi }
}
