//! Forward and backward as straight-line calls into the runtime, one per layer, in order.
//!
//! The calls name each layer in order; `__private::v1::Pass` checks the order against the spec and
//! evaluates the pass with the runtime's executor, the same code and order of ops as
//! `modelspec eval`, which is why the two agree bit for bit. The layer's sizes and checkpoint
//! policy come from its row of the embedded IR; the doc comment of `forward` restates them.
//! (Executing layer by layer at each call needs a per-layer stepping API in the executor.)

use proc_macro2::TokenStream;
use quote::quote;

use super::Layout;
use super::structs::describe_layer;
use super::{lit_usize, ranges_doc};

/// Emit `forward` and `backward`.
pub(crate) fn emit(layout: &Layout<'_>) -> TokenStream {
    let rt = layout.rt();
    let ty = &layout.ty;
    let spec = layout.spec;
    let mut fwd = TokenStream::new();
    let mut bwd = TokenStream::new();
    let mut rows: Vec<(String, Vec<u64>)> = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let (k, _) = layout.slots[i];
        let d = format!("[`{}`]: {}", layout.kinds[k].ty, describe_layer(layer));
        match rows.iter_mut().find(|(r, _)| *r == d) {
            Some((_, v)) => v.push(i as u64),
            None => rows.push((d, vec![i as u64])),
        }
        let idx = lit_usize(i as u64);
        fwd.extend(quote!(pass.block(#idx)?;));
    }
    for i in (0..spec.layers.len()).rev() {
        let idx = lit_usize(i as u64);
        bwd.extend(quote!(pass.block_backward(#idx)?;));
    }
    let mut doc = vec![
        " The forward pass: the embedding, every layer in order with its own row of the IR, then the"
            .to_string(),
        " final norm and the head. The pass checks these calls against the spec's layer order and"
            .to_string(),
        " evaluates them with the runtime's executor, the code `modelspec eval` runs, so logits and"
            .to_string(),
        " gradients are bit-identical to the CLI's. Layers:".to_string(),
    ];
    for (d, layers) in &rows {
        doc.push(format!(" - `{}` {}", ranges_doc(layers), d));
    }
    let doc = doc.iter().map(|l| quote!(#[doc = #l]));
    quote! {
        impl #ty {
            #(#doc)*
            pub fn forward(&self, pass: &mut #rt::Pass<'_>) -> ::modelspec::Result<()> {
                pass.embed()?;
                #fwd
                pass.head()
            }

            /// The backward pass after [`Self::forward`] and the loss: the layers in reverse,
            /// recomputing what each layer's checkpoint policy did not save.
            pub fn backward(&self, pass: &mut #rt::Pass<'_>) -> ::modelspec::Result<()> {
                pass.head_backward()?;
                #bwd
                pass.embed_backward()
            }
        }
    }
}
