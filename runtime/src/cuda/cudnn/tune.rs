//! Which of cuDNN's engine configs a plan runs: forced, persisted, or chosen by timing on
//! scratch operands of the shape (the policy is [`CudnnAttention`]'s doc; the persistence is
//! [`crate::cuda::tune`]'s).

use super::backend::{BuiltPlan, Configs, config_choice};
use super::knobs::{WIDE_EXTRA, knob_name};
use super::{CudnnAttention, Pass, PlanKey, Result, sdpa};
use crate::cuda::AttnShape;
use crate::cuda::gpu::{DevPtr, Gpu, GpuBuf};
use crate::cuda::tune::{Tuned, Tuner, fastest, per_run};

/// How many of the engine configs that finalize are timed (the heuristics offered 5-6 for the
/// forward and 2-3 for the backward of every graph seen so far).
pub(super) const CANDIDATES: usize = 6;

/// The tuner `MODELSPEC_CUDNN_TUNE` and the kernel cache allow (off, or reading and appending
/// `<cache>/cudnn-configs.tsv`), and whether it says `wide` (an experiment): the configs one
/// knob away from the heuristics' are timed too ([`super::knobs`]), under keys of their own.
pub(super) fn tuner_from_env() -> (Tuner, bool) {
    Tuner::from_env("MODELSPEC_CUDNN_TUNE", "cudnn-configs.tsv")
}

impl CudnnAttention {
    /// The plan of `pass` for `s` on its engine config: the one `MODELSPEC_CUDNN_CONFIG` forces,
    /// else the one persisted for this GPU, cuDNN version and shape, else the fastest of those
    /// that finalize, timed now and persisted (outside a graph capture, on the main stream),
    /// else the heuristics' first.
    pub(super) fn build(&self, pass: Pass, s: &AttnShape) -> Result<BuiltPlan> {
        let wide = self.wide;
        let key = format!(
            "{}|cuDNN {}|{:?}{}",
            self.gpu.name(),
            self.library.version,
            PlanKey::of(pass, s),
            if wide { "|wide" } else { "" }
        );
        let forced = config_choice()?;
        let want = match forced {
            Some(k) => Configs::Nth(k),
            None => {
                let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
                match tuner.lookup(&key) {
                    Some(j) => Configs::Nth(j),
                    None if tuner.enabled() && !self.gpu.capturing() && !self.gpu.in_branch() => {
                        Configs::Upto(CANDIDATES + if wide { WIDE_EXTRA } else { 0 })
                    }
                    None => Configs::Nth(0),
                }
            }
        };
        let plans = match self.finalize(pass, s, want, wide) {
            // A persisted choice this library no longer finalizes: the first pick.
            Err(_) if forced.is_none() && want != Configs::Nth(0) => {
                self.finalize(pass, s, Configs::Nth(0), false)?
            }
            r => r?,
        };
        let chosen = match want {
            Configs::Upto(_) => {
                let timed = if plans.len() > 1 {
                    self.time_configs(pass, s, &plans, wide.then_some(key.as_str()))
                } else {
                    Some((0, 0.0, 0.0))
                };
                // Not persisted when timing failed (no scratch memory): a later process tries.
                timed.map_or(0, |(j, best_ms, first_ms)| {
                    let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
                    tuner.record(Tuned {
                        key,
                        candidates: plans.len(),
                        chosen: j,
                        first_ms,
                        best_ms,
                    })
                })
            }
            Configs::Nth(_) => 0,
        };
        Ok(plans
            .into_iter()
            .nth(chosen)
            .expect("finalize returns at least one plan, and a choice indexes them"))
    }

    /// The plans `want` names, finalized under the handle's lock.
    fn finalize(
        &self,
        pass: Pass,
        s: &AttnShape,
        want: Configs,
        wide: bool,
    ) -> Result<Vec<BuiltPlan>> {
        let handle = self.lock_bound()?;
        match pass {
            Pass::Forward => sdpa::build_forward(handle.0, s, want, wide),
            Pass::Backward => sdpa::build_backward(handle.0, s, want, wide),
        }
    }

    /// The configs this handle chose by timing, in order (for benchmarks' reports).
    pub fn tuned(&self) -> Vec<Tuned> {
        Tuner::timed_in(&self.tuner)
    }

    /// Times each of `plans` (one graph's configs) on scratch operands of `s` with random bf16
    /// inputs: `(index of the fastest, its ms, the first's ms)`, or `None` when the scratch
    /// cannot be had or the first fails to run. Q/K/V (and dQ/dK/dV) share one buffer where the
    /// shape's strides say they are views of one fused projection, as in the trainer.
    /// With `log` (a key), each config's time goes to stderr.
    fn time_configs(
        &self,
        pass: Pass,
        s: &AttnShape,
        plans: &[BuiltPlan],
        log: Option<&str>,
    ) -> Option<(usize, f32, f32)> {
        let mut times = vec![None; plans.len()];
        let best = self.time_each(pass, s, plans, &mut times);
        if let Some(key) = log {
            for (p, t) in plans.iter().zip(&times) {
                let knobs: Vec<String> = (p.knobs.iter())
                    .map(|&(ty, v)| format!("{}={v}", knob_name(ty)))
                    .collect();
                eprintln!(
                    "cuDNN config {} (engine {}, {}): {} ({key})",
                    p.config,
                    p.engine,
                    knobs.join(" "),
                    t.map_or("failed".into(), |ms: f32| format!("{ms:.4} ms"))
                );
            }
        }
        best
    }

    /// [`time_configs`](Self::time_configs) without the log; `times[j]`: config j's time.
    fn time_each(
        &self,
        pass: Pass,
        s: &AttnShape,
        plans: &[BuiltPlan],
        times: &mut [Option<f32>],
    ) -> Option<(usize, f32, f32)> {
        let gpu = &self.gpu;
        let rows = s.batch * s.seq;
        let stats = s.batch * s.heads * s.seq;
        let (len, offs) = qkv_layout(s);
        let fwd = FwdScratch::new(gpu, s)?;
        let (qkv, fwd_ptrs) = (&fwd.qkv, fwd.ptrs());
        let at = |b: &GpuBuf<u16>, i: usize| b.ptr() + 2 * offs[i] as u64;
        let most = plans.iter().map(|p| p.workspace).max().unwrap_or(0);
        match pass {
            Pass::Forward => {
                let ws = gpu.zeros::<u8>(most.max(1)).ok()?;
                fastest(plans.len(), |j, reps| {
                    times[j] = per_run(gpu, reps, || {
                        self.run_fwd(&plans[j], s, fwd_ptrs, ws.ptr(), ws.len())
                    });
                    times[j]
                })
            }
            Pass::Backward => {
                // O and the stats from the forward's own (chosen) plan.
                let plan = self.plan(Pass::Forward, s).ok()?;
                let ws = gpu
                    .zeros::<u8>(most.max(plan.built.workspace).max(1))
                    .ok()?;
                self.run_fwd(&plan.built, s, fwd_ptrs, ws.ptr(), ws.len())
                    .ok()?;
                let dqkv = gpu.zeros::<u16>(len).ok()?;
                let dout = gpu.upload(&random_bf16(rows * s.ldo, 2)).ok()?;
                let dq_acc = gpu.zeros::<f32>(stats * s.head_dim).ok()?;
                let delta = gpu.zeros::<f32>(stats).ok()?;
                let ptrs = [
                    at(&dqkv, 0),
                    at(&dqkv, 1),
                    at(&dqkv, 2),
                    dq_acc.ptr(),
                    delta.ptr(),
                    dout.ptr(),
                    fwd_ptrs[0],
                    fwd_ptrs[1],
                    at(qkv, 0),
                    at(qkv, 1),
                    at(qkv, 2),
                ];
                fastest(plans.len(), |j, reps| {
                    times[j] = per_run(gpu, reps, || {
                        self.run_bwd(&plans[j], s, ptrs, ws.ptr(), ws.len())
                    });
                    times[j]
                })
            }
        }
    }

    /// Whether `own`, another kernel's forward of `s` (the same o and lse from the same
    /// operands: its pointers o, lse, q, k, v), is faster than the plan
    /// [`fwd`](CudnnAttention::fwd) runs: the answer persisted for this GPU, cuDNN version, kernel
    /// `tag` and shape, else timed now on scratch operands of the shape (as the engine configs
    /// are) and persisted. `false` where nothing can be timed (no tuner, a graph capture, no
    /// scratch memory, no plan) or `own` fails to run.
    pub fn own_forward_faster(
        &self,
        s: &AttnShape,
        tag: &str,
        mut own: impl FnMut([DevPtr; 5]) -> std::result::Result<(), String>,
    ) -> bool {
        let key = format!(
            "{}|cuDNN {}|own forward {tag}|{:?}",
            self.gpu.name(),
            self.library.version,
            PlanKey::of(Pass::Forward, s)
        );
        {
            let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(j) = tuner.lookup(&key) {
                return j == 1;
            }
            if !tuner.enabled() || self.gpu.capturing() || self.gpu.in_branch() {
                return false;
            }
        }
        // Candidate 0 is cuDNN's plan (building it may time its configs, under the tuner's lock).
        let Ok(plan) = self.plan(Pass::Forward, s) else {
            return false;
        };
        let Some(scratch) = FwdScratch::new(&self.gpu, s) else {
            return false;
        };
        let Ok(ws) = self.gpu.zeros::<u8>(plan.built.workspace.max(1)) else {
            return false;
        };
        let ptrs = scratch.ptrs();
        let timed = fastest(2, |j, reps| {
            per_run(&self.gpu, reps, || match j {
                0 => (self.run_fwd(&plan.built, s, ptrs, ws.ptr(), ws.len()))
                    .map_err(|e| e.to_string()),
                _ => own(ptrs),
            })
        });
        let Some((j, best_ms, first_ms)) = timed else {
            return false;
        };
        let mut tuner = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
        tuner.record(Tuned {
            key,
            candidates: 2,
            chosen: j,
            first_ms,
            best_ms,
        }) == 1
    }
}

/// A forward's scratch operands for timing: Q, K and V in one buffer of random bf16 (laid out as
/// [`qkv_layout`] says), o and lse.
struct FwdScratch {
    qkv: GpuBuf<u16>,
    offs: [usize; 3],
    o: GpuBuf<u16>,
    lse: GpuBuf<f32>,
}

impl FwdScratch {
    fn new(gpu: &Gpu, s: &AttnShape) -> Option<FwdScratch> {
        let (len, offs) = qkv_layout(s);
        Some(FwdScratch {
            qkv: gpu.upload(&random_bf16(len, 1)).ok()?,
            offs,
            o: gpu.zeros::<u16>(s.batch * s.seq * s.ldo).ok()?,
            lse: gpu.zeros::<f32>(s.batch * s.heads * s.seq).ok()?,
        })
    }

    /// o, lse, q, k, v.
    fn ptrs(&self) -> [DevPtr; 5] {
        let at = |i: usize| self.qkv.ptr() + 2 * self.offs[i] as u64;
        [self.o.ptr(), self.lse.ptr(), at(0), at(1), at(2)]
    }
}

/// Elements of one bf16 buffer that holds Q, K and V of `s` (or their gradients), and the
/// element offset of each: the views of one fused projection where the three share a row
/// stride wide enough for all their heads, else three blocks one after another.
fn qkv_layout(s: &AttnShape) -> (usize, [usize; 3]) {
    let rows = s.batch * s.seq;
    let widths = [
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
        s.kv_heads * s.v_head_dim,
    ];
    let [lq, lk, lv] = [s.ldq, s.ldk, s.ldv];
    if lq == lk && lk == lv && widths.iter().sum::<usize>() <= lq {
        (rows * lq, [0, widths[0], widths[0] + widths[1]])
    } else {
        (rows * (lq + lk + lv), [0, rows * lq, rows * (lq + lk)])
    }
}

/// `n` bf16 values of magnitude in [0.125, 0.5) and random sign (xorshift from `seed`).
fn random_bf16(n: usize, seed: u64) -> Vec<u16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Exponent 124 or 125 (2^-3, 2^-2), any mantissa, either sign.
            0x3E00 | (x as u16 & 0x80FF)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_strides_share_one_buffer_and_dense_ones_stack() {
        let dense = AttnShape::dense(2, 10, 8, 2, 64);
        let (len, offs) = qkv_layout(&dense);
        assert_eq!(len, 20 * (512 + 128 + 128));
        assert_eq!(offs, [0, 20 * 512, 20 * 640]);
        let ld = (8 + 2 * 2) * 64;
        let fused = AttnShape {
            ldq: ld,
            ldk: ld,
            ldv: ld,
            ..dense
        };
        let (len, offs) = qkv_layout(&fused);
        assert_eq!(len, 20 * ld);
        assert_eq!(offs, [0, 512, 640]);
    }

    #[test]
    fn random_values_are_finite_and_bounded() {
        let v = random_bf16(4096, 7);
        let f = |b: u16| f32::from_bits((b as u32) << 16);
        assert!(v.iter().all(|&b| (0.125..0.5).contains(&f(b).abs())));
        assert!(v.iter().any(|&b| f(b) < 0.0) && v.iter().any(|&b| f(b) > 0.0));
        assert_ne!(random_bf16(16, 1), random_bf16(16, 2));
    }
}
