//! `modelspec plan FILE --batch B --seq T [--checkpoint POLICY] [--dtype] [--json] [--plot PNG]`:
//! what each layer saves and recomputes, predicted activation memory and recompute overhead.

use std::path::PathBuf;

use anyhow::Context;
use modelspec_dsl::plan::{self, Dtype};

use super::{load_or_report, print_stdout};

/// Activation dtypes on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    /// 4-byte activations.
    F32,
    /// 2-byte activations (mixed precision).
    Bf16,
}

/// Arguments of `modelspec plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// A spec file: .mspec, .yaml/.yml, or HF config.json.
    pub file: PathBuf,
    /// Batch size.
    #[arg(long)]
    pub batch: u64,
    /// Sequence length.
    #[arg(long)]
    pub seq: u64,
    /// Overrides the spec's policy: none, full, auto, save(a,b), recompute(a,b), budget(0.5), budget(24GiB).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Activation dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DtypeArg,
    /// Print JSON (keys: activation_bytes, recompute_flops, layers, ...).
    #[arg(long)]
    pub json: bool,
    /// Also write the memory/recompute curve over budgets 0..1 as a PNG, the chosen plan marked.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Prints the plan.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.plot {
        // Before any work: a path the PNG cannot go to is a usage mistake.
        if modelspec_runtime::train::plot::check_png_path(path).is_err() {
            anyhow::bail!(
                "--plot {}: the plot is a PNG image; give a path ending in `.png`",
                path.display()
            );
        }
        modelspec_runtime::io::check_output(path, &[&args.file])?;
    }
    let (spec, _) = load_or_report(&args.file)?;
    let policy = args
        .checkpoint
        .as_deref()
        .map(plan::parse_policy)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--checkpoint: {e}"))?;
    let dtype = match args.dtype {
        DtypeArg::F32 => Dtype::F32,
        DtypeArg::Bf16 => Dtype::Bf16,
    };
    if let Some(plan::PolicyOverride::Layer(p)) = &policy {
        // The override must name tensors every layer has: check it as if the spec had written it.
        let mut overridden = spec.clone();
        for layer in &mut overridden.layers {
            layer.checkpoint = p.clone();
        }
        let issues = modelspec_dsl::check::check(&overridden);
        if let Some(issue) = issues.iter().find(|i| i.field == "checkpoint") {
            let hint = issue
                .hint
                .as_deref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            anyhow::bail!("--checkpoint: {}{hint}", issue.message);
        }
    }
    let chosen = plan::plan(&spec, args.batch, args.seq, dtype, policy.as_ref())
        .with_context(|| format!("planning {}", args.file.display()))?;
    if let Some(path) = &args.plot {
        let points = plan::curve(&spec, args.batch, args.seq, dtype, 40);
        write_curve(path, &spec.name, &points, &chosen)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        return print_stdout(&(serde_json::to_string_pretty(&chosen)? + "\n"));
    }
    print_stdout(&plan::render_table(&chosen))
}

/// Draws saved-activation memory against recompute FLOPs over budgets 0..1 (infeasible budgets
/// left out), with the chosen plan marked.
fn write_curve(
    path: &std::path::Path,
    model: &str,
    points: &[plan::CurvePoint],
    chosen: &plan::Plan,
) -> anyhow::Result<()> {
    use modelspec_runtime::train::plot::{Bitmap, FAMILY, save_png};
    use plotters::prelude::*;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let tflop = |f: u64| f as f64 / 1e12;
    let feasible: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|p| {
            Some((
                p.budget,
                gib(p.activation_bytes?),
                tflop(p.recompute_flops?),
            ))
        })
        .collect();
    let max_mem = gib(chosen.none_activation_bytes).max(1e-9) * 1.05;
    let max_flops = tflop(chosen.full_recompute_flops).max(1e-9) * 1.05;
    let draw = |root: Bitmap<'_>| -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let caption = format!(
            "{model}: checkpoint budgets, batch {} x seq {}",
            chosen.batch, chosen.seq
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FAMILY, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..max_mem, 0.0..max_flops)?;
        chart
            .configure_mesh()
            .x_desc("saved activations (GiB)")
            .y_desc("recompute (TFLOP per step)")
            .label_style((FAMILY, 14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(feasible.iter().map(|p| (p.1, p.2)), &BLUE))?
            .label("budget(0..1)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart.draw_series(
            feasible
                .iter()
                .map(|p| Circle::new((p.1, p.2), 3, BLUE.filled())),
        )?;
        let mark = (gib(chosen.activation_bytes), tflop(chosen.recompute_flops));
        chart
            .draw_series(std::iter::once(Circle::new(mark, 8, RED.filled())))?
            .label(format!("chosen: {}", chosen.policy))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    // Written to a temporary file beside `path` and renamed over it: a failure leaves no fragment.
    save_png(path, (960, 640), draw)?;
    Ok(())
}
