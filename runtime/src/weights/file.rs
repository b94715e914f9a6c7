//! safetensors files: reading any float dtype into f32, sharded indexes, atomic writing.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};

use super::{HostTensor, WeightsError};

/// A tensor as read from a file, before any conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum FileTensor {
    /// A floating-point tensor (f32, f16, bf16 or f64 in the file), converted to f32.
    Float(HostTensor),
    /// An integer tensor (i64, i32, u32, ... in the file), converted to i64.
    Int {
        /// Row-major shape.
        shape: Vec<usize>,
        /// Values.
        data: Vec<i64>,
    },
}

impl FileTensor {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            FileTensor::Float(t) => &t.shape,
            FileTensor::Int { shape, .. } => shape,
        }
    }
}

/// Dtypes [`write_tensors`] can store floats as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// bfloat16 (round to nearest even).
    Bf16,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file's bytes: memory-mapped (large files), or read (small ones, and where mapping fails).
enum FileBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl FileBytes {
    /// Files below this size are simply read.
    const MAP_FROM: u64 = 1 << 20;

    fn open(path: &Path) -> Result<FileBytes, WeightsError> {
        let file = fs::File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len >= Self::MAP_FROM {
            // SAFETY: the map is read-only and lives only while this call decodes it (every value
            // is copied out). Another process changing or truncating the file meanwhile is the
            // one hazard, as for every reader of mapped checkpoints: values read then are
            // whatever the file held, and a truncation can fault (SIGBUS).
            if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
                return Ok(FileBytes::Mapped(map));
            }
        }
        fs::read(path).map(FileBytes::Read).map_err(io_err(path))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
    }
}

/// Reads every tensor of a safetensors file.
///
/// A truncated or otherwise malformed file is a [`WeightsError::Corrupt`], never a panic.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, FileTensor>, WeightsError> {
    let bytes = FileBytes::open(path)?;
    let bytes = bytes.as_slice();
    let corrupt = |reason: String| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let numel: usize = shape.iter().product();
        let tensor = match view.dtype() {
            Dtype::F32 => FileTensor::Float(HostTensor {
                shape,
                data: decode(raw, f32::from_le_bytes),
            }),
            Dtype::F64 => FileTensor::Float(HostTensor {
                shape,
                data: decode(raw, |b| f64::from_le_bytes(b) as f32),
            }),
            Dtype::BF16 => FileTensor::Float(HostTensor {
                shape,
                data: decode(raw, |b| bf16_to_f32(u16::from_le_bytes(b))),
            }),
            Dtype::F16 => FileTensor::Float(HostTensor {
                shape,
                data: decode(raw, |b| f16_to_f32(u16::from_le_bytes(b))),
            }),
            Dtype::I64 => FileTensor::Int {
                shape,
                data: decode(raw, i64::from_le_bytes),
            },
            Dtype::I32 => FileTensor::Int {
                shape,
                data: decode(raw, |b| i32::from_le_bytes(b) as i64),
            },
            Dtype::U32 => FileTensor::Int {
                shape,
                data: decode(raw, |b| u32::from_le_bytes(b) as i64),
            },
            Dtype::U16 => FileTensor::Int {
                shape,
                data: decode(raw, |b| u16::from_le_bytes(b) as i64),
            },
            Dtype::I16 => FileTensor::Int {
                shape,
                data: decode(raw, |b| i16::from_le_bytes(b) as i64),
            },
            Dtype::U8 => FileTensor::Int {
                shape,
                data: decode(raw, |b: [u8; 1]| b[0] as i64),
            },
            Dtype::I8 => FileTensor::Int {
                shape,
                data: decode(raw, |b: [u8; 1]| b[0] as i8 as i64),
            },
            other => {
                return Err(WeightsError::Dtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let got = match &tensor {
            FileTensor::Float(t) => t.data.len(),
            FileTensor::Int { data, .. } => data.len(),
        };
        if got != numel {
            return Err(corrupt(format!(
                "tensor `{name}` holds {got} values for shape {:?}",
                tensor.shape()
            )));
        }
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

fn decode<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| f(c.try_into().unwrap_or([0; N])))
        .collect()
}

/// bfloat16 bits to f32 (exact).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bfloat16 bits, rounding to nearest even (NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// IEEE half-precision bits to f32 (exact, subnormals included).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let mant = (bits & 0x3ff) as u32;
    let magnitude = match (exp, mant) {
        (0, 0) => 0,
        (0, m) => {
            // Subnormal: value = m · 2^-24.
            let value = m as f32 * 2f32.powi(-24);
            return if sign != 0 { -value } else { value };
        }
        (0x1f, 0) => 0x7f80_0000,
        (0x1f, m) => 0x7f80_0000 | (m << 13),
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// Reads only the floating-point tensors of `path`; an integer tensor is a dtype error.
pub fn read_float_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, WeightsError> {
    read_tensors(path)?
        .into_iter()
        .map(|(name, t)| match t {
            FileTensor::Float(t) => Ok((name, t)),
            FileTensor::Int { .. } => Err(WeightsError::Dtype {
                path: path.to_path_buf(),
                name,
                dtype: "an integer type".into(),
            }),
        })
        .collect()
}

/// One file of a checkpoint, with the tensor names its index places there (`None`: unindexed).
pub type Shard = (PathBuf, Option<Vec<String>>);

/// Whether `path` is a regular file (through symbolic links); false when nothing is there. A FIFO,
/// a directory, a symbolic-link loop or a dangling link is an error that says so (they read as
/// "holds neither model.safetensors nor ..." before).
fn present(path: &Path) -> Result<bool, WeightsError> {
    let refuse = |why: String| WeightsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(why),
    };
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(meta) => {
            let kind = crate::io::special_kind(&meta.file_type()).unwrap_or("special file");
            Err(refuse(format!("is a {kind}, not a regular file")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if fs::symlink_metadata(path).is_ok() {
                Err(refuse("is a symbolic link to a missing file".into()))
            } else {
                Ok(false)
            }
        }
        Err(e) => Err(WeightsError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The safetensors files of an HF model directory: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json` (with the tensor names each shard must hold).
pub fn hf_dir_files(dir: &Path) -> Result<Vec<Shard>, WeightsError> {
    let single = dir.join("model.safetensors");
    if present(&single)? {
        return Ok(vec![(single, None)]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !present(&index)? {
        return Err(WeightsError::NoCheckpoint {
            dir: dir.to_path_buf(),
        });
    }
    let text = fs::read_to_string(&index).map_err(io_err(&index))?;
    let bad = |reason: String| WeightsError::Index {
        path: index.clone(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`{tensor}` maps to a non-string")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "shard name `{file}` is not a file name in the directory"
            )));
        }
        shards
            .entry(file.to_string())
            .or_default()
            .push(tensor.clone());
    }
    Ok(shards
        .into_iter()
        .map(|(file, names)| (dir.join(file), Some(names)))
        .collect())
}

struct Stored<'a> {
    shape: &'a [usize],
    bytes: Vec<u8>,
    dtype: Dtype,
}

impl View for &Stored<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes float tensors (and optional i64 tensors) to `path` atomically: a temporary file in the
/// same directory, flushed and synced, then renamed over `path`. The header carries
/// `{"format": "pt"}`, which transformers requires.
pub fn write_tensors(
    path: &Path,
    floats: &BTreeMap<String, HostTensor>,
    ints: &BTreeMap<String, (Vec<usize>, Vec<i64>)>,
    dtype: StoreDtype,
) -> Result<(), WeightsError> {
    let mut stored: Vec<(String, Stored<'_>)> = Vec::new();
    for (name, t) in floats {
        let (bytes, dt) = match dtype {
            StoreDtype::F32 => (
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F32,
            ),
            StoreDtype::Bf16 => (
                t.data
                    .iter()
                    .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
                    .collect(),
                Dtype::BF16,
            ),
        };
        stored.push((
            name.clone(),
            Stored {
                shape: &t.shape,
                bytes,
                dtype: dt,
            },
        ));
    }
    for (name, (shape, data)) in ints {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        stored.push((
            name.clone(),
            Stored {
                shape,
                bytes,
                dtype: Dtype::I64,
            },
        ));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let buffer = safetensors::serialize(stored.iter().map(|(n, s)| (n.as_str(), s)), Some(meta))
        .map_err(|e| WeightsError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &buffer)
}

/// Writes `bytes` to `path` through a uniquely named temporary sibling file, fsync and a rename
/// ([`crate::io::write_atomic`]): readers never see a partial file, an existing file is replaced
/// only by a complete one, and a target that is not a regular file is refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    Ok(crate::io::write_atomic(path, bytes)?)
}
