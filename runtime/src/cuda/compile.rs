//! Kernel sources and their compilation: CUDA C assembled per spec, compiled by NVRTC for the
//! device's architecture at first use, and cached on disk by a hash of source and architecture.
//!
//! The kernels are self-contained (their own bf16 helpers, inline PTX for tensor-core ops), so
//! NVRTC needs no include path and no CUDA toolkit headers.

use super::error::{CudaError, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `kernels/common.cuh`, the helpers every module starts with (the library and the MoE module).
pub(crate) const COMMON: &str = include_str!("kernels/common.cuh");
const NORM: &str = crate::ops::norm::cuda::SOURCE;
const REDUCE: &str = super::reduce::SOURCE;
const POINTWISE: &str = include_str!("kernels/pointwise.cu");
const ADAMW: &str = crate::ops::adamw::cuda::SOURCE;
const ACTIVATION: &str = crate::ops::activation::cuda::SOURCE;
const ROPE: &str = crate::ops::rope::cuda::SOURCE;
const EMBEDDING: &str = crate::ops::embedding::cuda::SOURCE;
const CROSS_ENTROPY: &str = crate::ops::cross_entropy::cuda::SOURCE;
const ATTENTION_SIMPLE: &str = crate::ops::attention::cuda::SOURCE_SIMPLE;
const ATTENTION_MMA: &str = crate::ops::attention::cuda::SOURCE_MMA;
const ATTENTION_MLA: &str = crate::ops::attention::cuda::SOURCE_MLA;

/// Head dims the tensor-core attention backward supports (it keeps 16 x D of dK and dV per warp
/// in registers).
pub const MMA_BWD_MAX_HEAD_DIM: usize = 128;

/// One compilation unit of generated CUDA C.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// A name for logs and errors (e.g. `gpt2_124m` or `library`).
    pub name: String,
    /// `#define NAME VALUE` lines emitted first: the spec's sizes as compile-time constants.
    pub defines: BTreeMap<String, String>,
    /// The CUDA C text after the defines.
    pub body: String,
}

impl KernelSource {
    /// The kernel library for a model whose attention layers use `head_dims`: every op in f32
    /// and bf16, plus the tensor-core attention kernels instantiated for each head dim (a
    /// multiple of 16, at most 256) as a template constant.
    pub fn library(
        name: &str,
        head_dims: &[usize],
        defines: BTreeMap<String, String>,
    ) -> KernelSource {
        let mut body = String::new();
        for part in [
            COMMON,
            NORM,
            REDUCE,
            POINTWISE,
            ADAMW,
            ACTIVATION,
            ROPE,
            EMBEDDING,
            CROSS_ENTROPY,
            ATTENTION_SIMPLE,
            ATTENTION_MMA,
            ATTENTION_MLA,
        ] {
            body.push_str(part);
            body.push('\n');
        }
        let mut dims: Vec<usize> = head_dims
            .iter()
            .copied()
            .filter(|d| mma_head_dim_ok(*d))
            .collect();
        dims.sort_unstable();
        dims.dedup();
        for d in dims {
            let key_block = if d <= 128 { 64 } else { 32 };
            body.push_str(&format!("ATTN_FWD_INSTANTIATE({d}, {key_block})\n"));
            if d <= MMA_BWD_MAX_HEAD_DIM && d.is_multiple_of(32) {
                body.push_str(&format!("ATTN_BWD_INSTANTIATE({d})\n"));
            }
        }
        KernelSource {
            name: name.to_string(),
            defines,
            body,
        }
    }

    /// The full text handed to NVRTC.
    pub fn text(&self) -> String {
        let mut s = format!("// modelspec generated kernels: {}\n", self.name);
        for (k, v) in &self.defines {
            s.push_str(&format!("#define {k} {v}\n"));
        }
        s.push_str(&self.body);
        s
    }
}

/// Whether the tensor-core attention forward exists for this head dim.
pub fn mma_head_dim_ok(head_dim: usize) -> bool {
    head_dim.is_multiple_of(16) && (16..=256).contains(&head_dim)
}

/// The NVRTC virtual architecture for a compute capability (PTX, JIT-compiled by the driver).
pub fn arch_name(major: i32, minor: i32) -> Result<&'static str> {
    Ok(match (major, minor) {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => {
            return Err(CudaError::BadLaunch {
                kernel: "nvrtc".into(),
                why: format!("compute capability {major}.{minor} is not supported"),
            });
        }
    })
}

/// NVRTC options used for every module (part of the cache key).
fn options() -> Vec<String> {
    vec!["--std=c++17".into(), "--use_fast_math".into()]
}

/// 64-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cache key of a source compiled for `arch`.
pub fn cache_key(text: &str, arch: &str) -> String {
    let opts = options().join(" ");
    format!(
        "{:016x}",
        fnv1a(&[text.as_bytes(), arch.as_bytes(), opts.as_bytes()])
    )
}

/// Where compiled kernels are cached: `$MODELSPEC_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/modelspec/kernels`, else `~/.cache/modelspec/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MODELSPEC_KERNEL_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("modelspec").join("kernels"));
    }
    std::env::var_os("HOME").map(|h| {
        PathBuf::from(h)
            .join(".cache")
            .join("modelspec")
            .join("kernels")
    })
}

/// Whether NVRTC can be loaded on this machine (no GPU is needed to compile).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// PTX for `src` on `arch`: from the disk cache, or compiled by NVRTC and then cached.
/// Returns the PTX text and whether it came from the cache.
pub fn compile(src: &KernelSource, arch: &'static str) -> Result<(String, bool)> {
    let text = src.text();
    let key = cache_key(&text, arch);
    let path = cache_dir().map(|d| d.join(format!("{key}.{arch}.ptx")));
    if let Some(p) = &path
        && let Ok(ptx) = std::fs::read_to_string(p)
    {
        return Ok((ptx, true));
    }
    if !nvrtc_present() {
        return Err(CudaError::MissingLibrary { library: "nvrtc" });
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: options(),
        ..Default::default()
    };
    let ptx =
        cudarc::nvrtc::compile_ptx_with_opts(&text, opts).map_err(|e| CudaError::Compile {
            module: src.name.clone(),
            arch: arch.to_string(),
            log: match e {
                cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                    log.to_string_lossy().into_owned()
                }
                other => format!("{other:?}"),
            },
        })?;
    let ptx = ptx.to_src();
    if let Some(p) = &path {
        // A cache that cannot be written only costs a recompilation next time.
        let _ = write_atomic(p, &ptx);
    }
    Ok((ptx, false))
}

/// The cache file through the one output writer (unique temp name, fsync, rename; the temp file
/// removed on failure), so two processes compiling the same module never leave a torn file.
fn write_atomic(path: &std::path::Path, text: &str) -> Result<()> {
    let cache_error = |source| CudaError::Cache {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(cache_error)?;
    }
    crate::io::write_atomic(path, text.as_bytes())
        .map_err(|e| cache_error(std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_depends_on_source_and_arch() {
        let a = cache_key("x", "compute_90");
        assert_ne!(a, cache_key("y", "compute_90"));
        assert_ne!(a, cache_key("x", "compute_80"));
        assert_eq!(a, cache_key("x", "compute_90"));
    }

    #[test]
    fn library_instantiates_requested_head_dims() {
        let s = KernelSource::library("t", &[64, 256, 80, 64], BTreeMap::new());
        assert!(s.body.contains("ATTN_FWD_INSTANTIATE(64, 64)"));
        assert!(s.body.contains("ATTN_BWD_INSTANTIATE(64)"));
        assert!(s.body.contains("ATTN_FWD_INSTANTIATE(256, 32)"));
        assert!(!s.body.contains("ATTN_BWD_INSTANTIATE(256)"));
        assert!(s.body.contains("ATTN_FWD_INSTANTIATE(80, 64)"));
        assert_eq!(s.body.matches("ATTN_FWD_INSTANTIATE(64, 64)").count(), 1);
    }
}
