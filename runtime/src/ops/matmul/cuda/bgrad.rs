//! A weight gradient together with its bias's: `dW = dy^T x` and `db = Σ_rows dy`
//! ([`Gemm::run_weight_grad`]), the bias gradient either in the GEMM's epilogue or by the
//! caller's column sum after a plain GEMM.
//!
//! cuBLASLt can sum the operand it already streams through the GEMM ([`Epilogue::BiasGrad`], its
//! BGRADB epilogue), saving the separate column sum's read of dy (for GPT-2 124M at 16384 tokens
//! a step, ~225 MB a layer). It saved nothing measurable: on an H100 (`cuda_bench bgrad`,
//! session-h100-2026-12-06-s6) GPT-2's four shapes took, epilogue vs GEMM + column sum, qkv
//! 0.1372 vs 0.1359 ms, proj 0.0590 vs 0.0593, fc 0.1622 vs 0.1645, fc_proj 0.1293 vs 0.1296;
//! a 12-layer step 5.853 vs 5.873 ms (the epilogue may take a slower GEMM algorithm). The two
//! ways round differently, so choosing by timing at run time (as an earlier policy did) let two
//! processes compute different bits. The default is therefore fixed: apart (what that timing
//! chose on every one of those shapes, so default runs keep their bits).
//! `MODELSPEC_BGRAD_EPILOGUE=on` (or `1`, `true`) takes the epilogue wherever cuBLASLt has an
//! algorithm for it (apart elsewhere); any other value, or unset, is apart.

use super::{Epilogue, Gemm, RowMajorGemm};
use crate::cuda::error::Result;
use crate::cuda::gpu::{DevPtr, Dtype};

/// Where [`Gemm::run_weight_grad`] computes a bias gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasGradPolicy {
    /// In the GEMM's epilogue wherever cuBLASLt has an algorithm for it (apart elsewhere).
    Epilogue,
    /// Always apart: a plain GEMM, then the caller's column sum (the default).
    Apart,
}

impl BiasGradPolicy {
    /// The policy `MODELSPEC_BGRAD_EPILOGUE` names: `on`/`1`/`true` [`Epilogue`], anything else
    /// (or unset) [`Apart`].
    ///
    /// [`Epilogue`]: BiasGradPolicy::Epilogue
    /// [`Apart`]: BiasGradPolicy::Apart
    pub fn from_env() -> BiasGradPolicy {
        BiasGradPolicy::parse(std::env::var("MODELSPEC_BGRAD_EPILOGUE").ok().as_deref())
    }

    /// The policy a value of `MODELSPEC_BGRAD_EPILOGUE` names (`None`: unset).
    fn parse(value: Option<&str>) -> BiasGradPolicy {
        match crate::cuda::switch_value(value) {
            Some(true) => BiasGradPolicy::Epilogue,
            Some(false) | None => BiasGradPolicy::Apart,
        }
    }
}

/// Which way one [`Gemm::run_weight_grad`] call computed its bias gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasGradPath {
    /// In the GEMM's epilogue.
    Epilogue,
    /// A plain GEMM, then the caller's column sum.
    Apart,
}

impl Gemm {
    /// The policy, locked.
    fn bgrad_policy(&self) -> std::sync::MutexGuard<'_, BiasGradPolicy> {
        self.bgrad.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where [`Gemm::run_weight_grad`] computes bias gradients from now on.
    pub fn set_bias_grad_policy(&self, policy: BiasGradPolicy) {
        *self.bgrad_policy() = policy;
    }

    /// The current [`BiasGradPolicy`] (from `MODELSPEC_BGRAD_EPILOGUE` until set).
    pub fn bias_grad_policy(&self) -> BiasGradPolicy {
        *self.bgrad_policy()
    }

    /// A weight gradient and its bias's: `C = A op(B)` (f32, beta 0) and `bias[i] = Σ_q
    /// op(A)[i, q]` for `i < m`, either in the GEMM's epilogue ([`Epilogue::BiasGrad`]) or by
    /// `apart`, which must add exactly those sums into `bias` (the caller's column sum), run
    /// after a plain GEMM. The epilogue only under [`BiasGradPolicy::Epilogue`] and where
    /// cuBLASLt has an algorithm for it (see the module docs). Returns the way taken.
    ///
    /// # Safety
    /// As [`Gemm::run_f32_out_epilogue`]; `bias` must hold zeros on entry (a freshly zeroed
    /// gradient that nothing else adds to: the epilogue writes it, `apart` adds to it).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_weight_grad(
        &self,
        dtype: Dtype,
        g: &RowMajorGemm,
        a: DevPtr,
        b: DevPtr,
        c: DevPtr,
        bias: DevPtr,
        apart: &dyn Fn() -> Result<()>,
    ) -> Result<BiasGradPath> {
        // The epilogue declines a vector less aligned than 16 bytes whatever the shape.
        if self.bias_grad_policy() == BiasGradPolicy::Epilogue && bias.is_multiple_of(16) {
            let epi = Epilogue::BiasGrad { bias };
            // SAFETY: forwarded from the caller.
            if unsafe { self.run_f32_out_epilogue(dtype, g, a, b, c, &epi) }? {
                return Ok(BiasGradPath::Epilogue);
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.run_f32_out(dtype, g, a, b, c, 1.0, 0.0) }?;
        apart()?;
        Ok(BiasGradPath::Apart)
    }
}

#[cfg(test)]
mod tests {
    use super::super::to_column_major;
    use super::*;

    #[test]
    fn a_weight_gradient_reduces_cublaslt_second_operand_over_k() {
        // dW[out = 6, in = 4] = dy[tokens = 10, out]^T x[tokens, in]: the bias gradient sums
        // dy over the tokens. cuBLASLt's second operand B' is dy, op(B') = [k, n'] with n' = out
        // the columns of its output D' = [in, out]: BGRADB's vector (D's columns, reduced over k).
        let g = RowMajorGemm::weight_grad(6, 4, 10, 6, 4);
        let (a, b, c) = to_column_major(&g);
        assert_eq!((b.rows, b.cols, b.ld, b.trans), (6, 10, 6, true));
        assert_eq!((a.rows, a.cols, a.trans), (4, 10, false));
        assert_eq!((c.rows, c.cols), (4, 6));
    }

    #[test]
    fn the_environment_names_the_policy() {
        use BiasGradPolicy as P;
        for (value, want) in [
            (Some("on"), P::Epilogue),
            (Some("1"), P::Epilogue),
            (Some("true"), P::Epilogue),
            (Some("off"), P::Apart),
            (Some("0"), P::Apart),
            (Some("false"), P::Apart),
            (Some("auto"), P::Apart),
            (Some("sometimes"), P::Apart),
            (None, P::Apart),
        ] {
            assert_eq!(P::parse(value), want, "{value:?}");
        }
    }
}
