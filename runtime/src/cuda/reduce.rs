//! Column reductions on the GPU (`kernels/reduce.cu`): `out[c] +=` a sum over rows, in one
//! deterministic launch. The one implementation behind the bias gradients
//! ([`Kernels::colsum`](super::Kernels::colsum), the MoE experts' biases) and the norm weight and
//! bias gradients ([`Kernels::norm_dw`](super::Kernels::norm_dw)).
//!
//! The launch splits the rows into chunks, and each block writes its chunk's column sums (f32)
//! to a caller's scratch ([`ReduceScratch`]); the blocks that arrive last (arrival counters in
//! the scratch) add the chunks in a fixed order to the output. The split depends only on the
//! shape (rows, width), never on the device or timing, and no atomics touch a sum (only the
//! counters), so every result is bit-identical from run to run, whichever block finishes.

use super::error::{CudaError, Result};
use super::gpu::{DevPtr, Dtype, DtypeExt};
use super::launch::{Launcher, int};
use crate::cuda_args;

/// The CUDA C of `reduce.cu`, linked into the kernel library and the MoE module (after
/// `common.cuh`).
pub(crate) const SOURCE: &str = include_str!("kernels/reduce.cu");

/// Columns of one block (32 threads x 8 columns each).
const TILE: usize = 256;
/// Blocks aimed for: a few waves of 256-thread blocks on a large GPU.
const TARGET_BLOCKS: usize = 1024;
/// Chunks at most (the grid's y extent, and the length of each column's final sum).
const MAX_CHUNKS: usize = 256;
/// Rows a chunk holds at least (4 per row lane), so that small inputs are not over-split.
const MIN_ROWS: usize = 32;
/// Column tiles at most (widths up to `MAX_TILES x TILE` = 2^20 columns).
const MAX_TILES: usize = 4096;
/// Arrival counters per column tile: the tile's, and one per group of chunks (chunk k in group
/// k % 8).
const COUNTERS_PER_TILE: usize = 9;
/// Bytes of arrival counters at the start of every [`ReduceScratch`] (144 KiB, a multiple of
/// 256): the same for every scratch, so that a region shared by reductions of different widths
/// keeps its counters where every one of them looks.
pub(crate) const COUNTER_BYTES: usize = MAX_TILES * COUNTERS_PER_TILE * 4;

/// Device scratch of a column reduction: `bytes` bytes at `ptr` (4-byte aligned), the arrival
/// counters (the first 144 KiB, u32) and then the f32 partial sums. [`ReduceScratch::bytes_for`]
/// sizes one that serves every reduction up to a width, at any row count.
///
/// The counters must be zero before the first reduction (allocate the scratch zeroed, e.g.
/// `Gpu::zeros`, once); every reduction leaves them zero again, so nothing else may write the
/// first 144 KiB between reductions. The partial sums need no initial value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReduceScratch {
    /// Device address (0: none; a launch that needs scratch then fails cleanly).
    pub ptr: DevPtr,
    /// Bytes available at `ptr`.
    pub bytes: usize,
}

impl ReduceScratch {
    /// Scratch at `ptr` of `bytes` bytes.
    pub fn new(ptr: DevPtr, bytes: usize) -> ReduceScratch {
        ReduceScratch { ptr, bytes }
    }

    /// Bytes that serve every column reduction of rows at most `max_width` wide, whatever the
    /// row count, with two outputs (the norm's weight and bias): the counters (144 KiB) and
    /// `2 x 4 B x max(2^18, max_width)` (2 MiB up to 262144 columns). The split keeps `chunks x
    /// width` at most `TARGET_BLOCKS x TILE` floats whenever it uses more than one chunk.
    /// Widths above 2^20 columns are refused at launch.
    pub fn bytes_for(max_width: usize) -> usize {
        COUNTER_BYTES + 2 * 4 * (TARGET_BLOCKS * TILE).max(max_width)
    }
}

/// How a reduction of `rows` x `c` is split: `tiles` x `chunks` blocks, each chunk
/// `rows_per_chunk` rows (the last may hold fewer; none is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColPlan {
    pub tiles: usize,
    pub chunks: usize,
    pub rows_per_chunk: usize,
}

impl ColPlan {
    /// The split of `rows` (at least 1) rows of `c` columns.
    pub(crate) fn new(rows: usize, c: usize) -> ColPlan {
        let tiles = c.div_ceil(TILE).max(1);
        let chunks = (TARGET_BLOCKS / tiles)
            .clamp(1, MAX_CHUNKS)
            .min(rows.div_ceil(MIN_ROWS).max(1));
        let rows_per_chunk = rows.div_ceil(chunks).max(1);
        ColPlan {
            tiles,
            chunks: rows.div_ceil(rows_per_chunk).max(1),
            rows_per_chunk,
        }
    }

    /// Scratch bytes for `outputs` outputs of width `c`: the counters and the partial sums.
    pub(crate) fn scratch_bytes(&self, c: usize, outputs: usize) -> usize {
        COUNTER_BYTES + outputs * self.chunks * c * 4
    }
}

/// What a reduction sums over the rows.
#[derive(Debug, Clone, Copy)]
enum Summand {
    /// `x[n, c]` into one output.
    Sum { x: DevPtr },
    /// `dy[n, c] * xhat[n, c]` into the first output and `dy[n, c]` into the second, with
    /// `xhat = (r[n, c] - mean[n]) * rstd[n]` (`mean` 0: RMS).
    Norm {
        dy: DevPtr,
        r: DevPtr,
        rstd: DevPtr,
        mean: DevPtr,
    },
}

fn bad(kernel: &str, why: String) -> CudaError {
    CudaError::BadLaunch {
        kernel: kernel.into(),
        why,
    }
}

/// Whether every row start of the matrices at `ptrs` (rows of `ld` elements) is 16-byte
/// aligned, so that the kernel may read 16-byte vectors.
fn vector_ok(dt: Dtype, ld: usize, ptrs: &[DevPtr]) -> bool {
    (ld * dt.bytes()).is_multiple_of(16) && ptrs.iter().all(|p| p % 16 == 0)
}

/// One reduction into `outs` (0: that output is skipped), rows of stride `ld`: one launch.
#[allow(clippy::too_many_arguments)]
fn reduce(
    module: &Launcher,
    dt: Dtype,
    outs: [DevPtr; 2],
    what: Summand,
    rows: usize,
    c: usize,
    ld: usize,
    scratch: ReduceScratch,
) -> Result<()> {
    let (kernel, n_out) = match what {
        Summand::Sum { .. } => (format!("colred_sum_{}", dt.suffix()), 1),
        Summand::Norm { .. } => (format!("colred_norm_{}", dt.suffix()), 2),
    };
    if outs.iter().all(|&o| o == 0) || rows == 0 || c == 0 {
        return Ok(());
    }
    if ld < c {
        return Err(bad(&kernel, format!("row stride {ld} below the width {c}")));
    }
    if rows > i32::MAX as usize || ld > i32::MAX as usize {
        return Err(bad(
            &kernel,
            format!("{rows} rows of stride {ld} exceed the kernels' int sizes"),
        ));
    }
    let plan = ColPlan::new(rows, c);
    if plan.tiles > MAX_TILES {
        return Err(bad(
            &kernel,
            format!(
                "width {c} exceeds the {} columns a reduction serves",
                MAX_TILES * TILE
            ),
        ));
    }
    let need = plan.scratch_bytes(c, n_out);
    if scratch.ptr == 0 || scratch.bytes < need {
        return Err(bad(
            &kernel,
            format!(
                "{rows} x {c} needs {need} bytes of reduction scratch ({} chunks), {} given",
                plan.chunks, scratch.bytes
            ),
        ));
    }
    if !scratch.ptr.is_multiple_of(4) {
        return Err(bad(
            &kernel,
            format!(
                "reduction scratch at {:#x} is not 4-byte aligned",
                scratch.ptr
            ),
        ));
    }
    let (cnt, part, n_, c_, ld_, rpc) = (
        scratch.ptr,
        scratch.ptr + COUNTER_BYTES as u64,
        int(rows),
        int(c),
        int(ld),
        int(plan.rows_per_chunk),
    );
    let grid = (plan.tiles as u32, plan.chunks as u32, 1);
    let block = (32, 8, 1);
    let [out0, out1] = outs;
    // SAFETY: the locals match the kernels' C signatures; the caller sizes the inputs [rows, ld]
    // and the outputs [c] (f32), and the scratch was checked above to hold the counters of
    // `tiles` tiles and the [n_out, chunks, c] partial sums after them.
    match what {
        Summand::Sum { x } => {
            let vec = i32::from(vector_ok(dt, ld, &[x]));
            unsafe {
                module.launch(
                    &kernel,
                    grid,
                    block,
                    0,
                    &mut cuda_args![out0, cnt, part, x, n_, c_, ld_, rpc, vec],
                )
            }
        }
        Summand::Norm { dy, r, rstd, mean } => {
            let vec = i32::from(vector_ok(dt, ld, &[dy, r]));
            unsafe {
                module.launch(
                    &kernel,
                    grid,
                    block,
                    0,
                    &mut cuda_args![
                        out0, out1, cnt, part, dy, r, rstd, mean, n_, c_, ld_, rpc, vec
                    ],
                )
            }
        }
    }
}

/// `out[j] += Σ_n x[n * ld + j]` for `j < c`, `n < rows` (out f32; nothing when `out` is 0 or
/// there are no rows), in `module` (which must link `reduce.cu`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn colsum(
    module: &Launcher,
    dt: Dtype,
    out: DevPtr,
    x: DevPtr,
    rows: usize,
    c: usize,
    ld: usize,
    scratch: ReduceScratch,
) -> Result<()> {
    reduce(
        module,
        dt,
        [out, 0],
        Summand::Sum { x },
        rows,
        c,
        ld,
        scratch,
    )
}

/// A norm's parameter gradients over `rows` contiguous rows of `c`: `dw[j] += Σ_n dy * xhat`,
/// `db[j] += Σ_n dy` (f32; either may be 0), `xhat = (r - mean[n]) * rstd[n]`, `mean` 0 for RMS.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_dw(
    module: &Launcher,
    dt: Dtype,
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
    if dw == 0 {
        return colsum(module, dt, db, dy, rows, c, c, scratch);
    }
    let what = Summand::Norm { dy, r, rstd, mean };
    reduce(module, dt, [dw, db], what, rows, c, c, scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDTHS: [usize; 12] = [
        1,
        7,
        8,
        96,
        255,
        257,
        768,
        2304,
        3072,
        50304,
        262_145,
        1 << 20,
    ];

    #[test]
    fn chunks_cover_the_rows_without_an_empty_one() {
        for rows in [1, 2, 31, 32, 33, 1000, 16384, 65536, 1 << 22] {
            for c in WIDTHS {
                let p = ColPlan::new(rows, c);
                assert!(
                    p.chunks >= 1 && p.chunks <= MAX_CHUNKS,
                    "{rows} x {c}: {p:?}"
                );
                assert!(p.chunks * p.rows_per_chunk >= rows, "{rows} x {c}: {p:?}");
                assert!(
                    (p.chunks - 1) * p.rows_per_chunk < rows,
                    "{rows} x {c}: {p:?}"
                );
                assert_eq!(p.tiles, c.div_ceil(TILE).max(1));
            }
        }
    }

    #[test]
    fn the_scratch_bound_serves_every_row_count() {
        for rows in [1, 100, 4096, 16384, 1 << 20] {
            for c in WIDTHS {
                let need = ColPlan::new(rows, c).scratch_bytes(c, 2);
                assert!(
                    need <= ReduceScratch::bytes_for(c),
                    "{rows} x {c}: {need} > {}",
                    ReduceScratch::bytes_for(c)
                );
            }
        }
        // A bound for a wider matrix serves a narrower one.
        assert!(ReduceScratch::bytes_for(3072) >= ColPlan::new(1 << 20, 96).scratch_bytes(96, 2));
    }

    #[test]
    fn counters_serve_every_width_up_to_2_20_columns() {
        assert_eq!(COUNTER_BYTES % 256, 0);
        assert_eq!(COUNTER_BYTES, 144 * 1024);
        assert_eq!(ColPlan::new(7, 1 << 20).tiles, MAX_TILES);
        assert!(ColPlan::new(7, (1 << 20) + 1).tiles > MAX_TILES);
        // Every scratch keeps its counters at the start, whatever width it was sized for.
        assert!(ReduceScratch::bytes_for(1) > COUNTER_BYTES);
        assert_eq!(
            ColPlan::new(1, 1).scratch_bytes(1, 1),
            COUNTER_BYTES + 4,
            "one chunk of one column"
        );
    }

    #[test]
    fn gpt2_widths_fill_the_gpu_and_split_the_rows() {
        // gpt2-124m at B16 T1024: 16384 rows of 768 (norms, proj), 2304 (qkv), 3072 (fc).
        let p = ColPlan::new(16384, 768);
        assert_eq!((p.tiles, p.chunks, p.rows_per_chunk), (3, 256, 64));
        let p = ColPlan::new(16384, 3072);
        assert_eq!((p.tiles, p.chunks), (12, 85));
        assert!(p.tiles * p.chunks >= 1000);
        // Few rows: one chunk of all of them.
        assert_eq!(ColPlan::new(20, 768).chunks, 1);
    }

    #[test]
    fn vectors_need_aligned_rows() {
        assert!(vector_ok(Dtype::Bf16, 768, &[256, 512]));
        assert!(!vector_ok(Dtype::Bf16, 100, &[256]));
        assert!(vector_ok(Dtype::F32, 100, &[256]));
        assert!(!vector_ok(Dtype::F32, 102, &[256]));
        assert!(!vector_ok(Dtype::Bf16, 768, &[258]));
    }
}
