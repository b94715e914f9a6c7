//! The norm's CUDA side: the launchers of `norm.cu` (RMSNorm / LayerNorm fused with the residual
//! add, forward and backward), the weight gradients and the column sum the bias gradients use
//! (both through [`crate::cuda::reduce`]), the fused backward that produces the weight gradients
//! in the same pass (`norm_bwd_dw.cu`, [`Kernels::norm_bwd_dw`]), as methods of [`Kernels`], and
//! the kernel source that [`crate::cuda::compile`] puts in the library.

use crate::cuda::Kernels;
use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::BLOCK;
use crate::cuda::reduce::{self, COUNTER_BYTES, ReduceScratch};
use crate::cuda_args;
use modelspec_dsl::ir::NormKind;

/// The CUDA C of `norm.cu` and `norm_bwd_dw.cu`, assembled into the kernel library after
/// `common.cuh`.
pub(crate) const SOURCE: &str = concat!(include_str!("norm.cu"), include_str!("norm_bwd_dw.cu"));

/// Widths up to which [`Kernels::norm_bwd_dw`] runs the fused kernel (its register path holds at
/// most 16 elements of a row in each of 256 threads); wider rows take `norm_bwd` + `norm_dw`.
pub const FUSED_NORM_MAX_WIDTH: usize = 4096;
/// Chunks of the fused kernel at most: one block each, one wave of two 256-thread blocks per SM
/// on an H100 (132 SMs), and at most 32 chunks per finishing group.
const FUSED_MAX_CHUNKS: usize = 256;
/// Rows a chunk of the fused kernel holds at least.
const FUSED_MIN_ROWS: usize = 32;
/// Partial-sum floats per output that every [`ReduceScratch::bytes_for`] holds (2^18).
const FUSED_PART_FLOATS: usize = 1 << 18;

/// The fused kernel's split of `rows` (at least 1) rows of `c` columns: `(chunks,
/// rows_per_chunk)`, no chunk empty, `chunks x c` within what [`ReduceScratch::bytes_for`]`(c)`
/// holds (`max(2^18, c)` floats per output). Depends on the shape alone (determinism).
pub(crate) fn fused_split(rows: usize, c: usize) -> (usize, usize) {
    let by_scratch = (FUSED_PART_FLOATS.max(c) / c.max(1)).max(1);
    let chunks = FUSED_MAX_CHUNKS
        .min(by_scratch)
        .min(rows.div_ceil(FUSED_MIN_ROWS))
        .max(1);
    let rows_per_chunk = rows.div_ceil(chunks).max(1);
    (rows.div_ceil(rows_per_chunk).max(1), rows_per_chunk)
}

impl Kernels {
    /// `norm_fwd_{dtype}`: y = norm(x + res) (see the kernel). `r_out`, `res`, `w`, `b`, `mean`
    /// may be 0; rows N of width C.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_fwd(
        &self,
        dt: Dtype,
        kind: NormKind,
        y: DevPtr,
        r_out: DevPtr,
        rstd: DevPtr,
        mean: DevPtr,
        x: DevPtr,
        res: DevPtr,
        w: DevPtr,
        b: DevPtr,
        rows: usize,
        c: usize,
        eps: f32,
        offset: f32,
    ) -> Result<()> {
        let (c_, is_layer) = (c as i32, (kind == NormKind::Layer) as i32);
        let name = format!("norm_fwd_{}", dt.suffix());
        self.go_block(
            &name,
            (rows as u32, 1, 1),
            &mut cuda_args![
                y, r_out, rstd, mean, x, res, w, b, c_, eps, offset, is_layer
            ],
        )
    }

    /// `norm_bwd_{dtype}`: dx from dy and the saved (r, rstd, mean); adds `dres` when not 0.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_bwd(
        &self,
        dt: Dtype,
        kind: NormKind,
        dx: DevPtr,
        dy: DevPtr,
        r: DevPtr,
        w: DevPtr,
        rstd: DevPtr,
        mean: DevPtr,
        dres: DevPtr,
        rows: usize,
        c: usize,
        offset: f32,
    ) -> Result<()> {
        let (c_, is_layer) = (c as i32, (kind == NormKind::Layer) as i32);
        let name = format!("norm_bwd_{}", dt.suffix());
        self.go_block(
            &name,
            (rows as u32, 1, 1),
            &mut cuda_args![dx, dy, r, w, rstd, mean, dres, c_, offset, is_layer],
        )
    }

    /// `norm_bwd_dw_{dtype}`: [`Kernels::norm_bwd`] and [`Kernels::norm_dw`] in one pass over dy
    /// and r: dx (adding `dres` when not 0), and `dw[j] += Σ_n dy * xhat`, `db[j] += Σ_n dy`
    /// (f32; either may be 0). Each block writes the partial sums of its chunk of rows to
    /// `scratch` ([`ReduceScratch::bytes_for`]`(c)`, zeroed once when allocated) and the blocks
    /// that arrive last add them in a fixed order: deterministic, bit-identical run to run (not
    /// bit-identical to `norm_bwd` + `norm_dw`, whose sums run in another order). Rows wider
    /// than [`FUSED_NORM_MAX_WIDTH`] run those two kernels instead. Fast (rows in registers)
    /// when `c` is the library's d_model and the pointers are 16-byte aligned; otherwise an
    /// element-wise path, correct for any width.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_bwd_dw(
        &self,
        dt: Dtype,
        kind: NormKind,
        (dx, dy, r, w): (DevPtr, DevPtr, DevPtr, DevPtr),
        (rstd, mean, dres): (DevPtr, DevPtr, DevPtr),
        (dw, db): (DevPtr, DevPtr),
        rows: usize,
        c: usize,
        offset: f32,
        scratch: ReduceScratch,
    ) -> Result<()> {
        if rows == 0 || c == 0 {
            return Ok(());
        }
        if c > FUSED_NORM_MAX_WIDTH {
            self.norm_bwd(dt, kind, dx, dy, r, w, rstd, mean, dres, rows, c, offset)?;
            return self.norm_dw(dt, kind, dw, db, dy, r, rstd, mean, rows, c, scratch);
        }
        let name = format!("norm_bwd_dw_{}", dt.suffix());
        let bad = |why: String| CudaError::BadLaunch {
            kernel: name.clone(),
            why,
        };
        if rows > i32::MAX as usize {
            return Err(bad(format!("{rows} rows exceed the kernel's int sizes")));
        }
        let (chunks, rpc) = fused_split(rows, c);
        if dw != 0 || db != 0 {
            let need = COUNTER_BYTES + 2 * chunks * c * 4;
            if scratch.ptr == 0 || scratch.bytes < need {
                return Err(bad(format!(
                    "{rows} x {c} needs {need} bytes of reduction scratch ({chunks} chunks), {} given",
                    scratch.bytes
                )));
            }
            if !scratch.ptr.is_multiple_of(4) {
                return Err(bad(format!(
                    "reduction scratch at {:#x} is not 4-byte aligned",
                    scratch.ptr
                )));
            }
        }
        let (cnt, part) = (scratch.ptr, scratch.ptr + COUNTER_BYTES as u64);
        let (n_, c_, rpc_, is_layer) = (
            rows as i32,
            c as i32,
            rpc as i32,
            (kind == NormKind::Layer) as i32,
        );
        let mean = if kind == NormKind::Layer { mean } else { 0 };
        self.go(
            &name,
            (chunks as u32, 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut cuda_args![
                dx, dy, r, w, rstd, mean, dres, dw, db, cnt, part, n_, c_, rpc_, offset, is_layer
            ],
        )
    }

    /// The norm's weight and bias gradients: `dw[j] += Σ_n dy * xhat`, `db[j] += Σ_n dy` over
    /// `rows` rows of `c` (f32; either may be 0), `xhat` from the saved (r, rstd, mean). A
    /// deterministic column reduction in one launch ([`crate::cuda::reduce`]) whose counters and
    /// partial sums go to `scratch` ([`ReduceScratch::bytes_for`]`(c)` bytes, zeroed once when
    /// allocated, serve any row count).
    #[allow(clippy::too_many_arguments)]
    pub fn norm_dw(
        &self,
        dt: Dtype,
        kind: NormKind,
        dw: DevPtr,
        db: DevPtr,
        dy: DevPtr,
        r: DevPtr,
        rstd: DevPtr,
        mean: DevPtr,
        rows: usize,
        c: usize,
        scratch: ReduceScratch,
    ) -> Result<()> {
        let mean = if kind == NormKind::Layer { mean } else { 0 };
        reduce::norm_dw(
            self.launcher(),
            dt,
            dw,
            db,
            dy,
            r,
            rstd,
            mean,
            rows,
            c,
            scratch,
        )
    }

    /// `out[j] +=` the sum over `rows` rows of the first `c` columns of x `[rows, ld]` (bias
    /// gradients), out f32 (nothing when `out` is 0): the deterministic column reduction of
    /// [`Kernels::norm_dw`], counters and partial sums in `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub fn colsum(
        &self,
        dt: Dtype,
        out: DevPtr,
        x: DevPtr,
        rows: usize,
        c: usize,
        ld: usize,
        scratch: ReduceScratch,
    ) -> Result<()> {
        reduce::colsum(self.launcher(), dt, out, x, rows, c, ld, scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_split_covers_the_rows_within_the_scratch() {
        for rows in [1, 2, 31, 33, 37, 1000, 16383, 16384, 1 << 20] {
            for c in [1, 7, 64, 255, 768, 1000, 2048, 4096] {
                let (chunks, rpc) = fused_split(rows, c);
                assert!((1..=FUSED_MAX_CHUNKS).contains(&chunks), "{rows} x {c}");
                assert!(chunks * rpc >= rows, "{rows} x {c}: rows left out");
                assert!((chunks - 1) * rpc < rows, "{rows} x {c}: an empty chunk");
                let need = COUNTER_BYTES + 2 * chunks * c * 4;
                assert!(
                    need <= ReduceScratch::bytes_for(c),
                    "{rows} x {c}: {need} bytes"
                );
            }
        }
        // gpt2-124m at B16 T1024: one wave of 256 blocks of 64 rows.
        assert_eq!(fused_split(16384, 768), (256, 64));
        assert_eq!(fused_split(20, 768), (1, 20));
    }
}
