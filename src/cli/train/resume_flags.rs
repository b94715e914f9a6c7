//! What `--resume` does with flags that differ from the run's recorded options: the run keeps
//! its options (bit-for-bit continuation needs them), and each ignored flag is named.

use modelspec_runtime::train::TrainState;

use super::TrainArgs;

/// The flags given with `--resume` that differ from what the run recorded, as
/// `--flag VALUE (the run has RECORDED)`: the run keeps its recorded options.
pub fn ignored(args: &TrainArgs, state: &TrainState) -> Vec<String> {
    let o = &state.options;
    let mut out = Vec::new();
    let mut differs = |flag: &str, given: Option<String>, recorded: String| {
        if let Some(given) = given.filter(|g| *g != recorded) {
            out.push(format!("--{flag} {given} (the run has {recorded})"));
        }
    };
    differs(
        "batch",
        args.batch.map(|v| v.to_string()),
        o.batch.to_string(),
    );
    differs("seq", args.seq.map(|v| v.to_string()), o.seq.to_string());
    differs(
        "accumulate",
        args.accumulate.map(|v| v.to_string()),
        o.accumulate.to_string(),
    );
    differs(
        "lr",
        args.lr.map(|v| v.to_string()),
        o.schedule.peak_lr.to_string(),
    );
    differs(
        "min-lr",
        args.min_lr.map(|v| v.to_string()),
        o.schedule.min_lr.to_string(),
    );
    differs(
        "warmup",
        args.warmup.map(|v| v.to_string()),
        o.schedule.warmup_steps.to_string(),
    );
    differs(
        "weight-decay",
        args.weight_decay.map(|v| v.to_string()),
        o.adamw.weight_decay.to_string(),
    );
    differs("clip", args.clip.map(|v| v.to_string()), o.clip.to_string());
    differs("seed", args.seed.map(|v| v.to_string()), o.seed.to_string());
    differs(
        "checkpoint",
        args.policy.clone(),
        o.policy.clone().unwrap_or_else(|| "the spec's own".into()),
    );
    if let Some(t) = &args.tokenizer {
        out.push(format!(
            "--tokenizer {} (the run keeps its {} tokenizer)",
            t.display(),
            o.tokenizer
        ));
    }
    if let Some(file) = &args.file {
        let same = modelspec_dsl::load::load_file(file).is_ok_and(|(spec, _)| spec == state.spec);
        if !same {
            out.push(format!(
                "{} (not the run's spec; the run continues with its recorded `{}`)",
                file.display(),
                state.spec.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    #[test]
    fn only_differing_given_flags_are_named() {
        let text = include_str!("../../../specs/tiny.mspec");
        let spec =
            modelspec_dsl::load::load_str(text, "tiny.mspec", modelspec_dsl::load::Format::Mspec)
                .expect("tiny spec");
        let args = Cli::parse_from(["x", "--batch", "16", "--seq", "32", "--clip", "0.5"]).train;
        let start = Cli::parse_from(["x", "--batch", "16", "--seq", "64"]).train;
        let options = super::super::run_options(&start, "bytes", "data".into(), None);
        let state = TrainState {
            step: 1,
            rng: modelspec_runtime::train::rng::SplitMix64::new(0),
            cursor: Default::default(),
            options,
            spec,
        };
        let named = ignored(&args, &state);
        assert_eq!(
            named,
            ["--seq 32 (the run has 64)", "--clip 0.5 (the run has 1)"]
        );
    }
}
