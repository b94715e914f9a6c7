//! Random inputs of the MoE tests: rounding and encoding in a dtype, each layer's parameters,
//! and draws without near-ties in the routing (the generator and bf16 rounding are
//! `common/gpu.rs`'s).

use std::collections::BTreeMap;

use modelspec_dsl::ModelSpec;
use modelspec_runtime::cuda::Dtype;

use super::Case;
use super::common::gpu::{Rng, from_bf16, to_bf16};
use super::reference::{correction, min_gap, moe_of, router_logits};

/// Rounds to what the GPU stores in `dt`.
pub fn round(v: &mut [f64], dt: Dtype) {
    for x in v {
        let f = *x as f32;
        *x = match dt {
            Dtype::F32 => f as f64,
            Dtype::Bf16 => from_bf16(to_bf16(f)) as f64,
        };
    }
}

pub fn elem(dt: Dtype) -> usize {
    match dt {
        Dtype::F32 => 4,
        Dtype::Bf16 => 2,
    }
}

pub fn encode(v: &[f64], dt: Dtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * elem(dt));
    for &x in v {
        match dt {
            Dtype::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            Dtype::Bf16 => out.extend_from_slice(&to_bf16(x as f32).to_le_bytes()),
        }
    }
    out
}

pub fn decode(b: &[u8], dt: Dtype) -> Vec<f64> {
    match dt {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::Bf16 => b
            .chunks_exact(2)
            .map(|c| from_bf16(u16::from_le_bytes([c[0], c[1]])) as f64)
            .collect(),
    }
}

/// One MoE layer's parameters `layers.{i}.moe.*` with their shapes.
pub fn layer_params(spec: &ModelSpec, i: usize) -> Vec<(String, Vec<u64>)> {
    let prefix = format!("layers.{i}.moe.");
    modelspec_dsl::params::parameters(spec)
        .into_iter()
        .filter(|p| p.name.starts_with(&prefix))
        .map(|p| (p.name, p.shape))
        .collect()
}

/// Random weights: router rows spread the logits, projections keep activations O(1).
fn init_params(
    spec: &ModelSpec,
    i: usize,
    rng: &mut Rng,
    case: &Case,
    dt: Dtype,
) -> BTreeMap<String, Vec<f64>> {
    let d = spec.d_model as usize;
    let mut out = BTreeMap::new();
    for (name, shape) in layer_params(spec, i) {
        let n: u64 = shape.iter().product();
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        let std = if name.ends_with(".bias") {
            0.1
        } else if name.contains("router") {
            0.15
        } else if name.contains("shared_gate") {
            0.2
        } else {
            1.0 / fan_in.sqrt()
        };
        let mut v = rng.normal_vec(n as usize, std);
        if name.ends_with("router.weight") && case.ties {
            v.fill(0.0);
        }
        if name.ends_with("router.weight")
            && let Some(e) = case.dead_expert
        {
            // x[:, 0] is pushed to about +3 below, so this expert's logit sits near -15.
            for (j, w) in v[e * d..(e + 1) * d].iter_mut().enumerate() {
                *w = if j == 0 { -5.0 } else { 0.0 };
            }
        }
        round(&mut v, dt);
        out.insert(name, v);
    }
    out
}

pub struct Inputs {
    pub params: Vec<BTreeMap<String, Vec<f64>>>,
    pub x: Vec<Vec<f64>>,
    pub dout: Vec<Vec<f64>>,
    pub seed: u64,
}

/// Draws inputs until the routing has no near-ties (see the module docs).
pub fn draw(spec: &ModelSpec, case: &Case, dt: Dtype, layers: &[usize]) -> Inputs {
    let d = spec.d_model as usize;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(7);
    for attempt in 0..50u64 {
        let seed = base.wrapping_add(attempt.wrapping_mul(0x9e37_79b9)) | 1;
        let mut rng = Rng(seed);
        let mut ok = true;
        let mut inp = Inputs {
            params: Vec::new(),
            x: Vec::new(),
            dout: Vec::new(),
            seed,
        };
        for &i in layers {
            let p = init_params(spec, i, &mut rng, case, dt);
            let mut x = rng.normal_vec(case.rows * d, 1.0);
            if case.dead_expert.is_some() {
                for n in 0..case.rows {
                    x[n * d] = 3.0 + 0.1 * x[n * d];
                }
            }
            round(&mut x, dt);
            let mut dout = rng.normal_vec(case.rows * d, 1.0);
            round(&mut dout, dt);
            let moe = moe_of(spec, i);
            let logits = router_logits(&moe, i, d, &p, &x, case.rows);
            ok &= case.ties || min_gap(&moe, &logits, correction(i, &p)) > 1e-5;
            inp.params.push(p);
            inp.x.push(x);
            inp.dout.push(dout);
        }
        if ok {
            return inp;
        }
    }
    panic!("no draw without near-ties in 50 attempts");
}
