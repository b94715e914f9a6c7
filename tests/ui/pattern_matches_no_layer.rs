// A per-layer rule whose range matches no layer.
modelspec::model! {
    model tiny {
        vocab 64 d_model 16 layers 2 context 8
        attention { heads 2 }
        layers[4..6] { attention.window 4 }
    }
}

fn main() {}
