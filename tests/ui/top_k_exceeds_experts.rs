// top_k larger than the number of experts.
modelspec::model! {
    model tiny_moe {
        vocab 64 d_model 16 layers 2 context 8
        attention { heads 2 }
        moe { experts 4 top_k 6 expert swiglu(hidden = 32) router softmax_topk }
    }
}

fn main() {}
