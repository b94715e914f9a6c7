//! The GPU's column reductions (`cuda/kernels/reduce.cu` through [`Kernels::colsum`] and
//! [`Kernels::norm_dw`]) against f64 sums of the same inputs, on fresh random inputs each run
//! (the seed is printed): widths that are and are not multiples of 8, odd and large row counts,
//! row strides wider than the width, pointers that are not 16-byte aligned (the element path),
//! both dtypes; every result is also checked to be bit-identical when run again, and the
//! reductions add (+=) to what the output held.
//!
//! Tolerance: ||gpu - ref|| / ||ref|| <= 2e-5 in both dtypes: the inputs are exactly
//! representable in the dtype (the reference sees the rounded values), so only the kernels' f32
//! summation rounds (about sqrt(rows / chunks) x 6e-8 per chunk sum, far below the bound); a
//! missed row, column or chunk gives errors of order 1e-2 or more.
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.

use modelspec_runtime::cuda::{Dtype, DtypeExt, Gpu, GpuBuf, Kernels, NormKind, ReduceScratch};
use std::sync::Arc;

fn setup() -> Option<(Arc<Gpu>, Kernels)> {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            return None;
        }
    };
    let kernels = Kernels::load(&gpu, "test_reduce", &[64], Default::default())
        .expect("kernel library compiles");
    Some((gpu, kernels))
}

/// xorshift64, seeded from the clock.
struct Rng(u64);
impl Rng {
    fn fresh(name: &str) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        println!("{name}: seed {seed}");
        Rng(seed)
    }
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-1, 1) plus `shift`.
    fn vec(&mut self, n: usize, shift: f64) -> Vec<f64> {
        (0..n).map(|_| 2.0 * self.uniform() - 1.0 + shift).collect()
    }
}

fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// A device matrix of `dt` starting `offset` elements into its buffer (offset 1 or 3: not
/// 16-byte aligned); `host` holds its values as the dtype stores them.
enum Buf {
    F32(GpuBuf<f32>),
    Bf16(GpuBuf<u16>),
}
struct Mat {
    buf: Buf,
    offset: usize,
    host: Vec<f64>,
}
impl Mat {
    fn new(gpu: &Gpu, dt: Dtype, vals: &[f64], offset: usize) -> Mat {
        let pad = vec![0.0; offset];
        let all: Vec<f64> = pad.iter().chain(vals).copied().collect();
        let (buf, host) = match dt {
            Dtype::F32 => {
                let v: Vec<f32> = all.iter().map(|&x| x as f32).collect();
                let host = v[offset..].iter().map(|&x| x as f64).collect();
                (Buf::F32(gpu.upload(&v).unwrap()), host)
            }
            Dtype::Bf16 => {
                let v: Vec<u16> = all.iter().map(|&x| to_bf16(x as f32)).collect();
                let host = v[offset..]
                    .iter()
                    .map(|&x| f32::from_bits((x as u32) << 16) as f64)
                    .collect();
                (Buf::Bf16(gpu.upload(&v).unwrap()), host)
            }
        };
        Mat { buf, offset, host }
    }
    fn ptr(&self, dt: Dtype) -> u64 {
        let base = match &self.buf {
            Buf::F32(b) => b.ptr(),
            Buf::Bf16(b) => b.ptr(),
        };
        base + (self.offset * dt.bytes()) as u64
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w) * (g as f64 - w);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

fn check(what: &str, got: &[f32], want: &[f64]) {
    let e = rel_err(got, want);
    println!("PARITY {what}: rel err {e:.3e}");
    assert!(e <= 2e-5, "{what}: relative error {e:.3e} above 2e-5");
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
            let x = Mat::new(&gpu, dt, &rng.vec(rows * ld, 0.5), off);
            let start = rng.vec(c, 0.0);
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
                k.colsum(dt, out.ptr(), x.ptr(dt), rows, c, ld, sc).unwrap();
                runs.push(gpu.download(&out).unwrap());
            }
            let tag = format!("colsum {} {rows}x{c} ld {ld} offset {off}", dt.suffix());
            check(&tag, &runs[0], &want);
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
                    let dy = Mat::new(&gpu, dt, &rng.vec(rows * c, 0.25), off);
                    let r = Mat::new(&gpu, dt, &rng.vec(rows * c, 0.1), off);
                    let rstd: Vec<f32> = rng.vec(rows, 2.0).iter().map(|&v| v as f32).collect();
                    let mean: Vec<f32> = rng.vec(rows, 0.0).iter().map(|&v| v as f32).collect();
                    let (rstd_d, mean_d) = (gpu.upload(&rstd).unwrap(), gpu.upload(&mean).unwrap());
                    let (w0, b0) = (rng.vec(c, 0.0), rng.vec(c, 0.0));
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
                            dy.ptr(dt),
                            r.ptr(dt),
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
    let x = Mat::new(&gpu, Dtype::Bf16, &vec![1.0; rows * c], 0);
    let out = gpu.zeros::<f32>(c).unwrap();
    let small = gpu.zeros::<u8>(1024).unwrap();
    for sc in [
        ReduceScratch::default(),
        ReduceScratch::new(small.ptr(), 1024),
    ] {
        let err = k
            .colsum(Dtype::Bf16, out.ptr(), x.ptr(Dtype::Bf16), rows, c, c, sc)
            .expect_err("scratch too small");
        assert!(err.to_string().contains("reduction scratch"), "{err}");
    }
    // A stride below the width is refused by name, and no rows or no output launch nothing.
    let sc = ReduceScratch::new(small.ptr(), 1024);
    let err = k
        .colsum(
            Dtype::Bf16,
            out.ptr(),
            x.ptr(Dtype::Bf16),
            rows,
            c,
            c - 1,
            sc,
        )
        .expect_err("stride below width");
    assert!(err.to_string().contains("row stride"), "{err}");
    k.colsum(Dtype::Bf16, out.ptr(), x.ptr(Dtype::Bf16), 0, c, c, sc)
        .unwrap();
    k.colsum(Dtype::Bf16, 0, x.ptr(Dtype::Bf16), rows, c, c, sc)
        .unwrap();
    assert!(gpu.download(&out).unwrap().iter().all(|&v| v == 0.0));
}
