// On an error the macro still defines the struct, so code naming it reports nothing more.
modelspec::model! {
    model tiny {
        vocab 64 d_model 16 layers 1 context 8
        attention { heads 2 kv_heads 3 }
    }
}

fn takes(_: &Tiny) {}

fn main() {
    takes(&Tiny);
}

#[allow(dead_code)]
fn uses_the_model_api() -> modelspec::Result<()> {
    use modelspec::Model;
    let model = Tiny::init(&modelspec::Device::cpu(), 0)?;
    let _ = model.logits(&[1, 2], 1)?;
    Ok(())
}
