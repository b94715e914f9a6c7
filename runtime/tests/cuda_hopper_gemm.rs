//! The own Hopper GEMM (`gemm::hopper`, docs/hopper_gemm.md step 1) against an f64 reference and
//! against cuBLASLt, on fresh random inputs each run (the seed is printed): whole tiles, edge
//! tiles in both M and N, a K that is not a multiple of the 64-wide K step (the tensor maps read
//! zeros past the end), row strides wider than the rows, and gpt2's MLP input projection.
//!
//! Tolerance, ||gpu - ref|| / ||ref||: 1e-2 (the output is rounded to bf16, ~2e-3; the inputs are
//! exact in bf16 and the products exact in f32). Against cuBLASLt, which rounds the same f32 sums
//! to bf16 in another order: 1e-2 as well. Rows are sampled at the largest shape.
//!
//! Without a CUDA device every test prints "skipping: no CUDA device" and passes; on a GPU that
//! is not a Hopper one it prints why and passes.

mod common;

use common::gpu::{Mat, Rng, check, device};
use modelspec_runtime::cuda::gemm::hopper::HopperGemm;
use modelspec_runtime::cuda::{Dtype, RowMajorGemm};

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
        let c = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
        let c_lt = Mat::new(&gpu, dt, &vec![f64::NAN; m * ldc]);
        let g = RowMajorGemm {
            lda: ld,
            ldb: ld,
            ldc,
            ..RowMajorGemm::linear(m, n, k)
        };
        // SAFETY: a [m, ld], b [n, ld], c and c_lt [m, ldc], all bf16, k <= ld, n <= ldc.
        unsafe {
            hg.run(&g, a.ptr(), b.ptr(), c.ptr())
                .expect("hopper gemm runs");
            gemm.run(dt, &g, a.ptr(), b.ptr(), c_lt.ptr(), 1.0, 0.0)
                .expect("cuBLASLt runs");
        }
        let (got, lt) = (c.get(&gpu), c_lt.get(&gpu));
        let rows: Vec<usize> = if m <= 512 {
            (0..m).collect()
        } else {
            (0..64).map(|i| (i * 977 + 5) % m).collect()
        };
        let (mut want, mut have, mut have_lt) = (Vec::new(), Vec::new(), Vec::new());
        for &r in &rows {
            for j in 0..n {
                let mut s = 0.0;
                for q in 0..k {
                    s += a.host[r * ld + q] * b.host[j * ld + q];
                }
                want.push(s);
                have.push(got[r * ldc + j]);
                have_lt.push(lt[r * ldc + j]);
            }
        }
        let tag = format!("hopper gemm {m}x{n}x{k} ld {ld} ldc {ldc}");
        check(&format!("{tag} vs f64"), dt, &have, &want);
        check(&format!("{tag} vs cuBLASLt"), dt, &have, &have_lt);
        // Columns past n in the wider rows are never written.
        if ldc > n {
            assert!(got[ldc - 1].is_nan(), "{tag}: wrote past column n");
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
        let e = unsafe { hg.run(&bad, a, 0x2000, 0x3000) }.unwrap_err();
        println!("refused: {e}");
        assert!(e.to_string().contains("hopper_gemm_bf16"), "{e}");
    }
}
