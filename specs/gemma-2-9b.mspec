# Gemma 2 9B, HF `google/gemma-2-9b`.
# params: 9,241,705,984
#
# As Gemma 2 2B at 42 layers of width 3584 (16 heads of 256, 8 kv heads).
# query_pre_attn_scalar is 256 = head_dim: the default score scale.
model gemma_2_9b {
    vocab 256000   d_model 3584   layers 42   context 8192
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)   placement sandwich
    attention { heads 16  kv_heads 8  head_dim 256  softcap 50 }
    position rope(theta = 10000)
    mlp geglu_tanh(hidden = 14336)
    logits softcap 30
    layers[even] { attention.window 4096 }
}
