//! The embedded IR, conversion from and to canonical parameters, and `impl ::modelspec::Model`.
//!
//! The generated struct is a typed view of the runtime's canonical parameter map (names from
//! `params.rs`): `from_params` moves tensors into fields, `params`/`params_mut`/`into_params` give
//! them back by name. `init` and `load_hf` therefore reuse the runtime's initialiser and HF loader
//! unchanged, which is what makes the generated model and the CLI start from identical weights.
//! A hidden field, `__backend`, holds the device the model runs on (`__private::v1::Backend`).

use proc_macro2::{Literal, TokenStream};
use quote::quote;

use super::{CodegenError, Field, LayerKind, Layout, lit_usize};
use crate::ir::{Layer, ModelSpec};

/// Emit the `spec()`, parameter conversions and the `Model` impl.
pub(crate) fn emit(layout: &Layout<'_>) -> Result<TokenStream, CodegenError> {
    let mut out = model_methods(layout)?;
    for kind in &layout.kinds {
        out.extend(kind_methods(layout, kind));
    }
    out.extend(model_trait(layout));
    Ok(out)
}

/// A raw string literal `r#"..."#` with enough hashes for `s`, so embedded YAML stays readable.
pub(crate) fn raw_str(s: &str) -> Literal {
    let mut hashes = 1;
    while s.contains(&format!("\"{}", "#".repeat(hashes))) {
        hashes += 1;
    }
    let h = "#".repeat(hashes);
    let text = format!("r{h}\"{s}\"{h}");
    text.parse().unwrap_or_else(|_| Literal::string(s))
}

/// A distinct layer row: the layers that use it and its YAML.
pub type LayerRow = (Vec<u64>, String);

/// The spec split into its global part (no layers) and its distinct layer rows (index 0), each
/// with the layers that use it: what the generated `spec()` reassembles.
pub fn spec_parts(spec: &ModelSpec) -> Result<(String, Vec<LayerRow>), CodegenError> {
    let globals = ModelSpec {
        layers: Vec::new(),
        ..spec.clone()
    };
    let globals =
        serde_norway::to_string(&globals).map_err(|e| CodegenError::Serialise(e.to_string()))?;
    let mut rows: Vec<(Layer, Vec<u64>)> = Vec::new();
    for layer in &spec.layers {
        let row = Layer {
            index: 0,
            ..layer.clone()
        };
        match rows.iter_mut().find(|(r, _)| *r == row) {
            Some((_, v)) => v.push(layer.index),
            None => rows.push((row, vec![layer.index])),
        }
    }
    let rows = rows
        .into_iter()
        .map(|(row, layers)| {
            serde_norway::to_string(&row)
                .map(|y| (layers, y))
                .map_err(|e| CodegenError::Serialise(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((globals, rows))
}

fn shape_tokens(shape: &[u64]) -> TokenStream {
    let dims = shape.iter().map(|&d| lit_usize(d));
    quote!(&[#(#dims),*])
}

/// `field: take(params, name, shape)?,` for each field; `name` is built by `name_of`.
fn take_fields(
    fields: &[Field],
    rt: &TokenStream,
    name_of: impl Fn(&str) -> TokenStream,
) -> TokenStream {
    fields
        .iter()
        .map(|f| {
            let ident = &f.ident;
            let name = name_of(&f.rel);
            let shape = shape_tokens(&f.shape);
            quote!(#ident: #rt::take(params, #name, #shape)?,)
        })
        .collect()
}

fn visit_fields(
    fields: &[Field],
    name_of: impl Fn(&str) -> TokenStream,
    mutable: bool,
) -> TokenStream {
    fields
        .iter()
        .map(|f| {
            let ident = &f.ident;
            let name = name_of(&f.rel);
            if mutable {
                quote!(out.insert(#name, &mut self.#ident);)
            } else {
                quote!(out.insert(#name, &self.#ident);)
            }
        })
        .collect()
}

fn model_methods(layout: &Layout<'_>) -> Result<TokenStream, CodegenError> {
    let rt = layout.rt();
    let ty = &layout.ty;
    let (globals, rows) = spec_parts(layout.spec)?;
    let globals = raw_str(&globals);
    let rows = rows.iter().map(|(layers, yaml)| {
        let layers = layers.iter().map(|&l| lit_usize(l));
        let yaml = raw_str(yaml);
        quote!((&[#(#layers),*], #yaml))
    });
    let global_name = |rel: &str| quote!(#rel);
    let take_globals = take_fields(&layout.globals, &rt, global_name);
    let visit = visit_fields(
        &layout.globals,
        |rel| quote!(::std::string::String::from(#rel)),
        false,
    );
    let visit_mut = visit_fields(
        &layout.globals,
        |rel| quote!(::std::string::String::from(#rel)),
        true,
    );
    let take_kinds = layout.kinds.iter().map(|k| {
        let field = &k.field;
        let k_ty = &k.ty;
        quote! {
            #field: #k_ty::LAYERS
                .iter()
                .map(|&layer| #k_ty::from_params(params, layer))
                .collect::<::modelspec::Result<_>>()?,
        }
    });
    let visit_kinds = layout.kinds.iter().map(|k| {
        let field = &k.field;
        let k_ty = &k.ty;
        quote! {
            for (layer, block) in #k_ty::LAYERS.iter().zip(&self.#field) {
                block.collect_params(*layer, &mut out);
            }
        }
    });
    let visit_kinds_mut = layout.kinds.iter().map(|k| {
        let field = &k.field;
        let k_ty = &k.ty;
        quote! {
            for (layer, block) in #k_ty::LAYERS.iter().zip(&mut self.#field) {
                block.collect_params_mut(*layer, &mut out);
            }
        }
    });
    Ok(quote! {
        impl #ty {
            /// The resolved IR this model was generated from, every layer row explicit.
            pub fn spec() -> ::modelspec::Result<&'static ::modelspec::dsl::ModelSpec> {
                static SPEC: ::std::sync::OnceLock<::modelspec::dsl::ModelSpec> = ::std::sync::OnceLock::new();
                if let Some(spec) = SPEC.get() {
                    return Ok(spec);
                }
                let spec = #rt::spec_from_parts(#globals, &[#(#rows),*])?;
                Ok(SPEC.get_or_init(|| spec))
            }

            /// Build the model from canonical parameters (see `modelspec::dsl::params`); every
            /// tensor must be present with its shape, and none may be left over.
            pub fn from_params(mut params: #rt::Params) -> ::modelspec::Result<Self> {
                let params = &mut params;
                let model = Self {
                    #take_globals
                    #(#take_kinds)*
                    __backend: #rt::Backend::cpu(),
                };
                #rt::finish_params(params)?;
                Ok(model)
            }

            /// Every parameter by canonical name.
            pub fn params(&self) -> #rt::ParamRefs<'_> {
                let mut out = #rt::ParamRefs::new();
                #visit
                #(#visit_kinds)*
                out
            }

            /// Every parameter by canonical name, mutably (for an optimizer); a GPU model uploads
            /// the parameters again before its next call.
            pub fn params_mut(&mut self) -> #rt::ParamRefsMut<'_> {
                self.__backend.params_changed();
                let mut out = #rt::ParamRefsMut::new();
                #visit_mut
                #(#visit_kinds_mut)*
                out
            }
        }
    })
}

fn kind_methods(layout: &Layout<'_>, kind: &LayerKind) -> TokenStream {
    let rt = layout.rt();
    let k_ty = &kind.ty;
    let layer_name = |rel: &str| {
        let pattern = format!("layers.{{layer}}.{rel}");
        quote!(&::std::format!(#pattern))
    };
    let layer_key = |rel: &str| {
        let pattern = format!("layers.{{layer}}.{rel}");
        quote!(::std::format!(#pattern))
    };
    let take = take_fields(&kind.fields, &rt, layer_name);
    let visit = visit_fields(&kind.fields, layer_key, false);
    let visit_mut = visit_fields(&kind.fields, layer_key, true);
    let mut take_experts = TokenStream::new();
    let mut visit_experts = TokenStream::new();
    let mut visit_experts_mut = TokenStream::new();
    let mut expert_impl = TokenStream::new();
    if let Some(ex) = &kind.experts {
        let e_ty = &ex.ty;
        take_experts = quote! {
            experts: (0..Self::EXPERTS)
                .map(|expert| #e_ty::from_params(params, layer, expert))
                .collect::<::modelspec::Result<_>>()?,
        };
        visit_experts = quote! {
            for (expert, weights) in self.experts.iter().enumerate() {
                weights.collect_params(layer, expert, out);
            }
        };
        visit_experts_mut = quote! {
            for (expert, weights) in self.experts.iter_mut().enumerate() {
                weights.collect_params_mut(layer, expert, out);
            }
        };
        let expert_name = |rel: &str| {
            let pattern = format!("layers.{{layer}}.moe.experts.{{expert}}.{rel}");
            quote!(&::std::format!(#pattern))
        };
        let expert_key = |rel: &str| {
            let pattern = format!("layers.{{layer}}.moe.experts.{{expert}}.{rel}");
            quote!(::std::format!(#pattern))
        };
        let take = take_fields(&ex.fields, &rt, expert_name);
        let visit = visit_fields(&ex.fields, expert_key, false);
        let visit_mut = visit_fields(&ex.fields, expert_key, true);
        expert_impl = quote! {
            impl #e_ty {
                /// Take expert `expert` of layer `layer` out of canonical parameters.
                pub fn from_params(params: &mut #rt::Params, layer: usize, expert: usize) -> ::modelspec::Result<Self> {
                    Ok(Self { #take })
                }

                /// Add this expert's parameters by canonical name.
                pub fn collect_params<'a>(&'a self, layer: usize, expert: usize, out: &mut #rt::ParamRefs<'a>) {
                    #visit
                }

                /// Add this expert's parameters by canonical name, mutably.
                pub fn collect_params_mut<'a>(&'a mut self, layer: usize, expert: usize, out: &mut #rt::ParamRefsMut<'a>) {
                    #visit_mut
                }
            }
        };
    }
    quote! {
        impl #k_ty {
            /// Take layer `layer` out of canonical parameters.
            pub fn from_params(params: &mut #rt::Params, layer: usize) -> ::modelspec::Result<Self> {
                Ok(Self {
                    #take
                    #take_experts
                })
            }

            /// Add this layer's parameters by canonical name.
            pub fn collect_params<'a>(&'a self, layer: usize, out: &mut #rt::ParamRefs<'a>) {
                #visit
                #visit_experts
            }

            /// Add this layer's parameters by canonical name, mutably.
            pub fn collect_params_mut<'a>(&'a mut self, layer: usize, out: &mut #rt::ParamRefsMut<'a>) {
                #visit_mut
                #visit_experts_mut
            }
        }
        #expert_impl
    }
}

fn model_trait(layout: &Layout<'_>) -> TokenStream {
    let rt = layout.rt();
    let ty = &layout.ty;
    let k_ty = quote::format_ident!("{}Kernels", ty);
    let total = Literal::u64_unsuffixed(layout.params_total);
    quote! {
        impl ::modelspec::Model for #ty {
            const PARAMS_TOTAL: u64 = #total;

            fn spec() -> ::modelspec::Result<&'static ::modelspec::dsl::ModelSpec> {
                #ty::spec()
            }

            fn init(device: &::modelspec::Device, seed: u64) -> ::modelspec::Result<Self> {
                let (backend, params) = #rt::init_walk_on(device, #ty::spec()?, #k_ty::KERNELS, seed)?;
                Ok(Self { __backend: backend, ..Self::from_params(params)? })
            }

            fn load_hf(device: &::modelspec::Device, dir: impl ::std::convert::AsRef<::std::path::Path>) -> ::modelspec::Result<Self> {
                let (backend, params) = #rt::load_hf_walk_on(device, #ty::spec()?, #k_ty::KERNELS, dir.as_ref())?;
                Ok(Self { __backend: backend, ..Self::from_params(params)? })
            }

            fn logits(&self, tokens: &[u32], batch: usize) -> ::modelspec::Result<::std::vec::Vec<f32>> {
                #rt::logits_on(&self.__backend, #ty::spec()?, &self.params(), tokens, batch, |run| Ok(self.forward(run)?.0))
            }

            fn loss_and_grads(&self, tokens: &[u32], batch: usize) -> ::modelspec::Result<(f32, #rt::Params)> {
                #rt::loss_and_grads_on(
                    &self.__backend,
                    #ty::spec()?,
                    &self.params(),
                    tokens,
                    batch,
                    |run| self.forward(run),
                    |run, head, saved| self.backward(run, head, saved),
                )
            }

            fn params(&self) -> #rt::ParamRefs<'_> {
                #ty::params(self)
            }

            fn params_mut(&mut self) -> #rt::ParamRefsMut<'_> {
                #ty::params_mut(self)
            }

            fn device(&self) -> &::modelspec::Device {
                self.__backend.device()
            }

            fn decode(&self, cache: &mut ::modelspec::KvCache<f32>, window: &[u32]) -> ::modelspec::Result<::std::vec::Vec<f32>> {
                #rt::decode_on(&self.__backend, #ty::spec()?, &self.params(), cache, window)
            }

            fn generate(&self, prompt: &[u32], tokens: usize, options: ::modelspec::SampleOptions, seed: u64) -> ::modelspec::Result<::std::vec::Vec<u32>> {
                #rt::generate_on(&self.__backend, #ty::spec()?, &self.params(), prompt, tokens, options, seed)
            }
        }
    }
}
