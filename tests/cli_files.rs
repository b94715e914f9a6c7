//! The CLI never damages files that are not its own: outputs that are special files (device
//! nodes, FIFOs, symlinks, directories) or equal to an input are refused with a clear error, writes
//! are atomic and leave no temporary files, and nonsense numeric flags are refused up front.
//! (Training runs and their folders: tests/cli_runs.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn modelspec(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs");
    assert_ne!(out.status.code(), Some(101), "{args:?} panicked");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli_files")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Names of temporary files left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp") || n.starts_with(".modelspec-tmp"))
        .collect()
}

/// A FIFO at `path`, if this system can make one.
fn mkfifo(path: &Path) -> bool {
    Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// A copy of /dev/null's device node at `path` (needs root); never /dev/null itself, so a
/// regression cannot damage the system's node.
fn mknod_null(path: &Path) -> bool {
    Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success())
}

fn eval_gpt2(input: &Path, out: &Path) -> Output {
    let dir = root().join("tests/fixtures/gpt2");
    modelspec(&[
        "eval",
        "--hf",
        s(&dir),
        "--input",
        s(input),
        "--out",
        s(out),
    ])
}

#[test]
fn eval_refuses_special_files_and_its_input() {
    let dir = scratch("eval");
    let input = dir.join("input.safetensors");
    std::fs::copy(root().join("tests/fixtures/gpt2/input.safetensors"), &input).expect("copy");
    let original = std::fs::read(&input).expect("read");

    // --out equal to --input (also spelled differently) leaves the input intact.
    for out in [input.clone(), dir.join(".").join("input.safetensors")] {
        let o = eval_gpt2(&input, &out);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&input).expect("read"), original);
    }

    // A symlink to a file: refused, the link and its target unchanged.
    let target = dir.join("target.txt");
    std::fs::write(&target, b"keep me").expect("write");
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let o = eval_gpt2(&input, &link);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"keep me");

    // A directory.
    let o = eval_gpt2(&input, &dir);
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));

    // A FIFO: refused without blocking or replacing it.
    let fifo = dir.join("fifo");
    if mkfifo(&fifo) {
        let o = eval_gpt2(&input, &fifo);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::symlink_metadata(&fifo)
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
    } else {
        eprintln!("skipped the FIFO case: mkfifo failed");
    }

    // A character device (a private copy of /dev/null's node, when we may make one).
    let null = dir.join("null");
    if mknod_null(&null) {
        let o = eval_gpt2(&input, &null);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("character device"), "{}", stderr(&o));
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::symlink_metadata(&null)
                .expect("node")
                .file_type()
                .is_char_device(),
            "the device node was replaced"
        );
    } else {
        eprintln!("skipped the device-node case: mknod needs root");
    }

    // A regular output works and leaves no temporary file behind.
    let out = dir.join("out.safetensors");
    let o = eval_gpt2(&input, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn import_and_export_refuse_their_input_and_special_files() {
    let dir = scratch("convert");
    let config = dir.join("config.json");
    std::fs::copy(root().join("tests/hf_configs/gpt2/config.json"), &config).expect("copy");
    let original = std::fs::read(&config).expect("read");
    let o = modelspec(&["import-hf", s(&config), "-o", s(&config)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&config).expect("read"), original);

    let spec = dir.join("gpt2.mspec");
    let o = modelspec(&["import-hf", s(&config), "-o", s(&spec)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let spec_text = std::fs::read(&spec).expect("written");
    let o = modelspec(&["export-hf", s(&spec), "-o", s(&spec)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&spec).expect("read"), spec_text);

    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&config, &link).expect("symlink");
    let o = modelspec(&["export-hf", s(&spec), "-o", s(&link)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&config).expect("read"), original);

    let o = modelspec(&["export-hf", s(&spec), "-o", s(&dir.join("out.json"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn generate_refuses_to_overwrite_special_files() {
    let dir = scratch("generate");
    let target = dir.join("elsewhere.rs");
    std::fs::write(&target, b"// mine").expect("write");
    std::os::unix::fs::symlink(&target, dir.join("model.rs")).expect("symlink");
    let o = modelspec(&["generate", "specs/tiny.mspec", "-o", s(&dir)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&target).expect("read"), b"// mine");

    let fresh = dir.join("fresh");
    let o = modelspec(&["generate", "specs/tiny.mspec", "-o", s(&fresh)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fresh.join("model.rs").is_file() && fresh.join("kernels.cu").is_file());
    assert!(leftovers(&fresh).is_empty(), "{:?}", leftovers(&fresh));
}

#[test]
fn plan_plot_needs_a_png_path() {
    let dir = scratch("plot");
    let out = dir.join("out");
    let o = modelspec(&[
        "plan",
        "specs/tiny.mspec",
        "--batch",
        "2",
        "--seq",
        "16",
        "--plot",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("--plot") && err.contains(".png"), "{err}");
    assert!(!out.exists());

    let png = dir.join("curve.png");
    let o = modelspec(&[
        "plan",
        "specs/tiny.mspec",
        "--batch",
        "2",
        "--seq",
        "16",
        "--plot",
        s(&png),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        &std::fs::read(&png).expect("png")[..8],
        b"\x89PNG\r\n\x1a\n"
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn nonsense_numbers_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--lr", "-1"),
        ("--lr", "0"),
        ("--clip", "NaN"),
        ("--weight-decay", "-5"),
        ("--min-lr", "inf"),
        ("--clip", "-0.5"),
        ("--batch", "0"),
        ("--save-every", "0"),
    ] {
        let o = modelspec(&["train", flag, value, "--steps", "1"]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value} accepted");
        let err = stderr(&o);
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(!err.contains("training"), "{flag} {value} trained: {err}");
    }
    // The `=` form reaches the value parser too.
    let o = modelspec(&["train", "--lr=-1", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("above 0"), "{}", stderr(&o));
    let o = modelspec(&["sample", "runs/none", "--temperature", "NaN"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--temperature"), "{}", stderr(&o));
}

#[test]
fn a_spec_name_cannot_inject_code() {
    let dir = scratch("inject");
    let yaml = String::from_utf8(modelspec(&["expand", "specs/tiny.mspec"]).stdout).expect("utf-8");
    let line = yaml
        .lines()
        .find(|l| l.starts_with("name:"))
        .expect("a name line")
        .to_string();
    let evil = yaml.replacen(&line, "name: \"x\\npub fn injected() {}\\n//\"", 1);
    let path = dir.join("evil.yaml");
    std::fs::write(&path, evil).expect("write");
    for cmd in ["check", "generate"] {
        let mut args = vec![cmd, s(&path)];
        let out_dir = dir.join("out");
        if cmd == "generate" {
            args.extend(["-o", s(&out_dir)]);
        }
        let o = modelspec(&args);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        assert!(stderr(&o).contains("name"), "{cmd}: {}", stderr(&o));
        assert!(!out_dir.join("model.rs").exists());
    }
}
