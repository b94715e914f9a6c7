//! A GEMM's fused epilogues: what callers ask for ([`Epilogue`]) and what a plan records of it
//! ([`EpiKind`], part of the plan's key, and [`Epi`], the pointers set per call).

#[cfg(doc)]
use super::Gemm;
use crate::cuda::gpu::DevPtr;
use cudarc::cublaslt::sys;

/// A fused epilogue of [`Gemm::run_epilogue`], in row-major terms (the output C is `[m, n]`).
/// GELU is the tanh approximation (`0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, GPT-2's
/// `gelu_new`), as cuBLASLt computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `C = gelu(A op(B) + bias)` (bias: n elements of the compute dtype, 0: none), with the
    /// pre-activation `A op(B) + bias` written to `pre` (`[m, n]`, row stride `ld`, the compute
    /// dtype).
    GeluAux {
        /// The pre-activation output.
        pre: DevPtr,
        /// Its row stride (elements).
        ld: usize,
        /// The bias (0: none).
        bias: DevPtr,
    },
    /// `C = (A op(B)) * gelu'(pre)` elementwise: a GELU's backward folded into the GEMM that
    /// produces the gradient of its output. `pre` is the forward's pre-activation `[m, n]`, row
    /// stride `ld`.
    DGelu {
        /// The pre-activation the forward saved.
        pre: DevPtr,
        /// Its row stride (elements).
        ld: usize,
    },
    /// `bias[i] = Σ_q op(A)[i, q]` for `i < m`, written (not added) beside `C = A op(B)`: the
    /// bias gradient of a weight gradient `dW[out, in] = dy^T x` (A = dy stored `[tokens, out]`
    /// with `trans_a`), from the operand the GEMM reads anyway. Row-major op(A) is cuBLASLt's
    /// second operand, reduced over the GEMM's k: its BGRADB epilogue. f32 output only
    /// ([`Gemm::run_f32_out_epilogue`]), the bias f32.
    BiasGrad {
        /// The bias gradient (m f32 elements).
        bias: DevPtr,
    },
}

/// A plan's epilogue, part of its key: the kind, and the auxiliary matrix's row stride (0
/// without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EpiKind {
    Default,
    Bias,
    GeluAux,
    GeluAuxBias,
    DGelu,
    BGradB,
}

/// One call's epilogue: its kind and the pointers set on the descriptor per call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epi {
    pub(super) kind: EpiKind,
    pub(super) bias: DevPtr,
    pub(super) aux: DevPtr,
    pub(super) aux_ld: usize,
}

impl Epi {
    pub(super) fn plain(bias: DevPtr) -> Epi {
        Epi {
            kind: if bias != 0 {
                EpiKind::Bias
            } else {
                EpiKind::Default
            },
            bias,
            aux: 0,
            aux_ld: 0,
        }
    }

    pub(super) fn of(e: &Epilogue) -> Epi {
        match *e {
            Epilogue::GeluAux { pre, ld, bias } => Epi {
                kind: if bias != 0 {
                    EpiKind::GeluAuxBias
                } else {
                    EpiKind::GeluAux
                },
                bias,
                aux: pre,
                aux_ld: ld,
            },
            Epilogue::DGelu { pre, ld } => Epi {
                kind: EpiKind::DGelu,
                bias: 0,
                aux: pre,
                aux_ld: ld,
            },
            Epilogue::BiasGrad { bias } => Epi {
                kind: EpiKind::BGradB,
                bias,
                aux: 0,
                aux_ld: 0,
            },
        }
    }

    /// cuBLASLt's epilogue for this kind.
    pub(super) fn lt(self) -> sys::cublasLtEpilogue_t {
        use sys::cublasLtEpilogue_t as E;
        match self.kind {
            EpiKind::Default => E::CUBLASLT_EPILOGUE_DEFAULT,
            EpiKind::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            EpiKind::GeluAux => E::CUBLASLT_EPILOGUE_GELU_AUX,
            EpiKind::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            EpiKind::DGelu => E::CUBLASLT_EPILOGUE_DGELU,
            EpiKind::BGradB => E::CUBLASLT_EPILOGUE_BGRADB,
        }
    }
}
