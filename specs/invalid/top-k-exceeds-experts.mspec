# top_k larger than the number of experts
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    moe { experts 4  top_k 6  expert swiglu(hidden = 256) }
}
