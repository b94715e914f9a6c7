# chunked attention and a sliding window on the same layers
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  window 128  chunk 256 }
    mlp swiglu(hidden = 1024)
}
