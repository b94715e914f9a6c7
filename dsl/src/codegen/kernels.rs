//! The spec's instance of the one kernel library.
//!
//! modelspec has one library of CUDA kernels (the runtime's `cuda/kernels/` and the op folders'
//! `ops/{op}/{op}.cu`, assembled by `cuda::compile`). A spec does not get kernels of its own: it
//! gets that library *instantiated* for it, which is two things, both derived here and nowhere
//! else:
//! - the spec's constants as `#define`s that the kernels read, and
//! - the head dims the tensor-core attention templates are instantiated for.
//!
//! Every define is read by a kernel that compares it with its launch: a launch whose shape equals
//! the defines runs an instantiation with those values as compile-time constants (divisors become
//! multiplies and shifts, switches fold away, loops get fixed trip counts), any other launch runs
//! the generic code on the same kernel entry point, so a define changes speed, never results. A
//! constant the layers do not agree on is left out, and its kernels then always run generically:
//!
//! | define | value | read by |
//! |---|---|---|
//! | `MS_D_MODEL` | the model width | `ops/norm/norm.cu`, `norm_warp.cu`, `norm_bwd_dw.cu`: the row loop at the model width |
//! | `MS_LOGITS_LD` | [`logits_stride`] of the padded vocabulary | `ops/cross_entropy/cross_entropy.cu`: the row loop at the logits stride |
//! | `MS_D_FF`, `MS_ACT` | the dense MLPs' hidden width and [`act_code`] of their activation | `ops/activation/activation.cu`: `act_fwd` / `act_bwd` at that width and kind |
//! | `MS_N_HEADS`, `MS_N_KV_HEADS`, `MS_HEAD_DIM`, `MS_ROPE_DIMS` | query heads, key/value heads, head dim and rotary dims of the RoPE layers | `ops/rope/rope.cu`: the per-thread (token, head, pair) split of the q and k launches |
//!
//! `MS_D_FF` and `MS_ACT` come as a pair, over the layers with a dense MLP only (the width the
//! activation kernel's `hidden` argument gets: the `gate`/`up` width, not the fused `[gate; up]`
//! row): mixture-of-experts experts run the activation in the MoE module, which is compiled
//! without the instance, so MoE layers neither contribute nor block them. The four RoPE defines
//! come together, over the layers with rotary positions and standard attention (latent attention
//! rotates `2·heads` rope heads of another width, which takes the generic path); layers without
//! RoPE do not launch the kernel and do not count.
//!
//! Not defines, on purpose: the norms' `eps` (one add per row, a run-time argument costs nothing,
//! and the q/k-norms' eps may differ from the block's), the attention window and softcap (one
//! compare or tanh per score beside the score's loads; the windows differ between layers in the
//! specs that have them, and specialising the attention templates on them would multiply their
//! instances for no measured gain), and the sequence length (not a spec constant). A define that
//! no kernel reads would only change the NVRTC cache key.
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
use crate::ir::{Ffn, MlpKind, ModelSpec, Position};

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

/// The activation kernels' code for an MLP activation (their `kind` argument, `MS_ACT`): the
/// one place the codes are defined (the runtime's `cuda::Act` takes its values from here).
pub const fn act_code(kind: MlpKind) -> i32 {
    match kind {
        MlpKind::Gelu => 0,
        MlpKind::GeluTanh => 1,
        MlpKind::ReluSquared => 2,
        MlpKind::Swiglu => 3,
        MlpKind::Geglu => 4,
        MlpKind::GegluTanh => 5,
    }
}

/// The one value every item has, or `None` when they differ or there are none.
fn uniform<T: PartialEq>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.all(|x| x == first).then_some(first)
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
    let mut define = |name: &str, value: String| defines.insert(name.to_string(), value);
    define("MS_D_MODEL", spec.d_model.to_string());
    define("MS_LOGITS_LD", logits_stride(spec.vocab_padded).to_string());
    // The dense MLPs' activation launches: (hidden, kind).
    let mlp = uniform(spec.layers.iter().filter_map(|l| match &l.ffn {
        Ffn::Mlp(m) => Some((m.hidden, act_code(m.activation))),
        Ffn::Moe(_) => None,
    }));
    if let Some((hidden, act)) = mlp {
        define("MS_D_FF", hidden.to_string());
        define("MS_ACT", act.to_string());
    }
    // The RoPE launches of q and k: (heads, kv_heads, head_dim, rotary dims).
    let rope = uniform(spec.layers.iter().filter_map(|l| {
        let a = &l.attention;
        match &l.position {
            Position::Rope(r) if a.mla.is_none() => {
                Some((a.heads, a.kv_heads, a.head_dim, r.rotary_dims))
            }
            _ => None,
        }
    }));
    if let Some((heads, kv_heads, head_dim, rot)) = rope {
        define("MS_N_HEADS", heads.to_string());
        define("MS_N_KV_HEADS", kv_heads.to_string());
        define("MS_HEAD_DIM", head_dim.to_string());
        define("MS_ROPE_DIMS", rot.to_string());
    }
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

    /// The defines of the activation and RoPE kernels, by name.
    const SPEC_DEFINES: [&str; 6] = [
        "MS_D_FF",
        "MS_ACT",
        "MS_N_HEADS",
        "MS_N_KV_HEADS",
        "MS_HEAD_DIM",
        "MS_ROPE_DIMS",
    ];

    #[test]
    fn a_uniform_spec_defines_its_mlp_and_rope_shapes() {
        let mut spec = tiny_spec();
        for l in &mut spec.layers {
            l.ffn = Ffn::Mlp(crate::ir::Mlp {
                activation: MlpKind::GegluTanh,
                hidden: 96,
                bias: false,
            });
            if let Position::Rope(r) = &mut l.position {
                r.rotary_dims = 4;
                r.style = crate::ir::RopeStyle::Interleaved;
            }
        }
        let inst = instance(&spec);
        let a = &spec.layers[0].attention;
        let expect = [
            ("MS_D_FF", "96".to_string()),
            ("MS_ACT", "5".to_string()),
            ("MS_N_HEADS", a.heads.to_string()),
            ("MS_N_KV_HEADS", a.kv_heads.to_string()),
            ("MS_HEAD_DIM", a.head_dim.to_string()),
            ("MS_ROPE_DIMS", "4".to_string()),
        ];
        for (name, value) in expect {
            assert_eq!(inst.defines.get(name), Some(&value), "{name}");
            assert!(inst.header().contains(&format!("#define {name} {value}\n")));
        }
    }

    #[test]
    fn activation_codes_are_distinct_and_dense() {
        let kinds = MlpKind::ALL;
        let mut codes: Vec<i32> = kinds.iter().map(|&k| act_code(k)).collect();
        // activation.cu: the gated kinds are the codes from 3 on.
        for (k, c) in kinds.iter().zip(&codes) {
            assert_eq!(k.is_gated(), *c >= 3, "{k:?}");
        }
        codes.sort_unstable();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn layers_that_differ_leave_their_constants_out() {
        // MLP widths differ: no MS_D_FF / MS_ACT, RoPE defines stay.
        let mut spec = tiny_spec();
        assert!(spec.layers.len() > 1);
        if let Ffn::Mlp(m) = &mut spec.layers[1].ffn {
            m.hidden *= 2;
        }
        let inst = instance(&spec);
        assert!(!inst.defines.contains_key("MS_D_FF"));
        assert!(!inst.defines.contains_key("MS_ACT"));
        assert!(inst.defines.contains_key("MS_ROPE_DIMS"));
        // The same width with another activation: still no pair.
        let mut spec = tiny_spec();
        if let Ffn::Mlp(m) = &mut spec.layers[1].ffn {
            m.activation = MlpKind::Geglu;
        }
        assert!(!instance(&spec).defines.contains_key("MS_ACT"));
        // Rotary dims (or head counts) differ: none of the four RoPE defines.
        let mut spec = tiny_spec();
        if let Position::Rope(r) = &mut spec.layers[1].position {
            r.rotary_dims /= 2;
        }
        let inst = instance(&spec);
        for name in ["MS_N_HEADS", "MS_N_KV_HEADS", "MS_HEAD_DIM", "MS_ROPE_DIMS"] {
            assert!(!inst.defines.contains_key(name), "{name}");
        }
        assert!(inst.defines.contains_key("MS_D_FF"));
        let mut spec = tiny_spec();
        spec.layers[0].attention.kv_heads = spec.layers[0].attention.heads;
        assert!(!instance(&spec).defines.contains_key("MS_N_KV_HEADS"));
        // No layer with RoPE or a dense MLP: only the width and the logits stride.
        let mut spec = tiny_spec();
        for l in &mut spec.layers {
            l.position = Position::Alibi;
        }
        spec.layers = spec.layers[..1].to_vec();
        if let Ffn::Mlp(m) = spec.layers[0].ffn {
            spec.layers[0].ffn = Ffn::Moe(crate::ir::Moe {
                experts: 2,
                top_k: 1,
                expert: m,
                ..Default::default()
            });
        }
        let inst = instance(&spec);
        for name in SPEC_DEFINES {
            assert!(!inst.defines.contains_key(name), "{name}");
        }
        assert_eq!(inst.defines.len(), 2);
    }

    #[test]
    fn moe_and_nope_layers_do_not_block_the_dense_and_rope_defines() {
        // tiny_moe: a dense first layer, then MoE layers (their experts run in the MoE module).
        let mut spec = crate::codegen::tests_support::tiny_moe_spec();
        let dense = spec
            .layers
            .iter()
            .filter_map(|l| match &l.ffn {
                Ffn::Mlp(m) => Some(m.hidden),
                Ffn::Moe(_) => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(dense.len(), 1);
        // A NoPE layer (Llama 4, SmolLM3) launches no RoPE.
        let last = spec.layers.len() - 1;
        spec.layers[last].position = Position::None;
        let inst = instance(&spec);
        assert_eq!(inst.defines["MS_D_FF"], dense[0].to_string());
        for name in SPEC_DEFINES {
            assert!(inst.defines.contains_key(name), "{name}");
        }
        // A second dense layer of another width takes the pair away.
        if let Ffn::Mlp(m) = spec.layers[0].ffn {
            spec.layers[last].ffn = Ffn::Mlp(crate::ir::Mlp {
                hidden: m.hidden + 8,
                ..m
            });
        }
        assert!(!instance(&spec).defines.contains_key("MS_D_FF"));
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
