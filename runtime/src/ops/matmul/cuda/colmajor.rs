//! Row-major GEMMs as cuBLASLt's column-major problem: [`to_column_major`], the one place the
//! mapping is written, and its tests.

use super::RowMajorGemm;

/// One column-major operand as cuBLASLt sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ColOperand {
    pub(super) rows: u64,
    pub(super) cols: u64,
    pub(super) ld: i64,
    pub(super) trans: bool,
    pub(super) stride: i64,
}

/// The column-major problem `C^T = op(B)^T-as-stored x op(A)^T-as-stored`: a row-major `[r, c]`
/// matrix with row stride `ld` is exactly a column-major `[c, r]` matrix with leading dimension
/// `ld`, so row-major `C = A B` is column-major `C^T = B^T A^T` with the operands swapped and
/// nothing moved in memory. Returns (first operand = B, second = A, output, m', n').
pub(super) fn to_column_major(g: &RowMajorGemm) -> (ColOperand, ColOperand, ColOperand) {
    let (_count, sa, sb, sc) = g.batch.unwrap_or((1, 0, 0, 0));
    // A row-major operand stored `[r, c]` is column-major `[c, r]`, same row stride.
    let stored = |(r, c): (usize, usize), ld: usize, trans: bool, stride: usize| ColOperand {
        rows: c as u64,
        cols: r as u64,
        ld: ld as i64,
        trans,
        stride: stride as i64,
    };
    // cuBLAS's m' = n, n' = m, k' = k. Its A' is our B (stored `[k, n]`, or `[n, k]` when
    // trans_b: then transposed), its B' our A (stored `[m, k]`, or `[k, m]` when trans_a).
    let b_rows_cols = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    let a_rows_cols = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    (
        stored(b_rows_cols, g.ldb, g.trans_b, sb),
        stored(a_rows_cols, g.lda, g.trans_a, sa),
        stored((g.m, g.n), g.ldc, false, sc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_row_major_maps_to_swapped_column_major() {
        // C[2,3] = A[2,4] B[4,3]
        let g = RowMajorGemm::plain(2, 3, 4, 4, 3, 3);
        let (a, b, c) = to_column_major(&g);
        assert_eq!((a.rows, a.cols, a.ld, a.trans), (3, 4, 3, false));
        assert_eq!((b.rows, b.cols, b.ld, b.trans), (4, 2, 4, false));
        assert_eq!((c.rows, c.cols, c.ld), (3, 2, 3));
        // Batches: B's stride goes with the first operand, A's with the second.
        let batched = RowMajorGemm {
            batch: Some((5, 8, 12, 6)),
            ..g
        };
        let (a, b, c) = to_column_major(&batched);
        assert_eq!((a.stride, b.stride, c.stride), (12, 8, 6));
    }

    #[test]
    fn linear_weight_is_transposed_first_operand() {
        // y[N, out] = x[N, in] W[out, in]^T
        let g = RowMajorGemm::linear(5, 7, 3);
        assert_eq!(
            (g.lda, g.ldb, g.ldc, g.trans_a, g.trans_b),
            (3, 3, 7, false, true)
        );
        let (a, b, _) = to_column_major(&g);
        assert_eq!((a.rows, a.cols, a.ld, a.trans), (3, 7, 3, true));
        assert_eq!((b.rows, b.cols, b.trans), (3, 5, false));
    }
}
