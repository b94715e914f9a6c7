//! The three GEMM shapes of a step, row-major, in the compute dtype (f32 accumulation).

use super::super::error::Result;
use super::super::gemm::{Epilogue, RowMajorGemm};
use super::super::gpu::DevPtr;
use super::super::ops::Act as KAct;
use super::Step;
use super::config::{FfnCfg, LayerCfg};

impl Step<'_> {
    /// `C[m, n] = A op(B)` (+ beta C), with leading dimensions as given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        b: DevPtr,
        ldb: usize,
        c: DevPtr,
        ldc: usize,
        beta: f32,
    ) -> Result<()> {
        let g = RowMajorGemm::plain(m, n, k, lda, ldb, ldc);
        // SAFETY: every operand is a view into this trainer's arenas, sized at construction.
        unsafe { self.gemm.run(self.dt, &g, a, b, c, 1.0, beta) }
    }

    /// The forward projections: `C[m, n] = A[m, k] W[n, k]^T + bias` (bias 0: none).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        // SAFETY: as in `mm`.
        unsafe { self.gemm.linear(self.dt, m, n, k, a, w, bias, c) }
    }

    /// A weight gradient: `C[m, n]` (f32) `= A^T B (+ beta C)`, A `[k, m]`, B `[k, n]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mm_grad(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        b: DevPtr,
        ldb: usize,
        c: DevPtr,
        beta: f32,
    ) -> Result<()> {
        let g = RowMajorGemm::weight_grad(m, n, k, lda, ldb);
        // SAFETY: as in `mm`.
        unsafe { self.gemm.run_f32_out(self.dt, &g, a, b, c, 1.0, beta) }
    }

    /// Whether layer `l`'s MLP runs its activation in the GEMMs' epilogues: an ungated
    /// `gelu_tanh` MLP (cuBLASLt's GELU is the tanh form) whose width is a multiple of 8 (the
    /// pre-activation's row stride, read and written by the epilogues).
    pub(super) fn gelu_epilogue(l: &LayerCfg) -> bool {
        matches!(l.ffn, FfnCfg::Dense { act: KAct::GeluTanh, hidden, hw }
            if hidden == hw && hidden.is_multiple_of(8))
    }

    /// `act[m, n] = gelu(a[m, k] w[n, k]^T + bias)` (bias 0: none) with the pre-activation into
    /// `pre` `[m, n]`, in one GEMM (cuBLASLt's GELU_AUX epilogue). `false`, with nothing run,
    /// where cuBLASLt has no such algorithm: the caller runs the GEMM and the activation apart.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_gelu(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        act: DevPtr,
        pre: DevPtr,
    ) -> Result<bool> {
        let g = RowMajorGemm::linear(m, n, k);
        let epi = Epilogue::GeluAux { pre, ld: n, bias };
        // SAFETY: every operand is a view into this trainer's arenas, sized at construction.
        unsafe { self.gemm.run_epilogue(self.dt, &g, a, w, act, &epi) }
    }

    /// `c[m, n] = (a[m, k] b[k, n]) * gelu'(pre)`, `pre` `[m, n]` (a GELU's backward folded into
    /// the GEMM that produces the gradient of its output: cuBLASLt's DGELU epilogue). `false`,
    /// with nothing run, where cuBLASLt has no such algorithm.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mm_dgelu(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        b: DevPtr,
        ldb: usize,
        c: DevPtr,
        pre: DevPtr,
    ) -> Result<bool> {
        let g = RowMajorGemm::plain(m, n, k, lda, ldb, n);
        let epi = Epilogue::DGelu { pre, ld: n };
        // SAFETY: as in `linear_gelu`.
        unsafe { self.gemm.run_epilogue(self.dt, &g, a, b, c, &epi) }
    }

    /// A projection's weight and bias gradients: `C[m, n]` (f32) `= A^T B` as [`Step::mm_grad`]
    /// with beta 0, and `bias[i] = Σ_rows A[r, i]` (m f32 values; 0: no bias), A `[k, m]` (row
    /// stride `lda`) being d(the projection's output). The bias gradient comes from the
    /// deterministic column sum after a plain GEMM or, under `MODELSPEC_BGRAD_EPILOGUE=on`, from
    /// the GEMM's epilogue ([`Gemm::run_weight_grad`](super::super::gemm::Gemm::run_weight_grad)).
    /// Gradients are zeroed at the start of a step and each bias belongs to one kernel,
    /// so writing it (the epilogue) and adding to it (the column sum) agree.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mm_grad_bias(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        lda: usize,
        b: DevPtr,
        ldb: usize,
        c: DevPtr,
        bias: DevPtr,
    ) -> Result<()> {
        if bias == 0 {
            return self.mm_grad(m, n, k, a, lda, b, ldb, c, 0.0);
        }
        let g = RowMajorGemm::weight_grad(m, n, k, lda, ldb);
        let apart = || {
            let scratch = self.reduce_scratch();
            self.k.colsum(self.dt, bias, a, k, m, lda, scratch)
        };
        // SAFETY: as in `mm`; the bias gradient is m f32 of the zeroed gradient arena.
        unsafe {
            self.gemm
                .run_weight_grad(self.dt, &g, a, b, c, bias, &apart)
        }
        .map(|_| ())
    }
}
