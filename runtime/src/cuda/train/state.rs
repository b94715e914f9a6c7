//! The training state kept on the device between steps: gradient accumulation, the global
//! gradient norm, the fused AdamW step with the host's rule, and the transfers of weights and
//! moments to and from the host's formats (checkpoints, resume).

use std::collections::BTreeMap;

use super::super::error::Result;
use super::params::NORM_BLOCKS;
use super::{GpuTrainer, unsupported};
use crate::train::optim::{Moments, StepScalars};
use crate::{Params, Tensor};

impl GpuTrainer {
    /// Adds the last [`GpuTrainer::forward_backward`]'s gradient into the gradient sum (`first`:
    /// sets the sum to it), for gradient accumulation. The sum's arena (4 bytes per parameter) is
    /// allocated by the first call, after checking that it fits.
    pub fn accumulate_grads(&mut self, first: bool) -> Result<()> {
        if self.params.grad_sum.is_none() {
            let bytes = self.params.total * 4;
            self.gpu.check_fits(bytes)?;
            self.params.grad_sum = Some(self.gpu.zeros::<f32>(self.params.total)?);
            self.bytes += bytes;
        }
        let p = &self.params;
        let sum = p.grad_sum.as_ref().map_or(0, |b| b.ptr());
        self.kernels.grad_sum(sum, p.grad.ptr(), p.total, first)
    }

    /// The global L2 norm of every parameter's gradient (of the sum when `summed`), reduced in
    /// f64 on the device in a fixed order; 8 bytes come back (synchronises).
    pub fn grad_norm(&self, summed: bool) -> Result<f64> {
        let p = &self.params;
        let grad = self.grad_source(summed)?;
        self.kernels
            .sum_squares(grad, p.total, p.norm_partials.ptr(), NORM_BLOCKS)?;
        // SAFETY: `norm_partials` holds NORM_BLOCKS + 1 f64 of this trainer's own.
        let b = unsafe {
            self.gpu
                .download_raw(p.norm_partials.at(NORM_BLOCKS), std::mem::size_of::<f64>())
        }?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&b[..8]);
        Ok(f64::from_le_bytes(bytes).sqrt())
    }

    /// One AdamW step over the whole arena (one launch) with `scalars` (the host's, from
    /// [`crate::train::optim::AdamWConfig::scalars`]), decay exactly where
    /// [`crate::train::optim::decays`] says, on the gradient (the sum when `summed`) times
    /// `grad_scales[0]` then `grad_scales[1]`; refreshes the working copy. Asynchronous.
    pub fn apply_adamw(
        &mut self,
        scalars: &StepScalars,
        grad_scales: [f32; 2],
        summed: bool,
    ) -> Result<()> {
        let grad = self.grad_source(summed)?;
        let p = &self.params;
        self.kernels.adamw(
            self.dt,
            p.master.ptr(),
            p.work.ptr(),
            grad,
            p.adam_m.ptr(),
            p.adam_v.ptr(),
            p.total,
            p.decay_end,
            scalars,
            grad_scales,
        )
    }

    fn grad_source(&self, summed: bool) -> Result<super::DevPtr> {
        if !summed {
            return Ok(self.params.grad.ptr());
        }
        self.params
            .grad_sum
            .as_ref()
            .map(|b| b.ptr())
            .ok_or_else(|| unsupported("no gradient sum: accumulate_grads was never called".into()))
    }

    /// The f32 master weights by canonical name (synchronises; one download of the arena).
    pub fn params(&self) -> Result<Params> {
        let all = self.gpu.download(&self.params.master)?;
        self.by_name(&all)
    }

    /// AdamW's moments by canonical name (synchronises; two downloads of the arena).
    pub fn moments(&self) -> Result<BTreeMap<String, Moments>> {
        let m = self.by_name(&self.gpu.download(&self.params.adam_m)?)?;
        let v = self.by_name(&self.gpu.download(&self.params.adam_v)?)?;
        Ok(m.tensors
            .into_iter()
            .zip(v.tensors)
            .map(|((name, m), (_, v))| {
                (
                    name,
                    Moments {
                        m: m.into_vec(),
                        v: v.into_vec(),
                    },
                )
            })
            .collect())
    }

    /// Every parameter's slice of an arena-sized host copy, as tensors by canonical name.
    fn by_name(&self, arena: &[f32]) -> Result<Params> {
        let mut out = Params::new();
        for p in modelspec_dsl::params::parameters(&self.spec) {
            let off = self.params.offsets[&p.name];
            let n = p.numel() as usize;
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let t = Tensor::from_vec(&shape, arena[off..off + n].to_vec())
                .map_err(|e| unsupported(e.to_string()))?;
            out.insert(p.name, t);
        }
        Ok(out)
    }

    /// Replaces the weights (f32 master and working copy) with `params` and AdamW's moments with
    /// `moments` (zeros for a parameter it lacks, e.g. all of them for a fresh run); resets
    /// [`GpuTrainer::step`]'s count. `params` must hold every parameter of the spec.
    pub fn set_state(
        &mut self,
        params: &Params,
        moments: &BTreeMap<String, Moments>,
    ) -> Result<()> {
        params
            .check(&self.spec)
            .map_err(|e| unsupported(e.to_string()))?;
        let total = self.params.total;
        let mut host = vec![0f32; total];
        let place = |host: &mut [f32], name: &str, data: &[f32]| -> Result<()> {
            let off = *self
                .params
                .offsets
                .get(name)
                .ok_or_else(|| unsupported(format!("no parameter `{name}`")))?;
            host.get_mut(off..off + data.len())
                .ok_or_else(|| unsupported(format!("`{name}` does not fit its arena slot")))?
                .copy_from_slice(data);
            Ok(())
        };
        for (name, t) in params.iter() {
            place(&mut host, name, t.data())?;
        }
        self.gpu.write(&mut self.params.master, &host)?;
        if moments.is_empty() {
            // A fresh optimizer (every `set_params`): zero the moments on the device.
            self.gpu.memset_zero(&mut self.params.adam_m)?;
            self.gpu.memset_zero(&mut self.params.adam_v)?;
            self.step = 0;
            return self.params.refresh_work(&self.kernels);
        }
        for second in [false, true] {
            host.fill(0.0);
            for (name, t) in params.iter() {
                let Some(m) = moments.get(name.as_str()) else {
                    continue;
                };
                let data = if second { &m.v } else { &m.m };
                if data.len() != t.numel() {
                    return Err(unsupported(format!(
                        "AdamW moments of `{name}` have {} values for {} parameters",
                        data.len(),
                        t.numel()
                    )));
                }
                place(&mut host, name, data)?;
            }
            let buf = if second {
                &mut self.params.adam_v
            } else {
                &mut self.params.adam_m
            };
            self.gpu.write(buf, &host)?;
        }
        self.step = 0;
        self.params.refresh_work(&self.kernels)
    }
}
