//! cuBLASLt's fused GELU epilogues through [`Gemm::run_epilogue`] against f64 references, on
//! fresh random inputs each run (the seed is printed): GELU_AUX(_BIAS), the forward of an
//! ungated GELU-tanh MLP's input projection (`act = gelu(x W^T + b)`, the pre-activation kept),
//! and DGELU, the down projection's input gradient through the GELU (`(dy W) * gelu'(pre)`),
//! in both dtypes, with and without a bias, the pre-activation's row stride equal to or wider
//! than the width.
//!
//! Tolerances, ||gpu - ref|| / ||ref||: f32 1e-4 (f32 products, cuBLASLt's own tanh), bf16 1e-2
//! (the outputs and the kept pre-activation are rounded to bf16, ~2e-3 each). A bf16 epilogue
//! cuBLASLt refuses fails the test (the trainer would fall back to its unfused path, losing the
//! speed); an f32 one is printed as `UNSUPPORTED` and skipped (f32 runs are for parity only).
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.

mod common;

use common::gpu::{Mat, Rng, check, device};
use modelspec_runtime::cuda::{Dtype, DtypeExt, Epilogue, RowMajorGemm};

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())
}
fn gelu_grad(x: f64) -> f64 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Whether a refused epilogue is acceptable (f32) or a failure (bf16, the training path).
fn refused(what: &str, dt: Dtype) -> bool {
    println!(
        "UNSUPPORTED {what} {}: cuBLASLt has no algorithm",
        dt.suffix()
    );
    assert!(
        dt == Dtype::F32,
        "{what}: cuBLASLt refused the bf16 epilogue"
    );
    true
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_aux_epilogue_matches_f64() {
    let Some(gpu) = device() else { return };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut rng = Rng::fresh("gelu_aux");
    // (rows m, width n, reduced k, pre row stride, bias)
    for dt in [Dtype::F32, Dtype::Bf16] {
        for (m, n, k, ld, with_bias) in [
            (257, 384, 96, 384, true),
            (64, 128, 72, 128, false),
            (100, 256, 64, 264, true),
        ] {
            let x = Mat::new(&gpu, dt, &rng.uniform_vec(m * k, 0.0, 1.0));
            let w = Mat::new(&gpu, dt, &rng.uniform_vec(n * k, 0.0, 0.25));
            let b = Mat::new(&gpu, dt, &rng.uniform_vec(n, 0.0, 0.5));
            let act = Mat::new(&gpu, dt, &vec![f64::NAN; m * n]);
            let pre = Mat::new(&gpu, dt, &vec![7.0; m * ld]);
            let epi = Epilogue::GeluAux {
                pre: pre.ptr(),
                ld,
                bias: if with_bias { b.ptr() } else { 0 },
            };
            let g = RowMajorGemm::linear(m, n, k);
            let tag = format!("gelu_aux {m}x{n}x{k} ld {ld} bias {with_bias}");
            // SAFETY: x [m, k], w [n, k], act [m, n], pre [m, ld], bias [n], all of dt.
            let ran = unsafe { gemm.run_epilogue(dt, &g, x.ptr(), w.ptr(), act.ptr(), &epi) }
                .expect("no error");
            if !ran && refused(&tag, dt) {
                continue;
            }
            let (mut want_pre, mut want_act) = (vec![7.0; m * ld], vec![0.0; m * n]);
            for r in 0..m {
                for j in 0..n {
                    let mut s = if with_bias { b.host[j] } else { 0.0 };
                    for q in 0..k {
                        s += x.host[r * k + q] * w.host[j * k + q];
                    }
                    want_pre[r * ld + j] = s;
                    want_act[r * n + j] = gelu(s);
                }
            }
            check(&format!("{tag} pre"), dt, &pre.get(&gpu), &want_pre);
            check(&format!("{tag} act"), dt, &act.get(&gpu), &want_act);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dgelu_epilogue_matches_f64() {
    let Some(gpu) = device() else { return };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut rng = Rng::fresh("dgelu");
    for dt in [Dtype::F32, Dtype::Bf16] {
        // dy [m, k] (the down projection's output gradient), W [k, n] (its weight, rows of the
        // hidden width n), pre [m, ld]: d(up) = (dy W) * gelu'(pre).
        for (m, n, k, ld) in [(257, 384, 96, 384), (100, 256, 64, 264)] {
            let dy = Mat::new(&gpu, dt, &rng.uniform_vec(m * k, 0.0, 1.0));
            let w = Mat::new(&gpu, dt, &rng.uniform_vec(k * n, 0.0, 0.25));
            let pre = Mat::new(&gpu, dt, &rng.uniform_vec(m * ld, 0.0, 3.0));
            let out = Mat::new(&gpu, dt, &vec![f64::NAN; m * n]);
            let g = RowMajorGemm {
                m,
                n,
                k,
                trans_a: false,
                trans_b: false,
                lda: k,
                ldb: n,
                ldc: n,
                batch: None,
            };
            let epi = Epilogue::DGelu { pre: pre.ptr(), ld };
            let tag = format!("dgelu {m}x{n}x{k} ld {ld}");
            // SAFETY: dy [m, k], w [k, n], out [m, n], pre [m, ld], all of dt.
            let ran = unsafe { gemm.run_epilogue(dt, &g, dy.ptr(), w.ptr(), out.ptr(), &epi) }
                .expect("no error");
            if !ran && refused(&tag, dt) {
                continue;
            }
            let mut want = vec![0.0; m * n];
            for r in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for q in 0..k {
                        s += dy.host[r * k + q] * w.host[q * n + j];
                    }
                    want[r * n + j] = s * gelu_grad(pre.host[r * ld + j]);
                }
            }
            check(&tag, dt, &out.get(&gpu), &want);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_epilogue_without_its_matrix_is_refused() {
    let Some(gpu) = device() else { return };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let g = RowMajorGemm::linear(8, 16, 8);
    for epi in [
        Epilogue::GeluAux {
            pre: 0,
            ld: 16,
            bias: 0,
        },
        Epilogue::DGelu { pre: 256, ld: 8 },
    ] {
        // SAFETY: refused before any launch (no matrix, or a row stride below the width).
        let r = unsafe { gemm.run_epilogue(Dtype::Bf16, &g, 256, 256, 256, &epi) };
        let err = r.expect_err("refused");
        assert!(err.to_string().contains("auxiliary matrix"), "{err}");
    }
}
