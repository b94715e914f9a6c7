# Qwen2.5 7B, HF `Qwen/Qwen2.5-7B`.
# params: 7,615,616,512
#
# As Qwen2.5 0.5B at width 3584 (28 heads, 4 kv heads), 28 layers, untied lm_head.
model qwen2_5_7b {
    vocab 152064   d_model 3584   layers 28   context 131072
    norm rms(eps = 1e-6)
    attention { heads 28  kv_heads 4  qkv_bias }
    position rope(theta = 1e6)
    mlp swiglu(hidden = 18944)
}
