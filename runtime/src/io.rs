//! Writing output files without damaging what is not ours.
//!
//! Every file modelspec writes (checkpoints, `eval --out`, `import-hf -o`, `generate -o`, loss
//! plots, tokenizer copies) goes through [`write_atomic`] or [`write_atomic_with`]:
//! - the target, when it exists, must be a regular file: a device node, FIFO, socket, directory or
//!   symbolic link is refused with an [`OutputError::NotRegular`] that says what it is (renaming over
//!   `/dev/null` would replace the device node with a file);
//! - the bytes go to a uniquely named temporary file in the target's folder (created exclusively,
//!   so two writers never share one), which is fsynced and then renamed over the target, and the
//!   folder is fsynced: at every instant the target is either the old file or the new one, whole;
//! - on any failure (a full disk, a read-only folder) the temporary file is removed and the target
//!   is untouched.
//!
//! [`check_output`] also refuses an output that is one of the command's inputs (by device and inode
//! where both exist, else by canonical path), so `eval --out IN --input IN` cannot overwrite `IN`.
//! Commands call it before doing any work, so the refusal comes first.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Why an output file was not written.
#[derive(Debug, Error)]
pub enum OutputError {
    /// The target exists and is not a regular file.
    #[error("{} is a {kind}, not a regular file: refusing to replace it (choose a file path)", path.display())]
    NotRegular {
        /// The target.
        path: PathBuf,
        /// What it is: `directory`, `symbolic link`, `FIFO`, `socket`, `character device`, ...
        kind: &'static str,
    },
    /// The target is one of the command's inputs.
    #[error("{} is the input {}: refusing to overwrite an input (choose another output path)", path.display(), input.display())]
    SameAsInput {
        /// The target.
        path: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// Creating, writing, syncing or renaming failed; the target is unchanged.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file being written (the target, or the temporary file beside it).
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl OutputError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        OutputError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a non-regular file is, in words; `None` for a regular file.
pub fn special_kind(file_type: &fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        return None;
    }
    if file_type.is_symlink() {
        return Some("symbolic link");
    }
    if file_type.is_dir() {
        return Some("directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("FIFO");
        }
        if file_type.is_socket() {
            return Some("socket");
        }
        if file_type.is_char_device() {
            return Some("character device");
        }
        if file_type.is_block_device() {
            return Some("block device");
        }
    }
    Some("special file")
}

/// Whether `a` and `b` name the same file: same device and inode when both exist (Unix), else the
/// same canonical path (an output that does not exist yet is canonicalised through its folder).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) {
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The canonical path of `path`, or of its folder joined with its name when it does not exist.
fn canonical(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = folder_of(path);
    Some(fs::canonicalize(parent).ok()?.join(name))
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that `path` may be written: it is absent or a regular file (not a symlink), and it is
/// none of `inputs`.
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<(), OutputError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if let Some(kind) = special_kind(&meta.file_type()) {
                return Err(OutputError::NotRegular {
                    path: path.to_path_buf(),
                    kind,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(OutputError::io(path, e)),
    }
    for input in inputs {
        if same_file(path, input) {
            return Err(OutputError::SameAsInput {
                path: path.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// A temporary path in `path`'s folder, unique to this process and call; it ends with `path`'s
/// file name so that writers that choose a format by extension (PNG) still do.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    folder_of(path).join(format!(
        ".modelspec-tmp-{}-{n}-{nanos:08x}.{name}",
        std::process::id()
    ))
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_atomic_with(path, |tmp| {
        let mut file = OpenOptions::new().write(true).truncate(true).open(tmp)?;
        file.write_all(bytes)
    })
}

/// Like [`write_atomic`] for writers that want a path: `write` fills the (already created, empty)
/// temporary file at the path it is given, which has `path`'s extension.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    check_output(path, &[])?;
    let dir = folder_of(path);
    let tmp = temp_path(path);
    // Exclusive creation: a temporary name already taken (another writer) is an error, not shared.
    File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        // Named by the target: a missing or read-only folder is the target's problem.
        .map_err(|e| OutputError::io(path, e))?;
    let result = (|| {
        write(&tmp).map_err(|e| OutputError::io(&tmp, e))?;
        let file = File::open(&tmp).map_err(|e| OutputError::io(&tmp, e))?;
        file.sync_all().map_err(|e| OutputError::io(&tmp, e))?;
        // The target may have changed since the first check.
        check_output(path, &[])?;
        fs::rename(&tmp, path).map_err(|e| OutputError::io(path, e))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the folder's entry is.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("modelspec-io-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".modelspec-tmp"))
            .collect()
    }

    #[test]
    fn replaces_a_regular_file_whole() {
        let dir = scratch("regular");
        let path = dir.join("out.bin");
        fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        write_atomic(&dir.join("fresh.txt"), b"x").unwrap();
        let missing = dir.join("no-such-folder").join("out.txt");
        let err = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("writing {}", missing.display())),
            "{err}"
        );
        assert!(leftovers(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn refuses_special_files_and_says_what_they_are() {
        let dir = scratch("special");
        let err = write_atomic(&dir, b"x").unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");

        let err = write_atomic(Path::new("/dev/null"), b"x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("character device"), "{err}");
        use std::os::unix::fs::FileTypeExt;
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );

        let target = dir.join("target.txt");
        fs::write(&target, b"keep").unwrap();
        let link = dir.join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_atomic(&link, b"x").unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = write_atomic(&fifo, b"x").unwrap_err().to_string();
            assert!(err.contains("FIFO"), "{err}");
        }
        assert!(leftovers(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_an_output_that_is_an_input() {
        let dir = scratch("same");
        let input = dir.join("in.safetensors");
        fs::write(&input, b"input").unwrap();
        let err = check_output(&input, &[&input]).unwrap_err().to_string();
        assert!(err.contains("is the input"), "{err}");
        // Another spelling of the same file.
        let other = dir.join(".").join("in.safetensors");
        assert!(check_output(&other, &[&input]).is_err());
        assert!(check_output(&dir.join("out.safetensors"), &[&input]).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary_file() {
        let dir = scratch("fail");
        let path = dir.join("out.txt");
        fs::write(&path, b"valid").unwrap();
        let err = write_atomic_with(&path, |tmp| {
            fs::write(tmp, b"frag")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("disk full"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"valid");
        assert!(leftovers(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
