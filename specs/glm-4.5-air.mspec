# GLM-4.5-Air, HF `zai-org/GLM-4.5-Air` (model_type glm4_moe).
# params: 106,852,245,504
#
# 106.9B in total, 13.4B a token passes through (12.2B without the embedding and the head, the
# published "12B active"). The first layer is a dense SwiGLU; the other 45 are a mixture of 128
# small SwiGLU experts, 8 per token, plus one always-on shared expert of the same width. The
# router is DeepSeek-V3's: a sigmoid score per expert, experts chosen on the score plus a learned
# correction bias (a buffer HF does not count as a parameter), the chosen scores renormalised to
# sum 1. GQA with 8 kv heads of width 128 (96 query heads on a 4096 stream), q/k/v biases, rotary
# on half of each head. The checkpoint's multi-token-prediction layer (layer 46) is not part of
# the model transformers builds, nor of this spec.
model glm_4_5_air {
    vocab 151552   d_model 4096   layers 46   context 131072
    norm rms(eps = 1e-5)
    attention { heads 96  kv_heads 8  head_dim 128  qkv_bias }
    position rope(theta = 1e6, fraction = 0.5)
    moe {
        experts 128  top_k 8
        expert swiglu(hidden = 1408)
        router sigmoid_topk  renormalize  correction_bias
        shared(count = 1, hidden = 1408)
    }
    layers[0] { mlp swiglu(hidden = 10944) }
}
