{ "vocab_size": 64 }
