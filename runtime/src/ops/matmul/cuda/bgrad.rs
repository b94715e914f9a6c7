//! A weight gradient together with its bias's: `dW = dy^T x` and `db = Σ_rows dy` in one pass
//! over dy where that pays ([`Gemm::run_weight_grad`]).
//!
//! cuBLASLt can sum the operand it already streams through the GEMM ([`Epilogue::BiasGrad`], its
//! BGRADB epilogue), saving the separate column sum's read of dy (for GPT-2 124M at 16384 tokens
//! a step, ~225 MB a layer). With that epilogue it may pick a slower GEMM algorithm, so by
//! default the choice is measured: the first time a (dtype, shape) comes, both ways and the
//! GEMM alone are event-timed (the fastest of a few runs each), the epilogue is kept where it
//! saves at least half of the column sum's cost (a margin, so that noise does not flip a near
//! tie between runs), and the choice holds for the life of the handle (shared by every
//! executor on the device, so two trainers of one process compute the same bits). Two
//! processes compute the same bits where they make the same choice (the epilogue and the
//! column sum round differently); `MODELSPEC_BGRAD_EPILOGUE` pins it: `on` (or `1`) uses the
//! epilogue wherever cuBLASLt has an algorithm for it, `off` (or `0`) never does; unset or
//! `auto`: measured. A shape first met during a CUDA graph capture (nothing may be timed there) takes
//! the column sum, undecided.

use super::{Epilogue, Gemm, RowMajorGemm};
use crate::cuda::error::{DriverContext, Result};
use crate::cuda::gpu::{DevPtr, Dtype};
use cudarc::driver::sys::CUstreamCaptureStatus;
use std::collections::BTreeMap;

/// Timed runs of each way when measuring a shape (after one warm-up run each).
const REPS: usize = 5;

/// Where [`Gemm::run_weight_grad`] computes a bias gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasGradPolicy {
    /// In the GEMM's epilogue wherever cuBLASLt has an algorithm for it.
    Epilogue,
    /// Always apart: a plain GEMM, then the caller's column sum.
    Apart,
    /// Per shape, whichever of the two ran faster the first time the shape came (the default).
    Measured,
}

impl BiasGradPolicy {
    /// The policy `MODELSPEC_BGRAD_EPILOGUE` names: `on`/`1`/`true` [`Epilogue`], `off`/`0`/
    /// `false` [`Apart`], anything else (or unset) [`Measured`].
    ///
    /// [`Epilogue`]: BiasGradPolicy::Epilogue
    /// [`Apart`]: BiasGradPolicy::Apart
    /// [`Measured`]: BiasGradPolicy::Measured
    pub fn from_env() -> BiasGradPolicy {
        BiasGradPolicy::parse(std::env::var("MODELSPEC_BGRAD_EPILOGUE").ok().as_deref())
    }

    /// The policy a value of `MODELSPEC_BGRAD_EPILOGUE` names (`None`: unset).
    fn parse(value: Option<&str>) -> BiasGradPolicy {
        match crate::cuda::switch_value(value) {
            Some(true) => BiasGradPolicy::Epilogue,
            Some(false) => BiasGradPolicy::Apart,
            None => BiasGradPolicy::Measured,
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

/// The policy and the measured choices, per (bf16, shape).
pub(super) struct Choices {
    policy: BiasGradPolicy,
    chosen: BTreeMap<(bool, RowMajorGemm), BiasGradPath>,
}

impl Choices {
    /// No choice yet, the policy from the environment.
    pub(super) fn from_env() -> Choices {
        Choices {
            policy: BiasGradPolicy::from_env(),
            chosen: BTreeMap::new(),
        }
    }
}

impl Gemm {
    /// The policy and the measured choices, locked.
    fn bgrad_choices(&self) -> std::sync::MutexGuard<'_, Choices> {
        self.bgrad.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where [`Gemm::run_weight_grad`] computes bias gradients from now on (shapes already
    /// measured keep their choice for [`BiasGradPolicy::Measured`]).
    pub fn set_bias_grad_policy(&self, policy: BiasGradPolicy) {
        self.bgrad_choices().policy = policy;
    }

    /// The current [`BiasGradPolicy`].
    pub fn bias_grad_policy(&self) -> BiasGradPolicy {
        self.bgrad_choices().policy
    }

    /// A weight gradient and its bias's: `C = A op(B)` (f32, beta 0) and `bias[i] = Σ_q
    /// op(A)[i, q]` for `i < m`, either in the GEMM's epilogue ([`Epilogue::BiasGrad`]) or by
    /// `apart`, which must add exactly those sums into `bias` (the caller's column sum), run
    /// after a plain GEMM. Apart where the policy says so, where cuBLASLt has no algorithm for
    /// the epilogue, or where it measured slower (see the module docs). Returns the way taken.
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
        let epi = Epilogue::BiasGrad { bias };
        // SAFETY (all three): forwarded from the caller.
        let fused = || unsafe { self.run_f32_out_epilogue(dtype, g, a, b, c, &epi) };
        let gemm = || unsafe { self.run_f32_out(dtype, g, a, b, c, 1.0, 0.0) };
        let plain = || -> Result<()> {
            gemm()?;
            apart()
        };
        if !bias.is_multiple_of(16) {
            // The epilogue declines such a vector whatever the shape: nothing to measure or
            // remember.
            plain()?;
            return Ok(BiasGradPath::Apart);
        }
        let key = (dtype == Dtype::Bf16, *g);
        let (policy, known) = {
            let ch = self.bgrad_choices();
            (ch.policy, ch.chosen.get(&key).copied())
        };
        let way = match (policy, known) {
            (BiasGradPolicy::Apart, _) => BiasGradPath::Apart,
            (BiasGradPolicy::Epilogue, _) => BiasGradPath::Epilogue,
            (BiasGradPolicy::Measured, Some(way)) => way,
            (BiasGradPolicy::Measured, None) => match self.measure(&fused, &gemm, &plain)? {
                Some(way) => {
                    // The timing runs left their sums in `bias`: zero again, as promised.
                    // SAFETY: `bias` addresses m f32 elements (the caller's promise).
                    unsafe { self.gpu.memset_raw(bias, g.m * 4) }?;
                    self.bgrad_choices().chosen.insert(key, way);
                    way
                }
                None => BiasGradPath::Apart,
            },
        };
        if way == BiasGradPath::Epilogue && fused()? {
            return Ok(BiasGradPath::Epilogue);
        }
        plain()?;
        Ok(BiasGradPath::Apart)
    }

    /// Times `fused` (the epilogue; `false`: no algorithm, nothing ran) against `plain` (the
    /// GEMM alone, then the column sum), each the fastest of [`REPS`] runs: the epilogue where
    /// it saves at least half of what the column sum costs over the GEMM alone (`gemm`), so
    /// that timing noise cannot flip a near tie from run to run; `None` during a stream capture
    /// (nothing ran).
    fn measure(
        &self,
        fused: &dyn Fn() -> Result<bool>,
        gemm: &dyn Fn() -> Result<()>,
        plain: &dyn Fn() -> Result<()>,
    ) -> Result<Option<BiasGradPath>> {
        let status = self
            .gpu
            .stream()
            .capture_status()
            .during(|| "asking whether the stream is capturing".into())?;
        if status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Ok(None);
        }
        if !fused()? {
            return Ok(Some(BiasGradPath::Apart));
        }
        plain()?;
        let mut t = [f32::INFINITY; 3];
        for _ in 0..REPS {
            t[0] = t[0].min(self.gpu.time_ms(gemm)?);
            t[1] = t[1].min(self.gpu.time_ms(plain)?);
            t[2] = t[2].min(self.gpu.time_ms(|| fused().map(|_| ()))?);
        }
        let [t_gemm, t_plain, t_fused] = t;
        let colsum = (t_plain - t_gemm).max(0.0);
        Ok(Some(if t_fused < t_plain - 0.5 * colsum {
            BiasGradPath::Epilogue
        } else {
            BiasGradPath::Apart
        }))
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
            (Some("off"), P::Apart),
            (Some("0"), P::Apart),
            (Some("auto"), P::Measured),
            (Some("sometimes"), P::Measured),
            (None, P::Measured),
        ] {
            assert_eq!(P::parse(value), want, "{value:?}");
        }
    }
}
