//! The GPU's column reductions (`cuda/kernels/reduce.cu` through [`Kernels::colsum`] and
//! [`Kernels::norm_dw`]) against f64 sums of the same inputs, on fresh random inputs each run
//! (the seed is printed): widths that are and are not multiples of 8, odd and large row counts,
//! row strides wider than the width, pointers that are not 16-byte aligned (the element path),
//! both dtypes; every result is also checked to be bit-identical when run again, and the
//! reductions add (+=) to what the output held. Column sums are also checked bit for bit against
//! a host replay of the kernel's f32 summation order (chunk partials, then the chunks in the
//! order of the former second stage), so the one-launch finish keeps those bits; and one zeroed
//! scratch serves consecutive reductions of different shapes (its arrival counters must come
//! back to zero after every launch).
//!
//! Tolerance: ||gpu - ref|| / ||ref|| <= 2e-5 in both dtypes: the inputs are exactly
//! representable in the dtype (the reference sees the rounded values), so only the kernels' f32
//! summation rounds (about sqrt(rows / chunks) x 6e-8 per chunk sum, far below the bound); a
//! missed row, column or chunk gives errors of order 1e-2 or more.
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.

mod common;

use common::gpu::{Mat, Rng, check_err, rel_err};
use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, Kernels, NormKind, ReduceScratch};
use std::sync::Arc;

fn setup() -> Option<(Arc<Gpu>, Kernels)> {
    common::gpu::device_and_kernels("test_reduce", &[64])
}

/// `n` values uniform in [-1, 1) plus `shift`.
fn shifted(rng: &mut Rng, n: usize, shift: f64) -> Vec<f64> {
    rng.uniform_vec(n, shift, 1.0)
}

fn check(what: &str, got: &[f32], want: &[f64]) {
    let got: Vec<f64> = got.iter().map(|&g| g as f64).collect();
    check_err(what, 2e-5, rel_err(&got, want));
}

/// The split of `rows` x `c` the launcher plans (`cuda/reduce.rs`'s `ColPlan`: 256-column
/// tiles, about 1024 blocks, at most 256 chunks of at least 32 rows): (chunks, rows per chunk).
fn split(rows: usize, c: usize) -> (usize, usize) {
    let tiles = c.div_ceil(256).max(1);
    let chunks = (1024 / tiles).clamp(1, 256).min(rows.div_ceil(32).max(1));
    let per = rows.div_ceil(chunks).max(1);
    (rows.div_ceil(per).max(1), per)
}

/// `start[j] + Σ_n x[n * ld + j]` in the kernel's f32 order: per chunk, 8 row lanes (rows
/// chunk_start + lane, + 8, ...) summed from 0 and then added in lane order; per column, chunk
/// groups g < 8 (chunks g, g + 8, ...) summed from 0 in chunk order, the 8 groups added in order
/// (an empty one as 0), and the total added to `start`.
fn colsum_replay(x: &[f64], rows: usize, c: usize, ld: usize, start: &[f64]) -> Vec<f32> {
    let (chunks, per) = split(rows, c);
    (0..c)
        .map(|j| {
            let part: Vec<f32> = (0..chunks)
                .map(|k| {
                    let (n0, n1) = (k * per, ((k + 1) * per).min(rows));
                    let mut s = 0f32;
                    for lane in 0..8 {
                        let mut a = 0f32;
                        for n in (n0 + lane..n1).step_by(8) {
                            a += x[n * ld + j] as f32;
                        }
                        s += a;
                    }
                    s
                })
                .collect();
            let mut total = 0f32;
            for g in 0..8 {
                let mut a = 0f32;
                for p in part.iter().skip(g).step_by(8) {
                    a += *p;
                }
                total = if g == 0 { a } else { total + a };
            }
            start[j] as f32 + total
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// (rows, width, row stride, element offset of the data): aligned vector paths, widths that are
/// not multiples of 8, strides wider than the width, unaligned starts, many and few rows, a
/// classifier-wide row.
const CASES: [(usize, usize, usize, usize); 10] = [
    (1, 1, 1, 0),
    (37, 7, 7, 1),
    (999, 13, 16, 0),
    (4097, 768, 768, 0),
    (4097, 768, 768, 3),
    (513, 1000, 1003, 0),
    (333, 2311, 2320, 0),
    (20000, 96, 96, 0),
    (2049, 3072, 3072, 0),
    (64, 50304, 50304, 0),
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn colsum_matches_f64_and_repeats_bit_for_bit() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("colsum");
    for dt in [Dtype::F32, Dtype::Bf16] {
        for (rows, c, ld, off) in CASES {
            // A mean of 0.5 per element: sums grow with the rows, as bias gradients do not, so
            // a missed row or chunk shows.
            let x = Mat::new_at(&gpu, dt, &shifted(&mut rng, rows * ld, 0.5), off);
            let start = shifted(&mut rng, c, 0.0);
            let bytes = ReduceScratch::bytes_for(c);
            let scratch = gpu.zeros::<u8>(bytes).unwrap();
            let sc = ReduceScratch::new(scratch.ptr(), bytes);
            let mut want = start.clone();
            for n in 0..rows {
                for (j, w) in want.iter_mut().enumerate() {
                    *w += x.host[n * ld + j];
                }
            }
            let mut runs: Vec<Vec<f32>> = Vec::new();
            for _ in 0..2 {
                let out = gpu
                    .upload(&start.iter().map(|&v| v as f32).collect::<Vec<_>>())
                    .unwrap();
                k.colsum(dt, out.ptr(), x.ptr(), rows, c, ld, sc).unwrap();
                runs.push(gpu.download(&out).unwrap());
            }
            let tag = format!("colsum {} {rows}x{c} ld {ld} offset {off}", dt.suffix());
            check(&tag, &runs[0], &want);
            assert!(
                bits(&runs[0]) == bits(&colsum_replay(&x.host, rows, c, ld, &start)),
                "{tag}: not the bits of the fixed summation order"
            );
            assert!(
                runs[0]
                    .iter()
                    .zip(&runs[1])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{tag}: two runs differ"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_dw_matches_f64_and_repeats_bit_for_bit() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("norm_dw");
    for dt in [Dtype::F32, Dtype::Bf16] {
        // norm_dw reads contiguous rows: the cases' widths, with the stride equal to the width.
        for (rows, c, _, off) in CASES {
            for kind in [NormKind::Rms, NormKind::Layer] {
                // Which gradients exist: weight and bias, weight only, bias only.
                for (with_w, with_b) in [(true, true), (true, false), (false, true)] {
                    let dy = Mat::new_at(&gpu, dt, &shifted(&mut rng, rows * c, 0.25), off);
                    let r = Mat::new_at(&gpu, dt, &shifted(&mut rng, rows * c, 0.1), off);
                    let rstd: Vec<f32> = shifted(&mut rng, rows, 2.0)
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    let mean: Vec<f32> = shifted(&mut rng, rows, 0.0)
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    let (rstd_d, mean_d) = (gpu.upload(&rstd).unwrap(), gpu.upload(&mean).unwrap());
                    let (w0, b0) = (shifted(&mut rng, c, 0.0), shifted(&mut rng, c, 0.0));
                    let (mut ww, mut wb) = (w0.clone(), b0.clone());
                    for n in 0..rows {
                        let mu = if kind == NormKind::Layer {
                            mean[n] as f64
                        } else {
                            0.0
                        };
                        for j in 0..c {
                            let g = dy.host[n * c + j];
                            ww[j] += g * ((r.host[n * c + j] - mu) * rstd[n] as f64);
                            wb[j] += g;
                        }
                    }
                    let bytes = ReduceScratch::bytes_for(c);
                    let scratch = gpu.zeros::<u8>(bytes).unwrap();
                    let sc = ReduceScratch::new(scratch.ptr(), bytes);
                    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
                    let mut runs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
                    for _ in 0..2 {
                        let dw = gpu.upload(&f32s(&w0)).unwrap();
                        let db = gpu.upload(&f32s(&b0)).unwrap();
                        k.norm_dw(
                            dt,
                            kind,
                            if with_w { dw.ptr() } else { 0 },
                            if with_b { db.ptr() } else { 0 },
                            dy.ptr(),
                            r.ptr(),
                            rstd_d.ptr(),
                            mean_d.ptr(),
                            rows,
                            c,
                            sc,
                        )
                        .unwrap();
                        runs.push((gpu.download(&dw).unwrap(), gpu.download(&db).unwrap()));
                    }
                    let tag = format!(
                        "norm_dw {} {kind:?} w {with_w} b {with_b} {rows}x{c} offset {off}",
                        dt.suffix()
                    );
                    check(
                        &format!("{tag} dw"),
                        &runs[0].0,
                        if with_w { &ww } else { &w0 },
                    );
                    check(
                        &format!("{tag} db"),
                        &runs[0].1,
                        if with_b { &wb } else { &b0 },
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&runs[0].0), bits(&runs[1].0), "{tag}: dw differs");
                    assert_eq!(bits(&runs[0].1), bits(&runs[1].1), "{tag}: db differs");
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn reductions_refuse_missing_or_short_scratch() {
    let Some((gpu, k)) = setup() else { return };
    let (rows, c) = (4096, 768);
    let x = Mat::new(&gpu, Dtype::Bf16, &vec![1.0; rows * c]);
    let out = gpu.zeros::<f32>(c).unwrap();
    let small = gpu.zeros::<u8>(1024).unwrap();
    for sc in [
        ReduceScratch::default(),
        ReduceScratch::new(small.ptr(), 1024),
    ] {
        let err = k
            .colsum(Dtype::Bf16, out.ptr(), x.ptr(), rows, c, c, sc)
            .expect_err("scratch too small");
        assert!(err.to_string().contains("reduction scratch"), "{err}");
    }
    // A stride below the width is refused by name, and no rows or no output launch nothing.
    let sc = ReduceScratch::new(small.ptr(), 1024);
    let err = k
        .colsum(Dtype::Bf16, out.ptr(), x.ptr(), rows, c, c - 1, sc)
        .expect_err("stride below width");
    assert!(err.to_string().contains("row stride"), "{err}");
    // Wider than the 2^20 columns the counters serve: refused by name.
    let wide = (1 << 20) + 1;
    let xw = gpu.zeros::<u16>(wide).unwrap();
    let ow = gpu.zeros::<f32>(wide).unwrap();
    let sw = gpu.zeros::<u8>(ReduceScratch::bytes_for(wide)).unwrap();
    let scw = ReduceScratch::new(sw.ptr(), ReduceScratch::bytes_for(wide));
    let err = k
        .colsum(Dtype::Bf16, ow.ptr(), xw.ptr(), 1, wide, wide, scw)
        .expect_err("too wide");
    assert!(err.to_string().contains("exceeds"), "{err}");
    k.colsum(Dtype::Bf16, out.ptr(), x.ptr(), 0, c, c, sc)
        .unwrap();
    k.colsum(Dtype::Bf16, 0, x.ptr(), rows, c, c, sc).unwrap();
    assert!(gpu.download(&out).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn consecutive_reductions_share_one_scratch() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("shared scratch");
    // Shapes whose tile and chunk counts differ (3 x 256, 197 x 1, 9 x 113, 1 x 1, 1 x 32, ...),
    // so each launch uses counters and partial sums the previous one left behind; norm_dw
    // (two outputs) runs between them on the same scratch.
    const SEQ: [(usize, usize, usize); 8] = [
        (16384, 768, 768),
        (20, 50304, 50304),
        (4097, 2304, 2304),
        (1, 1, 1),
        (999, 13, 16),
        (20000, 96, 96),
        (333, 2311, 2320),
        (16384, 768, 768),
    ];
    let bytes = ReduceScratch::bytes_for(50304);
    let scratch = gpu.zeros::<u8>(bytes).unwrap();
    let sc = ReduceScratch::new(scratch.ptr(), bytes);
    let dt = Dtype::Bf16;
    let inputs: Vec<(Mat, Vec<f64>)> = SEQ
        .iter()
        .map(|&(rows, _, ld)| {
            let x = Mat::new(&gpu, dt, &shifted(&mut rng, rows * ld, 0.5));
            let start = shifted(&mut rng, ld, 0.0);
            (x, start)
        })
        .collect();
    // The norm run between the column sums: 3000 rows of 1000 (4 tiles of 94 chunks).
    let (nr, nc) = (3000, 1000);
    let dy = Mat::new(&gpu, dt, &shifted(&mut rng, nr * nc, 0.25));
    let r = Mat::new(&gpu, dt, &shifted(&mut rng, nr * nc, 0.1));
    let rstd: Vec<f32> = shifted(&mut rng, nr, 2.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let rstd_d = gpu.upload(&rstd).unwrap();
    let mut ww = vec![0.0; nc];
    let mut wb = vec![0.0; nc];
    for (n, &rs) in rstd.iter().enumerate() {
        for j in 0..nc {
            let g = dy.host[n * nc + j];
            ww[j] += g * r.host[n * nc + j] * rs as f64;
            wb[j] += g;
        }
    }
    let mut passes: Vec<Vec<Vec<f32>>> = Vec::new();
    for pass in 0..2 {
        let mut got = Vec::new();
        for (i, (&(rows, c, ld), (x, start))) in SEQ.iter().zip(&inputs).enumerate() {
            let start32: Vec<f32> = start[..c].iter().map(|&v| v as f32).collect();
            let out = gpu.upload(&start32).unwrap();
            k.colsum(dt, out.ptr(), x.ptr(), rows, c, ld, sc).unwrap();
            let v = gpu.download(&out).unwrap();
            let tag = format!("pass {pass} call {i}: colsum {rows}x{c} ld {ld}");
            let mut want = start[..c].to_vec();
            for n in 0..rows {
                for (j, w) in want.iter_mut().enumerate() {
                    *w += x.host[n * ld + j];
                }
            }
            check(&tag, &v, &want);
            assert!(
                bits(&v) == bits(&colsum_replay(&x.host, rows, c, ld, start)),
                "{tag}: not the bits of the fixed summation order"
            );
            got.push(v);
            if i % 3 == 1 {
                let (dw, db) = (gpu.zeros::<f32>(nc).unwrap(), gpu.zeros::<f32>(nc).unwrap());
                k.norm_dw(
                    dt,
                    NormKind::Rms,
                    dw.ptr(),
                    db.ptr(),
                    dy.ptr(),
                    r.ptr(),
                    rstd_d.ptr(),
                    0,
                    nr,
                    nc,
                    sc,
                )
                .unwrap();
                let (dw, db) = (gpu.download(&dw).unwrap(), gpu.download(&db).unwrap());
                check(&format!("pass {pass} after call {i}: norm_dw dw"), &dw, &ww);
                check(&format!("pass {pass} after call {i}: norm_dw db"), &db, &wb);
                got.push(dw);
                got.push(db);
            }
        }
        passes.push(got);
    }
    for (i, (a, b)) in passes[0].iter().zip(&passes[1]).enumerate() {
        assert!(bits(a) == bits(b), "result {i} differs between the passes");
    }
}
