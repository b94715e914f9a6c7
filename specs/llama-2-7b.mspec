# Llama 2 7B, HF `meta-llama/Llama-2-7b-hf`.
# params: 6,738,415,616
#
# Multi-head attention (32 heads of 128), RMSNorm, SwiGLU, RoPE over a 4K context.
model llama_2_7b {
    vocab 32000   d_model 4096   layers 32   context 4096
    norm rms(eps = 1e-5)
    attention { heads 32 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 11008)
}
