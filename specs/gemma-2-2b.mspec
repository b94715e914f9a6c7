# Gemma 2 2B, HF `google/gemma-2-2b`.
# params: 2,614,341,888
#
# Sandwich RMSNorms with Gemma's `x * (1 + w)`, embeddings scaled by sqrt(d_model) and tied,
# GeGLU with tanh GELU, attention logits capped at 50 and final logits at 30. Layers alternate
# local (sliding window 4096; layer 0 is local) and global attention. query_pre_attn_scalar is
# 256 = head_dim, so the score scale is the default 1/sqrt(256).
model gemma_2_2b {
    vocab 256000   d_model 2304   layers 26   context 8192
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)   placement sandwich
    attention { heads 8  kv_heads 4  head_dim 256  softcap 50 }
    position rope(theta = 10000)
    mlp geglu_tanh(hidden = 9216)
    logits softcap 30
    layers[even] { attention.window 4096 }
}
