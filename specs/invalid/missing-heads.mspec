# attention.heads is required
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    mlp swiglu(hidden = 1024)
}
