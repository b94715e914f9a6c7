# a qk-norm ordered after RoPE on layers without RoPE
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  qk_norm(rms(weight = false), order = after_rope) }
    position none
    mlp swiglu(hidden = 1024)
}
