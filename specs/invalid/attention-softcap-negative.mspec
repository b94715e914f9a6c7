# attention softcap must be positive
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  softcap -50 }
    mlp swiglu(hidden = 1024)
}
