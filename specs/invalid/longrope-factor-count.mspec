# longrope needs rotary_dims/2 factors
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
    position rope(scaling = longrope(short = [1, 1, 1], long = [2, 2, 2], original_context = 1024))
}
