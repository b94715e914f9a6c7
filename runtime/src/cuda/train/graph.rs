//! A training step's forward and backward as one CUDA graph.
//!
//! A step is ~500 launches for GPT-2 124M (norms, GEMMs, attention, reductions, the classifier
//! chunks); issuing them costs the host a few microseconds each, and wherever a run of short
//! kernels lets the GPU catch up it waits for the host (~2.7 ms of a 32 ms step on an H100). The
//! trainer's shapes are fixed and every buffer lives at a fixed address, so the launches of
//! `GpuTrainer::fwd_bwd` are the same every step: the first step runs them directly (it also
//! builds the cuBLASLt and cuDNN plans and loads the kernels, none of which may happen during a
//! capture), the second captures them on the trainer's stream and replays the graph from then
//! on. AdamW stays outside the graph (its bias corrections change every step), unless it is
//! overlapped with the backward ([`super::overlap`]: it then reads them from the device).
//!
//! What the captured launches bake in from the host is the key of the graph: the number of
//! counted targets (the loss's `1 / valid_targets` scale, which `set_batch` recomputes),
//! whether the auxiliary loss is on, and whether AdamW is part of the step. A step that changes
//! any of them is captured again. Mixture-of-experts layers read their per-expert counts back to
//! the host in every forward and backward, so a spec with one runs eagerly; so does any trainer
//! when `MODELSPEC_CUDA_GRAPH=0` (or `off`) is set, or after
//! [`GpuTrainer::set_cuda_graph`]`(false)`. A capture that fails (a driver or library call that
//! cannot be captured) turns the graph off for the trainer, names why in
//! [`GpuTrainer::cuda_graph`], and runs the step eagerly: the results never depend on it.

use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use super::GpuTrainer;
use crate::cuda::error::{DriverContext, Result};

/// The host values a captured step depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    valid_targets: usize,
    aux_loss: bool,
    /// Whether AdamW runs inside the step (overlapped with the backward; its scalars are read
    /// from the device, so they are not part of the key).
    adamw: bool,
}

/// A captured graph, replayed only through `&mut` (so never from two threads at once).
pub(super) struct Graph(CudaGraph);

// SAFETY: a CUDA graph and its executable may be used from any thread as long as calls on them
// are serialised (CUDA's graph thread-safety rules); `Graph` offers its one operation, `launch`,
// through `&mut self` only, so moving it between threads (`Send`) and sharing `&Graph` (`Sync`,
// which allows nothing) keep them serialised.
unsafe impl Send for Graph {}
// SAFETY: see above: no method takes `&self`.
unsafe impl Sync for Graph {}

impl Graph {
    fn launch(&mut self) -> Result<()> {
        self.0
            .launch()
            .during(|| "replaying the step's graph".into())
    }
}

/// Whether and how the trainer's steps run as a graph.
pub(super) enum StepGraph {
    /// Eager until the first step has run (`warm`), then captured.
    Pending { warm: bool },
    /// Always eager, and why.
    Off(String),
    /// The captured forward and backward, and what it baked in.
    Ready { graph: Graph, key: Key },
}

impl StepGraph {
    /// The initial state for a trainer; `moe`: whether the spec has mixture-of-experts layers.
    pub(super) fn new(moe: bool) -> StepGraph {
        if let Ok(v) = std::env::var("MODELSPEC_CUDA_GRAPH")
            && crate::cuda::switch_value(Some(&v)) == Some(false)
        {
            return StepGraph::Off(format!("MODELSPEC_CUDA_GRAPH={v}"));
        }
        if moe {
            return StepGraph::Off(
                "mixture-of-experts layers read their per-expert counts back to the host".into(),
            );
        }
        StepGraph::Pending { warm: false }
    }
}

impl GpuTrainer {
    /// Turns the CUDA graph of [`GpuTrainer::step`] on (the default where the spec allows it:
    /// captured at the second step) or off (every step launches its kernels directly). Results
    /// are the same either way.
    pub fn set_cuda_graph(&mut self, on: bool) {
        let moe = self.moe.iter().any(Option::is_some);
        self.graph = match (on, moe) {
            (false, _) => StepGraph::Off("turned off (set_cuda_graph)".into()),
            (true, moe) => StepGraph::new(moe),
        };
    }

    /// How the steps run, for logs and benchmarks: `captured`, `not yet captured` or `off (why)`.
    pub fn cuda_graph(&self) -> String {
        match &self.graph {
            StepGraph::Ready { .. } => "captured (forward and backward)".into(),
            StepGraph::Pending { .. } => "not yet captured".into(),
            StepGraph::Off(why) => format!("off ({why})"),
        }
    }

    /// The step's forward and backward (with `adamw`, AdamW overlapped): replayed from the
    /// graph, captured first where needed, or run directly (see the module docs).
    pub(super) fn fwd_bwd_graphed(&mut self, adamw: bool) -> Result<()> {
        let key = Key {
            valid_targets: self.valid_targets,
            aux_loss: self.aux_loss,
            adamw,
        };
        // The first step, and the first of another kind (AdamW in or out), run eagerly: what
        // they launch for the first time is set up outside a capture.
        let first_of_kind = match &self.graph {
            StepGraph::Off(_) => return self.fwd_bwd(None, adamw),
            StepGraph::Pending { warm } => !warm,
            StepGraph::Ready { key: k, .. } => k.adamw != adamw,
        };
        if first_of_kind {
            self.fwd_bwd(None, adamw)?;
            self.graph = StepGraph::Pending { warm: true };
            return Ok(());
        }
        if let StepGraph::Ready { graph, key: k } = &mut self.graph
            && *k == key
        {
            return graph.launch();
        }
        // The first graphed step, or a batch that changed what the graph baked in.
        self.graph = StepGraph::Pending { warm: true };
        match self.capture(adamw) {
            Ok(graph) => {
                let mut graph = Graph(graph);
                graph.launch()?;
                self.graph = StepGraph::Ready { graph, key };
                Ok(())
            }
            Err(e) => {
                self.graph = StepGraph::Off(format!("capture failed: {e}"));
                self.fwd_bwd(None, adamw)
            }
        }
    }

    /// Records `fwd_bwd` on the trainer's stream (and the streams it forks to) into a graph
    /// (nothing runs).
    fn capture(&self, adamw: bool) -> Result<CudaGraph> {
        let stream = self.gpu.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .during(|| "starting to capture the step".into())?;
        let body = self.fwd_bwd(None, adamw);
        // End the capture whatever happened, so the stream is usable again.
        // With the overlapped AdamW or the weight-gradient branch, their nodes keep their
        // streams' lower priorities.
        let flags = if adamw || self.branch.is_some() {
            CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY
        } else {
            CUgraphInstantiate_flags(0)
        };
        let end = stream
            .end_capture(flags)
            .during(|| "ending the step's capture".into());
        body?;
        end?.ok_or_else(|| super::unsupported("the step's capture recorded nothing".into()))
    }
}
