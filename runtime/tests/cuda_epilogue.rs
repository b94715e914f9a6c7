//! cuBLASLt's fused epilogues through [`Gemm::run_epilogue`] and [`Gemm::run_f32_out_epilogue`]
//! against f64 references, on fresh random inputs each run (the seed is printed): GELU_AUX(_BIAS),
//! the forward of an ungated GELU-tanh MLP's input projection (`act = gelu(x W^T + b)`, the
//! pre-activation kept), and DGELU, the down projection's input gradient through the GELU
//! (`(dy W) * gelu'(pre)`), in both dtypes, with and without a bias, the pre-activation's row
//! stride equal to or wider than the width; and BGRADB, a weight gradient `dW = dy^T x` (f32)
//! with its bias's `db = Σ_rows dy` (f32), alone and through [`Gemm::run_weight_grad`] under each
//! [`BiasGradPolicy`] (the column sum apart being the fallback where cuBLASLt has no algorithm).
//!
//! Tolerances, ||gpu - ref|| / ||ref||: f32 1e-4 (f32 products, cuBLASLt's own tanh), bf16 1e-2
//! (the outputs and the kept pre-activation are rounded to bf16, ~2e-3 each). The weight and
//! bias gradients are f32 in both dtypes, their bf16 inputs exact in the reference and their
//! products exact in f32: 1e-4 for both (f32 sums of at most 4096 terms, ~1e-6 expected). A bf16
//! GELU epilogue cuBLASLt refuses fails the test (the trainer would fall back to its unfused
//! path, losing the speed); so does a refused bias-gradient epilogue at the GPT-2-like shapes;
//! an f32 one, or one at the odd shapes, is printed as `UNSUPPORTED` and skipped.
//!
//! `wide_tuning_keeps_the_gelu_epilogue_exact` checks the algorithm chosen by timing among the
//! configurations beyond the heuristic's list (`Gemm::set_wide_tuning`) the same way.
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.

mod common;

use common::gpu::{
    Mat, Rng, check, check_err, device, device_and_kernels, f32buf, gelu, gelu_grad, getf, rel_err,
};
use modelspec_runtime::cuda::{
    BiasGradPath, BiasGradPolicy, CudaError, Dtype, DtypeExt, Epilogue, Gpu, GpuBuf, ReduceScratch,
    RowMajorGemm,
};

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

/// `Gemm::set_wide_tuning`: a GELU_AUX_BIAS GEMM large enough to be timed (gpt2's MLP input
/// projection on 2048 rows, 9.7 GFLOP), planned inside `with_tuning(true)` with the
/// configurations beyond the heuristic's list, runs the algorithm it chose and computes the
/// epilogue as the f64 reference does (bf16 bound, on 48 sampled rows). Where the kernel cache
/// cannot be written nothing is timed, and the first pick is checked instead.
#[test]
#[ignore = "needs a CUDA GPU"]
fn wide_tuning_keeps_the_gelu_epilogue_exact() {
    let Some(gpu) = device() else { return };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut rng = Rng::fresh("wide_tuning");
    let dt = Dtype::Bf16;
    let (m, n, k) = (2048, 3072, 768);
    let x = Mat::new(&gpu, dt, &rng.uniform_vec(m * k, 0.0, 1.0));
    let w = Mat::new(&gpu, dt, &rng.uniform_vec(n * k, 0.0, 0.1));
    let b = Mat::new(&gpu, dt, &rng.uniform_vec(n, 0.0, 0.5));
    let act = Mat::new(&gpu, dt, &vec![f64::NAN; m * n]);
    let pre = Mat::new(&gpu, dt, &vec![7.0; m * n]);
    let epi = Epilogue::GeluAux {
        pre: pre.ptr(),
        ld: n,
        bias: b.ptr(),
    };
    let g = RowMajorGemm::linear(m, n, k);
    gemm.set_wide_tuning(true);
    // SAFETY: x [m, k], w [n, k], act and pre [m, n], bias [n], all bf16.
    let ran = gemm.with_tuning(true, || unsafe {
        gemm.run_epilogue(dt, &g, x.ptr(), w.ptr(), act.ptr(), &epi)
    });
    gemm.set_wide_tuning(false);
    assert!(
        ran.expect("no error"),
        "cuBLASLt refused the bf16 GELU epilogue"
    );
    for t in gemm.tuned() {
        println!(
            "wide tuning: {} -> candidate {} of {}: {:.4} ms (first pick {:.4} ms)",
            t.key, t.chosen, t.candidates, t.best_ms, t.first_ms
        );
        assert!(t.chosen < t.candidates && t.best_ms <= t.first_ms, "{t:?}");
    }
    let (got_pre, got_act) = (pre.get(&gpu), act.get(&gpu));
    let rows: Vec<usize> = (0..48).map(|i| (i * 977 + 13) % m).collect();
    let (mut want_pre, mut want_act, mut have_pre, mut have_act) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &r in &rows {
        for j in 0..n {
            let mut s = b.host[j];
            for q in 0..k {
                s += x.host[r * k + q] * w.host[j * k + q];
            }
            want_pre.push(s);
            want_act.push(gelu(s));
            have_pre.push(got_pre[r * n + j]);
            have_act.push(got_act[r * n + j]);
        }
    }
    check("wide-tuned gelu_aux pre", dt, &have_pre, &want_pre);
    check("wide-tuned gelu_aux act", dt, &have_act, &want_act);
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

/// A weight gradient's operands: dy stored `[k, lda]` (its first m columns read) and x `[k, n]`.
struct WeightGrad {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    dy: Mat,
    x: Mat,
}

impl WeightGrad {
    fn new(
        gpu: &Gpu,
        dt: Dtype,
        rng: &mut Rng,
        (m, n, k, lda): (usize, usize, usize, usize),
    ) -> Self {
        // dy with a mean: bias sums grow with the rows, so a missed row or tile shows.
        let dy = Mat::new(gpu, dt, &rng.uniform_vec(k * lda, 0.25, 1.0));
        let x = Mat::new(gpu, dt, &rng.uniform_vec(k * n, 0.0, 1.0));
        WeightGrad {
            m,
            n,
            k,
            lda,
            dy,
            x,
        }
    }

    /// `dW = dy^T x` as the trainer's `mm_grad` runs it: A = dy `[k, m]` transposed.
    fn gemm(&self) -> RowMajorGemm {
        RowMajorGemm::weight_grad(self.m, self.n, self.k, self.lda, self.n)
    }

    /// (dW `[m, n]`, db `[m]`) in f64.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let (m, n) = (self.m, self.n);
        let (mut dw, mut db) = (vec![0.0; m * n], vec![0.0; m]);
        for q in 0..self.k {
            let xr = &self.x.host[q * n..(q + 1) * n];
            for i in 0..m {
                let a = self.dy.host[q * self.lda + i];
                db[i] += a;
                for (w, &xv) in dw[i * n..(i + 1) * n].iter_mut().zip(xr) {
                    *w += a * xv;
                }
            }
        }
        (dw, db)
    }

    /// Checks the GPU's `dw` and `db` against [`WeightGrad::reference`]'s (relative error 1e-4:
    /// f32 outputs).
    fn check(
        gpu: &Gpu,
        tag: &str,
        dw: &GpuBuf<f32>,
        db: &GpuBuf<f32>,
        want: &(Vec<f64>, Vec<f64>),
    ) {
        check_err(&format!("{tag} dW"), 1e-4, rel_err(&getf(gpu, dw), &want.0));
        check_err(&format!("{tag} db"), 1e-4, rel_err(&getf(gpu, db), &want.1));
    }

    fn tag(&self, dt: Dtype) -> String {
        let (m, n, k, lda) = (self.m, self.n, self.k, self.lda);
        format!("bgrad {m}x{n} k {k} lda {lda} {}", dt.suffix())
    }
}

/// (out, in, tokens, dy row stride) of the bias-gradient tests, and whether cuBLASLt must take
/// the epilogue there in bf16: GPT-2-like widths (qkv, the MLP's down projection) at fewer
/// tokens, a long reduction (GPT-2's is 16384 tokens), an odd shape, and dy a view with a row
/// stride above its width (the latent attention's down projections read such views).
const BGRAD_SHAPES: [((usize, usize, usize, usize), bool); 5] = [
    ((2304, 768, 64, 2304), true),
    ((768, 3072, 64, 768), true),
    ((64, 96, 4096, 64), true),
    ((100, 72, 257, 100), false),
    ((96, 64, 200, 104), false),
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn bias_grad_epilogue_matches_f64() {
    let Some(gpu) = device() else { return };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut rng = Rng::fresh("bgrad");
    for dt in [Dtype::F32, Dtype::Bf16] {
        for (shape, required) in BGRAD_SHAPES {
            let w = WeightGrad::new(&gpu, dt, &mut rng, shape);
            let dw = f32buf(&gpu, &vec![f64::NAN; w.m * w.n]);
            let db = f32buf(&gpu, &vec![f64::NAN; w.m]);
            let epi = Epilogue::BiasGrad { bias: db.ptr() };
            let tag = w.tag(dt);
            // SAFETY: dy [k, lda], x [k, n] of dt; dw [m, n] and db [m] f32.
            let ran = unsafe {
                gemm.run_f32_out_epilogue(dt, &w.gemm(), w.dy.ptr(), w.x.ptr(), dw.ptr(), &epi)
            }
            .expect("no error");
            if !ran {
                println!("UNSUPPORTED {tag}: cuBLASLt has no algorithm");
                assert!(
                    dt == Dtype::F32 || !required,
                    "{tag}: cuBLASLt refused the bf16 bias-gradient epilogue"
                );
                continue;
            }
            WeightGrad::check(&gpu, &tag, &dw, &db, &w.reference());
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn weight_grad_matches_f64_under_every_policy() {
    let Some((gpu, kernels)) = device_and_kernels("bgrad_policy", &[64]) else {
        return;
    };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut rng = Rng::fresh("bgrad_policy");
    let bytes = ReduceScratch::bytes_for(4096);
    let scratch = gpu.zeros::<u8>(bytes).unwrap();
    let sc = ReduceScratch::new(scratch.ptr(), bytes);
    let policies = [BiasGradPolicy::Apart, BiasGradPolicy::Epilogue];
    for dt in [Dtype::F32, Dtype::Bf16] {
        for shape in [
            (768, 192, 512, 768),
            (100, 72, 257, 100),
            (96, 64, 200, 104),
        ] {
            let w = WeightGrad::new(&gpu, dt, &mut rng, shape);
            let want = w.reference();
            // Whether cuBLASLt has the epilogue here (nothing is written when it has not).
            let probe = gpu.zeros::<f32>(w.m * w.n + w.m).unwrap();
            let epi = Epilogue::BiasGrad {
                bias: probe.at(w.m * w.n),
            };
            // SAFETY: as below, into the probe buffer.
            let has_epilogue = unsafe {
                gemm.run_f32_out_epilogue(dt, &w.gemm(), w.dy.ptr(), w.x.ptr(), probe.ptr(), &epi)
            }
            .expect("no error");
            for policy in policies {
                gemm.set_bias_grad_policy(policy);
                assert_eq!(gemm.bias_grad_policy(), policy);
                // Twice: the same policy takes the same way every call.
                for call in 0..2 {
                    let dw = f32buf(&gpu, &vec![f64::NAN; w.m * w.n]);
                    let db = gpu.zeros::<f32>(w.m).unwrap();
                    let apart = || kernels.colsum(dt, db.ptr(), w.dy.ptr(), w.k, w.m, w.lda, sc);
                    // SAFETY: dy [k, lda], x [k, n] of dt; dw [m, n] and db [m] (zeros) f32.
                    let way = unsafe {
                        gemm.run_weight_grad(
                            dt,
                            &w.gemm(),
                            w.dy.ptr(),
                            w.x.ptr(),
                            dw.ptr(),
                            db.ptr(),
                            &apart,
                        )
                    }
                    .expect("no error");
                    let tag = format!("{} {policy:?} call {call} ({way:?})", w.tag(dt));
                    match policy {
                        BiasGradPolicy::Apart => assert_eq!(way, BiasGradPath::Apart, "{tag}"),
                        BiasGradPolicy::Epilogue => {
                            let want = if has_epilogue {
                                BiasGradPath::Epilogue
                            } else {
                                BiasGradPath::Apart
                            };
                            assert_eq!(way, want, "{tag}");
                        }
                    }
                    WeightGrad::check(&gpu, &tag, &dw, &db, &want);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_bias_grad_epilogue_needs_f32_output_and_an_aligned_vector() {
    let Some(gpu) = device() else { return };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut g = RowMajorGemm::linear(8, 16, 8);
    g.trans_a = true;
    let refuse = |r: Result<bool, CudaError>, why: &str| {
        let err = r.expect_err("refused");
        assert!(err.to_string().contains(why), "{err}");
    };
    // SAFETY (all): refused before any launch.
    unsafe {
        let bgrad = Epilogue::BiasGrad { bias: 256 };
        refuse(
            gemm.run_epilogue(Dtype::Bf16, &g, 256, 256, 256, &bgrad),
            "run_f32_out_epilogue",
        );
        refuse(
            gemm.run_f32_out_epilogue(
                Dtype::Bf16,
                &g,
                256,
                256,
                256,
                &Epilogue::BiasGrad { bias: 0 },
            ),
            "bias-gradient vector",
        );
        let mut batched = g;
        batched.batch = Some((2, 64, 128, 128));
        refuse(
            gemm.run_f32_out_epilogue(Dtype::Bf16, &batched, 256, 256, 256, &bgrad),
            "no batch",
        );
        // A vector less aligned than cuBLASLt's epilogues want: declined, nothing launched.
        let unaligned = Epilogue::BiasGrad { bias: 260 };
        let ran = gemm.run_f32_out_epilogue(Dtype::Bf16, &g, 256, 256, 256, &unaligned);
        assert!(!ran.expect("declined, not refused"));
        let gelu = Epilogue::DGelu { pre: 256, ld: 16 };
        refuse(
            gemm.run_f32_out_epilogue(Dtype::Bf16, &g, 256, 256, 256, &gelu),
            "run_epilogue",
        );
    }
}
