// An unknown key is reported at the key, with a suggestion.
modelspec::model! {
    model tiny {
        vocab 64 d_model 16 layers 1 context 8
        attention { heads 2 kv_head 1 }
    }
}

fn main() {}
