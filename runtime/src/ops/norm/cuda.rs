//! The norm's CUDA side: the launchers of `norm.cu` (RMSNorm / LayerNorm fused with the residual
//! add, forward and backward), the weight gradients and the column sum the bias gradients use
//! (both through [`crate::cuda::reduce`]), as methods of [`Kernels`], and the kernel source that
//! [`crate::cuda::compile`] puts in the library.

use crate::cuda::Kernels;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::BLOCK;
use crate::cuda::reduce::{self, ReduceScratch};
use crate::cuda_args;
use modelspec_dsl::ir::NormKind;

/// The CUDA C of `norm.cu` and `norm_warp.cu`, assembled into the kernel library after
/// `common.cuh`.
pub(crate) const SOURCE: &str =
    concat!(include_str!("norm.cu"), "\n", include_str!("norm_warp.cu"));

/// Rows of a warp-per-row kernel block (`norm_{fwd,bwd}_warp_*`: 256 threads, one warp a row).
const WARP_ROWS: u32 = BLOCK / 32;

/// Whether rows of width `c` run the warp-per-row kernels (`norm_warp.cu`) in a library whose
/// model width is `d_model`: the library's own width (a compile-time constant there), when a
/// row fits a warp's registers (at most 8 16-byte vectors a lane: bf16 <= 2048, f32 <= 1024
/// elements; the kernels' `NormWarp::OK`). Other rows (qk-norms, wider models) run one block a
/// row. Pointer alignment plays no part: the warp kernels take scalar accesses where it fails.
pub(crate) fn warp_rows(d_model: usize, dt: Dtype, c: usize) -> bool {
    d_model > 0 && c == d_model && c <= 32 * 8 * (16 / dt.bytes())
}

impl Kernels {
    /// `norm_fwd_{dtype}`: y = norm(x + res) (see the kernel). `r_out`, `res`, `w`, `b`, `mean`
    /// may be 0; rows N of width C. Rows of the library's width run `norm_fwd_warp_{dtype}`
    /// (one warp a row, see `warp_rows`), others `norm_fwd_{dtype}` (one block a row).
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
        if rows == 0 {
            return Ok(());
        }
        if self.norm_warp_rows() && warp_rows(self.d_model(), dt, c) {
            let n_ = rows as i32;
            let name = format!("norm_fwd_warp_{}", dt.suffix());
            return self.go_block(
                &name,
                ((rows as u32).div_ceil(WARP_ROWS), 1, 1),
                &mut cuda_args![
                    y, r_out, rstd, mean, x, res, w, b, n_, c_, eps, offset, is_layer
                ],
            );
        }
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
    /// Rows of the library's width run `norm_bwd_warp_{dtype}` (one warp a row, see `warp_rows`).
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
        if rows == 0 {
            return Ok(());
        }
        if self.norm_warp_rows() && warp_rows(self.d_model(), dt, c) {
            let n_ = rows as i32;
            let name = format!("norm_bwd_warp_{}", dt.suffix());
            return self.go_block(
                &name,
                ((rows as u32).div_ceil(WARP_ROWS), 1, 1),
                &mut cuda_args![dx, dy, r, w, rstd, mean, dres, n_, c_, offset, is_layer],
            );
        }
        let name = format!("norm_bwd_{}", dt.suffix());
        self.go_block(
            &name,
            (rows as u32, 1, 1),
            &mut cuda_args![dx, dy, r, w, rstd, mean, dres, c_, offset, is_layer],
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
    fn warp_rows_take_the_library_width_up_to_eight_vectors_a_lane() {
        assert!(warp_rows(768, Dtype::Bf16, 768));
        assert!(warp_rows(768, Dtype::F32, 768));
        assert!(warp_rows(2048, Dtype::Bf16, 2048));
        assert!(!warp_rows(2048, Dtype::F32, 2048));
        assert!(warp_rows(1024, Dtype::F32, 1024));
        assert!(!warp_rows(4096, Dtype::Bf16, 4096));
        assert!(warp_rows(100, Dtype::Bf16, 100));
        // Other widths (qk-norms) and libraries without a width keep one block a row.
        assert!(!warp_rows(768, Dtype::Bf16, 64));
        assert!(!warp_rows(0, Dtype::Bf16, 0));
        assert!(!warp_rows(0, Dtype::Bf16, 768));
    }
}
