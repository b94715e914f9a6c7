//! The parameter arenas: f32 master weights, the working copy in the compute dtype, f32
//! gradients, and AdamW's m and v, all with one layout. Parameters are grouped, each group in
//! parameter-table order: first the matrices that decay ([`decays`]), then the embeddings, then
//! the vectors (norm weights, biases). So q/k/v (and gate/up) of a layer are adjacent and act as
//! one fused `[q; k; v]` (`[gate; up]`) matrix in a single GEMM, and one AdamW launch covers
//! every parameter with weight decay on exactly the elements below [`ArenaLayout::decay_end`].
//!
//! A gradient-sum arena (for gradient accumulation) is allocated on first use, and a few f64
//! partial sums serve the on-device gradient norm.

use super::super::error::Result;
use super::super::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use super::super::ops::Kernels;
use super::unsupported;
use crate::train::optim::decays;
use modelspec_dsl::ModelSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Blocks of the gradient-norm reduction: its f64 partial sums, one per block.
pub(super) const NORM_BLOCKS: usize = 1024;

/// Where each parameter lives, and the arenas.
pub(super) struct ParamArena {
    pub offsets: BTreeMap<String, usize>,
    /// Elements per arena.
    pub total: usize,
    /// Elements below this offset decay; none at or above it does.
    pub decay_end: usize,
    pub master: GpuBuf<f32>,
    pub work: GpuBuf<u8>,
    pub grad: GpuBuf<f32>,
    pub adam_m: GpuBuf<f32>,
    pub adam_v: GpuBuf<f32>,
    /// The gradient sum of an accumulated step (allocated by the first accumulation).
    pub grad_sum: Option<GpuBuf<f32>>,
    /// The gradient norm's partial sums, then the total at index [`NORM_BLOCKS`].
    pub norm_partials: GpuBuf<f64>,
    pub dt: Dtype,
}

/// Every parameter's offset (elements), the arena size and the end of the decaying region.
pub(super) struct ArenaLayout {
    pub offsets: BTreeMap<String, usize>,
    pub total: usize,
    pub decay_end: usize,
}

/// Elements parameter `name` of `n` elements takes in a parameter arena (the trainer's and the
/// decoder's): exactly `n` for the first parts of a fused projection (q and k before v; `.gate.`
/// of a dense MLP, each expert and the shared experts before up), so the parts stay adjacent as
/// one matrix and one bias; else `n` rounded up to 8 (16-byte aligned views in bf16). `exists`
/// says whether the spec has a parameter of that name: a part is fused only with its partner
/// (latent attention's direct query projection `attn.q` has no `attn.k` after it).
pub(crate) fn arena_len(name: &str, n: usize, exists: impl Fn(&str) -> bool) -> usize {
    let fused_with_next = [
        ("attn.q.", "attn.k."),
        ("attn.k.", "attn.v."),
        (".gate.", ".up."),
    ]
    .iter()
    .any(|(part, next)| name.contains(part) && exists(&name.replacen(part, next, 1)));
    if fused_with_next {
        n
    } else {
        n.div_ceil(8) * 8
    }
}

/// The arena layout of `spec`. 16-byte aligned bf16 views, except inside a fused group: q/k/v
/// (and gate/up, also of every expert) weights and biases must be exactly adjacent to act as one
/// matrix and one bias. Decaying matrices first, then the other matrices (embeddings), then the
/// rest; fused partners share a group (they have the same rank and names alike).
pub(super) fn param_offsets(spec: &ModelSpec) -> ArenaLayout {
    let params = modelspec_dsl::params::parameters(spec);
    let names: std::collections::BTreeSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let group = |p: &modelspec_dsl::params::Param| {
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        if decays(&p.name, &shape) {
            0
        } else if shape.len() == 2 {
            1
        } else {
            2
        }
    };
    let mut offsets = BTreeMap::new();
    let mut total = 0usize;
    let mut decay_end = 0usize;
    for pass in 0..3 {
        for p in params.iter().filter(|p| group(p) == pass) {
            let n = p.numel() as usize;
            offsets.insert(p.name.clone(), total);
            total += arena_len(&p.name, n, |s| names.contains(s));
        }
        if pass == 0 {
            // Aligned, so that the boundary never splits a 16-byte view.
            total = total.div_ceil(8) * 8;
            decay_end = total;
        }
    }
    ArenaLayout {
        offsets,
        total,
        decay_end,
    }
}

/// The offset a norm weight of parameter `name` is initialised to (`1 - offset`, so that the
/// effective scale `offset + w` starts at 1): the norm's own offset from the IR.
fn norm_offset(spec: &ModelSpec, name: &str) -> f64 {
    let layer = name
        .strip_prefix("layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| spec.layers.get(i));
    match layer {
        Some(l) if name.contains("q_norm") || name.contains("k_norm") => {
            l.attention.qk_norm.map_or(0.0, |q| q.norm.offset)
        }
        Some(l) if name.contains("q_a_norm") || name.contains("kv_a_norm") => {
            l.attention.mla.map_or(0.0, |m| m.norm.offset)
        }
        Some(l) => l.block.norm.offset,
        None => spec.final_norm.map_or(0.0, |n| n.offset),
    }
}

impl ParamArena {
    /// Allocates the arenas and initialises the weights: normal(0, 0.02) matrices and
    /// embeddings, unit norm scales, zero biases (`seed`).
    pub fn new(
        gpu: &Arc<Gpu>,
        k: &Kernels,
        spec: &ModelSpec,
        dt: Dtype,
        seed: u64,
    ) -> Result<Self> {
        let ArenaLayout {
            offsets,
            total,
            decay_end,
        } = param_offsets(spec);
        let mut host = vec![0f32; total];
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        for p in modelspec_dsl::params::parameters(spec) {
            let off = offsets[&p.name];
            let n = p.numel() as usize;
            let dst = &mut host[off..off + n];
            if p.shape.len() == 2 {
                for x in dst {
                    let u1 = next().max(1e-300);
                    let u2 = next();
                    *x = ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                        * 0.02;
                }
            } else if !p.name.ends_with(".bias") {
                dst.fill((1.0 - norm_offset(spec, &p.name)) as f32);
            }
        }
        let master = gpu.upload(&host)?;
        drop(host);
        let arena = ParamArena {
            offsets,
            total,
            decay_end,
            master,
            work: gpu.zeros::<u8>(total * dt.bytes())?,
            grad: gpu.zeros::<f32>(total)?,
            adam_m: gpu.zeros::<f32>(total)?,
            adam_v: gpu.zeros::<f32>(total)?,
            grad_sum: None,
            norm_partials: gpu.zeros::<f64>(NORM_BLOCKS + 1)?,
            dt,
        };
        arena.refresh_work(k)?;
        Ok(arena)
    }

    /// Device bytes of the arenas (the gradient sum once allocated) and the norm's partial sums.
    pub fn bytes(&self) -> usize {
        let sum = self.grad_sum.as_ref().map_or(0, |b| b.len() * 4);
        self.total * (16 + self.dt.bytes()) + sum + (NORM_BLOCKS + 1) * 8
    }

    /// The working copy from the master weights (a cast for bf16, a copy for f32). For f32 it
    /// adds the (zeroed) gradient arena, so the gradients must be zero.
    pub fn refresh_work(&self, k: &Kernels) -> Result<()> {
        match self.dt {
            Dtype::Bf16 => k.cast(
                Dtype::F32,
                Dtype::Bf16,
                self.work.ptr(),
                self.master.ptr(),
                self.total,
            ),
            Dtype::F32 => {
                // SAFETY: the grad arena is this trainer's own, `total` f32.
                unsafe { k.gpu().memset_raw(self.grad.ptr(), self.total * 4) }?;
                k.add(
                    Dtype::F32,
                    self.work.ptr(),
                    self.master.ptr(),
                    self.grad.ptr(),
                    self.total,
                )
            }
        }
    }

    /// The working copy of `name` (an error if absent).
    pub fn w(&self, name: &str) -> Result<DevPtr> {
        let off = self
            .offsets
            .get(name)
            .ok_or_else(|| unsupported(format!("no parameter `{name}`")))?;
        Ok(self.work.ptr() + (off * self.dt.bytes()) as u64)
    }
    /// The working copy of `name`, 0 if the spec has no such parameter.
    pub fn wo(&self, name: &str) -> DevPtr {
        self.offsets
            .get(name)
            .map_or(0, |off| self.work.ptr() + (off * self.dt.bytes()) as u64)
    }
    /// The f32 gradient of `name`, 0 if absent.
    pub fn g(&self, name: &str) -> DevPtr {
        self.offsets.get(name).map_or(0, |off| self.grad.at(*off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelspec_dsl::load::{Format, load_str};

    fn spec(text: &str, name: &str) -> ModelSpec {
        load_str(text, name, Format::Mspec).expect("spec loads")
    }

    /// Decay is exactly the region below `decay_end`, fused partners stay adjacent, nothing
    /// overlaps.
    fn check(spec: &ModelSpec) {
        let layout = param_offsets(spec);
        let params = modelspec_dsl::params::parameters(spec);
        let mut spans: Vec<(usize, usize, &str)> = Vec::new();
        for p in &params {
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let off = layout.offsets[&p.name];
            let n = p.numel() as usize;
            assert_eq!(
                decays(&p.name, &shape),
                off < layout.decay_end,
                "{}: {} at {off}, decay_end {}",
                spec.name,
                p.name,
                layout.decay_end
            );
            assert!(off + n <= layout.total);
            spans.push((off, n, &p.name));
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{} overlaps {}", w[0].2, w[1].2);
        }
        for (a, b) in [
            ("attn.q.", "attn.k."),
            ("attn.k.", "attn.v."),
            (".gate.", ".up."),
        ] {
            for p in params.iter().filter(|p| p.name.contains(a)) {
                let partner = p.name.replace(a, b);
                if let Some(&next) = layout.offsets.get(&partner) {
                    assert_eq!(
                        layout.offsets[&p.name] + p.numel() as usize,
                        next,
                        "{} not adjacent to {partner}",
                        p.name
                    );
                }
            }
        }
    }

    #[test]
    fn decaying_parameters_come_first_and_fused_groups_stay_adjacent() {
        check(&spec(
            include_str!("../../../../specs/tiny.mspec"),
            "tiny.mspec",
        ));
        check(&spec(
            include_str!("../../../../specs/gpt2-124m.mspec"),
            "gpt2-124m.mspec",
        ));
        check(&spec(
            include_str!("../../../../specs/mixtral-small.mspec"),
            "mixtral-small.mspec",
        ));
        check(&spec(
            include_str!("../../../../specs/phi-2.mspec"),
            "phi-2.mspec",
        ));
    }
}
