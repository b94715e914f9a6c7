//! The CUDA side of a generated model on a real GPU: its `CUDA_SOURCE` compiles with NVRTC, and
//! the kernels launched with the generated launch shapes agree with the CPU ops. Skips (with a
//! message) where there is no GPU, as in CI.

use std::ffi::c_void;

use modelspec::runtime::cuda::{self, Gpu};
use modelspec::runtime::ops::attention::AttentionCfg;
use modelspec::runtime::ops::{activation, attention, norm};

modelspec::model! {
    model cuda_tiny {
        vocab 50 d_model 96 layers 2 context 32
        norm rms(eps = 1e-5, offset = 1)
        attention { heads 4 kv_heads 2 softcap 20 }
        layers[1] { attention.window 5 }
        mlp geglu(hidden = 80, act = gelu_tanh)
    }
}

fn gpu() -> Option<std::sync::Arc<Gpu>> {
    match cuda::device_count() {
        Ok(n) if n > 0 => Gpu::new(0).ok(),
        _ => {
            eprintln!(
                "skipping: no CUDA device (the generated kernels are checked on the GPU machine)"
            );
            None
        }
    }
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0)
                * 2.0
                - 1.0
        })
        .collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn generated_kernels_match_the_cpu_ops() {
    let Some(gpu) = gpu() else { return };
    let module = CudaTinyKernels::load(&gpu).expect("CUDA_SOURCE compiles with NVRTC");
    let spec = CudaTiny::spec().unwrap();
    let d = CudaTiny::D_MODEL;
    let rows = 37;

    // RMSNorm with offset 1.
    let x = data(rows * d, 1);
    let w = data(d, 2);
    let mut want = vec![0f32; rows * d];
    norm::forward(&x, d, &spec.layers[0].block.norm, Some(&w), None, &mut want);
    let (xb, wb, yb) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.zeros::<f32>(rows * d).unwrap(),
    );
    let (mut yp, mut xp, mut wp, mut bp) = (yb.ptr(), xb.ptr(), wb.ptr(), 0u64);
    let mut args = [
        &mut yp as *mut u64 as *mut c_void,
        &mut xp as *mut u64 as *mut c_void,
        &mut wp as *mut u64 as *mut c_void,
        &mut bp as *mut u64 as *mut c_void,
    ];
    let launch = CudaTinyKernels::rmsnorm_offset_fwd_f32_d96(rows);
    assert_eq!(launch.grid, [rows as u32, 1, 1]);
    unsafe { launch.launch(&gpu, &module, &mut args).unwrap() };
    let got = gpu.download(&yb).unwrap();
    let diff = max_rel_diff(&got, &want);
    eprintln!("rmsnorm: max rel diff {diff:.2e}");
    assert!(diff < 1e-5, "rmsnorm differs by {diff}");

    // GeGLU (tanh) over [rows, hidden].
    let n = rows * CudaTinyLayer::HIDDEN;
    let (gate, up) = (data(n, 3), data(n, 4));
    let mut want = vec![0f32; n];
    let act = activation::Activation::of(modelspec::dsl::ir::MlpKind::GegluTanh);
    activation::forward_gated(act, &gate, &up, &mut want);
    let (gb, ub, ob) = (
        gpu.upload(&gate).unwrap(),
        gpu.upload(&up).unwrap(),
        gpu.zeros::<f32>(n).unwrap(),
    );
    let (mut op, mut gp, mut upp, mut nn) = (ob.ptr(), gb.ptr(), ub.ptr(), n as u64);
    let mut args = [
        &mut op as *mut u64 as *mut c_void,
        &mut gp as *mut u64 as *mut c_void,
        &mut upp as *mut u64 as *mut c_void,
        &mut nn as *mut u64 as *mut c_void,
    ];
    let launch = CudaTinyKernels::geglu_tanh_fwd_f32_h80(n);
    unsafe { launch.launch(&gpu, &module, &mut args).unwrap() };
    let got = gpu.download(&ob).unwrap();
    let diff = max_rel_diff(&got, &want);
    eprintln!("geglu_tanh: max rel diff {diff:.2e}");
    assert!(diff < 1e-5, "geglu differs by {diff}");

    // Causal GQA attention with a softcap, full (layer 0) and with a window of 5 (layer 1).
    let (batch, seq) = (2, 11);
    for (layer, launch_of) in [
        (
            0usize,
            CudaTinyKernels::attention_fwd_f32_h4_kv2_d24_cap20
                as fn(usize, usize) -> modelspec::KernelLaunch,
        ),
        (1, CudaTinyKernels::attention_fwd_f32_h4_kv2_d24_w5_cap20),
    ] {
        let a = &spec.layers[layer].attention;
        let cfg = AttentionCfg {
            batch,
            seq,
            heads: a.heads as usize,
            kv_heads: a.kv_heads as usize,
            head_dim: a.head_dim as usize,
            scale: a.scale,
            softcap: a.softcap,
            window: a.window.map(|w| w as usize),
            alibi: None,
            dropout: None,
        };
        let (qd, kvd) = (CudaTinyLayer::Q_DIM, CudaTinyLayer::KV_DIM);
        let (q, k, v) = (
            data(batch * seq * qd, 5),
            data(batch * seq * kvd, 6),
            data(batch * seq * kvd, 7),
        );
        let mut want = vec![0f32; batch * seq * qd];
        attention::forward(&cfg, &q, &k, &v, &mut want);
        let (qb, kb, vb, ob) = (
            gpu.upload(&q).unwrap(),
            gpu.upload(&k).unwrap(),
            gpu.upload(&v).unwrap(),
            gpu.zeros::<f32>(batch * seq * qd).unwrap(),
        );
        let (mut op, mut qp, mut kp, mut vp, mut alibi, mut seq_arg) =
            (ob.ptr(), qb.ptr(), kb.ptr(), vb.ptr(), 0u64, seq as i32);
        let mut args = [
            &mut op as *mut u64 as *mut c_void,
            &mut qp as *mut u64 as *mut c_void,
            &mut kp as *mut u64 as *mut c_void,
            &mut vp as *mut u64 as *mut c_void,
            &mut alibi as *mut u64 as *mut c_void,
            &mut seq_arg as *mut i32 as *mut c_void,
        ];
        let launch = launch_of(seq, batch);
        unsafe { launch.launch(&gpu, &module, &mut args).unwrap() };
        let got = gpu.download(&ob).unwrap();
        let diff = max_rel_diff(&got, &want);
        eprintln!("{}: max rel diff {diff:.2e}", launch.kernel);
        assert!(diff < 1e-5, "{} differs by {diff}", launch.kernel);
    }
}
