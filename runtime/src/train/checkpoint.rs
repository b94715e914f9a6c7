//! Training checkpoints: everything a run needs to continue bit for bit, in one file written
//! atomically.
//!
//! `DIR/ckpt/checkpoint.safetensors` holds, as f32 tensors:
//! - `param.{name}`: every parameter, by canonical name;
//! - `adam.m.{name}`, `adam.v.{name}`: AdamW's moments;
//! - `train.losses`: the training loss of every step so far (for the plot of a resumed run);
//!
//! and in the safetensors metadata, one key `modelspec` (one key, so that the header's bytes do not
//! depend on a hash map's order: the same run writes the same file, byte for byte) holding JSON:
//! - `format`: `modelspec-train-2`;
//! - `checksum`: FNV-1a (64 bit) over every tensor's name, shape and bytes in sorted order, then
//!   over the format, the optimizer step and the `state` JSON exactly as stored: everything that
//!   is read back, so a corrupt or edited file (a changed `peak_lr` or `seed`) is an error rather
//!   than a silently different run;
//! - `optimizer_step`: AdamW's step count;
//! - `state`: [`TrainState`]: step, the training RNG's state, the data cursor, the options and the
//!   resolved spec (the IR), so `modelspec sample DIR` needs nothing else. Every f64 survives the
//!   round trip bit for bit (serde_json's `float_roundtrip`).
//!
//! A save goes through [`crate::io::write_atomic`]: a uniquely named temporary file, fsync, rename
//! over the old file, fsync of the directory; at every instant the directory holds either the old
//! checkpoint or the new one, whole, and a failed save leaves no temporary file. A HF tokenizer is
//! copied beside it as `tokenizer.json` the same way.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use modelspec_dsl::ir::ModelSpec;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::TrainError;
use super::data::Cursor;
use super::optim::{AdamW, AdamWConfig, Moments};
use super::rng::SplitMix64;
use super::schedule::CosineSchedule;
use crate::{Params, Tensor};

/// The checkpoint file's name inside the checkpoint directory.
pub const FILE_NAME: &str = "checkpoint.safetensors";
/// The checkpoint format this version writes and reads.
pub const FORMAT: &str = "modelspec-train-2";
/// The one safetensors metadata key, holding the JSON [`Header`].
const METADATA_KEY: &str = "modelspec";

/// What the metadata key holds. `state` stays a JSON value until the checksum over its text is
/// verified.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    checksum: String,
    optimizer_step: u64,
    state: serde_json::Value,
}

/// How often a run saves when the options do not say (checkpoints of older runs).
pub const DEFAULT_SAVE_EVERY: u64 = 100;

fn default_save_every() -> u64 {
    DEFAULT_SAVE_EVERY
}

/// The options a run was started with; a resumed run continues with the same ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Optimizer steps of the whole run.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Micro-batches whose gradients are averaged into one step.
    pub accumulate: usize,
    /// The learning-rate schedule.
    pub schedule: CosineSchedule,
    /// AdamW's hyper-parameters.
    pub adamw: AdamWConfig,
    /// Global gradient-norm limit (0: no clipping).
    pub clip: f64,
    /// Seeds initialisation, data order and dropout.
    pub seed: u64,
    /// The activation-checkpoint policy, as written on the command line (None: the spec's own).
    pub policy: Option<String>,
    /// `bytes` or `tokenizer.json`.
    pub tokenizer: String,
    /// Where the training text came from (an absolute path, or `bundled:<name>`).
    pub data: String,
    /// A content hash of the training text ([`content_hash`]), checked when the run resumes; `None`
    /// when not recorded.
    #[serde(default)]
    pub data_hash: Option<String>,
    /// Save a checkpoint every this many steps (and at the end).
    #[serde(default = "default_save_every")]
    pub save_every: u64,
}

/// A content hash of training text: `fnv1a64:` and 16 hex digits of FNV-1a over its bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hash = FNV_OFFSET;
    fnv1a(&mut hash, bytes);
    format!("fnv1a64:{hash:016x}")
}

/// Everything but the tensors: where the run is and how it was set up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// The training RNG (it draws each step's dropout seed).
    pub rng: SplitMix64,
    /// The data cursor after the last completed step.
    pub cursor: Cursor,
    /// The run's options.
    pub options: TrainOptions,
    /// The resolved model.
    pub spec: ModelSpec,
}

/// A loaded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The parameters.
    pub params: Params,
    /// The optimizer with its moments and step count.
    pub optimizer: AdamW,
    /// Step, RNG, cursor, options, spec.
    pub state: TrainState,
    /// The training loss of every completed step.
    pub losses: Vec<f32>,
}

fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

/// The checksum of a checkpoint: its tensors (name, shape, bytes; sorted by name), then its
/// format, optimizer step and the state's JSON text.
fn checksum<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>,
    format: &str,
    optimizer_step: u64,
    state_json: &str,
) -> String {
    let mut hash = FNV_OFFSET;
    for (name, shape, data) in tensors {
        fnv1a(&mut hash, name.as_bytes());
        for &d in shape {
            fnv1a(&mut hash, &(d as u64).to_le_bytes());
        }
        fnv1a(&mut hash, data);
    }
    fnv1a(&mut hash, format.as_bytes());
    fnv1a(&mut hash, &optimizer_step.to_le_bytes());
    fnv1a(&mut hash, state_json.as_bytes());
    format!("{hash:016x}")
}

/// The state as the JSON value stored in the header and the exact text the checksum covers.
fn state_json(state: &TrainState) -> Result<(serde_json::Value, String), TrainError> {
    let value = serde_json::to_value(state)
        .map_err(|e| TrainError::Checkpoint(format!("serialising the state: {e}")))?;
    let text = value.to_string();
    Ok((value, text))
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `bytes` to `path` atomically ([`crate::io::write_atomic`]), creating its folder when
/// missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    Ok(crate::io::write_atomic(path, bytes)?)
}

/// Saves a checkpoint into `ckpt_dir` (created when missing), replacing the previous one atomically.
pub fn save(
    ckpt_dir: &Path,
    params: &Params,
    optimizer: &AdamW,
    state: &TrainState,
    losses: &[f32],
) -> Result<(), TrainError> {
    // name → (shape, little-endian bytes), sorted by name.
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, t) in params.iter() {
        tensors.insert(
            format!("param.{name}"),
            (t.shape().to_vec(), le_bytes(t.data())),
        );
        let moments = optimizer.moments.get(name.as_str());
        let zeros;
        let (m, v) = match moments {
            Some(Moments { m, v }) => (m.as_slice(), v.as_slice()),
            None => {
                zeros = vec![0.0f32; t.numel()];
                (zeros.as_slice(), zeros.as_slice())
            }
        };
        tensors.insert(format!("adam.m.{name}"), (t.shape().to_vec(), le_bytes(m)));
        tensors.insert(format!("adam.v.{name}"), (t.shape().to_vec(), le_bytes(v)));
    }
    tensors.insert(
        "train.losses".into(),
        (vec![losses.len()], le_bytes(losses)),
    );

    let mut state = state.clone();
    state.options.adamw = optimizer.config;
    let (state, state_text) = state_json(&state)?;
    let sum = checksum(
        tensors
            .iter()
            .map(|(n, (s, d))| (n.as_str(), s.as_slice(), d.as_slice())),
        FORMAT,
        optimizer.step,
        &state_text,
    );
    let header = Header {
        format: FORMAT.to_string(),
        checksum: sum,
        optimizer_step: optimizer.step,
        state,
    };
    let header_json = serde_json::to_string(&header)
        .map_err(|e| TrainError::Checkpoint(format!("serialising the state: {e}")))?;
    let metadata: HashMap<String, String> =
        HashMap::from([(METADATA_KEY.to_string(), header_json)]);
    let mut views = Vec::with_capacity(tensors.len());
    for (name, (shape, data)) in &tensors {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| TrainError::Checkpoint(format!("{name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Checkpoint(format!("serialising: {e}")))?;
    write_atomic(&ckpt_dir.join(FILE_NAME), &bytes)
}

fn f32s(name: &str, bytes: &[u8]) -> Result<Vec<f32>, TrainError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(TrainError::Checkpoint(format!(
            "{name}: {} bytes is not a whole number of f32",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Loads the checkpoint in `ckpt_dir`, checking its format and checksum.
pub fn load(ckpt_dir: &Path) -> Result<Checkpoint, TrainError> {
    let path = ckpt_dir.join(FILE_NAME);
    let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let bad = |why: String| TrainError::Checkpoint(format!("{}: {why}", path.display()));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(format!(
            "corrupt or truncated: not a readable safetensors file ({e})"
        ))
    })?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    let header: Header = match meta.get(METADATA_KEY) {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| bad(format!("unreadable training state ({e})")))?,
        None => {
            return Err(bad(
                "not a modelspec training checkpoint (no `modelspec` metadata)".into(),
            ));
        }
    };
    if header.format != FORMAT {
        return Err(bad(format!(
            "unsupported checkpoint format `{}` (this version reads {FORMAT}; older checkpoints did not checksum their training state: start a new run)",
            header.format
        )));
    }
    let file =
        SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("corrupt or truncated ({e})")))?;
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let mut views = Vec::with_capacity(names.len());
    for name in &names {
        let view = file.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, expected F32", view.dtype())));
        }
        views.push((*name, view));
    }
    let sum = checksum(
        views.iter().map(|(n, v)| (*n, v.shape(), v.data())),
        &header.format,
        header.optimizer_step,
        &header.state.to_string(),
    );
    if header.checksum != sum {
        return Err(bad(format!(
            "checksum mismatch (recorded {}, computed {sum}): the file is corrupt or was edited",
            header.checksum
        )));
    }
    let Header {
        optimizer_step,
        state,
        ..
    } = header;
    let state: TrainState = serde_json::from_value(state)
        .map_err(|e| bad(format!("unreadable training state ({e})")))?;

    let mut params = Params::new();
    let mut moments: BTreeMap<String, Moments> = BTreeMap::new();
    let mut losses = Vec::new();
    for (name, view) in &views {
        let values = f32s(name, view.data())?;
        if let Some(p) = name.strip_prefix("param.") {
            let tensor =
                Tensor::from_vec(view.shape(), values).map_err(|e| bad(format!("{name}: {e}")))?;
            params.insert(p, tensor);
        } else if let Some(p) = name.strip_prefix("adam.m.") {
            moments
                .entry(p.to_string())
                .or_insert_with(|| Moments {
                    m: Vec::new(),
                    v: Vec::new(),
                })
                .m = values;
        } else if let Some(p) = name.strip_prefix("adam.v.") {
            moments
                .entry(p.to_string())
                .or_insert_with(|| Moments {
                    m: Vec::new(),
                    v: Vec::new(),
                })
                .v = values;
        } else if *name == "train.losses" {
            losses = values;
        } else {
            return Err(bad(format!("unexpected tensor `{name}`")));
        }
    }
    for (name, t) in params.iter() {
        let ok = moments
            .get(name.as_str())
            .is_some_and(|m| m.m.len() == t.numel() && m.v.len() == t.numel());
        if !ok {
            return Err(bad(format!(
                "optimizer moments of `{name}` are missing or misshapen"
            )));
        }
    }
    params
        .check(&state.spec)
        .map_err(|e| bad(format!("parameters do not fit the recorded spec: {e}")))?;
    if losses.len() as u64 != state.step {
        return Err(bad(format!(
            "{} recorded losses for {} steps",
            losses.len(),
            state.step
        )));
    }
    let optimizer = AdamW {
        config: state.options.adamw,
        step: optimizer_step,
        moments,
    };
    Ok(Checkpoint {
        params,
        optimizer,
        state,
        losses,
    })
}
