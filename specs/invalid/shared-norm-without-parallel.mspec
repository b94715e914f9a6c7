# shared_norm needs parallel_residual
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    shared_norm
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
}
