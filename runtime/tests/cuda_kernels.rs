//! GPU kernels against CPU f64 references, on fresh random inputs each run (the seed is printed).
//!
//! Tolerances, as ||gpu - ref|| / ||ref|| over the whole output:
//! - f32: 1e-4. The kernels compute in f32 (fast-math exp/tanh), expected ~1e-6.
//! - bf16: 1e-2. Inputs are rounded to bf16 before the reference sees them, so only the kernel's
//!   own roundings count: each stored bf16 output carries up to 2^-9 ~ 2e-3 relative error, and
//!   attention also rounds P and dS to bf16 before their tensor-core products; these errors are
//!   independent across elements, so the norm-wise error stays near 2-4e-3. 1e-2 leaves margin
//!   while still catching any indexing or masking bug (those give errors of order 1).
//!
//! Without a CUDA driver or device every test prints "skipping: no CUDA device" and passes.

use modelspec_runtime::cuda::{
    Act, AttnShape, Dtype, DtypeExt, Gpu, GpuBuf, Kernels, NormKind, ReduceScratch, RowMajorGemm,
};
use modelspec_runtime::ops::attention::alibi_slopes;
use std::sync::Arc;

// ---------- harness ----------

fn setup() -> Option<(Arc<Gpu>, Kernels)> {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            return None;
        }
    };
    let kernels = Kernels::load(&gpu, "test_library", &[64, 128, 256], Default::default())
        .expect("kernel library compiles");
    Some((gpu, kernels))
}

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
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// A device tensor of either dtype holding values that are exactly representable in it; `host`
/// is those values in f64 (what the reference sees).
struct T {
    dt: Dtype,
    f: Option<GpuBuf<f32>>,
    h: Option<GpuBuf<u16>>,
    host: Vec<f64>,
}
impl T {
    fn new(gpu: &Gpu, dt: Dtype, vals: &[f64]) -> T {
        match dt {
            Dtype::F32 => {
                let v: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
                let host = v.iter().map(|&x| x as f64).collect();
                T {
                    dt,
                    f: Some(gpu.upload(&v).unwrap()),
                    h: None,
                    host,
                }
            }
            Dtype::Bf16 => {
                let v: Vec<u16> = vals.iter().map(|&x| to_bf16(x as f32)).collect();
                let host = v.iter().map(|&x| from_bf16(x) as f64).collect();
                T {
                    dt,
                    f: None,
                    h: Some(gpu.upload(&v).unwrap()),
                    host,
                }
            }
        }
    }
    /// Poisoned output buffer (NaN everywhere) so unwritten elements fail the check.
    fn poison(gpu: &Gpu, dt: Dtype, n: usize) -> T {
        T::new(gpu, dt, &vec![f64::NAN; n])
    }
    fn ptr(&self) -> u64 {
        match self.dt {
            Dtype::F32 => self.f.as_ref().unwrap().ptr(),
            Dtype::Bf16 => self.h.as_ref().unwrap().ptr(),
        }
    }
    fn get(&self, gpu: &Gpu) -> Vec<f64> {
        match self.dt {
            Dtype::F32 => gpu
                .download(self.f.as_ref().unwrap())
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect(),
            Dtype::Bf16 => gpu
                .download(self.h.as_ref().unwrap())
                .unwrap()
                .iter()
                .map(|&x| from_bf16(x) as f64)
                .collect(),
        }
    }
}

fn tol(dt: Dtype) -> f64 {
    match dt {
        Dtype::F32 => 1e-4,
        Dtype::Bf16 => 1e-2,
    }
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

fn check(what: &str, dt: Dtype, got: &[f64], want: &[f64]) {
    let e = rel_err(got, want);
    println!("PARITY {what} {}: rel err {e:.3e}", dt.suffix());
    assert!(
        e <= tol(dt),
        "{what} ({}): relative error {e:.3e} above {:.0e}",
        dt.suffix(),
        tol(dt)
    );
}

fn f32buf(gpu: &Gpu, vals: &[f64]) -> GpuBuf<f32> {
    gpu.upload(&vals.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .unwrap()
}
fn getf(gpu: &Gpu, b: &GpuBuf<f32>) -> Vec<f64> {
    gpu.download(b).unwrap().iter().map(|&x| x as f64).collect()
}

const DTYPES: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];

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
            let x = T::new(&gpu, dt, &rng.vec(n * c, 1.0));
            let res = T::new(&gpu, dt, &rng.vec(n * c, 1.0));
            let w = T::new(&gpu, dt, &rng.vec(c, 0.5));
            let bias = T::new(&gpu, dt, &rng.vec(c, 0.5));
            let dy = T::new(&gpu, dt, &rng.vec(n * c, 1.0));
            let dres = T::new(&gpu, dt, &rng.vec(n * c, 1.0));
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
            let xv = rng.vec(n * ld, 1.0);
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

// ---------- activations ----------

fn act_ref(kind: Act, x: f64) -> (f64, f64) {
    let erf_gelu = |x: f64| {
        let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        (x * cdf, cdf + x * pdf)
    };
    let tanh_gelu = |x: f64| {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let u = c * (x + 0.044715 * x * x * x);
        let t = u.tanh();
        (
            0.5 * x * (1.0 + t),
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x),
        )
    };
    match kind {
        Act::Gelu | Act::Geglu => erf_gelu(x),
        Act::GeluTanh | Act::GegluTanh => tanh_gelu(x),
        Act::ReluSquared => (x.max(0.0).powi(2), if x > 0.0 { 2.0 * x } else { 0.0 }),
        Act::Swiglu => {
            let s = 1.0 / (1.0 + (-x).exp());
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
    }
}

/// erf by its series / continued fraction is overkill here: Abramowitz-Stegun 7.1.26 is only
/// 1.5e-7 accurate, so use a high-order series for |x| < 3 and the asymptotic tail beyond.
fn erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let mut sum: f64 = 0.0;
    let mut term: f64 = x;
    let mut n: f64 = 0.0;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
        if n > 200.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn activations_forward_backward_match_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("act");
    for dt in DTYPES {
        for kind in [
            Act::Gelu,
            Act::GeluTanh,
            Act::ReluSquared,
            Act::Swiglu,
            Act::Geglu,
            Act::GegluTanh,
        ] {
            // 300: the f32 kernels take 16-byte vectors (4 | 300), bf16 goes element by element
            // (8 does not divide 300); 256: both vectorised.
            for (n, hidden) in [(33, 300), (17, 256)] {
                let ld = 2 * hidden; // gate and up as the two halves of one fused projection
                let gu = T::new(&gpu, dt, &rng.vec(n * ld, 1.5));
                let dout = T::new(&gpu, dt, &rng.vec(n * hidden, 1.0));
                let out = T::poison(&gpu, dt, n * hidden);
                let dgu = T::poison(&gpu, dt, n * ld);
                let gate = gu.ptr();
                let elt = dt.size();
                let up = gu.ptr() + (hidden as u64) * elt;
                k.act_fwd(dt, kind, out.ptr(), gate, up, n, hidden, ld)
                    .unwrap();
                k.act_bwd(
                    dt,
                    kind,
                    dgu.ptr(),
                    dgu.ptr() + (hidden as u64) * elt,
                    dout.ptr(),
                    gate,
                    up,
                    n,
                    hidden,
                    ld,
                )
                .unwrap();
                let (mut ro, mut rdg, mut rdu) = (
                    vec![0.0; n * hidden],
                    vec![0.0; n * hidden],
                    vec![0.0; n * hidden],
                );
                for i in 0..n {
                    for j in 0..hidden {
                        let g = gu.host[i * ld + j];
                        let u = gu.host[i * ld + hidden + j];
                        let (a, da) = act_ref(kind, g);
                        let d = dout.host[i * hidden + j];
                        if kind.is_gated() {
                            ro[i * hidden + j] = a * u;
                            rdg[i * hidden + j] = d * u * da;
                            rdu[i * hidden + j] = d * a;
                        } else {
                            ro[i * hidden + j] = a;
                            rdg[i * hidden + j] = d * da;
                        }
                    }
                }
                let got = dgu.get(&gpu);
                let gd: Vec<f64> = (0..n * hidden)
                    .map(|e| got[(e / hidden) * ld + e % hidden])
                    .collect();
                check(&format!("act {kind:?} fwd"), dt, &out.get(&gpu), &ro);
                check(&format!("act {kind:?} dgate"), dt, &gd, &rdg);
                if kind.is_gated() {
                    let ud: Vec<f64> = (0..n * hidden)
                        .map(|e| got[(e / hidden) * ld + hidden + e % hidden])
                        .collect();
                    check(&format!("act {kind:?} dup"), dt, &ud, &rdu);
                }
            }
        }
    }
}

// ---------- embedding ----------

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_forward_backward_match_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("embed");
    for dt in DTYPES {
        let (vocab, c, b, t) = (50, 96, 3, 17);
        let n = b * t;
        let wte = T::new(&gpu, dt, &rng.vec(vocab * c, 1.0));
        let wpe = T::new(&gpu, dt, &rng.vec(t * c, 1.0));
        let tok: Vec<i32> = (0..n).map(|_| (rng.next() % vocab as u64) as i32).collect();
        let tokb = gpu.upload(&tok).unwrap();
        let out = T::poison(&gpu, dt, n * c);
        let dout = T::new(&gpu, dt, &rng.vec(n * c, 1.0));
        let dwte = gpu.zeros::<f32>(vocab * c).unwrap();
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
        k.embed_bwd(
            dt,
            dwte.ptr(),
            dwpe.ptr(),
            tokb.ptr(),
            dout.ptr(),
            n,
            t,
            c,
            scale,
        )
        .unwrap();
        let (mut ro, mut rdte, mut rdpe) =
            (vec![0.0; n * c], vec![0.0; vocab * c], vec![0.0; t * c]);
        for i in 0..n {
            let id = tok[i] as usize;
            for j in 0..c {
                ro[i * c + j] = wte.host[id * c + j] * scale as f64 + wpe.host[(i % t) * c + j];
                rdte[id * c + j] += dout.host[i * c + j] * scale as f64;
                rdpe[(i % t) * c + j] += dout.host[i * c + j];
            }
        }
        check("embed fwd", dt, &out.get(&gpu), &ro);
        check("embed dwte", Dtype::F32, &getf(&gpu, &dwte), &rdte);
        check("embed dwpe", Dtype::F32, &getf(&gpu, &dwpe), &rdpe);
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
            let logits = T::new(&gpu, dt, &rng.vec(n * ld, 4.0));
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
        let (n, decay_end) = (10_001, 6_000);
        let w0 = rng.vec(n, 1.0);
        let g0 = rng.vec(n, 0.1);
        let m0: Vec<f64> = rng.vec(n, 0.01);
        let v0: Vec<f64> = rng.vec(n, 0.01).iter().map(|x| x * x).collect();
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
            let a = T::new(&gpu, dt, &rng.vec(m * kk, 1.0));
            let b = T::new(&gpu, dt, &rng.vec(kk * n, 1.0));
            let c0 = rng.vec(m * n, 1.0);
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

// ---------- attention ----------

struct AttnRef {
    o: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// The f64 reference of attention; `alibi`: per-head slopes, bias `bf16(slope * j)` added to q.k
/// before the scale (as the CPU executor, runtime/src/ops/attention.rs).
#[allow(clippy::too_many_arguments)]
fn attn_ref(
    s: &AttnShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    alibi: Option<&[f64]>,
) -> AttnRef {
    let (b_, t_, h_, kv_, d_) = (s.batch, s.seq, s.heads, s.kv_heads, s.head_dim);
    let group = h_ / kv_;
    let mut o = vec![0.0; b_ * t_ * s.ldo];
    let mut dq = vec![0.0; b_ * t_ * s.ldq];
    let mut dk = vec![0.0; b_ * t_ * s.ldk];
    let mut dv = vec![0.0; b_ * t_ * s.ldv];
    let cap = s.softcap as f64;
    for b in 0..b_ {
        for h in 0..h_ {
            let g = h / group;
            for i in 0..t_ {
                let qi = &q[(b * t_ + i) * s.ldq + h * d_..][..d_];
                let vis: Vec<usize> = (0..t_)
                    .filter(|&j| (!s.causal || j <= i) && (s.window == 0 || i < j + s.window))
                    .collect();
                let mut raw = Vec::new();
                let mut sc = Vec::new();
                for &j in &vis {
                    let kj = &k[(b * t_ + j) * s.ldk + g * d_..][..d_];
                    let bias =
                        alibi.map_or(0.0, |sl| from_bf16(to_bf16(sl[h] as f32 * j as f32)) as f64);
                    let dot: f64 = (qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>() + bias)
                        * s.scale as f64;
                    raw.push(dot);
                    sc.push(if cap > 0.0 {
                        cap * (dot / cap).tanh()
                    } else {
                        dot
                    });
                }
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                let doi = &dout[(b * t_ + i) * s.ldo + h * d_..][..d_];
                let mut oi = vec![0.0; d_];
                for (idx, &j) in vis.iter().enumerate() {
                    let vj = &v[(b * t_ + j) * s.ldv + g * d_..][..d_];
                    for d in 0..d_ {
                        oi[d] += p[idx] * vj[d];
                    }
                }
                let delta: f64 = oi.iter().zip(doi).map(|(a, c)| a * c).sum();
                o[(b * t_ + i) * s.ldo + h * d_..][..d_].copy_from_slice(&oi);
                for (idx, &j) in vis.iter().enumerate() {
                    let vj = &v[(b * t_ + j) * s.ldv + g * d_..][..d_];
                    let kj = &k[(b * t_ + j) * s.ldk + g * d_..][..d_];
                    let dp: f64 = doi.iter().zip(vj).map(|(a, c)| a * c).sum();
                    let mut ds = p[idx] * (dp - delta);
                    if cap > 0.0 {
                        let t = (raw[idx] / cap).tanh();
                        ds *= 1.0 - t * t;
                    }
                    ds *= s.scale as f64;
                    for d in 0..d_ {
                        dq[(b * t_ + i) * s.ldq + h * d_ + d] += ds * kj[d];
                        dk[(b * t_ + j) * s.ldk + g * d_ + d] += ds * qi[d];
                        dv[(b * t_ + j) * s.ldv + g * d_ + d] += p[idx] * doi[d];
                    }
                }
            }
        }
    }
    AttnRef { o, dq, dk, dv }
}

/// Keeps only the head columns of a row-strided buffer (padding columns are not outputs).
fn heads_only(x: &[f64], rows: usize, ld: usize, width: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|r| x[r * ld..r * ld + width].to_vec())
        .collect()
}

fn run_attention_case(
    gpu: &Arc<Gpu>,
    k: &Kernels,
    rng: &mut Rng,
    dt: Dtype,
    s: AttnShape,
    tag: &str,
) {
    run_attention_case_alibi(gpu, k, rng, dt, s, tag, None)
}

/// As `run_attention_case`; with `alibi`, the per-head slopes go to the kernels (`s.alibi`) and to
/// the reference.
fn run_attention_case_alibi(
    gpu: &Arc<Gpu>,
    k: &Kernels,
    rng: &mut Rng,
    dt: Dtype,
    mut s: AttnShape,
    tag: &str,
    alibi: Option<&[f64]>,
) {
    let slopes = alibi.map(|a| f32buf(gpu, a));
    s.alibi = slopes.as_ref().map_or(0, |b| b.ptr());
    let rows = s.batch * s.seq;
    let q = T::new(gpu, dt, &rng.vec(rows * s.ldq, 1.0));
    let kk = T::new(gpu, dt, &rng.vec(rows * s.ldk, 1.0));
    let v = T::new(gpu, dt, &rng.vec(rows * s.ldv, 1.0));
    let dout = T::new(gpu, dt, &rng.vec(rows * s.ldo, 1.0));
    let o = T::poison(gpu, dt, rows * s.ldo);
    let dq = T::poison(gpu, dt, rows * s.ldq);
    let dk = T::poison(gpu, dt, rows * s.ldk);
    let dv = T::poison(gpu, dt, rows * s.ldv);
    let lse = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
    let delta = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
    let dq_acc = gpu.zeros::<f32>(rows * s.heads * s.head_dim).unwrap();
    k.attn_fwd(dt, &s, o.ptr(), lse.ptr(), q.ptr(), kk.ptr(), v.ptr())
        .unwrap();
    // The backward consumes O as stored (bf16-rounded), as in training.
    k.attn_bwd(
        dt,
        &s,
        dq.ptr(),
        dk.ptr(),
        dv.ptr(),
        dq_acc.ptr(),
        delta.ptr(),
        dout.ptr(),
        o.ptr(),
        lse.ptr(),
        q.ptr(),
        kk.ptr(),
        v.ptr(),
    )
    .unwrap();
    gpu.sync().unwrap();
    let r = attn_ref(&s, &q.host, &kk.host, &v.host, &dout.host, alibi);
    let path = if k.attn_uses_mma(dt, &s) {
        "mma"
    } else {
        "simple"
    };
    let qw = s.heads * s.head_dim;
    let kw = s.kv_heads * s.head_dim;
    check(
        &format!("attention {tag} [{path}] o"),
        dt,
        &heads_only(&o.get(gpu), rows, s.ldo, qw),
        &heads_only(&r.o, rows, s.ldo, qw),
    );
    check(
        &format!("attention {tag} [{path}] dq"),
        dt,
        &heads_only(&dq.get(gpu), rows, s.ldq, qw),
        &heads_only(&r.dq, rows, s.ldq, qw),
    );
    check(
        &format!("attention {tag} [{path}] dk"),
        dt,
        &heads_only(&dk.get(gpu), rows, s.ldk, kw),
        &heads_only(&r.dk, rows, s.ldk, kw),
    );
    check(
        &format!("attention {tag} [{path}] dv"),
        dt,
        &heads_only(&dv.get(gpu), rows, s.ldv, kw),
        &heads_only(&r.dv, rows, s.ldv, kw),
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_forward_backward_match_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("attention");
    let cases: Vec<(&str, AttnShape)> = vec![
        ("mha d64 causal", AttnShape::dense(2, 150, 4, 4, 64)),
        ("gqa d128 causal", AttnShape::dense(1, 200, 4, 2, 128)),
        (
            "mqa d64 window 37 softcap 20",
            AttnShape {
                window: 37,
                softcap: 20.0,
                ..AttnShape::dense(2, 130, 4, 1, 64)
            },
        ),
        (
            "gqa d128 non-causal",
            AttnShape {
                causal: false,
                ..AttnShape::dense(1, 100, 4, 2, 128)
            },
        ),
        ("gqa d256 causal", AttnShape::dense(1, 90, 2, 1, 256)),
        (
            "d96 causal (no mma instance)",
            AttnShape::dense(1, 70, 2, 2, 96),
        ),
    ];
    for dt in DTYPES {
        for (tag, s) in &cases {
            run_attention_case(&gpu, &k, &mut rng, dt, *s, tag);
        }
    }
    // q, k, v as views into one fused qkv projection [N, (H + 2 KV) D].
    let (h, kv, d) = (4, 2, 64);
    let w = (h + 2 * kv) * d;
    let s = AttnShape {
        ldq: w,
        ldk: w,
        ldv: w,
        ..AttnShape::dense(2, 80, h, kv, d)
    };
    let rows = s.batch * s.seq;
    for dt in DTYPES {
        let qkv = T::new(&gpu, dt, &rng.vec(rows * w, 1.0));
        let dout = T::new(&gpu, dt, &rng.vec(rows * s.ldo, 1.0));
        let o = T::poison(&gpu, dt, rows * s.ldo);
        let dqkv = T::poison(&gpu, dt, rows * w);
        let lse = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
        let delta = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
        let dq_acc = gpu.zeros::<f32>(rows * h * d).unwrap();
        let e = dt.size();
        let (qp, kp, vp) = (
            qkv.ptr(),
            qkv.ptr() + (h * d) as u64 * e,
            qkv.ptr() + ((h + kv) * d) as u64 * e,
        );
        let (dqp, dkp, dvp) = (
            dqkv.ptr(),
            dqkv.ptr() + (h * d) as u64 * e,
            dqkv.ptr() + ((h + kv) * d) as u64 * e,
        );
        k.attn_fwd(dt, &s, o.ptr(), lse.ptr(), qp, kp, vp).unwrap();
        k.attn_bwd(
            dt,
            &s,
            dqp,
            dkp,
            dvp,
            dq_acc.ptr(),
            delta.ptr(),
            dout.ptr(),
            o.ptr(),
            lse.ptr(),
            qp,
            kp,
            vp,
        )
        .unwrap();
        let split = |x: &[f64], off: usize| -> Vec<f64> { x.iter().skip(off).copied().collect() };
        let r = attn_ref(
            &s,
            &qkv.host,
            &split(&qkv.host, h * d),
            &split(&qkv.host, (h + kv) * d),
            &dout.host,
            None,
        );
        let got = dqkv.get(&gpu);
        let qw = h * d;
        let kw = kv * d;
        check("attention fused-qkv o", dt, &o.get(&gpu), &r.o);
        check(
            "attention fused-qkv dq",
            dt,
            &heads_only(&got, rows, w, qw),
            &heads_only(&r.dq, rows, w, qw),
        );
        check(
            "attention fused-qkv dk",
            dt,
            &heads_only(&split(&got, h * d), rows, w, kw),
            &heads_only(&split(&r.dk, 0), rows, w, kw),
        );
        check(
            "attention fused-qkv dv",
            dt,
            &heads_only(&split(&got, (h + kv) * d), rows, w, kw),
            &heads_only(&split(&r.dv, 0), rows, w, kw),
        );
    }
}

/// ALiBi (Falcon's slopes, `bf16(slope * j)` added to q.k before the scale) through both kernel
/// paths: head counts that are and are not powers of two (the second slope series), MHA and GQA,
/// with a window and a softcap, and d96 (the reference-grade kernel in bf16 too).
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_alibi_forward_backward_match_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("attention_alibi");
    let cases: Vec<(&str, AttnShape)> = vec![
        ("alibi mha h4 d64", AttnShape::dense(2, 150, 4, 4, 64)),
        ("alibi gqa h6 d128", AttnShape::dense(1, 130, 6, 2, 128)),
        (
            "alibi mqa h5 d64 window 37 softcap 20",
            AttnShape {
                window: 37,
                softcap: 20.0,
                ..AttnShape::dense(2, 100, 5, 1, 64)
            },
        ),
        ("alibi h3 d96", AttnShape::dense(1, 70, 3, 3, 96)),
    ];
    for dt in DTYPES {
        for (tag, s) in &cases {
            let slopes = alibi_slopes(s.heads);
            run_attention_case_alibi(&gpu, &k, &mut rng, dt, *s, tag, Some(&slopes));
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
        let x = T::new(&gpu, dt, &rng.vec(m * kk, 1.0));
        let w = T::new(&gpu, dt, &rng.vec(n * kk, 1.0));
        let b = T::new(&gpu, dt, &rng.vec(n, 1.0));
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
