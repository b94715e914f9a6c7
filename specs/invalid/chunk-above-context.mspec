# an attention chunk longer than the context
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  chunk 8192 }
    mlp swiglu(hidden = 1024)
}
