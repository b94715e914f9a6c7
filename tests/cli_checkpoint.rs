//! One checkpoint-policy parser: `--checkpoint POLICY` on the command line, `checkpoint { ... }`
//! in a `.mspec` file and `checkpoint:` in its YAML form read the same text the same way, so they
//! give the same plan; a bad unit or `budget(NaN)` is an error that names the value.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn modelspec(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    assert_ne!(out.status.code(), Some(101), "modelspec {args:?} panicked");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli_checkpoint")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `modelspec plan FILE --batch 2 --seq 16 --json [--checkpoint POLICY]`: what it saves.
fn plan(file: &Path, checkpoint: Option<&str>) -> serde_json::Value {
    let file = file.to_str().expect("utf-8 path");
    let mut args = vec!["plan", file, "--batch", "2", "--seq", "16", "--json"];
    if let Some(p) = checkpoint {
        args.extend(["--checkpoint", p]);
    }
    let out = modelspec(&args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    // The policy's display name says where it came from; what is saved must not.
    json.as_object_mut().expect("object").remove("policy");
    json
}

const TINY: &str = "specs/tiny.mspec";

#[test]
fn the_same_budget_text_gives_the_same_plan_everywhere() {
    let dir = scratch("same");
    let spec_text = std::fs::read_to_string(TINY).expect("tiny spec");
    let expand = modelspec(&["expand", TINY, "--format", "yaml"]);
    assert!(expand.status.success(), "{}", stderr(&expand));
    let yaml_text = String::from_utf8_lossy(&expand.stdout).into_owned();
    assert!(yaml_text.contains("budget: null"), "{yaml_text}");
    let mut plans = Vec::new();
    for budget in ["0.4", "600kB", "600KB", "0.6MiB", "1.5e5B", "150000.4B"] {
        let cli = plan(Path::new(TINY), Some(&format!("budget({budget})")));
        let spec_file = dir.join("tiny_budget.mspec");
        let with_budget = spec_text.replacen(
            "mlp swiglu(hidden = 512)",
            &format!("mlp swiglu(hidden = 512)\n    checkpoint {{ budget {budget} }}"),
            1,
        );
        std::fs::write(&spec_file, with_budget).unwrap();
        let from_spec = plan(&spec_file, None);
        let yaml_file = dir.join("tiny_budget.yaml");
        std::fs::write(
            &yaml_file,
            yaml_text.replacen("budget: null", &format!("budget: {budget}"), 1),
        )
        .unwrap();
        let from_yaml = plan(&yaml_file, None);
        assert_eq!(cli, from_spec, "budget {budget}: command line vs .mspec");
        assert_eq!(cli, from_yaml, "budget {budget}: command line vs YAML");
        plans.push((budget, cli));
    }
    // kB and KB are one unit; 1.5e5B and 150000.4B are the same whole number of bytes.
    assert_eq!(plans[1].1, plans[2].1);
    assert_eq!(plans[4].1, plans[5].1);
}

#[test]
fn bad_budgets_name_the_value_on_the_command_line_and_in_a_spec() {
    let out = modelspec(&[
        "plan",
        TINY,
        "--batch",
        "2",
        "--seq",
        "16",
        "--checkpoint",
        "budget(24Gib)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("`24Gib`") && err.contains("did you mean `GiB`?"),
        "{err}"
    );

    let out = modelspec(&[
        "plan",
        TINY,
        "--batch",
        "2",
        "--seq",
        "16",
        "--checkpoint",
        "budget(NaN)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`NaN`"), "{}", stderr(&out));

    let dir = scratch("bad");
    let file = dir.join("bad_unit.mspec");
    let text = std::fs::read_to_string(TINY).unwrap().replacen(
        "mlp swiglu(hidden = 512)",
        "mlp swiglu(hidden = 512)\n    checkpoint { budget 2kib }",
        1,
    );
    std::fs::write(&file, text).unwrap();
    let out = modelspec(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unknown unit `kib`") && err.contains("bad_unit.mspec:12:25"),
        "{err}"
    );
}
