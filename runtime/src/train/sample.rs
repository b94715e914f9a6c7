//! Text generation: temperature and top-k sampling, one token at a time.

use super::TrainError;
use super::rng::SplitMix64;
use crate::exec::{Executor, KvCache};
use crate::tensor::ParamSource;
#[cfg(doc)]
use modelspec_dsl::ModelSpec;

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// Divides the logits; 0 (or less) picks the most likely token (greedy).
    pub temperature: f32,
    /// Sample only among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
}

impl Default for SampleOptions {
    /// Temperature 0.8, top-k 40.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
        }
    }
}

/// Picks a token id from `logits` (only the first `vocab` entries count: padded rows never win).
/// Ties go to the lower id, so greedy decoding is deterministic.
pub fn pick(logits: &[f32], vocab: usize, options: SampleOptions, rng: &mut SplitMix64) -> u32 {
    let logits = &logits[..vocab.min(logits.len())];
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Descending by logit; NaN sorts last.
    order.sort_by(|&a, &b| {
        logits[b]
            .partial_cmp(&logits[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    if options.temperature <= 0.0 || order.len() == 1 {
        return order.first().copied().unwrap_or(0) as u32;
    }
    let keep = if options.top_k == 0 {
        order.len()
    } else {
        options.top_k.min(order.len())
    };
    let top = &order[..keep];
    let max = logits[top[0]] as f64;
    let weights: Vec<f64> = top
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / options.temperature as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (&i, &w) in top.iter().zip(&weights) {
        if u < w {
            return i as u32;
        }
        u -= w;
    }
    top[keep - 1] as u32
}

/// Extends `prompt` by `tokens` ids, or fewer: generation ends after an id of `stop` (an
/// end-of-sequence token, kept in the output). `next_logits(window)` returns the logits of the
/// window's last position; the window is the last `context` ids at most. `on_id(ids)` sees the
/// ids so far (prompt included) after each new id, for output that appears as it is generated.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    prompt: &[u32],
    tokens: usize,
    context: usize,
    vocab: usize,
    options: SampleOptions,
    stop: &[u32],
    rng: &mut SplitMix64,
    mut next_logits: impl FnMut(&[u32]) -> Result<Vec<f32>, TrainError>,
    mut on_id: impl FnMut(&[u32]),
) -> Result<Vec<u32>, TrainError> {
    if prompt.is_empty() {
        return Err(TrainError::Config(
            "sampling needs a prompt of at least one token".into(),
        ));
    }
    let mut ids = prompt.to_vec();
    for _ in 0..tokens {
        let start = ids.len().saturating_sub(context.max(1));
        let logits = next_logits(&ids[start..])?;
        let next = pick(&logits, vocab, options, rng);
        ids.push(next);
        on_id(&ids);
        if stop.contains(&next) {
            break;
        }
    }
    Ok(ids)
}

/// Sampling from `exec` with `params` through one key/value cache (`Executor::decode`): `prompt`
/// extended by up to `tokens` ids among the first `vocab`, stopping after an id of `stop`, with
/// `on_id` as in [`generate`]. The window is the spec's context (none for dynamic-NTK RoPE): while
/// it fits, each step runs only the new id; past it the window slides and every step starts over.
#[allow(clippy::too_many_arguments)]
pub fn generate_cached(
    exec: &Executor,
    params: &dyn ParamSource<f32>,
    prompt: &[u32],
    (tokens, vocab): (usize, usize),
    options: SampleOptions,
    stop: &[u32],
    seed: u64,
    on_id: impl FnMut(&[u32]),
) -> Result<Vec<u32>, TrainError> {
    let mut cache = KvCache::new();
    generate_in_context(
        exec.spec().max_sequence(),
        prompt,
        (tokens, vocab),
        options,
        stop,
        seed,
        |w| exec.decode(params, &mut cache, w),
        on_id,
    )
}

/// [`generate`] for a decoder that keeps a key/value cache (the CPU's [`generate_cached`], the
/// GPU decoder's `generate`): the window is `context`, the spec's
/// [`ModelSpec::max_sequence`] (`None`: no window, as for dynamic-NTK RoPE), the generator is
/// seeded with `seed`, and an error of `decode(window)` (the logits of the window's last
/// position) becomes [`TrainError::Model`].
#[allow(clippy::too_many_arguments)]
pub fn generate_in_context<E>(
    context: Option<u64>,
    prompt: &[u32],
    (tokens, vocab): (usize, usize),
    options: SampleOptions,
    stop: &[u32],
    seed: u64,
    mut decode: impl FnMut(&[u32]) -> Result<Vec<f32>, E>,
    on_id: impl FnMut(&[u32]),
) -> Result<Vec<u32>, TrainError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut rng = SplitMix64::new(seed);
    let window = context.map_or(usize::MAX, |m| m as usize);
    generate(
        prompt,
        tokens,
        window,
        vocab,
        options,
        stop,
        &mut rng,
        |w| decode(w).map_err(|e| TrainError::Model(Box::new(e))),
        on_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_within_the_vocabulary() {
        let mut rng = SplitMix64::new(0);
        let greedy = SampleOptions {
            temperature: 0.0,
            top_k: 0,
        };
        assert_eq!(pick(&[0.1, 3.0, 2.0, 9.0], 3, greedy, &mut rng), 1);
        assert_eq!(pick(&[1.0, 1.0], 2, greedy, &mut rng), 0);
    }

    #[test]
    fn top_k_restricts_the_choice() {
        let mut rng = SplitMix64::new(1);
        let opts = SampleOptions {
            temperature: 5.0,
            top_k: 2,
        };
        for _ in 0..200 {
            let t = pick(&[0.0, 1.0, 0.5, 0.9], 4, opts, &mut rng);
            assert!(t == 1 || t == 3, "{t}");
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let mut rng = SplitMix64::new(2);
        let opts = SampleOptions {
            temperature: 1.0,
            top_k: 0,
        };
        let logits = [0.0f32, (3.0f32).ln()];
        let ones = (0..4000)
            .filter(|_| pick(&logits, 2, opts, &mut rng) == 1)
            .count();
        assert!((ones as f64 / 4000.0 - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn generate_feeds_back_and_windows_the_context() {
        let mut rng = SplitMix64::new(3);
        let greedy = SampleOptions {
            temperature: 0.0,
            top_k: 0,
        };
        let mut windows = Vec::new();
        // A "model" that predicts last + 1.
        let mut seen = Vec::new();
        let out = generate(
            &[5],
            4,
            3,
            16,
            greedy,
            &[],
            &mut rng,
            |w| {
                windows.push(w.len());
                let mut logits = vec![0.0; 16];
                logits[(*w.last().unwrap() as usize + 1) % 16] = 1.0;
                Ok(logits)
            },
            |ids| seen.push(ids.len()),
        )
        .unwrap();
        assert_eq!(seen, vec![2, 3, 4, 5]);
        assert_eq!(out, vec![5, 6, 7, 8, 9]);
        assert_eq!(windows, vec![1, 2, 3, 3]);
        assert!(
            generate(
                &[],
                1,
                3,
                16,
                greedy,
                &[],
                &mut rng,
                |_| Ok(vec![0.0; 16]),
                |_| {}
            )
            .is_err()
        );
        // A stop id ends generation after it is emitted.
        let out = generate(
            &[5],
            10,
            8,
            16,
            greedy,
            &[7],
            &mut rng,
            |w| {
                let mut logits = vec![0.0; 16];
                logits[(*w.last().unwrap() as usize + 1) % 16] = 1.0;
                Ok(logits)
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(out, vec![5, 6, 7]);
    }
}
