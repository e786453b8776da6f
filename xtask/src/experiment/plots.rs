//! SVG plots with plotters: accuracy against model size with the Pareto front, speed-up
//! over fp32 per strategy (batch 1 and batch N), and per-layer SQNR (weights per cell,
//! activations per observer). Each is rendered to a string and written atomically.

use std::collections::BTreeMap;
use std::path::Path;

use cinder_tensor::ErrorMetrics;
use cinder_tensor::graph::GraphSpec;
use cinder_tensor::io::write_atomic;
use plotters::prelude::*;

use super::report::columns;
use super::results::{CellMetrics, CellResult, Results};

const FONT: &str = "sans-serif";
const MB: f64 = 1e6;
/// The colour of the fine-tuned cells (QAT and control) in every plot.
const FINE_TUNED: RGBColor = RGBColor(230, 120, 0);

/// Renders one plot of the results into an SVG string.
type Draw = fn(&Results, &mut String) -> anyhow::Result<()>;

pub fn write_all(results: &Results, dir: &Path) -> anyhow::Result<()> {
    let plots: [(&str, Draw); 3] = [
        ("accuracy_vs_size.svg", accuracy_vs_size),
        ("latency.svg", latency),
        ("sqnr.svg", sqnr),
    ];
    for (name, draw) in plots {
        let mut svg = String::new();
        draw(results, &mut svg)?;
        write_atomic(&dir.join(name), svg.as_bytes())?;
    }
    Ok(())
}

/// `lo..hi` widened by `pad` of its span on both sides (and never empty).
fn padded(lo: f64, hi: f64, pad: f64) -> std::ops::Range<f64> {
    let span = (hi - lo).max(1e-6);
    (lo - pad * span)..(hi + pad * span)
}

/// A cell's name, model size (MB) and accuracy (%).
type Point<'a> = (&'a str, f64, f64);

fn point<'a>((c, m): (&'a CellResult, &'a CellMetrics)) -> Point<'a> {
    let mb = m.measured.model_bytes as f64 / MB;
    (c.name.as_str(), mb, 100.0 * m.measured.accuracy)
}

/// Accuracy against model size on a log axis: the post-training cells with their Pareto
/// front joined and named, the fine-tuned cells (QAT and control) as triangles, fp32 as a
/// dashed reference line. The other cells' names are in the report's tables, so their
/// labels do not pile up on one point.
fn accuracy_vs_size(r: &Results, svg: &mut String) -> anyhow::Result<()> {
    let post: Vec<Point> = r.post_training().map(point).collect();
    let tuned: Vec<Point> = r.fine_tuned().map(point).collect();
    let fp32 = (r.fp32.model_bytes as f64 / MB, 100.0 * r.fp32.accuracy);
    let (xs, ys): (Vec<f64>, Vec<f64>) = post
        .iter()
        .chain(&tuned)
        .map(|p| (p.1, p.2))
        .chain([fp32])
        .unzip();
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init| v.iter().copied().fold(init, f);
    let x_lo = fold(&xs, f64::min, f64::INFINITY).max(1e-6);
    let (x_min, x_max) = (x_lo / 1.6, fold(&xs, f64::max, x_lo) * 1.6);
    let y_range = padded(
        fold(&ys, f64::min, f64::INFINITY),
        fold(&ys, f64::max, f64::NEG_INFINITY),
        0.08,
    );
    let root = SVGBackend::with_string(svg, (1000, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: accuracy vs model size", r.experiment),
            (FONT, 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), y_range)?;
    chart
        .configure_mesh()
        .x_desc("model file (MB, log scale)")
        .y_desc("top-1 accuracy (%)")
        // Log-axis ticks are sums like 0.30000000000000004: three decimals at most.
        .x_label_formatter(&|mb| format!("{}", (mb * 1e3).round() / 1e3))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    chart
        .draw_series(DashedLineSeries::new(
            [(x_min, fp32.1), (x_max, fp32.1)],
            8,
            5,
            RED.stroke_width(2),
        ))?
        .label(format!("fp32: {:.2}%, {:.2} MB", fp32.1, fp32.0))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart.draw_series([Circle::new(fp32, 5, RED.filled())])?;
    let front: Vec<&Point> = r
        .pareto_front()
        .iter()
        .filter_map(|name| post.iter().find(|p| p.0 == *name))
        .collect();
    chart
        .draw_series(LineSeries::new(
            front.iter().map(|p| (p.1, p.2)),
            GREEN.stroke_width(2),
        ))?
        .label("Pareto front of the post-training cells")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    chart
        .draw_series(
            post.iter()
                .map(|p| Circle::new((p.1, p.2), 4, BLUE.filled())),
        )?
        .label("post-training cells")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
    if !tuned.is_empty() {
        chart
            .draw_series(
                tuned
                    .iter()
                    .map(|p| TriangleMarker::new((p.1, p.2), 6, FINE_TUNED.filled())),
            )?
            .label("fine-tuned cells (QAT, control)")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, FINE_TUNED.filled()));
    }
    chart.draw_series(
        front.iter().map(|p| {
            EmptyElement::at((p.1, p.2)) + Text::new(p.0.to_owned(), (6, -14), (FONT, 12))
        }),
    )?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Speed-up of every cell over fp32 (burn) at batch 1 and batch N, one bar per cell with
/// its value (fine-tuned cells in their own colour), fp32 as the dashed line at 1x.
fn latency(r: &Results, svg: &mut String) -> anyhow::Result<()> {
    let rows: Vec<(&str, [f64; 2], RGBColor)> = r
        .done()
        .map(|(c, m)| {
            let speed_up = |fp32: f64, ms: f64| fp32 / ms.max(1e-9);
            (
                c.name.as_str(),
                [
                    speed_up(r.fp32.single_ms, m.measured.single_ms),
                    speed_up(r.fp32.batch_ms, m.measured.batch_ms),
                ],
                if c.method.fine_tunes() {
                    FINE_TUNED
                } else {
                    BLUE
                },
            )
        })
        .collect();
    let n = rows.len();
    let root = SVGBackend::with_string(svg, (1200, 120 + 24 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "{}: speed-up over fp32 (burn), median latencies",
            r.experiment
        ),
        (FONT, 22),
    )?;
    let (left, right) = root.split_horizontally(600);
    let titles = [
        format!("batch 1 (fp32 {:.3} ms)", r.fp32.single_ms),
        format!("batch {} (fp32 {:.2} ms)", r.fp32.batch, r.fp32.batch_ms),
    ];
    for (pick, (area, title)) in [&left, &right].into_iter().zip(&titles).enumerate() {
        let max = rows.iter().map(|row| row.1[pick]).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(190)
            .build_cartesian_2d(0.0..max, (0..n.max(1)).into_segmented())?;
        // The first cell at the top.
        let label = |y: &SegmentValue<usize>| match y {
            SegmentValue::CenterOf(i) if *i < n => rows[n - 1 - i].0.to_owned(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label)
            .x_desc(format!("{title}: speed-up (x)"))
            .draw()?;
        chart.draw_series(rows.iter().enumerate().map(|(i, row)| {
            let y = n - 1 - i;
            let corners = [
                (0.0, SegmentValue::Exact(y)),
                (row.1[pick], SegmentValue::Exact(y + 1)),
            ];
            let mut bar = Rectangle::new(corners, row.2.filled());
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, row)| {
            let at = (row.1[pick], SegmentValue::CenterOf(n - 1 - i));
            EmptyElement::at(at) + Text::new(format!("{:.1}x", row.1[pick]), (4, -6), (FONT, 11))
        }))?;
        let top = SegmentValue::Exact(n);
        chart.draw_series(DashedLineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, top)],
            6,
            4,
            RED.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn sqnr(r: &Results, svg: &mut String) -> anyhow::Result<()> {
    let weights: Vec<(String, &BTreeMap<String, ErrorMetrics>)> = r
        .done()
        .map(|(c, m)| (c.name.clone(), &m.weight_errors))
        .collect();
    let activations = r.activation_errors_by_observer();
    let root = SVGBackend::with_string(svg, (1200, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("{}: per-layer SQNR", r.experiment), (FONT, 22))?;
    let (left, right) = root.split_horizontally(600);
    let spec = &r.training.spec;
    sqnr_panel(&left, spec, "weights (dB), per cell", &weights)?;
    sqnr_panel(&right, spec, "activations (dB), per observer", &activations)?;
    root.present()?;
    Ok(())
}

/// One line per series over the union of their tensors (missing points skipped).
fn sqnr_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    spec: &GraphSpec,
    title: &str,
    series: &[(String, &BTreeMap<String, ErrorMetrics>)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let tensors = columns(spec, series.iter().map(|(_, m)| *m));
    let db = |m: &BTreeMap<String, ErrorMetrics>, t: &String| m.get(t).and_then(|e| e.sqnr_db);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, m)| tensors.iter().filter_map(|t| db(m, t)))
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let y_range = if all.is_empty() {
        0.0..1.0
    } else {
        padded(lo, hi, 0.08)
    };
    let n = tensors.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), y_range)?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            tensors.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc("SQNR (dB)")
        .draw()?;
    for (k, (name, metrics)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let points: Vec<(f64, f64)> = tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i as f64, db(metrics, t)?)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 10))
        .draw()?;
    Ok(())
}
