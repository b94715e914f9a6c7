# a byte unit on a size
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  head_dim 64KiB }
    mlp swiglu(hidden = 1024)
}
