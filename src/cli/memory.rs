//! Host-memory estimates for the CPU paths of `eval` and `train`, checked before allocating.
//!
//! A 32 MB `input_ids` file with `--grads` used 7.7 GB and aborted; `train` of an 8B spec grew
//! until killed. The estimate adds what the CPU executor holds at its peak, in f32: parameters
//! (and gradients, and AdamW's two moments when training), the logits and their gradient, the
//! saved activations of the checkpoint plan (or one layer's when no backward runs), and each
//! worker thread's attention scratch (two `seq × seq` score matrices). It is compared with
//! `MemAvailable` of `/proc/meminfo`; where that is unreadable nothing is checked.

use anyhow::{Result, bail};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::plan::{self, Dtype, PolicyOverride};

/// What a CPU run will do, for [`estimate_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// Sequences per step.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// Backward too (gradients of every parameter).
    pub grads: bool,
    /// AdamW moments (training).
    pub optimizer: bool,
    /// Copies of the logits and gradients made for an output file (`eval` writes both).
    pub output_copies: bool,
}

/// Environment variable that skips the check (an estimate is an estimate).
pub const SKIP_VAR: &str = "MODELSPEC_NO_MEMORY_CHECK";

/// Bytes of host memory the CPU executor needs at its peak for `work` on `spec` under `policy`
/// (the spec's own policies when `None`), in u128 so that no size overflows.
pub fn estimate_bytes(spec: &ModelSpec, work: Work, policy: Option<&PolicyOverride>) -> u128 {
    const F32: u128 = 4;
    let params = u128::from(modelspec_dsl::cost::params_total(spec)) * F32;
    let tokens = u128::from(work.batch) * u128::from(work.seq);
    let logits = tokens * u128::from(spec.vocab_padded.max(spec.vocab)) * F32;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u128;
    let heads = spec
        .layers
        .iter()
        .map(|l| l.attention.heads)
        .max()
        .unwrap_or(1);
    let seq = u128::from(work.seq);
    let scratch = threads.min(u128::from(work.batch) * u128::from(heads)) * 2 * seq * seq * F32;
    // Saved activations: the plan's (all layers) with a backward, plus the gradients of one
    // layer's activations while it is back-propagated (a layer's worth of every tensor); one
    // layer's without a backward. (Measured: the Llama fixture at 65536 × 64 with --grads peaked at
    // 16.1 GiB of resident memory; this estimates 18.0 GiB.)
    let activations = match plan::plan(spec, work.batch, work.seq, Dtype::F32, policy) {
        Ok(p) if work.grads => {
            let layers = spec.layers.len().max(1) as u128;
            let one_layer = u128::from(p.none_activation_bytes).div_ceil(layers);
            u128::from(p.activation_bytes) + u128::from(p.recompute_peak_bytes) + one_layer
        }
        Ok(p) => 2 * u128::from(p.layers.iter().map(|l| l.saved_bytes).max().unwrap_or(0)),
        // Too large to count, or no plan for the policy: the caller's own checks report that.
        Err(plan::PlanError::Shape(_)) => u128::MAX / 4,
        Err(_) => 0,
    };
    let mut total = params + logits + activations + scratch;
    if work.grads {
        total += params + logits + scratch;
    }
    if work.optimizer {
        total += 2 * params;
    }
    if work.output_copies {
        total += logits + if work.grads { params } else { 0 };
    }
    total
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (None where unreadable).
pub fn available_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u128) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Refuses `work` when its estimate exceeds the available memory, in the GPU check's words:
/// "needs X GiB, this machine has Y GiB available; try ...". `what` names the command and
/// `remedies` what to try (e.g. "--batch/--seq or --checkpoint budget(0.5)").
pub fn check_fits(
    spec: &ModelSpec,
    work: Work,
    policy: Option<&PolicyOverride>,
    what: &str,
    remedies: &str,
) -> Result<()> {
    if std::env::var_os(SKIP_VAR).is_some() {
        return Ok(());
    }
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    let needed = estimate_bytes(spec, work, policy);
    if needed > available {
        let needed = if needed >= u128::MAX / 8 {
            "more than can be counted".to_string()
        } else {
            format!("{:.2} GiB", gib(needed))
        };
        bail!(
            "{what} of {} at batch {} × seq {} on the CPU needs {needed}, this machine has {:.2} GiB available; try {remedies} (or set {SKIP_VAR}=1 to run anyway)",
            spec.name,
            work.batch,
            work.seq,
            gib(available),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelSpec {
        modelspec_dsl::mspec::parse(include_str!("../../specs/tiny.mspec"), "tiny.mspec").unwrap()
    }

    #[test]
    fn a_32_mb_input_with_grads_needs_gigabytes() {
        // 4M int64 tokens (32 MB) through the tiny model used 7.7 GB before it aborted.
        let work = Work {
            batch: 1 << 16,
            seq: 64,
            grads: true,
            optimizer: false,
            output_copies: true,
        };
        let bytes = estimate_bytes(&tiny(), work, None);
        assert!(gib(bytes) > 7.7, "{:.2} GiB", gib(bytes));
        // Without the backward, far less (but still the logits, twice).
        let forward = estimate_bytes(
            &tiny(),
            Work {
                grads: false,
                ..work
            },
            None,
        );
        assert!(forward < bytes / 2 && gib(forward) > 2.0);
    }

    #[test]
    fn the_estimate_covers_a_measured_peak() {
        // `eval --grads` of the Llama fixture on 65536 × 64 tokens (a 32 MB input) peaked at
        // 16.1 GiB resident (/usr/bin/time); the estimate must not be below that, nor far above.
        let text = include_str!("../../tests/fixtures/llama/config.json");
        let spec = modelspec_dsl::hf::import(text, "config.json").unwrap();
        let work = Work {
            batch: 65536,
            seq: 64,
            grads: true,
            optimizer: false,
            output_copies: true,
        };
        let estimate = gib(estimate_bytes(&spec, work, None));
        assert!((16.1..16.1 * 1.5).contains(&estimate), "{estimate:.2} GiB");
    }

    #[test]
    fn the_default_training_step_is_small() {
        let work = Work {
            batch: 16,
            seq: 64,
            grads: true,
            optimizer: true,
            output_copies: false,
        };
        let bytes = estimate_bytes(&tiny(), work, None);
        // 2.4M parameters × 4 copies × 4 bytes, plus a few MB of activations.
        assert!(gib(bytes) < 0.25, "{:.3} GiB", gib(bytes));
        assert!(bytes > 4 * 4 * 2_400_000);
    }
}
