//! `GpuTrainer::with_walk` and `GpuDecoder::with_walk` (what generated models run): given the
//! lowering's own rows they compute bit for bit what `new` computes, and given a tampered walk
//! they refuse it with `CudaError::Walk`, naming the layer and kernel, before allocating.
//!
//! Without a CUDA device the GPU tests print "skipping: no CUDA device" and pass.

mod common;

use common::gpu::device;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::load::{Format, load_str};
use modelspec_dsl::program::{Fusion, KernelRow, lowered_walk};
use modelspec_runtime::Params;
use modelspec_runtime::cuda::decode::{DecodeError, GpuDecoder};
use modelspec_runtime::cuda::{CudaError, Dtype, GpuTrainer};

/// Three layers of two programs (layer 1 has a qk-norm and post-norms), one MoE layer.
const SPEC: &str = "model t_walk {
    vocab 61 d_model 32 layers 3 context 32
    norm rms(eps = 1e-5)
    attention { heads 4 kv_heads 2 }
    position rope(theta = 10000)
    mlp swiglu(hidden = 48)
    layers[1] { placement sandwich attention { qk_norm rms(eps = 1e-6) } }
    layers[2] { moe { experts 4 top_k 2 expert swiglu(hidden = 16) router softmax_topk renormalize } }
}";

fn spec() -> ModelSpec {
    load_str(SPEC, "t_walk.mspec", Format::Mspec).expect("valid spec")
}

/// The lowering as `'static` rows (what generated code carries).
fn rows(spec: &ModelSpec) -> Vec<&'static [KernelRow]> {
    lowered_walk(spec)
        .into_iter()
        .map(|ks| {
            let rows: Vec<KernelRow> = ks
                .into_iter()
                .map(|k| KernelRow {
                    fusion: k.fusion,
                    outputs: Vec::leak(k.outputs),
                    inputs: Vec::leak(k.inputs),
                })
                .collect();
            &*Vec::leak(rows)
        })
        .collect()
}

fn tokens(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 17 + seed * 5 + 3) % 61) as u32)
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_trainer_with_the_walk_computes_what_new_computes() {
    let Some(gpu) = device() else { return };
    let spec = spec();
    let walk = rows(&spec);
    let params = Params::init(&spec, 7);
    let (batch, seq) = (2, 16);
    let toks = tokens(batch * seq, 1);
    let mut out = Vec::new();
    for with_walk in [false, true] {
        let mut t = if with_walk {
            GpuTrainer::with_walk(&gpu, &spec, Dtype::F32, batch, seq, 0, &walk)
        } else {
            GpuTrainer::new(&gpu, &spec, Dtype::F32, batch, seq, 0)
        }
        .expect("trainer");
        t.set_params(&params).expect("params");
        t.set_batch(&toks, None).expect("batch");
        let logits = t.forward_backward(true).expect("forward").expect("logits");
        let grads = t.grads().expect("grads");
        out.push((t.loss().expect("loss"), logits, grads));
    }
    let (a, b) = (&out[0], &out[1]);
    assert_eq!(a.0.to_bits(), b.0.to_bits(), "loss");
    assert!(a.1 == b.1, "logits differ");
    assert_eq!(a.2.tensors.len(), b.2.tensors.len());
    for (name, g) in &a.2.tensors {
        assert!(g.data() == b.2.tensors[name].data(), "gradient {name}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_decoder_with_the_walk_computes_what_new_computes() {
    let Some(gpu) = device() else { return };
    let spec = spec();
    let walk = rows(&spec);
    let params = Params::init(&spec, 11);
    let window = tokens(9, 2);
    let mut out = Vec::new();
    for with_walk in [false, true] {
        let mut d = if with_walk {
            GpuDecoder::with_walk(&gpu, &spec, Dtype::F32, &params, 1, 16, &walk)
        } else {
            GpuDecoder::new(&gpu, &spec, Dtype::F32, &params, 1, 16)
        }
        .expect("decoder");
        let mut logits = d.decode(&window[..6]).expect("prefill");
        for n in 7..=window.len() {
            logits.extend(d.decode(&window[..n]).expect("step"));
        }
        out.push(logits);
    }
    assert!(out[0] == out[1], "decoded logits differ");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_tampered_walk_is_refused_by_both_executors() {
    let Some(gpu) = device() else { return };
    let spec = spec();
    let mut walk = rows(&spec);
    let mut layer1 = walk[1].to_vec();
    layer1[2].fusion = Fusion::Linear;
    walk[1] = Vec::leak(layer1);
    let err = GpuTrainer::with_walk(&gpu, &spec, Dtype::F32, 1, 8, 0, &walk)
        .err()
        .expect("refused");
    assert!(matches!(err, CudaError::Walk(_)), "{err}");
    assert!(err.to_string().contains("layer 1, kernel 2"), "{err}");
    let params = Params::init(&spec, 1);
    let err = GpuDecoder::with_walk(&gpu, &spec, Dtype::F32, &params, 1, 8, &walk)
        .err()
        .expect("refused");
    assert!(
        matches!(err, DecodeError::Cuda(CudaError::Walk(_))),
        "{err}"
    );
}

#[test]
fn the_spec_has_three_walks_and_its_rows_pass_the_check() {
    let spec = spec();
    let walk = rows(&spec);
    assert!(GpuTrainer::unsupported_feature(&spec).is_none());
    assert!(GpuDecoder::unsupported_feature(&spec).is_none());
    assert_ne!(walk[0], walk[1]);
    assert_ne!(walk[1], walk[2]);
    assert!(walk[2].iter().any(|r| r.fusion == Fusion::Moe));
    let kernels = modelspec_dsl::program::check_walk(&spec, &walk).expect("the lowering passes");
    assert_eq!(kernels, lowered_walk(&spec));
}
