// A required size is missing.
modelspec::model! {
    model tiny {
        d_model 16 layers 1 context 8
        attention { heads 2 }
    }
}

fn main() {}
