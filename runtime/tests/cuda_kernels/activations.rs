//! The MLP activations (plain and gated, forward and backward) against f64 references.

use super::{DTYPES, Rng, T, check, setup};
use modelspec_runtime::cuda::Act;

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
                let gu = T::new(&gpu, dt, &rng.normal_vec(n * ld, 1.5));
                let dout = T::new(&gpu, dt, &rng.normal_vec(n * hidden, 1.0));
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
