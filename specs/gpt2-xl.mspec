# GPT-2 XL (1.5B), HF `openai-community/gpt2-xl`.
# params: 1,557,611,200
#
# The GPT-2 architecture at 48 layers of width 1600 (25 heads of 64).
model gpt2_xl {
    vocab 50257   d_model 1600   layers 48   context 1024
    dropout 0.1
    embedding { tied }
    norm layer(eps = 1e-5)
    attention { heads 25  bias }
    position learned
    mlp gelu_tanh(hidden = 6400, bias = true)
    weights { naming gpt2  qkv fused }
}
