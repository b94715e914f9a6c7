//! Code generation: the Rust items and the CUDA source that `model!`, `model_file!` and
//! `modelspec generate` produce from a [`ModelSpec`].
//!
//! The stages are separate and each is testable without a compiler:
//! ```text
//! ModelSpec ─► Layout (layer kinds, typed fields, from params.rs) ─┬─► structs.rs    struct + constants
//!                                                                  ├─► model_impl.rs spec, params, impl Model
//!                                                                  ├─► forward.rs    forward / backward
//!                                                                  ├─► kernels.rs    the kernel library's instance
//!                                                                  └─► walk.rs       each layer's kernel walk (the launch code)
//! ```
//! Generated code names everything by absolute path and reaches modelspec's internals only through
//! the hidden, versioned `::modelspec::__private::v1` module, so a user crate depends on one
//! contract. Output is deterministic: the same spec gives byte-identical code.
//!
//! ```
//! use modelspec_dsl::codegen::{self, Options};
//! # use modelspec_dsl::codegen::tests_support::tiny_spec;
//! let spec = tiny_spec();
//! let out = codegen::generate(&spec, &Options::default()).unwrap();
//! assert!(out.rust.contains("pub struct Tiny"));
//! assert!(out.kernels.defines.contains_key("MS_D_MODEL"));
//! ```

pub mod expand;
mod forward;
mod kernels;
pub(crate) mod model_impl;
mod structs;
#[doc(hidden)]
pub mod tests_support;
mod walk;

use std::collections::BTreeMap;

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};

use crate::ir::{Ffn, Layer, ModelSpec};
use crate::params::parameters;

pub use kernels::{KernelInstance, act_code, instance as kernel_instance, logits_stride};
pub use model_impl::{LayerRow, spec_parts};

/// The version of the `::modelspec::__private` module generated code is written against.
pub const PRIVATE_API: &str = "v1";

/// Options of a generation (none yet: the struct keeps the generator's signature stable as
/// options are added).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Options {}

/// The generated Rust module (prettyplease-formatted) and the kernel library's instance of one
/// spec (the runtime turns the instance into CUDA source: `modelspec generate` writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The name of the generated model struct.
    pub type_name: String,
    /// Formatted Rust items.
    pub rust: String,
    /// The kernel library instantiated for the spec.
    pub kernels: KernelInstance,
}

/// Why code could not be generated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodegenError {
    /// The spec has no layers (the checks should have said so first).
    #[error("the spec `{0}` has no layers")]
    NoLayers(String),
    /// `layers[i].index != i` or `n_layers != layers.len()`.
    #[error("the spec's layer table is inconsistent: {0}")]
    LayerTable(String),
    /// Two parameters map onto the same Rust field name.
    #[error("parameters `{0}` and `{1}` map to the same field `{2}`")]
    FieldClash(String, String, String),
    /// Experts of one layer differ in shape.
    #[error("experts of layer {0} do not all have the same shape")]
    RaggedExperts(u64),
    /// The IR could not be serialised into the generated code.
    #[error("cannot serialise the spec: {0}")]
    Serialise(String),
    /// The generated tokens are not valid Rust (a bug in the generator).
    #[error("generated code does not parse: {0}")]
    Syntax(String),
    /// The spec's name is not an identifier (the checks should have said so first).
    #[error("the model name {0:?} {1}")]
    InvalidName(String, String),
}

/// `text` made safe inside a `//` or `/* */` comment of generated Rust or CUDA: control
/// characters (newlines included) are written as escapes and `*/` is broken up, so no text from a
/// spec can end the comment and become code.
pub fn comment_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.replace("*/", "*\\/").replace("/*", "/\\*")
}

/// Generate the Rust items of `spec` as a token stream (what the macros emit).
pub fn expand(spec: &ModelSpec, options: &Options) -> Result<TokenStream, CodegenError> {
    let Options {} = options;
    let layout = Layout::new(spec)?;
    let mut out = TokenStream::new();
    out.extend(structs::emit(&layout));
    out.extend(model_impl::emit(&layout)?);
    out.extend(forward::emit(&layout));
    out.extend(kernels::emit(&layout));
    Ok(out)
}

/// Generate the formatted Rust module and the kernel instance of `spec`.
pub fn generate(spec: &ModelSpec, options: &Options) -> Result<Generated, CodegenError> {
    let tokens = expand(spec, options)?;
    let header = format!(
        "// @generated by modelspec {} from the spec `{}`. Do not edit: edit the spec and regenerate.\n\n",
        env!("CARGO_PKG_VERSION"),
        comment_text(&spec.name)
    );
    Ok(Generated {
        type_name: spec.rust_type(),
        rust: header + &format(tokens)?,
        kernels: kernels::instance(spec),
    })
}

/// Pretty-print generated items with prettyplease.
pub fn format(tokens: TokenStream) -> Result<String, CodegenError> {
    let file: syn::File = syn::parse2(tokens).map_err(|e| CodegenError::Syntax(e.to_string()))?;
    Ok(prettyplease::unparse(&file))
}

/// The items emitted beside a `compile_error!` when a spec is invalid: an empty struct of the
/// expected name (when known), so the user's code that names it does not fail a second time.
pub fn stub(type_name: Option<&str>) -> TokenStream {
    let Some(name) = type_name.filter(|n| syn::parse_str::<Ident>(n).is_ok()) else {
        return TokenStream::new();
    };
    let ty = Ident::new(name, Span::call_site());
    let k_ty = Ident::new(&format!("{name}Kernels"), Span::call_site());
    // The stub has every item the real expansion has (the `Model` impl, the inherent constants
    // and functions, the `{Type}Kernels` struct), so code that names `Tiny::VOCAB` or calls
    // `init` fails only once: without the constants rustc adds an E0599 that points at an
    // unrelated trait with a `NAME` item. The crate does not compile anyway, so the bodies never
    // run; the constants are 0.
    quote! {
        /// Placeholder for a model whose spec has errors (see the compile error).
        #[allow(dead_code, non_camel_case_types)]
        pub struct #ty;

        #[allow(dead_code)]
        impl #ty {
            /// Placeholder (the spec has errors).
            pub const NAME: &str = "";
            /// Placeholder (the spec has errors).
            pub const VOCAB: usize = 0;
            /// Placeholder (the spec has errors).
            pub const VOCAB_PADDED: usize = 0;
            /// Placeholder (the spec has errors).
            pub const D_MODEL: usize = 0;
            /// Placeholder (the spec has errors).
            pub const N_LAYERS: usize = 0;
            /// Placeholder (the spec has errors).
            pub const CONTEXT: usize = 0;
            /// Placeholder (the spec has errors).
            pub const PARAMS_TOTAL: u64 = 0;
            /// Placeholder (the spec has errors).
            pub const HEADS: usize = 0;
            /// Placeholder (the spec has errors).
            pub const KV_HEADS: usize = 0;
            /// Placeholder (the spec has errors).
            pub const HEAD_DIM: usize = 0;
            /// Placeholder (the spec has errors).
            pub fn spec() -> ::modelspec::Result<&'static ::modelspec::dsl::ModelSpec> {
                ::core::unreachable!()
            }
            /// Placeholder (the spec has errors).
            pub fn from_params(_: ::modelspec::__private::v1::Params) -> ::modelspec::Result<Self> {
                ::core::unreachable!()
            }
            /// Placeholder (the spec has errors).
            pub fn params(&self) -> ::modelspec::__private::v1::ParamRefs<'_> {
                ::core::unreachable!()
            }
            /// Placeholder (the spec has errors).
            pub fn params_mut(&mut self) -> ::modelspec::__private::v1::ParamRefsMut<'_> {
                ::core::unreachable!()
            }
        }

        /// Placeholder for the kernels of a model whose spec has errors.
        #[allow(dead_code, non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct #k_ty;

        #[allow(dead_code)]
        impl #k_ty {
            /// Placeholder (the spec has errors).
            pub const NAME: &'static str = "";
            /// Placeholder (the spec has errors).
            pub const HEAD_DIMS: &'static [usize] = &[];
            /// Placeholder (the spec has errors).
            pub const DEFINES: &'static [(&'static str, &'static str)] = &[];
            /// Placeholder (the spec has errors).
            pub const KERNELS: &'static [&'static [::modelspec::__private::v1::KernelRow]] = &[];
            /// Placeholder (the spec has errors).
            pub fn instance() -> ::modelspec::dsl::codegen::KernelInstance {
                ::core::unreachable!()
            }
            /// Placeholder (the spec has errors).
            pub fn source() -> ::std::string::String {
                ::core::unreachable!()
            }
            /// Placeholder (the spec has errors).
            pub fn load(
                _: &::std::sync::Arc<::modelspec::runtime::cuda::Gpu>,
            ) -> ::modelspec::Result<::modelspec::runtime::cuda::Kernels> {
                ::core::unreachable!()
            }
        }

        impl ::modelspec::Model for #ty {
            const PARAMS_TOTAL: u64 = 0;
            fn spec() -> ::modelspec::Result<&'static ::modelspec::dsl::ModelSpec> {
                ::core::unreachable!()
            }
            fn init(_: &::modelspec::Device, _: u64) -> ::modelspec::Result<Self> {
                ::core::unreachable!()
            }
            fn load_hf(_: &::modelspec::Device, _: impl ::std::convert::AsRef<::std::path::Path>) -> ::modelspec::Result<Self> {
                ::core::unreachable!()
            }
            fn logits(&self, _: &[u32], _: usize) -> ::modelspec::Result<::std::vec::Vec<f32>> {
                ::core::unreachable!()
            }
            fn loss_and_grads(&self, _: &[u32], _: usize) -> ::modelspec::Result<(f32, ::modelspec::__private::v1::Params)> {
                ::core::unreachable!()
            }
            fn params(&self) -> ::modelspec::__private::v1::ParamRefs<'_> {
                ::core::unreachable!()
            }
            fn params_mut(&mut self) -> ::modelspec::__private::v1::ParamRefsMut<'_> {
                ::core::unreachable!()
            }
            fn device(&self) -> &::modelspec::Device {
                ::core::unreachable!()
            }
        }
    }
}

/// The struct name a spec named `name` gets: the same rule as [`ModelSpec::rust_type`].
pub fn type_name_of(name: &str) -> String {
    let probe = ModelSpec {
        name: name.to_string(),
        ..tests_support::empty_spec()
    };
    probe.rust_type()
}

/// One learned tensor as a struct field.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// Canonical name relative to its owner (`attn.q.weight`, or `embed.weight` at top level).
    pub rel: String,
    /// The Rust field.
    pub ident: Ident,
    /// Shape, row-major.
    pub shape: Vec<u64>,
}

/// The parameters of one expert of a MoE layer kind.
#[derive(Debug, Clone)]
pub(crate) struct ExpertKind {
    /// Struct name.
    pub ty: Ident,
    /// Experts per layer.
    pub count: u64,
    /// Fields relative to `layers.{i}.moe.experts.{e}.`.
    pub fields: Vec<Field>,
}

/// Layers with the same parameter structure share one struct.
#[derive(Debug, Clone)]
pub(crate) struct LayerKind {
    /// Struct name.
    pub ty: Ident,
    /// The model struct's field holding these layers, in layer order.
    pub field: Ident,
    /// Layer indices of this kind, ascending.
    pub layers: Vec<u64>,
    /// Fields relative to `layers.{i}.`.
    pub fields: Vec<Field>,
    /// Expert parameters, for MoE layers.
    pub experts: Option<ExpertKind>,
    /// Parameters of one layer of this kind.
    pub params_per_layer: u64,
}

impl LayerKind {
    /// The first layer of this kind: its sizes are shared by every layer of the kind.
    pub fn rep<'a>(&self, spec: &'a ModelSpec) -> &'a Layer {
        &spec.layers[self.layers[0] as usize]
    }
}

/// What the generator derives from the IR once, for every emitter.
pub(crate) struct Layout<'a> {
    pub spec: &'a ModelSpec,
    /// The model struct.
    pub ty: Ident,
    /// Top-level parameters (embedding, final norm, head).
    pub globals: Vec<Field>,
    /// Layer kinds in order of first appearance.
    pub kinds: Vec<LayerKind>,
    /// For each layer: (kind, position within the kind's Vec).
    pub slots: Vec<(usize, usize)>,
    /// Sum of every parameter's elements.
    pub params_total: u64,
}

/// A parameter's name relative to its owner, and its shape.
type Row = (String, Vec<u64>);

/// The structural key two layers must share to share a struct.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct KindKey {
    fields: Vec<(String, Vec<u64>)>,
    expert_count: u64,
    expert_fields: Vec<(String, Vec<u64>)>,
    attention: (u64, u64, u64),
}

fn field_ident(rel: &str) -> Ident {
    // `moe.shared_gate` (a [1, d] sigmoid gate) would clash with `moe.shared.gate`.
    let rel = rel.replace("shared_gate.", "shared_sigmoid_gate.");
    format_ident!("{}", rel.replace('.', "_"))
}

fn fields_of(rows: &[(String, Vec<u64>)]) -> Result<Vec<Field>, CodegenError> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (rel, shape) in rows {
        let ident = field_ident(rel);
        if let Some(prev) = seen.insert(ident.to_string(), rel) {
            return Err(CodegenError::FieldClash(
                prev.to_string(),
                rel.clone(),
                ident.to_string(),
            ));
        }
        out.push(Field {
            rel: rel.clone(),
            ident,
            shape: shape.clone(),
        });
    }
    Ok(out)
}

impl<'a> Layout<'a> {
    pub(crate) fn new(spec: &'a ModelSpec) -> Result<Self, CodegenError> {
        if let Err(why) = crate::check::check_name(&spec.name) {
            return Err(CodegenError::InvalidName(spec.name.clone(), why));
        }
        if spec.layers.is_empty() {
            return Err(CodegenError::NoLayers(spec.name.clone()));
        }
        if spec.n_layers != spec.layers.len() as u64 {
            return Err(CodegenError::LayerTable(format!(
                "n_layers is {} but there are {} layer rows",
                spec.n_layers,
                spec.layers.len()
            )));
        }
        if let Some((i, l)) = spec
            .layers
            .iter()
            .enumerate()
            .find(|(i, l)| l.index != *i as u64)
        {
            return Err(CodegenError::LayerTable(format!(
                "row {i} has index {}",
                l.index
            )));
        }
        let params = parameters(spec);
        let params_total = params.iter().map(|p| p.counted()).sum();
        let n = spec.layers.len();
        let mut globals = Vec::new();
        let mut per_layer: Vec<Vec<Row>> = vec![Vec::new(); n];
        let mut per_expert: Vec<BTreeMap<u64, Vec<Row>>> = vec![BTreeMap::new(); n];
        let mut layer_numel = vec![0u64; n];
        for p in &params {
            match (p.layer, p.expert) {
                (None, _) => globals.push((p.name.clone(), p.shape.clone())),
                (Some(i), expert) => {
                    layer_numel[i as usize] += p.numel();
                    let rel = p
                        .name
                        .strip_prefix(&format!("layers.{i}."))
                        .unwrap_or(&p.name);
                    match expert {
                        None => per_layer[i as usize].push((rel.to_string(), p.shape.clone())),
                        Some(e) => {
                            let rel = rel
                                .strip_prefix(&format!("moe.experts.{e}."))
                                .unwrap_or(rel);
                            per_expert[i as usize]
                                .entry(e)
                                .or_default()
                                .push((rel.to_string(), p.shape.clone()));
                        }
                    }
                }
            }
        }
        let ty = format_ident!("{}", spec.rust_type());
        let mut keys: Vec<KindKey> = Vec::new();
        let mut members: Vec<Vec<u64>> = Vec::new();
        let mut slots = Vec::with_capacity(n);
        for (i, layer) in spec.layers.iter().enumerate() {
            let experts = &per_expert[i];
            let first = experts.values().next().cloned().unwrap_or_default();
            if experts.values().any(|e| *e != first) {
                return Err(CodegenError::RaggedExperts(i as u64));
            }
            let a = &layer.attention;
            let key = KindKey {
                fields: per_layer[i].clone(),
                expert_count: experts.len() as u64,
                expert_fields: first,
                attention: (a.heads, a.kv_heads, a.head_dim),
            };
            let k = match keys.iter().position(|k| *k == key) {
                Some(k) => k,
                None => {
                    keys.push(key);
                    members.push(Vec::new());
                    keys.len() - 1
                }
            };
            slots.push((k, members[k].len()));
            members[k].push(i as u64);
        }
        let suffixes = kind_suffixes(spec, &members);
        let mut kinds = Vec::new();
        for ((key, layers), suffix) in keys.into_iter().zip(members).zip(suffixes) {
            let ty_k = format_ident!("{}Layer{}", ty, suffix);
            let field = if suffix.is_empty() {
                format_ident!("layers")
            } else {
                format_ident!("layers_{}", suffix.to_ascii_lowercase())
            };
            let experts = if key.expert_count > 0 {
                Some(ExpertKind {
                    ty: format_ident!("{}Expert", ty_k),
                    count: key.expert_count,
                    fields: fields_of(&key.expert_fields)?,
                })
            } else {
                None
            };
            let params_per_layer = layer_numel[layers[0] as usize];
            kinds.push(LayerKind {
                ty: ty_k,
                field,
                layers,
                fields: fields_of(&key.fields)?,
                experts,
                params_per_layer,
            });
        }
        Ok(Layout {
            spec,
            ty,
            globals: fields_of(&globals)?,
            kinds,
            slots,
            params_total,
        })
    }

    /// The absolute path of the private module generated code uses.
    pub(crate) fn rt(&self) -> TokenStream {
        quote!(::modelspec::__private::v1)
    }
}

/// Name suffixes of layer kinds: none for one kind; `Dense`/`Moe` when the FFN tells them apart;
/// otherwise `A`, `B`, ... in order of first appearance.
fn kind_suffixes(spec: &ModelSpec, members: &[Vec<u64>]) -> Vec<String> {
    if members.len() == 1 {
        return vec![String::new()];
    }
    let ffn: Vec<&str> = members
        .iter()
        .map(|m| match spec.layers[m[0] as usize].ffn {
            Ffn::Mlp(_) => "Dense",
            Ffn::Moe(_) => "Moe",
        })
        .collect();
    let distinct: std::collections::BTreeSet<&str> = ffn.iter().copied().collect();
    if distinct.len() == members.len() {
        return ffn.into_iter().map(String::from).collect();
    }
    (0..members.len())
        .map(|k| {
            let mut s = String::new();
            let mut k = k;
            loop {
                s.insert(0, (b'A' + (k % 26) as u8) as char);
                if k < 26 {
                    break;
                }
                k = k / 26 - 1;
            }
            s
        })
        .collect()
}

/// `[a, b, c]` as a doc string.
pub(crate) fn shape_doc(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Compress sorted layer indices into ranges: `0..=3, 5, 7..=9`.
pub(crate) fn ranges_doc(layers: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let start = layers[i];
        let mut end = start;
        while i + 1 < layers.len() && layers[i + 1] == end + 1 {
            i += 1;
            end = layers[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}..={end}")
        });
        i += 1;
    }
    parts.join(", ")
}

/// A `usize` literal.
pub(crate) fn lit_usize(v: u64) -> proc_macro2::Literal {
    proc_macro2::Literal::usize_unsuffixed(v as usize)
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn comments_cannot_be_ended_by_spec_text() {
        let text = comment_text("x\npub fn injected() {}\n// */ /* \\");
        assert!(!text.contains('\n'), "{text}");
        assert!(!text.contains("*/") && !text.contains("/*"), "{text}");
        assert_eq!(comment_text("llama_3.1-8b"), "llama_3.1-8b");
    }

    #[test]
    fn an_invalid_name_is_refused_before_any_code_is_emitted() {
        let mut spec = crate::mspec::parse(
            "model m { vocab 32 d_model 8 layers 1 context 8 attention { heads 2 } mlp gelu(hidden = 16) }",
            "m.mspec",
        )
        .expect("valid spec");
        spec.name = "x\npub fn injected() {}\n//".into();
        let err = generate(&spec, &Options::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model name"), "{err}");
        // Even unchecked, the kernel header keeps the name inside its comment.
        let header = kernels::instance(&spec).header();
        assert!(!header.lines().any(|l| l.starts_with("pub fn")), "{header}");
    }
}
