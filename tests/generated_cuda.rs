//! The CUDA side of a generated model: its `{Type}Kernels` is the one kernel library
//! instantiated for the spec (the `#define`s the kernels read, the attention head dims), the same
//! text `--device cuda` compiles; on a real GPU the library loaded through it agrees with the CPU
//! ops on the spec's sizes. The GPU part skips (with a message) where there is no GPU, as in CI.

use modelspec::runtime::cuda::{self, Act, AttnShape, Dtype, Gpu, NormKind};
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
fn generated_kernels_are_the_library_instantiated_for_the_spec() {
    let spec = CudaTiny::spec().unwrap();
    let inst = modelspec::dsl::codegen::kernel_instance(spec);
    assert_eq!(CudaTinyKernels::instance(), inst);
    let text = CudaTinyKernels::source();
    assert_eq!(text, modelspec::__private::v1::kernel_source(&inst));
    assert!(text.contains("#define MS_D_MODEL 96\n"), "{}", &text[..200]);
    assert!(text.contains("#define MS_LOGITS_LD"));
    for kernel in ["norm_fwd", "act_fwd", "xent", "attn_simple_fwd"] {
        assert!(
            text.contains(kernel),
            "{kernel} missing from the instantiated library"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn generated_kernels_match_the_cpu_ops() {
    let Some(gpu) = gpu() else { return };
    let k = CudaTinyKernels::load(&gpu).expect("the library compiles with NVRTC");
    let spec = CudaTiny::spec().unwrap();
    let d = CudaTiny::D_MODEL;
    let rows = 37;

    // RMSNorm with offset 1 over rows of d_model (the width the kernels specialise to).
    let x = data(rows * d, 1);
    let w = data(d, 2);
    let mut want = vec![0f32; rows * d];
    let nrm = &spec.layers[0].block.norm;
    norm::forward(&x, d, nrm, Some(&w), None, &mut want);
    let (xb, wb, yb, rstd) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.zeros::<f32>(rows * d).unwrap(),
        gpu.zeros::<f32>(rows).unwrap(),
    );
    k.norm_fwd(
        Dtype::F32,
        NormKind::Rms,
        yb.ptr(),
        0,
        rstd.ptr(),
        0,
        xb.ptr(),
        0,
        wb.ptr(),
        0,
        rows,
        d,
        nrm.eps as f32,
        nrm.offset as f32,
    )
    .unwrap();
    let got = gpu.download(&yb).unwrap();
    let diff = max_rel_diff(&got, &want);
    eprintln!("rmsnorm: max rel diff {diff:.2e}");
    assert!(diff < 1e-5, "rmsnorm differs by {diff}");

    // GeGLU (tanh) over [rows, hidden].
    let hidden = CudaTinyLayer::HIDDEN;
    let n = rows * hidden;
    let (gate, up) = (data(n, 3), data(n, 4));
    let mut want = vec![0f32; n];
    let act = activation::Activation::of(modelspec::dsl::ir::MlpKind::GegluTanh);
    activation::forward_gated(act, &gate, &up, &mut want);
    let (gb, ub, ob) = (
        gpu.upload(&gate).unwrap(),
        gpu.upload(&up).unwrap(),
        gpu.zeros::<f32>(n).unwrap(),
    );
    k.act_fwd(
        Dtype::F32,
        Act::GegluTanh,
        ob.ptr(),
        gb.ptr(),
        ub.ptr(),
        rows,
        hidden,
        hidden,
    )
    .unwrap();
    let got = gpu.download(&ob).unwrap();
    let diff = max_rel_diff(&got, &want);
    eprintln!("geglu_tanh: max rel diff {diff:.2e}");
    assert!(diff < 1e-5, "geglu differs by {diff}");

    // Causal GQA attention with a softcap, full (layer 0) and with a window of 5 (layer 1).
    let (batch, seq) = (2, 11);
    for layer in 0..2 {
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
            chunk: None,
            sinks: None,
            temperature: None,
            v_head_dim: None,
        };
        let (qd, kvd) = (CudaTinyLayer::Q_DIM, CudaTinyLayer::KV_DIM);
        let (q, kk, v) = (
            data(batch * seq * qd, 5),
            data(batch * seq * kvd, 6),
            data(batch * seq * kvd, 7),
        );
        let mut want = vec![0f32; batch * seq * qd];
        attention::forward(&cfg, &q, &kk, &v, &mut want);
        let (qb, kb, vb, ob, lse) = (
            gpu.upload(&q).unwrap(),
            gpu.upload(&kk).unwrap(),
            gpu.upload(&v).unwrap(),
            gpu.zeros::<f32>(batch * seq * qd).unwrap(),
            gpu.zeros::<f32>(batch * a.heads as usize * seq).unwrap(),
        );
        let mut shape = AttnShape::dense(
            batch,
            seq,
            a.heads as usize,
            a.kv_heads as usize,
            a.head_dim as usize,
        );
        shape.scale = a.scale as f32;
        shape.softcap = a.softcap.unwrap_or(0.0) as f32;
        shape.window = a.window.unwrap_or(0) as usize;
        k.attn_fwd(
            Dtype::F32,
            &shape,
            ob.ptr(),
            lse.ptr(),
            qb.ptr(),
            kb.ptr(),
            vb.ptr(),
        )
        .unwrap();
        let got = gpu.download(&ob).unwrap();
        let diff = max_rel_diff(&got, &want);
        eprintln!("attention layer {layer}: max rel diff {diff:.2e}");
        assert!(diff < 1e-5, "attention layer {layer} differs by {diff}");
    }
}
