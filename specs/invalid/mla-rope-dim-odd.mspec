# latent attention's rotary part must be even: RoPE rotates pairs
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  mla(q_rank = 96, kv_rank = 64, nope_dim = 32, rope_dim = 15, v_dim = 32) }
    mlp swiglu(hidden = 1024)
}
