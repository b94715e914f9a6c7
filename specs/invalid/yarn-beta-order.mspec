# yarn needs beta_fast > beta_slow
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
    position rope(scaling = yarn(factor = 4, original_context = 2048, beta_fast = 1, beta_slow = 32))
}
