# a query temperature on the NoPE layers with a floor of 0 positions and a negative strength
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8 }
    mlp swiglu(hidden = 1024)
    layers[every 4 offset 3] {
        position none
        attention { temperature(floor = 0, scale = -0.1) }
    }
}
