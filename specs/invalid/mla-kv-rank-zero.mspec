# the key/value latent needs a positive rank
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  mla(kv_rank = 0, nope_dim = 32, rope_dim = 16, v_dim = 32) }
    mlp swiglu(hidden = 1024)
}
