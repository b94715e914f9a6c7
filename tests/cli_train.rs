//! `modelspec train` and `modelspec sample` end to end: a few steps of the bundled tiny spec on the
//! bundled corpus, a checkpoint, a resumed run that matches a straight one bit for bit, sampling, the
//! loss plot, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn modelspec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .output()
        .expect("run modelspec")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("modelspec-cli-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn checkpoint_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("ckpt").join("checkpoint.safetensors")).expect("checkpoint written")
}

const SMALL: [&str; 10] = [
    "--batch",
    "2",
    "--seq",
    "16",
    "--save-every",
    "2",
    "--seed",
    "3",
    "--sample-tokens",
    "8",
];

#[test]
fn train_then_sample() {
    let dir = temp_dir("train");
    let d = dir.to_str().unwrap();
    let out = ok(&modelspec(
        &[&["train", "--steps", "4", "--save", d][..], &SMALL[..]].concat(),
    ));
    assert!(out.contains("unigram entropy"), "{out}");
    assert!(out.contains("sample"), "{out}");
    let png = std::fs::read(dir.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    let text = ok(&modelspec(&[
        "sample",
        d,
        "--prompt",
        "Mr. Darcy",
        "--tokens",
        "20",
        "--seed",
        "1",
    ]));
    assert!(text.starts_with("Mr. Darcy"), "{text}");
    let again = ok(&modelspec(&[
        "sample",
        d,
        "--prompt",
        "Mr. Darcy",
        "--tokens",
        "20",
        "--seed",
        "1",
    ]));
    assert_eq!(text, again, "sampling is deterministic for a seed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interrupted_and_resumed_run_is_bitwise_identical() {
    // 5 steps straight == 2 steps (of a 5-step plan), stop, resume for the other 3.
    let whole = temp_dir("whole");
    let cut = temp_dir("cut");
    let (w, c) = (whole.to_str().unwrap(), cut.to_str().unwrap());
    ok(&modelspec(
        &[&["train", "--steps", "5", "--save", w][..], &SMALL[..]].concat(),
    ));
    ok(&modelspec(
        &[
            &["train", "--steps", "5", "--stop-after", "2", "--save", c][..],
            &SMALL[..],
        ]
        .concat(),
    ));
    assert!(
        checkpoint_bytes(&whole) != checkpoint_bytes(&cut),
        "the cut run stopped early"
    );
    ok(&modelspec(&["train", "--resume", c]));
    // Params, moments, losses, RNG and cursor all match: the files are identical.
    assert!(
        checkpoint_bytes(&whole) == checkpoint_bytes(&cut),
        "the resumed run diverged"
    );
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&cut).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = temp_dir("bad");
    let d = dir.to_str().unwrap();
    let out = modelspec(&["train", "--steps", "1", "--seq", "100000", "--save", d]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("context"), "{err}");

    let out = modelspec(&[
        "train",
        "--steps",
        "1",
        "--checkpoint",
        "sometimes",
        "--save",
        d,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));

    std::fs::create_dir_all(dir.join("ckpt")).unwrap();
    std::fs::write(
        dir.join("ckpt").join("checkpoint.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{",
    )
    .unwrap();
    for args in [vec!["sample", d], vec!["train", "--resume", d]] {
        let out = modelspec(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("corrupt or truncated"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn divergence_stops_names_the_step_and_keeps_the_last_good_checkpoint() {
    // A learning rate of 1e20 blows the weights up after one step; the next loss is not finite.
    let dir = temp_dir("nan");
    let d = dir.to_str().unwrap();
    let args = [
        "train",
        "--steps",
        "6",
        "--lr",
        "1e20",
        "--warmup",
        "0",
        "--save-every",
        "1",
        "--save",
        d,
    ];
    let out = modelspec(&[&args[..], &SMALL[..4]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let step: u64 = err
        .split("diverged at step ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step named: {err}"));
    assert!(err.contains("last good checkpoint"), "{err}");
    assert!(
        dir.join("loss.png").exists(),
        "the plot of the steps so far is written"
    );
    // The checkpoint on disk is the one saved after the last finite step.
    let bytes = checkpoint_bytes(&dir);
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]);
    assert!(
        header.contains(&format!("\\\"step\\\":{step},")),
        "checkpoint at step {step}: {header:.300}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
