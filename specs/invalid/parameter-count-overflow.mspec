# sizes whose product overflows u64
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  head_dim 1152921504606846976 }
    mlp swiglu(hidden = 1024)
}
