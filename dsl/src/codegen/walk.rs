//! The spec's kernel walk as constants of `{Type}Kernels`: for every distinct layer program, its
//! kernels in launch order ([`LayerProgram::kernels`](crate::program::LayerProgram::kernels)) as
//! [`KernelRow`](crate::program::KernelRow)s (`WALK_0`, `WALK_1`, ...), each documented by its
//! launch sequence, and `KERNELS`, one walk per layer. The GPU executors run a generated model by
//! these rows, after checking them against their own lowering of the spec
//! ([`check_walk`](crate::program::check_walk)).

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use crate::ir::ModelSpec;
use crate::program::{Act, Kernel, launch_sequence, lowered_walk};

/// The distinct walks of `spec` in order of first appearance, each with the layers that run it.
pub(crate) fn distinct_walks(spec: &ModelSpec) -> Vec<(Vec<Kernel>, Vec<usize>)> {
    let mut out: Vec<(Vec<Kernel>, Vec<usize>)> = Vec::new();
    for (i, kernels) in lowered_walk(spec).into_iter().enumerate() {
        match out.iter_mut().find(|(k, _)| *k == kernels) {
            Some((_, layers)) => layers.push(i),
            None => out.push((kernels, vec![i])),
        }
    }
    out
}

/// `layers 0..=3, 5` / `layer 2`: ascending indices with runs collapsed (as the struct docs
/// write layer ranges).
fn layer_list(layers: &[usize]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        runs.push(if j == i {
            layers[i].to_string()
        } else {
            format!("{}..={}", layers[i], layers[j])
        });
        i = j + 1;
    }
    let word = if layers.len() == 1 { "layer" } else { "layers" };
    format!("{word} {}", runs.join(", "))
}

/// `seq` (`A -> B -> ...`) broken before an arrow into doc lines of at most `width` characters
/// (a longer launch stays whole), continuation lines starting with the arrow.
fn wrap(seq: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for (i, part) in seq.split(" -> ").enumerate() {
        let piece = if i == 0 {
            part.to_string()
        } else {
            format!(" -> {part}")
        };
        if !line.is_empty() && line.len() + piece.len() > width {
            lines.push(format!(" {line}"));
            line = piece.trim_start().to_string();
        } else {
            line.push_str(&piece);
        }
    }
    lines.push(format!(" {line}"));
    lines
}

fn acts(list: &[Act]) -> TokenStream {
    let names = list.iter().map(|a| format_ident!("{}", format!("{a:?}")));
    quote!(&[#(Act::#names),*])
}

/// The `WALK_n` and `KERNELS` constants (items of `impl {Type}Kernels`).
pub(crate) fn emit(spec: &ModelSpec) -> TokenStream {
    let rt = quote!(::modelspec::__private::v1);
    let walks = distinct_walks(spec);
    let mut out = TokenStream::new();
    let mut of_layer = vec![0usize; spec.layers.len()];
    for (w, (kernels, layers)) in walks.iter().enumerate() {
        for &l in layers {
            of_layer[l] = w;
        }
        let name = format_ident!("WALK_{}", w);
        let mut doc = vec![format!(
            " The kernel walk, in launch order, of {}:",
            layer_list(layers)
        )];
        doc.extend(wrap(&launch_sequence(kernels), 92));
        let rows = kernels.iter().map(|k| {
            let fusion = format_ident!("{}", format!("{:?}", k.fusion));
            let (outputs, inputs) = (acts(&k.outputs), acts(&k.inputs));
            quote! {
                KernelRow { fusion: Fusion::#fusion, outputs: #outputs, inputs: #inputs }
            }
        });
        out.extend(quote! {
            #(#[doc = #doc])*
            pub const #name: &'static [#rt::KernelRow] = {
                use #rt::{Act, Fusion, KernelRow};
                &[#(#rows),*]
            };
        });
    }
    let per_layer = of_layer.iter().map(|w| format_ident!("WALK_{}", w));
    let n = Literal::usize_unsuffixed(spec.layers.len());
    let doc = [
        format!(
            " Every layer's kernels in launch order ({n} layers; layer `i` runs `KERNELS[i]`): the"
        ),
        " launch code the GPU executors run for this model, once they found it equal to their own"
            .into(),
        " lowering of the spec.".into(),
    ];
    out.extend(quote! {
        #(#[doc = #doc])*
        pub const KERNELS: &'static [&'static [#rt::KernelRow]] = &[#(Self::#per_layer),*];
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::tests_support::{tiny_moe_spec, tiny_spec};

    #[test]
    fn layer_lists_collapse_runs() {
        assert_eq!(layer_list(&[0, 1, 2, 3, 5]), "layers 0..=3, 5");
        assert_eq!(layer_list(&[2]), "layer 2");
        assert_eq!(layer_list(&[1, 3]), "layers 1, 3");
    }

    #[test]
    fn launch_sequences_wrap_before_an_arrow() {
        let lines = wrap("Norm(a) -> Linear(bb) -> Attention(c)", 20);
        assert_eq!(lines, [" Norm(a)", " -> Linear(bb)", " -> Attention(c)"]);
        assert_eq!(wrap("Norm(a)", 3), [" Norm(a)"]);
    }

    #[test]
    fn every_layer_has_one_walk_equal_to_its_lowering() {
        for spec in [tiny_spec(), tiny_moe_spec()] {
            let walks = distinct_walks(&spec);
            let mut seen: Vec<usize> = walks.iter().flat_map(|(_, l)| l.clone()).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..spec.layers.len()).collect::<Vec<_>>());
            let lowered = lowered_walk(&spec);
            for (kernels, layers) in &walks {
                for &l in layers {
                    assert_eq!(&lowered[l], kernels, "layer {l}");
                }
            }
        }
        // A dense first layer and MoE layers: two walks.
        assert_eq!(distinct_walks(&tiny_moe_spec()).len(), 2);
    }
}
