//! ZeRO stage 1: AdamW's moments sharded across ranks.
//!
//! The flat parameter vector ([`super::FlatLayout`]) of `n` elements is padded to `N·s` with
//! `s = ⌈n/N⌉`, and rank `r` owns the contiguous slice `[r·s, min((r+1)·s, n))` ([`Partition`]):
//! the slices differ by at most `s` elements, the last rank taking what is left. One step:
//! ```text
//! reduce-scatter (sum) the padded, pre-scaled gradient   → this rank's slice of the mean gradient
//! AdamW on the slice only (moments exist for the slice only)
//! all-gather the parameter slices                         → every rank has every parameter
//! ```
//! A slice may cut a parameter; the optimizer sees each piece as its own [`ParamGrad`] under the
//! parameter's name and full shape (so weight decay is decided as for the whole parameter) and
//! keeps that piece's moments under the name. AdamW is element-wise, so the result is bit-identical
//! to unsharded AdamW on the same gradient.

use std::ops::Range;

use super::FlatLayout;
use crate::train::TrainError;
use crate::train::optim::{AdamW, AdamWConfig, ParamGrad};

/// Which slice of the flat vector each rank owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Elements of the flat vector.
    pub len: usize,
    /// Ranks.
    pub world_size: usize,
    /// Elements per rank before clamping to `len` (`⌈len/world_size⌉`).
    pub shard: usize,
}

impl Partition {
    /// The partition of `len` elements over `world_size` ranks.
    pub fn new(len: usize, world_size: usize) -> Self {
        let world_size = world_size.max(1);
        Partition {
            len,
            world_size,
            shard: len.div_ceil(world_size),
        }
    }

    /// The flat range rank `rank` owns (possibly empty for the last ranks of a tiny vector).
    pub fn range(&self, rank: usize) -> Range<usize> {
        let start = (rank * self.shard).min(self.len);
        let end = ((rank + 1) * self.shard).min(self.len);
        start..end
    }

    /// Length of the padded vector the collectives run on (`world_size · shard`).
    pub fn padded_len(&self) -> usize {
        self.shard * self.world_size
    }
}

/// AdamW over one rank's slice of the flat parameter vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedAdamW {
    /// The optimizer; its moments hold only this rank's pieces, keyed by parameter name.
    pub inner: AdamW,
    /// The pieces of parameters in this rank's slice: (layout entry, range within the parameter,
    /// range within the slice).
    pieces: Vec<(usize, Range<usize>, Range<usize>)>,
    /// This rank's flat range.
    pub range: Range<usize>,
}

impl ShardedAdamW {
    /// The optimizer of `rank` under `partition` of `layout`.
    pub fn new(
        config: AdamWConfig,
        layout: &FlatLayout,
        partition: &Partition,
        rank: usize,
    ) -> Self {
        let range = partition.range(rank);
        let mut pieces = Vec::new();
        for (i, e) in layout.entries.iter().enumerate() {
            let start = e.offset.max(range.start);
            let end = (e.offset + e.numel).min(range.end);
            if start < end {
                pieces.push((
                    i,
                    start - e.offset..end - e.offset,
                    start - range.start..end - range.start,
                ));
            }
        }
        ShardedAdamW {
            inner: AdamW::new(config),
            pieces,
            range,
        }
    }

    /// One AdamW step on this rank's slice: `values` and `grads` are the slice (`range.len()`
    /// elements) of the flat parameters and of the mean gradient.
    pub fn step(
        &mut self,
        layout: &FlatLayout,
        lr: f64,
        values: &mut [f32],
        grads: &[f32],
    ) -> Result<(), TrainError> {
        let n = self.range.len();
        if values.len() != n || grads.len() != n {
            return Err(TrainError::GradShape {
                name: format!("shard {:?}", self.range),
                params: values.len(),
                grads: grads.len(),
            });
        }
        let mut rest: &mut [f32] = values;
        let mut items = Vec::with_capacity(self.pieces.len());
        let mut consumed = 0;
        for (entry, _, in_slice) in &self.pieces {
            let e = &layout.entries[*entry];
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(in_slice.start - consumed);
            let (piece, tail) = tail.split_at_mut(in_slice.len());
            rest = tail;
            consumed = in_slice.end;
            items.push(ParamGrad {
                name: &e.name,
                shape: &e.shape,
                value: piece,
                grad: &grads[in_slice.clone()],
            });
        }
        self.inner.step(lr, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_contiguous_balanced_and_covering() {
        for len in [0usize, 1, 5, 7, 8, 100, 1001] {
            for world in 1..=8 {
                let p = Partition::new(len, world);
                let mut next = 0;
                for r in 0..world {
                    let range = p.range(r);
                    assert_eq!(range.start, next, "len {len} world {world}");
                    assert!(range.len() <= p.shard);
                    next = range.end;
                }
                assert_eq!(next, len);
                assert!(p.padded_len() >= len && p.padded_len() - len < world);
                // Balanced: all full ranks hold ⌈len/N⌉; only the tail is shorter.
                let sizes: Vec<usize> = (0..world).map(|r| p.range(r).len()).collect();
                let full = sizes.iter().take_while(|&&s| s == p.shard).count();
                assert!(sizes[full..].iter().skip(1).all(|&s| s == 0), "{sizes:?}");
            }
        }
    }

    #[test]
    fn sharded_steps_equal_unsharded_adamw_bit_for_bit() {
        let layout = FlatLayout::from_backward_order([
            ("lm_head.weight".to_string(), vec![3, 5]),
            ("final_norm.weight".to_string(), vec![5]),
            ("layers.0.mlp.up.weight".to_string(), vec![4, 5]),
            ("layers.0.mlp.up.bias".to_string(), vec![4]),
            ("embed.weight".to_string(), vec![3, 5]),
        ]);
        let config = AdamWConfig {
            weight_decay: 0.3,
            ..AdamWConfig::default()
        };
        let init: Vec<f32> = (0..layout.len)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let grad_at = |step: usize, i: usize| ((i * 31 + step * 17) % 23) as f32 * 0.01 - 0.11;
        // Unsharded reference.
        let mut reference = init.clone();
        let mut full = AdamW::new(config);
        for step in 0..4 {
            let grads: Vec<f32> = (0..layout.len).map(|i| grad_at(step, i)).collect();
            let mut rest: &mut [f32] = &mut reference;
            let mut items = Vec::new();
            for e in &layout.entries {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(e.numel);
                rest = tail;
                items.push(ParamGrad {
                    name: &e.name,
                    shape: &e.shape,
                    value: piece,
                    grad: &grads[e.range()],
                });
            }
            full.step(0.05, items).unwrap();
        }
        for world in 1..=5 {
            let p = Partition::new(layout.len, world);
            let mut values = init.clone();
            let mut opts: Vec<ShardedAdamW> = (0..world)
                .map(|r| ShardedAdamW::new(config, &layout, &p, r))
                .collect();
            for step in 0..4 {
                let grads: Vec<f32> = (0..layout.len).map(|i| grad_at(step, i)).collect();
                for (r, opt) in opts.iter_mut().enumerate() {
                    let range = p.range(r);
                    opt.step(&layout, 0.05, &mut values[range.clone()], &grads[range])
                        .unwrap();
                }
            }
            assert_eq!(values, reference, "world {world}");
        }
    }
}
