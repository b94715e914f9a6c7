# a model with no layers
model broken {
    vocab 32000   d_model 512   layers 0   context 2048
    attention { heads 8 }
}
