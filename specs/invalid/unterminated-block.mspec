# the model block is never closed
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8 }
