# SmolLM3 3B, HF `HuggingFaceTB/SmolLM3-3B` (model_type smollm3).
# params: 3,075,098,624
#
# A Llama-style block (GQA 16/4, SwiGLU, RMSNorm, tied embeddings) where every fourth layer
# (3, 7, ..., 35) is NoPE: no rotary embedding at all (no_rope_layers).
model smollm3_3b {
    vocab 128256   d_model 2048   layers 36   context 65536
    embedding { tied }
    norm rms(eps = 1e-6)
    attention { heads 16  kv_heads 4 }
    position rope(theta = 5e6)
    mlp swiglu(hidden = 11008)
    layers[every 4 offset 3] { position none }
}
