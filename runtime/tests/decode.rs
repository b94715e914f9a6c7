//! Decoding with a key/value cache (`Executor::decode`) against the full forward pass: for every
//! prefix of a random sequence, the cached call's logits equal the last row of `forward` over the
//! whole prefix (f64: to 1e-10 relative), on specs that exercise every positional and attention
//! feature; and the cache starts over where it must (a new prompt, a dynamic-NTK table that
//! changes with the length).

mod common;

use common::*;
use modelspec_dsl::ir::ModelSpec;
use modelspec_runtime::Params;
use modelspec_runtime::exec::{Executor, KvCache};

fn spec(src: &str) -> ModelSpec {
    modelspec_dsl::mspec::parse(src, "test.mspec").expect("spec is valid")
}

/// GQA, RoPE, a sliding window on one layer, score and logit softcaps, sandwich norms with an
/// offset, per-head qk-norm, an embedding scale.
const GEMMA_LIKE: &str = "model d_gemma {
    vocab 50   d_model 32   layers 3   context 40
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)   placement sandwich
    attention { heads 4  kv_heads 2  head_dim 8  softcap 20  qk_norm rms(eps = 1e-6) }
    position rope(theta = 100, fraction = 0.5)
    mlp geglu_tanh(hidden = 48)
    logits { softcap 30 }
    layers[1] { attention.window 4 }
}";

/// Learned positions, LayerNorm with biases, biased projections (GPT-2).
const GPT2_LIKE: &str = "model d_gpt2 {
    vocab 50   d_model 32   layers 2   context 40
    embedding { tied }
    norm layer(eps = 1e-5)
    attention { heads 2  bias }
    position learned
    mlp gelu_tanh(hidden = 64, bias = true)
}";

/// ALiBi with a parallel residual and one shared norm, multi-query attention (Falcon).
const FALCON_LIKE: &str = "model d_falcon {
    vocab 50   d_model 32   layers 2   context 40
    norm layer(eps = 1e-5)
    parallel_residual  shared_norm
    attention { heads 4  kv_heads 1 }
    position alibi
    mlp gelu(hidden = 64)
}";

/// Dynamic NTK RoPE: the table changes once the window passes the original context.
const DYNAMIC: &str = "model d_dynamic {
    vocab 50   d_model 24   layers 2   context 8
    embedding { tied }
    norm rms(eps = 1e-6)
    attention { heads 6  kv_heads 3  head_dim 4 }
    position rope(theta = 1000, scaling = dynamic_ntk(factor = 3, original_context = 8))
    mlp swiglu(hidden = 40)
}";

fn moe_spec() -> ModelSpec {
    let mut s = tiny();
    each_layer(&mut s, |l| {
        l.ffn = moe(
            modelspec_dsl::ir::RouterOrder::SoftmaxTopk,
            true,
            Some(modelspec_dsl::ir::SharedExperts {
                count: 1,
                hidden: 16,
                gate: true,
            }),
        )
    });
    s
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Feeds prefixes of `ids` one token at a time (after a prompt of `prompt` ids) and compares.
fn check(spec: &ModelSpec, len: usize, prompt: usize, seed: u64) {
    let exec = Executor::new(spec).unwrap();
    let params: Params<f64> = random_params(spec, seed, 0.5);
    let ids = tokens(len, spec.vocab, seed + 1);
    let width = spec.vocab_padded as usize;
    let mut cache = KvCache::new();
    let mut worst = 0.0f64;
    for end in prompt..=len {
        let window = &ids[..end];
        let got = exec.decode(&params, &mut cache, window).unwrap();
        assert_eq!(
            cache.len(),
            end,
            "{}: the cache holds the window",
            spec.name
        );
        let full = exec.forward(&params, window, 1).unwrap();
        let want = &full.data()[(end - 1) * width..end * width];
        let e = rel(&got, want);
        assert!(
            e <= 1e-10,
            "{} at length {end}: relative error {e:.3e}",
            spec.name
        );
        worst = worst.max(e);
    }
    println!("{}: decode vs forward worst {worst:.2e}", spec.name);
}

#[test]
fn decoding_matches_the_full_forward_on_every_feature() {
    for (i, src) in [GEMMA_LIKE, GPT2_LIKE, FALCON_LIKE].iter().enumerate() {
        check(&spec(src), 24, 5, 10 + i as u64);
    }
    check(&moe_spec(), 12, 1, 20);
    check(&tiny(), 16, 3, 21);
}

#[test]
fn dynamic_ntk_tables_restart_the_cache_past_the_original_context() {
    // Lengths 1..=20 cross the original context (8): the frequencies change with the length,
    // so the cache must start over there, and the logits still match.
    check(&spec(DYNAMIC), 20, 1, 30);
}

#[test]
fn a_window_that_does_not_extend_the_cache_starts_over() {
    let s = spec(GPT2_LIKE);
    let exec = Executor::new(&s).unwrap();
    let params: Params<f64> = random_params(&s, 40, 0.5);
    let width = s.vocab_padded as usize;
    let a = tokens(10, s.vocab, 41);
    let mut b = a.clone();
    b[3] = (b[3] + 1) % s.vocab as u32;
    let mut cache = KvCache::new();
    exec.decode(&params, &mut cache, &a).unwrap();
    // A different prompt, a slid window, and a shorter one: each is recomputed from its start.
    for window in [&b[..], &a[2..], &a[..4]] {
        let got = exec.decode(&params, &mut cache, window).unwrap();
        let full = exec.forward(&params, window, 1).unwrap();
        let want = &full.data()[(window.len() - 1) * width..window.len() * width];
        assert!(rel(&got, want) <= 1e-10);
        assert_eq!(cache.len(), window.len());
    }
    // Bad input is an error, as in `forward`.
    assert!(exec.decode(&params, &mut cache, &[]).is_err());
    assert!(exec.decode(&params, &mut cache, &[s.vocab as u32]).is_err());
}
