//! Multi-head latent attention (DeepSeek-V2/V3) on the CPU executor, from specs written in the DSL:
//! every parameter's gradient against central differences of the loss (f64), every checkpoint
//! policy bit-identical to saving everything (f32, dropout on), and cached decoding equal to the
//! full forward while the cache holds only the compressed latent and the rotary key per position.

mod common;

use common::{random_params, tokens};
use modelspec_dsl::ir::{LayerCheckpoint, ModelSpec};
use modelspec_dsl::tensors::layer_tensors;
use modelspec_runtime::exec::{Executor, KvCache, Policy, StepOutput};
use modelspec_runtime::{Params, rng};

fn spec(src: &str) -> ModelSpec {
    modelspec_dsl::mspec::parse(src, "test.mspec").unwrap_or_else(|d| panic!("{d:?}"))
}

/// A query latent, biases on the down projections, YaRN with DeepSeek's mscale pair on
/// interleaved pairs, a value width apart from the query/key width; layer 1 without a query
/// latent, with a wider value than query/key and a sliding window.
const MLA: &str = "model mla_tiny {
    vocab 40   d_model 24   layers 2   context 32
    norm rms(eps = 1e-5)
    attention { heads 3  bias  mla(q_rank = 7, kv_rank = 5, nope_dim = 6, rope_dim = 4, v_dim = 5) }
    position rope(theta = 1000, style = interleaved,
                  scaling = yarn(factor = 4, original_context = 8, mscale = 0.7, mscale_all_dim = 0.9))
    mlp swiglu(hidden = 20)
    layers[1] {
        attention { window 5  mla(kv_rank = 6, nope_dim = 2, rope_dim = 2, v_dim = 9, norm = rms(eps = 1e-4)) }
    }
}";

/// DeepSeek-V3-like: dense first layer, then a mixture of experts with the sigmoid router.
const MLA_MOE: &str = "model mla_moe {
    vocab 40   d_model 16   layers 2   context 32
    norm rms(eps = 1e-6)
    attention { heads 2  mla(q_rank = 6, kv_rank = 4, nope_dim = 4, rope_dim = 2, v_dim = 3) }
    position rope(theta = 1000)
    moe {
        experts 4  top_k 2  expert swiglu(hidden = 6)
        router sigmoid_topk  renormalize  correction_bias
        shared(count = 1, hidden = 6)
    }
    layers[0] { mlp swiglu(hidden = 12) }
}";

#[test]
fn the_specs_resolve_latent_attention() {
    let s = spec(MLA);
    let (a0, a1) = (&s.layers[0].attention, &s.layers[1].attention);
    let (m0, m1) = (a0.mla.unwrap(), a1.mla.unwrap());
    assert_eq!((a0.head_dim, a0.kv_heads, m0.q_rank), (10, 3, Some(7)));
    assert_eq!((a1.head_dim, m1.q_rank, m1.v_dim), (4, None, 9));
    assert_eq!(
        m0.norm.eps, 1e-6,
        "the latent norm defaults to DeepSeek's eps"
    );
    // The softmax scale carries m(mscale_all_dim)^2 = (0.1 * 0.9 * ln 4 + 1)^2.
    let m = 0.1 * 0.9 * 4f64.ln() + 1.0;
    assert!(
        (a0.scale - m * m / 10f64.sqrt()).abs() < 1e-15,
        "{}",
        a0.scale
    );
    // The DSL prints back to the same IR.
    let printed = modelspec_dsl::mspec::print(&s);
    assert_eq!(spec(&printed), s, "{printed}");
}

/// Every parameter (a few coordinates each) against central differences, f64, no dropout.
fn gradcheck(src: &str) {
    const EPS: f64 = 1e-6;
    let spec = spec(src);
    let exec = Executor::new(&spec).unwrap();
    let params: Params<f64> = random_params(&spec, 3, 0.4);
    let (batch, seq) = (2, 7);
    let toks = tokens(batch * seq, spec.vocab, 1);
    let none = Policy::Uniform(LayerCheckpoint::None);
    let out = exec.loss_and_grads(&params, &toks, batch, &none).unwrap();
    let loss = |p: &Params<f64>| exec.loss_and_grads(p, &toks, batch, &none).unwrap().loss;
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (name, t) in params.iter() {
        if name.ends_with("correction_bias") {
            continue; // a buffer: selection only, no gradient
        }
        let grad = out.grads.get(name).unwrap();
        let n = t.numel();
        let picks: Vec<usize> = if n <= 3 {
            (0..n).collect()
        } else {
            (0..3)
                .map(|j| (rng::bits(rng::hash_str(name), j) % n as u64) as usize)
                .collect()
        };
        for j in picks {
            let mut p = params.clone();
            let x0 = t.data()[j];
            p.get_mut(name).unwrap().data_mut()[j] = x0 + EPS;
            let lp = loss(&p);
            p.get_mut(name).unwrap().data_mut()[j] = x0 - EPS;
            let lm = loss(&p);
            let (fd, an) = ((lp - lm) / (2.0 * EPS), grad.data()[j]);
            let scale = fd.abs().max(an.abs());
            worst = worst.max((fd - an).abs() / (1e-4 + scale));
            assert!(
                (fd - an).abs() <= 1e-7 + 1e-5 * scale,
                "{}: {name}[{j}]: finite difference {fd} vs analytic {an}",
                spec.name
            );
            checked += 1;
        }
    }
    println!(
        "{}: {checked} coordinates, worst relative error {worst:.2e}",
        spec.name
    );
}

#[test]
fn gradients_match_central_differences() {
    gradcheck(MLA);
    gradcheck(MLA_MOE);
}

fn assert_identical(what: &str, a: &StepOutput<f32>, b: &StepOutput<f32>) {
    assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{what}: loss");
    assert_eq!(a.logits, b.logits, "{what}: logits");
    for (name, g) in a.grads.iter() {
        let same = g
            .data()
            .iter()
            .zip(b.grads.get(name).unwrap().data())
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{what}: gradient of {name} differs");
    }
}

#[test]
fn every_checkpoint_policy_is_bit_identical() {
    for src in [MLA, MLA_MOE] {
        let mut spec = spec(src);
        spec.dropout.attention = 0.2;
        spec.dropout.residual = 0.1;
        let mut exec = Executor::new(&spec).unwrap();
        exec.set_dropout_seed(Some(42));
        let params: Params<f32> = random_params(&spec, 7, 0.3);
        let toks = tokens(2 * 7, spec.vocab, 3);
        let run = |p: &Policy| exec.loss_and_grads(&params, &toks, 2, p).unwrap();
        let reference = run(&Policy::Uniform(LayerCheckpoint::None));
        let names = layer_tensors(&spec.layers[0]);
        let layers = spec.layers.len();
        for latent in [
            "q_latent",
            "q_latent_norm",
            "kv_latent",
            "kv_latent_norm",
            "kv",
        ] {
            assert!(
                names.contains(&latent) || (latent.starts_with("q_") && !src.contains("q_rank")),
                "{}: `{latent}` is a checkpoint tensor ({names:?})",
                spec.name
            );
        }
        let mut policies = vec![
            Policy::Uniform(LayerCheckpoint::Full),
            Policy::Uniform(LayerCheckpoint::Auto),
            Policy::PerLayer(vec![LayerCheckpoint::Full, LayerCheckpoint::Auto]),
        ];
        // Each tensor of each layer saved alone, and recomputed alone (the other layers save
        // everything).
        for (i, l) in spec.layers.iter().enumerate() {
            for n in layer_tensors(l) {
                for one in [
                    LayerCheckpoint::Save(vec![n.to_string()]),
                    LayerCheckpoint::Recompute(vec![n.to_string()]),
                ] {
                    let mut per = vec![LayerCheckpoint::None; layers];
                    per[i] = one;
                    policies.push(Policy::PerLayer(per));
                }
            }
        }
        for p in &policies {
            assert_identical(&format!("{} {p:?}", spec.name), &reference, &run(p));
        }
        println!("{}: {} policies bit-identical", spec.name, policies.len());
    }
}

#[test]
fn decoding_keeps_the_latent_and_matches_the_full_forward() {
    for src in [MLA, MLA_MOE] {
        let spec = spec(src);
        let exec = Executor::new(&spec).unwrap();
        let params: Params<f64> = random_params(&spec, 11, 0.5);
        let ids = tokens(20, spec.vocab, 12);
        let width = spec.vocab_padded as usize;
        let mut cache = KvCache::new();
        let mut worst = 0.0f64;
        for end in 3..=ids.len() {
            let got = exec.decode(&params, &mut cache, &ids[..end]).unwrap();
            let full = exec.forward(&params, &ids[..end], 1).unwrap();
            let want = &full.data()[(end - 1) * width..end * width];
            let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f64 = want.iter().map(|b| b * b).sum();
            let e = (num / den).sqrt();
            assert!(e <= 1e-10, "{} at length {end}: {e:.3e}", spec.name);
            worst = worst.max(e);
        }
        // Per position: each layer's latent and rotary key, not per-head keys and values.
        let compressed: u64 = spec
            .layers
            .iter()
            .map(|l| l.attention.mla.unwrap().cache_width())
            .sum();
        let per_head: u64 = spec
            .layers
            .iter()
            .map(|l| l.attention.heads * (l.attention.head_dim + l.attention.v_head_dim()))
            .sum();
        assert_eq!(cache.width() as u64, compressed);
        assert!(compressed < per_head);
        println!(
            "{}: decode vs forward worst {worst:.2e}; cache {compressed} values a position (per-head keys and values: {per_head})",
            spec.name
        );
    }
}
