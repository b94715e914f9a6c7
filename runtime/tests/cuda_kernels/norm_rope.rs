//! RoPE (forward and backward) against f64 references (the norms: `norm.rs`).

use super::{DTYPES, Rng, T, check, f32buf, setup};

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
