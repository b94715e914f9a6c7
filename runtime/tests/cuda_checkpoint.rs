//! Activation checkpointing in the GPU trainer: under every policy (none, full, auto, budget(0.5)
//! and budget(0.1)) the trainer keeps what the plan saves, recomputes the rest in backward, and
//! gives the same loss (bit-identical: the forward is deterministic) and the same gradients as
//! `none`: bit-identical up to the backward's own run-to-run spread (`none` runs twice to measure
//! it): norm and bias column sums, embedding rows and the bf16 attention's dQ accumulate with f32
//! atomics, whose order varies. The memory tests need no GPU.
//! Without a CUDA device the GPU tests print "skipping: no CUDA device" and pass.

use modelspec_dsl::load::{Format, load_str};
use modelspec_dsl::plan;
use modelspec_runtime::Params;
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuTrainer, LayerSaves};

const LLAMA_LIKE: &str = "model t_llama {
    vocab 200   d_model 128   layers 3   context 64
    embedding { tied }
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 64 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 256)
}";

const GPT2_LIKE: &str = "model t_gpt2 {
    vocab 211   d_model 128   layers 3   context 64
    embedding { tied }
    norm layer(eps = 1e-5)
    attention { heads 2  bias }
    position learned
    mlp gelu_tanh(hidden = 512, bias = true)
}";

/// Layers that differ: sliding/global windows with two RoPE tables, a NoPE layer, an ALiBi
/// layer, other head counts and MLP widths, a parallel-residual layer.
const MIXED_LIKE: &str = "model t_mixed {
    vocab 150   d_model 96   layers 4   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 32  window 9 }
    position rope(theta = 100)
    mlp swiglu(hidden = 160)
    layers[1] {
        attention { heads 6  kv_heads 3  head_dim 16  window none }
        position rope(theta = 10000)
        mlp gelu(hidden = 200, bias = true)
    }
    layers[2] { position none  parallel_residual }
    layers[3] { position alibi  mlp relu_squared(hidden = 240) }
}";

/// qk-norm (per head and over the projection), post- and sandwich norms, a parallel layer.
const QK_POST_LIKE: &str = "model t_qk_post {
    vocab 150   d_model 96   layers 4   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 24  qk_norm rms(eps = 1e-6) }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
    layers[1] { placement sandwich }
    layers[2] { placement post  position none }
    layers[3] { parallel_residual  attention { qk_norm(rms(eps = 1e-6), scope = full) } }
}";

/// Llama-4-style qk-norm after RoPE (its inputs are the rotated q and k), chunked attention, and
/// a NoPE layer without qk-norm.
const QK_AFTER_ROPE_LIKE: &str = "model t_qk_after_rope {
    vocab 150   d_model 96   layers 3   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 24  qk_norm(rms(weight = false), scope = head, order = after_rope)  chunk 16 }
    position rope(theta = 10000, style = interleaved)
    mlp swiglu(hidden = 160)
    layers[1] { attention { qk_norm(rms(eps = 1e-6), scope = full, order = after_rope) } }
    layers[2] { attention { qk_norm none  chunk none } position none }
}";

/// Dense and mixture-of-experts layers (one unit for checkpointing), aux loss on.
const MOE_LIKE: &str = "model t_moe {
    vocab 150   d_model 96   layers 3   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 24 }
    position rope(theta = 10000)
    moe {
        experts 4  top_k 2
        expert swiglu(hidden = 64)
        router softmax_topk  renormalize
        shared(count = 1, hidden = 80, gate = true)
        aux_loss 0.01
    }
    layers[0] { mlp swiglu(hidden = 160) }
}";

/// Multi-head latent attention: a query latent and biases (layer 0), a direct query projection
/// with a value width above the query/key width (layer 1), then a mixture of experts (layer 2).
const MLA_LIKE: &str = "model t_mla {
    vocab 150   d_model 96   layers 3   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  bias  mla(q_rank = 40, kv_rank = 24, nope_dim = 12, rope_dim = 8, v_dim = 16) }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
    layers[1] { attention { mla(kv_rank = 20, nope_dim = 6, rope_dim = 4, v_dim = 14) } }
    layers[2] {
        moe {
            experts 4  top_k 2
            expert swiglu(hidden = 64)
            router softmax_topk  renormalize
        }
    }
}";

const POLICIES: [&str; 5] = ["full", "auto", "budget(0.5)", "budget(0.1)", "none"];

fn saves_for(spec: &modelspec_dsl::ModelSpec, b: usize, t: usize, policy: &str) -> Vec<LayerSaves> {
    let p = plan::parse_policy(policy).expect("policy parses");
    let planned = plan::plan(spec, b as u64, t as u64, plan::Dtype::Bf16, Some(&p)).expect("plan");
    LayerSaves::from_plan(spec, &planned)
}

/// (loss bits, every gradient's bits) of one forward + backward.
fn run(
    gpu: &std::sync::Arc<Gpu>,
    spec: &modelspec_dsl::ModelSpec,
    dt: Dtype,
    saves: &[LayerSaves],
    params: &Params,
    tokens: &[u32],
) -> (u32, Vec<(String, Vec<f32>)>) {
    let (b, t) = (2, 48);
    let mut tr = GpuTrainer::with_checkpoint(gpu, spec, dt, b, t, 0, saves).unwrap();
    tr.set_params(params).unwrap();
    tr.set_batch(tokens, None).unwrap();
    tr.forward_backward(false).unwrap();
    let loss = tr.loss().unwrap();
    let grads = tr.grads().unwrap();
    (
        loss.to_bits(),
        grads
            .iter()
            .map(|(n, g)| (n.clone(), g.data().to_vec()))
            .collect(),
    )
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f64, usize) {
    let mut worst = 0.0f64;
    let mut differing = 0;
    for ((na, ga), (nb, gb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let scale = gb
            .iter()
            .map(|x| x.abs() as f64)
            .fold(0.0, f64::max)
            .max(1e-30);
        for (x, y) in ga.iter().zip(gb) {
            if x.to_bits() != y.to_bits() {
                differing += 1;
                worst = worst.max((*x as f64 - *y as f64).abs() / scale);
            }
        }
    }
    (worst, differing)
}

fn check(src: &str, dt: Dtype) {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            return;
        }
    };
    let spec = load_str(src, "test.mspec", Format::Mspec).expect("spec is valid");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("{}: seed {seed}", spec.name);
    let params = Params::<f32>::init(&spec, seed);
    let mut s = seed | 1;
    let tokens: Vec<u32> = (0..2 * 48)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % spec.vocab) as u32
        })
        .collect();
    let reference = run(&gpu, &spec, dt, &[], &params, &tokens);
    let again = run(&gpu, &spec, dt, &[], &params, &tokens);
    let (spread, n_spread) = max_diff(&again.1, &reference.1);
    let deterministic = n_spread == 0 && again.0 == reference.0;
    println!(
        "CKPT {} {}: none vs none: {} ({n_spread} elements differ, worst {spread:.2e})",
        spec.name,
        dt.suffix(),
        if deterministic {
            "bit-identical"
        } else {
            "NOT bit-identical"
        }
    );
    for policy in POLICIES {
        let saves = saves_for(&spec, 2, 48, policy);
        let got = run(&gpu, &spec, dt, &saves, &params, &tokens);
        let (worst, differing) = max_diff(&got.1, &reference.1);
        println!(
            "CKPT {} {} {policy}: loss {} ; {differing} gradient elements differ from none (worst {worst:.2e} of the tensor's max)",
            spec.name,
            dt.suffix(),
            if got.0 == reference.0 {
                "bit-identical"
            } else {
                "differs"
            }
        );
        assert_eq!(
            got.0, reference.0,
            "{policy}: the loss must not depend on the policy"
        );
        // The forward is bit-identical (the loss checks it). The backward's atomics (norm and
        // bias column sums, embedding rows, the bf16 attention's dQ) may order additions
        // differently from run to run: beyond that spread, any difference is a recompute bug.
        let floor = if dt == Dtype::F32 { 1e-6 } else { 1e-2 };
        assert!(
            worst <= (4.0 * spread).max(floor),
            "{policy}: worst {worst:.3e} beyond the run-to-run spread {spread:.3e}"
        );
        if deterministic && differing > 0 {
            println!(
                "CKPT note: {policy} differs in {differing} elements although none vs none did not (atomics)"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_llama_like_f32() {
    check(LLAMA_LIKE, Dtype::F32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_gpt2_like_f32() {
    check(GPT2_LIKE, Dtype::F32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_llama_like_bf16() {
    check(LLAMA_LIKE, Dtype::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_gpt2_like_bf16() {
    check(GPT2_LIKE, Dtype::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_mixed_layers() {
    check(MIXED_LIKE, Dtype::F32);
    check(MIXED_LIKE, Dtype::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_qk_and_post_norms() {
    check(QK_POST_LIKE, Dtype::F32);
    check(QK_POST_LIKE, Dtype::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_latent_attention() {
    check(MLA_LIKE, Dtype::F32);
    check(MLA_LIKE, Dtype::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_qk_norm_after_rope() {
    check(QK_AFTER_ROPE_LIKE, Dtype::F32);
    check(QK_AFTER_ROPE_LIKE, Dtype::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn policies_match_none_moe_layers() {
    check(MOE_LIKE, Dtype::F32);
    check(MOE_LIKE, Dtype::Bf16);
}

/// The trainer's memory plan follows the checkpoint plan (no GPU needed): less memory under full
/// than auto than none, and what the layers keep monotone in `budget(f)`.
#[test]
fn memory_follows_the_plan() {
    for src in [LLAMA_LIKE, GPT2_LIKE, MIXED_LIKE, MOE_LIKE, MLA_LIKE] {
        let spec = load_str(src, "test.mspec", Format::Mspec).expect("spec is valid");
        let bytes = |policy: &str| {
            GpuTrainer::predicted_bytes_with(
                &spec,
                Dtype::Bf16,
                2,
                48,
                &saves_for(&spec, 2, 48, policy),
            )
        };
        let none = GpuTrainer::predicted_bytes(&spec, Dtype::Bf16, 2, 48);
        assert_eq!(bytes("none"), none);
        assert!(bytes("full") < bytes("auto"), "{}", spec.name);
        assert!(bytes("auto") < none, "{}", spec.name);
        // What the layers keep grows with the budget (the shared recompute buffers need not:
        // a larger budget may stop one layer from keeping what the others recompute). Up to the
        // arena's alignment, which kept_bytes_equal_the_plans bounds.
        let kept = |policy: &str| {
            GpuTrainer::predicted_saved_bytes(
                &spec,
                Dtype::Bf16,
                2,
                48,
                &saves_for(&spec, 2, 48, policy),
            )
        };
        let slack = 256 * 16 * spec.layers.len();
        let mut last = 0;
        for f in [0.1, 0.25, 0.5, 0.75, 1.0] {
            let b = kept(&format!("budget({f})"));
            assert!(b + slack >= last, "{} budget({f}): {b} < {last}", spec.name);
            last = b;
        }
    }
}

#[test]
fn saved_buffers_map_the_planners_names() {
    let spec = load_str(LLAMA_LIKE, "t.mspec", Format::Mspec).expect("spec is valid");
    let layer = &spec.layers[0];
    let names = modelspec_dsl::tensors::layer_tensors(layer);
    let all = LayerSaves::from_saved(layer, &names);
    // No qk-norm or post-norm in this layer: those buffers do not exist.
    assert_eq!(
        all,
        LayerSaves {
            q_raw: false,
            k_raw: false,
            attn_out: false,
            mlp_out: false,
            moe: false,
            q_latent: false,
            q_latent_norm: false,
            kv_latent: false,
            kv_latent_norm: false,
            ..LayerSaves::ALL
        }
    );
    assert_eq!(LayerSaves::from_saved(layer, &[]), LayerSaves::INPUT_ONLY);
    let s = LayerSaves::from_saved(layer, &["q_rope", "k_rope", "v", "resid_mid"]);
    assert!(s.qkv && s.resid_mid && !s.attn && !s.attn_norm && !s.act && !s.moe);
    // A MoE block is one unit: its routed state is one saved region.
    let moe = load_str(MOE_LIKE, "t.mspec", Format::Mspec).expect("spec is valid");
    let m = LayerSaves::from_saved(&moe.layers[1], &["router_logits", "router_weights"]);
    assert!(m.moe && !m.mlp_in && !m.act && !m.qkv);
    // Latent attention: its latents are units of their own; q_rope, k and v are the [q; k; v]
    // unit; q, kv and k_rope are never kept.
    let mla = load_str(MLA_LIKE, "t.mspec", Format::Mspec).expect("spec is valid");
    let l = &mla.layers[0];
    let all = LayerSaves::from_saved(l, &modelspec_dsl::tensors::layer_tensors(l));
    assert!(all.q_latent && all.q_latent_norm && all.kv_latent && all.kv_latent_norm && all.qkv);
    assert!(!all.q_raw && !all.k_raw);
    let s = LayerSaves::from_saved(l, &["kv_latent_norm", "q_rope", "k", "v", "kv", "k_rope"]);
    assert!(s.kv_latent_norm && s.qkv && !s.kv_latent && !s.q_latent && !s.q_latent_norm);
    assert!(
        !LayerSaves::from_saved(l, &["k", "v"]).qkv,
        "the unit is named by q_rope"
    );
    // Without a query latent (layer 1) there is none to keep.
    let direct = LayerSaves::from_saved(
        &mla.layers[1],
        &modelspec_dsl::tensors::layer_tensors(&mla.layers[1]),
    );
    assert!(!direct.q_latent && !direct.q_latent_norm && direct.kv_latent);
}

/// Latent attention in dense layers only (the kept-bytes test leaves MoE layers out).
const MLA_DENSE: &str = "model t_mla_dense {
    vocab 150   d_model 96   layers 2   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  bias  mla(q_rank = 40, kv_rank = 24, nope_dim = 12, rope_dim = 8, v_dim = 16) }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
    layers[1] { attention { window 9  mla(kv_rank = 20, nope_dim = 6, rope_dim = 4, v_dim = 14) } }
}";

/// The trainer keeps exactly what the plan counts (no GPU needed): for every policy, the bytes
/// its arena keeps from forward to backward equal the plan's `activation_bytes`, up to the
/// arena's 256-byte alignment of each buffer. Mixture-of-experts layers keep their block's own
/// saved region, which the planner sizes per tensor, so they are left out.
#[test]
fn kept_bytes_equal_the_plans() {
    for src in [
        LLAMA_LIKE,
        GPT2_LIKE,
        MIXED_LIKE,
        QK_POST_LIKE,
        QK_AFTER_ROPE_LIKE,
        MLA_DENSE,
    ] {
        let spec = load_str(src, "test.mspec", Format::Mspec).expect("spec is valid");
        for policy in POLICIES.iter().chain(&[
            "save(q_rope)",
            "recompute(attn)",
            "auto",
            "save(kv_latent_norm, q_latent)",
            "recompute(q_latent_norm, kv_latent)",
        ]) {
            for dt in [Dtype::Bf16, Dtype::F32] {
                let p = plan::parse_policy(policy).expect("policy parses");
                let planned = plan::plan(&spec, 2, 48, dt, Some(&p)).expect("plan");
                let saves = LayerSaves::from_plan(&spec, &planned);
                let kept = GpuTrainer::predicted_saved_bytes(&spec, dt, 2, 48, &saves) as u64;
                let slack = 256 * 16 * spec.layers.len() as u64;
                assert!(
                    kept >= planned.activation_bytes && kept - planned.activation_bytes <= slack,
                    "{} {policy} {}: the trainer keeps {kept} bytes, the plan counts {}",
                    spec.name,
                    dt.suffix(),
                    planned.activation_bytes
                );
            }
        }
    }
}
