# Falcon 7B, HF `tiiuae/falcon-7b`.
# params: 6,921,720,704
#
# Multi-query attention (71 query heads of 64 share one kv head), attention and MLP in parallel
# from one shared LayerNorm, exact-GELU MLP without biases, tied embeddings.
model falcon_7b {
    vocab 65024   d_model 4544   layers 32   context 2048
    embedding { tied }
    norm layer(eps = 1e-5)
    parallel_residual  shared_norm
    attention { heads 71  kv_heads 1 }
    position rope(theta = 10000)
    mlp gelu(hidden = 18176)
    # With one kv head the per-head grouping [q.., k, v] is the plain [q; k; v] layout.
    weights { naming falcon  qkv fused }
}
