//! The own Hopper GEMM (`gemm::hopper`, docs/hopper_gemm.md steps 1 and 2) against an f64
//! reference and against cuBLASLt, on fresh random inputs each run (the seed is printed): whole
//! tiles, edge tiles in both M and N, a K that is not a multiple of the 64-wide K step (the
//! tensor maps read zeros past the end), row strides wider than the rows, and gpt2's MLP input
//! projection; each plain, with a bias, with the GELU epilogue (the activation and the kept
//! pre-activation, against cuBLASLt's GELU_AUX_BIAS) and with DGELU (times the GELU's derivative
//! at a kept pre-activation, against cuBLASLt's DGELU on the same operands), in tiles 128 and
//! 256 columns wide and persistent ping-pong ([`Tile`]); and DGELU with B given `[k, n]`
//! (`try_run_kn`: transposed into a scratch buffer first, as the trainer's backward runs it).
//!
//! Tolerance, ||gpu - ref|| / ||ref||: 1e-2 (the output is rounded to bf16, ~2e-3; the inputs are
//! exact in bf16 and the products exact in f32). Against cuBLASLt, which rounds the same f32 sums
//! to bf16 in another order: 1e-2 as well. Rows are sampled at the largest shape.
//!
//! Without a CUDA device every test prints "skipping: no CUDA device" and passes; on a GPU that
//! is not a Hopper one it prints why and passes.

mod common;

use common::gpu::{Mat, Rng, check, device, gelu, gelu_grad, rel_err};
use modelspec_runtime::cuda::gemm::hopper::{HopperGemm, Tile};
use modelspec_runtime::cuda::{Dtype, Epilogue, RowMajorGemm};

/// Before a parity failure: where the first wrong outputs' values sit in the reference (a
/// fragment or swizzle mapping error shows as a consistent offset), NaNs (never written), and
/// how many are wrong, so that one failed GPU call says what to fix.
fn diagnose(tag: &str, rows: &[usize], n: usize, have: &[f64], want: &[f64]) {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-2 * y.abs().max(1e-2);
    let wrong: Vec<usize> = (0..have.len())
        .filter(|&i| !close(have[i], want[i]))
        .collect();
    let nan = have.iter().filter(|x| x.is_nan()).count();
    println!(
        "DIAG {tag}: {} of {} wrong, {nan} NaN (unwritten)",
        wrong.len(),
        have.len()
    );
    for &i in wrong.iter().take(6) {
        let (r, c) = (rows[i / n], i % n);
        let found: Vec<(usize, usize)> = (0..want.len())
            .filter(|&j| close(have[i], want[j]))
            .take(3)
            .map(|j| (rows[j / n], j % n))
            .collect();
        println!(
            "DIAG   ({r}, {c}): got {:.4} want {:.4}; the got value sits at {found:?}",
            have[i], want[i]
        );
    }
}

/// [`check`] against the f64 reference, with [`diagnose`]'s printout first when it is off.
fn check_f64(tag: &str, dt: Dtype, rows: &[usize], n: usize, have: &[f64], want: &[f64]) {
    let e = rel_err(have, want);
    if e.is_nan() || e > 1e-2 {
        diagnose(tag, rows, n, have, want);
    }
    check(&format!("{tag} vs f64"), dt, have, want);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_gemm_matches_f64_and_cublaslt() {
    let Some(gpu) = device() else { return };
    let hg = match HopperGemm::new(&gpu) {
        Ok(h) => h,
        Err(e) => {
            println!("skipping: {e}");
            return;
        }
    };
    let gemm = gpu.gemm().expect("cuBLASLt");
    let mut rng = Rng::fresh("hopper_gemm");
    let dt = Dtype::Bf16;
    // (m, n, k, lda = ldb, ldc)
    for (m, n, k, ld, ldc) in [
        (128, 128, 64, 64, 128),
        (256, 384, 256, 256, 384),
        (300, 200, 136, 136, 200),
        (77, 130, 520, 528, 136),
        (2048, 3072, 768, 768, 3072),
    ] {
        let a = Mat::new(&gpu, dt, &rng.uniform_vec(m * ld, 0.0, 1.0));
        let b = Mat::new(&gpu, dt, &rng.uniform_vec(n * ld, 0.0, 0.25));
        let bias = Mat::new(&gpu, dt, &rng.uniform_vec(n, 0.0, 0.5));
        let g = RowMajorGemm {
            lda: ld,
            ldb: ld,
            ldc,
            ..RowMajorGemm::linear(m, n, k)
        };
        let rows: Vec<usize> = if m <= 512 {
            (0..m).collect()
        } else {
            (0..64).map(|i| (i * 977 + 5) % m).collect()
        };
        // The f64 product on the sampled rows, before any epilogue.
        let mut prod = Vec::new();
        for &r in &rows {
            for j in 0..n {
                let mut s = 0.0;
                for q in 0..k {
                    s += a.host[r * ld + q] * b.host[j * ld + q];
                }
                prod.push(s);
            }
        }
        // The forward's pre-activation a DGELU reads, [m, ldc].
        let kept = Mat::new(&gpu, dt, &rng.uniform_vec(m * ldc, 0.0, 3.0));
        for (epi, tile) in ["plain", "bias", "gelu", "dgelu"]
            .into_iter()
            .flat_map(|e| Tile::ALL.map(|t| (e, t)))
        {
            let c = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
            let c_lt = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
            let pre = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
            let pre_lt = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
            let gelu_of = |pre: &Mat| Epilogue::GeluAux {
                pre: pre.ptr(),
                ld: ldc,
                bias: bias.ptr(),
            };
            // SAFETY: a [m, ld], b [n, ld], c, c_lt, pre and pre_lt [m, ldc], bias [n], all bf16,
            // k <= ld, n <= ldc.
            unsafe {
                match epi {
                    "plain" => {
                        hg.run(Some(tile), &g, a.ptr(), b.ptr(), c.ptr(), 0, None)
                            .expect("hopper gemm runs");
                        gemm.run(dt, &g, a.ptr(), b.ptr(), c_lt.ptr(), 1.0, 0.0)
                            .expect("cuBLASLt runs");
                    }
                    "bias" => {
                        hg.run(Some(tile), &g, a.ptr(), b.ptr(), c.ptr(), bias.ptr(), None)
                            .expect("hopper gemm runs");
                        gemm.run_bias(dt, &g, a.ptr(), b.ptr(), c_lt.ptr(), bias.ptr())
                            .expect("cuBLASLt runs");
                    }
                    "dgelu" => {
                        let dgelu = Epilogue::DGelu {
                            pre: kept.ptr(),
                            ld: ldc,
                        };
                        hg.run(Some(tile), &g, a.ptr(), b.ptr(), c.ptr(), 0, Some(&dgelu))
                            .expect("hopper gemm runs");
                        let ran = gemm
                            .run_epilogue(dt, &g, a.ptr(), b.ptr(), c_lt.ptr(), &dgelu)
                            .expect("cuBLASLt runs");
                        assert!(ran, "cuBLASLt refused DGELU");
                    }
                    _ => {
                        hg.run(
                            Some(tile),
                            &g,
                            a.ptr(),
                            b.ptr(),
                            c.ptr(),
                            0,
                            Some(&gelu_of(&pre)),
                        )
                        .expect("hopper gemm runs");
                        let ran = gemm
                            .run_epilogue(dt, &g, a.ptr(), b.ptr(), c_lt.ptr(), &gelu_of(&pre_lt))
                            .expect("cuBLASLt runs");
                        assert!(ran, "cuBLASLt refused GELU_AUX_BIAS");
                    }
                }
            }
            let (got, lt) = (c.get(&gpu), c_lt.get(&gpu));
            let (got_pre, lt_pre) = (pre.get(&gpu), pre_lt.get(&gpu));
            let (mut want, mut have, mut have_lt) = (Vec::new(), Vec::new(), Vec::new());
            let (mut want_pre, mut have_pre, mut have_pre_lt) =
                (Vec::new(), Vec::new(), Vec::new());
            let mut i = 0;
            for &r in &rows {
                for j in 0..n {
                    let x = prod[i]
                        + if matches!(epi, "bias" | "gelu") {
                            bias.host[j]
                        } else {
                            0.0
                        };
                    i += 1;
                    want.push(match epi {
                        "gelu" => gelu(x),
                        "dgelu" => x * gelu_grad(kept.host[r * ldc + j]),
                        _ => x,
                    });
                    have.push(got[r * ldc + j]);
                    have_lt.push(lt[r * ldc + j]);
                    want_pre.push(x);
                    have_pre.push(got_pre[r * ldc + j]);
                    have_pre_lt.push(lt_pre[r * ldc + j]);
                }
            }
            let tag = format!("hopper gemm {epi} tile {tile:?} {m}x{n}x{k} ld {ld} ldc {ldc}");
            check_f64(&tag, dt, &rows, n, &have, &want);
            check(&format!("{tag} vs cuBLASLt"), dt, &have, &have_lt);
            if epi == "gelu" {
                check(&format!("{tag} pre vs f64"), dt, &have_pre, &want_pre);
                check(
                    &format!("{tag} pre vs cuBLASLt"),
                    dt,
                    &have_pre,
                    &have_pre_lt,
                );
            }
            // Columns past n in the wider rows are never written.
            if ldc > n {
                assert!(got[ldc - 1].is_nan(), "{tag}: wrote past column n");
            }
        }
        // DGELU with B given [k, n] (the trainer's backward through the down projection's
        // weight): `try_run_kn` transposes it into a scratch buffer first.
        let b_kn: Vec<f64> = (0..k * n).map(|i| b.host[(i % n) * ld + i / n]).collect();
        let b_kn = Mat::new(&gpu, dt, &b_kn);
        let g_kn = RowMajorGemm::plain(m, n, k, ld, n, ldc);
        let scratch = Mat::new(&gpu, dt, &vec![f64::NAN; n * k]);
        let c = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
        let c_lt = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
        let dgelu = Epilogue::DGelu {
            pre: kept.ptr(),
            ld: ldc,
        };
        // SAFETY: a [m, ld], b_kn [k, n], scratch [n, k], c and c_lt [m, ldc], kept [m, ldc].
        let (ran, ran_lt) = unsafe {
            let small = hg.try_run_kn(
                None,
                &g_kn,
                a.ptr(),
                b_kn.ptr(),
                c.ptr(),
                Some(&dgelu),
                scratch.ptr(),
                n * k * 2 - 2,
            );
            assert!(
                !small.expect("a refusal is not an error"),
                "ran with a scratch too small"
            );
            (
                hg.try_run_kn(
                    None,
                    &g_kn,
                    a.ptr(),
                    b_kn.ptr(),
                    c.ptr(),
                    Some(&dgelu),
                    scratch.ptr(),
                    n * k * 2,
                )
                .expect("hopper gemm runs"),
                gemm.run_epilogue(dt, &g_kn, a.ptr(), b_kn.ptr(), c_lt.ptr(), &dgelu)
                    .expect("cuBLASLt runs"),
            )
        };
        assert!(ran, "try_run_kn refused {m}x{n}x{k}");
        let (got, lt) = (c.get(&gpu), c_lt.get(&gpu));
        let (mut want, mut have, mut have_lt) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &r) in rows.iter().enumerate() {
            for j in 0..n {
                want.push(prod[i * n + j] * gelu_grad(kept.host[r * ldc + j]));
                have.push(got[r * ldc + j]);
                have_lt.push(lt[r * ldc + j]);
            }
        }
        let tag = format!("hopper gemm dgelu, B [k, n], {m}x{n}x{k} ld {ld} ldc {ldc}");
        check_f64(&tag, dt, &rows, n, &have, &want);
        if ran_lt {
            check(&format!("{tag} vs cuBLASLt"), dt, &have, &have_lt);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_gemm_refuses_what_it_cannot_run() {
    let Some(gpu) = device() else { return };
    let Ok(hg) = HopperGemm::new(&gpu) else {
        println!("skipping: not a Hopper GPU");
        return;
    };
    let g = RowMajorGemm::linear(64, 64, 64);
    let transposed = RowMajorGemm {
        trans_b: false,
        ..g
    };
    let odd = RowMajorGemm {
        lda: 63,
        k: 60,
        ..g
    };
    for (bad, a) in [(transposed, 0x1000u64), (odd, 0x1000), (g, 0x1008)] {
        // SAFETY: refused before any pointer is used.
        let e = unsafe { hg.run(None, &bad, a, 0x2000, 0x3000, 0, None) }.unwrap_err();
        println!("refused: {e}");
        assert!(e.to_string().contains("hopper_gemm_bf16"), "{e}");
    }
    // An epilogue it does not have, and DGELU with a misaligned pre-activation.
    let bgrad = Epilogue::BiasGrad { bias: 0x4000 };
    // SAFETY: refused before any pointer is used.
    let e = unsafe { hg.run(None, &g, 0x1000, 0x2000, 0x3000, 0, Some(&bgrad)) }.unwrap_err();
    println!("refused: {e}");
    assert!(e.to_string().contains("no epilogue"), "{e}");
    let dgelu = Epilogue::DGelu {
        pre: 0x4002,
        ld: 64,
    };
    // SAFETY: refused before any pointer is used.
    let e = unsafe { hg.run(None, &g, 0x1000, 0x2000, 0x3000, 0, Some(&dgelu)) }.unwrap_err();
    println!("refused: {e}");
    assert!(e.to_string().contains("pre-activation"), "{e}");
}
