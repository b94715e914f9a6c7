# OLMo 2 7B, HF `allenai/OLMo-2-1124-7B`.
# params: 7,298,617,344
#
# Norms after each sub-block (`x + norm(f(x))`, no pre-norm) and RMSNorm over the whole q and k
# projections (not per head).
model olmo_2_7b {
    vocab 100352   d_model 4096   layers 32   context 4096
    norm rms(eps = 1e-6)   placement post
    attention {
        heads 32
        qk_norm(rms(eps = 1e-6), scope = full)
    }
    position rope(theta = 500000)
    mlp swiglu(hidden = 11008)
}
