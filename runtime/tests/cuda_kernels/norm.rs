//! The norm kernels (forward and backward, every kind, with the weight and bias gradients) against
//! f64 references: the one-block-a-row kernels (a library without a model width, and the widths
//! of a library that are not its own) and the one-warp-a-row kernels (rows of the library's own
//! width, `MS_D_MODEL`), each on 16-byte-aligned tensors (vector path) and on tensors one element
//! into their buffers (element path), with and without each optional input and output, on a row
//! count that is not a multiple of the warp kernels' 8 rows a block.

use super::{DTYPES, Rng, T, check, getf, setup};
use modelspec_runtime::cuda::{Dtype, Gpu, Kernels, NormKind, ReduceScratch};
use std::collections::BTreeMap;

/// Which optional tensors a case passes (the others are 0).
#[derive(Clone, Copy, Debug)]
struct Case {
    kind: NormKind,
    offset: f64,
    w: bool,
    b: bool,
    res: bool,
    r_out: bool,
    dres: bool,
}

const fn case(kind: NormKind, offset: f64, flags: [bool; 5]) -> Case {
    let [w, b, res, r_out, dres] = flags;
    Case {
        kind,
        offset,
        w,
        b,
        res,
        r_out,
        dres,
    }
}

/// Flags: [w, b, res, r_out, dres].
const CASES: [Case; 7] = [
    case(NormKind::Rms, 0.0, [true, false, true, true, true]),
    case(NormKind::Rms, 1.0, [true, false, false, false, false]),
    case(NormKind::Rms, 0.0, [false, false, true, true, false]),
    case(NormKind::Layer, 0.0, [true, true, true, true, true]),
    case(NormKind::Layer, 0.0, [false, false, true, false, true]),
    case(NormKind::Layer, 0.0, [true, true, false, true, false]),
    case(NormKind::Layer, 0.0, [false, true, false, false, true]),
];

/// Which tensors start one element into their buffer (so not 16-byte aligned).
#[derive(Clone, Copy, Debug)]
enum Shift {
    None,
    All,
    /// Only the weight and bias.
    Params,
    /// Only the outputs (y, r_out, dx).
    Outputs,
}

const SHIFTS: [Shift; 4] = [Shift::None, Shift::All, Shift::Params, Shift::Outputs];

/// Rows of every case: not a multiple of 8 (the warp kernels' rows a block).
const ROWS: usize = 37;

/// The library instantiated for model width `d_model` (no attention head dims: norms only).
fn library(gpu: &std::sync::Arc<Gpu>, d_model: usize) -> Kernels {
    let defines: BTreeMap<String, String> = [("MS_D_MODEL".to_string(), d_model.to_string())]
        .into_iter()
        .collect();
    let k = Kernels::load(gpu, &format!("norm_d{d_model}"), &[], defines)
        .expect("kernel library compiles");
    assert_eq!(k.d_model(), d_model);
    k
}

/// Runs norm_fwd and norm_bwd_dw (norm_bwd and norm_dw, or the one pass) on `n` fresh random rows
/// of width `c` and compares every output with the f64 reference; each runs twice and must
/// repeat bit for bit.
fn run_case(
    gpu: &Gpu,
    k: &Kernels,
    rng: &mut Rng,
    (dt, n, c): (Dtype, usize, usize),
    cs: Case,
    shift: Shift,
) {
    let eps = 1e-5;
    let (si, sp, so) = match shift {
        Shift::None => (0, 0, 0),
        Shift::All => (1, 1, 1),
        Shift::Params => (0, 1, 0),
        Shift::Outputs => (0, 0, 1),
    };
    let x = T::new_at(gpu, dt, &rng.normal_vec(n * c, 1.0), si);
    let res = T::new_at(gpu, dt, &rng.normal_vec(n * c, 1.0), si);
    let w = T::new_at(gpu, dt, &rng.normal_vec(c, 0.5), sp);
    let bias = T::new_at(gpu, dt, &rng.normal_vec(c, 0.5), sp);
    let dy = T::new_at(gpu, dt, &rng.normal_vec(n * c, 1.0), si);
    let dres = T::new_at(gpu, dt, &rng.normal_vec(n * c, 1.0), si);
    let nan = vec![f64::NAN; n * c];
    let y = T::new_at(gpu, dt, &nan, so);
    let r = T::new_at(gpu, dt, &nan, so);
    let dx = T::new_at(gpu, dt, &nan, so);
    let rstd = gpu.zeros::<f32>(n).unwrap();
    let mean = gpu.zeros::<f32>(n).unwrap();
    let dw = gpu.zeros::<f32>(c).unwrap();
    let db = gpu.zeros::<f32>(c).unwrap();
    let scratch = gpu.zeros::<u8>(ReduceScratch::bytes_for(c)).unwrap();
    let is_layer = cs.kind == NormKind::Layer;
    let on = |b: bool, p: u64| if b { p } else { 0 };
    let (wp, bp) = (on(cs.w, w.ptr()), on(cs.b, bias.ptr()));
    let fwd = || {
        k.norm_fwd(
            dt,
            cs.kind,
            y.ptr(),
            on(cs.r_out, r.ptr()),
            rstd.ptr(),
            mean.ptr(),
            x.ptr(),
            on(cs.res, res.ptr()),
            wp,
            bp,
            n,
            c,
            eps as f32,
            cs.offset as f32,
        )
        .unwrap()
    };
    fwd();
    let y_dev = y.get(gpu);
    fwd();
    assert!(
        y.get(gpu)
            .iter()
            .zip(&y_dev)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "norm forward does not repeat bit for bit"
    );
    // The residual the forward normalised: as the kernel stored it when it wrote r_out (rounded
    // in bf16), else x + res (the kernel's f32 sum). The backward reads it from a tensor: r_out,
    // else x, else a fresh copy of x + res as stored.
    let sum: Vec<f64> = (0..n * c)
        .map(|i| x.host[i] + if cs.res { res.host[i] } else { 0.0 })
        .collect();
    let r_fwd = if cs.r_out { r.get(gpu) } else { sum.clone() };
    let r_copy = T::new_at(gpu, dt, &sum, si);
    let r_bwd = if cs.r_out {
        &r
    } else if !cs.res {
        &x
    } else {
        &r_copy
    };
    let r_bwd_host = if cs.r_out {
        r_fwd.clone()
    } else {
        r_bwd.host.clone()
    };
    // The backward with the gradients (norm_bwd then norm_dw, or the one pass where the
    // library has it on), twice: dx and, into fresh sums, dw and db must repeat bit for bit.
    let dw2 = gpu.zeros::<f32>(c).unwrap();
    let db2 = gpu.zeros::<f32>(c).unwrap();
    let bwd = |dw: u64, db: u64| {
        k.norm_bwd_dw(
            dt,
            cs.kind,
            dx.ptr(),
            dy.ptr(),
            r_bwd.ptr(),
            wp,
            rstd.ptr(),
            mean.ptr(),
            on(cs.dres, dres.ptr()),
            on(cs.w, dw),
            on(cs.b, db),
            n,
            c,
            cs.offset as f32,
            ReduceScratch::new(scratch.ptr(), ReduceScratch::bytes_for(c)),
        )
        .unwrap()
    };
    bwd(dw2.ptr(), db2.ptr());
    let dx_dev = dx.get(gpu);
    bwd(dw.ptr(), db.ptr());
    let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(
        same(&dx.get(gpu), &dx_dev),
        "norm dx does not repeat bit for bit"
    );
    assert!(
        same(&getf(gpu, &dw), &getf(gpu, &dw2)),
        "norm dw does not repeat bit for bit"
    );
    assert!(
        same(&getf(gpu, &db), &getf(gpu, &db2)),
        "norm db does not repeat bit for bit"
    );
    // The gradients accumulate (`+=`, as the trainer relies on): a second call into dw2/db2
    // holds exactly twice the first call's sums (x + x == 2x in floating point).
    bwd(dw2.ptr(), db2.ptr());
    let twice = |v: Vec<f64>| v.iter().map(|x| 2.0 * x).collect::<Vec<f64>>();
    assert!(
        same(&getf(gpu, &dw2), &twice(getf(gpu, &dw))),
        "norm dw does not accumulate into its output"
    );
    assert!(
        same(&getf(gpu, &db2), &twice(getf(gpu, &db))),
        "norm db does not accumulate into its output"
    );
    let (mut ry, mut rdx, mut rdw, mut rdb) = (
        vec![0.0; n * c],
        vec![0.0; n * c],
        vec![0.0; c],
        vec![0.0; c],
    );
    let wf = |j: usize| if cs.w { cs.offset + w.host[j] } else { 1.0 };
    let stats = |row: &[f64]| {
        let mu = if is_layer {
            row.iter().sum::<f64>() / c as f64
        } else {
            0.0
        };
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        (mu, 1.0 / (var + eps).sqrt())
    };
    for i in 0..n {
        let rows = i * c..(i + 1) * c;
        let (mu, rs) = stats(&r_fwd[rows.clone()]);
        for j in 0..c {
            let b = if cs.b { bias.host[j] } else { 0.0 };
            ry[i * c + j] = (r_fwd[i * c + j] - mu) * rs * wf(j) + b;
        }
        let rowb = &r_bwd_host[rows];
        let (mu, rs) = stats(rowb);
        let xh: Vec<f64> = rowb.iter().map(|v| (v - mu) * rs).collect();
        let g: Vec<f64> = (0..c).map(|j| dy.host[i * c + j] * wf(j)).collect();
        let mg = if is_layer {
            g.iter().sum::<f64>() / c as f64
        } else {
            0.0
        };
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for j in 0..c {
            let dr = if cs.dres { dres.host[i * c + j] } else { 0.0 };
            rdx[i * c + j] = rs * (g[j] - mg - xh[j] * mgx) + dr;
            rdw[j] += dy.host[i * c + j] * xh[j];
            rdb[j] += dy.host[i * c + j];
        }
    }
    let tag = format!("norm {n} x {c} lib {} {cs:?} shift {shift:?}", k.d_model());

    if cs.r_out {
        check(&format!("{tag} residual"), dt, &r_fwd, &sum);
    }
    check(&format!("{tag} fwd"), dt, &y_dev, &ry);
    check(&format!("{tag} dx"), dt, &dx_dev, &rdx);
    if cs.w {
        check(&format!("{tag} dw"), dt, &getf(gpu, &dw), &rdw);
    }
    if cs.b {
        check(&format!("{tag} db"), dt, &getf(gpu, &db), &rdb);
    }
}

/// Every case on the one-block-a-row kernels: a library without a model width.
#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_forward_backward_matches_f64() {
    let Some((gpu, k)) = setup() else { return };
    let mut rng = Rng::fresh("norm");
    for dt in DTYPES {
        for c in [1000, 7] {
            for cs in CASES {
                for shift in SHIFTS {
                    run_case(&gpu, &k, &mut rng, (dt, ROWS, c), cs, shift);
                }
            }
        }
    }
}

/// Every case in libraries instantiated for a model width, through `norm_bwd` and `norm_dw` (the
/// one-pass backward off; its own tests follow): rows of that width run one warp a row where
/// `warp_rows` takes them (bf16 <= 1024, f32 <= 512 wide: 768 and 1024 bf16, 100 with idle lanes,
/// and in bf16 a width that is no multiple of the vector, so element by element even when
/// aligned), and one block a row where they do not (768 and 1024 f32, 2048 both), as other
/// widths of the same library do (the qk-norms' head dims); then the library's width again with
/// the warp rows off ([`Kernels::set_norm_warp_rows`]).
#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_warp_rows_match_f64() {
    let Some(gpu) = super::common::gpu::device() else {
        return;
    };
    let mut rng = Rng::fresh("norm_warp");
    for (d_model, other) in [(768, 1000), (1024, 64), (2048, 64), (100, 96)] {
        let mut k = library(&gpu, d_model);
        k.set_norm_fused_dw(false);
        for dt in DTYPES {
            for c in [d_model, other] {
                for cs in CASES {
                    for shift in SHIFTS {
                        run_case(&gpu, &k, &mut rng, (dt, ROWS, c), cs, shift);
                    }
                }
            }
        }
        // The library's width on one block a row (the compile-time-width block kernels that
        // wider models run).
        k.set_norm_warp_rows(false);
        for dt in DTYPES {
            for cs in CASES {
                for shift in [Shift::None, Shift::All] {
                    run_case(&gpu, &k, &mut rng, (dt, ROWS, d_model), cs, shift);
                }
            }
        }
    }
}

/// The one-pass backward with the weight and bias gradients (`Kernels::set_norm_fused_dw`): in
/// libraries where it serves the library's width (768 bf16: 3 vectors a lane; 100 f32: 25
/// vectors, idle lanes), on 37 rows (one chunk), 300 (5 chunks of 60: fewer groups than 8),
/// 1000 (16 chunks of 63: two per finishing group) and 2100 (33 chunks of 64: up to five per
/// group); misaligned tensors and the other dtype run norm_bwd + norm_dw through the same call.
#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_bwd_dw_matches_f64() {
    let Some(gpu) = super::common::gpu::device() else {
        return;
    };
    let mut rng = Rng::fresh("norm_bwd_dw");
    for d_model in [768, 100] {
        let mut k = library(&gpu, d_model);
        k.set_norm_fused_dw(true);
        for dt in DTYPES {
            for n in [ROWS, 300, 1000, 2100] {
                for cs in CASES {
                    for shift in [Shift::None, Shift::All] {
                        run_case(&gpu, &k, &mut rng, (dt, n, d_model), cs, shift);
                    }
                }
            }
        }
    }
}

/// The one-pass backward on the grid gpt2's training step runs (B16 T1024 = 16384 rows of 768:
/// the 256-chunk cap, 32 chunks a finishing group): 16637 rows are 256 chunks of 65 (warps of 9
/// or 8 rows, the last chunk 62), in bf16 at 768 and in f32 at 384 (3 vectors a lane both).
#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_bwd_dw_full_grid_matches_f64() {
    let Some(gpu) = super::common::gpu::device() else {
        return;
    };
    let mut rng = Rng::fresh("norm_bwd_dw_full_grid");
    for (d_model, dt) in [(768, Dtype::Bf16), (384, Dtype::F32)] {
        let mut k = library(&gpu, d_model);
        k.set_norm_fused_dw(true);
        for cs in [CASES[0], CASES[3]] {
            run_case(&gpu, &k, &mut rng, (dt, 16637, d_model), cs, Shift::None);
        }
    }
}
