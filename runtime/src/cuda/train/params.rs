//! The parameter arenas: f32 master weights, the working copy in the compute dtype, f32
//! gradients, and AdamW's m and v, all with one layout. Matrices come first in parameter-table
//! order, so q/k/v (and gate/up) of a layer are adjacent and act as one fused `[q; k; v]`
//! (`[gate; up]`) matrix in a single GEMM; one AdamW launch covers every parameter.

use super::super::error::Result;
use super::super::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use super::super::ops::Kernels;
use super::unsupported;
use modelspec_dsl::ModelSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where each parameter lives, and the five arenas.
pub(super) struct ParamArena {
    pub offsets: BTreeMap<String, usize>,
    /// Elements per arena.
    pub total: usize,
    pub master: GpuBuf<f32>,
    pub work: GpuBuf<u8>,
    pub grad: GpuBuf<f32>,
    pub adam_m: GpuBuf<f32>,
    pub adam_v: GpuBuf<f32>,
    pub dt: Dtype,
}

/// Offsets of every parameter (elements) and the arena size. 16-byte aligned bf16 views,
/// except inside a fused group: q/k/v (and gate/up, also of every expert) weights and biases must
/// be exactly adjacent to act as one matrix and one bias.
pub(super) fn param_offsets(spec: &ModelSpec) -> (BTreeMap<String, usize>, usize) {
    let params = modelspec_dsl::params::parameters(spec);
    let mut offsets = BTreeMap::new();
    let mut total = 0usize;
    for pass in 0..2 {
        for p in &params {
            if (pass == 0) != (p.shape.len() == 2) {
                continue;
            }
            let n = p.numel() as usize;
            offsets.insert(p.name.clone(), total);
            // `.gate.`: a dense MLP's, each expert's and the shared experts' gate, before up.
            let fused_with_next = ["attn.q.", "attn.k.", ".gate."]
                .iter()
                .any(|m| p.name.contains(m));
            total += if fused_with_next {
                n
            } else {
                n.div_ceil(8) * 8
            };
        }
    }
    (offsets, total)
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
        let (offsets, total) = param_offsets(spec);
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
            master,
            work: gpu.zeros::<u8>(total * dt.bytes())?,
            grad: gpu.zeros::<f32>(total)?,
            adam_m: gpu.zeros::<f32>(total)?,
            adam_v: gpu.zeros::<f32>(total)?,
            dt,
        };
        arena.refresh_work(k)?;
        Ok(arena)
    }

    /// Device bytes of the five arenas.
    pub fn bytes(&self) -> usize {
        self.total * (16 + self.dt.bytes())
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
