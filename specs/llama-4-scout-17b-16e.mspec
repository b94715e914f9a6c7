# Llama 4 Scout 17B-16E, HF `meta-llama/Llama-4-Scout-17B-16E`: its text model (llama4_text).
# params: 107,769,861,120
#
# 107.8B in total, 17.2B a token passes through (the published "17B active"). Every layer is a
# mixture of 16 SwiGLU experts, top-1 with the sigmoid of the chosen logit scaling the expert's
# input, plus one always-on shared expert. Three of every four layers rotate q and k (interleaved
# complex pairs, llama3 scaling with equal low/high factors), L2-normalise them after RoPE
# (no weight) and attend within chunks of 8192 positions; every fourth layer is NoPE, attends to
# the whole prefix and scales its queries by 1 + 0.1 ln(1 + floor((t + 1) / 8192)).
model llama_4_scout_17b_16e {
    vocab 202048   d_model 5120   layers 48   context 10485760
    attention { heads 40  kv_heads 8  qk_norm(rms(weight = false), scope = head, order = after_rope)  chunk 8192 }
    position rope(theta = 500000, style = interleaved, scaling = llama3(factor = 16, low_freq_factor = 1, high_freq_factor = 1, original_context = 8192))
    moe { experts 16  top_k 1  expert swiglu(hidden = 8192)  router sigmoid_topk  weighting input  shared(count = 1, hidden = 8192, gate = false) }
    layers[every 4 offset 3] {
        attention { qk_norm none  chunk none  temperature(floor = 8192, scale = 0.1) }
        position none
    }
}
