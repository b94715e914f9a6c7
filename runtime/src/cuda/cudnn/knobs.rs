//! Engine configs beyond the heuristics' list (`MODELSPEC_CUDNN_TUNE=wide`, an experiment):
//! cuDNN's heuristics offer a few configs of each engine (one set of knob values each: tile
//! sizes, kernel variant), while the engine itself declares every knob's range. This module reads
//! those ranges and builds the configs that differ from the first listed config of each engine
//! in one knob's value, so that they can be timed beside the listed ones ([`super::tune`]).
//!
//! Knob types are read and written as their C integers (the enum grows with cuDNN versions;
//! a value the bindings do not name must not become a Rust enum).

use super::backend::{Desc, engine_of};
use super::error::Result;
use cudarc::cudnn::sys::{
    cudnnBackendAttributeName_t as Attr, cudnnBackendAttributeType_t as Ty,
    cudnnBackendDescriptorType_t as DescType,
};

/// A knob type and its value.
pub(crate) type Choice = (i32, i64);

/// At most this many configs beyond the listed ones are built for a graph (each may compile a
/// kernel: ~0.1-1.5 s).
pub(crate) const WIDE_EXTRA: usize = 48;

/// Room for every knob type cuDNN 9 defines (as the frontend reads knobs: an array of that
/// many, cuDNN says how many it filled).
const MOST_KNOBS: i64 = 64;

/// At most this many values of one knob are tried (a knob with a wider range is left as the
/// listed config has it). On the H100 with cuDNN 9.19 (fourteenth session) a limit of 32 built no
/// forward neighbour at all at T1024 D64 (the KERNEL_CFG range is wider, presumably), and only
/// STAGES=1 backward ones (a tie); 128 lets KERNEL_CFG vary, which is where cuDNN 9.14's faster
/// forward config on the H200 differed from the first pick.
const MOST_VALUES: i64 = 128;

/// One knob an engine declares: its type and range `min, min + stride, ..., max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KnobInfo {
    ty: i32,
    min: i64,
    max: i64,
    stride: i64,
}

impl KnobInfo {
    /// Every value of the range, or none when it holds more than [`MOST_VALUES`].
    fn values(&self) -> Vec<i64> {
        let stride = self.stride.max(1);
        if self.max < self.min || (self.max - self.min) / stride >= MOST_VALUES {
            return Vec::new();
        }
        (0..=(self.max - self.min) / stride)
            .map(|i| self.min + i * stride)
            .collect()
    }
}

/// The knob choices of an engine config, sorted by knob type.
pub(crate) fn choices(cfg: &Desc) -> Result<Vec<Choice>> {
    let knobs = cfg.get_descs_n(
        Attr::CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
        DescType::CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR,
        MOST_KNOBS,
    )?;
    let mut out = knobs
        .iter()
        .map(|k| {
            Ok((
                k.get_i32(
                    Attr::CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                    Ty::CUDNN_TYPE_KNOB_TYPE,
                )?,
                k.get_i64(Attr::CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    Ok(out)
}

/// The knobs an engine declares for its graph.
fn knob_space(engine: &Desc) -> Result<Vec<KnobInfo>> {
    let infos = engine.get_descs_n(
        Attr::CUDNN_ATTR_ENGINE_KNOB_INFO,
        DescType::CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR,
        MOST_KNOBS,
    )?;
    infos
        .iter()
        .map(|k| {
            Ok(KnobInfo {
                ty: k.get_i32(Attr::CUDNN_ATTR_KNOB_INFO_TYPE, Ty::CUDNN_TYPE_KNOB_TYPE)?,
                min: k.get_i64(Attr::CUDNN_ATTR_KNOB_INFO_MINIMUM_VALUE)?,
                max: k.get_i64(Attr::CUDNN_ATTR_KNOB_INFO_MAXIMUM_VALUE)?,
                stride: k.get_i64(Attr::CUDNN_ATTR_KNOB_INFO_STRIDE)?,
            })
        })
        .collect()
}

/// A finalized engine config of `engine` with `choices`.
fn config(engine: &Desc, choices: &[Choice]) -> Result<Desc> {
    let knobs = choices
        .iter()
        .map(|&(ty, value)| {
            let k = Desc::new(DescType::CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR)?;
            k.set_enum(
                Attr::CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                Ty::CUDNN_TYPE_KNOB_TYPE,
                ty,
            )?;
            k.set_i64(Attr::CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, value)?;
            k.finalize()?;
            Ok(k)
        })
        .collect::<Result<Vec<_>>>()?;
    let cfg = Desc::new(DescType::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR)?;
    cfg.set_desc(Attr::CUDNN_ATTR_ENGINECFG_ENGINE, engine)?;
    if !knobs.is_empty() {
        let refs: Vec<&Desc> = knobs.iter().collect();
        cfg.set_descs(Attr::CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, &refs)?;
    }
    cfg.finalize()?;
    Ok(cfg)
}

/// The knob choices one step from `base` (one knob's value changed, knobs in `space` order,
/// values ascending), none of them in `seen`.
fn one_step(base: &[Choice], space: &[KnobInfo], seen: &[Vec<Choice>]) -> Vec<Vec<Choice>> {
    let mut out = Vec::new();
    for knob in space {
        let current = base.iter().find(|c| c.0 == knob.ty).map(|c| c.1);
        for v in knob.values() {
            if Some(v) == current {
                continue;
            }
            let mut next: Vec<Choice> = base.iter().copied().filter(|c| c.0 != knob.ty).collect();
            next.push((knob.ty, v));
            next.sort_unstable();
            if !seen.contains(&next) && !out.contains(&next) {
                out.push(next);
            }
        }
    }
    out
}

/// Engine configs one knob away from the first listed config of each engine among `listed`
/// (the heuristics' configs, in their order), at most `most`, in a fixed order (engines as first
/// listed, then [`one_step`]'s): the same list for the same graph and library, so an index into
/// it names one config in every process. Each with its engine's global index and its choices.
/// Configs cuDNN refuses to build are left out; what cannot be read is skipped.
pub(crate) fn neighbours(listed: &[Desc], most: usize) -> Vec<(Desc, i64, Vec<Choice>)> {
    let listed_choices: Vec<Vec<Choice>> = listed
        .iter()
        .map(|c| choices(c).unwrap_or_default())
        .collect();
    let mut engines_done = Vec::new();
    let mut out = Vec::new();
    for (cfg, base) in listed.iter().zip(&listed_choices) {
        let Ok(engine) = engine_of(cfg) else { continue };
        let Ok(index) = engine.get_i64(Attr::CUDNN_ATTR_ENGINE_GLOBAL_INDEX) else {
            continue;
        };
        if engines_done.contains(&index) {
            continue;
        }
        engines_done.push(index);
        let Ok(space) = knob_space(&engine) else {
            continue;
        };
        // The experiment's record: what each engine declares.
        let ranges: Vec<String> = (space.iter())
            .map(|k| {
                format!(
                    "{} {}..={} step {}",
                    knob_name(k.ty),
                    k.min,
                    k.max,
                    k.stride
                )
            })
            .collect();
        eprintln!("cuDNN engine {index} knobs: {}", ranges.join(", "));
        for next in one_step(base, &space, &listed_choices) {
            if out.len() >= most {
                return out;
            }
            if let Ok(c) = config(&engine, &next) {
                out.push((c, index, next));
            }
        }
    }
    out
}

/// A knob type's name for logs (the ones SDPA engines use), else its number.
pub(crate) fn knob_name(ty: i32) -> String {
    match ty {
        14 => "STAGES".into(),
        24 => "KERNEL_CFG".into(),
        26 => "TILE_CGA".into(),
        27 => "TILE_CGA_M".into(),
        28 => "TILE_CGA_N".into(),
        29 => "BLOCK_SIZE".into(),
        30 => "OCCUPANCY".into(),
        40 => "TILE_M".into(),
        41 => "TILE_N".into(),
        other => format!("knob{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_walk_the_range_and_refuse_wide_ones() {
        let k = KnobInfo {
            ty: 40,
            min: 64,
            max: 256,
            stride: 64,
        };
        assert_eq!(k.values(), vec![64, 128, 192, 256]);
        let wide = KnobInfo {
            min: 0,
            max: 1 << 20,
            stride: 1,
            ..k
        };
        assert!(wide.values().is_empty());
        let empty = KnobInfo { max: 0, ..k };
        assert!(empty.values().is_empty());
    }

    #[test]
    fn one_step_changes_one_knob_and_skips_listed_configs() {
        let space = [
            KnobInfo {
                ty: 24,
                min: 0,
                max: 2,
                stride: 1,
            },
            KnobInfo {
                ty: 40,
                min: 64,
                max: 128,
                stride: 64,
            },
        ];
        let base = vec![(24, 1), (40, 64)];
        let listed = vec![base.clone(), vec![(24, 2), (40, 64)]];
        let steps = one_step(&base, &space, &listed);
        assert_eq!(
            steps,
            vec![vec![(24, 0), (40, 64)], vec![(24, 1), (40, 128)]]
        );
        // A knob the base does not set is added.
        let steps = one_step(&[(24, 1)], &space[1..], &[]);
        assert_eq!(
            steps,
            vec![vec![(24, 1), (40, 64)], vec![(24, 1), (40, 128)]]
        );
    }
}
