model qwen2_moe {
    vocab 64   d_model 24   layers 2   context 64
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 3  qkv_bias }
    position rope(theta = 1000, scaling = dynamic_ntk(factor = 3, original_context = 64))
    moe { experts 4  top_k 2  expert swiglu(hidden = 12)  shared(count = 1, hidden = 20, gate = true) }
    layers[1] { mlp swiglu(hidden = 28, bias = false) }
}
