//! The learning-rate schedule: linear warmup, then cosine decay to a floor.

/// Linear warmup from `peak_lr / warmup_steps` to `peak_lr` over `warmup_steps` steps, then a
/// half cosine from `peak_lr` down to `min_lr` at `total_steps`, and `min_lr` after that.
///
/// ```
/// use modelspec_runtime::train::schedule::CosineSchedule;
/// let s = CosineSchedule { peak_lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, total_steps: 110 };
/// assert_eq!(s.lr(9), 1e-3);                      // the last warmup step reaches the peak
/// assert!((s.lr(60) - 5.5e-4).abs() < 1e-12);     // halfway down the cosine
/// assert_eq!(s.lr(110), 1e-4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    /// The learning rate at the end of warmup.
    pub peak_lr: f64,
    /// The floor the cosine decays to.
    pub min_lr: f64,
    /// Steps of linear warmup (0: start at the peak).
    pub warmup_steps: u64,
    /// The step at which the cosine reaches `min_lr`.
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate of optimizer step `step`, counted from 0.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        if decay_steps == 0 {
            return self.peak_lr;
        }
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + (self.peak_lr - self.min_lr) * cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: CosineSchedule = CosineSchedule {
        peak_lr: 2.0,
        min_lr: 0.5,
        warmup_steps: 4,
        total_steps: 14,
    };

    #[test]
    fn warmup_is_linear_up_to_the_peak() {
        let lrs: Vec<f64> = (0..4).map(|s| S.lr(s)).collect();
        assert_eq!(lrs, vec![0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn cosine_falls_monotonically_to_the_floor_and_stays() {
        let at = |s| S.lr(s);
        assert_eq!(at(4), 2.0);
        // A quarter of the way down: min + (peak - min)·(1 + cos(π/4))/2.
        let quarter = 0.5 + 1.5 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(
            (CosineSchedule {
                total_steps: 8,
                ..S
            }
            .lr(5)
                - quarter)
                .abs()
                < 1e-12
        );
        assert!((at(9) - 1.25).abs() < 1e-12);
        for s in 4..14 {
            assert!(at(s + 1) < at(s), "step {s}");
        }
        assert_eq!(at(14), 0.5);
        assert_eq!(at(1000), 0.5);
    }

    #[test]
    fn no_warmup_and_no_decay_are_allowed() {
        let flat = CosineSchedule {
            peak_lr: 3.0,
            min_lr: 0.0,
            warmup_steps: 0,
            total_steps: 0,
        };
        assert_eq!(flat.lr(0), 3.0);
        assert_eq!(flat.lr(7), 3.0);
        let only_warmup = CosineSchedule {
            warmup_steps: 2,
            total_steps: 2,
            ..flat
        };
        assert_eq!(only_warmup.lr(0), 1.5);
        assert_eq!(only_warmup.lr(5), 3.0);
    }
}
