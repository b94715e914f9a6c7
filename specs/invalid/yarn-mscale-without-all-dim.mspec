# DeepSeek's yarn mscale comes with mscale_all_dim
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8 }
    position rope(scaling = yarn(factor = 4, original_context = 512, mscale = 0.7))
    mlp swiglu(hidden = 1024)
}
