//! The GEMM entry points the executors call: plain (`run`, `run_f32_out`), with a bias or a fused
//! epilogue (`run_bias`, `run_epilogue`, `run_f32_out_epilogue`), and a linear layer's forward
//! (`linear`, `linear_as`, `linear_residual`). Each sets up one call of `Gemm::run_with`, which
//! plans, caches and launches.

use super::*;

impl Gemm {
    /// Runs `g` on device pointers `a`, `b`, `c` of element type `dtype` (f32 runs with full f32
    /// compute, no TF32; bf16 accumulates in f32).
    ///
    /// # Safety
    /// The pointers must address matrices of the sizes and strides `g` describes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.run_with(dtype, false, Epi::plain(0), g, a, b, (c, 0), alpha, beta) }
            .map(|_| ())
    }

    /// As [`Gemm::run`] with beta 0 and a bias row added in the epilogue: `C = A op(B) + bias`,
    /// `bias` of length n in `dtype` (cuBLASLt's BIAS epilogue: one pass instead of two).
    ///
    /// # Safety
    /// As [`Gemm::run`]; `bias` must address n elements.
    pub unsafe fn run_bias(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        bias: DevPtr,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.run_with(dtype, false, Epi::plain(bias), g, a, b, (c, 0), 1.0, 0.0) }
            .map(|_| ())
    }

    /// As [`Gemm::run`] with beta 0 and a fused GELU epilogue ([`Epilogue`]). Returns `false`,
    /// having launched nothing, when cuBLASLt has no algorithm for this epilogue, shape and
    /// dtype (remembered per shape): the caller then runs the GEMM and the activation apart.
    ///
    /// # Safety
    /// As [`Gemm::run`]; the epilogue's `pre` must address an `[m, n]` matrix of `dtype` with
    /// its row stride, and a bias (when not 0) n elements.
    pub unsafe fn run_epilogue(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        epilogue: &Epilogue,
    ) -> Result<bool> {
        // `MODELSPEC_OWN_GEMM`: the GELU epilogues on the own Hopper GEMM ([`hopper`]).
        // SAFETY: forwarded.
        if dtype == Dtype::Bf16 && unsafe { self.run_own_epilogue(g, a, b, c, epilogue) }? {
            return Ok(true);
        }
        // SAFETY: forwarded.
        unsafe { self.run_fused(dtype, false, g, a, b, c, epilogue) }
    }

    /// As [`Gemm::run_f32_out`] with beta 0 and a fused epilogue that writes f32: the bias
    /// gradient ([`Epilogue::BiasGrad`], the only one accepted). Returns `false`, having
    /// launched nothing, when cuBLASLt has no algorithm for it at this shape and dtype
    /// (remembered per shape), or the bias is not 16-byte aligned: the caller then runs the
    /// GEMM and the column sum apart.
    ///
    /// # Safety
    /// As [`Gemm::run`], C being f32; the bias must address m f32 elements.
    pub unsafe fn run_f32_out_epilogue(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        epilogue: &Epilogue,
    ) -> Result<bool> {
        // SAFETY: forwarded.
        unsafe { self.run_fused(dtype, true, g, a, b, c, epilogue) }
    }

    /// [`Gemm::run_epilogue`] (`out_f32` false) and [`Gemm::run_f32_out_epilogue`] (true): the
    /// epilogue's arguments checked against the output's type, then run with beta 0.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_fused(
        &self,
        dtype: Dtype,
        out_f32: bool,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        epilogue: &Epilogue,
    ) -> Result<bool> {
        let epi = Epi::of(epilogue);
        let bgrad = epi.kind == EpiKind::BGradB;
        let refuse = |why: &str| Err(epilogue_err(epilogue, why));
        let batch = g.batch.is_some();
        match (bgrad, out_f32) {
            (true, false) => {
                return refuse("writes an f32 bias gradient: run it through run_f32_out_epilogue");
            }
            (false, true) => {
                return refuse("writes the compute dtype: run it through run_epilogue");
            }
            (true, true) if epi.bias == 0 || batch => {
                return refuse("needs a bias-gradient vector and no batch");
            }
            (false, false) if epi.aux == 0 || epi.aux_ld < g.n || batch => {
                let n = g.n;
                return refuse(&format!(
                    "needs an auxiliary matrix of row stride >= {n} and no batch"
                ));
            }
            _ => {}
        }
        if bgrad && ((g.n == 0 && g.m != 0) || !epi.bias.is_multiple_of(16)) {
            // No output to run a GEMM for, so nothing would write the sums, or a vector less
            // aligned than cuBLASLt's epilogues want: the caller's column sum does it.
            return Ok(false);
        }
        // SAFETY: forwarded.
        unsafe { self.run_with(dtype, out_f32, epi, g, a, b, (c, 0), 1.0, 0.0) }
    }

    /// A projection [`RowMajorGemm::linear`]: `C[m, n] = A[m, k] W[n, k]^T (+ bias)` in `dtype`,
    /// the bias (n elements, 0: none) in the epilogue.
    ///
    /// # Safety
    /// a, w and c must address dense `[m, k]`, `[n, k]` and `[m, n]` matrices of `dtype`, and
    /// bias (when not 0) n elements.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear(
        &self,
        dtype: Dtype,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.linear_as(dtype, &RowMajorGemm::linear(m, n, k), a, w, bias, c) }
    }

    /// A projection of shape `g` (a [`RowMajorGemm::linear`] whose strides may differ, e.g. a
    /// padded output row stride): `C = A W^T (+ bias)`, the bias (n elements, 0: none) in the
    /// epilogue.
    ///
    /// # Safety
    /// a, w and c must address matrices of the sizes and strides `g` describes, and bias (when
    /// not 0) n elements.
    pub unsafe fn linear_as(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        c: DevPtr,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe {
            if bias != 0 {
                self.run_bias(dtype, g, a, w, c, bias)
            } else {
                self.run(dtype, g, a, w, c, 1.0, 0.0)
            }
        }
    }

    /// A projection with a residual added in its epilogue: `out[m, n] = A[m, k] W[n, k]^T (+
    /// bias) + res[m, n]`, all dense in `dtype` (`res` and `out` distinct: cuBLASLt's C and D).
    /// One pass where a projection then an add would write and read the projection's output.
    ///
    /// # Safety
    /// a, w, res and out must address dense `[m, k]`, `[n, k]`, `[m, n]` and `[m, n]` matrices of
    /// `dtype`, bias (when not 0) n elements; `out` must not overlap the others.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear_residual(
        &self,
        dtype: Dtype,
        m: usize,
        n: usize,
        k: usize,
        a: DevPtr,
        w: DevPtr,
        bias: DevPtr,
        res: DevPtr,
        out: DevPtr,
    ) -> Result<()> {
        let g = RowMajorGemm::linear(m, n, k);
        // SAFETY: forwarded.
        unsafe {
            self.run_with(
                dtype,
                false,
                Epi::plain(bias),
                &g,
                a,
                w,
                (out, res),
                1.0,
                1.0,
            )
        }
        .map(|_| ())
    }

    /// As [`Gemm::run`], with A and B of `dtype` and C in f32 (weight gradients accumulated in f32).
    ///
    /// # Safety
    /// As [`Gemm::run`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_f32_out(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.run_with(dtype, true, Epi::plain(0), g, a, b, (c, 0), alpha, beta) }
            .map(|_| ())
    }
}
