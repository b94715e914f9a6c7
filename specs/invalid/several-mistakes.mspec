# independent mistakes are all reported
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 3  window 0 }
    mlp swiglu(hidden = 1024)
    dropout 2
}
