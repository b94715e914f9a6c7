model phi3 {
    vocab 64   d_model 36   layers 2   context 64
    attention { heads 6  kv_heads 2 }
    position rope(theta = 1000, scaling = longrope(short = [1, 1.3, 1.7], long = [1.5, 2.5, 4], original_context = 8, attention_factor = 1.4142135623730951))
    mlp swiglu(hidden = 40)
    weights { qkv fused  fused_gate_up }
}
