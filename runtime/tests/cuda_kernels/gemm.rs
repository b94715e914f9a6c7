//! The row-major GEMM (every transpose) and its bias epilogue and f32 output against f64
//! references.

use super::{DTYPES, Rng, T, check, getf, setup};
use modelspec_runtime::cuda::{Dtype, RowMajorGemm};

// ---------- GEMM ----------

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_row_major_all_transposes_match_f64() {
    let Some((gpu, _k)) = setup() else { return };
    let gemm = gpu.gemm().unwrap();
    let mut rng = Rng::fresh("gemm");
    for dt in DTYPES {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (m, n, kk) = (67, 45, 129);
            let a = T::new(&gpu, dt, &rng.normal_vec(m * kk, 1.0));
            let b = T::new(&gpu, dt, &rng.normal_vec(kk * n, 1.0));
            let c0 = rng.normal_vec(m * n, 1.0);
            let c = T::new(&gpu, dt, &c0);
            let g = RowMajorGemm {
                m,
                n,
                k: kk,
                trans_a: ta,
                trans_b: tb,
                lda: if ta { m } else { kk },
                ldb: if tb { kk } else { n },
                ldc: n,
                batch: None,
            };
            let (alpha, beta) = (0.75f32, 0.5f32);
            // SAFETY: buffers sized as g describes.
            unsafe { gemm.run(dt, &g, a.ptr(), b.ptr(), c.ptr(), alpha, beta) }.unwrap();
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for p in 0..kk {
                        let av = if ta {
                            a.host[p * m + i]
                        } else {
                            a.host[i * kk + p]
                        };
                        let bv = if tb {
                            b.host[j * kk + p]
                        } else {
                            b.host[p * n + j]
                        };
                        s += av * bv;
                    }
                    want[i * n + j] = alpha as f64 * s + beta as f64 * c.host[i * n + j];
                }
            }
            check(&format!("gemm ta={ta} tb={tb}"), dt, &c.get(&gpu), &want);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_bias_epilogue_and_f32_output_match_f64() {
    let Some((gpu, _k)) = setup() else { return };
    let gemm = gpu.gemm().unwrap();
    let mut rng = Rng::fresh("gemm_bias");
    for dt in DTYPES {
        // y[N, out] = x[N, in] W[out, in]^T + b
        let (m, n, kk) = (70, 96, 136);
        let x = T::new(&gpu, dt, &rng.normal_vec(m * kk, 1.0));
        let w = T::new(&gpu, dt, &rng.normal_vec(n * kk, 1.0));
        let b = T::new(&gpu, dt, &rng.normal_vec(n, 1.0));
        let y = T::poison(&gpu, dt, m * n);
        let g = RowMajorGemm {
            m,
            n,
            k: kk,
            trans_a: false,
            trans_b: true,
            lda: kk,
            ldb: kk,
            ldc: n,
            batch: None,
        };
        // SAFETY: buffers sized as g describes.
        unsafe { gemm.run_bias(dt, &g, x.ptr(), w.ptr(), y.ptr(), b.ptr()) }.unwrap();
        // dW (f32) = dy^T x: [n, kk] from dy [m, n] and x [m, kk]
        let dw = gpu.zeros::<f32>(n * kk).unwrap();
        let gw = RowMajorGemm {
            m: n,
            n: kk,
            k: m,
            trans_a: true,
            trans_b: false,
            lda: n,
            ldb: kk,
            ldc: kk,
            batch: None,
        };
        // SAFETY: as above (y reused as dy).
        unsafe { gemm.run_f32_out(dt, &gw, y.ptr(), x.ptr(), dw.ptr(), 1.0, 0.0) }.unwrap();
        let yd = y.get(&gpu);
        let mut want = vec![0.0; m * n];
        let mut wdw = vec![0.0; n * kk];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..kk)
                    .map(|p| x.host[i * kk + p] * w.host[j * kk + p])
                    .sum::<f64>()
                    + b.host[j];
            }
        }
        for j in 0..n {
            for p in 0..kk {
                wdw[j * kk + p] = (0..m).map(|i| yd[i * n + j] * x.host[i * kk + p]).sum();
            }
        }
        check("gemm bias epilogue", dt, &yd, &want);
        check(
            "gemm f32-out weight grad",
            if dt == Dtype::Bf16 {
                Dtype::Bf16
            } else {
                Dtype::F32
            },
            &getf(&gpu, &dw),
            &wdw,
        );
    }
}
