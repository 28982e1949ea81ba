//! The plot: read throughput against transfer size (both axes logarithmic), one line per
//! contender of the `copy_read` cases, drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use super::cases::Group;
use super::report::{axis_size_label, gib_per_s, CaseResult};
use super::BenchError;

/// One line: a contender's median throughput at each size it ran.
pub(crate) struct Series {
    /// The contender.
    pub(crate) name: String,
    /// (bytes, GiB/s), by size.
    pub(crate) points: Vec<(f64, f64)>,
}

/// The lines of the plot: every contender of the `copy_read` cases, in order of appearance.
pub(crate) fn series(cases: &[CaseResult]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut reads: Vec<&CaseResult> = cases
        .iter()
        .filter(|c| c.group == Group::CopyRead)
        .collect();
    reads.sort_by_key(|c| c.param);
    for case in reads {
        for c in &case.contenders {
            let Some(gib) = gib_per_s(case.unit, c.stats.median) else {
                continue;
            };
            let point = (case.param as f64, gib);
            match out.iter_mut().find(|s| s.name == c.name) {
                Some(s) => s.points.push(point),
                None => out.push(Series {
                    name: c.name.clone(),
                    points: vec![point],
                }),
            }
        }
    }
    out
}

fn plot_err(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |reason| BenchError::Output {
        path: path.to_path_buf(),
        reason,
    }
}

/// The color of line `i`: memcpy black, then distinct colors.
fn line_color(i: usize) -> RGBAColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(0, 0, 0),
        RGBColor(0, 150, 60),
        RGBColor(30, 90, 220),
        RGBColor(230, 120, 0),
        RGBColor(170, 40, 160),
        RGBColor(200, 30, 30),
    ];
    COLORS
        .get(i)
        .map_or_else(|| Palette99::pick(i).to_rgba(), |c| c.to_rgba())
}

/// A throughput on the axis: `50`, `2.5`, `0.01`.
fn axis_number(y: f64) -> String {
    if y >= 10.0 {
        format!("{y:.0}")
    } else {
        let s = format!("{y:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws the plot to `path` (SVG).
pub(crate) fn write_svg(
    path: &Path,
    cases: &[CaseResult],
    subtitle: &str,
) -> Result<(), BenchError> {
    let err = plot_err(path);
    let lines = series(cases);
    let all: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if all.is_empty() {
        return Err(err(
            "no copy_read case ran, nothing to plot (check --filter)".into(),
        ));
    }
    let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(f64, f64)) -> f64| {
        all.iter().map(pick).fold(init, f)
    };
    let (x_lo, x_hi) = (
        fold(f64::min, f64::MAX, |p| p.0),
        fold(f64::max, 0.0, |p| p.0),
    );
    let (y_lo, y_hi) = (
        fold(f64::min, f64::MAX, |p| p.1),
        fold(f64::max, 0.0, |p| p.1),
    );
    // x is log2 of the size on a linear axis, so the ticks fall on powers of two; some room
    // around the points (and a range even for a single size).
    let x_range = (x_lo.log2() - 0.5)..(x_hi.log2() + 0.5);
    let x_ticks = (x_range.end - x_range.start).ceil() as usize + 1;
    let y_range = (y_lo / 2.0)..(y_hi * 2.0);

    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| err(e.to_string());
    root.fill(&WHITE).map_err(draw)?;
    let root = root
        .titled(
            "vdma bench: read throughput by transfer size (median over rounds)",
            ("sans-serif", 22),
        )
        .map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(subtitle, ("sans-serif", 14))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range.log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("transfer size")
        .y_desc("GiB/s")
        .x_labels(x_ticks)
        .x_label_formatter(&|x| axis_size_label(x.exp2()))
        .y_label_formatter(&|y| axis_number(*y))
        .draw()
        .map_err(draw)?;
    for (i, line) in lines.iter().enumerate() {
        let color = line_color(i);
        chart
            .draw_series(LineSeries::new(
                line.points.iter().map(|&(x, y)| (x.log2(), y)),
                color.stroke_width(2),
            ))
            .map_err(draw)?
            .label(line.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], color.filled()));
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x.log2(), y), 3, color.filled())),
            )
            .map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}
