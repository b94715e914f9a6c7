# a negative routed scaling factor
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  kv_heads 2 }
    moe {
        experts 8  top_k 2  expert swiglu(hidden = 256)
        router sigmoid_topk  renormalize  routed_scale -2.5
    }
}
