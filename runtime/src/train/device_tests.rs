//! The device backend's host-side logic (micro-batch bookkeeping, the mean and clip scales, the
//! step count, checkpoint download and upload) against the host backend, with a stand-in device
//! that keeps its arenas in host memory and applies the AdamW kernel's arithmetic.

use std::collections::BTreeMap;

use super::super::tests::{options, tokens, toy_spec};
use super::super::{CpuObjective, HostBackend, Objective, Trainer, checkpoint, clip, optim};
use super::*;

/// What the GPU keeps, in host memory: weights, the micro-batch gradient, the gradient sum and
/// the moments, updated as the kernels do.
struct FakeDevice {
    objective: CpuObjective,
    params: Params,
    grad: Params,
    sum: Option<Params>,
    moments: BTreeMap<String, Moments>,
    /// Calls of each kind, to check what crosses per step.
    downloads: usize,
}

impl FakeDevice {
    fn new(spec: &modelspec_dsl::ir::ModelSpec) -> Self {
        FakeDevice {
            objective: CpuObjective::new(spec, Some("full")).unwrap(),
            params: Params::new(),
            grad: Params::new(),
            sum: None,
            moments: BTreeMap::new(),
            downloads: 0,
        }
    }

    fn source(&self, summed: bool) -> &Params {
        match (&self.sum, summed) {
            (Some(sum), true) => sum,
            _ => &self.grad,
        }
    }
}

impl DeviceModel for FakeDevice {
    fn forward_backward(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seed: u64,
    ) -> Result<f32, TrainError> {
        let (loss, grad) = self
            .objective
            .loss_and_grads(&self.params, tokens, batch, seed)?;
        self.grad = grad;
        Ok(loss)
    }

    fn accumulate(&mut self, first: bool) -> Result<(), TrainError> {
        match (&mut self.sum, first) {
            (Some(sum), false) => {
                for (name, t) in sum.tensors.iter_mut() {
                    let g = self.grad.get(name).unwrap();
                    for (a, b) in t.data_mut().iter_mut().zip(g.data()) {
                        *a += *b;
                    }
                }
            }
            (slot, _) => *slot = Some(self.grad.clone()),
        }
        Ok(())
    }

    fn grad_norm(&mut self, summed: bool) -> Result<f64, TrainError> {
        let source = self.source(summed);
        Ok(clip::global_norm(source.tensors.values().map(|t| t.data())))
    }

    fn adamw(
        &mut self,
        s: &StepScalars,
        grad_scales: [f32; 2],
        summed: bool,
    ) -> Result<(), TrainError> {
        let grads = self.source(summed).clone();
        for (name, p) in self.params.tensors.iter_mut() {
            let decay = if optim::decays(name, p.shape()) {
                s.decay
            } else {
                1.0
            };
            let g = grads.get(name).unwrap().data();
            let Moments { m, v } = self.moments.get_mut(name).unwrap();
            for (i, w) in p.data_mut().iter_mut().enumerate() {
                let g = g[i] * grad_scales[0] * grad_scales[1];
                m[i] = s.beta1 * m[i] + s.one_minus_beta1 * g;
                v[i] = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
                let denom = v[i].sqrt() * s.inv_bias2_sqrt + s.eps;
                *w = *w * decay - s.step_size * m[i] / denom;
            }
        }
        Ok(())
    }

    fn loss(&mut self, tokens: &[u32], batch: usize) -> Result<f32, TrainError> {
        self.objective.loss(&self.params, tokens, batch)
    }

    fn download(&mut self) -> Result<(Params, BTreeMap<String, Moments>), TrainError> {
        self.downloads += 1;
        Ok((self.params.clone(), self.moments.clone()))
    }

    fn upload(
        &mut self,
        params: &Params,
        moments: &BTreeMap<String, Moments>,
    ) -> Result<(), TrainError> {
        self.params = params.clone();
        self.moments = params
            .iter()
            .map(|(name, t)| {
                let zeros = Moments {
                    m: vec![0.0; t.numel()],
                    v: vec![0.0; t.numel()],
                };
                (name.clone(), moments.get(name).cloned().unwrap_or(zeros))
            })
            .collect();
        Ok(())
    }
}

fn spec() -> modelspec_dsl::ir::ModelSpec {
    let mut spec = toy_spec();
    spec.dropout.residual = 0.1;
    spec
}

fn host(steps: u64) -> Trainer<HostBackend<CpuObjective>> {
    let spec = spec();
    let objective = CpuObjective::new(&spec, Some("full")).unwrap();
    let params = Params::init(&spec, 4);
    Trainer::new(objective, spec, params, options(steps), tokens()).unwrap()
}

fn device(steps: u64) -> Trainer<DeviceBackend<FakeDevice>> {
    let spec = spec();
    let backend = DeviceBackend::new(FakeDevice::new(&spec));
    let params = Params::init(&spec, 4);
    Trainer::with_backend(backend, spec, params, options(steps), tokens()).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "modelspec-train-device-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn device_backend_steps_like_the_host_bit_for_bit() {
    // Two micro-batches per step (a mean by 1/2 is exact, so the device's norm of the sum times
    // 1/2 is the host's norm of the mean) and clipping at 0.5, which the toy model's early
    // gradients exceed.
    let n = 6;
    let (mut h, mut d) = (host(n), device(n));
    let mut clipped = 0;
    while !h.done() {
        let (a, b) = (h.step().unwrap(), d.step().unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
        assert_eq!(
            a.grad_norm.to_bits(),
            b.grad_norm.to_bits(),
            "step {}",
            a.step
        );
        clipped += usize::from(a.grad_norm > 0.5);
    }
    assert!(clipped > 0, "no step was clipped");
    assert!(d.done());
    assert_eq!(
        d.backend.device.downloads, 0,
        "no state crossed while stepping"
    );
    let (params, optimizer) = d.backend.snapshot().unwrap();
    assert_eq!(&*params, h.params());
    assert_eq!(&*optimizer, h.optimizer());
    assert_eq!(optimizer.step, n);
}

#[test]
fn checkpoints_move_between_host_and_device() {
    let (n, k) = (7, 3);
    let mut straight = host(n);
    while !straight.done() {
        straight.step().unwrap();
    }

    // k steps on the device, saved; the rest on the host.
    let dir = temp_dir("d2h");
    let mut first = device(n);
    for _ in 0..k {
        first.step().unwrap();
    }
    first.save(&dir).unwrap();
    first.save(&dir).unwrap();
    assert_eq!(first.backend.device.downloads, 1, "two saves, one download");
    let spec = spec();
    let objective = CpuObjective::new(&spec, Some("full")).unwrap();
    let mut on_host =
        Trainer::resume(objective, checkpoint::load(&dir).unwrap(), tokens()).unwrap();
    while !on_host.done() {
        on_host.step().unwrap();
    }
    assert_eq!(bits(&straight.losses), bits(&on_host.losses));
    assert_eq!(straight.params(), on_host.params());
    assert_eq!(straight.optimizer(), on_host.optimizer());

    // k steps on the host, saved; the rest on the device; the final checkpoints are the same
    // bytes.
    let other = temp_dir("h2d");
    let mut first = host(n);
    for _ in 0..k {
        first.step().unwrap();
    }
    first.save(&other).unwrap();
    let backend = DeviceBackend::new(FakeDevice::new(&spec));
    let mut on_device =
        Trainer::resume_with_backend(backend, checkpoint::load(&other).unwrap(), tokens()).unwrap();
    while !on_device.done() {
        on_device.step().unwrap();
    }
    assert_eq!(bits(&straight.losses), bits(&on_device.losses));
    straight.save(&dir).unwrap();
    on_device.save(&other).unwrap();
    let file = |d: &std::path::Path| std::fs::read(d.join(checkpoint::FILE_NAME)).unwrap();
    assert!(file(&dir) == file(&other), "checkpoint bytes differ");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn a_fresh_device_run_saves_zero_moments_like_the_host() {
    let dir = temp_dir("fresh");
    let other = temp_dir("fresh-host");
    device(3).save(&dir).unwrap();
    host(3).save(&other).unwrap();
    let file = |d: &std::path::Path| std::fs::read(d.join(checkpoint::FILE_NAME)).unwrap();
    assert!(file(&dir) == file(&other), "checkpoint bytes differ");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn evaluation_and_a_non_finite_step_leave_the_device_state_alone() {
    let mut d = device(4);
    d.step().unwrap();
    let before = d.backend.snapshot().unwrap().0.into_owned();
    let held_out: Vec<u32> = tokens()[..64].to_vec();
    let a = d.evaluate(&held_out, 8).unwrap().unwrap();
    let b = d.evaluate(&held_out, 8).unwrap().unwrap();
    assert_eq!(a.to_bits(), b.to_bits());
    assert!(a.is_finite());
    // A NaN weight makes the loss NaN: the step stops before AdamW.
    let mut params = before.clone();
    params.tensors.values_mut().next().unwrap().data_mut()[0] = f32::NAN;
    let optimizer = d.backend.snapshot().unwrap().1.into_owned();
    d.backend.load(params.clone(), optimizer.clone()).unwrap();
    let err = d.step().unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { step: 1, .. }),
        "{err}"
    );
    let (p, o) = d.backend.snapshot().unwrap();
    for (name, t) in params.iter() {
        assert_eq!(bits(p.get(name).unwrap().data()), bits(t.data()), "{name}");
    }
    assert_eq!(*o, optimizer);
}
