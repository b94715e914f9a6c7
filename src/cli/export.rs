//! `modelspec export RUN -o DIR`: a training run as an HF model directory.
//!
//! DIR receives `config.json` (the HF config of the run's resolved spec, [`hf::export`]),
//! `model.safetensors` (f32, HF tensor names and layouts: the inverse of the mapping the loader
//! reads, [`weights::to_checkpoint`]) and the run's `tokenizer.json` when it has one (a run on byte
//! tokens has none: token id = byte value). `modelspec eval --hf DIR`, `modelspec sample --hf DIR`
//! and transformers' `AutoModelForCausalLM.from_pretrained(DIR)` read it.
//!
//! Before writing, the config is imported back and must resolve to the run's spec exactly (the
//! name aside): a spec that no HF config expresses is refused by name of the differing field,
//! never exported approximately. Every file goes through the atomic writer
//! ([`modelspec_runtime::io`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use modelspec_dsl::ModelSpec;
use modelspec_dsl::hf;
use modelspec_runtime::io;
use modelspec_runtime::train::checkpoint;
use modelspec_runtime::weights::{self, Dialect, StoreDtype};

use super::train::checkpoint_dir;

/// Arguments of `modelspec export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A training run folder (RUN/ckpt/checkpoint.safetensors, as `train` writes it) or its ckpt
    /// folder.
    pub run: PathBuf,
    /// The HF model directory to write (created when missing; config.json, model.safetensors and
    /// tokenizer.json in it are replaced whole).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

/// The JSON of `spec` with its name cleared, flattened to `path = value` leaves.
fn leaves(spec: &ModelSpec) -> Result<BTreeMap<String, String>> {
    let mut value = serde_json::to_value(spec)?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("name");
    }
    let mut out = BTreeMap::new();
    flatten(&value, String::new(), &mut out);
    Ok(out)
}

fn flatten(value: &serde_json::Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, p, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, format!("{path}[{i}]"), out);
            }
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// The fields where `imported` differs from `spec` (name aside), at most `limit` of them.
fn differences(spec: &ModelSpec, imported: &ModelSpec, limit: usize) -> Result<Vec<String>> {
    let (a, b) = (leaves(spec)?, leaves(imported)?);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(absent)".to_string();
    Ok(keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .take(limit)
        .map(|k| {
            format!(
                "{k}: the run has {}, the config gives {}",
                a.get(k).unwrap_or(&none),
                b.get(k).unwrap_or(&none)
            )
        })
        .collect())
}

/// Refuses an output folder that exists as something other than a folder; creates it otherwise.
fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => bail!(
            "-o {}: is a {}, not a folder",
            dir.display(),
            io::special_kind(&meta.file_type()).unwrap_or("regular file")
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("-o {}", dir.display())),
    }
}

/// Runs `modelspec export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let ckpt_dir = checkpoint_dir(&args.run);
    let ckpt = checkpoint::load(&ckpt_dir)
        .with_context(|| format!("reading the run {}", args.run.display()))?;
    let spec = &ckpt.state.spec;

    let mut config = hf::export(spec)
        .map_err(|e| anyhow::anyhow!("{}: no HF config expresses this spec: {e}", spec.name))?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), "float32".into());
    }
    let config_text = serde_json::to_string_pretty(&config)? + "\n";
    let imported = hf::import(&config_text, "config.json").map_err(|d| {
        anyhow::anyhow!(
            "{}: the exported config does not import back: {}",
            spec.name,
            d.first().map(|d| d.message.as_str()).unwrap_or("?")
        )
    })?;
    let diffs = differences(spec, &imported, 8)?;
    if !diffs.is_empty() {
        bail!(
            "{}: the HF config does not express this spec exactly:\n  {}",
            spec.name,
            diffs.join("\n  ")
        );
    }

    let tensors = weights::to_checkpoint(spec, &ckpt.params, Dialect::default())
        .with_context(|| format!("{}: naming the parameters as HF does", spec.name))?;
    let tokenizer = match ckpt.state.options.tokenizer.as_str() {
        "bytes" => None,
        _ => Some(ckpt_dir.join("tokenizer.json")),
    };

    prepare_dir(&args.output)?;
    let config_path = args.output.join("config.json");
    let weights_path = args.output.join("model.safetensors");
    let inputs = [ckpt_dir.join(checkpoint::FILE_NAME)];
    let inputs: Vec<&Path> = inputs
        .iter()
        .map(PathBuf::as_path)
        .chain(tokenizer.as_deref())
        .collect();
    for path in [&config_path, &weights_path] {
        io::check_output(path, &inputs)?;
    }
    weights::write_tensors(&weights_path, &tensors, &BTreeMap::new(), StoreDtype::F32)
        .with_context(|| format!("writing {}", weights_path.display()))?;
    io::write_atomic(&config_path, config_text.as_bytes())
        .with_context(|| format!("writing {}", config_path.display()))?;
    let tokenizer_note = match &tokenizer {
        Some(src) => {
            let dst = args.output.join("tokenizer.json");
            io::check_output(&dst, &inputs)?;
            let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
            io::write_atomic(&dst, &bytes).with_context(|| format!("writing {}", dst.display()))?;
            "tokenizer.json".to_string()
        }
        None => "no tokenizer.json (byte tokens: id = byte value)".to_string(),
    };
    eprintln!(
        "{}: step {}, {} tensors; wrote config.json, model.safetensors, {tokenizer_note} to {}",
        spec.name,
        ckpt.state.step,
        tensors.len(),
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_field_and_ignore_the_name() {
        let src = "model a { vocab 16 d_model 8 layers 1 context 8 attention { heads 2 } }";
        let spec = modelspec_dsl::mspec::parse(src, "a.mspec").unwrap();
        let mut other = spec.clone();
        other.name = "b".into();
        assert!(differences(&spec, &other, 8).unwrap().is_empty());
        other.context = 16;
        let diffs = differences(&spec, &other, 8).unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(diffs[0].starts_with("context: the run has 8"), "{diffs:?}");
    }
}
