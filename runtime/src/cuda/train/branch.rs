//! Weight gradients on a second stream, beside the backward's chain of input gradients
//! (on by default; `MODELSPEC_WGRAD_BRANCH=off` or [`GpuTrainer::set_wgrad_branch`](super::GpuTrainer)
//! turns it off).
//!
//! A layer's backward is a chain: each kernel's input gradient needs the one after it. A
//! projection's weight gradient (`dW = dyᵀ x`, and its bias's column sum) hangs off that chain:
//! it needs its `dy` and the projection's saved input `x`, and nothing in the step reads it
//! before AdamW. On one stream the two kinds take turns, and the weight gradients fill the GPU
//! badly: their outputs are small over a long K (gpt2-124m's attention output projection, 768 x
//! 768, is 36 tiles of 128 x 128 for 132 multiprocessors; the MLP's 3072 x 768, 144 tiles or 1.09
//! waves), while the chain's memory-bound norm backwards and the attention backward leave the
//! tensor cores idle. With the branch on, each projection's weight gradient in a layer of plain
//! kernels goes to [`Gpu::branch`] (one priority step below the main stream):
//!
//! ```text
//! main    ── dX fc_proj ──●── dX fc ── norm ── dX proj ──●── attention bwd ── ... ── norm ──▶
//!                         │ fork k                       │ fork k+2        claim(g): wait done k
//! branch                  └── dW fc_proj ●done k  dW fc ●└── dW proj ●── ...
//! ```
//!
//! Ordering. Before each branch op the main stream records a fork event and the branch waits for
//! it (the op's `dy` is written); after it the branch records a done event. An op reads two
//! buffers, `dy` and `x`, which the main stream must not overwrite before the op ends:
//! - A gradient buffer is written again only after `Step::fresh` hands it out anew (a gradient
//!   passed on as an alias is copied before anything writes to it: `backward.rs`), so `fresh`
//!   claims the buffer ([`Branch::claim`]): if a pending op reads it, the main stream waits for
//!   that op's done event (the branch runs in order, so for every op before it too).
//! - `dqkv`, which the attention backward writes in place, is claimed there.
//! - Saved inputs are written by the forward and by recomputation only: a layer that recomputes
//!   joins the branch first ([`Branch::join`]), and the step joins it before it ends.
//! - Layers with mixture-of-experts or MLA kernels run their weight gradients on the main stream,
//!   after a join.
//!
//! The head's weight gradient of each logits chunk goes to the branch the same way, beside the
//! chunk's input gradient (a GEMM of `rows x d_model` outputs over K = the vocabulary: 192 tiles
//! for gpt2's 4096-row chunks, 1.45 waves); the next chunk's classifier GEMM claims the logits.
//!
//! The overlapped AdamW ([`super::overlap`]) of a layer waits for the branch's last op too. The
//! branch has its own cuBLASLt workspace ([`Gemm::prepare_branch`]) and its
//! own column-sum scratch; the arithmetic of every GEMM and sum is unchanged, so the gradients
//! are those of the single stream. The first step of a trainer runs on one stream (it plans and
//! times the GEMMs, which needs the GPU to itself), and so does a step under the timeline.

use std::sync::Mutex;

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::super::reduce::ReduceScratch;
use crate::cuda::error::{DriverContext, Result};
use crate::cuda::gemm::Gemm;
use crate::cuda::gpu::{DevPtr, Gpu, GpuBuf};
use modelspec_dsl::program::{Fusion, Kernel};

/// The branch of one trainer: its events, its column-sum scratch and what is in flight.
pub(super) struct Branch {
    /// Recorded on the main stream before op k; the branch waits for it.
    forks: Vec<CudaEvent>,
    /// Recorded on the branch after op k.
    dones: Vec<CudaEvent>,
    /// The column sums' scratch on the branch (the main stream's norms use `Layout::reduce`
    /// meanwhile): allocated zeroed, and every reduction leaves its counters zero.
    _scratch: GpuBuf<u8>,
    reduce: ReduceScratch,
    state: Mutex<State>,
}

/// The ops of the current step.
#[derive(Debug, Default)]
struct State {
    /// Ops launched this step.
    next: usize,
    /// Ops `[0, joined)` the main stream has waited for.
    joined: usize,
    /// The buffers pending ops read, and which op.
    pending: Vec<(DevPtr, usize)>,
}

impl State {
    /// Op `next` was launched, reading `reads` (0: none).
    fn launched(&mut self, reads: [DevPtr; 2]) {
        let k = self.next;
        self.pending
            .extend(reads.into_iter().filter(|&p| p != 0).map(|p| (p, k)));
        self.next = k + 1;
    }

    /// The op whose end the main stream must wait for before it writes `p`: the last pending
    /// one reading it. The ops up to it then count as joined.
    fn claim(&mut self, p: DevPtr) -> Option<usize> {
        let k = (self.pending.iter())
            .filter(|&&(q, _)| q == p)
            .map(|&(_, k)| k)
            .max()?;
        self.joined = self.joined.max(k + 1);
        self.pending.retain(|&(_, j)| j > k);
        Some(k)
    }

    /// The op whose end the main stream must wait for to have waited for all: the last one
    /// launched, unless it is joined already.
    fn join(&mut self) -> Option<usize> {
        self.pending.clear();
        let k = (self.next > self.joined).then(|| self.next - 1)?;
        self.joined = self.next;
        Some(k)
    }
}

impl Branch {
    /// A branch for steps of at most `ops` weight-gradient ops (more run on the main stream),
    /// its column sums up to `reduce_bytes` of scratch ([`ReduceScratch::bytes_for`]). Makes the
    /// stream and the GEMM workspace now, never inside a step's capture.
    pub(super) fn new(gpu: &Gpu, gemm: &Gemm, ops: usize, reduce_bytes: usize) -> Result<Branch> {
        gpu.branch()?;
        gemm.prepare_branch()?;
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .during(|| "creating an event of the weight-gradient branch".into())
        };
        let scratch = gpu.zeros::<u8>(reduce_bytes)?;
        Ok(Branch {
            forks: (0..ops).map(|_| event()).collect::<Result<_>>()?,
            dones: (0..ops).map(|_| event()).collect::<Result<_>>()?,
            reduce: ReduceScratch::new(scratch.ptr(), reduce_bytes),
            _scratch: scratch,
            state: Mutex::new(State::default()),
        })
    }

    /// Device bytes of a branch whose column sums take `reduce_bytes` of scratch: those and the
    /// GEMM workspace.
    pub(super) fn bytes(reduce_bytes: usize) -> usize {
        reduce_bytes + crate::cuda::gemm::WORKSPACE
    }

    /// The branch of a trainer with layers `run`, arena `buf` and shape `s` (its head's logits
    /// chunks each have a weight gradient).
    pub(super) fn for_trainer(
        gpu: &Gpu,
        gemm: &Gemm,
        run: &[super::saves::LayerRun],
        buf: &super::layout::Layout,
        s: &super::layout::Shape,
    ) -> Result<Branch> {
        let head = s.n.div_ceil(s.chunk.max(1));
        Branch::new(gpu, gemm, ops(run) + head, buf.reduce.bytes)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At the step's start: nothing in flight (the step before joined).
    pub(super) fn begin(&self) {
        *self.state() = State::default();
    }

    /// The column-sum scratch of work on the branch.
    pub(super) fn reduce(&self) -> ReduceScratch {
        self.reduce
    }

    /// Runs `f` (a weight gradient reading the buffers `reads`) on the branch, after the main
    /// stream's work so far; on the main stream, after a join, when this step's ops are spent.
    pub(super) fn run(
        &self,
        gpu: &Gpu,
        reads: [DevPtr; 2],
        f: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let k = self.state().next;
        if k >= self.forks.len() {
            self.join(gpu)?;
            return f();
        }
        let branch = gpu.branch()?;
        self.forks[k]
            .record(gpu.stream())
            .during(|| "recording a fork of the weight-gradient branch".into())?;
        branch
            .wait(&self.forks[k])
            .during(|| "waiting for the backward on the branch".into())?;
        gpu.on_branch(f)?;
        self.dones[k]
            .record(branch)
            .during(|| "recording a weight gradient's end on the branch".into())?;
        self.state().launched(reads);
        Ok(())
    }

    /// Before the main stream overwrites buffer `p`: waits for the last pending op that reads
    /// it (and so for every op before that one).
    pub(super) fn claim(&self, gpu: &Gpu, p: DevPtr) -> Result<()> {
        match self.state().claim(p) {
            Some(k) => Self::wait(gpu, &self.dones[k]),
            None => Ok(()),
        }
    }

    /// The main stream waits for every op launched so far.
    pub(super) fn join(&self, gpu: &Gpu) -> Result<()> {
        match self.state().join() {
            Some(k) => Self::wait(gpu, &self.dones[k]),
            None => Ok(()),
        }
    }

    /// The done event of the last op launched this step (`None` before the first): whoever
    /// waits for it waits for every weight gradient computed so far.
    pub(super) fn last(&self) -> Option<&CudaEvent> {
        let n = self.state().next;
        n.checked_sub(1).map(|k| &self.dones[k])
    }

    fn wait(gpu: &Gpu, done: &CudaEvent) -> Result<()> {
        gpu.stream()
            .wait(done)
            .during(|| "waiting for the weight-gradient branch".into())
    }
}

/// Whether layer `run`'s weight gradients may go to the branch: every kernel of its program is
/// one whose buffers the claims above cover (no mixture-of-experts, no MLA).
pub(super) fn plain(run: &super::saves::LayerRun) -> bool {
    run.kernels.iter().all(|k| {
        matches!(
            k.fusion,
            Fusion::Norm
                | Fusion::ResidualNorm
                | Fusion::Linear
                | Fusion::Activation
                | Fusion::GateUp
                | Fusion::LinearAct
                | Fusion::Attention
                | Fusion::QkvRope
        )
    })
}

/// The weight-gradient ops of a step over layers `runs`: one a projection of a plain layer.
pub(super) fn ops(runs: &[super::saves::LayerRun]) -> usize {
    let projection = |k: &&Kernel| {
        matches!(
            k.fusion,
            Fusion::Linear | Fusion::GateUp | Fusion::LinearAct | Fusion::QkvRope
        )
    };
    (runs.iter().filter(|r| plain(r)))
        .map(|r| r.kernels.iter().filter(projection).count())
        .sum()
}

impl super::GpuTrainer {
    /// Turns the weight-gradient branch (`cuda/train/branch.rs`) on or off (on by default;
    /// `MODELSPEC_WGRAD_BRANCH=off` turns it off when the trainer is built). The gradients are the
    /// same either way; a trainer's first step, and steps under the timeline, run on one stream.
    pub fn set_wgrad_branch(&mut self, on: bool) -> Result<()> {
        self.branch = match (on, self.branch.take()) {
            (false, _) => None,
            (true, Some(b)) => Some(b),
            (true, None) => Some(Branch::for_trainer(
                &self.gpu,
                &self.gemm,
                &self.run,
                &self.buf,
                &self.shape,
            )?),
        };
        Ok(())
    }

    /// Where [`GpuTrainer::step`](super::GpuTrainer::step) runs the weight gradients, for logs
    /// and benchmarks.
    pub fn wgrad_path(&self) -> &'static str {
        match self.branch {
            Some(_) => "on a second stream beside the input gradients",
            None => "in turn with the input gradients",
        }
    }
}

impl super::Step<'_> {
    /// Runs `f`, a weight gradient reading `reads` (its `dy` and saved input) of layer `layer`
    /// (`None`: the head), on the branch when this step uses one and the layer is plain, else
    /// here on the main stream.
    pub(super) fn wgrad(
        &self,
        layer: Option<usize>,
        reads: [DevPtr; 2],
        f: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        match self.branch {
            Some(b) if layer.is_none_or(|i| plain(&self.run[i])) => b.run(self.gpu, reads, f),
            _ => f(),
        }
    }

    /// Before the main stream overwrites buffer `p` ([`Branch::claim`]).
    pub(super) fn claim(&self, p: DevPtr) -> Result<()> {
        match self.branch {
            Some(b) => b.claim(self.gpu, p),
            None => Ok(()),
        }
    }

    /// The main stream waits for every weight gradient on the branch so far ([`Branch::join`]).
    pub(super) fn join_branch(&self) -> Result<()> {
        match self.branch {
            Some(b) => b.join(self.gpu),
            None => Ok(()),
        }
    }

    /// Before layer `i`'s backward: the join, where the layer recomputes its forward (which
    /// writes saved inputs the branch may still read) or keeps its weight gradients on the main
    /// stream (its kernels' buffers are not covered by the claims: [`plain`]).
    pub(super) fn join_branch_before_layer(&self, i: usize) -> Result<()> {
        let run = &self.run[i];
        if run.recomputes() || !plain(run) {
            self.join_branch()?;
        }
        Ok(())
    }

    /// The column-sum scratch of the stream launches go to now.
    pub(super) fn reduce_scratch(&self) -> ReduceScratch {
        match self.branch {
            Some(b) if self.gpu.in_branch() => b.reduce(),
            _ => self.buf.reduce,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn a_claim_waits_for_the_last_reader_and_forgets_what_it_covers() {
        let mut s = State::default();
        s.launched([10, 20]); // op 0
        s.launched([30, 0]); // op 1
        s.launched([10, 40]); // op 2
        assert_eq!(s.claim(99), None, "nothing reads it");
        assert_eq!(s.claim(10), Some(2), "the last of two readers");
        // Waiting for op 2 covered ops 0 and 1: their buffers are free now.
        assert_eq!((s.claim(20), s.claim(30), s.claim(40)), (None, None, None));
        assert_eq!(s.join(), None, "everything is joined");
        s.launched([50, 60]); // op 3
        assert_eq!(s.claim(60), Some(3));
        assert_eq!(s.join(), None);
    }

    #[test]
    fn a_join_waits_for_the_last_op_once() {
        let mut s = State::default();
        assert_eq!(s.join(), None, "no op yet");
        s.launched([1, 2]);
        s.launched([3, 4]);
        assert_eq!(s.claim(1), Some(0));
        assert_eq!(s.join(), Some(1));
        assert_eq!(s.join(), None);
        assert_eq!(s.claim(3), None, "a join covers every buffer");
    }
}
