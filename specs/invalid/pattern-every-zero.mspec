# every 0 selects nothing
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
    layers[every 0] { attention.window 256 }
}
