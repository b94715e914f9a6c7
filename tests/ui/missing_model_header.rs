// The input must start with `model NAME { ... }`.
modelspec::model! {
    tiny { vocab 64 }
}

fn main() {}
