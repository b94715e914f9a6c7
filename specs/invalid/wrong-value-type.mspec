# a word where a number is expected
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads eight }
    mlp swiglu(hidden = 1024)
}
