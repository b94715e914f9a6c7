// A size given as a word instead of a number.
modelspec::model! {
    model tiny {
        vocab lots d_model 16 layers 1 context 8
        attention { heads 2 }
    }
}

fn main() {}
