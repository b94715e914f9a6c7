//! The spec's instance of the one kernel library.
//!
//! modelspec has one library of CUDA kernels (the runtime's `cuda/kernels/` and the op folders'
//! `ops/{op}/{op}.cu`, assembled by `cuda::compile`). A spec does not get kernels of its own: it
//! gets that library *instantiated* for it, which is two things, both derived here and nowhere
//! else:
//! - the spec's constants as `#define`s that the kernels read (`MS_D_MODEL`: the norm kernels
//!   specialise their row loop to the model width; `MS_LOGITS_LD`: the cross-entropy kernel
//!   specialises its row loop to the logits row stride, `logits_stride`), and
//! - the head dims the tensor-core attention templates are instantiated for.
//!
//! `--device cuda`, the code `model!` / `model_file!` expand to and `modelspec generate`'s
//! `kernels.cu` all compile the library with this instance, so they run the same kernels (and
//! share one NVRTC cache entry, keyed by the text). The generated Rust carries the instance as
//! constants ([`emit`]); the runtime turns it into source text and compiles it. Beside the
//! instance, `{Type}Kernels` carries the spec's launch code: every layer's kernel walk
//! (`KERNELS`, from `walk.rs`), which the GPU executors run for the generated model.

use std::collections::BTreeMap;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::Layout;
use crate::ir::ModelSpec;

/// The library instantiated for one spec: a name for logs and the disk cache, the attention head
/// dims, and the `#define`s the kernels read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelInstance {
    /// The spec's name (an identifier; the checks guarantee it).
    pub name: String,
    /// Distinct attention head dims of the spec's layers, ascending.
    pub head_dims: Vec<usize>,
    /// `#define NAME VALUE` lines, by name (deterministic order).
    pub defines: BTreeMap<String, String>,
}

impl KernelInstance {
    /// Rebuilds an instance from the constants generated code carries.
    pub fn from_parts(name: &str, head_dims: &[usize], defines: &[(&str, &str)]) -> Self {
        KernelInstance {
            name: name.to_string(),
            head_dims: head_dims.to_vec(),
            defines: defines
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A readable summary of the instance: the `#define` lines and the head dims, as they open
    /// the compiled source (what the code-generation snapshots show).
    pub fn header(&self) -> String {
        let mut s = format!(
            "// The kernel library instantiated for `{}`.\n",
            super::comment_text(&self.name)
        );
        for (k, v) in &self.defines {
            s.push_str(&format!("#define {k} {v}\n"));
        }
        let dims: Vec<String> = self.head_dims.iter().map(|d| d.to_string()).collect();
        s.push_str(&format!(
            "// attention instantiated for head dims: {}\n",
            dims.join(", ")
        ));
        s
    }
}

/// The row stride (elements) of the classifier's logits on the GPU: the padded vocabulary
/// rounded up to a multiple of 64, so that every row starts 128-byte aligned in bf16 and f32
/// (cuBLASLt's fast kernels and the 16-byte vector loads of the loss kernel need aligned rows;
/// GPT-2's 50257 columns would otherwise put every row but the first off alignment). Columns
/// past `vocab_padded` are never part of the softmax.
pub fn logits_stride(vocab_padded: u64) -> u64 {
    vocab_padded.next_multiple_of(64)
}

/// The instance of the kernel library for `spec`.
pub fn instance(spec: &ModelSpec) -> KernelInstance {
    let mut head_dims: Vec<usize> = spec
        .layers
        .iter()
        .map(|l| l.attention.head_dim as usize)
        .collect();
    head_dims.sort_unstable();
    head_dims.dedup();
    let mut defines = BTreeMap::new();
    defines.insert("MS_D_MODEL".to_string(), spec.d_model.to_string());
    defines.insert(
        "MS_LOGITS_LD".to_string(),
        logits_stride(spec.vocab_padded).to_string(),
    );
    KernelInstance {
        name: spec.name.clone(),
        head_dims,
        defines,
    }
}

/// `pub struct {Type}Kernels`: the instance as constants, and loading it through the runtime.
pub(crate) fn emit(layout: &Layout<'_>) -> TokenStream {
    let ty = &layout.ty;
    let k_ty = format_ident!("{}Kernels", ty);
    let inst = instance(layout.spec);
    let name = inst.name.as_str();
    let dims = inst
        .head_dims
        .iter()
        .map(|d| proc_macro2::Literal::usize_unsuffixed(*d));
    let defines = inst.defines.iter().map(|(k, v)| quote!((#k, #v)));
    let doc = format!(
        " The kernel library instantiated for [`{ty}`]: the same kernels `--device cuda` runs for \
         this spec."
    );
    let allow = super::structs::allow_names(&k_ty.to_string());
    let walk = super::walk::emit(layout.spec);
    quote! {
        #[doc = #doc]
        #allow
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct #k_ty;

        impl #k_ty {
            /// The spec's name, which names the compiled module in logs and the kernel cache.
            pub const NAME: &'static str = #name;
            /// The head dims the attention kernels are instantiated for.
            pub const HEAD_DIMS: &'static [usize] = &[#(#dims),*];
            /// The `#define`s the kernels read.
            pub const DEFINES: &'static [(&'static str, &'static str)] = &[#(#defines),*];

            #walk

            /// The instance these constants describe.
            pub fn instance() -> ::modelspec::dsl::codegen::KernelInstance {
                ::modelspec::dsl::codegen::KernelInstance::from_parts(
                    Self::NAME,
                    Self::HEAD_DIMS,
                    Self::DEFINES,
                )
            }

            /// The CUDA C source NVRTC compiles: the library with this instance's constants.
            pub fn source() -> ::std::string::String {
                ::modelspec::__private::v1::kernel_source(&Self::instance())
            }

            /// Compile the library for this spec on `gpu` (NVRTC, cached on disk) and load it.
            pub fn load(
                gpu: &::std::sync::Arc<::modelspec::runtime::cuda::Gpu>,
            ) -> ::modelspec::Result<::modelspec::runtime::cuda::Kernels> {
                ::modelspec::__private::v1::load_kernels(gpu, &Self::instance())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::tests_support::tiny_spec;

    #[test]
    fn the_instance_carries_the_constants_the_kernels_read() {
        let spec = tiny_spec();
        let inst = instance(&spec);
        assert_eq!(inst.defines["MS_D_MODEL"], spec.d_model.to_string());
        assert_eq!(
            inst.defines["MS_LOGITS_LD"],
            logits_stride(spec.vocab_padded).to_string()
        );
        assert_eq!(
            inst.head_dims,
            vec![spec.layers[0].attention.head_dim as usize]
        );
        let round = KernelInstance::from_parts(
            &inst.name,
            &inst.head_dims,
            &inst
                .defines
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(round, inst);
        assert!(inst.header().contains("#define MS_D_MODEL"));
    }

    #[test]
    fn distinct_head_dims_are_listed_once_in_order() {
        let mut spec = tiny_spec();
        for (i, l) in spec.layers.iter_mut().enumerate() {
            l.attention.head_dim = if i % 2 == 0 { 64 } else { 32 };
        }
        let inst = instance(&spec);
        let expect: Vec<usize> = if spec.layers.len() > 1 {
            vec![32, 64]
        } else {
            vec![64]
        };
        assert_eq!(inst.head_dims, expect);
    }
}
