//! Generated models placed on a GPU (`Device::cuda(0)`): `logits` and `loss_and_grads` run on the
//! GPU trainer in f32 and equal the same model on the CPU within 1e-4 relative (logits, loss and
//! every gradient), for a dense spec and a mixture-of-experts spec; after `params_mut` the GPU
//! sees the new weights; `decode` and `generate` run on the GPU decoder (its key/value cache on the
//! device) and follow the CPU model within 1e-4. Without a CUDA device the GPU tests print
//! "skipping: no CUDA device" and pass.
//!
//! Errors are measured norm-wise: ‖gpu − cpu‖ / ‖cpu‖ for logits, |Δ| / |loss| for the loss, and
//! per gradient tensor relative to the larger of its own RMS and 1e-3 × the largest gradient RMS
//! (some gradients are exactly zero in exact arithmetic, e.g. a key bias under softmax's shift
//! invariance, and are rounding noise on both sides), as `tests/cuda_eval.rs` does.

use modelspec::runtime::Params;
use modelspec::{Device, KvCache, Model, SampleOptions};

// Dense: GQA, a sliding-window layer, SwiGLU, per-layer checkpoint policies.
modelspec::model! {
    model gpu_dense {
        vocab 64 d_model 32 layers 3 context 32
        attention { heads 4 kv_heads 2 }
        mlp swiglu(hidden = 48)
        layers[1] { attention.window 5 }
        checkpoint { default auto  layers[0..1] full }
    }
}

// MoE with a shared expert, qk-norm and a load-balancing loss (part of the training loss).
modelspec::model! {
    model gpu_moe {
        vocab 48 d_model 32 layers 2 context 32
        attention { heads 4 kv_heads 1 qk_norm rms(eps = 1e-6) }
        moe {
            experts 4  top_k 2
            expert swiglu(hidden = 16)
            router softmax_topk  renormalize
            shared(count = 1, hidden = 16, gate = true)
            aux_loss 0.01
        }
    }
}

const TOL: f64 = 1e-4;

fn gpu() -> Option<Device> {
    match Device::cuda(0) {
        Ok(device) => Some(device),
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            None
        }
    }
}

fn tokens(batch: usize, seq: usize, vocab: usize) -> Vec<u32> {
    (0..batch * seq)
        .map(|i| ((i * 7 + 3) % vocab) as u32)
        .collect()
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖a − b‖ / max(‖b‖, floor · √n).
fn rel(a: &[f32], b: &[f32], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = norm(a.iter().zip(b).map(|(x, y)| f64::from(x - y)));
    let scale = norm(b.iter().map(|&y| f64::from(y))).max(floor * (b.len() as f64).sqrt());
    if scale == 0.0 { diff } else { diff / scale }
}

fn rms(t: &[f32]) -> f64 {
    norm(t.iter().map(|&x| f64::from(x))) / (t.len().max(1) as f64).sqrt()
}

/// Every gradient of `gpu` against `cpu` (same names), relative as the module says.
fn compare_grads(what: &str, gpu: &Params, cpu: &Params) {
    let gpu_names: Vec<&String> = gpu.tensors.keys().collect();
    let cpu_names: Vec<&String> = cpu.tensors.keys().collect();
    assert_eq!(gpu_names, cpu_names, "{what}: gradient names");
    let largest = cpu
        .tensors
        .values()
        .map(|t| rms(t.data()))
        .fold(0.0, f64::max);
    let mut worst = (0.0, String::new());
    for (name, c) in &cpu.tensors {
        let g = &gpu.tensors[name];
        assert_eq!(g.shape(), c.shape(), "{what}: shape of {name}");
        let e = rel(g.data(), c.data(), 1e-3 * largest);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    println!("{what}: worst gradient {} at {:.2e}", worst.1, worst.0);
    assert!(
        worst.0 <= TOL,
        "{what}: gradient {} off by {:.2e}",
        worst.1,
        worst.0
    );
}

/// Logits, loss and gradients of the model on the GPU against the same weights on the CPU, for
/// two shapes (each gets its own GPU trainer).
fn check_parity<M: Model + Clone>(what: &str, device: &Device, vocab: usize) {
    let gpu = M::init(device, 11).expect("init on the GPU");
    let cpu = M::init(&Device::cpu(), 11).expect("init on the CPU");
    assert_eq!(gpu.device(), device);
    assert!(cpu.device().is_cpu());
    for (batch, seq) in [(2, 9), (1, 16)] {
        let toks = tokens(batch, seq, vocab);
        let (g, c) = (
            gpu.logits(&toks, batch).expect("GPU logits"),
            cpu.logits(&toks, batch).expect("CPU logits"),
        );
        let e = rel(&g, &c, 0.0);
        println!("{what} {batch}x{seq}: logits {e:.2e}");
        assert!(e <= TOL, "{what} {batch}x{seq}: logits off by {e:.2e}");

        let (gl, gg) = gpu.loss_and_grads(&toks, batch).expect("GPU grads");
        let (cl, cg) = cpu.loss_and_grads(&toks, batch).expect("CPU grads");
        let e = f64::from((gl - cl).abs()) / f64::from(cl.abs());
        println!("{what} {batch}x{seq}: loss {gl} vs {cl} ({e:.2e})");
        assert!(e <= TOL, "{what} {batch}x{seq}: loss off by {e:.2e}");
        compare_grads(&format!("{what} {batch}x{seq}"), &gg, &cg);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_model_on_the_gpu_equals_the_cpu() {
    let Some(device) = gpu() else { return };
    check_parity::<GpuDense>("dense", &device, GpuDense::VOCAB);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_model_on_the_gpu_equals_the_cpu() {
    let Some(device) = gpu() else { return };
    check_parity::<GpuMoe>("moe", &device, GpuMoe::VOCAB);
}

/// Weights changed through `params_mut` reach the GPU before the next call.
#[test]
#[ignore = "needs a CUDA GPU"]
fn params_mut_is_uploaded_before_the_next_call() {
    let Some(device) = gpu() else { return };
    let mut gpu = GpuDense::init(&device, 3).unwrap();
    let mut cpu = GpuDense::init(&Device::cpu(), 3).unwrap();
    let toks = tokens(2, 8, GpuDense::VOCAB);
    let before = gpu.logits(&toks, 2).unwrap();
    for model in [&mut gpu, &mut cpu] {
        for tensor in model.params_mut().into_values() {
            for x in tensor.data_mut() {
                *x *= 1.5;
            }
        }
    }
    let (g, c) = (gpu.logits(&toks, 2).unwrap(), cpu.logits(&toks, 2).unwrap());
    let e = rel(&g, &c, 0.0);
    println!("after params_mut: logits {e:.2e}");
    assert!(e <= TOL, "after params_mut: logits off by {e:.2e}");
    assert!(
        rel(&before, &c, 0.0) > 1e-2,
        "scaling every weight by 1.5 should change the logits"
    );
}

/// `decode` and `generate` run on the GPU decoder (key/value cache on the device): every
/// window's logits within 1e-4 of the CPU's (a growing window, a new prompt, a slid one), the
/// decoder rebuilt after `params_mut`, and the same ids generated (greedy and sampled: the host
/// sampler on logits that agree to ~1e-6).
fn check_decode<M: Model>(what: &str, device: &Device, vocab: usize) {
    let mut gpu = M::init(device, 5).unwrap();
    let mut cpu = M::init(&Device::cpu(), 5).unwrap();
    let stream = tokens(1, 20, vocab);
    let mut windows: Vec<&[u32]> = (3..=9).map(|n| &stream[..n]).collect();
    windows.push(&stream[4..12]);
    for round in 0..2 {
        let (mut gpu_cache, mut cpu_cache) = (KvCache::new(), KvCache::new());
        for w in &windows {
            let g = gpu.decode(&mut gpu_cache, w).unwrap();
            let c = cpu.decode(&mut cpu_cache, w).unwrap();
            let e = rel(&g, &c, 0.0);
            assert!(
                e <= TOL,
                "{what} round {round}: decode of {} ids off by {e:.2e}",
                w.len()
            );
        }
        // New weights: the GPU decoder must see them.
        for model in [&mut gpu as &mut M, &mut cpu] {
            for tensor in model.params_mut().into_values() {
                for x in tensor.data_mut() {
                    *x *= 1.25;
                }
            }
        }
    }
    let prompt = [1, 2, 3];
    for options in [
        SampleOptions::default(),
        SampleOptions {
            temperature: 0.0,
            top_k: 0,
        },
    ] {
        assert_eq!(
            gpu.generate(&prompt, 8, options, 9).unwrap(),
            cpu.generate(&prompt, 8, options, 9).unwrap(),
            "{what}: generate with {options:?}"
        );
    }
    println!("{what}: decode and generate on the GPU follow the CPU");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_and_generate_of_a_gpu_model_follow_the_cpu() {
    let Some(device) = gpu() else { return };
    check_decode::<GpuDense>("dense", &device, GpuDense::VOCAB);
    check_decode::<GpuMoe>("moe", &device, GpuMoe::VOCAB);
}

#[test]
fn generated_models_stay_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<GpuDense>();
    check::<GpuMoe>();
    let model = GpuDense::init(&Device::cpu(), 0).unwrap();
    assert!(model.clone().device().is_cpu());
}
