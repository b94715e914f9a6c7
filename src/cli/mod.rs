//! The `modelspec` subcommands: one file per command, one [`Command`] variant each.
//!
//! Adding a command is adding its file (an `Args` struct and a `run` function), a variant below and
//! its arm in [`Command::run`]. A command returns `Err(Reported)` after it has printed its own
//! diagnostics; any other error is printed by `main` as `error: ...`. Both exit with status 1.

use std::io::Write;

pub mod bench;
pub mod check;
pub mod eval;
pub mod eval_cuda;
pub mod expand;
pub mod export;
pub mod export_hf;
pub mod generate;
pub mod import_hf;
pub mod inspect;
pub mod memory;
pub mod plan;
pub mod sample;
pub mod train;
pub mod values;

use modelspec_dsl::ModelSpec;
use modelspec_dsl::load::{self, LoadError, SourceFile};

/// The subcommands.
// Parsed once per process: the size of the largest variant's arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check spec files (.mspec, .yaml/.yml, HF config.json); exit 1 if any is invalid.
    Check(check::CheckArgs),
    /// Show parameter counts, FLOPs and a per-layer table.
    Inspect(inspect::InspectArgs),
    /// Print the resolved per-layer IR with every default explicit.
    Expand(expand::ExpandArgs),
    /// Convert an HF config.json into a .mspec (or YAML) spec.
    ImportHf(import_hf::ImportHfArgs),
    /// Write the HF config.json of a spec.
    ExportHf(export_hf::ExportHfArgs),
    /// Write a training run as an HF model directory (config.json, model.safetensors, tokenizer).
    Export(export::ExportArgs),
    /// Logits, loss and (with --grads) checkpoint-named gradients of a model on given tokens.
    Eval(eval::EvalArgs),
    /// Write the Rust module and CUDA source that `model!` would expand to (model.rs, kernels.cu).
    Generate(generate::GenerateArgs),
    /// Plan activation checkpointing: what each layer saves and recomputes, memory and FLOPs.
    Plan(plan::PlanArgs),
    /// Time GPU training steps of a spec (forward, loss, backward, AdamW) on random tokens.
    Bench(bench::BenchArgs),
    /// Train a spec on the CPU or a GPU (default: the bundled tiny spec on the bundled corpus).
    Train(train::TrainArgs),
    /// Generate text from a checkpoint written by `train`, or from an HF model directory (CPU, KV cache).
    Sample(sample::SampleArgs),
}

impl Command {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Check(args) => check::run(args),
            Command::Inspect(args) => inspect::run(args),
            Command::Expand(args) => expand::run(args),
            Command::ImportHf(args) => import_hf::run(args),
            Command::ExportHf(args) => export_hf::run(args),
            Command::Export(args) => export::run(args),
            Command::Eval(args) => eval::run(args),
            Command::Generate(args) => generate::run(args),
            Command::Plan(args) => plan::run(args),
            Command::Bench(args) => bench::run(args),
            Command::Train(args) => train::run(args),
            Command::Sample(args) => sample::run(args),
        }
    }
}

/// The command failed and has already printed why (diagnostics on stderr).
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed (reported above)")
    }
}

impl std::error::Error for Reported {}

/// Loads a spec file, printing its diagnostics (rendered with file:line:col, field, why and hint)
/// on stderr when it is invalid.
pub fn load_or_report(path: &std::path::Path) -> anyhow::Result<(ModelSpec, SourceFile)> {
    match load::load_file(path) {
        Ok(ok) => Ok(ok),
        Err(e) => {
            report_load_error(&e);
            Err(Reported.into())
        }
    }
}

/// Prints a load error on stderr.
pub fn report_load_error(e: &LoadError) {
    let text = match e {
        LoadError::Invalid { diagnostics, file } => {
            modelspec_dsl::render::render(diagnostics, &file.text)
        }
        other => format!("error: {other}\n"),
    };
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = err.write_all(b"\n");
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes `text` to `path` (atomically, never over a special file or one of `inputs`: see
/// [`modelspec_runtime::io`]), or to stdout when `path` is `None`.
pub fn write_output(
    path: Option<&std::path::Path>,
    text: &str,
    inputs: &[&std::path::Path],
) -> anyhow::Result<()> {
    match path {
        Some(p) => {
            modelspec_runtime::io::check_output(p, inputs)?;
            Ok(modelspec_runtime::io::write_atomic(p, text.as_bytes())?)
        }
        None => print_stdout(text),
    }
}
