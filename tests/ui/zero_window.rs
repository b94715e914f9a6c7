// A sliding window of zero positions.
modelspec::model! {
    model tiny {
        vocab 64 d_model 16 layers 2 context 8
        attention { heads 2 window 0 }
    }
}

fn main() {}
