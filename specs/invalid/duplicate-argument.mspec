# a call argument given twice
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    norm rms(eps = 1e-6, eps = 1e-5)
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
}
