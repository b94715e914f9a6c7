// kv_heads must divide heads; the error points into the attention block.
modelspec::model! {
    model tiny {
        vocab 64 d_model 24 layers 1 context 8
        attention { heads 6 kv_heads 4 }
    }
}

fn main() {}
