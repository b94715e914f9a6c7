# DeepSeek-V3 (671B), HF `deepseek-ai/DeepSeek-V3` (model_type deepseek_v3).
# params: 671,026,404,352
#
# 671.0B in total as transformers builds it: the checkpoint's multi-token-prediction module
# (layer 61, `num_nextn_predict_layers`, the rest of the 685B on the Hub) is not part of the model
# transformers instantiates, nor of this spec. 37.6B a token passes through, 36.6B without the
# input embedding (the published "37B activated"). Multi-head latent attention: queries through a
# 1536-rank latent, keys and values through one 512-rank latent plus a 64-wide rotary key shared
# by the 128 heads (query/key width 128 + 64, value width 128), so a decoder caches 576 values a
# token and layer instead of 128 × 320. YaRN ×40 over 4096 positions with DeepSeek's mscale pair,
# which also sharpens the softmax by m(1)². The first three layers are dense SwiGLU; the other
# 58 route each token to 8 of 256 small experts (sigmoid scores, a selection-only correction
# bias, the best 4 of 8 groups, renormalised and scaled by 2.5) beside one shared expert.
model deepseek_v3 {
    vocab 129280   d_model 7168   layers 61   context 163840
    norm rms(eps = 1e-6)
    attention { heads 128  mla(q_rank = 1536, kv_rank = 512, nope_dim = 128, rope_dim = 64, v_dim = 128) }
    position rope(style = interleaved,
                  scaling = yarn(factor = 40, original_context = 4096, mscale = 1, mscale_all_dim = 1))
    moe {
        experts 256  top_k 8
        expert swiglu(hidden = 2048)
        router sigmoid_topk  renormalize  correction_bias  groups 8  top_groups 4  routed_scale 2.5
        shared(count = 1, hidden = 2048)
    }
    layers[0..3] { mlp swiglu(hidden = 18432) }
}
