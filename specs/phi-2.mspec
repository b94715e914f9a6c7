# Phi-2, HF `microsoft/phi-2`.
# params: 2,779,683,840
#
# Parallel attention and MLP fed by one shared LayerNorm, partial rotary embedding (40% of each
# 80-wide head), GELU (tanh) MLP, biases everywhere including the untied lm_head.
model phi_2 {
    vocab 51200   d_model 2560   layers 32   context 2048
    dropout { embedding 0  attention 0  residual 0.1 }
    norm layer(eps = 1e-5)
    parallel_residual  shared_norm
    attention { heads 32  bias }
    position rope(theta = 10000, fraction = 0.4)
    mlp gelu_tanh(hidden = 10240, bias = true)
    logits { bias }
    weights { naming phi }
}
