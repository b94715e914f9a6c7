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
