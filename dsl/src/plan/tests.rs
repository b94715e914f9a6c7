use super::*;
use crate::ir::*;

/// GPT-2 124M as an IR value (independent of the parser).
fn gpt2() -> ModelSpec {
    let norm = Norm {
        kind: NormKind::Layer,
        eps: 1e-5,
        offset: 0.0,
        weight: true,
        bias: true,
    };
    let layer = |index| Layer {
        index,
        attention: Attention {
            heads: 12,
            kv_heads: 12,
            head_dim: 64,
            qkv_bias: true,
            out_bias: true,
            qk_norm: None,
            softcap: None,
            scale: 0.125,
            window: None,
            chunk: None,
            sinks: false,
            temperature: None,
            mla: None,
        },
        position: Position::Learned,
        block: Block {
            norm,
            placement: NormPlacement::Pre,
            parallel_residual: false,
            shared_norm: false,
        },
        ffn: Ffn::Mlp(Mlp {
            activation: MlpKind::GeluTanh,
            hidden: 3072,
            bias: true,
        }),
        checkpoint: LayerCheckpoint::Auto,
    };
    ModelSpec {
        name: "gpt2_124m".into(),
        vocab: 50257,
        vocab_padded: 50257,
        vocab_pad_multiple: 1,
        d_model: 768,
        n_layers: 12,
        context: 1024,
        dropout: Dropout::default(),
        embedding: Embedding {
            tied: true,
            scale: 1.0,
            scale_expr: ScaleExpr::Literal,
            learned_positions: true,
        },
        final_norm: Some(norm),
        logits: Logits {
            softcap: None,
            bias: false,
        },
        weights: WeightLayout {
            naming: Naming::Gpt2,
            qkv: QkvLayout::Fused,
            fused_gate_up: false,
        },
        checkpoint: CheckpointGlobal::default(),
        layers: (0..12).map(layer).collect(),
    }
}

fn plan_with(policy: &str) -> Result<Plan, PlanError> {
    let p = parse_policy(policy).expect("policy parses");
    plan(&gpt2(), 16, 1024, Dtype::Bf16, Some(&p))
}

#[test]
fn gpt2_params_match_published_count() {
    let total: u64 = crate::params::parameters(&gpt2())
        .iter()
        .map(|p| p.numel())
        .sum();
    assert_eq!(total, 124_439_808);
}

#[test]
fn none_saves_everything_and_full_recomputes_the_forward() {
    let none = plan_with("none").unwrap();
    assert_eq!(none.activation_bytes, none.none_activation_bytes);
    assert_eq!(none.recompute_flops, 0);
    let full = plan_with("full").unwrap();
    assert_eq!(full.recompute_flops, full.full_recompute_flops);
    // Full keeps only the layer inputs: B·T·d bf16 per layer.
    assert_eq!(full.activation_bytes, 12 * 16 * 1024 * 768 * 2);
}

#[test]
fn auto_never_recomputes_a_matmul_or_attention() {
    let auto = plan_with("auto").unwrap();
    for layer in &auto.layers {
        for name in &layer.recomputed {
            assert!(
                !["q", "k", "v", "attn", "attn_out", "up", "gate", "mlp_out"].contains(name),
                "{name}"
            );
        }
        assert!(layer.recomputed.contains(&"act"));
        // resid_mid = input + attn_out, and attn_out is not kept: recomputing it needs the o-proj.
        assert!(layer.saved.contains(&"resid_mid"));
    }
    let none = plan_with("none").unwrap();
    assert!(auto.activation_bytes < none.activation_bytes);
}

#[test]
fn budget_is_monotone_and_within_bounds() {
    let none = plan_with("none").unwrap();
    let full = plan_with("full").unwrap();
    let mut last: Option<Plan> = None;
    for step in 0..=20 {
        let f = step as f64 / 20.0;
        let plan = match plan_with(&format!("budget({f})")) {
            Ok(p) => p,
            Err(PlanError::Infeasible { min_fraction, .. }) => {
                assert!(
                    f < min_fraction,
                    "budget({f}) called infeasible above its minimum {min_fraction}"
                );
                assert!(last.is_none(), "a smaller budget was feasible");
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(plan.activation_bytes as f64 <= f * none.activation_bytes as f64 + 1.0);
        assert!(plan.recompute_flops <= full.recompute_flops);
        if let Some(prev) = &last {
            assert!(
                plan.activation_bytes >= prev.activation_bytes,
                "bytes fell at budget({f})"
            );
            assert!(
                plan.recompute_flops <= prev.recompute_flops,
                "recompute rose at budget({f})"
            );
        }
        last = Some(plan);
    }
    let last = last.expect("some budget is feasible");
    assert_eq!(last.recompute_flops, 0, "budget(1.0) recomputes nothing");
    let half = plan_with("budget(0.5)").unwrap();
    assert!(half.activation_bytes * 2 <= none.activation_bytes);
}

#[test]
fn infeasible_budget_names_the_smallest_feasible_one() {
    let err = plan_with("budget(0.0)").unwrap_err();
    let PlanError::Infeasible {
        min_fraction,
        needed_bytes,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    let full = plan_with("full").unwrap();
    assert_eq!(*needed_bytes, full.activation_bytes);
    let at_min = plan_with(&format!("budget({}B)", needed_bytes)).unwrap();
    assert_eq!(at_min.recompute_flops, full.recompute_flops);
    assert!(
        err.to_string()
            .contains(&format!("budget({min_fraction:.4})"))
    );
}

#[test]
fn byte_budgets_parse_with_units() {
    assert_eq!(parse_budget("24GiB"), Ok(Budget::Bytes(24 << 30)));
    assert_eq!(parse_budget("0.5"), Ok(Budget::Fraction(0.5)));
    assert!(parse_budget("1.5").is_err());
    assert!(parse_budget("3 parsecs").is_err());
    assert!(parse_policy("budget(0.5").is_err());
    assert!(parse_policy("sometimes").is_err());
}

#[test]
fn every_unit_has_its_size_and_fractions_round_to_the_nearest_byte() {
    let cases: [(&str, u64); 16] = [
        ("7B", 7),
        ("2kB", 2_000),
        ("2KB", 2_000),
        ("2KiB", 2_048),
        ("3MB", 3_000_000),
        ("3MiB", 3 << 20),
        ("1GB", 1_000_000_000),
        ("1.5GiB", 3 << 29),
        ("2TB", 2_000_000_000_000),
        ("1TiB", 1 << 40),
        ("1000.5B", 1001),
        ("1000.49B", 1000),
        ("0.3GiB", 322_122_547),
        ("2e9B", 2_000_000_000),
        ("1_000MB", 1_000_000_000),
        (" 24 GiB ", 24 << 30),
    ];
    for (text, bytes) in cases {
        assert_eq!(parse_budget(text), Ok(Budget::Bytes(bytes)), "{text}");
    }
    assert_eq!(parse_budget("5e-1"), Ok(Budget::Fraction(0.5)));
    let unknown = parse_budget("16EiB").unwrap_err().to_string();
    assert!(unknown.contains("`EiB`"), "{unknown}");
}

#[test]
fn bad_budgets_name_the_value() {
    let message = |text: &str| parse_budget(text).unwrap_err().to_string();
    for bad in ["NaN", "inf", "-inf", "lots", ""] {
        let m = message(bad);
        assert!(m.contains(&format!("`{bad}`")), "{bad}: {m}");
    }
    assert!(message("1000.5").contains("found 1000.5"));
    assert!(message("-0.5").contains("found -0.5"));
    assert!(message("-1GiB").contains("`-1GiB`"));
    assert!(message("16EiB").contains("`16EiB`"));
    let gib = message("24Gib");
    assert!(
        gib.contains("`24Gib`") && gib.contains("did you mean `GiB`?"),
        "{gib}"
    );
    assert!(message("20000000000GB").contains("64 bits"));
    assert_eq!(
        parse_budget("x").unwrap_err(),
        PolicyError::NotANumber { text: "x".into() }
    );
    let p = parse_policy("budget(NaN)").unwrap_err().to_string();
    assert!(p.contains("`NaN`"), "{p}");
    let typo = parse_policy("bugdet(0.5)").unwrap_err().to_string();
    assert!(typo.contains("did you mean `budget`?"), "{typo}");
    assert!(matches!(
        parse_policy("save"),
        Err(PolicyError::NeedsTensors { .. })
    ));
    assert!(matches!(
        parse_policy("full(q)"),
        Err(PolicyError::TakesNoArguments { .. })
    ));
}

/// A small spec whose checkpoint settings are `layer` (a policy) and `budget`, in the spec's
/// syntax.
fn spec_text(layer: &str, budget: &str) -> String {
    format!(
        "model p {{ vocab 64  d_model 32  layers 2  context 16  attention {{ heads 2 }}  mlp gelu
           checkpoint {{ default {layer}  budget {budget} }} }}"
    )
}

/// The same strings give the same policy and budget through the spec, its YAML form and the
/// command line.
#[test]
fn spec_yaml_and_command_line_agree() {
    let policies = ["none", "full", "auto", "save(q, attn)", "recompute(act)"];
    let budgets = [
        "0.5", "1", "24GiB", "1.5GiB", "2kB", "2KB", "1000.5B", "3MB",
    ];
    for (policy, budget) in policies
        .iter()
        .zip(budgets.iter().cycle())
        .chain(budgets.iter().map(|b| (&"auto", b)).collect::<Vec<_>>())
    {
        let from_spec = crate::mspec::parse(&spec_text(policy, budget), "p.mspec")
            .unwrap_or_else(|d| panic!("{policy} {budget}: {d:?}"));
        let Ok(PolicyOverride::Layer(cli_policy)) = parse_policy(policy) else {
            panic!("{policy}")
        };
        let Ok(PolicyOverride::Budget(cli_budget)) = parse_policy(&format!("budget({budget})"))
        else {
            panic!("{budget}")
        };
        assert_eq!(from_spec.checkpoint.budget, Some(cli_budget), "{budget}");
        assert!(from_spec.layers.iter().all(|l| l.checkpoint == cli_policy));
        // The YAML form with the policy and the budget written as text.
        let mut yaml = crate::yaml::to_string(&ModelSpec {
            checkpoint: CheckpointGlobal { budget: None },
            ..from_spec.clone()
        });
        yaml = yaml.replace("budget: null", &format!("budget: {budget}"));
        let structured = serde_norway::to_string(&from_spec.layers[0].checkpoint).unwrap();
        let mut text_form = String::new();
        let mut lines = yaml.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim_start() == "checkpoint:" && line.starts_with("  ") {
                // A layer row's structured policy: replace it by the text.
                let indent = line.len() - line.trim_start().len();
                text_form += &format!("{}checkpoint: {policy}\n", &line[..indent]);
                while lines
                    .peek()
                    .is_some_and(|l| l.len() - l.trim_start().len() > indent)
                {
                    lines.next();
                }
            } else {
                text_form += line;
                text_form += "\n";
            }
        }
        assert!(
            text_form.contains(&format!("checkpoint: {policy}")),
            "{structured}"
        );
        let from_yaml = crate::yaml::from_str(&text_form, "p.yaml")
            .unwrap_or_else(|d| panic!("{policy} {budget}: {d:?}\n{text_form}"));
        assert_eq!(from_yaml, from_spec, "{policy} {budget}");
    }
}

#[test]
fn bad_text_policies_are_diagnostics_in_every_front_end() {
    let spec = crate::mspec::parse(&spec_text("auto", "24Gib"), "p.mspec").unwrap_err();
    assert_eq!(spec[0].message, "unknown unit `Gib`");
    assert_eq!(spec[0].hint.as_deref(), Some("did you mean `GiB`?"));
    let spec = crate::mspec::parse(&spec_text("auto", "1000.5"), "p.mspec").unwrap_err();
    assert!(spec[0].message.contains("found 1000.5"));

    let good = crate::mspec::parse(&spec_text("auto", "0.5"), "p.mspec").unwrap();
    let yaml = crate::yaml::to_string(&ModelSpec {
        checkpoint: CheckpointGlobal { budget: None },
        ..good
    });
    let bad_unit = yaml.replace("budget: null", "budget: 24Gib");
    let d = crate::yaml::from_str(&bad_unit, "p.yaml").unwrap_err();
    assert_eq!(d[0].message, "unknown unit `Gib`");
    assert_eq!(d[0].field, "checkpoint.budget");
    assert_eq!(&bad_unit[d[0].span.clone()], "budget");
    let nan = yaml.replace("budget: null", "budget: NaN");
    let d = crate::yaml::from_str(&nan, "p.yaml").unwrap_err();
    assert!(d[0].message.contains("`NaN`"), "{}", d[0].message);
}

#[test]
fn knapsack_matches_brute_force() {
    // Small random instances against exhaustive search.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    for _ in 0..200 {
        let n = 1 + next(10) as usize;
        let w: Vec<u64> = (0..n).map(|_| 1 + next(20) * 8).collect();
        let v: Vec<u64> = (0..n).map(|_| next(100)).collect();
        let cap = next(200);
        let chosen = knapsack(&w, &v, cap);
        let weight: u64 = (0..n).filter(|&i| chosen[i]).map(|i| w[i]).sum();
        let value: u64 = (0..n).filter(|&i| chosen[i]).map(|i| v[i]).sum();
        assert!(weight <= cap);
        let best = (0u32..1 << n)
            .filter(|m| {
                (0..n)
                    .filter(|i| m >> i & 1 == 1)
                    .map(|i| w[i])
                    .sum::<u64>()
                    <= cap
            })
            .map(|m| {
                (0..n)
                    .filter(|i| m >> i & 1 == 1)
                    .map(|i| v[i])
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(value, best);
    }
}

#[test]
fn tensors_no_backward_reads_are_never_saved() {
    let none = plan_with("none").unwrap();
    for layer in &none.layers {
        // Pre-norm: attn_out and mlp_out only feed residual adds; learned positions: q is attention's input.
        assert_eq!(layer.unneeded, vec!["attn_out", "mlp_out"]);
        assert!(layer.saved.contains(&"q") && layer.saved.contains(&"resid_mid"));
    }
    let mut spec = gpt2();
    for layer in &mut spec.layers {
        layer.position = Position::Rope(Rope {
            theta: 10000.0,
            fraction: 1.0,
            rotary_dims: 64,
            style: RopeStyle::HalfSplit,
            scaling: RopeScaling::None,
        });
    }
    let p = |policy: &str| {
        plan(
            &spec,
            16,
            1024,
            Dtype::Bf16,
            Some(&parse_policy(policy).unwrap()),
        )
        .unwrap()
    };
    let none = p("none");
    assert_eq!(
        none.layers[0].unneeded,
        vec!["q", "k", "attn_out", "mlp_out"]
    );
    // Recomputing q_rope and resid_mid costs the projections folded into them: full recomputes
    // every matmul that produced a needed tensor, the unneeded q, k and o projections included.
    let full = p("full");
    let costs = layer_costs(&spec, &spec.layers[0], 16, 1024, Dtype::Bf16);
    let flops = |name: &str| costs.iter().find(|t| t.name == name).map_or(0, |t| t.flops);
    // Each op's own FLOPs once (the folded ones counted in q_rope/k_rope/resid_mid), but not the
    // down projection, whose output (mlp_out) only feeds the next layer's saved input.
    let own: u64 =
        costs.iter().map(|t| t.flops).sum::<u64>() - flops("q") - flops("k") - flops("attn_out");
    let forward = own - flops("mlp_out");
    assert_eq!(flops("resid_mid"), 16 * 1024 * 768 + flops("attn_out"));
    assert_eq!(full.layers[0].recompute_flops, forward);
}

#[test]
fn knapsack_with_repeated_items_matches_brute_force() {
    // Identical layers repeat their items: few kinds, many copies (solved as bounded items).
    let mut state = 0x2545f4914f6cdd1du64;
    let mut next = |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    for _ in 0..200 {
        let kinds = 1 + next(3) as usize;
        let kw: Vec<u64> = (0..kinds).map(|_| 8 + next(6) * 8).collect();
        let kv: Vec<u64> = (0..kinds).map(|_| next(50)).collect();
        let n = 1 + next(12) as usize;
        let which: Vec<usize> = (0..n).map(|_| next(kinds as u64) as usize).collect();
        let w: Vec<u64> = which.iter().map(|&k| kw[k]).collect();
        let v: Vec<u64> = which.iter().map(|&k| kv[k]).collect();
        let cap = next(300);
        let chosen = knapsack(&w, &v, cap);
        let weight: u64 = (0..n).filter(|&i| chosen[i]).map(|i| w[i]).sum();
        let value: u64 = (0..n).filter(|&i| chosen[i]).map(|i| v[i]).sum();
        assert!(weight <= cap);
        let best = (0u32..1 << n)
            .filter(|m| {
                (0..n)
                    .filter(|i| m >> i & 1 == 1)
                    .map(|i| w[i])
                    .sum::<u64>()
                    <= cap
            })
            .map(|m| {
                (0..n)
                    .filter(|i| m >> i & 1 == 1)
                    .map(|i| v[i])
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(value, best, "w {w:?} v {v:?} cap {cap}");
    }
}

#[test]
fn budget_plan_of_ten_thousand_layers_is_quick() {
    // Before bounded items, the table had one row per (layer, tensor): 105 s and 1.7 GB here.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/tiny.mspec"))
        .unwrap()
        .replace("layers 6", "layers 10000");
    let spec = crate::mspec::parse(&src, "tiny.mspec").unwrap();
    let start = std::time::Instant::now();
    let half = PolicyOverride::Budget(Budget::Fraction(0.5));
    let p = plan(&spec, 1, 64, Dtype::Bf16, Some(&half)).unwrap();
    assert!(p.activation_bytes <= p.budget_bytes.unwrap());
    assert!(p.recompute_flops < p.full_recompute_flops);
    let secs = start.elapsed().as_secs_f64();
    assert!(secs < 30.0, "budget(0.5) at 10,000 layers took {secs:.1} s");
}

#[test]
fn totals_at_the_limits_are_exact_or_refused() {
    // Llama 3.1 8B: 4M tokens still count (4.65e18 FLOPs); 8M give more than 2^64 FLOPs, which
    // used to wrap (85.62 PFLOP reported where half the length reported 4654).
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../specs/llama-3.1-8b.mspec"
    ))
    .unwrap();
    let spec = crate::mspec::parse(&src, "llama.mspec").unwrap();
    let full = PolicyOverride::Layer(LayerCheckpoint::Full);
    let at = |seq: u64| plan(&spec, 1, seq, Dtype::Bf16, Some(&full));
    let small = at(1 << 21).unwrap();
    let large = at(1 << 22).unwrap();
    assert!(large.full_recompute_flops > 3 * small.full_recompute_flops);
    assert!(large.full_recompute_flops > 4_000_000_000_000_000_000);
    assert_eq!(large.recompute_flops, large.full_recompute_flops);
    match at(1 << 23) {
        Err(PlanError::Shape(m)) => assert!(m.contains("2^64"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
    // The largest batch the up-front byte check lets through is refused the same way.
    match plan(&spec, 1 << 40, 1, Dtype::F32, Some(&full)) {
        Err(PlanError::Shape(_)) => {}
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn lowering_once_gives_the_costs_of_the_layer() {
    // LayerProgram::lower reads the costs off the structure it lowered (program_costs); they must
    // be the planner's own (layer_costs, which lowers again) for every layer of every spec, at the
    // executors' unit shape and at a training shape.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("specs folder")
        .map(|f| f.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "mspec"))
        .collect();
    files.sort();
    assert!(files.len() > 10, "{} specs", files.len());
    for path in &files {
        let (spec, _) = crate::load::load_file(path).expect("spec loads");
        for layer in &spec.layers {
            let lp = crate::program::LayerProgram::lower(&spec, layer);
            let structure = crate::program::LayerProgram::structure(layer);
            assert_eq!(lp.nodes, structure.nodes, "{}", path.display());
            assert_eq!(
                lp.costs,
                layer_costs(&spec, layer, 1, 1, Dtype::F32),
                "{} layer {}",
                path.display(),
                layer.index
            );
            assert_eq!(
                program_costs(&spec, layer, &structure, 8, 512, Dtype::Bf16),
                layer_costs(&spec, layer, 8, 512, Dtype::Bf16),
                "{} layer {}",
                path.display(),
                layer.index
            );
        }
    }
}

#[test]
fn one_table_answers_every_capacity_as_a_table_of_its_own() {
    // Sizes sharing no large factor and a total far above the table's unit cap, so the unit is
    // coarse: a shared table must still choose exactly what a fresh one does at each capacity.
    let w: Vec<u64> = (0..40).map(|i| 1_000_003 * (i % 7 + 1) + i * 13).collect();
    let v: Vec<u64> = (0..40).map(|i| (i * 37 % 11) + 1).collect();
    let total: u64 = w.iter().sum();
    let table = knapsack::Table::new(&w, &v);
    for step in 0..=20 {
        let cap = total * step / 20;
        let shared = table.choose(cap);
        assert_eq!(shared, knapsack(&w, &v, cap), "cap {cap}");
        let weight: u64 = (0..w.len()).filter(|&i| shared[i]).map(|i| w[i]).sum();
        assert!(weight <= cap);
    }
}

#[test]
fn curve_points_equal_plans_at_their_budgets() {
    let spec = gpt2();
    let points = curve(&spec, 8, 1024, Dtype::Bf16, 10);
    for p in &points {
        let policy = PolicyOverride::Budget(Budget::Fraction(p.budget));
        match plan(&spec, 8, 1024, Dtype::Bf16, Some(&policy)) {
            Ok(single) => {
                assert_eq!(p.activation_bytes, Some(single.activation_bytes));
                assert_eq!(p.recompute_flops, Some(single.recompute_flops));
            }
            Err(_) => assert_eq!(p.activation_bytes, None),
        }
    }
    assert!(points.iter().any(|p| p.activation_bytes.is_some()));
    assert!(points.iter().any(|p| p.activation_bytes.is_none()));
}
