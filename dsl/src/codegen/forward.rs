//! Forward and backward as straight-line calls into the runtime, one per layer, in order.
//!
//! Each call is a step of the runtime's `Run` (through `__private::v1`): the embedding, layer `i`
//! with its checkpoint policy (returning its output and what the policy saves), the head; then
//! the head's backward, each layer's backward from its saved state in reverse, the embedding's
//! backward. The executor behind `modelspec eval` is a loop over exactly these steps, so the
//! generated model and the CLI agree bit for bit. Layers of one kind share the runtime's code;
//! what differs per layer is its index (its row of the embedded IR) and its policy, both literal
//! here. With a global budget the planner resolves the policies for the call's batch and length.

use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

use super::Layout;
use super::structs::describe_layer;
use super::{lit_usize, ranges_doc};
use crate::ir::LayerCheckpoint;

/// The checkpoint policies of the layers: each distinct policy bound once to a local (`auto`,
/// `full`, `save_all`, `save_0`, `recompute_0`...), and for each layer the argument of its step.
fn policies(layout: &Layout<'_>) -> (TokenStream, Vec<TokenStream>) {
    let rt = layout.rt();
    let spec = layout.spec;
    if spec.checkpoint.budget.is_some() {
        let bind = quote!(let plan = run.layer_policies(&#rt::Policy::FromSpec)?;);
        let args = (0..spec.layers.len())
            .map(|i| {
                let idx = lit_usize(i as u64);
                quote!(&plan[#idx])
            })
            .collect();
        return (bind, args);
    }
    let mut distinct: Vec<(&LayerCheckpoint, Ident)> = Vec::new();
    let mut bind = TokenStream::new();
    let mut args = Vec::with_capacity(spec.layers.len());
    let (mut saves, mut recomputes) = (0usize, 0usize);
    for layer in &spec.layers {
        let c = &layer.checkpoint;
        let ident = match distinct.iter().find(|(d, _)| *d == c) {
            Some((_, ident)) => ident.clone(),
            None => {
                let (ident, value) = match c {
                    LayerCheckpoint::None => (
                        format_ident!("save_all"),
                        quote!(#rt::LayerCheckpoint::None),
                    ),
                    LayerCheckpoint::Full => {
                        (format_ident!("full"), quote!(#rt::LayerCheckpoint::Full))
                    }
                    LayerCheckpoint::Auto => {
                        (format_ident!("auto"), quote!(#rt::LayerCheckpoint::Auto))
                    }
                    LayerCheckpoint::Save(names) => {
                        saves += 1;
                        (
                            format_ident!("save_{}", saves - 1),
                            quote!(#rt::LayerCheckpoint::Save(#rt::names(&[#(#names),*]))),
                        )
                    }
                    LayerCheckpoint::Recompute(names) => {
                        recomputes += 1;
                        (
                            format_ident!("recompute_{}", recomputes - 1),
                            quote!(#rt::LayerCheckpoint::Recompute(#rt::names(&[#(#names),*]))),
                        )
                    }
                };
                bind.extend(quote!(let #ident = #value;));
                distinct.push((c, ident.clone()));
                ident
            }
        };
        args.push(quote!(&#ident));
    }
    (bind, args)
}

/// Emit `forward` and `backward`.
pub(crate) fn emit(layout: &Layout<'_>) -> TokenStream {
    let rt = layout.rt();
    let ty = &layout.ty;
    let spec = layout.spec;
    let n = spec.layers.len();
    let saved: Vec<Ident> = (0..n).map(|i| format_ident!("saved_{}", i)).collect();
    let mut fwd = TokenStream::new();
    let mut bwd = TokenStream::new();
    let (plan, policy_args) = policies(layout);
    let mut rows: Vec<(String, Vec<u64>)> = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let (k, _) = layout.slots[i];
        let d = format!("[`{}`]: {}", layout.kinds[k].ty, describe_layer(layer));
        match rows.iter_mut().find(|(r, _)| *r == d) {
            Some((_, v)) => v.push(i as u64),
            None => rows.push((d, vec![i as u64])),
        }
        let idx = lit_usize(i as u64);
        let s = &saved[i];
        let policy = &policy_args[i];
        fwd.extend(quote!(let (x, #s) = run.layer(#idx, x, #policy)?;));
    }
    for i in (0..n).rev() {
        let idx = lit_usize(i as u64);
        let s = &saved[i];
        bwd.extend(quote!(let dx = run.layer_backward(#idx, #s, dx)?;));
    }
    let mut doc = vec![
        " The forward pass, step by step: the embedding, each layer in order with its checkpoint"
            .to_string(),
        " policy (its output, and what the policy saves for backward), then the final norm and the"
            .to_string(),
        " head. The executor behind `modelspec eval` runs the same steps in a loop, so logits and"
            .to_string(),
        " gradients are bit-identical to the CLI's. Layers:".to_string(),
    ];
    for (d, layers) in &rows {
        doc.push(format!(" - `{}` {}", ranges_doc(layers), d));
    }
    if spec.checkpoint.budget.is_some() {
        doc.push(
            " With the spec's budget, the planner resolves each layer's policy for the run's batch"
                .to_string(),
        );
        doc.push(" and sequence length.".to_string());
    }
    let doc = doc.iter().map(|l| quote!(#[doc = #l]));
    quote! {
        impl #ty {
            #(#doc)*
            pub fn forward(
                &self,
                run: &mut #rt::Run<'_>,
            ) -> ::modelspec::Result<(#rt::Head, [#rt::Saved; Self::N_LAYERS])> {
                #plan
                let x = run.embed();
                #fwd
                let head = run.head(x)?;
                Ok((head, [#(#saved),*]))
            }

            /// The backward pass after [`Self::forward`] on a training run: the head, then each
            /// layer in reverse from its saved state (recomputing what its policy did not save),
            /// then the embedding. The gradients accumulate in `run`.
            pub fn backward(
                &self,
                run: &mut #rt::Run<'_>,
                head: &#rt::Head,
                saved: [#rt::Saved; Self::N_LAYERS],
            ) -> ::modelspec::Result<()> {
                let [#(#saved),*] = saved;
                let dx = run.head_backward(head)?;
                #bwd
                run.embed_backward(dx)?;
                Ok(())
            }
        }
    }
}
