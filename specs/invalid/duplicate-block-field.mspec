# a block field set twice across a block and a dotted key
model broken {
    vocab 32000   d_model 512   layers 8   context 2048
    attention { heads 8  kv_heads 2 }
    mlp swiglu(hidden = 1024)
    attention.kv_heads 4
}
