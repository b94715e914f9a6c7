//! cuDNN fused attention (forward: o, lse; backward: dq, dk, dv) against an f64 CPU reference and
//! against the own attention kernels, on fresh random bf16 inputs each run (the seed is printed),
//! with equal head dims and with a value head dim apart from the query/key one (latent attention:
//! 96/64, 64/128, DeepSeek-V3's 192/128, dense and on the trainer's fused [q; k; v] layout), and
//! on PyTorch's head-major layout.
//!
//! Tolerances (||got - ref|| / ||ref|| over the whole output): 1e-2 for bf16 outputs, as the own
//! kernels' bf16 bound in cuda_kernels.rs (inputs are exact in bf16; the error comes from storing
//! outputs in bf16, ~2^-9 each, and from the bf16 P and dS inside the fused kernel). lse is f32
//! from f32 accumulation of exact products: 1e-4 relative, and within 1e-3 of the own kernels'.
//! A reference whose RMS is below 1e-3 (the exactly-zero dq/dk of T=1) is measured against that
//! RMS instead.
//!
//! Without a CUDA device, or without libcudnn 9, every test prints "skipping: ..." and passes,
//! unless MODELSPEC_REQUIRE_CUDNN=1 is set (the GPU machine's runs), which turns a missing cuDNN
//! into a failure.

use modelspec_runtime::cuda::cudnn::{CudnnAttention, CudnnError, probe};
use modelspec_runtime::cuda::{AttnShape, Dtype, Gpu, Kernels};
use std::sync::Arc;

mod common;

use common::gpu::{Mat, Rng, check_err, getf, rel_err_floor};

// ---------- harness ----------

fn setup() -> Option<(Arc<Gpu>, CudnnAttention)> {
    let gpu = common::gpu::device()?;
    match CudnnAttention::new(&gpu) {
        Ok(a) => {
            println!(
                "cuDNN {} at {}",
                a.library().version_string(),
                a.library().path
            );
            Some((gpu, a))
        }
        Err(e) => {
            assert!(
                std::env::var("MODELSPEC_REQUIRE_CUDNN").as_deref() != Ok("1"),
                "MODELSPEC_REQUIRE_CUDNN=1 but cuDNN is unavailable: {e}"
            );
            println!("skipping: {e}");
            None
        }
    }
}

/// A bf16 device buffer of `n` normal(0, 1) values.
fn random(gpu: &Gpu, rng: &mut Rng, n: usize) -> Mat {
    Mat::new(gpu, Dtype::Bf16, &rng.normal_vec(n, 1.0))
}

/// A bf16 device buffer of NaN, so unwritten outputs fail the checks.
fn poison(gpu: &Gpu, n: usize) -> Mat {
    Mat::poison(gpu, Dtype::Bf16, n)
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    // An exactly-zero reference (dq and dk at T=1: each query sees one key, so dS = 0) is
    // measured against an RMS floor of 1e-3 instead of 0: rounding noise passes, any real error
    // (O(1) values) does not.
    rel_err_floor(got, want, 1e-6 * want.len() as f64)
}

fn check(what: &str, tol: f64, got: &[f64], want: &[f64]) {
    check_err(what, tol, rel_err(got, want));
}

/// Columns `[off, off + width)` of each of `rows` rows of a row-strided buffer.
fn cols(x: &[f64], rows: usize, ld: usize, off: usize, width: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|r| x[r * ld + off..r * ld + off + width].to_vec())
        .collect()
}

// ---------- reference ----------

struct Ref {
    o: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// f64 attention over row-strided q/k/v/dO buffers whose heads start at column offsets
/// `offs = (q, k, v)`; gradients come back in buffers shaped like their inputs. q/k heads are
/// `head_dim` wide, v/o/dO heads `v_head_dim`.
fn reference(
    s: &AttnShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    offs: [usize; 3],
) -> Ref {
    let (bn, tn, hn, d, dv) = (s.batch, s.seq, s.heads, s.head_dim, s.v_head_dim);
    let group = hn / s.kv_heads;
    let [oq, ok, ov] = offs;
    let mut r = Ref {
        o: vec![0.0; bn * tn * s.ldo],
        lse: vec![0.0; bn * hn * tn],
        dq: vec![0.0; q.len()],
        dk: vec![0.0; k.len()],
        dv: vec![0.0; v.len()],
    };
    for b in 0..bn {
        for h in 0..hn {
            let g = h / group;
            for i in 0..tn {
                let qi = &q[(b * tn + i) * s.ldq + oq + h * d..][..d];
                let vis: Vec<usize> = (0..tn)
                    .filter(|&j| (!s.causal || j <= i) && (s.window == 0 || i < j + s.window))
                    .collect();
                let krow = |j: usize| &k[(b * tn + j) * s.ldk + ok + g * d..][..d];
                let vrow = |j: usize| &v[(b * tn + j) * s.ldv + ov + g * dv..][..dv];
                let sc: Vec<f64> = vis
                    .iter()
                    .map(|&j| {
                        qi.iter().zip(krow(j)).map(|(a, c)| a * c).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                r.lse[(b * hn + h) * tn + i] = mx + z.ln();
                let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / z).collect();
                let doi = &dout[(b * tn + i) * s.ldo + h * dv..][..dv];
                let mut oi = vec![0.0; dv];
                for (pi, &j) in p.iter().zip(&vis) {
                    for (o, x) in oi.iter_mut().zip(vrow(j)) {
                        *o += pi * x;
                    }
                }
                let delta: f64 = oi.iter().zip(doi).map(|(a, c)| a * c).sum();
                r.o[(b * tn + i) * s.ldo + h * dv..][..dv].copy_from_slice(&oi);
                for (pi, &j) in p.iter().zip(&vis) {
                    let dp: f64 = doi.iter().zip(vrow(j)).map(|(a, c)| a * c).sum();
                    let ds = pi * (dp - delta) * s.scale as f64;
                    let dq = &mut r.dq[(b * tn + i) * s.ldq + oq + h * d..][..d];
                    for (x, kx) in dq.iter_mut().zip(krow(j)) {
                        *x += ds * kx;
                    }
                    let dk = &mut r.dk[(b * tn + j) * s.ldk + ok + g * d..][..d];
                    for (x, qx) in dk.iter_mut().zip(qi) {
                        *x += ds * qx;
                    }
                    let dvj = &mut r.dv[(b * tn + j) * s.ldv + ov + g * dv..][..dv];
                    for (x, gx) in dvj.iter_mut().zip(doi) {
                        *x += pi * gx;
                    }
                }
            }
        }
    }
    r
}

// ---------- cases ----------

/// One case: q/k/v either separate buffers or column views of one fused `[B·T, (H+KV)·D + KV·Dv]`
/// buffer (then dq/dk/dv are views of one fused gradient too). Checks cuDNN against the f64
/// reference, and cuDNN's lse against the own kernels'.
fn run_case(
    gpu: &Arc<Gpu>,
    attn: &CudnnAttention,
    own: &Kernels,
    rng: &mut Rng,
    tag: &str,
    s: AttnShape,
    fused: bool,
) {
    let rows = s.batch * s.seq;
    let (hd, kd) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    // o/dO and v/dv widths: the value head dim's
    let (od, vd) = (s.heads * s.v_head_dim, s.kv_heads * s.v_head_dim);
    let info = match attn.prepare(&s) {
        Ok(i) => i,
        Err(e) => panic!("{tag}: cuDNN rejects the shape: {e}"),
    };
    println!(
        "{tag}: engines fwd {} bwd {}, workspace {} / {} bytes",
        info.fwd_engine, info.bwd_engine, info.fwd_workspace, info.bwd_workspace
    );
    let ws = gpu
        .zeros::<u8>(info.fwd_workspace.max(info.bwd_workspace).max(1))
        .unwrap();
    // inputs and gradient buffers, with the element offsets of q, k, v inside them
    let (qb, kb, vb, gq, gk, gv, offs);
    if fused {
        let w = s.ldq;
        assert!(s.ldk == w && s.ldv == w && w == hd + kd + vd);
        let qkv = random(gpu, rng, rows * w);
        let g = poison(gpu, rows * w);
        offs = [0, hd, hd + kd];
        qb = qkv;
        kb = None;
        vb = None;
        gq = g;
        gk = None;
        gv = None;
    } else {
        offs = [0, 0, 0];
        qb = random(gpu, rng, rows * s.ldq);
        kb = Some(random(gpu, rng, rows * s.ldk));
        vb = Some(random(gpu, rng, rows * s.ldv));
        gq = poison(gpu, rows * s.ldq);
        gk = Some(poison(gpu, rows * s.ldk));
        gv = Some(poison(gpu, rows * s.ldv));
    }
    let kbuf = kb.as_ref().unwrap_or(&qb);
    let vbuf = vb.as_ref().unwrap_or(&qb);
    let gkbuf = gk.as_ref().unwrap_or(&gq);
    let gvbuf = gv.as_ref().unwrap_or(&gq);
    let (qp, kp, vp) = (qb.at(offs[0]), kbuf.at(offs[1]), vbuf.at(offs[2]));
    let (dqp, dkp, dvp) = (gq.at(offs[0]), gkbuf.at(offs[1]), gvbuf.at(offs[2]));
    let dout = random(gpu, rng, rows * s.ldo);
    let o = poison(gpu, rows * s.ldo);
    let lse = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();

    attn.fwd(&s, o.ptr(), lse.ptr(), qp, kp, vp, ws.ptr(), ws.len())
        .unwrap();
    let delta = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
    // Garbage in the accumulator must not matter (cuDNN clears or the path zeroes it).
    let dq_acc = gpu
        .upload(&vec![f32::NAN; rows * s.heads * s.head_dim])
        .unwrap();
    attn.bwd(
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
        ws.ptr(),
        ws.len(),
    )
    .unwrap();
    gpu.sync().unwrap();

    let r = reference(&s, &qb.host, &kbuf.host, &vbuf.host, &dout.host, offs);
    let got_o = o.get(gpu);
    check(
        &format!("cudnn {tag} o"),
        1e-2,
        &cols(&got_o, rows, s.ldo, 0, od),
        &cols(&r.o, rows, s.ldo, 0, od),
    );
    let got_lse = getf(gpu, &lse);
    check(&format!("cudnn {tag} lse"), 1e-4, &got_lse, &r.lse);
    let (g_q, g_k, g_v) = (gq.get(gpu), gkbuf.get(gpu), gvbuf.get(gpu));
    check(
        &format!("cudnn {tag} dq"),
        1e-2,
        &cols(&g_q, rows, s.ldq, offs[0], hd),
        &cols(&r.dq, rows, s.ldq, offs[0], hd),
    );
    check(
        &format!("cudnn {tag} dk"),
        1e-2,
        &cols(&g_k, rows, s.ldk, offs[1], kd),
        &cols(&r.dk, rows, s.ldk, offs[1], kd),
    );
    check(
        &format!("cudnn {tag} dv"),
        1e-2,
        &cols(&g_v, rows, s.ldv, offs[2], vd),
        &cols(&r.dv, rows, s.ldv, offs[2], vd),
    );

    // The own kernels on the same inputs: same lse convention, outputs agree.
    let o2 = poison(gpu, rows * s.ldo);
    let lse2 = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
    own.attn_fwd(Dtype::Bf16, &s, o2.ptr(), lse2.ptr(), qp, kp, vp)
        .unwrap();
    gpu.sync().unwrap();
    let own_lse = getf(gpu, &lse2);
    check(&format!("cudnn-vs-own {tag} lse"), 1e-3, &got_lse, &own_lse);
    check(
        &format!("cudnn-vs-own {tag} o"),
        1e-2,
        &cols(&got_o, rows, s.ldo, 0, od),
        &cols(&o2.get(gpu), rows, s.ldo, 0, od),
    );
    // The paths interchange: cuDNN's backward from the own forward's o and lse.
    attn.bwd(
        &s,
        dqp,
        dkp,
        dvp,
        dq_acc.ptr(),
        delta.ptr(),
        dout.ptr(),
        o2.ptr(),
        lse2.ptr(),
        qp,
        kp,
        vp,
        ws.ptr(),
        ws.len(),
    )
    .unwrap();
    gpu.sync().unwrap();
    let g_q = gq.get(gpu);
    check(
        &format!("cudnn-bwd-from-own-fwd {tag} dq"),
        1e-2,
        &cols(&g_q, rows, s.ldq, offs[0], hd),
        &cols(&r.dq, rows, s.ldq, offs[0], hd),
    );
}

#[test]
#[ignore = "needs a CUDA GPU and cuDNN 9"]
fn cudnn_attention_matches_f64_and_own_kernels() {
    let Some((gpu, attn)) = setup() else { return };
    let own = Kernels::load(&gpu, "cudnn_test", &[64, 128], Default::default())
        .expect("kernel library compiles");
    let mut rng = Rng::fresh("cudnn attention");
    let cases: Vec<(&str, AttnShape, bool)> = vec![
        (
            "mha d64 causal T150",
            AttnShape::dense(2, 150, 4, 4, 64),
            false,
        ),
        (
            "gqa d128 causal T200",
            AttnShape::dense(1, 200, 4, 2, 128),
            false,
        ),
        (
            "mqa d64 causal T77",
            AttnShape::dense(2, 77, 4, 1, 64),
            false,
        ),
        ("gqa d64 causal T1", AttnShape::dense(3, 1, 4, 2, 64), false),
        (
            "gqa d128 non-causal T100",
            AttnShape {
                causal: false,
                ..AttnShape::dense(1, 100, 4, 2, 128)
            },
            false,
        ),
        (
            "mqa d64 window 37 T130",
            AttnShape {
                window: 37,
                ..AttnShape::dense(2, 130, 4, 1, 64)
            },
            false,
        ),
        (
            "gqa d128 causal T256 (tile multiple)",
            AttnShape::dense(1, 256, 8, 2, 128),
            false,
        ),
    ];
    // Every case runs even when one fails, so one GPU run reports them all.
    let mut failed = Vec::new();
    let mut run = |tag: &str, s: AttnShape, fused: bool, rng: &mut Rng| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&gpu, &attn, &own, rng, tag, s, fused)
        }));
        if r.is_err() {
            failed.push(tag.to_string());
        }
    };
    for (tag, s, fused) in cases {
        run(tag, s, fused, &mut rng);
    }
    // q, k, v as views into one fused projection [B·T, (H + 2·KV)·D], gradients likewise.
    for (h, kv, d, t) in [(4, 2, 64, 80), (8, 2, 128, 129)] {
        let w = (h + 2 * kv) * d;
        let s = AttnShape {
            ldq: w,
            ldk: w,
            ldv: w,
            ..AttnShape::dense(2, t, h, kv, d)
        };
        run(
            &format!("fused-qkv h{h} kv{kv} d{d} T{t}"),
            s,
            true,
            &mut rng,
        );
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// A dense shape whose value heads are `dv` wide (q/k heads `d`): v `[B·T, KV·Dv]`, o
/// `[B·T, H·Dv]`.
fn split(b: usize, t: usize, h: usize, kv: usize, d: usize, dv: usize) -> AttnShape {
    AttnShape {
        v_head_dim: dv,
        ldv: kv * dv,
        ldo: h * dv,
        ..AttnShape::dense(b, t, h, kv, d)
    }
}

#[test]
#[ignore = "needs a CUDA GPU and cuDNN 9"]
fn cudnn_attention_takes_a_value_head_dim_apart() {
    let Some((gpu, attn)) = setup() else { return };
    let own = Kernels::load(&gpu, "cudnn_split_test", &[64, 128], Default::default())
        .expect("kernel library compiles");
    let mut rng = Rng::fresh("cudnn split head dims");
    let mut cases: Vec<(String, AttnShape, bool)> = vec![
        (
            "v below qk 96/64 gqa causal T90".into(),
            split(2, 90, 4, 2, 96, 64),
            false,
        ),
        (
            "v above qk 64/128 mqa window 29 T77".into(),
            AttnShape {
                window: 29,
                ..split(2, 77, 4, 1, 64, 128)
            },
            false,
        ),
        (
            "deepseek 192/128 causal T130".into(),
            split(1, 130, 4, 4, 192, 128),
            false,
        ),
        (
            "deepseek 192/128 non-causal T64".into(),
            AttnShape {
                causal: false,
                ..split(2, 64, 2, 2, 192, 128)
            },
            false,
        ),
        (
            "v below qk 96/64 T1".into(),
            split(3, 1, 4, 2, 96, 64),
            false,
        ),
    ];
    // The trainer's latent-attention layout: q, k, v as column views of one [q; k; v]
    // projection [B·T, H·D + KV·D + KV·Dv], gradients likewise.
    for (h, kv, d, dv, t) in [(4, 4, 192, 128, 100), (4, 2, 96, 64, 67)] {
        let w = (h + kv) * d + kv * dv;
        let s = AttnShape {
            ldq: w,
            ldk: w,
            ldv: w,
            ..split(2, t, h, kv, d, dv)
        };
        cases.push((format!("fused-qkv h{h} kv{kv} d{d}/{dv} T{t}"), s, true));
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    for (tag, s, fused) in cases {
        // A library or GPU that cannot take these head dims refuses them with a reason (the
        // trainer then keeps the own kernels); say so instead of failing.
        if let Some(why) = attn.version_reason(&s, true) {
            println!("skipping {tag}: {why}");
            continue;
        }
        ran += 1;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&gpu, &attn, &own, &mut rng, &tag, s, fused)
        }));
        if r.is_err() {
            failed.push(tag);
        }
    }
    println!("{ran} split-head-dim cases ran");
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// `[B·T, heads·w]` rows (head h at column h·w) as PyTorch's head-major `[B, heads, T, w]`, or
/// back (`back`).
fn head_major(x: &[f64], b: usize, t: usize, heads: usize, w: usize, back: bool) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..heads {
                let rows = ((bi * t + ti) * heads + h) * w;
                let hm = ((bi * heads + h) * t + ti) * w;
                let (from, to) = if back { (hm, rows) } else { (rows, hm) };
                out[to..to + w].copy_from_slice(&x[from..from + w]);
            }
        }
    }
    out
}

/// PyTorch's head-major tensors through cuDNN (`AttnShape::head_major`): the outputs, put back
/// in rows, against the f64 reference on the rows; the own kernels refuse the layout.
#[test]
#[ignore = "needs a CUDA GPU and cuDNN 9"]
fn cudnn_attention_takes_head_major_tensors() {
    let Some((gpu, attn)) = setup() else { return };
    let own = Kernels::load(&gpu, "cudnn_hm_test", &[64, 128], Default::default())
        .expect("kernel library compiles");
    let mut rng = Rng::fresh("cudnn head-major");
    let mut failed = Vec::new();
    for (b, t, h, kv, d, causal) in [
        (2, 150, 4, 4, 64, true),
        (2, 97, 8, 2, 64, true),
        (1, 200, 4, 2, 128, true),
        (2, 64, 4, 1, 128, false),
    ] {
        let rows_shape = AttnShape {
            causal,
            ..AttnShape::dense(b, t, h, kv, d)
        };
        let s = AttnShape {
            head_major: true,
            ..rows_shape
        };
        let tag = format!("head-major B{b} T{t} H{h} KV{kv} D{d} causal={causal}");
        let rows = b * t;
        // Inputs drawn in rows, uploaded head-major; the reference reads the rounded values.
        let up = |rng: &mut Rng, heads: usize| {
            let vals = rng.normal_vec(rows * heads * d, 1.0);
            let m = Mat::new(&gpu, Dtype::Bf16, &head_major(&vals, b, t, heads, d, false));
            let host_rows = head_major(&m.host, b, t, heads, d, true);
            (m, host_rows)
        };
        let (q, qr) = up(&mut rng, h);
        let (k, kr) = up(&mut rng, kv);
        let (v, vr) = up(&mut rng, kv);
        let (dout, dor) = up(&mut rng, h);
        let (o, dq) = (poison(&gpu, rows * h * d), poison(&gpu, rows * h * d));
        let (dk, dv) = (poison(&gpu, rows * kv * d), poison(&gpu, rows * kv * d));
        let lse = gpu.zeros::<f32>(b * h * t).unwrap();
        let delta = gpu.zeros::<f32>(b * h * t).unwrap();
        let dq_acc = gpu.zeros::<f32>(rows * h * d).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let info = attn.prepare(&s).unwrap_or_else(|e| panic!("{tag}: {e}"));
            let ws = gpu
                .zeros::<u8>(info.fwd_workspace.max(info.bwd_workspace).max(1))
                .unwrap();
            attn.fwd(
                &s,
                o.ptr(),
                lse.ptr(),
                q.ptr(),
                k.ptr(),
                v.ptr(),
                ws.ptr(),
                ws.len(),
            )
            .unwrap();
            attn.bwd(
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
                k.ptr(),
                v.ptr(),
                ws.ptr(),
                ws.len(),
            )
            .unwrap();
            gpu.sync().unwrap();
            let want = reference(&rows_shape, &qr, &kr, &vr, &dor, [0, 0, 0]);
            let back = |m: &Mat, heads: usize| head_major(&m.get(&gpu), b, t, heads, d, true);
            check(&format!("{tag} o"), 1e-2, &back(&o, h), &want.o);
            let got_lse = getf(&gpu, &lse);
            check(&format!("{tag} lse"), 1e-4, &got_lse, &want.lse);
            check(&format!("{tag} dq"), 1e-2, &back(&dq, h), &want.dq);
            check(&format!("{tag} dk"), 1e-2, &back(&dk, kv), &want.dk);
            check(&format!("{tag} dv"), 1e-2, &back(&dv, kv), &want.dv);
        }));
        if r.is_err() {
            failed.push(tag);
        }
        // The own kernels read rows only: they refuse the layout instead of misreading it.
        let refused = own.attn_fwd(
            Dtype::Bf16,
            &s,
            o.ptr(),
            lse.ptr(),
            q.ptr(),
            k.ptr(),
            v.ptr(),
        );
        assert!(refused.is_err(), "the own forward took head-major tensors");
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

#[test]
#[ignore = "needs a CUDA GPU and cuDNN 9"]
fn cudnn_plans_are_cached_and_workspace_is_checked() {
    let Some((gpu, attn)) = setup() else { return };
    let s = AttnShape::dense(1, 64, 2, 2, 64);
    let t0 = std::time::Instant::now();
    let a = attn.prepare(&s).unwrap();
    let first = t0.elapsed();
    let t1 = std::time::Instant::now();
    let b = attn.prepare(&s).unwrap();
    let again = t1.elapsed();
    println!("plan build {first:?}, cached lookup {again:?}");
    assert_eq!(a, b);
    assert!(again < first, "a cached plan should not be rebuilt");
    // A workspace one byte short is refused before anything runs.
    let rows = s.batch * s.seq;
    let q = gpu.zeros::<u16>(rows * s.ldq).unwrap();
    let lse = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
    let need = a.fwd_workspace.max(a.bwd_workspace);
    let ws = gpu.zeros::<u8>(need.max(1)).unwrap();
    if a.bwd_workspace > 0 {
        let e = attn
            .bwd(
                &s,
                q.ptr(),
                q.ptr(),
                q.ptr(),
                lse.ptr(),
                lse.ptr(),
                q.ptr(),
                q.ptr(),
                lse.ptr(),
                q.ptr(),
                q.ptr(),
                q.ptr(),
                ws.ptr(),
                a.bwd_workspace - 1,
            )
            .unwrap_err();
        assert!(matches!(e, CudnnError::Workspace { .. }), "{e}");
    } else {
        println!("the backward plan needs no workspace: nothing to refuse");
    }
    // Unsupported options are refused with a reason, not run.
    let capped = AttnShape { softcap: 50.0, ..s };
    let e = attn
        .fwd(
            &capped,
            q.ptr(),
            lse.ptr(),
            q.ptr(),
            q.ptr(),
            q.ptr(),
            ws.ptr(),
            ws.len(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("softcap"), "{e}");
}

#[test]
#[ignore = "needs a CUDA GPU and cuDNN 9"]
fn engine_configs_chosen_by_timing_persist_across_handles() {
    let Some((gpu, first)) = setup() else { return };
    // A shape no other test plans: on a fresh kernel cache its configs are timed here.
    let s = AttnShape::dense(2, 384, 4, 2, 64);
    let a = first.prepare(&s).unwrap();
    for t in first.tuned() {
        println!(
            "timed: config {} of {} chosen, the first {:.4} ms, the chosen {:.4} ms ({})",
            t.chosen, t.candidates, t.first_ms, t.best_ms, t.key
        );
    }
    // A second handle (what a later process does) reads the choices instead of timing again,
    // and computes the same bits.
    let second = CudnnAttention::new(&gpu).unwrap();
    let b = second.prepare(&s).unwrap();
    assert_eq!(a, b, "the second handle chose other configs");
    assert!(
        second.tuned().is_empty(),
        "timed again: {:?}",
        second.tuned()
    );
    println!(
        "configs: forward {}, backward {}",
        a.fwd_config, a.bwd_config
    );
    let mut rng = Rng::fresh("cudnn config persistence");
    let rows = s.batch * s.seq;
    let q = random(&gpu, &mut rng, rows * s.ldq);
    let k = random(&gpu, &mut rng, rows * s.ldk);
    let v = random(&gpu, &mut rng, rows * s.ldv);
    let ws = gpu
        .zeros::<u8>(a.fwd_workspace.max(a.bwd_workspace).max(1))
        .unwrap();
    let run = |attn: &CudnnAttention| {
        let o = gpu.zeros::<u16>(rows * s.ldo).unwrap();
        let lse = gpu.zeros::<f32>(s.batch * s.heads * s.seq).unwrap();
        attn.fwd(
            &s,
            o.ptr(),
            lse.ptr(),
            q.ptr(),
            k.ptr(),
            v.ptr(),
            ws.ptr(),
            ws.len(),
        )
        .unwrap();
        (gpu.download(&o).unwrap(), gpu.download(&lse).unwrap())
    };
    let (o1, l1) = run(&first);
    let (o2, l2) = run(&second);
    assert_eq!(o1, o2);
    assert!(l1.iter().zip(&l2).all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// The trainer's choice between cuDNN's forward and the own one (the Hopper kernel where it
/// runs): timed once, persisted, and read back by a second handle without timing.
#[test]
#[ignore = "needs a CUDA GPU and cuDNN 9"]
fn own_forward_choice_is_timed_once_and_persists() {
    let Some((gpu, first)) = setup() else { return };
    let own = Kernels::load(&gpu, "cudnn_choice_test", &[64], Default::default())
        .expect("own attention kernels");
    // A shape no other test plans, on the trainer's fused layout.
    let mut s = AttnShape::dense(2, 320, 4, 2, 64);
    let ld = (4 + 2 * 2) * 64;
    (s.ldq, s.ldk, s.ldv) = (ld, ld, ld);
    let kernel = own.attn_fwd_kernel(Dtype::Bf16, &s);
    let tag = format!("test {}", kernel.name());
    let mut runs = 0;
    let faster = first.own_forward_faster(&s, &tag, |[o, lse, q, k, v]| {
        runs += 1;
        (own.attn_fwd(Dtype::Bf16, &s, o, lse, q, k, v)).map_err(|e| e.to_string())
    });
    let timed = first.tuned();
    println!(
        "{} own forward faster: {faster} ({runs} runs; {timed:?})",
        kernel.name()
    );
    // Timed here on a fresh kernel cache; a cache that already holds the choice is read.
    if runs > 0 {
        assert!(
            timed
                .iter()
                .any(|t| t.key.contains("own forward test") && t.candidates == 2),
            "no own-forward choice recorded: {timed:?}"
        );
    }
    let second = CudnnAttention::new(&gpu).unwrap();
    let again = second.own_forward_faster(&s, &tag, |_| panic!("timed again"));
    assert_eq!(faster, again, "the second handle read another choice");
}

#[test]
fn probe_is_clean_without_panicking() {
    // Runs everywhere: either a usable library or an error that says where it looked.
    match probe() {
        Ok(lib) => println!("cuDNN {} at {}", lib.version_string(), lib.path),
        Err(e) => {
            let text = e.to_string();
            println!("no cuDNN: {text}");
            assert!(text.contains("cuDNN"), "{text}");
        }
    }
}
