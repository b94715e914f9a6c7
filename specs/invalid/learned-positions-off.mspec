# learned positions without a position table
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
    position learned
    embedding { learned_positions = false }
}
