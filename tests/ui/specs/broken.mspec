# A spec with a mistake on line 5.
model broken {
    vocab 64   d_model 16   layers 2   context 8
    attention { heads 2 }
    mlp swiglu(hiden = 32)
}
