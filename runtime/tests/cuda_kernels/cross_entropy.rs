//! The cross-entropy kernels at the classifier's stride: libraries instantiated for a padded
//! vocabulary (`MS_LOGITS_LD`) run the row-resident kernel for rows of exactly that stride
//! (gpt2's 50304, llama's 128256, and a row small enough for registers alone), the generic one
//! for any other stride; both against an f64 reference, in f32 and bf16, with and without the
//! softcap, padded columns, ignored targets, and the forward-only mode (no gradient written).

use super::{DTYPES, Rng, T, check, getf};
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, Kernels};
use std::sync::Arc;

/// The f64 loss of each row and d(dscale * loss)/d(logits) (`[n, ld]`, 0 past column `v` and on
/// ignored rows) of `logits` (`[n, ld]`).
fn reference(
    logits: &[f64],
    tgt: &[i32],
    v: usize,
    ld: usize,
    softcap: f64,
    dscale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n = tgt.len();
    let (mut loss, mut grad) = (vec![0.0; n], vec![0.0; n * ld]);
    for i in 0..n {
        if tgt[i] < 0 {
            continue;
        }
        let t = tgt[i] as usize;
        let row = &logits[i * ld..i * ld + v];
        let cap = |l: f64| {
            if softcap > 0.0 {
                softcap * (l / softcap).tanh()
            } else {
                l
            }
        };
        let z: Vec<f64> = row.iter().map(|&l| cap(l)).collect();
        let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        loss[i] = lse - z[t];
        for j in 0..v {
            let dz = if softcap > 0.0 {
                1.0 - (row[j] / softcap).tanh().powi(2)
            } else {
                1.0
            };
            let onehot = if j == t { 1.0 } else { 0.0 };
            grad[i * ld + j] = ((z[j] - lse).exp() - onehot) * dscale * dz;
        }
    }
    (loss, grad)
}

/// Runs `xent` on fresh logits `[n, ld]` (v valid columns) `offset` elements into their buffer
/// (1: rows not 16-byte aligned, so the generic kernel's element-wise path) and checks loss and
/// gradient (or, with `write_grad` off, that the logits are untouched). Rows 1 and n - 2 are
/// ignored. Columns past `v` hold NaN, as the trainer's never-written pad columns may: the kernels
/// must select them away, not multiply them by 0.
#[allow(clippy::too_many_arguments)]
fn run_case(
    gpu: &Arc<Gpu>,
    k: &Kernels,
    rng: &mut Rng,
    dt: Dtype,
    n: usize,
    v: usize,
    ld: usize,
    softcap: f32,
    write_grad: bool,
    offset: usize,
) {
    let what = format!("xent ld {ld} v {v} softcap {softcap} grad {write_grad} offset {offset}");
    let mut vals = rng.normal_vec(n * ld, 4.0);
    for (e, x) in vals.iter_mut().enumerate() {
        if e % ld >= v {
            *x = f64::NAN;
        }
    }
    let logits = T::new_at(gpu, dt, &vals, offset);
    let tgt: Vec<i32> = (0..n)
        .map(|i| {
            if i == 1 || i == n - 2 {
                -1
            } else if i == 2 {
                // The last valid column: the end of the row's last (partly padded) vector.
                v as i32 - 1
            } else {
                (rng.next() % v as u64) as i32
            }
        })
        .collect();
    let tb = gpu.upload(&tgt).unwrap();
    let loss = gpu.upload(&vec![f32::NAN; n]).unwrap();
    let dscale = 1.0 / (n - 2) as f32;
    k.xent(
        dt,
        logits.ptr(),
        loss.ptr(),
        tb.ptr(),
        n,
        v,
        ld,
        softcap,
        write_grad.then_some(dscale),
    )
    .unwrap();
    let (rl, rg) = reference(&logits.host, &tgt, v, ld, softcap as f64, dscale as f64);
    check(&format!("{what} loss"), Dtype::F32, &getf(gpu, &loss), &rl);
    let got = logits.get(gpu);
    if !write_grad {
        let same = |a: &f64, b: &f64| a == b || (a.is_nan() && b.is_nan());
        assert!(
            got.iter().zip(&logits.host).all(|(a, b)| same(a, b)),
            "{what} ({}): forward-only mode changed the logits",
            dt.suffix()
        );
        return;
    }
    check(&format!("{what} grad"), dt, &got, &rg);
    // The softmax part alone (the target's -1 dominates the norm above).
    let off_target = |g: &[f64]| -> Vec<f64> {
        g.iter()
            .enumerate()
            .filter(|(e, _)| tgt[e / ld] < 0 || e % ld != tgt[e / ld] as usize)
            .map(|(_, &x)| x)
            .collect()
    };
    check(
        &format!("{what} grad off target"),
        dt,
        &off_target(&got),
        &off_target(&rg),
    );
    // Padded columns and ignored rows are exactly 0.
    for (e, &g) in got.iter().enumerate() {
        let (i, j) = (e / ld, e % ld);
        if j >= v || tgt[i] < 0 {
            assert!(
                g == 0.0,
                "{what} ({}): gradient {g} at row {i} column {j} (must be 0)",
                dt.suffix()
            );
        }
    }
}

/// One library instantiated for the padded vocabulary `vp`; every case at stride `vp` and, as
/// the generic kernel's check in the same library, at a smaller stride.
fn vocab_case(vp: usize, rows: usize) {
    let defines = [("MS_LOGITS_LD".to_string(), vp.to_string())]
        .into_iter()
        .collect();
    let Some(gpu) = super::common::gpu::device() else {
        return;
    };
    let k = Kernels::load(&gpu, &format!("xent_test_{vp}"), &[], defines)
        .expect("kernel library compiles");
    let mut rng = Rng::fresh(&format!("xent row {vp}"));
    for dt in DTYPES {
        let info = k.xent_row_info(dt, vp);
        println!("xent_row {} ld {vp}: {info:?}", dt.suffix());
        // The resident path must be there where its plan fits sm_90's shared memory (f32 rows
        // of llama's vocabulary, 501 KB, do not fit: the generic kernel runs them).
        let fits = vp * dt.bytes() <= 256 * 1024;
        if gpu.arch() == "compute_90" {
            assert_eq!(info.is_some(), fits, "{} ld {vp}", dt.suffix());
        }
        assert!(k.xent_row_info(dt, vp - 8).is_none());
        for softcap in [0.0f32, 30.0] {
            for write_grad in [true, false] {
                // The trainer's case (softmax over the padded vocabulary), then padded columns
                // (37: a partly and a wholly padded vector).
                for v in [vp, vp - 37] {
                    run_case(&gpu, &k, &mut rng, dt, rows, v, vp, softcap, write_grad, 0);
                }
            }
            // The generic kernel: another stride in the same library.
            run_case(
                &gpu,
                &k,
                &mut rng,
                dt,
                rows,
                vp - 45,
                vp - 8,
                softcap,
                true,
                0,
            );
            // Unaligned rows at the classifier's stride: the launcher must not take the
            // resident kernel (its 16-byte loads would fault), the generic one runs.
            run_case(&gpu, &k, &mut rng, dt, rows, vp - 37, vp, softcap, true, 1);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn xent_row_gpt2_vocab_matches_f64() {
    vocab_case(50304, 9);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn xent_row_llama_vocab_matches_f64() {
    vocab_case(128256, 6);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn xent_row_small_vocab_matches_f64() {
    // 4096 columns: one register slot a thread in bf16 (512 vectors, 512 threads), two in f32.
    vocab_case(4096, 13);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn xent_row_partial_register_slot_matches_f64() {
    // 4160 columns: the last slot is a register one that only some threads hold (bf16: 520
    // vectors over 512 threads, 2 slots; f32: 1040 vectors, 3 slots), which no case above has.
    vocab_case(4160, 7);
}
