# a half-open range that is empty
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
    layers[3..3] { attention.window 256 }
}
