# Mixtral 8x7B v0.1, HF `mistralai/Mixtral-8x7B-v0.1`.
# params: 46,702,792,704
#
# Every layer is a mixture of 8 SwiGLU experts, 2 per token: softmax over all router logits,
# keep the top 2, renormalise them to sum to 1 (`block_sparse_moe` in the checkpoint).
# The published config has `router_aux_loss_coef` 0.02 but `output_router_logits` off, and
# transformers adds the load-balancing loss only with that flag: add `aux_loss 0.02` to the moe
# block to train with it.
model mixtral_8x7b {
    vocab 32000   d_model 4096   layers 32   context 32768
    norm rms(eps = 1e-5)
    attention { heads 32  kv_heads 8 }
    position rope(theta = 1e6)
    moe {
        experts 8  top_k 2
        expert swiglu(hidden = 14336)
        router softmax_topk  renormalize
    }
}
