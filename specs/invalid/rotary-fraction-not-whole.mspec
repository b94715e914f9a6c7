# head_dim x fraction must be a whole number
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    position rope(fraction = 0.3)
    mlp swiglu(hidden = 1024)
}
