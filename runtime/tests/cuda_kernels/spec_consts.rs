//! The activation and RoPE kernels of a library instantiated for a spec: the instance (from
//! modelspec-dsl's `kernel_instance`, as `--device cuda` builds it) carries `MS_D_FF` / `MS_ACT`
//! and `MS_N_HEADS` / `MS_N_KV_HEADS` / `MS_HEAD_DIM` / `MS_ROPE_DIMS`, and launches of exactly
//! those shapes run the kernels' compile-time-constant instantiations. Each is compared with the
//! CPU ops (`ops::activation`, `ops::rope`) on fresh random inputs: f32 within 1e-5 relative
//! (same formulas in f32 on both sides), bf16 within the harness's 1e-2 (inputs rounded to bf16
//! before the CPU sees them). Launches of other shapes in the same library (another width, another
//! kind, other heads or rotary dims) run the generic bodies and must match too; both vector and
//! element-wise activation paths run (a pointer one element off 16-byte alignment).

use super::{DTYPES, Rng, T, check};
use crate::common::gpu::{check_err, rel_err};
use modelspec_dsl::ir::{Ffn, ModelSpec, Position};
use modelspec_runtime::cuda::{Act, Dtype, Gpu, Kernels};
use modelspec_runtime::ops::activation::{self, Activation};
use modelspec_runtime::ops::rope::{self, RopeTable};
use std::sync::Arc;

/// The f32 tolerance against the CPU ops.
const F32_TOL: f64 = 1e-5;

/// Compares `got` with the CPU's `want`: f32 within [`F32_TOL`], bf16 within the harness's.
fn compare(what: &str, dt: Dtype, got: &[f64], want: &[f64]) {
    match dt {
        Dtype::F32 => check_err(&format!("{what} f32"), F32_TOL, rel_err(got, want)),
        Dtype::Bf16 => check(what, dt, got, want),
    }
}

/// The spec `text` parsed, and the library instantiated for it on `gpu` (its defines; no
/// attention head dims, which these kernels do not read, to keep the compile short).
fn spec_library(gpu: &Arc<Gpu>, text: &str) -> (ModelSpec, Kernels) {
    let spec = modelspec_dsl::mspec::parse(text, "spec_consts.mspec").expect("test spec parses");
    let inst = modelspec_dsl::codegen::kernel_instance(&spec);
    let k = Kernels::load(gpu, &inst.name, &[], inst.defines).expect("kernel library compiles");
    (spec, k)
}

/// A two-layer spec with the dense MLP `mlp` and the RoPE `rope` (d_model 64).
fn spec_text(name: &str, mlp: &str, attention: &str, rope: &str) -> String {
    format!(
        "model {name} {{\n vocab 64 d_model 64 layers 2 context 32\n norm rms(eps = 1e-5)\n \
         attention {{ {attention} }}\n position {rope}\n mlp {mlp}\n}}"
    )
}

// ---------- activations ----------

/// One activation launch (forward and backward) of `kind` over `n` rows of `hidden`, gate and up
/// as the halves of one `[n, 2 hidden]` projection (gated) or `[n, hidden]` rows, `offset`
/// elements into their buffers; compared with `ops::activation`.
fn act_case(
    gpu: &Gpu,
    k: &Kernels,
    rng: &mut Rng,
    dt: Dtype,
    kind: Act,
    hidden: usize,
    offset: usize,
) {
    let n = 37;
    let ld = if kind.is_gated() { 2 * hidden } else { hidden };
    let gu = T::new_at(gpu, dt, &rng.normal_vec(n * ld, 1.5), offset);
    let dout = T::new_at(gpu, dt, &rng.normal_vec(n * hidden, 1.0), offset);
    let out = T::new_at(gpu, dt, &vec![f64::NAN; n * hidden], offset);
    let dgu = T::new_at(gpu, dt, &vec![f64::NAN; n * ld], offset);
    let es = dt.size();
    let (gate, up) = (gu.ptr(), gu.ptr() + hidden as u64 * es);
    let up = if kind.is_gated() { up } else { 0 };
    let dup = if kind.is_gated() {
        dgu.ptr() + hidden as u64 * es
    } else {
        0
    };
    k.act_fwd(dt, kind, out.ptr(), gate, up, n, hidden, ld)
        .unwrap();
    k.act_bwd(
        dt,
        kind,
        dgu.ptr(),
        dup,
        dout.ptr(),
        gate,
        up,
        n,
        hidden,
        ld,
    )
    .unwrap();

    // The CPU ops in f32 on the values the device holds.
    let col = |m: &[f64], stride: usize, at: usize| -> Vec<f32> {
        (0..n * hidden)
            .map(|e| m[(e / hidden) * stride + at + e % hidden] as f32)
            .collect()
    };
    let g = col(&gu.host, ld, 0);
    let u = if kind.is_gated() {
        col(&gu.host, ld, hidden)
    } else {
        Vec::new()
    };
    let d: Vec<f32> = dout.host.iter().map(|&v| v as f32).collect();
    let f = Activation::of(mlp_kind(kind));
    let (mut ro, mut rdg, mut rdu) = (
        vec![0f32; n * hidden],
        vec![0f32; n * hidden],
        vec![0f32; n * hidden],
    );
    if kind.is_gated() {
        activation::forward_gated(f, &g, &u, &mut ro);
        activation::backward_gated(f, &g, &u, &d, &mut rdg, &mut rdu);
    } else {
        activation::forward(f, &g, &mut ro);
        activation::backward(f, &g, &d, &mut rdg);
    }
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let what = format!("act {kind:?} hidden {hidden} offset {offset}");
    compare(&format!("{what} fwd"), dt, &out.get(gpu), &wide(&ro));
    let got = dgu.get(gpu);
    compare(
        &format!("{what} dgate"),
        dt,
        &wide(&col(&got, ld, 0)),
        &wide(&rdg),
    );
    if kind.is_gated() {
        compare(
            &format!("{what} dup"),
            dt,
            &wide(&col(&got, ld, hidden)),
            &wide(&rdu),
        );
    }
}

/// The IR kind of a kernel activation.
fn mlp_kind(kind: Act) -> modelspec_dsl::ir::MlpKind {
    modelspec_dsl::ir::MlpKind::ALL
        .into_iter()
        .find(|&m| Act::from(m) == kind)
        .expect("every kernel activation has an IR kind")
}

/// The activation specs (the families' activations: gpt2's gelu_tanh, llama's swiglu, gemma's
/// geglu_tanh, at 264 wide: 8 | 264, so both dtypes vectorise) and, for each, a kind of another
/// code that runs the generic body at the same width.
const ACT_SPECS: [(&str, &str, Act); 3] = [
    ("spec_act_gelu_tanh", "gelu_tanh(hidden = 264)", Act::Gelu),
    ("spec_act_swiglu", "swiglu(hidden = 264)", Act::GegluTanh),
    (
        "spec_act_geglu_tanh",
        "geglu_tanh(hidden = 264)",
        Act::Swiglu,
    ),
];

/// The text of an activation spec of [`ACT_SPECS`].
fn act_spec(name: &str, mlp: &str) -> String {
    spec_text(name, mlp, "heads 4", "rope(theta = 10000)")
}

/// The text of the RoPE spec of `style` (`half_split` or `interleaved`): GQA 6/2 of head dim 32,
/// partial rotary (16 dims, as pythia / phi-2 rotate part of each head).
fn rope_spec(style: &str) -> String {
    spec_text(
        &format!("spec_rope_{style}"),
        "swiglu(hidden = 128)",
        "heads 6  kv_heads 2  head_dim 32",
        &format!("rope(theta = 10000, rotary_dims = 16, style = {style})"),
    )
}

/// Without a GPU: the specs of the cases below carry the defines the cases assume (so the
/// "specialised" launches really match the instance, and the generic ones really do not).
#[test]
fn the_case_specs_instantiate_the_defines_the_cases_assume() {
    for (name, mlp, other) in ACT_SPECS {
        let spec = modelspec_dsl::mspec::parse(&act_spec(name, mlp), "t.mspec").expect("parses");
        let inst = modelspec_dsl::codegen::kernel_instance(&spec);
        let Ffn::Mlp(m) = spec.layers[0].ffn else {
            panic!("{name}: a dense MLP");
        };
        assert_eq!(inst.defines["MS_D_FF"], "264", "{name}");
        assert_eq!(
            inst.defines["MS_ACT"],
            (Act::from(m.activation) as i32).to_string(),
            "{name}"
        );
        assert_ne!(other, Act::from(m.activation), "{name}");
    }
    for style in ["half_split", "interleaved"] {
        let spec = modelspec_dsl::mspec::parse(&rope_spec(style), "t.mspec").expect("parses");
        let inst = modelspec_dsl::codegen::kernel_instance(&spec);
        for (name, value) in [
            ("MS_N_HEADS", "6"),
            ("MS_N_KV_HEADS", "2"),
            ("MS_HEAD_DIM", "32"),
            ("MS_ROPE_DIMS", "16"),
        ] {
            assert_eq!(inst.defines[name], value, "{style}: {name}");
        }
        let Position::Rope(r) = &spec.layers[0].position else {
            panic!("{style}: RoPE");
        };
        assert_eq!(
            r.style == modelspec_dsl::ir::RopeStyle::Interleaved,
            style == "interleaved"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn spec_activation_matches_cpu_ops() {
    let Some(gpu) = crate::common::gpu::device() else {
        return;
    };
    let mut rng = Rng::fresh("spec_act");
    for (name, mlp, other) in ACT_SPECS {
        let (spec, k) = spec_library(&gpu, &act_spec(name, mlp));
        let Ffn::Mlp(m) = spec.layers[0].ffn else {
            panic!("{name}: a dense MLP");
        };
        let (kind, hidden) = (Act::from(m.activation), m.hidden as usize);
        for dt in DTYPES {
            // The spec's width and kind (the specialised body), vectorised and element-wise (one
            // element off alignment).
            act_case(&gpu, &k, &mut rng, dt, kind, hidden, 0);
            act_case(&gpu, &k, &mut rng, dt, kind, hidden, 1);
            // Generic: another width of the same kind (300: f32 vectorised, bf16 not), another
            // kind at the same width.
            act_case(&gpu, &k, &mut rng, dt, kind, 300, 0);
            act_case(&gpu, &k, &mut rng, dt, other, hidden, 0);
        }
    }
}

// ---------- rope ----------

/// RoPE forward and backward over a `[n, (heads + 2 kv_heads) head_dim]` q/k/v buffer as the
/// trainer launches it (q at column 0 with `heads`, k after it with `kv_heads`), compared with
/// `ops::rope` on q and k; v must be left alone.
fn rope_case(
    gpu: &Gpu,
    k: &Kernels,
    rng: &mut Rng,
    dt: Dtype,
    spec: &ModelSpec,
    (heads, kv_heads, d): (usize, usize, usize),
    rot: usize,
) {
    let Position::Rope(mut r) = spec.layers[0].position.clone() else {
        panic!("a RoPE spec");
    };
    r.rotary_dims = rot as u64;
    let (b, t) = (2, 19);
    let n = b * t;
    let ld = (heads + 2 * kv_heads) * d;
    let table = RopeTable::<f32>::new(&r, t);
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (cb, sb) = (
        crate::common::gpu::f32buf(gpu, &wide(&table.cos)),
        crate::common::gpu::f32buf(gpu, &wide(&table.sin)),
    );
    let es = dt.size();
    let what = format!(
        "rope {:?} heads {heads}/{kv_heads} d {d} rot {rot}",
        r.style
    );
    for backward in [false, true] {
        let x = T::new(gpu, dt, &rng.normal_vec(n * ld, 1.0));
        for (col, h) in [(0, heads), (heads * d, kv_heads)] {
            k.rope(
                dt,
                x.ptr() + col as u64 * es,
                cb.ptr(),
                sb.ptr(),
                n,
                t,
                h,
                d,
                ld,
                rot,
                r.style == modelspec_dsl::ir::RopeStyle::Interleaved,
                backward,
            )
            .unwrap();
        }
        let got = x.get(gpu);
        for (col, h, part) in [(0, heads, "q"), (heads * d, kv_heads, "k")] {
            let w = h * d;
            let src: Vec<f32> = (0..n * w)
                .map(|e| x.host[(e / w) * ld + col + e % w] as f32)
                .collect();
            let mut want = vec![0f32; n * w];
            if backward {
                rope::backward(&table, &src, h, d, &mut want);
            } else {
                rope::forward(&table, &src, h, d, &mut want);
            }
            let g: Vec<f64> = (0..n * w)
                .map(|e| got[(e / w) * ld + col + e % w])
                .collect();
            let dir = if backward { "bwd" } else { "fwd" };
            compare(&format!("{what} {part} {dir}"), dt, &g, &wide(&want));
        }
        let v0 = (heads + kv_heads) * d;
        let untouched = (0..n).all(|row| {
            (v0..ld).all(|c| got[row * ld + c].to_bits() == x.host[row * ld + c].to_bits())
        });
        assert!(untouched, "{what}: v changed");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn spec_rope_matches_cpu_ops() {
    let Some(gpu) = crate::common::gpu::device() else {
        return;
    };
    let mut rng = Rng::fresh("spec_rope");
    for style in ["half_split", "interleaved"] {
        let (spec, k) = spec_library(&gpu, &rope_spec(style));
        for dt in DTYPES {
            // The spec's shape: the q and k launches both specialised.
            rope_case(&gpu, &k, &mut rng, dt, &spec, (6, 2, 32), 16);
            // Generic: all 32 dims rotated, other head counts, another head dim.
            rope_case(&gpu, &k, &mut rng, dt, &spec, (6, 2, 32), 32);
            rope_case(&gpu, &k, &mut rng, dt, &spec, (3, 1, 32), 16);
            rope_case(&gpu, &k, &mut rng, dt, &spec, (6, 2, 64), 16);
        }
    }
}
