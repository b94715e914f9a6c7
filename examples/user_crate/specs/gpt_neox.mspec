model gpt_neox {
    vocab 64   d_model 32   layers 2   context 64
    norm layer  parallel_residual
    attention { heads 4  bias }
    position rope(theta = 1000, fraction = 0.25, scaling = linear(factor = 2))
    mlp gelu(hidden = 40, bias = true)
    weights { naming gpt_neox  qkv fused_per_head }
}
