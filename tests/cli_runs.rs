//! `modelspec train` never loses a run: the default folder is a plain name under runs/, an existing
//! run is not replaced without --overwrite, a second train on the same folder is refused (lock),
//! every option that shapes the run is recorded (and --resume says which flags it ignores), the
//! data is recorded by absolute path and content hash, a read-only folder or special data file is
//! refused before training, and the summary counts the steps of this invocation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in `cwd`.
fn modelspec_in(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the binary runs");
    assert_ne!(
        out.status.code(),
        Some(101),
        "{args:?} panicked:\n{}",
        stderr(&out)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}:\n{}",
        out.status,
        stderr(out)
    );
    stdout(out)
}

fn fails(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1:\n{}",
        stderr(out)
    );
    stderr(out)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli_runs")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A fast run: tiny batches, no sample.
const FAST: [&str; 6] = ["--batch", "2", "--seq", "16", "--sample-tokens", "0"];

fn train(cwd: &Path, extra: &[&str]) -> Output {
    modelspec_in(cwd, &[&["train"][..], extra, &FAST[..]].concat())
}

/// The checkpoint's JSON header (the safetensors metadata) as text.
fn header(run: &Path) -> String {
    let bytes = std::fs::read(run.join("ckpt").join("checkpoint.safetensors")).expect("checkpoint");
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    String::from_utf8_lossy(&bytes[8..8 + len]).into_owned()
}

#[test]
fn the_default_folder_is_named_after_the_spec_file_and_runs_are_not_replaced() {
    let cwd = scratch("default");
    std::fs::create_dir_all(cwd.join("specs")).expect("dir");
    // The spec's own name is `tiny`; the file's is `first`.
    let spec = cwd.join("specs").join("first.mspec");
    std::fs::copy(root().join("specs/tiny.mspec"), &spec).expect("copy");
    ok(&train(&cwd, &["specs/first.mspec", "--steps", "2"]));
    let run = cwd.join("runs").join("first");
    assert!(run.join("ckpt").join("checkpoint.safetensors").is_file());
    let before = std::fs::read(run.join("ckpt").join("checkpoint.safetensors")).expect("read");

    // A fresh run into the same folder is refused and the checkpoint is untouched.
    let err = fails(&train(&cwd, &["specs/first.mspec", "--steps", "1"]));
    assert!(
        err.contains("already holds a run")
            && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join("ckpt").join("checkpoint.safetensors")).expect("read"),
        before
    );
    // Plain `train` twice (the bundled spec, runs/tiny) is refused the second time too.
    ok(&train(&cwd, &["--steps", "1"]));
    assert!(cwd.join("runs/tiny/ckpt/checkpoint.safetensors").is_file());
    fails(&train(&cwd, &["--steps", "1"]));
    // --overwrite replaces it on purpose.
    ok(&train(
        &cwd,
        &["specs/first.mspec", "--steps", "1", "--overwrite"],
    ));
    assert!(
        header(&run).contains("\\\"step\\\":1,"),
        "{:.200}",
        header(&run)
    );
    // Nothing was written outside runs/.
    let mut top: Vec<String> = std::fs::read_dir(&cwd)
        .expect("read")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    top.sort();
    assert_eq!(top, ["runs", "specs"]);
}

#[test]
fn a_locked_folder_is_refused() {
    let cwd = scratch("lock");
    let run = cwd.join("run");
    std::fs::create_dir_all(&run).expect("dir");
    let lock = std::fs::File::create(run.join(".modelspec-lock")).expect("lock file");
    lock.lock().expect("lock");
    let err = fails(&train(&cwd, &["--steps", "1", "--save", "run"]));
    assert!(err.contains("another `modelspec train`"), "{err}");
    assert!(!run.join("ckpt").join("checkpoint.safetensors").exists());
    lock.unlock().expect("unlock");
    ok(&train(&cwd, &["--steps", "1", "--save", "run"]));
}

#[test]
fn resume_keeps_the_recorded_options_and_counts_its_own_steps() {
    let cwd = scratch("resume");
    let data = cwd.join("text.txt");
    std::fs::write(
        &data,
        "It is a truth universally acknowledged. ".repeat(200),
    )
    .expect("write");
    ok(&train(
        &cwd,
        &[
            "--steps",
            "4",
            "--stop-after",
            "2",
            "--save-every",
            "3",
            "--data",
            "text.txt",
            "--save",
            "run",
        ],
    ));
    let run = cwd.join("run");
    let h = header(&run);
    assert!(h.contains("\\\"save_every\\\":3"), "{h:.400}");
    // The data path is recorded absolute, with a content hash.
    let absolute = std::fs::canonicalize(&data).expect("canonical");
    assert!(
        h.contains(&format!("\\\"data\\\":\\\"{}\\\"", absolute.display())),
        "{h:.600}"
    );
    assert!(h.contains("fnv1a64:"), "{h:.600}");

    // From another folder, with conflicting flags: they are named and ignored.
    let elsewhere = scratch("resume-elsewhere");
    let o = modelspec_in(
        &elsewhere,
        &[
            "train",
            "--resume",
            s(&run),
            "--batch",
            "4",
            "--lr",
            "0.01",
            "--sample-tokens",
            "0",
        ],
    );
    let out = ok(&o);
    let err = stderr(&o);
    assert!(err.contains("--batch 4 (the run has 2)"), "{err}");
    assert!(err.contains("--lr 0.01 (the run has 0.003)"), "{err}");
    assert!(out.contains("trained 2 steps (4 in total)"), "{out}");
    assert!(header(&run).contains("\\\"save_every\\\":3"));

    // Changed data is refused on resume.
    std::fs::write(&data, "Something else entirely. ".repeat(200)).expect("write");
    let err = fails(&modelspec_in(
        &cwd,
        &[
            "train",
            "--resume",
            "run",
            "--steps",
            "6",
            "--sample-tokens",
            "0",
        ],
    ));
    assert!(
        err.contains("not the text this run was trained on"),
        "{err}"
    );
}

#[test]
fn special_data_files_and_unwritable_folders_are_refused_before_training() {
    let cwd = scratch("refuse");
    let err = fails(&train(
        &cwd,
        &["--steps", "1", "--data", "/dev/zero", "--save", "a"],
    ));
    assert!(err.contains("not a regular file"), "{err}");
    let err = fails(&train(
        &cwd,
        &["--steps", "1", "--data", s(&cwd), "--save", "b"],
    ));
    assert!(err.contains("directory"), "{err}");

    // A folder this process cannot write: mode 555, or (as root, which ignores modes) a path
    // under /proc.
    let readonly = cwd.join("readonly");
    std::fs::create_dir_all(&readonly).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let writable = std::fs::File::create(readonly.join("probe")).is_ok();
    let target = if writable {
        PathBuf::from("/proc/self/modelspec-run")
    } else {
        readonly.join("run")
    };
    let o = train(&cwd, &["--steps", "1", "--save", s(&target)]);
    let err = fails(&o);
    assert!(err.contains("run folder"), "{err}");
    assert!(!err.contains("training tiny"), "it trained first: {err}");
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn a_diverged_run_is_reported_as_divergence() {
    let cwd = scratch("diverge");
    let o = train(
        &cwd,
        &[
            "--steps",
            "6",
            "--lr",
            "1e20",
            "--warmup",
            "0",
            "--save-every",
            "1",
            "--save",
            "run",
        ],
    );
    let err = fails(&o);
    assert!(err.contains("diverged at step"), "{err}");
    assert!(!err.contains("plot:"), "{err}");
    assert!(cwd.join("run").join("loss.png").is_file());
}
