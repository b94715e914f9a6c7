//! The cross-entropy's CUDA side: the launcher of `cross_entropy.cu` (the per-row loss of the
//! logits, and optionally their gradient in place), as a method of [`Kernels`], and the kernel
//! source that [`crate::cuda::compile`] puts in the library.
//!
//! Two kernels: `xent_{dtype}` for any row stride, and `xent_row_{dtype}_{ld}`, which exists in a
//! library instantiated for the classifier's logits row stride `ld` (`MS_LOGITS_LD`) and holds
//! each row on chip between its passes (one read and one write of the logits instead of two
//! reads and a write). [`Kernels::xent`] takes the second whenever the library has it for the
//! stride, the rows are 16-byte aligned and the device has the shared memory it plans for.

use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda_args;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};

/// The CUDA C of `cross_entropy.cu`, assembled into the kernel library after `common.cuh`.
pub(crate) const SOURCE: &str = include_str!("cross_entropy.cu");

/// 16-byte vectors a thread keeps in registers (`XENT_ROW_REGV`).
const ROW_REG_VECS: usize = 5;
/// The most shared memory a block takes for two blocks an SM (`XENT_ROW_SMEM_TWO`).
const ROW_SMEM_TWO: usize = 102_400;
/// The most shared memory a block takes at all (`XENT_ROW_SMEM_MAX`, sm_90's opt-in limit).
const ROW_SMEM_MAX: usize = 232_448;

/// The launch of the row-resident kernel for rows of `ld` elements of `es` bytes: the mirror of
/// `XentRowPlan` in cross_entropy.cu (threads a block, bytes of dynamic shared memory), `None`
/// where a row does not fit on chip (or is not a whole number of 16-byte vectors).
fn row_plan(ld: usize, es: usize) -> Option<(u32, u32)> {
    let vn = 16 / es;
    if ld == 0 || !ld.is_multiple_of(vn) || ld > i32::MAX as usize {
        return None;
    }
    let vectors = ld / vn;
    let smem =
        |threads: usize| vectors.div_ceil(threads).saturating_sub(ROW_REG_VECS) * threads * 16;
    let threads = if smem(512) <= ROW_SMEM_TWO { 512 } else { 1024 };
    let bytes = smem(threads);
    (bytes <= ROW_SMEM_MAX).then_some((threads as u32, bytes as u32))
}

/// What the row-resident cross-entropy kernel of one dtype and stride compiled to: the block it
/// is launched with and the registers the driver gave it (for benchmarks and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XentRowInfo {
    /// Threads a block.
    pub threads: u32,
    /// Bytes of dynamic shared memory a block (the row's part that is not in registers).
    pub smem: u32,
    /// Registers a thread.
    pub regs: i32,
    /// Bytes of local memory a thread (register spills; 0 expected).
    pub local_bytes: i32,
}

impl Kernels {
    /// The row-resident kernel's name and launch for rows of stride `ld` starting at `logits`,
    /// if this library has it and the device can run it.
    fn xent_row_launch(&self, dt: Dtype, logits: DevPtr, ld: usize) -> Option<(String, u32, u32)> {
        let (threads, smem) = row_plan(ld, dt.bytes())?;
        if !logits.is_multiple_of(16) {
            return None;
        }
        let optin = self
            .gpu()
            .stream()
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .ok()?;
        let name = format!("xent_row_{}_{ld}", dt.suffix());
        // Present only in a library instantiated for this stride.
        let f = self.launcher().module().function(&name).ok()?;
        // The block's static shared memory (the reductions' scratch) counts against the same
        // opt-in limit as the dynamic bytes: past it the launch would fail, not fall back.
        let fixed = f
            .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .ok()?;
        if i64::from(smem) + i64::from(fixed) > i64::from(optin) {
            return None;
        }
        Some((name, threads, smem))
    }

    /// The row-resident kernel for `dt` rows of stride `ld`, as the driver compiled it; `None`
    /// when [`Kernels::xent`] would run the generic kernel for such rows (aligned ones).
    pub fn xent_row_info(&self, dt: Dtype, ld: usize) -> Option<XentRowInfo> {
        let (name, threads, smem) = self.xent_row_launch(dt, 0, ld)?;
        let f = self.launcher().module().function(&name).ok()?;
        Some(XentRowInfo {
            threads,
            smem,
            regs: f.num_regs().ok()?,
            local_bytes: f
                .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)
                .ok()?,
        })
    }

    /// `xent_{dtype}`: per-row loss of logits `[rows, ld]` (V valid columns) against i32
    /// targets (-1 = ignore); with `dscale` the logits become d(dscale * loss)/d(logits).
    /// Rows of the library's classifier stride run the row-resident kernel (see the module).
    #[allow(clippy::too_many_arguments)]
    pub fn xent(
        &self,
        dt: Dtype,
        logits: DevPtr,
        loss: DevPtr,
        targets: DevPtr,
        rows: usize,
        vocab: usize,
        ld: usize,
        softcap: f32,
        dscale: Option<f32>,
    ) -> Result<()> {
        let (v_, ld_) = (vocab as i32, ld as i32);
        let write_grad = dscale.is_some() as i32;
        let ds = dscale.unwrap_or(0.0);
        let args = &mut cuda_args![logits, loss, targets, v_, ld_, softcap, ds, write_grad];
        if let Some((name, threads, smem)) = self.xent_row_launch(dt, logits, ld) {
            return self.go(&name, (rows as u32, 1, 1), (threads, 1, 1), smem, args);
        }
        let name = format!("xent_{}", dt.suffix());
        self.go(&name, (rows as u32, 1, 1), (512, 1, 1), 0, args)
    }
}

#[cfg(test)]
mod tests {
    use super::row_plan;

    #[test]
    fn row_plans_of_the_classifier_shapes() {
        // gpt2 bf16: 6288 vectors, 13 a thread at 512 threads, 8 of them in shared memory.
        assert_eq!(row_plan(50304, 2), Some((512, 8 * 512 * 16)));
        // gpt2 f32: too much shared memory for two blocks an SM; 13 slots at 1024 threads.
        assert_eq!(row_plan(50304, 4), Some((1024, 8 * 1024 * 16)));
        // llama bf16: 16 slots at 1024 threads, 11 in shared memory (176 KB).
        assert_eq!(row_plan(128256, 2), Some((1024, 11 * 1024 * 16)));
        // llama f32 (501 KB a row) does not fit; a stride that is no whole vector has no plan.
        assert_eq!(row_plan(128256, 4), None);
        assert_eq!(row_plan(5003, 2), None);
        // Small rows live in registers only.
        assert_eq!(row_plan(256, 2), Some((512, 0)));
    }
}
