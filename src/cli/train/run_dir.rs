//! The run folder of `modelspec train`: where it is by default, and claiming it before training.
//!
//! - The default folder is `runs/<stem of the spec file>` (`runs/tiny` for the bundled spec; the
//!   folder name of an HF `config.json`), made a plain name: never the spec's own `name`, so a spec
//!   cannot place its run outside `runs/`, and two spec files never share a folder by accident.
//! - A claim creates the folder, takes an exclusive lock on `DIR/.modelspec-lock` (held until the
//!   process ends: a second `train` on the same folder is refused, not interleaved), checks that
//!   `DIR/ckpt` is writable (a read-only `--save` is found before the first step, not at the first
//!   save), and refuses a fresh run into a folder that already holds one unless `--overwrite`.
//! - Outputs (`loss.png`, the checkpoint, the tokenizer copy) must not be special files nor any of
//!   the run's inputs.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use modelspec_runtime::io::{check_output, special_kind};
use modelspec_runtime::train::checkpoint;

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".modelspec-lock";

/// A run folder this process has claimed; the lock is released when it is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: Option<File>,
}

impl std::ops::Deref for RunDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl RunDir {
    /// A folder used without a claim (ranks other than 0 of a multi-process run, which write
    /// nothing there).
    pub fn unclaimed(path: PathBuf) -> Self {
        Self { path, _lock: None }
    }
}

/// `runs/<name>` where `name` comes from the spec file's name (see the module documentation).
pub fn default_dir(file: Option<&Path>) -> PathBuf {
    PathBuf::from("runs").join(default_name(file))
}

fn default_name(file: Option<&Path>) -> String {
    let Some(file) = file else {
        return "tiny".into();
    };
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raw = if stem == "config" {
        // An HF config.json: its folder says which model it is.
        fs::canonicalize(file)
            .ok()
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or(stem)
    } else {
        stem
    };
    let name = modelspec_dsl::check::name_chars(&raw);
    let name = name.trim_start_matches(['.', '-', '_']);
    if name.is_empty() {
        "run".into()
    } else {
        name.to_string()
    }
}

/// Whether `dir` holds a run: a checkpoint or a loss plot.
pub fn holds_run(dir: &Path) -> bool {
    dir.join("ckpt").join(checkpoint::FILE_NAME).exists()
        || dir.join(checkpoint::FILE_NAME).exists()
        || dir.join("loss.png").exists()
}

/// Claims `dir` for this process (see the module documentation). `fresh`: a new run, refused
/// when `dir` holds one unless `overwrite`. `inputs`: files the run reads, which no output may be.
pub fn claim(dir: &Path, fresh: bool, overwrite: bool, inputs: &[&Path]) -> Result<RunDir> {
    if let Ok(meta) = fs::symlink_metadata(dir)
        && !meta.is_dir()
        && !fs::metadata(dir).is_ok_and(|m| m.is_dir())
    {
        let kind = special_kind(&meta.file_type()).unwrap_or("regular file");
        bail!(
            "the run folder {} is a {kind}, not a folder: choose another --save",
            dir.display()
        );
    }
    let ckpt_dir = dir.join("ckpt");
    fs::create_dir_all(&ckpt_dir)
        .with_context(|| format!("cannot create the run folder {}", ckpt_dir.display()))?;
    let lock_path = dir.join(LOCK_FILE);
    if let Some(kind) = fs::symlink_metadata(&lock_path)
        .ok()
        .and_then(|m| special_kind(&m.file_type()))
    {
        bail!(
            "{} is a {kind}; it should be modelspec's lock file: remove it",
            lock_path.display()
        );
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "the run folder {} is not writable (creating {LOCK_FILE})",
                dir.display()
            )
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "another `modelspec train` is using {} (it holds {}): wait for it to finish, or choose another --save folder",
            dir.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    probe_writable(&ckpt_dir)?;
    if fresh && holds_run(dir) && !overwrite {
        bail!(
            "{} already holds a run: continue it with `--resume {}`, replace it with --overwrite, or choose another --save folder",
            dir.display(),
            dir.display()
        );
    }
    for output in [
        dir.join("loss.png"),
        ckpt_dir.join(checkpoint::FILE_NAME),
        ckpt_dir.join("tokenizer.json"),
    ] {
        check_output(&output, inputs)?;
    }
    Ok(RunDir {
        path: dir.to_path_buf(),
        _lock: Some(lock),
    })
}

/// Creates and removes a file in `dir`, so that a read-only folder fails now rather than at the
/// first save.
fn probe_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".modelspec-probe-{}", std::process::id()));
    File::options()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("the run folder {} is not writable", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_folders_are_plain_names_from_the_file() {
        assert_eq!(default_dir(None), Path::new("runs/tiny"));
        assert_eq!(
            default_dir(Some(Path::new("specs/llama-3.1-8b.mspec"))),
            Path::new("runs/llama-3.1-8b")
        );
        assert_eq!(
            default_dir(Some(Path::new("/tmp/../../x y.yaml"))),
            Path::new("runs/x_y")
        );
        assert_eq!(
            default_dir(Some(Path::new("..mspec"))),
            Path::new("runs/run")
        );
        for name in ["a/b.yaml", "../../escaped.mspec", "/abs/p.json"] {
            let dir = default_dir(Some(Path::new(name)));
            assert_eq!(dir.components().count(), 2, "{}", dir.display());
        }
    }
}
