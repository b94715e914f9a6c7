# GPT-OSS 20B, HF `openai/gpt-oss-20b` (model_type gpt_oss).
# params: 20,914,757,184
#
# 20.9B in total; 4.19B a token passes through, 3.61B without the input embedding (the published
# "3.6B active"). Every layer is a mixture of 32 SwiGLU experts with biases, 4 per token (top-k of
# the biased router logits, then a softmax over those 4), GPT-OSS's clamped SwiGLU (limit 7,
# sigmoid slope 1.702). Attention: 64 query heads of 64 over 8 kv heads, q/k/v/o biases, a learned
# sink logit per head in each softmax's denominator; even layers slide over 128 positions, odd
# layers attend fully. YaRN (factor 32 over 4096 positions, correction range not truncated).
model gpt_oss_20b {
    vocab 201088   d_model 2880   layers 24   context 131072
    attention { heads 64  kv_heads 8  head_dim 64  bias  window 128  sinks }
    position rope(theta = 150000, scaling = yarn(factor = 32, original_context = 4096, beta_fast = 32, beta_slow = 1, attention_factor = 1.3465735902799727, truncate = false))
    moe { experts 32  top_k 4  expert swiglu(hidden = 2880, bias = true, limit = 7, alpha = 1.702)  router topk_softmax  router_bias }
    layers[odd] { attention { window none } }
}
