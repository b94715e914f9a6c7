# a sliding window of 0
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  window 0 }
    mlp swiglu(hidden = 1024)
}
