# vocab and context are required
model broken {
    d_model 512   layers 8
    attention { heads 8 }
}
