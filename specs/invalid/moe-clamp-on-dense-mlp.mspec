# the clamped SwiGLU is written on a dense MLP
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024, limit = 7, alpha = 1.702)
}
