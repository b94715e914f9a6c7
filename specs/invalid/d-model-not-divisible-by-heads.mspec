# derived head_dim needs heads to divide d_model
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 7 }
    mlp swiglu(hidden = 1024)
}
