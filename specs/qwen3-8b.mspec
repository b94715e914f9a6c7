# Qwen3 8B, HF `Qwen/Qwen3-8B`.
# params: 8,190,735,360
#
# No qkv biases; RMSNorm on each query and key head before RoPE.
model qwen3_8b {
    vocab 151936   d_model 4096   layers 36   context 40960
    norm rms(eps = 1e-6)
    attention {
        heads 32  kv_heads 8  head_dim 128
        qk_norm rms(eps = 1e-6)
    }
    position rope(theta = 1e6)
    mlp swiglu(hidden = 12288)
}
