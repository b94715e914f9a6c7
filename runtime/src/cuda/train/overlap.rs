//! AdamW overlapped with the backward (on by default; `MODELSPEC_ADAMW_OVERLAP=off` or
//! [`GpuTrainer::set_adamw_overlap`] turns it off).
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
//! ([`Kernels::adamw_dev`]). Outside the layers ([`Phase`]): the final norm and an untied head are
//! finished by the head, so their AdamW runs right after it, before the layers'; the embedding
//! table gets the head's gradient (tied) and then, in the embedding backward at the very end, rows
//! for the batch's tokens only. So its rows are split by a mask of the batch's tokens (marked at
//! the step's start): the rows no token names are updated after the head, the others (28% of
//! gpt2's 50k rows for 16k random tokens, fewer for text) after the embedding backward, with the
//! position table and anything else. Then the main stream waits for the aside stream (the join),
//! so a step still ends with every parameter updated.
//!
//! The step's scalars change every step (the bias corrections, the learning rate), so they are
//! read from a device buffer that [`Overlap::set_scalars`] writes before the step: the whole step,
//! AdamW included, is then one captured CUDA graph (its nodes keep their streams' priorities).
//! Per element the arithmetic is the single launch's; the results differ from its only where the
//! gradients themselves differ run to run (the own attention kernels' f32 atomics; cuDNN's
//! attention and the embedding backward sum in a fixed order).

use std::ops::Range;

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::Step;
use super::params::ParamArena;
use crate::cuda::error::{DriverContext, Result};
use crate::cuda::gpu::{DevPtr, Gpu, GpuBuf};
use crate::ops::adamw::cuda::AdamwRows;
use crate::train::optim::StepScalars;
use modelspec_dsl::ModelSpec;

/// The overlapped AdamW of one trainer: its arena ranges, scalars, row mask and events.
pub(super) struct Overlap {
    /// [`StepScalars::words`] of the coming step.
    scalars: GpuBuf<f32>,
    ranges: ArenaRanges,
    /// One u32 an embedding row (`vocab_padded` of them): 1 where the batch has the token
    /// ([`Overlap::mark_rows`]).
    mask: GpuBuf<u32>,
    /// Recorded on the main stream after the head (index 0), after layer i's backward (1 + i),
    /// after the embedding backward (the last); the aside stream waits for each.
    forks: Vec<CudaEvent>,
    /// Recorded on the aside stream after the last AdamW; the main stream waits for it.
    join: CudaEvent,
}

/// When in the step a parameter gets its last gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// In layer i's backward.
    Layer(usize),
    /// In the head: the final norm, an untied head.
    Head,
    /// The embedding table: the head (tied) for every row, then the embedding backward for the
    /// batch's tokens' rows.
    Embed,
    /// In the embedding backward (the position table), or not known: the end.
    End,
}

/// Which [`Phase`] finishes parameter `name`.
fn phase(name: &str) -> Phase {
    if let Some(rest) = name.strip_prefix("layers.") {
        return match rest.split('.').next().and_then(|i| i.parse().ok()) {
            Some(i) => Phase::Layer(i),
            None => Phase::End,
        };
    }
    if name == "embed.weight" {
        Phase::Embed
    } else if name.starts_with("final_norm.") || name.starts_with("lm_head.") {
        Phase::Head
    } else {
        Phase::End
    }
}

/// The parameter arena cut by [`Phase`]: together the ranges cover `[0, total)` exactly once.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ArenaRanges {
    pub layers: Vec<Vec<Range<usize>>>,
    pub head: Vec<Range<usize>>,
    pub embed: Option<Range<usize>>,
    pub end: Vec<Range<usize>>,
}

/// The arena `[0, total)` cut where the [`Phase`] changes, parameters taken in arena order (each
/// up to the next one's offset, so padding goes with the parameter before it). The arena keeps
/// its groups (decaying matrices, embeddings, vectors) in parameter-table order, which is
/// layer-major, so a layer has one range per group it has parameters in.
pub(super) fn arena_ranges(
    offsets: &std::collections::BTreeMap<String, usize>,
    total: usize,
    layers: usize,
) -> ArenaRanges {
    let mut by_offset: Vec<(usize, Phase)> = offsets.iter().map(|(n, &o)| (o, phase(n))).collect();
    by_offset.sort_unstable_by_key(|&(o, _)| o);
    let mut out = ArenaRanges {
        layers: vec![Vec::new(); layers],
        ..Default::default()
    };
    if let Some(&(first, _)) = by_offset.first()
        && first > 0
    {
        out.end.push(0..first);
    }
    let mut i = 0;
    while i < by_offset.len() {
        let (start, who) = by_offset[i];
        let mut j = i + 1;
        while j < by_offset.len() && by_offset[j].1 == who && who != Phase::Embed {
            j += 1;
        }
        let r = start..by_offset.get(j).map_or(total, |&(o, _)| o);
        match who {
            Phase::Layer(l) if l < layers => out.layers[l].push(r),
            Phase::Head => out.head.push(r),
            Phase::Embed => out.embed = Some(r),
            _ => out.end.push(r),
        }
        i = j;
    }
    out
}

impl Overlap {
    pub(super) fn new(gpu: &Gpu, spec: &ModelSpec, p: &ParamArena) -> Result<Overlap> {
        // The stream is made here, never inside a step's capture.
        gpu.aside()?;
        let ranges = arena_ranges(&p.offsets, p.total, spec.layers.len());
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .during(|| "creating an event of the overlapped AdamW".into())
        };
        Ok(Overlap {
            scalars: gpu.zeros::<f32>(10)?,
            mask: gpu.zeros::<u32>(spec.vocab_padded as usize)?,
            forks: (0..ranges.layers.len() + 2)
                .map(|_| event())
                .collect::<Result<_>>()?,
            join: event()?,
            ranges,
        })
    }

    /// Device bytes of the overlap of `spec`: the scalars and the embedding rows' mask.
    pub(super) fn bytes(spec: &ModelSpec) -> usize {
        10 * 4 + spec.vocab_padded as usize * 4
    }

    /// Writes the coming step's scalars (stream-ordered: after the step before has read them).
    pub(super) fn set_scalars(&mut self, gpu: &Gpu, s: &StepScalars) -> Result<()> {
        gpu.write(&mut self.scalars, &s.words([1.0, 1.0]))
    }

    /// At the step's start, on the main stream: the mask of the embedding rows the batch's
    /// tokens name.
    pub(super) fn mark_rows(&self, st: &Step<'_>) -> Result<()> {
        // SAFETY: the mask is this overlap's own, `mask.len()` u32.
        unsafe { st.gpu.memset_raw(self.mask.ptr(), self.mask.len() * 4) }?;
        st.k.adamw_mark_rows(st.tokens, st.s.n, self.mask.ptr())
    }

    /// After the head: the final norm's and an untied head's AdamW, and the embedding rows no
    /// token of the batch names.
    pub(super) fn after_head(&self, st: &Step<'_>) -> Result<()> {
        self.fork(st, 0, &self.ranges.head, Some(false))
    }

    /// After layer `i`'s backward: its parameters' AdamW on the aside stream.
    pub(super) fn after_layer(&self, st: &Step<'_>, i: usize) -> Result<()> {
        self.fork(st, 1 + i, &self.ranges.layers[i], None)
    }

    /// After the embedding backward: the other embedding rows and the rest, then the main
    /// stream waits for all of it.
    pub(super) fn finish(&self, st: &Step<'_>) -> Result<()> {
        self.fork(st, self.forks.len() - 1, &self.ranges.end, Some(true))?;
        let aside = st.gpu.aside()?;
        self.join
            .record(aside)
            .during(|| "recording the end of the overlapped AdamW".into())?;
        st.gpu
            .stream()
            .wait(&self.join)
            .during(|| "joining the overlapped AdamW".into())
    }

    /// The aside stream waits for the main stream's work so far, then runs AdamW over `ranges`
    /// and, with `touched`, over the embedding rows whose mask word is `touched`.
    fn fork(
        &self,
        st: &Step<'_>,
        event: usize,
        ranges: &[Range<usize>],
        touched: Option<bool>,
    ) -> Result<()> {
        let aside = st.gpu.aside()?;
        let ev = &self.forks[event];
        ev.record(st.gpu.stream())
            .during(|| "recording a fork of the overlapped AdamW".into())?;
        aside
            .wait(ev)
            .during(|| "waiting for the backward on the aside stream".into())?;
        // The weight gradients on the branch so far ([`super::branch`]) are final too.
        if let Some(done) = st.branch.and_then(|b| b.last()) {
            aside
                .wait(done)
                .during(|| "waiting for the weight gradients on the aside stream".into())?;
        }
        let launch = |r: &Range<usize>, rows: Option<AdamwRows>| {
            let p = st.p;
            let at = |base: DevPtr, bytes: usize| base + (r.start * bytes) as u64;
            st.k.adamw_dev(
                aside,
                st.dt,
                [
                    at(p.master.ptr(), 4),
                    at(p.work.ptr(), st.es as usize),
                    at(p.grad.ptr(), 4),
                    at(p.adam_m.ptr(), 4),
                    at(p.adam_v.ptr(), 4),
                ],
                r.len(),
                p.decay_end.saturating_sub(r.start).min(r.len()),
                self.scalars.ptr(),
                rows,
            )
        };
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            launch(r, None)?;
        }
        if let (Some(want), Some(e)) = (touched, &self.ranges.embed) {
            // The table's rows only (its range's padding is no parameter).
            let width = st.s.c;
            let rows = e.start..e.start + (self.mask.len() * width).min(e.len());
            let mask = self.mask.ptr();
            launch(&rows, Some(AdamwRows { mask, width, want }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ranges_cover_the_arena_once_and_follow_the_phases() {
        // Two layers; decaying matrices (an untied head among them), then the embedding and the
        // position table, then the vectors (with padding).
        let offsets: BTreeMap<String, usize> = [
            ("layers.0.attn.q.weight", 0),
            ("layers.0.mlp.up.weight", 100),
            ("layers.1.attn.q.weight", 200),
            ("layers.1.mlp.up.weight", 300),
            ("lm_head.weight", 400),
            ("embed.weight", 500),
            ("pos_embed.weight", 800),
            ("layers.0.attn_norm.weight", 900),
            ("layers.0.mlp.up.bias", 908),
            ("layers.1.attn_norm.weight", 916),
            ("final_norm.weight", 924),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o))
        .collect();
        let r = arena_ranges(&offsets, 936, 2);
        assert_eq!(
            r.layers,
            vec![vec![0..200, 900..916], vec![200..400, 916..924]]
        );
        assert_eq!(r.head, vec![400..500, 924..936]);
        assert_eq!(r.embed, Some(500..800));
        assert_eq!(r.end, vec![800..900]);
        let mut all: Vec<Range<usize>> = (r.layers.into_iter().flatten())
            .chain(r.head)
            .chain(r.embed)
            .chain(r.end)
            .collect();
        all.sort_by_key(|r| r.start);
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!((all[0].start, all.last().unwrap().end), (0, 936));
    }

    #[test]
    fn phase_reads_the_layer_index_and_the_names() {
        assert_eq!(phase("layers.12.mlp.down.weight"), Phase::Layer(12));
        assert_eq!(phase("embed.weight"), Phase::Embed);
        assert_eq!(phase("final_norm.bias"), Phase::Head);
        assert_eq!(phase("lm_head.weight"), Phase::Head);
        assert_eq!(phase("pos_embed.weight"), Phase::End);
        assert_eq!(phase("layers.x.weight"), Phase::End);
    }
}
