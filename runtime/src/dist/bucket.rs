//! The flat gradient layout and its buckets.
//!
//! [`FlatLayout`] lays every parameter out in one flat vector in the order backward completes
//! their gradients: the reverse of the parameter table (`modelspec_dsl::params::parameters`), so
//! the head and final norm come first, then the layers from the last to the first, and the token
//! embedding (whose gradient, when the head is tied to it, is only complete after the embedding's
//! own backward) last. [`BucketPlan`] cuts that vector into contiguous buckets of at most
//! `cap_bytes` each, never splitting a parameter; a parameter larger than the cap is a bucket of
//! its own. A bucket is ready for its all-reduce as soon as backward has passed its first
//! parameter in table order.

use std::ops::Range;

use modelspec_dsl::ir::ModelSpec;

use super::DistError;
use crate::{Params, Tensor};

/// Bucket size when none is given: 25 MB, as PyTorch DDP's `bucket_cap_mb`.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// One parameter's place in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatEntry {
    /// Canonical name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// First element in the flat vector.
    pub offset: usize,
    /// Elements.
    pub numel: usize,
}

impl FlatEntry {
    /// The flat range it occupies.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel
    }
}

/// Every parameter in one flat f32 vector, in backward-completion order (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatLayout {
    /// The parameters in flat order.
    pub entries: Vec<FlatEntry>,
    /// Total elements.
    pub len: usize,
}

impl FlatLayout {
    /// The layout of `spec`'s parameters, last in the table first.
    pub fn for_spec(spec: &ModelSpec) -> Self {
        let table = modelspec_dsl::params::parameters(spec);
        Self::from_backward_order(table.iter().rev().map(|p| {
            (
                p.name.clone(),
                p.shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
            )
        }))
    }

    /// A layout of the given `(name, shape)` pairs, already in backward order.
    pub fn from_backward_order(params: impl IntoIterator<Item = (String, Vec<usize>)>) -> Self {
        let mut entries = Vec::new();
        let mut offset = 0;
        for (name, shape) in params {
            let numel = shape.iter().product();
            entries.push(FlatEntry {
                name,
                shape,
                offset,
                numel,
            });
            offset += numel;
        }
        FlatLayout {
            entries,
            len: offset,
        }
    }

    /// The tensors of `params` (same names and sizes as the layout) copied into one flat vector.
    pub fn flatten(&self, params: &Params) -> Result<Vec<f32>, DistError> {
        let mut flat = vec![0.0f32; self.len];
        for e in &self.entries {
            let t = params.get(&e.name).ok_or_else(|| DistError::BadBuffer {
                op: "flatten",
                why: format!("no tensor `{}`", e.name),
            })?;
            if t.numel() != e.numel {
                return Err(DistError::BadBuffer {
                    op: "flatten",
                    why: format!(
                        "`{}` has {} elements, the layout {}",
                        e.name,
                        t.numel(),
                        e.numel
                    ),
                });
            }
            flat[e.range()].copy_from_slice(t.data());
        }
        Ok(flat)
    }

    /// Tensors named and shaped as the layout, from the flat vector `flat`.
    pub fn unflatten(&self, flat: &[f32]) -> Result<Params, DistError> {
        if flat.len() < self.len {
            return Err(DistError::BadBuffer {
                op: "unflatten",
                why: format!("{} values for a layout of {}", flat.len(), self.len),
            });
        }
        let mut params = Params::new();
        for e in &self.entries {
            let t = Tensor::from_vec(&e.shape, flat[e.range()].to_vec()).map_err(|err| {
                DistError::BadBuffer {
                    op: "unflatten",
                    why: err.to_string(),
                }
            })?;
            params.insert(e.name.clone(), t);
        }
        Ok(params)
    }

    /// Copies `flat` back into the tensors of `params` (same names and sizes as the layout).
    pub fn scatter_into(&self, flat: &[f32], params: &mut Params) -> Result<(), DistError> {
        for e in &self.entries {
            let t = params
                .get_mut(&e.name)
                .ok_or_else(|| DistError::BadBuffer {
                    op: "scatter_into",
                    why: format!("no tensor `{}`", e.name),
                })?;
            if t.numel() != e.numel || flat.len() < e.offset + e.numel {
                return Err(DistError::BadBuffer {
                    op: "scatter_into",
                    why: format!("`{}` does not fit the layout", e.name),
                });
            }
            t.data_mut().copy_from_slice(&flat[e.range()]);
        }
        Ok(())
    }
}

/// One bucket: a contiguous range of the flat vector holding whole parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Its range in the flat vector.
    pub range: Range<usize>,
    /// Indices into [`FlatLayout::entries`] of its parameters.
    pub params: Range<usize>,
}

/// The buckets of a [`FlatLayout`], in the order they are reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPlan {
    /// The buckets, first reduced first.
    pub buckets: Vec<Bucket>,
    /// The cap they were cut with, in bytes (f32 gradients).
    pub cap_bytes: usize,
}

impl BucketPlan {
    /// Greedy buckets of at most `cap_bytes` (at least one parameter each): a parameter is added
    /// to the open bucket while the bucket stays within the cap, else it opens a new one.
    pub fn new(layout: &FlatLayout, cap_bytes: usize) -> Self {
        let cap = (cap_bytes / 4).max(1);
        let mut buckets: Vec<Bucket> = Vec::new();
        for (i, e) in layout.entries.iter().enumerate() {
            match buckets.last_mut() {
                Some(b) if b.range.len() + e.numel <= cap => {
                    b.range.end = e.offset + e.numel;
                    b.params.end = i + 1;
                }
                _ => buckets.push(Bucket {
                    range: e.range(),
                    params: i..i + 1,
                }),
            }
        }
        BucketPlan { buckets, cap_bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(sizes: &[usize]) -> FlatLayout {
        FlatLayout::from_backward_order(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (format!("p{i}"), vec![n])),
        )
    }

    fn check(layout: &FlatLayout, plan: &BucketPlan) {
        let cap = plan.cap_bytes / 4;
        let mut seen = vec![0usize; layout.entries.len()];
        let mut next_param = 0;
        let mut next_elem = 0;
        for b in &plan.buckets {
            // In order, contiguous, covering.
            assert_eq!(b.params.start, next_param);
            assert_eq!(b.range.start, next_elem);
            next_param = b.params.end;
            next_elem = b.range.end;
            let first = &layout.entries[b.params.start];
            let last = &layout.entries[b.params.end - 1];
            assert_eq!(b.range, first.offset..last.offset + last.numel);
            for i in b.params.clone() {
                seen[i] += 1;
            }
            // Within the cap, unless the bucket is one oversized parameter.
            assert!(
                b.range.len() <= cap || b.params.len() == 1,
                "bucket {b:?} over the cap {cap}"
            );
        }
        assert_eq!(next_elem, layout.len);
        assert!(
            seen.iter().all(|&c| c == 1),
            "every param in exactly one bucket: {seen:?}"
        );
    }

    #[test]
    fn buckets_cover_every_parameter_once_in_order_within_the_cap() {
        let sizes = [3usize, 5, 2, 40, 1, 1, 9, 10, 10, 7, 0, 4];
        let l = layout(&sizes);
        for cap_elems in [1usize, 4, 10, 11, 20, 64, 1000] {
            let plan = BucketPlan::new(&l, cap_elems * 4);
            check(&l, &plan);
        }
        let plan = BucketPlan::new(&l, 10 * 4);
        let groups: Vec<Vec<usize>> = plan
            .buckets
            .iter()
            .map(|b| b.params.clone().collect())
            .collect();
        assert_eq!(
            groups,
            vec![
                vec![0, 1, 2],
                vec![3],
                vec![4, 5],
                vec![6],
                vec![7],
                vec![8],
                vec![9, 10],
                vec![11]
            ]
        );
        assert_eq!(BucketPlan::new(&l, 1 << 30).buckets.len(), 1);
    }

    #[test]
    fn spec_layout_puts_the_head_first_and_the_embedding_last() {
        let spec = modelspec_dsl::mspec::parse(
            include_str!("../../../specs/tiny.mspec"),
            "specs/tiny.mspec",
        )
        .unwrap();
        let l = FlatLayout::for_spec(&spec);
        let names: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"embed.weight"));
        assert_eq!(names.first(), Some(&"final_norm.weight"));
        // Layers from the last to the first.
        let layer_of = |n: &str| -> Option<usize> {
            n.strip_prefix("layers.")?.split('.').next()?.parse().ok()
        };
        let layers: Vec<usize> = names.iter().filter_map(|n| layer_of(n)).collect();
        assert!(layers.windows(2).all(|w| w[0] >= w[1]), "{layers:?}");
        assert_eq!(layers.first(), Some(&(spec.layers.len() - 1)));
        let params = Params::init(&spec, 3);
        let flat = l.flatten(&params).unwrap();
        assert_eq!(flat.len(), params.numel());
        assert_eq!(l.unflatten(&flat).unwrap(), params);
        let plan = BucketPlan::new(&l, 64);
        check(&l, &plan);
    }
}
