# a fraction where an integer is expected
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8.5 }
    mlp swiglu(hidden = 1024)
}
