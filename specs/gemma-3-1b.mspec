# Gemma 3 1B, HF `google/gemma-3-1b-pt`.
# params: 999,885,952
#
# Five local layers (sliding window 512, RoPE base 10000) then one global layer (RoPE base 1e6),
# repeating: layers 5, 11, 17 and 23 are global. Per-head qk RMSNorm replaces Gemma 2's softcap.
# Multi-query attention (4 query heads of 256 share one kv head).
model gemma_3_1b {
    vocab 262144   d_model 1152   layers 26   context 32768
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)   placement sandwich
    attention {
        heads 4  kv_heads 1  head_dim 256
        qk_norm rms(eps = 1e-6, offset = 1)
        window 512
    }
    position rope(theta = 10000)
    mlp geglu_tanh(hidden = 6912)
    layers[every 6 offset 5] {
        attention.window none
        position rope(theta = 1e6)
    }
}
