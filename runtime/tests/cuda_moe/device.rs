//! The GPU side of the MoE tests: a layer's parameters and gradients in one device allocation.

use std::collections::BTreeMap;

use modelspec_runtime::cuda::{DevPtr, Dtype, Gpu, GpuBuf};

use super::inputs::{decode, elem, encode};

/// A layer's tensors in one device allocation: `offsets` are byte offsets by full name.
pub struct Packed {
    pub buf: GpuBuf<u8>,
    offsets: BTreeMap<String, usize>,
}

impl Packed {
    /// Packed as the trainer's arena packs them: the matrices in table order, then the vectors
    /// (biases), 256-byte aligned, except that a `.gate.` weight or bias is directly followed by
    /// its `up` partner (the fused gate/up GEMM, with its fused bias). Otherwise every tensor is
    /// separated by a gap (never adjacent).
    fn layout(
        names: &[(String, usize)],
        elem: usize,
        packed: bool,
    ) -> (BTreeMap<String, usize>, usize) {
        let mut offsets = BTreeMap::new();
        let mut cur = 0usize;
        let vector = |name: &str| packed && name.ends_with("bias");
        let order = names
            .iter()
            .filter(|(n, _)| !vector(n))
            .chain(names.iter().filter(|(n, _)| vector(n)));
        for (name, n) in order {
            offsets.insert(name.clone(), cur);
            cur += n * elem;
            if !(packed && name.contains(".gate.")) {
                cur = cur.div_ceil(256) * 256 + if packed { 0 } else { 256 };
            }
        }
        (offsets, cur.max(1))
    }

    pub fn ptr(&self, name: &str) -> DevPtr {
        self.offsets
            .get(name)
            .map_or(0, |o| self.buf.ptr() + *o as u64)
    }
}

pub fn upload_params(
    gpu: &Gpu,
    p: &BTreeMap<String, Vec<f64>>,
    order: &[(String, Vec<u64>)],
    dt: Dtype,
    packed: bool,
) -> Packed {
    let names: Vec<(String, usize)> = order
        .iter()
        .map(|(n, s)| (n.clone(), s.iter().product::<u64>() as usize))
        .collect();
    let (offsets, total) = Packed::layout(&names, elem(dt), packed);
    let mut host = vec![0u8; total];
    for (name, off) in &offsets {
        let b = encode(&p[name], dt);
        host[*off..*off + b.len()].copy_from_slice(&b);
    }
    Packed {
        buf: gpu.upload(&host).unwrap(),
        offsets,
    }
}

pub fn zero_grads(gpu: &Gpu, order: &[(String, Vec<u64>)], packed: bool) -> Packed {
    let names: Vec<(String, usize)> = order
        .iter()
        .map(|(n, s)| (n.clone(), s.iter().product::<u64>() as usize))
        .collect();
    let (offsets, total) = Packed::layout(&names, 4, packed);
    Packed {
        buf: gpu.zeros::<u8>(total).unwrap(),
        offsets,
    }
}

pub fn download_grads(
    gpu: &Gpu,
    g: &Packed,
    order: &[(String, Vec<u64>)],
) -> BTreeMap<String, Vec<f64>> {
    let all = gpu.download(&g.buf).unwrap();
    order
        .iter()
        .map(|(name, shape)| {
            let n = shape.iter().product::<u64>() as usize;
            let off = g.offsets[name];
            (name.clone(), decode(&all[off..off + 4 * n], Dtype::F32))
        })
        .collect()
}
