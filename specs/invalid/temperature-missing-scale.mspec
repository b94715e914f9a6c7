# a query temperature without its scale
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  temperature(floor = 8192) }
    mlp swiglu(hidden = 1024)
}
