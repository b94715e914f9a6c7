//! The loss curve as a PNG, drawn by `plotters` into an RGB bitmap and encoded by `png`
//! ([`save_png`], which the plan's budget curve uses too).
//!
//! Text is rendered by plotters' `ab_glyph` backend from a font embedded in the binary (Inconsolata,
//! `data/fonts/`, SIL OFL), so drawing needs neither fontconfig nor any system font.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::TrainError;

/// The embedded font; its licence is `data/fonts/LICENSE.txt`.
static FONT: &[u8] = include_bytes!("../../../data/fonts/Inconsolata.otf");
/// The font family name registered by [`register_font`].
pub const FAMILY: &str = "modelspec-plot";

/// Registers the embedded font under the family name plots use (idempotent).
pub fn register_font() -> Result<(), TrainError> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            result = Err(TrainError::Plot(
                "the embedded font could not be read".into(),
            ));
        }
    });
    result
}

/// A horizontal reference line drawn across the plot (e.g. the unigram entropy).
#[derive(Debug, Clone)]
pub struct Reference {
    /// Its legend label.
    pub label: String,
    /// Its height, in loss units.
    pub value: f64,
}

/// What a loss plot shows.
#[derive(Debug, Clone, Default)]
pub struct LossPlot<'a> {
    /// The caption.
    pub title: &'a str,
    /// The training loss of each step.
    pub losses: &'a [f32],
    /// Validation losses as `(step, loss)`.
    pub validation: &'a [(u64, f32)],
    /// Horizontal reference lines.
    pub references: &'a [Reference],
}

/// Checks that `path` names a PNG file (`.png`, any case): the only format plots are written in.
pub fn check_png_path(path: &Path) -> Result<(), TrainError> {
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        Ok(())
    } else {
        Err(TrainError::Plot(format!(
            "{}: plots are written as PNG images; give a path ending in `.png`",
            path.display()
        )))
    }
}

/// Draws `plot` into the PNG file `path`, `width × height` pixels, atomically (see
/// [`save_png`]).
pub fn write_png(
    path: &Path,
    plot: &LossPlot<'_>,
    (width, height): (u32, u32),
) -> Result<(), TrainError> {
    save_png(path, (width, height), |root| draw(root, plot))
}

/// Draws `plot` into an RGB buffer of `width × height` pixels (3 bytes each, row-major).
pub fn render_rgb(plot: &LossPlot<'_>, (width, height): (u32, u32)) -> Result<Vec<u8>, TrainError> {
    render(width, height, |root| draw(root, plot)).map_err(TrainError::Plot)
}

/// A drawing on a bitmap of plotters (the embedded font registered as [`FAMILY`]).
pub type Bitmap<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Runs `draw` on a zeroed `width × height` RGB bitmap (the drawing fills its own background)
/// and writes it to the PNG file `path` atomically ([`crate::io::write_atomic`]): a failed
/// drawing or a full disk leaves the previous file. A path not ending in `.png` is an error
/// before anything is drawn.
pub fn save_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(Bitmap<'_>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), TrainError> {
    check_png_path(path)?;
    let bytes = render(width, height, draw)
        .and_then(|rgb| encode_png(&rgb, width, height))
        .map_err(|why| TrainError::Plot(format!("{}: {why}", path.display())))?;
    crate::io::write_atomic(path, &bytes)?;
    Ok(())
}

/// `draw` on a zeroed RGB buffer of `width × height` pixels; the buffer, or why drawing failed.
fn render(
    width: u32,
    height: u32,
    draw: impl FnOnce(Bitmap<'_>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Vec<u8>, String> {
    register_font().map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        draw(root).map_err(|e| e.to_string())?;
    }
    Ok(buffer)
}

/// The PNG file of an RGB bitmap (8 bits a channel, row-major, `width × height` pixels).
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Plots are mostly flat colour: each row's best filter and the higher compression level make
    // them far smaller than the encoder's defaults (gpt2's budget curve: 31 KB against 527 KB).
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    plot: &LossPlot<'_>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let LossPlot {
        title,
        losses,
        validation,
        references,
    } = *plot;
    let finite: Vec<f64> = losses
        .iter()
        .map(|&l| l as f64)
        .filter(|l| l.is_finite())
        .collect();
    let mut y_max = finite.iter().cloned().fold(f64::MIN, f64::max);
    let mut y_min = finite.iter().cloned().fold(f64::MAX, f64::min);
    for r in references {
        y_max = y_max.max(r.value);
        y_min = y_min.min(r.value);
    }
    for &(_, v) in validation {
        y_max = y_max.max(v as f64);
        y_min = y_min.min(v as f64);
    }
    if y_max <= y_min {
        // Nothing to scale by (no points, or all equal): a unit band around what there is.
        y_min = if y_min < f64::MAX { y_min - 1.0 } else { 0.0 };
        y_max = y_min + 2.0;
    }
    let pad = 0.05 * (y_max - y_min);
    let x_max = (losses.len().max(2) - 1) as f64;

    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, (y_min - pad).max(0.0)..y_max + pad)?;
    chart
        .configure_mesh()
        .x_desc("step")
        // Whole steps only: a short run gets one label a step, not repeated rounded ones.
        .x_labels((x_max as usize + 1).min(10))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("loss (nats/token)")
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    let raw = RGBColor(160, 190, 230);
    chart
        .draw_series(LineSeries::new(
            losses
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as f64, l as f64)),
            raw,
        ))?
        .label("loss per step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], raw));

    // A centred moving average (a window of about 1/30 of the run): unlike an exponential
    // average it does not lag behind a loss that falls fast.
    let points: Vec<(usize, f64)> = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i, l as f64))
        .collect();
    let half = (points.len() / 60).max(1);
    let smooth: Vec<(f64, f64)> = (0..points.len())
        .map(|k| {
            let window = &points[k.saturating_sub(half)..(k + half + 1).min(points.len())];
            (
                points[k].0 as f64,
                window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64,
            )
        })
        .collect();
    chart
        .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))?
        .label("moving average")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));

    if !validation.is_empty() {
        let green = RGBColor(0, 140, 60);
        chart
            .draw_series(
                validation
                    .iter()
                    .map(|&(s, v)| Circle::new((s as f64, v as f64), 4, green.filled())),
            )?
            .label("validation")
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, green.filled()));
    }

    for (k, r) in references.iter().enumerate() {
        let color = [RED, MAGENTA, BLACK][k % 3];
        chart
            .draw_series(LineSeries::new(
                [(0.0, r.value), (x_max, r.value)],
                color.stroke_width(1),
            ))?
            .label(format!("{} = {:.3}", r.label, r.value))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }

    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_plot<'a>(losses: &'a [f32], refs: &'a [Reference], title: &'a str) -> LossPlot<'a> {
        LossPlot {
            title,
            losses,
            validation: &[(100, 1.9), (199, 1.5)],
            references: refs,
        }
    }

    fn losses() -> Vec<f32> {
        (0..200)
            .map(|i| 3.0 * (-(i as f32) / 60.0).exp() + 1.2 + 0.05 * ((i * 7 % 5) as f32))
            .collect()
    }

    /// Dark pixels in rows `rows` (the caption band).
    fn dark_pixels(rgb: &[u8], width: usize, rows: std::ops::Range<usize>) -> usize {
        rows.flat_map(|y| (0..width).map(move |x| (y * width + x) * 3))
            .filter(|&i| rgb[i] < 80 && rgb[i + 1] < 80 && rgb[i + 2] < 80)
            .count()
    }

    #[test]
    fn text_renders_from_the_embedded_font() {
        let (losses, refs) = (
            losses(),
            [Reference {
                label: "unigram entropy".into(),
                value: 3.09,
            }],
        );
        let with_title =
            render_rgb(&sample_plot(&losses, &refs, "Loss of tiny"), (640, 400)).unwrap();
        let without = render_rgb(&sample_plot(&losses, &refs, ""), (640, 400)).unwrap();
        // The caption sits in the top margin: glyphs there exist only if text was drawn.
        let (a, b) = (
            dark_pixels(&with_title, 640, 10..34),
            dark_pixels(&without, 640, 10..34),
        );
        assert!(
            a > 50 && a > 5 * b.max(1),
            "caption pixels: {a} with a title, {b} without"
        );
    }

    #[test]
    fn writes_a_png() {
        let dir = std::env::temp_dir().join(format!("modelspec-plot-{}", std::process::id()));
        let path = dir.join("loss.png");
        std::fs::create_dir_all(&dir).unwrap();
        let (losses, refs) = (
            losses(),
            [Reference {
                label: "unigram entropy".into(),
                value: 3.09,
            }],
        );
        write_png(&path, &sample_plot(&losses, &refs, "tiny"), (640, 400)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn degenerate_inputs_still_draw() {
        for losses in [vec![], vec![2.0f32], vec![f32::NAN, 1.0, 1.0]] {
            render_rgb(
                &LossPlot {
                    title: "t",
                    losses: &losses,
                    ..Default::default()
                },
                (200, 150),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_path_without_png_is_a_clear_error_and_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("modelspec-plot-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let losses = losses();
        let err = write_png(
            &dir.join("out"),
            &sample_plot(&losses, &[], "x"),
            (320, 200),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ending in `.png`"), "{err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // A run that blew up: huge but finite losses still plot.
        let wild = [2.0, 1e30, 3e37, f32::INFINITY];
        write_png(
            &dir.join("wild.png"),
            &sample_plot(&wild, &[], "x"),
            (320, 200),
        )
        .unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["wild.png"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
