# DeepSeek-V2-Lite, HF `deepseek-ai/DeepSeek-V2-Lite` (model_type deepseek_v2).
# params: 15,706,484,224
#
# 15.7B in total; 2.66B a token passes through, 2.45B without the input embedding (the published
# "2.4B activated"). Multi-head latent attention without a query latent (a direct query
# projection): keys and values through one 512-rank latent plus a 64-wide rotary key shared by the
# 16 heads (query/key width 128 + 64, value width 128), 576 cached values a token and layer
# instead of 16 × 320. YaRN ×40 with mscale 0.707 for cos/sin and the softmax. Layer 0 is a dense
# SwiGLU; the other 26 route each token to the 6 best of 64 experts by softmax score (not
# renormalised) beside two shared experts.
model deepseek_v2_lite {
    vocab 102400   d_model 2048   layers 27   context 163840
    norm rms(eps = 1e-6)
    attention { heads 16  mla(kv_rank = 512, nope_dim = 128, rope_dim = 64, v_dim = 128) }
    position rope(style = interleaved,
                  scaling = yarn(factor = 40, original_context = 4096, mscale = 0.707, mscale_all_dim = 0.707))
    moe {
        experts 64  top_k 6
        expert swiglu(hidden = 1408)
        shared(count = 2, hidden = 1408)
    }
    layers[0] { mlp swiglu(hidden = 10944) }
}
