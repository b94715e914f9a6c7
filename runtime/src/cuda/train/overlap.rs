//! AdamW overlapped with the backward (`MODELSPEC_ADAMW_OVERLAP=on`, or
//! [`GpuTrainer::set_adamw_overlap`]).
//!
//! Without it a step is forward, backward, then one AdamW launch over the whole arena: 1.35 ms
//! of a 30.3 ms gpt2-124m step on an H100, memory-bound and alone on the GPU. But a layer's
//! parameters receive their last gradient in that layer's backward, and nothing later in the
//! step reads them or their gradients: the backward of layer i−1 reads only its own weights.
//! So, with the overlap on:
//!
//! ```text
//! main stream   ... bwd layer i ──●── bwd layer i−1 ──●── ... bwd layer 0 ── embed bwd ──●     ┌─●── next step
//!                                 │ fork i            │ fork i−1                         │ rest │ join
//! aside stream                    └── AdamW(layer i)  └── AdamW(layer i−1) ...           └── AdamW(rest)
//! ```
//!
//! After layer i's backward the main stream records an event; the aside stream
//! ([`Gpu::aside`](crate::cuda::Gpu::aside), the lowest priority) waits for it and runs AdamW over
//! layer i's ranges of the arena while the main stream goes on with layer i−1. Being of the lowest
//! priority, its blocks are scheduled only on multiprocessors the backward's kernels leave idle
//! (the tails of their last waves, the gaps between launches), and each block is short
//! ([`Kernels::adamw_dev`]). The parameters outside the layers (embeddings, final norm, an untied
//! head) are finished only by the embedding backward: their AdamW runs after it, and the main
//! stream waits for the aside stream before anything else (the join), so a step still ends with
//! every parameter updated.
//!
//! The step's scalars change every step (the bias corrections, the learning rate), so they are
//! read from a device buffer that [`Overlap::set_scalars`] writes before the step: the whole step,
//! AdamW included, is then one captured CUDA graph (its nodes keep their streams' priorities).
//! Per element the arithmetic is the single launch's: the results are the same bits.

use std::ops::Range;

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::Step;
use super::params::ParamArena;
use crate::cuda::error::{DriverContext, Result};
use crate::cuda::gpu::{DevPtr, Gpu, GpuBuf};
use crate::train::optim::StepScalars;
use modelspec_dsl::ModelSpec;

/// The overlapped AdamW of one trainer: its arena ranges, scalars and events.
pub(super) struct Overlap {
    /// [`StepScalars::words`] of the coming step.
    scalars: GpuBuf<f32>,
    /// Each layer's ranges of the parameter arena (one per parameter group it has elements in).
    layers: Vec<Vec<Range<usize>>>,
    /// The ranges of the parameters outside the layers.
    rest: Vec<Range<usize>>,
    /// Recorded on the main stream after layer i's backward (index i), after the embedding
    /// backward (the last); the aside stream waits for each.
    forks: Vec<CudaEvent>,
    /// Recorded on the aside stream after the last AdamW; the main stream waits for it.
    join: CudaEvent,
}

/// Which layer parameter `name` belongs to (`layers.{i}.…`), or `None` (embeddings, the final
/// norm, the head).
fn owner(name: &str) -> Option<usize> {
    name.strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The arena `[0, total)` cut where the owner changes, parameters taken in arena order (each
/// up to the next one's offset, so padding goes with the parameter before it): each layer's
/// ranges and the rest's, which together cover the arena exactly once. The arena keeps its
/// groups (decaying matrices, embeddings, vectors) in parameter-table order, which is
/// layer-major, so a layer has one range per group it has parameters in.
pub(super) fn arena_ranges(
    offsets: &std::collections::BTreeMap<String, usize>,
    total: usize,
    layers: usize,
) -> (Vec<Vec<Range<usize>>>, Vec<Range<usize>>) {
    let mut by_offset: Vec<(usize, Option<usize>)> =
        offsets.iter().map(|(n, &o)| (o, owner(n))).collect();
    by_offset.sort_unstable();
    let (mut per_layer, mut rest) = (vec![Vec::new(); layers], Vec::new());
    let mut i = 0;
    while i < by_offset.len() {
        let (start, who) = by_offset[i];
        let mut j = i + 1;
        while j < by_offset.len() && by_offset[j].1 == who {
            j += 1;
        }
        let end = by_offset.get(j).map_or(total, |&(o, _)| o);
        match who {
            Some(l) if l < layers => per_layer[l].push(start..end),
            _ => rest.push(start..end),
        }
        i = j;
    }
    if let Some(first) = by_offset.first()
        && first.0 > 0
    {
        rest.push(0..first.0);
    }
    (per_layer, rest)
}

impl Overlap {
    pub(super) fn new(gpu: &Gpu, spec: &ModelSpec, p: &ParamArena) -> Result<Overlap> {
        // The stream is made here, never inside a step's capture.
        gpu.aside()?;
        let (layers, rest) = arena_ranges(&p.offsets, p.total, spec.layers.len());
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .during(|| "creating an event of the overlapped AdamW".into())
        };
        Ok(Overlap {
            scalars: gpu.zeros::<f32>(10)?,
            forks: (0..=layers.len()).map(|_| event()).collect::<Result<_>>()?,
            join: event()?,
            layers,
            rest,
        })
    }

    /// Writes the coming step's scalars (stream-ordered: after the step before has read them).
    pub(super) fn set_scalars(&mut self, gpu: &Gpu, s: &StepScalars) -> Result<()> {
        gpu.write(&mut self.scalars, &s.words([1.0, 1.0]))
    }

    /// After layer `i`'s backward: its parameters' AdamW on the aside stream.
    pub(super) fn after_layer(&self, st: &Step<'_>, i: usize) -> Result<()> {
        self.fork(st, i, &self.layers[i])
    }

    /// After the embedding backward: the other parameters' AdamW, then the main stream waits
    /// for all of it.
    pub(super) fn finish(&self, st: &Step<'_>) -> Result<()> {
        self.fork(st, self.layers.len(), &self.rest)?;
        let aside = st.gpu.aside()?;
        self.join
            .record(aside)
            .during(|| "recording the end of the overlapped AdamW".into())?;
        st.gpu
            .stream()
            .wait(&self.join)
            .during(|| "joining the overlapped AdamW".into())
    }

    /// The aside stream waits for the main stream's work so far, then runs AdamW over `ranges`.
    fn fork(&self, st: &Step<'_>, event: usize, ranges: &[Range<usize>]) -> Result<()> {
        let aside = st.gpu.aside()?;
        let ev = &self.forks[event];
        ev.record(st.gpu.stream())
            .during(|| "recording a fork of the overlapped AdamW".into())?;
        aside
            .wait(ev)
            .during(|| "waiting for the backward on the aside stream".into())?;
        let p = st.p;
        let at = |base: DevPtr, r: &Range<usize>, bytes: usize| base + (r.start * bytes) as u64;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            st.k.adamw_dev(
                aside,
                st.dt,
                [
                    at(p.master.ptr(), r, 4),
                    at(p.work.ptr(), r, st.es as usize),
                    at(p.grad.ptr(), r, 4),
                    at(p.adam_m.ptr(), r, 4),
                    at(p.adam_v.ptr(), r, 4),
                ],
                r.len(),
                p.decay_end.saturating_sub(r.start).min(r.len()),
                self.scalars.ptr(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ranges_cover_the_arena_once_and_follow_the_owners() {
        // Two layers; decaying matrices, then the embedding, then the vectors (with padding).
        let offsets: BTreeMap<String, usize> = [
            ("layers.0.attn.q.weight", 0),
            ("layers.0.mlp.up.weight", 100),
            ("layers.1.attn.q.weight", 200),
            ("layers.1.mlp.up.weight", 300),
            ("embed.weight", 400),
            ("layers.0.attn_norm.weight", 900),
            ("layers.0.mlp.up.bias", 908),
            ("layers.1.attn_norm.weight", 916),
            ("final_norm.weight", 924),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o))
        .collect();
        let (layers, rest) = arena_ranges(&offsets, 936, 2);
        assert_eq!(
            layers,
            vec![vec![0..200, 900..916], vec![200..400, 916..924]]
        );
        assert_eq!(rest, vec![400..900, 924..936]);
        let mut all: Vec<Range<usize>> = layers.into_iter().flatten().chain(rest).collect();
        all.sort_by_key(|r| r.start);
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!((all[0].start, all.last().unwrap().end), (0, 936));
    }

    #[test]
    fn owner_reads_the_layer_index() {
        assert_eq!(owner("layers.12.mlp.down.weight"), Some(12));
        assert_eq!(owner("embed.weight"), None);
        assert_eq!(owner("layers.x.weight"), None);
    }
}
