# a `)` where `}` closes the block
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8 )
    mlp swiglu(hidden = 1024)
}
