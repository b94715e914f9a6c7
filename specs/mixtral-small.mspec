# A small Mixtral: the `mixtral_small` model of the PyTorch training anchor (torch_train_bench.py,
# `MixtralConfig(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
# num_attention_heads=16, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
# max_position_embeddings=2048)` with transformers' other defaults).
# params: 791,233,536
#
# Eight SwiGLU experts, two per token: softmax over the router logits, keep the top two,
# renormalise. transformers leaves the auxiliary loss out of the training loss unless
# `output_router_logits` is set, so the benchmark's loss has none either.
model mixtral_small {
    vocab 32000   d_model 1024   layers 8   context 2048
    norm rms(eps = 1e-5)
    attention { heads 16  kv_heads 4 }
    position rope(theta = 1e6)
    moe {
        experts 8  top_k 2
        expert swiglu(hidden = 3584)
        router softmax_topk  renormalize
    }
}
