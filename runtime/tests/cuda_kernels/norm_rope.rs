//! The norm kernels (forward and backward, every kind, with the weight and bias gradients) and
//! RoPE (forward and backward) against f64 references.

use super::{DTYPES, Rng, T, check, f32buf, getf, setup};
use modelspec_runtime::cuda::{NormKind, ReduceScratch};

// ---------- norms ----------

#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_forward_backward_matches_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("norm");
    for dt in DTYPES {
        for (kind, offset, affine) in [
            (NormKind::Rms, 0.0, true),
            (NormKind::Rms, 1.0, true),
            (NormKind::Layer, 0.0, true),
            (NormKind::Layer, 0.0, false),
        ] {
            let (n, c) = (37, 1000);
            let eps = 1e-5;
            let x = T::new(&gpu, dt, &rng.normal_vec(n * c, 1.0));
            let res = T::new(&gpu, dt, &rng.normal_vec(n * c, 1.0));
            let w = T::new(&gpu, dt, &rng.normal_vec(c, 0.5));
            let bias = T::new(&gpu, dt, &rng.normal_vec(c, 0.5));
            let dy = T::new(&gpu, dt, &rng.normal_vec(n * c, 1.0));
            let dres = T::new(&gpu, dt, &rng.normal_vec(n * c, 1.0));
            let y = T::poison(&gpu, dt, n * c);
            let r = T::poison(&gpu, dt, n * c);
            let dx = T::poison(&gpu, dt, n * c);
            let rstd = gpu.zeros::<f32>(n).unwrap();
            let mean = gpu.zeros::<f32>(n).unwrap();
            let dw = gpu.zeros::<f32>(c).unwrap();
            let db = gpu.zeros::<f32>(c).unwrap();
            let scratch = gpu.zeros::<u8>(ReduceScratch::bytes_for(c)).unwrap();
            let is_layer = kind == NormKind::Layer;
            let (wp, bp) = if affine {
                (w.ptr(), if is_layer { bias.ptr() } else { 0 })
            } else {
                (0, 0)
            };
            k.norm_fwd(
                dt,
                kind,
                y.ptr(),
                r.ptr(),
                rstd.ptr(),
                mean.ptr(),
                x.ptr(),
                res.ptr(),
                wp,
                bp,
                n,
                c,
                eps as f32,
                offset as f32,
            )
            .unwrap();
            // The backward reads r as the kernel stored it (rounded in bf16), so the reference does too.
            let r_dev = r.get(&gpu);
            k.norm_bwd(
                dt,
                kind,
                dx.ptr(),
                dy.ptr(),
                r.ptr(),
                wp,
                rstd.ptr(),
                mean.ptr(),
                dres.ptr(),
                n,
                c,
                offset as f32,
            )
            .unwrap();
            k.norm_dw(
                dt,
                kind,
                if affine { dw.ptr() } else { 0 },
                if affine && is_layer { db.ptr() } else { 0 },
                dy.ptr(),
                r.ptr(),
                rstd.ptr(),
                mean.ptr(),
                n,
                c,
                ReduceScratch::new(scratch.ptr(), ReduceScratch::bytes_for(c)),
            )
            .unwrap();
            let (mut ry, mut rr, mut rdx, mut rdw, mut rdb) = (
                vec![0.0; n * c],
                vec![0.0; n * c],
                vec![0.0; n * c],
                vec![0.0; c],
                vec![0.0; c],
            );
            for i in 0..n {
                let row: Vec<f64> = (0..c)
                    .map(|j| x.host[i * c + j] + res.host[i * c + j])
                    .collect();
                rr[i * c..(i + 1) * c].copy_from_slice(&row);
                let rowd = &r_dev[i * c..(i + 1) * c];
                let mu = if is_layer {
                    rowd.iter().sum::<f64>() / c as f64
                } else {
                    0.0
                };
                let var = rowd.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
                let rs = 1.0 / (var + eps).sqrt();
                let wf = |j: usize| if affine { offset + w.host[j] } else { 1.0 };
                let xh: Vec<f64> = rowd.iter().map(|v| (v - mu) * rs).collect();
                for j in 0..c {
                    ry[i * c + j] = xh[j] * wf(j)
                        + if affine && is_layer {
                            bias.host[j]
                        } else {
                            0.0
                        };
                }
                let g: Vec<f64> = (0..c).map(|j| dy.host[i * c + j] * wf(j)).collect();
                let mg = if is_layer {
                    g.iter().sum::<f64>() / c as f64
                } else {
                    0.0
                };
                let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / c as f64;
                for j in 0..c {
                    rdx[i * c + j] = rs * (g[j] - mg - xh[j] * mgx) + dres.host[i * c + j];
                    rdw[j] += dy.host[i * c + j] * xh[j];
                    rdb[j] += dy.host[i * c + j];
                }
            }
            let tag = format!("norm {kind:?} offset {offset} affine {affine}");
            check(&format!("{tag} residual"), dt, &r_dev, &rr);
            check(&format!("{tag} fwd"), dt, &y.get(&gpu), &ry);
            check(&format!("{tag} dx"), dt, &dx.get(&gpu), &rdx);
            if affine {
                check(&format!("{tag} dw"), dt, &getf(&gpu, &dw), &rdw);
                if is_layer {
                    check(&format!("{tag} db"), dt, &getf(&gpu, &db), &rdb);
                }
            }
        }
    }
}

// ---------- rope ----------

#[test]
#[ignore = "needs a CUDA GPU"]
fn rope_forward_backward_matches_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("rope");
    for dt in DTYPES {
        for (interleaved, rot) in [(false, 64), (true, 64), (false, 32)] {
            let (b, t, heads, d) = (2, 19, 3, 64);
            let ld = heads * d + 16; // a view into a wider (fused) buffer
            let n = b * t;
            let xv = rng.normal_vec(n * ld, 1.0);
            let x = T::new(&gpu, dt, &xv);
            let half = rot / 2;
            let cos: Vec<f64> = (0..t * half)
                .map(|i| ((i / half) as f64 * (0.3 + (i % half) as f64 * 0.01)).cos())
                .collect();
            let sin: Vec<f64> = (0..t * half)
                .map(|i| ((i / half) as f64 * (0.3 + (i % half) as f64 * 0.01)).sin())
                .collect();
            let (cb, sb) = (f32buf(&gpu, &cos), f32buf(&gpu, &sin));
            let cos32: Vec<f64> = cos.iter().map(|&v| v as f32 as f64).collect();
            let sin32: Vec<f64> = sin.iter().map(|&v| v as f32 as f64).collect();
            k.rope(
                dt,
                x.ptr(),
                cb.ptr(),
                sb.ptr(),
                n,
                t,
                heads,
                d,
                ld,
                rot,
                interleaved,
                false,
            )
            .unwrap();
            let mut want = x.host.clone();
            for row in 0..n {
                for h in 0..heads {
                    for i in 0..half {
                        let (a, bb) = if interleaved {
                            (2 * i, 2 * i + 1)
                        } else {
                            (i, i + half)
                        };
                        let base = row * ld + h * d;
                        let (c, s) = (cos32[(row % t) * half + i], sin32[(row % t) * half + i]);
                        let (x1, x2) = (x.host[base + a], x.host[base + bb]);
                        want[base + a] = x1 * c - x2 * s;
                        want[base + bb] = x2 * c + x1 * s;
                    }
                }
            }
            let got = x.get(&gpu);
            check(
                &format!("rope interleaved={interleaved} rot={rot} fwd"),
                dt,
                &got,
                &want,
            );
            // backward of the forward is the identity up to rounding: rotate back.
            k.rope(
                dt,
                x.ptr(),
                cb.ptr(),
                sb.ptr(),
                n,
                t,
                heads,
                d,
                ld,
                rot,
                interleaved,
                true,
            )
            .unwrap();
            check(
                &format!("rope interleaved={interleaved} rot={rot} bwd(fwd(x))"),
                dt,
                &x.get(&gpu),
                &x.host,
            );
        }
    }
}
