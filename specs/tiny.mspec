# tiny: a small Llama-style model for CPU training and tests (not a published model).
# params: 2,410,944
#
# Byte-level vocabulary (256), 6 layers of width 192, GQA (6 heads of 32, 2 kv heads), SwiGLU.
model tiny {
    vocab 256   d_model 192   layers 6   context 256
    embedding { tied }
    norm rms(eps = 1e-5)
    attention { heads 6  kv_heads 2 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 512)
}
