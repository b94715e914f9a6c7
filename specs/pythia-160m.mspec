# Pythia 160M, HF `EleutherAI/pythia-160m` (GPT-NeoX architecture).
# params: 162,322,944
#
# Parallel residual with two LayerNorms (`x + attn(ln1(x)) + mlp(ln2(x))`), rotary embedding on
# the first quarter of each head (rotary_pct 0.25), exact GELU, biases, untied output embedding.
# The config's vocab_size (50304) is already padded for the hardware.
model pythia_160m {
    vocab 50304   d_model 768   layers 12   context 2048
    norm layer(eps = 1e-5)
    parallel_residual
    attention { heads 12  bias }
    position rope(theta = 10000, fraction = 0.25)
    mlp gelu(hidden = 3072, bias = true)
    weights { naming gpt_neox  qkv fused_per_head }
}
