//! The embedding (forward and its scatter-add backward), cross-entropy (loss and gradient) and
//! AdamW against f64 references.

use super::{DTYPES, Rng, T, check, f32buf, getf, setup};
use modelspec_runtime::cuda::Dtype;

// ---------- embedding ----------

/// The forward against f64, and the backward (the deterministic scatter: tokens once, a few
/// times, and one token at more positions than a piece holds, onto a table that already holds a
/// gradient) against f64 and against itself: a second run gives the same bits.
#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_backward_match_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("embed");
    for dt in DTYPES {
        let (vocab, c, b, t) = (50, 96, 5, 17);
        let n = b * t;
        let wte = T::new(&gpu, dt, &rng.normal_vec(vocab * c, 1.0));
        let wpe = T::new(&gpu, dt, &rng.normal_vec(t * c, 1.0));
        // Token 7 at every other position (43 of 85: two pieces), beside random ones.
        let tok: Vec<i32> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    7
                } else {
                    (rng.next() % vocab as u64) as i32
                }
            })
            .collect();
        let sevens = tok.iter().filter(|&&x| x == 7).count();
        assert!(sevens > modelspec_runtime::ops::embedding::SCATTER_PIECE);
        let tokb = gpu.upload(&tok).unwrap();
        let toku: Vec<u32> = tok.iter().map(|&x| x as u32).collect();
        let plan = gpu
            .upload(&modelspec_runtime::ops::embedding::scatter_plan(&toku))
            .unwrap();
        let partial = f32buf(&gpu, &rng.normal_vec(n * c, 1.0));
        let out = T::poison(&gpu, dt, n * c);
        let dout = T::new(&gpu, dt, &rng.normal_vec(n * c, 1.0));
        let base = rng.normal_vec(vocab * c, 1.0);
        let dwte = f32buf(&gpu, &base);
        let dwpe = gpu.zeros::<f32>(t * c).unwrap();
        let scale = 1.7f32;
        k.embed_fwd(
            dt,
            out.ptr(),
            tokb.ptr(),
            wte.ptr(),
            wpe.ptr(),
            n,
            t,
            c,
            scale,
        )
        .unwrap();
        let backward = |dwte: &modelspec_runtime::cuda::GpuBuf<f32>| {
            k.embed_bwd(
                dt,
                dwte.ptr(),
                dwpe.ptr(),
                tokb.ptr(),
                plan.ptr(),
                partial.ptr(),
                dout.ptr(),
                n,
                t,
                c,
                scale,
            )
            .unwrap()
        };
        backward(&dwte);
        let once = getf(&gpu, &dwte);
        let again = f32buf(&gpu, &base);
        backward(&again);
        assert_eq!(
            once,
            getf(&gpu, &again),
            "{dt:?}: the scatter is not reproducible"
        );
        let (mut ro, mut rdte, mut rdpe) = (vec![0.0; n * c], base.clone(), vec![0.0; t * c]);
        for i in 0..n {
            let id = tok[i] as usize;
            for j in 0..c {
                ro[i * c + j] = wte.host[id * c + j] * scale as f64 + wpe.host[(i % t) * c + j];
                rdte[id * c + j] += dout.host[i * c + j] * scale as f64;
                rdpe[(i % t) * c + j] += dout.host[i * c + j];
            }
        }
        check("embed fwd", dt, &out.get(&gpu), &ro);
        check("embed dwte", Dtype::F32, &once, &rdte);
        // The position table got both runs.
        let twice: Vec<f64> = rdpe.iter().map(|x| 2.0 * x).collect();
        check("embed dwpe", Dtype::F32, &getf(&gpu, &dwpe), &twice);
    }
}

// ---------- cross-entropy ----------

#[test]
#[ignore = "needs a CUDA GPU"]
fn cross_entropy_loss_and_grad_match_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("xent");
    for dt in DTYPES {
        for softcap in [0.0f32, 30.0] {
            let (n, v, ld) = (21, 5003, 5008);
            let logits = T::new(&gpu, dt, &rng.normal_vec(n * ld, 4.0));
            let tgt: Vec<i32> = (0..n)
                .map(|i| {
                    if i == 3 {
                        -1
                    } else {
                        (rng.next() % v as u64) as i32
                    }
                })
                .collect();
            let tb = gpu.upload(&tgt).unwrap();
            let loss = gpu.zeros::<f32>(n).unwrap();
            let dscale = 1.0 / (n - 1) as f32;
            k.xent(
                dt,
                logits.ptr(),
                loss.ptr(),
                tb.ptr(),
                n,
                v,
                ld,
                softcap,
                Some(dscale),
            )
            .unwrap();
            let (mut rl, mut rg) = (vec![0.0; n], vec![0.0; n * v]);
            let cap = softcap as f64;
            for i in 0..n {
                let row = &logits.host[i * ld..i * ld + v];
                let z: Vec<f64> = row
                    .iter()
                    .map(|&l| if cap > 0.0 { cap * (l / cap).tanh() } else { l })
                    .collect();
                let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                if tgt[i] < 0 {
                    continue;
                }
                rl[i] = lse - z[tgt[i] as usize];
                for j in 0..v {
                    let dz = if cap > 0.0 {
                        1.0 - (row[j] / cap).tanh().powi(2)
                    } else {
                        1.0
                    };
                    rg[i * v + j] = ((z[j] - lse).exp()
                        - if j == tgt[i] as usize { 1.0 } else { 0.0 })
                        * dscale as f64
                        * dz;
                }
            }
            let got = logits.get(&gpu);
            let gg: Vec<f64> = (0..n * v).map(|e| got[(e / v) * ld + e % v]).collect();
            check(
                &format!("xent softcap {softcap} loss"),
                Dtype::F32,
                &getf(&gpu, &loss),
                &rl,
            );
            check(&format!("xent softcap {softcap} grad"), dt, &gg, &rg);
        }
    }
}

// ---------- AdamW ----------

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_matches_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("adamw");
    let config = modelspec_runtime::train::optim::AdamWConfig {
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let (lr, step, gs) = (1e-3f64, 7u64, [0.5f32, 0.75f32]);
    let s = config.scalars(step, lr);
    for dt in DTYPES {
        // n % 4 = 1: the kernel's one-at-a-time tail; decay_end inside a 4-element vector.
        let (n, decay_end) = (10_001, 6_002);
        let w0 = rng.normal_vec(n, 1.0);
        let g0 = rng.normal_vec(n, 0.1);
        let m0: Vec<f64> = rng.normal_vec(n, 0.01);
        let v0: Vec<f64> = rng.normal_vec(n, 0.01).iter().map(|x| x * x).collect();
        let (master, grad, m, v) = (
            f32buf(&gpu, &w0),
            f32buf(&gpu, &g0),
            f32buf(&gpu, &m0),
            f32buf(&gpu, &v0),
        );
        let param = T::poison(&gpu, dt, n);
        k.adamw(
            dt,
            master.ptr(),
            param.ptr(),
            grad.ptr(),
            m.ptr(),
            v.ptr(),
            n,
            decay_end,
            &s,
            gs,
        )
        .unwrap();
        // The update of train::optim in f64: decoupled decay below decay_end only.
        let (b1, b2) = config.betas;
        let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        let mut rw = vec![0.0; n];
        let mut rm = vec![0.0; n];
        for i in 0..n {
            let w32 = w0[i] as f32 as f64;
            let g = (g0[i] as f32 as f64) * gs[0] as f64 * gs[1] as f64;
            let mi = b1 * (m0[i] as f32 as f64) + (1.0 - b1) * g;
            let vi = b2 * (v0[i] as f32 as f64) + (1.0 - b2) * g * g;
            rm[i] = mi;
            let decay = if i < decay_end {
                1.0 - lr * config.weight_decay
            } else {
                1.0
            };
            rw[i] = w32 * decay - lr * (mi / bc1) / ((vi / bc2).sqrt() + config.eps);
        }
        // Compare the update (w - w0), not w, so the tolerance applies to what the kernel computes.
        let got = getf(&gpu, &master);
        let du: Vec<f64> = got
            .iter()
            .zip(&w0)
            .map(|(a, b)| a - (*b as f32 as f64))
            .collect();
        let dr: Vec<f64> = rw
            .iter()
            .zip(&w0)
            .map(|(a, b)| a - (*b as f32 as f64))
            .collect();
        check("adamw update", Dtype::F32, &du, &dr);
        check("adamw m", Dtype::F32, &getf(&gpu, &m), &rm);
        check("adamw param copy", dt, &param.get(&gpu), &rw);
    }
}
