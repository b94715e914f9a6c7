# GPT-2 small (124M), HF `openai-community/gpt2`.
# params: 124,439,808
#
# Learned absolute positions, pre-LayerNorm, GELU (tanh approximation, HF's `gelu_new`) MLP,
# biases everywhere, lm_head tied to the token embedding. Checkpoints store q/k/v as one Conv1D.
model gpt2_124m {
    vocab 50257   d_model 768   layers 12   context 1024
    dropout 0.1
    embedding { tied }
    norm layer(eps = 1e-5)
    attention { heads 12  bias }
    position learned
    mlp gelu_tanh(hidden = 3072, bias = true)
    weights { naming gpt2  qkv fused }
}
