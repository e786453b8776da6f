//! SVG plots with plotters: accuracy against model size with the Pareto front, speed-up
//! over fp32 per strategy (batch 1 and batch N), per-layer SQNR (weights per cell,
//! activations per observer) and the float model's training curve. Each is rendered to a
//! string and written atomically.

use std::collections::BTreeMap;
use std::path::Path;

use cinder_model::EpochMetrics;
use cinder_tensor::ErrorMetrics;
use cinder_tensor::graph::GraphSpec;
use cinder_tensor::io::write_atomic;
use plotters::prelude::*;

use super::peers::{PeerRun, Peers};
use super::results::{CellMetrics, CellResult, Results, columns};

const FONT: &str = "sans-serif";
const MB: f64 = 1e6;
/// The colour of the fine-tuned cells (QAT and control) in every plot.
const FINE_TUNED: RGBColor = RGBColor(230, 120, 0);
/// How far below fp32 (percentage points) the accuracy axis reaches.
const ACCURACY_WINDOW_PP: f64 = 5.0;
/// The colour of ONNX Runtime's models in every plot.
const PEER: RGBColor = RGBColor(140, 60, 170);

/// ONNX Runtime's fp32 and `quantize_static` models, when measured, by name.
fn peer_runs(r: &Results) -> Vec<(&'static str, &PeerRun)> {
    match &r.peers {
        Peers::Measured(p) => vec![
            ("ONNX Runtime fp32", &p.fp32),
            ("ONNX Runtime quantize_static", &p.quantize_static),
        ],
        _ => Vec::new(),
    }
}

/// The training curve's file, written when the model was trained in this experiment.
pub const TRAINING_PLOT: &str = "training.svg";

/// Renders one plot of the results into an SVG string.
type Draw = fn(&Results, &mut String) -> anyhow::Result<()>;

pub fn write_all(results: &Results, dir: &Path) -> anyhow::Result<()> {
    let plots: [(&str, Draw); 3] = [
        ("accuracy_vs_size.svg", accuracy_vs_size),
        ("latency.svg", latency),
        ("sqnr.svg", sqnr),
    ];
    let trained =
        (!results.training.history.is_empty()).then_some((TRAINING_PLOT, training as Draw));
    for (name, draw) in plots.into_iter().chain(trained) {
        let mut svg = String::new();
        draw(results, &mut svg)?;
        write_atomic(&dir.join(name), svg.as_bytes())?;
    }
    Ok(())
}

/// A chart on the whole of `root` with the title and margins of the single-panel plots.
fn titled<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, plotters::coord::Shift>,
    title: String,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60);
    builder
}

/// The series' legend in the chart's lower right corner.
fn legend_lower_right<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
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
/// dashed reference line, ONNX Runtime's models as squares. The other cells' names are
/// in the report's tables, so their labels do not pile up on one point; cells more than
/// [`ACCURACY_WINDOW_PP`] below fp32 sit on the axis's floor.
fn accuracy_vs_size(r: &Results, svg: &mut String) -> anyhow::Result<()> {
    let post: Vec<Point> = r.post_training().map(point).collect();
    let tuned: Vec<Point> = r.fine_tuned().map(point).collect();
    let peers: Vec<Point> = peer_runs(r)
        .into_iter()
        .map(|(name, p)| (name, p.model_bytes as f64 / MB, 100.0 * p.accuracy))
        .collect();
    let fp32 = (r.fp32.model_bytes as f64 / MB, 100.0 * r.fp32.accuracy);
    let (xs, ys): (Vec<f64>, Vec<f64>) = post
        .iter()
        .chain(&tuned)
        .chain(&peers)
        .map(|p| (p.1, p.2))
        .chain([fp32])
        .unzip();
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init| v.iter().copied().fold(init, f);
    let x_lo = fold(&xs, f64::min, f64::INFINITY).max(1e-6);
    let (x_min, x_max) = (x_lo / 1.6, fold(&xs, f64::max, x_lo) * 1.6);
    // Cells far below fp32 (2-bit weights) would squeeze all the others into one line:
    // they sit on the axis's floor, labelled with their accuracy.
    let floor = fold(&ys, f64::min, f64::INFINITY).max(fp32.1 - ACCURACY_WINDOW_PP);
    let y_range = padded(floor, fold(&ys, f64::max, f64::NEG_INFINITY), 0.08);
    let at = |p: &Point| (p.1, p.2.max(floor));
    let root = SVGBackend::with_string(svg, (1000, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = titled(&root, format!("{}: accuracy vs model size", r.experiment))
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
            front.iter().map(|p| at(p)),
            GREEN.stroke_width(2),
        ))?
        .label("Pareto front of the post-training cells")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    chart
        .draw_series(post.iter().map(|p| Circle::new(at(p), 4, BLUE.filled())))?
        .label("post-training cells")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
    if !tuned.is_empty() {
        chart
            .draw_series(
                tuned
                    .iter()
                    .map(|p| TriangleMarker::new(at(p), 6, FINE_TUNED.filled())),
            )?
            .label("fine-tuned cells (QAT, control)")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, FINE_TUNED.filled()));
    }
    if !peers.is_empty() {
        chart
            .draw_series(peers.iter().map(|p| {
                EmptyElement::at(at(p))
                    + Rectangle::new([(-5, -5), (5, 5)], PEER.filled())
                    + Text::new(p.0.to_owned(), (8, 6), (FONT, 12))
            }))?
            .label("ONNX Runtime on the same float model")
            .legend(|(x, y)| Rectangle::new([(x + 5, y - 5), (x + 15, y + 5)], PEER.filled()));
    }
    chart.draw_series(
        // Neighbours on the front are often close: their labels go above and below in
        // turn. A cell on the floor says its accuracy.
        front.iter().enumerate().map(|(i, p)| {
            let name = if p.2 < floor {
                format!("{} ({:.1}%)", p.0, p.2)
            } else {
                p.0.to_owned()
            };
            let dy = if i % 2 == 0 { -16 } else { 6 };
            EmptyElement::at(at(p)) + Text::new(name, (6, dy), (FONT, 12))
        }),
    )?;
    legend_lower_right(&mut chart)?;
    root.present()?;
    Ok(())
}

/// The float model's accuracy per epoch on its training images (running, while it
/// learned) and on the held-out validation images, the best validation epoch marked,
/// and the test accuracy of the final model as a dashed line.
fn training(r: &Results, svg: &mut String) -> anyhow::Result<()> {
    let history = &r.training.history;
    let curve = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|m| Some((m.epoch as f64, 100.0 * f(m)?)))
            .collect()
    };
    let train = curve(&|m| Some(m.train_accuracy));
    let validation = curve(&|m| m.validation.as_ref().map(|v| v.accuracy));
    let test = 100.0 * r.fp32.accuracy;
    let ys: Vec<f64> = train.iter().chain(&validation).map(|p| p.1).collect();
    let lo = ys.iter().copied().fold(test, f64::min);
    let hi = ys.iter().copied().fold(test, f64::max);
    let last = history.len() as f64;
    let root = SVGBackend::with_string(svg, (1000, 550)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = titled(
        &root,
        format!("{}: training of the float model", r.experiment),
    )
    .build_cartesian_2d(0.5..last + 0.5, padded(lo, hi, 0.08))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("top-1 accuracy (%)")
        .x_labels(history.len().min(20))
        .x_label_formatter(&|x| format!("{}", x.round()))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    let series = [
        (train, BLUE, "training images (running, during the epoch)"),
        (validation.clone(), GREEN, "validation images (held out)"),
    ];
    for (points, color, name) in series.into_iter().filter(|s| !s.0.is_empty()) {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if let Some(best) = r.training.best_epoch {
        let point = validation.iter().find(|p| p.0 == best as f64).copied();
        chart.draw_series(point.map(|p| {
            EmptyElement::at(p)
                + Circle::new((0, 0), 7, GREEN.stroke_width(2))
                + Text::new(format!("best: epoch {best}"), (8, 8), (FONT, 12))
        }))?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0.5, test), (last + 0.5, test)],
            8,
            5,
            RED.stroke_width(2),
        ))?
        .label(format!("test accuracy of the final model: {test:.2}%"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    legend_lower_right(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Speed-up of every cell over fp32 (burn) at batch 1 and batch N, one bar per cell with
/// its value (fine-tuned cells and ONNX Runtime's models in their own colours), fp32 as
/// the dashed line at 1x.
fn latency(r: &Results, svg: &mut String) -> anyhow::Result<()> {
    let speed_up = |single_ms: f64, batch_ms: f64| {
        [
            r.fp32.single_ms / single_ms.max(1e-9),
            r.fp32.batch_ms / batch_ms.max(1e-9),
        ]
    };
    let cells = r.done().map(|(c, m)| {
        (
            c.name.as_str(),
            speed_up(m.measured.single_ms, m.measured.batch_ms),
            if c.method.fine_tunes() {
                FINE_TUNED
            } else {
                BLUE
            },
        )
    });
    let peers = peer_runs(r)
        .into_iter()
        .map(|(name, p)| (name, speed_up(p.single_ms, p.batch_ms), PEER));
    let rows: Vec<(&str, [f64; 2], RGBColor)> = cells.chain(peers).collect();
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
