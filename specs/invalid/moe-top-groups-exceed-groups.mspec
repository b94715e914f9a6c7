# DeepSeek-style group-limited routing that keeps more groups than there are
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  kv_heads 2 }
    moe {
        experts 16  top_k 4  expert swiglu(hidden = 256)
        router sigmoid_topk  renormalize  correction_bias
        groups 4  top_groups 6
    }
}
