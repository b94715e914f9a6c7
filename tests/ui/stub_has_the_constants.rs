// A spec error is the only error: code that reads the generated constants, inherent functions
// and the `{Type}Kernels` struct compiles against the stub (before, rustc added an E0599 that
// pointed at cudarc's `CudaTypeName` for `Tiny::NAME`).
modelspec::model! {
    model tiny {
        vocab 64 d_model 16 layers 1 context 8
        attention { heads 2 kv_heads 3 }
    }
}

fn main() {
    let sizes = [
        Tiny::VOCAB,
        Tiny::VOCAB_PADDED,
        Tiny::D_MODEL,
        Tiny::N_LAYERS,
        Tiny::CONTEXT,
        Tiny::HEADS,
        Tiny::KV_HEADS,
        Tiny::HEAD_DIM,
    ];
    println!("{} {} {sizes:?}", Tiny::NAME, Tiny::PARAMS_TOTAL);
    println!("{} {:?}", TinyKernels::NAME, TinyKernels::HEAD_DIMS);
}

#[allow(dead_code)]
fn uses_the_inherent_api() -> modelspec::Result<()> {
    let _ = Tiny::spec()?;
    let model = Tiny::from_params(modelspec::runtime::Params::default())?;
    let _ = model.params();
    let _ = TinyKernels::source();
    Ok(())
}
