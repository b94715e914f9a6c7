# 12 experts cannot be cut into 5 equal groups
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  kv_heads 2 }
    moe {
        experts 12  top_k 2  expert swiglu(hidden = 256)
        router sigmoid_topk  groups 5  top_groups 2
    }
}
