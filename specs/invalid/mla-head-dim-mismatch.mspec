# with latent attention head_dim is nope_dim + rope_dim
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  head_dim 64  mla(kv_rank = 64, nope_dim = 32, rope_dim = 16, v_dim = 32) }
    mlp swiglu(hidden = 1024)
}
