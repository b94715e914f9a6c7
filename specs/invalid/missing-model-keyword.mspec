# `model` misspelt
modle broken {
    vocab 32000
}
