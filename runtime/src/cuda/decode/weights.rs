//! The decoder's parameters on the GPU: one arena in the compute dtype, uploaded from host f32
//! tensors (rounded to bf16 on the host for bf16). Matrices first, then vectors, each group in
//! parameter-table order; q/k/v (and gate/up, also of every expert) are exactly adjacent, so one
//! GEMM computes the fused `[q; k; v]` (`[gate; up]`) rows with one bias; everything else starts
//! at a multiple of 8 elements (16-byte aligned views for bf16).

use std::collections::BTreeMap;
use std::sync::Arc;

use modelspec_dsl::ModelSpec;

use crate::cuda::error::{CudaError, Result};
use crate::cuda::gpu::{DevPtr, Dtype, DtypeExt, Gpu, GpuBuf};
use crate::cuda::train::arena_len;
use crate::tensor::ParamSource;

/// Parameters by canonical name, at offsets of one device arena.
pub(super) struct Weights {
    offsets: BTreeMap<String, usize>,
    arena: GpuBuf<u8>,
    dt: Dtype,
}

/// Every parameter's offset (elements) and the arena's size.
fn offsets(spec: &ModelSpec) -> (BTreeMap<String, usize>, usize) {
    let params = modelspec_dsl::params::parameters(spec);
    let names: std::collections::BTreeSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let mut offsets = BTreeMap::new();
    let mut total = 0usize;
    for matrices in [true, false] {
        for p in params.iter().filter(|p| (p.shape.len() == 2) == matrices) {
            offsets.insert(p.name.clone(), total);
            total += arena_len(&p.name, p.numel() as usize, |s| names.contains(s));
        }
    }
    (offsets, total)
}

impl Weights {
    /// Uploads every parameter of `spec` from `params` (checked against the table first).
    pub fn upload(
        gpu: &Arc<Gpu>,
        spec: &ModelSpec,
        dt: Dtype,
        params: &dyn ParamSource<f32>,
    ) -> std::result::Result<Weights, super::DecodeError> {
        params.check_params(spec)?;
        let (offsets, total) = offsets(spec);
        let mut host = vec![0f32; total];
        for (name, &off) in &offsets {
            let t = params
                .param(name)
                .ok_or_else(|| crate::Error::MissingParam(name.clone()))?;
            host[off..off + t.data().len()].copy_from_slice(t.data());
        }
        // The arena's bytes, built on the host: f32 as is, bf16 rounded to nearest even (as the
        // kernels' `cast_f32_to_bf16`).
        let bytes: Vec<u8> = match dt {
            Dtype::F32 => host.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::Bf16 => host
                .iter()
                .flat_map(|&x| {
                    let bits = (crate::ops::attention::round_bf16(x).to_bits() >> 16) as u16;
                    bits.to_le_bytes()
                })
                .collect(),
        };
        drop(host);
        let arena = gpu.upload(&bytes)?;
        Ok(Weights { offsets, arena, dt })
    }

    /// Device bytes of the arena.
    pub fn bytes(&self) -> usize {
        self.arena.len()
    }

    /// Parameter `name` (an error naming it when the spec has none).
    pub fn w(&self, name: &str) -> Result<DevPtr> {
        let off = self.offsets.get(name).ok_or_else(|| CudaError::BadLaunch {
            kernel: "gpu decoder".into(),
            why: format!("no parameter `{name}`"),
        })?;
        Ok(self.arena.ptr() + (off * self.dt.bytes()) as u64)
    }

    /// Parameter `name`, or 0 when the spec has none (optional biases and norm weights).
    pub fn wo(&self, name: &str) -> DevPtr {
        self.offsets
            .get(name)
            .map_or(0, |off| self.arena.ptr() + (off * self.dt.bytes()) as u64)
    }
}
