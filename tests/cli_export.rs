//! `modelspec export RUN -o DIR` end to end: a run of the tiny spec trained two steps on the CPU,
//! exported as an HF directory, evaluated by `modelspec eval --hf DIR`: the logits equal those of
//! the run's own checkpoint evaluated directly (the executor on the checkpoint's spec and
//! parameters). Also `sample`'s default length within the context, and `check`'s non-fatal
//! warning for a per-layer setting that never takes effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modelspec::runtime::exec::Executor;
use modelspec::runtime::train::checkpoint;
use modelspec::runtime::weights::{self, FileTensor, StoreDtype};

fn modelspec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelspec"))
        .args(args)
        .output()
        .expect("run modelspec")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("modelspec-cli-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ok(out: &Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{stderr}",
        out.status
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// Trains the bundled tiny spec for two small steps into `dir`.
fn train(dir: &Path) {
    ok(&modelspec(&[
        "train",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "16",
        "--seed",
        "5",
        "--sample-tokens",
        "4",
        "--save",
        dir.to_str().unwrap(),
    ]));
}

#[test]
fn an_exported_run_evaluates_to_the_logits_of_its_checkpoint() {
    let root = temp_dir("eval");
    let run = root.join("run");
    let hf = root.join("hf");
    train(&run);
    let (_, stderr) = ok(&modelspec(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        hf.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("wrote config.json, model.safetensors"),
        "{stderr}"
    );
    assert!(hf.join("config.json").is_file() && hf.join("model.safetensors").is_file());

    // HF names: the tiny spec is Llama-shaped with a tied head.
    let stored = weights::read_tensors(&hf.join("model.safetensors")).unwrap();
    assert!(
        stored.contains_key("model.embed_tokens.weight"),
        "{:?}",
        stored.keys()
    );
    assert!(stored.contains_key("model.layers.5.self_attn.k_proj.weight"));
    assert!(
        !stored.contains_key("lm_head.weight"),
        "tied: no separate head"
    );
    assert!(
        !stored
            .keys()
            .any(|k| k.starts_with("param.") || k.starts_with("adam."))
    );

    // The reference: the run's checkpoint, evaluated directly.
    let ckpt = checkpoint::load(&run.join("ckpt")).unwrap();
    let spec = &ckpt.state.spec;
    let (batch, seq) = (2usize, 24usize);
    let tokens: Vec<u32> = (0..batch * seq)
        .map(|i| ((i * 37 + 11) % spec.vocab as usize) as u32)
        .collect();
    let exec = Executor::new(spec).unwrap();
    let logits = exec.forward(&ckpt.params, &tokens, batch).unwrap();
    let (vocab, padded) = (spec.vocab as usize, spec.vocab_padded as usize);
    let want: Vec<f32> = logits
        .data()
        .chunks(padded)
        .flat_map(|row| row[..vocab].iter().copied())
        .collect();

    let input = root.join("input.safetensors");
    let ids = BTreeMap::from([(
        "input_ids".to_string(),
        (
            vec![batch, seq],
            tokens.iter().map(|&t| i64::from(t)).collect(),
        ),
    )]);
    weights::write_tensors(&input, &BTreeMap::new(), &ids, StoreDtype::F32).unwrap();
    let out = root.join("out.safetensors");
    ok(&modelspec(&[
        "eval",
        "--hf",
        hf.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let got = weights::read_tensors(&out).unwrap();
    let Some(FileTensor::Float(got)) = got.get("logits") else {
        panic!("no logits in the eval output");
    };
    assert_eq!(got.shape, [batch, seq, vocab]);
    let max_diff = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // The same spec, the same f32 parameters, the same executor: the same bits.
    assert_eq!(
        max_diff, 0.0,
        "eval --hf of the export differs from the run"
    );

    // The export's config imports back to the run's spec (the name aside).
    let (imported, _) = modelspec::dsl::load::load_file(hf.join("config.json")).unwrap();
    let mut expected = spec.clone();
    expected.name = imported.name.clone();
    assert_eq!(imported, expected);

    // Exporting again replaces the files whole; an output that is a file is refused.
    ok(&modelspec(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        hf.to_str().unwrap(),
    ]));
    let not_dir = root.join("file");
    std::fs::write(&not_dir, "x").unwrap();
    let refused = modelspec(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        not_dir.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not a folder"), "{err}");
    assert_eq!(std::fs::read(&not_dir).unwrap(), b"x");

    // `sample` without --tokens stays within the context (256): prompt + at most 200 ids, and
    // no note about sliding past it.
    let (ids, stderr) = ok(&modelspec(&[
        "sample",
        run.to_str().unwrap(),
        "--ids",
        "--prompt",
        "Elizabeth",
    ]));
    let count = ids.split_whitespace().count();
    assert_eq!(count, "Elizabeth".len() + 200, "{ids}");
    assert!(!stderr.contains("exceed the context"), "{stderr}");
    // An explicit count past the context is honoured, with a note.
    let (_, stderr) = ok(&modelspec(&[
        "sample",
        run.to_str().unwrap(),
        "--ids",
        "--prompt-ids",
        &vec!["1"; 250].join(","),
        "--tokens",
        "10",
    ]));
    assert!(stderr.contains("exceed the context (256)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_tokenizer_of_a_run_goes_with_the_export() {
    let root = temp_dir("tokenizer");
    std::fs::create_dir_all(&root).unwrap();
    // A word-level tokenizer: seven words, everything else `[UNK]`.
    let tokenizer = root.join("tokenizer.json");
    std::fs::write(
        &tokenizer,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"[UNK]":0,"the":1,"and":2,"of":3,"to":4,"a":5,"Elizabeth":6},
"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let run = root.join("run");
    let hf = root.join("hf");
    ok(&modelspec(&[
        "train",
        "--steps",
        "1",
        "--batch",
        "2",
        "--seq",
        "16",
        "--sample-tokens",
        "2",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--save",
        run.to_str().unwrap(),
    ]));
    let (_, stderr) = ok(&modelspec(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        hf.to_str().unwrap(),
    ]));
    assert!(stderr.contains("tokenizer.json to"), "{stderr}");
    assert_eq!(
        std::fs::read(hf.join("tokenizer.json")).unwrap(),
        std::fs::read(run.join("ckpt/tokenizer.json")).unwrap()
    );
    // `sample --hf` reads text through it.
    let (text, _) = ok(&modelspec(&[
        "sample",
        "--hf",
        hf.to_str().unwrap(),
        "--prompt",
        "the and",
        "--tokens",
        "3",
    ]));
    assert!(text.starts_with("the and"), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_run_that_is_not_one_is_refused() {
    let root = temp_dir("missing");
    std::fs::create_dir_all(&root).unwrap();
    let out = modelspec(&[
        "export",
        root.to_str().unwrap(),
        "-o",
        root.join("hf").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reading the run"), "{err}");
    assert!(
        !root.join("hf").exists(),
        "nothing written for a failed export"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn check_warns_of_a_rule_setting_that_never_takes_effect_and_exits_0() {
    let root = temp_dir("warn");
    std::fs::create_dir_all(&root).unwrap();
    let spec = root.join("m.mspec");
    std::fs::write(
        &spec,
        "model m {\n    vocab 256   d_model 64   layers 4   context 128\n    attention { heads 4 }\n    layers[1] { attention.window 64 }\n    layers[1] { attention.window 32 }\n}\n",
    )
    .unwrap();
    let (stdout, stderr) = ok(&modelspec(&["check", spec.to_str().unwrap()]));
    assert!(stdout.contains("ok (m, 4 layers)"), "{stdout}");
    assert!(
        stderr.starts_with("warning: `attention.window` here never takes effect"),
        "{stderr}"
    );
    assert!(stderr.contains("m.mspec:4:17"), "{stderr}");
    assert!(stderr.contains("line 5, column 17"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}
