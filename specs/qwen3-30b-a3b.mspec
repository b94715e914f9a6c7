# Qwen3 30B-A3B, HF `Qwen/Qwen3-30B-A3B`.
# params: 30,532,122,624
#
# Every layer is a mixture of 128 small SwiGLU experts (hidden 768), 8 per token, with the top-8
# router weights renormalised (norm_topk_prob). Per-head qk RMSNorm, GQA with 4 kv heads.
# The published config has `router_aux_loss_coef` 0.001 but `output_router_logits` off, and
# transformers adds the load-balancing loss only with that flag: add `aux_loss 0.001` to the moe
# block to train with it.
model qwen3_30b_a3b {
    vocab 151936   d_model 2048   layers 48   context 40960
    norm rms(eps = 1e-6)
    attention {
        heads 32  kv_heads 4  head_dim 128
        qk_norm rms(eps = 1e-6)
    }
    position rope(theta = 1e6)
    moe {
        experts 128  top_k 8
        expert swiglu(hidden = 768)
        router softmax_topk  renormalize
    }
}
