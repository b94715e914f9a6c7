model gpt2 {
    vocab 64   d_model 24   layers 2   context 32
    embedding { tied }
    norm layer
    attention { heads 6  bias }
    position learned
    mlp gelu_tanh(hidden = 40, bias = true)
    weights { naming gpt2  qkv fused }
}
