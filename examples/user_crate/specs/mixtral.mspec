model mixtral {
    vocab 64   d_model 24   layers 2   context 64
    attention { heads 6  kv_heads 2  head_dim 8  window 5 }
    position rope(theta = 300)
    moe { experts 4  top_k 2  expert swiglu(hidden = 20)  renormalize }
}
