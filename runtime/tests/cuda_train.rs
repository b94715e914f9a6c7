//! The GPU training step against the CPU executor (C1's reference) on small specs: same weights,
//! same tokens; loss and every parameter gradient compared. f32 within 1e-4 relative
//! (norm-wise per parameter); bf16 within 5e-2 (bf16 activations through a whole network: each
//! stored activation rounds at 2^-9, compounded over ~10 ops per layer and the residual stream).
//! Without a CUDA device the tests print "skipping: no CUDA device" and pass.

use modelspec_dsl::load::{Format, load_str};
use modelspec_runtime::Params;
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuTrainer, LayerSaves};
use modelspec_runtime::exec::{Executor, Policy};

const LLAMA_LIKE: &str = "model t_llama {
    vocab 200   d_model 128   layers 2   context 64
    embedding { tied }
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 64 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 256)
}";

const GPT2_LIKE: &str = "model t_gpt2 {
    vocab 211   d_model 128   layers 2   context 64
    embedding { tied }
    norm layer(eps = 1e-5)
    attention { heads 2  bias }
    position learned
    mlp gelu_tanh(hidden = 512, bias = true)
}";

/// Parallel residual, two norms (GPT-NeoX / Pythia), partial RoPE.
const NEOX_LIKE: &str = "model t_neox {
    vocab 150   d_model 96   layers 2   context 64
    norm layer(eps = 1e-5)
    parallel_residual
    attention { heads 3  head_dim 32  bias }
    position rope(theta = 10000, fraction = 0.25)
    mlp gelu(hidden = 192, bias = true)
}";

/// Parallel residual with one shared norm (Phi-2 / Falcon), lm_head bias; q and k widths (60,
/// 20) and the MLP width (90) not multiples of 8, so the fused q/k/v and gate/up biases must be
/// adjacent without padding.
const PHI_LIKE: &str = "model t_phi {
    vocab 150   d_model 96   layers 2   context 64
    norm layer(eps = 1e-5)
    parallel_residual  shared_norm
    attention { heads 3  kv_heads 1  head_dim 20  bias }
    position rope(theta = 10000, fraction = 0.5)
    mlp geglu_tanh(hidden = 90, bias = true)
    logits { bias }
}";

/// Post-norm (OLMo-2) with qk-norm over the whole projections.
const OLMO_LIKE: &str = "model t_olmo {
    vocab 150   d_model 96   layers 2   context 64
    norm rms(eps = 1e-6)   placement post
    attention {
        heads 3  head_dim 32
        qk_norm(rms(eps = 1e-6), scope = full)
    }
    position rope(theta = 500000)
    mlp swiglu(hidden = 160)
}";

/// Sandwich norms with offset, per-head qk-norm, local/global layers with their own RoPE and
/// window (Gemma-3).
const GEMMA3_LIKE: &str = "model t_gemma3 {
    vocab 150   d_model 96   layers 3   context 64
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)   placement sandwich
    attention {
        heads 4  kv_heads 2  head_dim 32
        qk_norm rms(eps = 1e-6, offset = 1)
        window 7
    }
    position rope(theta = 100)
    mlp geglu_tanh(hidden = 160)
    layers[1] {
        attention.window none
        position rope(theta = 10000)
    }
}";

/// Layers that differ in everything the executor sizes by layer: head count, kv heads and head
/// dim (layer 1: 6 heads of 16, MHA), MLP width and activation (gelu with biases, relu²), norm
/// kind and placement (layer 2: LayerNorm, sandwich, per-head qk-norm), parallel residual with its
/// own norms (layer 3) and an attention softcap; the widest layer is not the first.
const MIXED_LAYERS: &str = "model t_mixed {
    vocab 150   d_model 96   layers 4   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 32 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
    layers[1] {
        attention { heads 6  kv_heads 6  head_dim 16 }
        mlp gelu(hidden = 200, bias = true)
    }
    layers[2] {
        norm layer(eps = 1e-5)   placement sandwich
        attention { heads 2  kv_heads 1  head_dim 64  qk_norm rms(eps = 1e-6) }
        mlp relu_squared(hidden = 288)
    }
    layers[3] {
        parallel_residual
        attention { softcap 20 }
        mlp geglu_tanh(hidden = 120)
    }
}";

/// NoPE layers between RoPE layers (SmolLM3 / Llama-4 style: every third layer has no position
/// encoding), one with a sliding window.
const NOPE_LAYERS: &str = "model t_nope {
    vocab 150   d_model 96   layers 4   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 24 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
    layers[every 3 offset 2] { position none }
    layers[0] { attention.window 9 }
}";

/// GPT-OSS-style attention: a learned sink logit per head in every softmax (with q/k/v/o biases),
/// a sliding window on even layers, full attention on odd ones.
const SINKS_LIKE: &str = "model t_sinks {
    vocab 150   d_model 96   layers 2   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 32  bias  window 9  sinks }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
    layers[odd] { attention { window none } }
}";

/// Llama-4-style attention: chunks of 16 positions (three per sequence of 48) with an L2 qk-norm
/// after RoPE on three of four layers; the fourth is NoPE, attends to the whole prefix and scales
/// its queries by the temperature (steps every 8 positions).
const LLAMA4_LIKE: &str = "model t_llama4 {
    vocab 150   d_model 96   layers 4   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 32  qk_norm(rms(weight = false), scope = head, order = after_rope)  chunk 16 }
    position rope(theta = 10000, style = interleaved)
    mlp swiglu(hidden = 160)
    layers[every 4 offset 3] {
        attention { qk_norm none  chunk none  temperature(floor = 8, scale = 0.1) }
        position none
    }
}";

/// ALiBi (Falcon-7B style: parallel residual, one shared LayerNorm, MQA), with a head count that
/// is not a power of two (the second slope series).
const ALIBI_LIKE: &str = "model t_alibi {
    vocab 150   d_model 96   layers 2   context 64
    norm layer(eps = 1e-5)
    parallel_residual  shared_norm
    attention { heads 6  kv_heads 1  head_dim 16 }
    position alibi
    mlp gelu(hidden = 192)
}";

/// ALiBi on some layers and RoPE on others, sequential pre-norm, GQA with head_dim 32 (the
/// tensor-core attention path in bf16).
const ALIBI_MIXED: &str = "model t_alibi_mixed {
    vocab 150   d_model 128   layers 3   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 32 }
    position alibi
    mlp swiglu(hidden = 192)
    layers[1] { position rope(theta = 10000) }
}";

/// Gemma-3's pattern with two local layers of different windows and one global layer with its
/// own RoPE table.
const GEMMA3_WINDOWS: &str = "model t_gemma3_windows {
    vocab 150   d_model 96   layers 4   context 64
    embedding { tied, scale = sqrt(d_model) }
    norm rms(eps = 1e-6, offset = 1)   placement sandwich
    attention {
        heads 4  kv_heads 2  head_dim 32
        qk_norm rms(eps = 1e-6, offset = 1)
        window 7
        softcap 30
    }
    position rope(theta = 100)
    mlp geglu_tanh(hidden = 160)
    layers[1] { attention.window 13 }
    layers[3] {
        attention.window none
        position rope(theta = 10000, scaling = linear(factor = 2))
    }
    logits { softcap 15 }
}";

/// Dense and mixture-of-experts layers mixed (a dense first layer, as DeepSeek's), softmax→top-k
/// with renormalisation (Mixtral) in one MoE layer and top-k→softmax with a gated shared expert
/// (Qwen2-MoE) in the other, and the load-balancing loss on (it joins the loss and its gradient).
const MOE_MIXED: &str = "model t_moe_mixed {
    vocab 150   d_model 96   layers 3   context 64
    norm rms(eps = 1e-5)
    attention { heads 4  kv_heads 2  head_dim 24 }
    position rope(theta = 10000)
    moe {
        experts 4  top_k 2
        expert swiglu(hidden = 64)
        router softmax_topk  renormalize
        aux_loss 0.01
    }
    layers[0] { mlp swiglu(hidden = 160) }
    layers[2] {
        moe {
            experts 4  top_k 2
            expert swiglu(hidden = 48)
            router topk_softmax
            shared(count = 1, hidden = 80, gate = true)
            aux_loss 0.01
        }
    }
}";

/// A padded vocabulary (200 tokens, 256 logits) with a tied head: the softmax spans all 256
/// columns on both devices (the exported HF model's `vocab_size` is 256), so the pad rows of the
/// embedding get gradients too.
const PADDED_VOCAB: &str = "model t_padded {
    vocab 200 pad 64   d_model 96   layers 2   context 64
    embedding { tied }
    norm rms(eps = 1e-5)
    attention { heads 3  head_dim 32 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 160)
}";

/// As [`PADDED_VOCAB`] with an untied, biased head and a final softcap.
const PADDED_VOCAB_UNTIED: &str = "model t_padded_untied {
    vocab 150 pad 64   d_model 96   layers 2   context 64
    norm layer(eps = 1e-5)
    attention { heads 3  head_dim 32  bias }
    position rope(theta = 10000)
    mlp gelu(hidden = 192, bias = true)
    logits { bias  softcap 30 }
}";

/// Multi-head latent attention (DeepSeek-V2/V3) at awkward sizes: layer 0 with a query latent,
/// biases on the down projections, YaRN with DeepSeek's mscale pair on interleaved pairs and a
/// value width (5) below the query/key width (6 + 4); layer 1 without a query latent, a value
/// width (9) above the query/key width (2 + 2), its own latent norm and a sliding window; layer
/// 2 with equal widths (16: the bf16 tensor-core and cuDNN paths may take it); layer 3 with a
/// value width (16) below the query/key width (16 + 8), all multiples of 8, so bf16 runs it on
/// cuDNN with a value head dim of its own where the library takes it.
const MLA_LIKE: &str = "model t_mla {
    vocab 150   d_model 64   layers 4   context 64
    norm rms(eps = 1e-5)
    attention { heads 3  bias  mla(q_rank = 20, kv_rank = 13, nope_dim = 6, rope_dim = 4, v_dim = 5) }
    position rope(theta = 1000, style = interleaved,
                  scaling = yarn(factor = 4, original_context = 16, mscale = 0.7, mscale_all_dim = 0.9))
    mlp swiglu(hidden = 96)
    layers[1] {
        attention { window 9  mla(kv_rank = 10, nope_dim = 2, rope_dim = 2, v_dim = 9, norm = rms(eps = 1e-4)) }
    }
    layers[2] {
        attention { heads 4  mla(q_rank = 24, kv_rank = 16, nope_dim = 8, rope_dim = 8, v_dim = 16) }
    }
    layers[3] {
        attention { heads 2  mla(q_rank = 16, kv_rank = 24, nope_dim = 16, rope_dim = 8, v_dim = 16) }
    }
}";

/// DeepSeek-V3-like: latent attention (v narrower than q/k) before a dense layer, then a
/// mixture of experts with the sigmoid router and a shared expert.
const MLA_MOE: &str = "model t_mla_moe {
    vocab 150   d_model 48   layers 2   context 64
    norm rms(eps = 1e-6)
    attention { heads 4  mla(q_rank = 24, kv_rank = 16, nope_dim = 8, rope_dim = 4, v_dim = 8) }
    position rope(theta = 10000)
    moe {
        experts 4  top_k 2  expert swiglu(hidden = 32)
        router sigmoid_topk  renormalize  correction_bias
        shared(count = 1, hidden = 32)
    }
    layers[0] { mlp swiglu(hidden = 96) }
}";

fn compare(src: &str, dt: Dtype, tol: f64) {
    compare_with(src, dt, tol, false)
}

/// As `compare`; with `full`, the GPU keeps only each layer's input and recomputes the rest.
fn compare_with(src: &str, dt: Dtype, tol: f64, full: bool) {
    compare_folded(src, dt, tol, full, false)
}

/// As `compare_with`; with `fold`, residual adds fold into the projections' GEMMs
/// (`GpuTrainer::set_residual_epilogue`).
fn compare_folded(src: &str, dt: Dtype, tol: f64, full: bool, fold: bool) {
    // Checked everywhere, GPU or not: the spec is valid and the GPU trainer takes it.
    let spec = load_str(src, "test.mspec", Format::Mspec).expect("spec is valid");
    assert_eq!(
        GpuTrainer::unsupported_feature(&spec),
        None,
        "{}",
        spec.name
    );
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            return;
        }
    };
    let (batch, seq) = (2, 48);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("{}: seed {seed}", spec.name);
    let params = Params::<f32>::init(&spec, seed);
    let mut s = seed | 1;
    let tokens: Vec<u32> = (0..batch * seq)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % spec.vocab) as u32
        })
        .collect();
    let cpu = Executor::new(&spec)
        .unwrap()
        .loss_and_grads(&params, &tokens, batch, &Policy::FromSpec)
        .unwrap();
    let saves = if full {
        vec![LayerSaves::INPUT_ONLY; spec.layers.len()]
    } else {
        Vec::new()
    };
    let mut tr = GpuTrainer::with_checkpoint(&gpu, &spec, dt, batch, seq, 0, &saves).unwrap();
    println!(
        "{} {dt:?}: attention on {}",
        spec.name,
        tr.attention_paths()
    );
    tr.set_params(&params).unwrap();
    tr.set_residual_epilogue(fold);
    if fold {
        println!("{}: {}", spec.name, tr.gemm_paths());
    }
    tr.set_batch(&tokens, None).unwrap();
    tr.step().unwrap();
    let loss = tr.loss().unwrap() as f64;
    let le = (loss - cpu.loss).abs() / cpu.loss.abs();
    println!(
        "PARITY train {} {} loss gpu {loss:.6} cpu {:.6} rel {le:.3e}",
        spec.name,
        dt.suffix(),
        cpu.loss
    );
    assert!(le <= tol, "loss {loss} vs {}", cpu.loss);
    // Some gradients are exactly zero in exact arithmetic (the key bias: softmax is invariant to
    // a shift of every score of a query by q.b), so each parameter's error is relative to the
    // larger of its own RMS and 1e-3 x the largest RMS over all parameters.
    let rms = |v: &[f32]| {
        (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
    };
    let scale = cpu
        .grads
        .iter()
        .map(|(_, g)| rms(g.data()))
        .fold(0.0, f64::max);
    let mut worst = (0.0f64, String::new());
    for (name, g) in cpu.grads.iter() {
        let got = tr.grad(name).unwrap();
        let num = got
            .iter()
            .zip(g.data())
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / g.numel().max(1) as f64;
        let den = rms(g.data()).max(1e-3 * scale);
        let e = num.sqrt() / den;
        if e.is_nan() || e > tol {
            panic!(
                "{} grad {name}: relative error {e:.3e} above {tol:.0e}",
                dt.suffix()
            );
        }
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    println!(
        "PARITY train {} {} grads: worst rel err {:.3e} ({})",
        spec.name,
        dt.suffix(),
        worst.0,
        worst.1
    );
}

/// Residual adds folded into the projections' GEMMs: sequential and parallel blocks (both folds,
/// kept and recomputed), and specs where some or all adds stay apart (sandwich norms, mixed dense
/// and MoE layers).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_with_residual_adds_folded() {
    for full in [false, true] {
        compare_folded(GPT2_LIKE, Dtype::F32, 1e-4, full, true);
        compare_folded(LLAMA_LIKE, Dtype::F32, 1e-4, full, true);
        compare_folded(MIXED_LAYERS, Dtype::F32, 1e-4, full, true);
    }
    compare_folded(GPT2_LIKE, Dtype::Bf16, 5e-2, false, true);
    compare_folded(LLAMA_LIKE, Dtype::Bf16, 5e-2, true, true);
    compare_folded(NEOX_LIKE, Dtype::F32, 1e-4, false, true);
    compare_folded(PHI_LIKE, Dtype::F32, 1e-4, true, true);
    compare_folded(GEMMA3_LIKE, Dtype::F32, 1e-4, true, true);
    compare_folded(MOE_MIXED, Dtype::F32, 1e-4, true, true);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_llama_like_f32() {
    compare(LLAMA_LIKE, Dtype::F32, 1e-4);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_gpt2_like_f32() {
    compare(GPT2_LIKE, Dtype::F32, 1e-4);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_llama_like_bf16() {
    compare(LLAMA_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_gpt2_like_bf16() {
    compare(GPT2_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_parallel_residual_f32() {
    compare(NEOX_LIKE, Dtype::F32, 1e-4);
    compare_with(NEOX_LIKE, Dtype::F32, 1e-4, true);
    compare(NEOX_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_parallel_shared_norm_f32() {
    compare(PHI_LIKE, Dtype::F32, 1e-4);
    compare_with(PHI_LIKE, Dtype::F32, 1e-4, true);
    compare(PHI_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_post_norm_qk_norm_full_f32() {
    compare(OLMO_LIKE, Dtype::F32, 1e-4);
    compare_with(OLMO_LIKE, Dtype::F32, 1e-4, true);
    compare(OLMO_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_sandwich_qk_norm_per_layer_rope_f32() {
    compare(GEMMA3_LIKE, Dtype::F32, 1e-4);
    compare_with(GEMMA3_LIKE, Dtype::F32, 1e-4, true);
    compare(GEMMA3_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_mixed_layer_sizes_f32() {
    compare(MIXED_LAYERS, Dtype::F32, 1e-4);
    compare_with(MIXED_LAYERS, Dtype::F32, 1e-4, true);
    compare(MIXED_LAYERS, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_nope_layers_f32() {
    compare(NOPE_LAYERS, Dtype::F32, 1e-4);
    compare_with(NOPE_LAYERS, Dtype::F32, 1e-4, true);
    compare(NOPE_LAYERS, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_alibi_f32() {
    compare(ALIBI_LIKE, Dtype::F32, 1e-4);
    compare_with(ALIBI_LIKE, Dtype::F32, 1e-4, true);
    compare(ALIBI_LIKE, Dtype::Bf16, 5e-2);
    compare(ALIBI_MIXED, Dtype::F32, 1e-4);
    compare_with(ALIBI_MIXED, Dtype::F32, 1e-4, true);
    compare(ALIBI_MIXED, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_gemma3_two_windows_two_ropes_f32() {
    compare(GEMMA3_WINDOWS, Dtype::F32, 1e-4);
    compare_with(GEMMA3_WINDOWS, Dtype::F32, 1e-4, true);
    compare(GEMMA3_WINDOWS, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_attention_sinks() {
    compare(SINKS_LIKE, Dtype::F32, 1e-4);
    compare_with(SINKS_LIKE, Dtype::F32, 1e-4, true);
    compare(SINKS_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_chunks_temperature_qk_norm_after_rope() {
    compare(LLAMA4_LIKE, Dtype::F32, 1e-4);
    compare_with(LLAMA4_LIKE, Dtype::F32, 1e-4, true);
    compare(LLAMA4_LIKE, Dtype::Bf16, 5e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_latent_attention() {
    compare(MLA_LIKE, Dtype::F32, 1e-4);
    compare_with(MLA_LIKE, Dtype::F32, 1e-4, true);
    compare(MLA_LIKE, Dtype::Bf16, 5e-2);
    compare_with(MLA_LIKE, Dtype::Bf16, 5e-2, true);
    // f32 only, as the other MoE case (router ties in bf16).
    compare(MLA_MOE, Dtype::F32, 1e-4);
    compare_with(MLA_MOE, Dtype::F32, 1e-4, true);
}

/// f32 only: in bf16 a token whose k-th and (k+1)-th router scores differ by less than bf16's
/// rounding may pick another expert than the f32 CPU, which no tolerance on the gradients
/// covers (runtime/tests/cuda_moe.rs checks the bf16 MoE block on its own; the checkpoint test
/// checks bf16 recomputation against the GPU itself).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_dense_and_moe_layers_f32() {
    compare(MOE_MIXED, Dtype::F32, 1e-4);
    compare_with(MOE_MIXED, Dtype::F32, 1e-4, true);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_step_matches_cpu_padded_vocabulary_f32() {
    for src in [PADDED_VOCAB, PADDED_VOCAB_UNTIED] {
        let spec = load_str(src, "test.mspec", Format::Mspec).expect("spec is valid");
        assert!(spec.vocab_padded > spec.vocab, "{}", spec.name);
    }
    compare(PADDED_VOCAB, Dtype::F32, 1e-4);
    compare(PADDED_VOCAB_UNTIED, Dtype::F32, 1e-4);
    compare(PADDED_VOCAB, Dtype::Bf16, 5e-2);
}

/// The CPU part of the GPU comparisons (those need a GPU and are `#[ignore]`d): every case is a
/// valid spec the GPU trainer takes.
#[test]
fn every_case_is_a_spec_the_gpu_trainer_takes() {
    for src in [
        LLAMA_LIKE,
        GPT2_LIKE,
        NEOX_LIKE,
        PHI_LIKE,
        OLMO_LIKE,
        GEMMA3_LIKE,
        MIXED_LAYERS,
        NOPE_LAYERS,
        ALIBI_LIKE,
        ALIBI_MIXED,
        GEMMA3_WINDOWS,
        MOE_MIXED,
        PADDED_VOCAB,
        PADDED_VOCAB_UNTIED,
        SINKS_LIKE,
        LLAMA4_LIKE,
        MLA_LIKE,
        MLA_MOE,
    ] {
        let spec = load_str(src, "test.mspec", Format::Mspec).expect("spec is valid");
        assert_eq!(
            GpuTrainer::unsupported_feature(&spec),
            None,
            "{}",
            spec.name
        );
    }
}

/// Without a device: the arena follows each layer's own widths. Keeping only layer inputs
/// needs less than keeping everything, and widening one later layer's MLP grows the prediction by
/// at least that layer's extra parameters and optimizer state plus its extra saved activations.
#[test]
fn arena_is_sized_per_layer() {
    use modelspec_dsl::ir::Ffn;
    let mixed = load_str(MIXED_LAYERS, "test.mspec", Format::Mspec).expect("spec is valid");
    let (b, t) = (2, 48);
    let all = GpuTrainer::predicted_bytes(&mixed, Dtype::F32, b, t);
    let input_only = GpuTrainer::predicted_bytes_with(
        &mixed,
        Dtype::F32,
        b,
        t,
        &vec![LayerSaves::INPUT_ONLY; mixed.layers.len()],
    );
    assert!(input_only < all, "{input_only} vs {all}");
    let mut wide = mixed.clone();
    let Ffn::Mlp(m) = &mut wide.layers[2].ffn else {
        panic!("layer 2 is a dense MLP")
    };
    let extra = m.hidden as usize; // relu²: up and down each grow by d_model x extra
    m.hidden *= 2;
    let grown = GpuTrainer::predicted_bytes(&wide, Dtype::F32, b, t);
    let params = 2 * mixed.d_model as usize * extra * (16 + 4);
    let saved = 2 * b * t * extra * 4; // the pre-activation and the activation
    assert!(
        grown >= all + params + saved,
        "{grown} vs {all} + {params} + {saved}"
    );
}
