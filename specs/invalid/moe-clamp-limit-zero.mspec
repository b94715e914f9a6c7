# GPT-OSS's clamped SwiGLU with a clamp bound of zero
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  kv_heads 2 }
    moe {
        experts 8  top_k 2  expert swiglu(hidden = 256, bias, limit = 0, alpha = 1.702)
        router topk_softmax  router_bias
    }
}
