# a qk-norm is not supported with latent attention (its latents have their own norm)
model broken {
    vocab 32000   d_model 512   layers 4   context 2048
    attention { heads 8  qk_norm rms(eps = 1e-6)  mla(kv_rank = 64, nope_dim = 32, rope_dim = 16, v_dim = 32) }
    mlp swiglu(hidden = 1024)
}
