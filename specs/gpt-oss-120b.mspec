# GPT-OSS 120B, HF `openai/gpt-oss-120b` (model_type gpt_oss).
# params: 116,829,156,672
#
# 116.8B in total; 5.71B a token passes through, 5.13B without the input embedding (the published
# "5.1B active"). GPT-OSS 20B's block (sinks, alternating 128-window and full layers, YaRN, a
# clamped SwiGLU mixture with biases) with 36 layers of 128 experts, 4 per token.
model gpt_oss_120b {
    vocab 201088   d_model 2880   layers 36   context 131072
    attention { heads 64  kv_heads 8  head_dim 64  bias  window 128  sinks }
    position rope(theta = 150000, scaling = yarn(factor = 32, original_context = 4096, beta_fast = 32, beta_slow = 1, attention_factor = 1.3465735902799727, truncate = false))
    moe { experts 128  top_k 4  expert swiglu(hidden = 2880, bias = true, limit = 7, alpha = 1.702)  router topk_softmax  router_bias }
    layers[odd] { attention { window none } }
}
