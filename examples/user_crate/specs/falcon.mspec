model falcon {
    vocab 64   d_model 24   layers 2   context 64
    embedding { tied }
    norm layer  parallel_residual
    attention { heads 6  kv_heads 2  bias }
    position rope(theta = 1000)
    mlp gelu(hidden = 40, bias = true)
    weights { naming falcon  qkv fused_per_head }
}
