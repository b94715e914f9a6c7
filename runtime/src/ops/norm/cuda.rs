//! The norm's CUDA side: the launchers of `norm.cu` (RMSNorm / LayerNorm fused with the residual
//! add, forward and backward), the weight gradients and the column sum the bias gradients use
//! (both through [`crate::cuda::reduce`]), as methods of [`Kernels`], and the kernel source that
//! [`crate::cuda::compile`] puts in the library.

use crate::cuda::Kernels;
use crate::cuda::error::CudaError;
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt};
use crate::cuda::launch::BLOCK;
use crate::cuda::reduce::{self, COUNTER_BYTES, ReduceScratch};
use crate::cuda_args;
use modelspec_dsl::ir::NormKind;
use std::ffi::c_void;

/// The CUDA C of `norm.cu`, `norm_warp.cu` and `norm_bwd_dw.cu`, assembled into the kernel
/// library after `common.cuh`.
pub(crate) const SOURCE: &str = concat!(
    include_str!("norm.cu"),
    "\n",
    include_str!("norm_warp.cu"),
    "\n",
    include_str!("norm_bwd_dw.cu")
);

/// Rows of a warp-per-row kernel block (`norm_{fwd,bwd}_warp_*`: 256 threads, one warp a row).
const WARP_ROWS: u32 = BLOCK / 32;

/// Vectors of 16 bytes a lane at most in the warp-per-row kernels that [`warp_rows`] picks.
/// Measured on an H100 (`cuda_bench norm`, 16384 rows, bf16; session-h100-2026-12-06-s6): at 768
/// wide (3 vectors) a warp a row beats a block a row (forward 44.8 against 58.0 us, backward
/// 45.5 against 51.6 us); at 2048 (8 vectors, 221 registers, 8 rows an SM) it loses the
/// backward (148 against 109 us) and ties the forward (104 against 102 us). 4 (bf16 1024, f32
/// 512) is the bound between them; the kernels themselves take up to 8 (`NormWarp::OK`).
const WARP_MAX_VECTORS: usize = 4;

/// Whether rows of width `c` run the warp-per-row kernels (`norm_warp.cu`) in a library whose
/// model width is `d_model`: the library's own width (a compile-time constant there), up to
/// [`WARP_MAX_VECTORS`] 16-byte vectors a lane (bf16 <= 1024, f32 <= 512 elements). Other rows
/// (qk-norms, wider models) run one block a row. Pointer alignment plays no part: the warp
/// kernels take scalar accesses where it fails.
pub(crate) fn warp_rows(d_model: usize, dt: Dtype, c: usize) -> bool {
    d_model > 0 && c == d_model && c <= 32 * WARP_MAX_VECTORS * (16 / dt.bytes())
}

/// Rows a chunk of the one-pass backward holds at least (8 a warp).
const FUSED_MIN_ROWS: usize = 64;
/// Chunks of the one-pass backward at most (about two 8-row blocks an SM on a large GPU).
const FUSED_MAX_CHUNKS: usize = 256;
/// Partial sums per output at most: what [`ReduceScratch::bytes_for`] holds for any width.
const FUSED_MAX_PARTIALS: usize = 1 << 18;

/// Whether `norm_bwd_dw_warp_*` (`norm_bwd_dw.cu`) serves rows of width `c` in a library of
/// model width `d_model`: the library's width, in 16-byte vectors, at most 3 a lane (bf16 <= 768,
/// f32 <= 384; the kernel's `NormFused::OK`). The pointers must also be 16-byte aligned.
pub(crate) fn fused_rows(d_model: usize, dt: Dtype, c: usize) -> bool {
    let vn = 16 / dt.bytes();
    d_model > 0 && c == d_model && c.is_multiple_of(vn) && c <= 32 * 3 * vn
}

/// The one-pass backward's split of `rows` (at least 1) rows of `c`: (chunks, rows a chunk),
/// none empty, from the shape alone.
pub(crate) fn fused_split(rows: usize, c: usize) -> (usize, usize) {
    let chunks = rows
        .div_ceil(FUSED_MIN_ROWS)
        .min(FUSED_MAX_CHUNKS)
        .min((FUSED_MAX_PARTIALS / c.max(1)).max(1))
        .max(1);
    let per = rows.div_ceil(chunks).max(1);
    (rows.div_ceil(per).max(1), per)
}

/// Whether the one-pass norm backward serves the rows it fits (see [`Kernels::norm_bwd_dw`]): on
/// unless `MODELSPEC_NORM_FUSED_DW` is `off`/`0`/`false`. Measured on an H100 (gpt2's 16384 rows
/// of 768, bf16; session-h100-2026-12-06-s6): 67.7 us against 79.5 us for `norm_bwd` then
/// `norm_dw`, and the gpt2-124m step 31.06 against 31.43 ms.
pub(crate) fn fused_dw_from_env() -> bool {
    crate::cuda::env_switch("MODELSPEC_NORM_FUSED_DW") != Some(false)
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
        let (c_, is_layer) = (c as i32, kind.centred() as i32);
        let head = cuda_args![y, r_out, rstd, mean, x, res, w, b];
        let tail = cuda_args![c_, eps, offset, is_layer];
        self.norm_rows("norm_fwd", dt, rows, c, &head, &tail)
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
        let (c_, is_layer) = (c as i32, kind.centred() as i32);
        let head = cuda_args![dx, dy, r, w, rstd, mean, dres];
        let tail = cuda_args![c_, offset, is_layer];
        self.norm_rows("norm_bwd", dt, rows, c, &head, &tail)
    }

    /// Launches `{base}_warp_{dtype}` over `rows` rows of width `c` where they qualify (one warp
    /// a row, see `warp_rows`; the row count passed between `head` and `tail`), else
    /// `{base}_{dtype}` (one block a row, arguments `head` then `tail`). Nothing for 0 rows.
    fn norm_rows(
        &self,
        base: &str,
        dt: Dtype,
        rows: usize,
        c: usize,
        head: &[*mut c_void],
        tail: &[*mut c_void],
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let n_ = rows as i32;
        let n_arg = cuda_args![n_];
        let (warp, grid, mid) = if self.norm_warp_rows() && warp_rows(self.d_model(), dt, c) {
            (
                "_warp",
                ((rows as u32).div_ceil(WARP_ROWS), 1, 1),
                &n_arg[..],
            )
        } else {
            ("", (rows as u32, 1, 1), &[][..])
        };
        let name = format!("{base}{warp}_{}", dt.suffix());
        self.go_block(&name, grid, &mut [head, mid, tail].concat())
    }

    /// The norm backward and its weight/bias gradients: [`Kernels::norm_bwd`] then
    /// [`Kernels::norm_dw`] (same arguments), or, where [`Kernels::set_norm_fused_dw`] is on and
    /// the rows qualify (the library's width up to 3 vectors a lane, 16-byte aligned pointers, a
    /// gradient wanted), `norm_bwd_dw_warp_{dtype}`: one pass over dy and r for both, its
    /// partial sums and counters in `scratch` as `norm_dw`'s (the same formulas; the column
    /// sums' order differs, fixed by (rows, c), so bits repeat run to run).
    #[allow(clippy::too_many_arguments)]
    pub fn norm_bwd_dw(
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
        dw: DevPtr,
        db: DevPtr,
        rows: usize,
        c: usize,
        offset: f32,
        scratch: ReduceScratch,
    ) -> Result<()> {
        let fused = self.norm_fused_dw()
            && rows > 0
            && (dw != 0 || db != 0)
            && fused_rows(self.d_model(), dt, c)
            && [dx, dy, r, w, dres].iter().all(|p| p % 16 == 0);
        if !fused {
            self.norm_bwd(dt, kind, dx, dy, r, w, rstd, mean, dres, rows, c, offset)?;
            return self.norm_dw(dt, kind, dw, db, dy, r, rstd, mean, rows, c, scratch);
        }
        let name = format!("norm_bwd_dw_warp_{}", dt.suffix());
        let (chunks, per) = fused_split(rows, c);
        let need = COUNTER_BYTES + 2 * chunks * c * 4;
        if scratch.ptr == 0 || scratch.bytes < need || !scratch.ptr.is_multiple_of(4) {
            return Err(CudaError::BadLaunch {
                kernel: name,
                why: format!(
                    "{rows} x {c} needs {need} bytes of 4-byte-aligned reduction scratch \
                     ({chunks} chunks), {} given at {:#x}",
                    scratch.bytes, scratch.ptr
                ),
            });
        }
        let (cnt, part) = (scratch.ptr, scratch.ptr + COUNTER_BYTES as u64);
        let (n_, c_, per_) = (rows as i32, c as i32, per as i32);
        let is_layer = kind.centred() as i32;
        self.go_block(
            &name,
            (chunks as u32, 1, 1),
            &mut cuda_args![
                dx, dy, r, w, rstd, mean, dres, dw, db, cnt, part, n_, c_, per_, offset, is_layer
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
        let mean = if kind.centred() { mean } else { 0 };
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
    fn fused_rows_take_the_library_width_up_to_three_vectors_a_lane() {
        assert!(fused_rows(768, Dtype::Bf16, 768));
        assert!(!fused_rows(768, Dtype::F32, 768));
        assert!(fused_rows(384, Dtype::F32, 384));
        assert!(!fused_rows(1024, Dtype::Bf16, 1024));
        assert!(!fused_rows(100, Dtype::Bf16, 100));
        assert!(!fused_rows(768, Dtype::Bf16, 64));
        assert!(!fused_rows(0, Dtype::Bf16, 0));
    }

    #[test]
    fn fused_split_covers_the_rows_within_the_scratch() {
        // gpt2 B16 T1024: 256 chunks of 64 rows (8 a warp).
        assert_eq!(fused_split(16384, 768), (256, 64));
        // The grids cuda_kernels' norm tests name: 256 chunks of 65 (the last 62 rows), and 5
        // chunks (fewer finishing groups than 8).
        assert_eq!(fused_split(16637, 768), (256, 65));
        assert_eq!(fused_split(16637, 384), (256, 65));
        assert_eq!(fused_split(300, 768), (5, 60));
        assert_eq!(fused_split(2100, 768), (33, 64));
        for rows in [1, 7, 37, 63, 64, 65, 1000, 16384, 65536, 1 << 22] {
            for c in [8, 96, 384, 768] {
                let (chunks, per) = fused_split(rows, c);
                assert!((1..=FUSED_MAX_CHUNKS).contains(&chunks), "{rows} x {c}");
                assert!(
                    chunks * per >= rows && (chunks - 1) * per < rows,
                    "{rows} x {c}"
                );
                let need = COUNTER_BYTES + 2 * chunks * c * 4;
                assert!(need <= ReduceScratch::bytes_for(c), "{rows} x {c}");
            }
        }
    }

    #[test]
    fn warp_rows_take_the_library_width_up_to_four_vectors_a_lane() {
        assert!(warp_rows(768, Dtype::Bf16, 768));
        assert!(!warp_rows(768, Dtype::F32, 768));
        assert!(warp_rows(1024, Dtype::Bf16, 1024));
        assert!(!warp_rows(1032, Dtype::Bf16, 1032));
        assert!(warp_rows(512, Dtype::F32, 512));
        assert!(!warp_rows(2048, Dtype::Bf16, 2048));
        assert!(!warp_rows(4096, Dtype::Bf16, 4096));
        assert!(warp_rows(100, Dtype::Bf16, 100));
        // Other widths (qk-norms) and libraries without a width keep one block a row.
        assert!(!warp_rows(768, Dtype::Bf16, 64));
        assert!(!warp_rows(0, Dtype::Bf16, 0));
        assert!(!warp_rows(0, Dtype::Bf16, 768));
    }
}
