//! Weights I/O: safetensors checkpoints with HF names ↔ the canonical parameter map.
//!
//! The executor and the optimizer see parameters ([`Params`]) by canonical name (`modelspec_dsl::params`:
//! `layers.3.attn.q.weight`, `[out, in]` for linear maps). Checkpoints use HF names and layouts,
//! which differ per [`Naming`](modelspec_dsl::ir::Naming) family: GPT-2 stores Conv1D weights
//! `[in, out]` and fuses q/k/v into `c_attn`; GPT-NeoX and Falcon interleave q/k/v per (kv) head;
//! Phi-3 fuses `qkv_proj` and `gate_up_proj`; Mixtral and Qwen-MoE name experts differently; GPT-2
//! files may lack the `transformer.` prefix. [`checkpoint_layout`] describes, for a spec, every tensor
//! of its checkpoint as row blocks of canonical tensors; loading splits by that description and
//! saving fuses by it, so a saved file reloads in transformers and in modelspec alike.
//!
//! - [`load_hf_dir`]: an HF model directory (`model.safetensors`, or shards listed by
//!   `model.safetensors.index.json`); bf16, f16 and f32 files are all read into f32.
//! - [`load_file`] / [`load_files`]: explicit safetensors files.
//! - [`save_file`] / [`save_file_with`]: HF names and layouts, written atomically (temp file + rename).
//!   MoE experts are saved in transformers 5's stacked layout by default ([`MoeNaming::Stacked`]),
//!   the one transformers 5 loads for every MoE family; [`SaveOptions::dialect`] picks the Hub's
//!   per-expert spellings instead. Loading accepts all three and reports the one it found.
//! - [`hf_name`]: the checkpoint name holding a canonical parameter; [`to_checkpoint`] renames and
//!   re-lays-out any canonical map (e.g. gradients, for `eval --grads`' `grad.<hf name>`).
//!
//! A checkpoint that does not match the spec is a [`WeightsError::Mismatch`] listing every missing,
//! unexpected and wrongly shaped tensor, sorted; a corrupt or truncated file is a
//! [`WeightsError::Corrupt`]. Tied embeddings: the head may be absent from the file, or present and
//! equal to the embedding.
//!
//! ```no_run
//! # fn demo(spec: &modelspec_dsl::ModelSpec) -> Result<(), modelspec_runtime::weights::WeightsError> {
//! use modelspec_runtime::weights;
//! let params = weights::load_hf_dir(spec, "tests/fixtures/llama")?; // canonical names
//! weights::save_file(spec, &params, "/tmp/llama.safetensors".as_ref())?;
//! assert_eq!(weights::hf_name(spec, "layers.0.attn.q.weight").as_deref(), Some("model.layers.0.self_attn.q_proj.weight"));
//! # Ok(()) }
//! ```

mod file;
mod layout;
mod naming;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use modelspec_dsl::ModelSpec;
use thiserror::Error;

use crate::{Params, Tensor};

pub use file::{
    FileTensor, Shard, StoreDtype, bf16_to_f32, f16_to_f32, f32_to_bf16, hf_dir_files,
    read_float_tensors, read_tensors, write_atomic, write_tensors,
};
pub use layout::{CheckpointTensor, Piece, TensorSource, fuse, split};
pub use naming::{
    Dialect, MoeNaming, base_prefix, canonical_shapes, checkpoint_layout, is_ignorable,
    lm_head_name,
};

/// A dense f32 tensor on the host: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// Tensors by name, as read from or written to a file.
pub type Weights = BTreeMap<String, HostTensor>;

/// Moves a canonical map of [`HostTensor`]s into the runtime's [`Params`].
pub fn to_params(weights: Weights) -> Result<Params, WeightsError> {
    let mut params = Params::new();
    for (name, t) in weights {
        let tensor = Tensor::from_vec(&t.shape, t.data).map_err(|e| WeightsError::BadTensor {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        params.insert(name, tensor);
    }
    Ok(params)
}

/// Copies the runtime's [`Params`] into a map of [`HostTensor`]s.
pub fn from_params(params: &Params) -> Weights {
    params
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                HostTensor {
                    shape: t.shape().to_vec(),
                    data: t.data().to_vec(),
                },
            )
        })
        .collect()
}

/// A tensor whose shape differs from the one expected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WrongShape {
    /// The tensor's name.
    pub name: String,
    /// The shape expected.
    pub expected: Vec<usize>,
    /// The shape found.
    pub found: Vec<usize>,
}

/// Every difference between a set of tensors and what a spec needs, each list sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mismatch {
    /// Names the spec needs that are absent.
    pub missing: Vec<String>,
    /// Names present that the spec has no use for.
    pub unexpected: Vec<String>,
    /// Names present with another shape.
    pub wrong_shape: Vec<WrongShape>,
}

impl Mismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }
    fn sort(&mut self) {
        self.missing.sort();
        self.unexpected.sort();
        self.wrong_shape.sort();
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "missing ({}): {}",
                self.missing.len(),
                self.missing.join(", ")
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "unexpected ({}): {}",
                self.unexpected.len(),
                self.unexpected.join(", ")
            ));
        }
        if !self.wrong_shape.is_empty() {
            let shapes: Vec<String> = self
                .wrong_shape
                .iter()
                .map(|w| {
                    format!(
                        "{} (expected {:?}, found {:?})",
                        w.name, w.expected, w.found
                    )
                })
                .collect();
            parts.push(format!(
                "wrong shape ({}): {}",
                shapes.len(),
                shapes.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// What can go wrong reading or writing weights.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, bad header, offsets out of range).
    #[error("{} is not a valid safetensors file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a dtype weights cannot have.
    #[error("{}: tensor `{name}` has dtype {dtype}; weights must be f32, f16 or bf16", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// The directory holds neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{} holds neither model.safetensors nor model.safetensors.index.json", dir.display())]
    NoCheckpoint {
        /// The directory.
        dir: PathBuf,
    },
    /// A sharded checkpoint's index is malformed or disagrees with its shards.
    #[error("{}: {reason}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tensors do not match the spec.
    #[error("checkpoint does not match the spec: {0}")]
    Mismatch(Mismatch),
    /// The spec is tied but the checkpoint's head differs from its embedding.
    #[error("the spec ties the embeddings but `{head}` differs from `{embed}` in the checkpoint")]
    TiedDiffers {
        /// The head's checkpoint name.
        head: String,
        /// The embedding's checkpoint name.
        embed: String,
    },
    /// The output file was refused (not a regular file, or an input) or could not be written.
    #[error(transparent)]
    Output(#[from] crate::io::OutputError),
    /// A tensor's data does not fill its shape.
    #[error("tensor `{name}`: {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The spec has parameters the naming family has no checkpoint name for.
    #[error("the {naming} naming family has no checkpoint name for: {}", params.join(", "))]
    Unsupported {
        /// The naming family.
        naming: String,
        /// The canonical parameters without a name, sorted.
        params: Vec<String>,
    },
}

/// A loaded checkpoint: canonical parameters and the dialect the file was written in.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Parameters by canonical name.
    pub params: Params,
    /// The detected dialect; pass it to [`to_checkpoint`] to name gradients as this file does.
    pub dialect: Dialect,
}

/// Loads the checkpoint of an HF model directory (single file or sharded).
pub fn load_hf_dir(spec: &ModelSpec, dir: impl AsRef<Path>) -> Result<Params, WeightsError> {
    load_hf_dir_detailed(spec, dir).map(|l| l.params)
}

/// [`load_hf_dir`], also returning the detected [`Dialect`].
pub fn load_hf_dir_detailed(
    spec: &ModelSpec,
    dir: impl AsRef<Path>,
) -> Result<Loaded, WeightsError> {
    let dir = dir.as_ref();
    let mut tensors = BTreeMap::new();
    for (path, expected) in hf_dir_files(dir)? {
        let shard = read_float_tensors(&path)?;
        if let Some(names) = expected {
            let absent: Vec<&str> = names
                .iter()
                .filter(|n| !shard.contains_key(*n))
                .map(|n| n.as_str())
                .collect();
            if !absent.is_empty() {
                return Err(WeightsError::Index {
                    path: dir.join("model.safetensors.index.json"),
                    reason: format!(
                        "{} lacks tensors the index places there: {}",
                        path.display(),
                        absent.join(", ")
                    ),
                });
            }
        }
        merge(&mut tensors, shard, &path)?;
    }
    from_checkpoint(spec, tensors)
}

/// Loads one safetensors file.
pub fn load_file(spec: &ModelSpec, path: impl AsRef<Path>) -> Result<Params, WeightsError> {
    load_files(spec, &[path.as_ref()]).map(|l| l.params)
}

/// Loads a checkpoint split over several safetensors files.
pub fn load_files(spec: &ModelSpec, paths: &[&Path]) -> Result<Loaded, WeightsError> {
    let mut tensors = BTreeMap::new();
    for path in paths {
        merge(&mut tensors, read_float_tensors(path)?, path)?;
    }
    from_checkpoint(spec, tensors)
}

fn merge(
    into: &mut BTreeMap<String, HostTensor>,
    shard: BTreeMap<String, HostTensor>,
    path: &Path,
) -> Result<(), WeightsError> {
    for (name, t) in shard {
        if into.insert(name.clone(), t).is_some() {
            return Err(WeightsError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` also appears in another shard"),
            });
        }
    }
    Ok(())
}

/// Maps checkpoint tensors (HF names and layouts) onto canonical parameters of `spec`.
pub fn from_checkpoint(
    spec: &ModelSpec,
    mut tensors: BTreeMap<String, HostTensor>,
) -> Result<Loaded, WeightsError> {
    let dialect = Dialect::detect(spec, tensors.keys().map(String::as_str));
    let layout = checkpoint_layout(spec, dialect)?;
    tensors.retain(|name, _| !is_ignorable(name));
    if spec.embedding.tied {
        drop_tied_head(spec, &layout, &mut tensors)?;
    }
    let mut mismatch = Mismatch::default();
    for ct in &layout {
        match tensors.get(&ct.name) {
            None => mismatch.missing.push(ct.name.clone()),
            Some(t) if t.shape != ct.shape => mismatch.wrong_shape.push(WrongShape {
                name: ct.name.clone(),
                expected: ct.shape.clone(),
                found: t.shape.clone(),
            }),
            Some(_) => {}
        }
    }
    let known: std::collections::BTreeSet<&str> =
        layout.iter().map(|ct| ct.name.as_str()).collect();
    mismatch.unexpected = tensors
        .keys()
        .filter(|n| !known.contains(n.as_str()))
        .cloned()
        .collect();
    if !mismatch.is_empty() {
        mismatch.sort();
        return Err(WeightsError::Mismatch(mismatch));
    }
    let shapes = canonical_shapes(spec);
    let mut params = BTreeMap::new();
    // Each checkpoint tensor is dropped as soon as it is split into canonical parameters, so the
    // weights exist about once in memory (not once as read and once as converted).
    for ct in &layout {
        if let Some(t) = tensors.remove(&ct.name) {
            split(ct, &t.data, &shapes, &mut params);
        }
    }
    Ok(Loaded {
        params: to_params(params)?,
        dialect,
    })
}

/// With tied embeddings the head is not a parameter: accept it in the file only when it equals
/// the embedding.
fn drop_tied_head(
    spec: &ModelSpec,
    layout: &[CheckpointTensor],
    tensors: &mut BTreeMap<String, HostTensor>,
) -> Result<(), WeightsError> {
    let head = format!("{}.weight", lm_head_name(spec.weights.naming));
    if layout.iter().any(|ct| ct.name == head) || !tensors.contains_key(&head) {
        return Ok(());
    }
    let Some(embed) = layout
        .iter()
        .find(|ct| ct.pieces.iter().any(|p| p.canonical == "embed.weight"))
    else {
        return Ok(());
    };
    if tensors.get(&head) != tensors.get(&embed.name) {
        return Err(WeightsError::TiedDiffers {
            head,
            embed: embed.name.clone(),
        });
    }
    tensors.remove(&head);
    Ok(())
}

/// Checks a canonical map against the spec's parameter table.
pub fn check_params(spec: &ModelSpec, params: &Params) -> Result<(), WeightsError> {
    let shapes = canonical_shapes(spec);
    let mut mismatch = Mismatch::default();
    for (name, shape) in &shapes {
        match params.get(name) {
            None => mismatch.missing.push(name.clone()),
            Some(t)
                if t.shape() != shape.as_slice()
                    || t.numel() != shape.iter().product::<usize>() =>
            {
                mismatch.wrong_shape.push(WrongShape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.shape().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    mismatch.unexpected = params
        .iter()
        .map(|(name, _)| name)
        .filter(|n| !shapes.contains_key(*n))
        .cloned()
        .collect();
    if mismatch.is_empty() {
        Ok(())
    } else {
        mismatch.sort();
        Err(WeightsError::Mismatch(mismatch))
    }
}

/// Renames and re-lays-out a canonical map (parameters, or gradients of the same shapes) into
/// checkpoint tensors of `dialect`.
pub fn to_checkpoint(
    spec: &ModelSpec,
    params: &Params,
    dialect: Dialect,
) -> Result<BTreeMap<String, HostTensor>, WeightsError> {
    check_params(spec, params)?;
    let layout = checkpoint_layout(spec, dialect)?;
    let mut out = BTreeMap::new();
    for ct in &layout {
        // check_params guarantees every piece is present with its full shape.
        if let Some(t) = fuse(ct, params) {
            out.insert(ct.name.clone(), t);
        }
    }
    Ok(out)
}

/// Options of [`save_file_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveOptions {
    /// The dtype of the stored tensors.
    pub dtype: StoreDtype,
    /// Naming choices the IR leaves open.
    pub dialect: Dialect,
}

/// Saves parameters as an HF checkpoint file (f32, default dialect), atomically.
pub fn save_file(spec: &ModelSpec, params: &Params, path: &Path) -> Result<(), WeightsError> {
    save_file_with(spec, params, path, SaveOptions::default())
}

/// Saves parameters as an HF checkpoint file with explicit options, atomically.
pub fn save_file_with(
    spec: &ModelSpec,
    params: &Params,
    path: &Path,
    options: SaveOptions,
) -> Result<(), WeightsError> {
    let tensors = to_checkpoint(spec, params, options.dialect)?;
    write_tensors(path, &tensors, &BTreeMap::new(), options.dtype)
}

/// The checkpoint name (default dialect) of the tensor holding canonical parameter `canonical`,
/// or `None` if the spec has no such parameter. Fused tensors hold several canonical parameters.
pub fn hf_name(spec: &ModelSpec, canonical: &str) -> Option<String> {
    let layout = checkpoint_layout(spec, Dialect::default()).ok()?;
    layout
        .into_iter()
        .find(|ct| ct.pieces.iter().any(|p| p.canonical == canonical))
        .map(|ct| ct.name)
}

/// Gradients in checkpoint names and shapes, each name prefixed with `grad.` (what
/// `modelspec eval --grads` writes).
pub fn grad_tensors(
    spec: &ModelSpec,
    grads: &Params,
    dialect: Dialect,
) -> Result<BTreeMap<String, HostTensor>, WeightsError> {
    Ok(to_checkpoint(spec, grads, dialect)?
        .into_iter()
        .map(|(name, t)| (format!("grad.{name}"), t))
        .collect())
}
