//! The attention kernels (forward and backward, both paths, GQA, windows, softcap, ALiBi) against
//! an f64 reference.

use super::{DTYPES, Rng, T, check, f32buf, from_bf16, setup, to_bf16};
use modelspec_runtime::cuda::{
    AttnShape, Dtype, FwdKernel, Gpu, HopperLaunch, HopperSchedule, Kernels,
};
use modelspec_runtime::ops::attention::alibi_slopes;
use std::sync::Arc;

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
                    .filter(|&j| {
                        (!s.causal || j <= i)
                            && (s.window == 0 || i < j + s.window)
                            && (s.chunk == 0 || i / s.chunk == j / s.chunk)
                    })
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
    let q = T::new(gpu, dt, &rng.normal_vec(rows * s.ldq, 1.0));
    let kk = T::new(gpu, dt, &rng.normal_vec(rows * s.ldk, 1.0));
    let v = T::new(gpu, dt, &rng.normal_vec(rows * s.ldv, 1.0));
    let dout = T::new(gpu, dt, &rng.normal_vec(rows * s.ldo, 1.0));
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
    let bwd = if k.attn_bwd_uses_hopper(dt, &s) {
        "hopper"
    } else if k.attn_uses_mma(dt, &s) {
        "mma"
    } else {
        "simple"
    };
    let path = format!("fwd {}, bwd {bwd}", k.attn_fwd_kernel(dt, &s).name());
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
        let qkv = T::new(&gpu, dt, &rng.normal_vec(rows * w, 1.0));
        let dout = T::new(&gpu, dt, &rng.normal_vec(rows * s.ldo, 1.0));
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

/// The kernels on a Hopper GPU (compute capability 9.0); `None`, with a message, elsewhere.
fn hopper_setup() -> Option<(Arc<Gpu>, Kernels)> {
    let (gpu, k) = setup()?;
    if gpu.arch() != "compute_90" {
        println!(
            "skipping: the Hopper kernels need compute capability 9.0 ({})",
            gpu.arch()
        );
        return None;
    }
    Some((gpu, k))
}

/// The Hopper forward (wgmma, bulk tensor copies) where the GPU is a Hopper, in its four
/// schedules on the persistent grid, plain with one block a tile and plain with 192-query tiles,
/// then the mma.sync forward on the same cases with it turned off: lengths that are not multiples of the 128-row
/// tiles, several key tiles, a single query, GQA and MQA, both head dims, non-causal, a window, a
/// softcap, chunks that split tiles (Llama 4), ALiBi.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_hopper_forward_matches_f64() {
    let Some((gpu, mut k)) = hopper_setup() else {
        return;
    };
    let mut rng = Rng::fresh("attention_hopper");
    let dense = AttnShape::dense;
    let cases: Vec<(&str, AttnShape, bool)> = vec![
        ("mha d64 T300", dense(2, 300, 4, 4, 64), false),
        ("gqa d128 T384", dense(1, 384, 8, 2, 128), false),
        // (T = 1 would give an exactly-zero dq and dk reference, which a relative error cannot
        // measure; cuda_cudnn checks this forward at T = 1 against cuDNN's.)
        ("mha d64 T5", dense(2, 5, 2, 2, 64), false),
        (
            "gqa d64 T420 non-causal",
            AttnShape {
                causal: false,
                ..dense(1, 420, 4, 2, 64)
            },
            false,
        ),
        (
            "mqa d128 T260 window 100 softcap 30",
            AttnShape {
                window: 100,
                softcap: 30.0,
                ..dense(1, 260, 4, 1, 128)
            },
            false,
        ),
        (
            "gqa d64 T333 chunk 96",
            AttnShape {
                chunk: 96,
                ..dense(1, 333, 4, 2, 64)
            },
            false,
        ),
        ("alibi mha d128 T200", dense(1, 200, 3, 3, 128), true),
        // More 128-query tiles than an H100 or H200 has multiprocessors (192, 144): the
        // persistent grid's blocks take several tiles each.
        ("gqa d64 B4 H16 T300", dense(4, 300, 16, 4, 64), false),
        ("gqa d128 B3 H16 T260", dense(3, 260, 16, 8, 128), false),
    ];
    // How the Hopper kernel runs; None: the Hopper kernel off.
    let plain = HopperLaunch::default();
    let runs = [
        Some(plain),
        Some(HopperLaunch {
            schedule: HopperSchedule::Overlap,
            ..plain
        }),
        Some(HopperLaunch {
            schedule: HopperSchedule::OverlapPoly,
            ..plain
        }),
        Some(HopperLaunch {
            persistent: false,
            ..plain
        }),
        None,
        // Last, the launches built after the last device call (a hang stops only them).
        Some(HopperLaunch {
            schedule: HopperSchedule::PingPong,
            ..plain
        }),
        Some(HopperLaunch {
            wide: true,
            ..plain
        }),
    ];
    for run in runs {
        k.set_attn_hopper(run.is_some());
        k.set_attn_hopper_launch(run.unwrap_or_default());
        println!("hopper run: {run:?}");
        for (tag, s, alibi) in &cases {
            let want = run.map_or(FwdKernel::Mma, |r| FwdKernel::Hopper(r.schedule));
            assert_eq!(k.attn_fwd_kernel(Dtype::Bf16, s), want, "{tag}");
            let slopes = alibi.then(|| alibi_slopes(s.heads));
            run_attention_case_alibi(&gpu, &k, &mut rng, Dtype::Bf16, *s, tag, slopes.as_deref());
        }
    }
}

/// The Hopper backward's first step (`MODELSPEC_ATTN_HOPPER_BWD`: bf16, D64, causal or not, no
/// window, chunk, softcap or ALiBi) against f64 where the GPU is a Hopper: lengths that are not
/// multiples of the 128-key and 64-query tiles, a single key tile, GQA and MQA, several key tiles
/// and batches; the cases it refuses run the mma.sync backward beside it.
#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_hopper_backward_matches_f64() {
    let Some((gpu, mut k)) = hopper_setup() else {
        return;
    };
    k.set_attn_hopper_bwd(true);
    let mut rng = Rng::fresh("attention_hopper_bwd");
    let dense = AttnShape::dense;
    let cases: Vec<(&str, AttnShape, bool)> = vec![
        ("mha d64 T300", dense(2, 300, 4, 4, 64), true),
        ("mha d64 T5", dense(2, 5, 2, 2, 64), true),
        (
            "gqa d64 T420 non-causal",
            AttnShape {
                causal: false,
                ..dense(1, 420, 4, 2, 64)
            },
            true,
        ),
        ("mqa d64 T200", dense(1, 200, 4, 1, 64), true),
        ("gqa d64 B2 H8 T700", dense(2, 700, 8, 2, 64), true),
        (
            "gqa d64 T333 chunk 96 (refused)",
            AttnShape {
                chunk: 96,
                ..dense(1, 333, 4, 2, 64)
            },
            false,
        ),
        ("gqa d128 T384 (refused)", dense(1, 384, 8, 2, 128), false),
    ];
    for (tag, s, hopper) in &cases {
        assert_eq!(k.attn_bwd_uses_hopper(Dtype::Bf16, s), *hopper, "{tag}");
        run_attention_case_alibi(&gpu, &k, &mut rng, Dtype::Bf16, *s, tag, None);
    }
}
