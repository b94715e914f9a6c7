# Mistral 7B v0.1, HF `mistralai/Mistral-7B-v0.1`.
# params: 7,241,732,096
#
# Llama-style blocks with GQA (8 kv heads) and a 4096-token sliding window in every layer.
model mistral_7b_v0_1 {
    vocab 32000   d_model 4096   layers 32   context 32768
    norm rms(eps = 1e-5)
    attention { heads 32  kv_heads 8  window 4096 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 14336)
}
