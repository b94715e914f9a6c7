# rotary_dims must not exceed head_dim
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    position rope(rotary_dims = 128)
    mlp swiglu(hidden = 1024)
}
