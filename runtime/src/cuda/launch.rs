//! The one launch layer under every kernel module's typed wrappers ([`super::ops::Kernels`], the
//! decoder's and the MoE layer's kernels): assembling a module's source from its parts, looking a
//! kernel up in the loaded module, grid sizing and the launch itself.
//!
//! Each module keeps only its typed methods (which bind locals matching the kernel's C signature
//! and say what sizes the buffers need); what every launch does the same way lives here.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::compile::KernelSource;
use super::error::Result;
use super::gpu::{Gpu, Module};

/// Threads per block of the one-dimensional elementwise and row kernels.
pub(crate) const BLOCK: u32 = 256;

/// Blocks of `per` threads (or items) covering `n`, at least one.
pub(crate) fn blocks(n: usize, per: u32) -> u32 {
    n.div_ceil(per as usize).max(1) as u32
}

/// A one-dimensional grid of [`blocks`]`(n, per)`.
pub(crate) fn grid(n: usize, per: u32) -> (u32, u32, u32) {
    (blocks(n, per), 1, 1)
}

/// A size as the kernels' `int` arguments take it.
pub(crate) fn int(n: usize) -> i32 {
    n as i32
}

/// A kernel module's source: `parts` (e.g. `common.cuh`, then the module's `.cu` files) joined
/// in order, each ending with a newline, without defines.
pub(crate) fn module_source(name: &str, parts: &[&str]) -> KernelSource {
    let mut body = String::new();
    for part in parts {
        body.push_str(part);
        body.push('\n');
    }
    KernelSource {
        name: name.into(),
        defines: BTreeMap::new(),
        body,
    }
}

/// A loaded module on one GPU: looks kernels up by name and launches them.
pub(crate) struct Launcher {
    gpu: Arc<Gpu>,
    module: Arc<Module>,
}

impl Launcher {
    /// Compiles (or loads from the disk cache) `src` on `gpu`.
    pub(crate) fn load(gpu: &Arc<Gpu>, src: &KernelSource) -> Result<Launcher> {
        Ok(Launcher {
            gpu: gpu.clone(),
            module: gpu.load(src)?,
        })
    }

    /// The GPU the module is loaded on.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The loaded module.
    pub(crate) fn module(&self) -> &Module {
        &self.module
    }

    /// Launches the kernel `name` of this module on [`Gpu::current`].
    ///
    /// # Safety
    /// As [`Gpu::launch`]: `args` must match the kernel's C signature (each a pointer to a local
    /// of the argument's type), and every device pointer among them must be valid for the
    /// accesses the kernel makes with the sizes passed.
    pub(crate) unsafe fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        let f = self.module.function(name)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.gpu.launch(name, &f, grid, block, smem, args) }
    }

    /// [`Launcher::launch`] on `stream` ([`Gpu::launch_on`]).
    ///
    /// # Safety
    /// As [`Gpu::launch_on`].
    pub(crate) unsafe fn launch_on(
        &self,
        stream: &cudarc::driver::CudaStream,
        name: &str,
        cfg: cudarc::driver::LaunchConfig,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        let f = self.module.function(name)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.gpu.launch_on(stream, name, &f, cfg, args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_n_and_never_zero() {
        assert_eq!(blocks(0, 256), 1);
        assert_eq!(blocks(1, 256), 1);
        assert_eq!(blocks(256, 256), 1);
        assert_eq!(blocks(257, 256), 2);
        assert_eq!(grid(1000, 128), (8, 1, 1));
    }

    #[test]
    fn module_source_joins_parts_in_order() {
        let src = module_source("m", &["a", "b"]);
        assert_eq!(src.name, "m");
        assert_eq!(src.body, "a\nb\n");
        assert!(src.defines.is_empty());
    }
}
