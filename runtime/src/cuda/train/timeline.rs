//! Where a training step's GPU time goes, measured inside the step: CUDA events around every
//! kernel of the program (per fusion, forward, recomputation and backward), the classifier head,
//! the embeddings and AdamW, summed per label over the steps since the last report.
//!
//! ncu replays each kernel on its own (serialised, with its own cache and clock handling), so its
//! per-kernel times need not add up to a step; these spans are the kernels as they run back to
//! back in the step. Events cost a little host time per span, and a CUDA graph cannot hold them,
//! so the timeline turns the step's graph off while it is on ([`GpuTrainer::set_timeline`]).

use std::sync::Mutex;

use cudarc::driver::{CudaEvent, sys::CUevent_flags};

use super::{GpuTrainer, Step};
use crate::cuda::error::{DriverContext, Result};
use crate::cuda::gpu::Gpu;

/// Recorded spans: label, start and end events.
#[derive(Default)]
pub(super) struct Timeline {
    spans: Mutex<Vec<(String, CudaEvent, CudaEvent)>>,
}

impl Timeline {
    /// Runs `f` between two events recorded on `gpu`'s stream, kept under `label`.
    pub(super) fn span<R>(
        &self,
        gpu: &Gpu,
        label: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .during(|| "creating a timeline event".into())
        };
        let (start, end) = (event()?, event()?);
        start
            .record(gpu.stream())
            .during(|| "recording a timeline event".into())?;
        let out = f()?;
        end.record(gpu.stream())
            .during(|| "recording a timeline event".into())?;
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((label(), start, end));
        Ok(out)
    }

    /// Milliseconds per label (in first-seen order) of the spans so far, which it clears
    /// (synchronises on the last event).
    fn report(&self) -> Result<Vec<(String, f64)>> {
        let spans = std::mem::take(&mut *self.spans.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out: Vec<(String, f64)> = Vec::new();
        for (label, start, end) in spans {
            end.synchronize()
                .during(|| "waiting for a timeline event".into())?;
            let ms = f64::from(
                start
                    .elapsed_ms(&end)
                    .during(|| "reading a timeline event".into())?,
            );
            match out.iter_mut().find(|(l, _)| *l == label) {
                Some((_, t)) => *t += ms,
                None => out.push((label, ms)),
            }
        }
        Ok(out)
    }
}

impl Step<'_> {
    /// `f`, as a span of the timeline when one is on.
    pub(super) fn timed<R>(
        &self,
        label: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        match self.timeline {
            Some(t) => t.span(self.gpu, label, f),
            None => f(),
        }
    }
}

impl GpuTrainer {
    /// Turns the in-step timeline on (every kernel of the program, the head, the embeddings and
    /// AdamW between CUDA events; the step's CUDA graph is off meanwhile) or off (the graph comes
    /// back at the next step).
    pub fn set_timeline(&mut self, on: bool) {
        self.timeline = on.then(Timeline::default);
        self.set_cuda_graph(!on);
    }

    /// Runs one step with the timeline on (not counted: the eager path's first), then `steps`
    /// steps, and returns the milliseconds per step of each span label (in the order they first
    /// ran) and of the whole step (event-timed); the timeline is off again afterwards.
    pub fn profile_steps(&mut self, steps: usize) -> Result<(Vec<(String, f64)>, f64)> {
        let steps = steps.max(1);
        self.set_timeline(true);
        self.step()?;
        self.timeline()?;
        let gpu = self.gpu.clone();
        let mut wall = 0.0;
        for _ in 0..steps {
            wall += f64::from(gpu.time_ms(|| self.step())?);
        }
        let per_step = |ms: f64| ms / steps as f64;
        let spans = self
            .timeline()?
            .into_iter()
            .map(|(label, ms)| (label, per_step(ms)))
            .collect();
        self.set_timeline(false);
        Ok((spans, per_step(wall)))
    }

    /// Milliseconds per span label summed over the steps since the timeline was turned on or
    /// last read (e.g. `fwd Attention`, `bwd Linear`, `recompute Norm`, `head`, `adamw`), in the
    /// order they first ran; empty when the timeline is off. Synchronises.
    pub fn timeline(&self) -> Result<Vec<(String, f64)>> {
        match &self.timeline {
            Some(t) => t.report(),
            None => Ok(Vec::new()),
        }
    }
}
