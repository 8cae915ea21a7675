//! The report's charts (plotters), each as PNG and SVG, with titles, axis
//! labels with units, a legend, and one colour per arm throughout. The font
//! is embedded (Ubuntu Light from `epaint_default_fonts`), so no system
//! fonts are needed.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::compare::TargetPoint;
use super::{mean_std, ArmSummary, RunLog, Speedup};
use crate::eval::Metric;
use crate::rundir::{EpochRow, GridMeta, Measure, MiningRow};

const W: u32 = 900;
const H: u32 = 560;
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A name (an arm's, a config key's) as part of a chart's file name: letters, digits and `-`
/// kept, anything else `_`.
fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The colour of arm `i` in every chart.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    });
}

/// Per arm: (epoch, mean, std) of a per-epoch value over seeds.
type Curve = Vec<(f64, f64, f64)>;

fn curves(arms: &[String], runs: &[&RunLog], value: &dyn Fn(&EpochRow) -> Option<f64>, x: &dyn Fn(&[&RunLog], usize) -> f64) -> Vec<Curve> {
    arms.iter()
        .map(|arm| {
            let rs: Vec<&RunLog> = runs.iter().copied().filter(|r| &r.arm == arm).collect();
            let max_epoch = rs.iter().map(|r| r.rows.len()).max().unwrap_or(0);
            (1..=max_epoch)
                .filter_map(|e| {
                    let vals: Vec<f64> = rs.iter().filter_map(|r| r.rows.iter().find(|row| row.epoch == e).and_then(value)).collect();
                    mean_std(&vals).map(|(m, s)| (x(&rs, e), m, if s.is_finite() { s } else { 0.0 }))
                })
                .collect()
        })
        .collect()
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

fn line_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, xlabel: &str, ylabel: &str, arms: &[String], data: &[Curve], band: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let xmax = data.iter().flatten().map(|p| p.0).fold(1.0f64, f64::max);
    let ymax = data.iter().flatten().map(|p| p.1 + p.2).fold(0.05f64, f64::max) * 1.1;
    // the axis starts near the lowest point (less a tenth of the range) when the curves live
    // far from 0, so that a few points of mAP between arms are not flattened against the axis
    // counts (negatives mined) are whole numbers: no ".0" on their ticks, and their axis starts at 0
    let integer_y = data.iter().flatten().all(|p| p.1.fract() == 0.0 && p.2 == 0.0);
    let lowest = data.iter().flatten().map(|p| p.1 - p.2).fold(f64::INFINITY, f64::min);
    let ymin = if !integer_y && lowest.is_finite() && lowest > 0.25 * ymax { (lowest - 0.1 * (ymax - lowest)).max(0.0) } else { 0.0 };
    // the legend goes in the right-hand corner with fewer points near it
    let crowd = |upper: bool| data.iter().flatten().filter(|p| p.0 > xmax / 2.0 && ((p.1 > (ymin + ymax) / 2.0) == upper)).count();
    let legend_at = if crowd(false) > crowd(true) { SeriesLabelPosition::UpperRight } else { SeriesLabelPosition::LowerRight };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.02, ymin..ymax)
        .map_err(err)?;
    let whole_y = |y: &f64| format!("{y:.0}");
    // epochs and mining rounds are whole numbers: ticks at integers only
    let integer_x = data.iter().flatten().all(|p| p.0.fract() == 0.0);
    let whole = |x: &f64| if (x - x.round()).abs() < 1e-9 { format!("{x:.0}") } else { String::new() };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(xlabel).y_desc(ylabel).label_style(("sans-serif", 15));
    if integer_x {
        mesh.x_labels((xmax as usize + 1).min(21)).x_label_formatter(&whole);
    }
    if integer_y {
        mesh.y_label_formatter(&whole_y);
    }
    mesh.draw().map_err(err)?;
    for (i, (arm, pts)) in arms.iter().zip(data).enumerate() {
        let c = colour(i);
        if band && pts.len() > 1 {
            let mut poly: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 + p.2)).collect();
            poly.extend(pts.iter().rev().map(|p| (p.0, (p.1 - p.2).max(ymin))));
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.2).filled()))).map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)).point_size(3))
            .map_err(err)?
            .label(arm.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 15)).position(legend_at).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A bar chart over categories (`labels`): category `i` is centred on x = i.
fn categorical<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    labels: &'a [String],
    ymax: f64,
    descs: (&str, &str),
) -> Result<ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>>
where
    DB::ErrorType: 'static,
{
    categorical_in(root, title, labels, (0.0, ymax), descs, None)
}

/// [`categorical`] over the y range `(ylo, yhi)`, its labels written by `ylabel` (plotters' own
/// without).
fn categorical_in<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    labels: &'a [String],
    (ylo, yhi): (f64, f64),
    (xdesc, ydesc): (&str, &str),
    ylabel: Option<&dyn Fn(&f64) -> String>,
) -> Result<ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, ylo..yhi)
        .map_err(err)?;
    let xlabel = |x: &f64| if (x - x.round()).abs() < 1e-6 && *x >= 0.0 { labels.get(x.round() as usize).cloned().unwrap_or_default() } else { String::new() };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(n).x_label_formatter(&xlabel).x_desc(xdesc).y_desc(ydesc).label_style(("sans-serif", 15));
    if let Some(f) = ylabel {
        mesh.y_label_formatter(f);
    }
    mesh.draw().map_err(err)?;
    Ok(chart)
}

fn stacked_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, summaries: &[ArmSummary]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let parts = |s: &ArmSummary| [s.train_s_per_epoch, s.mine_s_per_epoch, s.eval_s_per_epoch].map(|v| v.map(|x| x.0).unwrap_or(0.0));
    let ymax = summaries.iter().map(|s| parts(s).iter().sum::<f64>()).fold(1.0f64, f64::max) * 1.15;
    let labels: Vec<String> = summaries.iter().map(|s| s.arm.clone()).collect();
    let mut chart = categorical(root, "Seconds per epoch: training, mining (training stalled), evaluation", &labels, ymax, ("arm", "seconds per epoch (mean over epochs and seeds)"))?;
    let names = ["train", "mine", "eval"];
    let shades = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(127, 127, 127)];
    for (k, name) in names.iter().enumerate() {
        let c = shades[k];
        chart
            .draw_series(summaries.iter().enumerate().map(|(i, s)| {
                let p = parts(s);
                let lo: f64 = p[..k].iter().sum();
                Rectangle::new([(i as f64 - 0.3, lo), (i as f64 + 0.3, lo + p[k])], c.filled())
            }))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 15)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A claim's band of a ratio (`[R / tolerance, R × tolerance]`) between two arms, for a measure:
/// what the charts shade behind the ratio they draw.
#[derive(Debug, Clone)]
pub struct ClaimBand {
    pub baseline: String,
    pub arm: String,
    pub measure: Measure,
    pub lo: f64,
    pub hi: f64,
}

fn speedup_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, baseline: &str, rows: &[&Speedup], arms: &[String], bands: &[ClaimBand]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let labels: Vec<String> = arms.iter().filter(|a| a.as_str() != baseline).cloned().collect();
    let n = labels.len().max(1);
    let bands: Vec<(usize, &ClaimBand)> = bands.iter().filter(|b| b.baseline == baseline).filter_map(|b| labels.iter().position(|a| *a == b.arm).map(|i| (i, b))).collect();
    // headroom above the highest whisker (and band) for the legend (upper left), so that it never
    // hides one; a whisker that runs past 3x the highest bar and band (an interval that says
    // nothing) is cut at the top, its end written there, so that the bars stay readable
    let tops = rows.iter().filter_map(|s| s.ratio).chain(bands.iter().map(|(_, b)| b.hi)).fold(1.2f64, f64::max);
    let cut = tops * 3.0;
    let ymax = rows.iter().filter_map(|s| s.fw_hi.or(s.ratio)).fold(tops, f64::max).min(cut) * 1.35;
    let mut chart = categorical(root, &format!("Speed-up against {baseline} (baseline / arm; the Findings' family-wise interval)"), &labels, ymax, ("arm", "speed-up (x)"))?;
    let shades = [RGBColor(44, 160, 44), RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(148, 103, 189)];
    // the measures the rows hold (cpu_s_per_iter only where the cells logged CPU seconds)
    let measures: Vec<Measure> = Measure::ALL.into_iter().filter(|m| rows.iter().any(|s| s.measure == *m)).collect();
    let width = 0.75 / measures.len().max(1) as f64;
    // each claim's band behind the one bar of its measure and arm
    let boxes: Vec<(f64, &ClaimBand)> = bands.iter().filter_map(|(i, b)| measures.iter().position(|m| *m == b.measure).map(|k| (*i as f64 - 0.375 + width * k as f64, *b))).collect();
    if !boxes.is_empty() {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(boxes.iter().map(|(x, b)| Rectangle::new([(x - width * 0.1, b.lo), (x + width * 0.9, b.hi)], grey.mix(0.25).filled())))
            .map_err(err)?
            .label(format!("a claim's band, behind its measure's bar ({})", boxes.iter().map(|(_, b)| format!("{}: {:.2}-{:.2}x", b.measure.name(), b.lo, b.hi)).collect::<Vec<_>>().join("; ")))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], grey.mix(0.25).filled()));
    }
    chart.draw_series(std::iter::once(PathElement::new(vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)], BLACK.stroke_width(1)))).map_err(err)?;
    for (k, m) in measures.into_iter().enumerate() {
        let c = shades[k];
        let bars: Vec<(f64, f64, Option<(f64, f64)>)> = labels
            .iter()
            .enumerate()
            .filter_map(|(i, a)| rows.iter().find(|s| &s.arm == a && s.measure == m).and_then(|s| s.ratio.map(|r| (i as f64 - 0.375 + width * k as f64, r, s.fw_lo.zip(s.fw_hi)))))
            .collect();
        chart
            .draw_series(bars.iter().map(|(x, r, _)| Rectangle::new([(*x, 0.0), (*x + width * 0.8, *r)], c.filled())))
            .map_err(err)?
            .label(m.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        chart
            .draw_series(bars.iter().filter_map(|(x, _, ci)| ci.map(|(lo, hi)| PathElement::new(vec![(*x + width * 0.4, lo.min(cut)), (*x + width * 0.4, hi.min(cut))], BLACK.stroke_width(2)))))
            .map_err(err)?;
        chart
            .draw_series(bars.iter().filter_map(|(x, _, ci)| {
                // staggered by measure, so that neighbouring bars' ends do not overwrite each other
                ci.filter(|c| c.1 > cut).map(|(_, hi)| Text::new(format!("to {}", super::compare::compact_ratio(hi)), (*x, cut * (1.04 - 0.07 * k as f64)), ("sans-serif", 13).into_font()))
            }))
            .map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 15)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Draws one chart to `<stem>.png` and `<stem>.svg`.
macro_rules! both {
    ($dir:expr, $stem:expr, $files:expr, |$root:ident| $body:expr) => {{
        let png = $dir.join(format!("{}.png", $stem));
        {
            // drawn into memory and encoded by the `image` crate the data stage uses
            // (plotters' own encoder would compile a second, older `image`)
            let mut rgb = vec![0u8; (W * H * 3) as usize];
            {
                let $root = BitMapBackend::with_buffer(&mut rgb, (W, H)).into_drawing_area();
                $body?;
            }
            image::save_buffer(&png, &rgb, W, H, image::ExtendedColorType::Rgb8).with_context(|| format!("writing {}", png.display()))?;
        }
        let svg = $dir.join(format!("{}.svg", $stem));
        {
            let $root = SVGBackend::new(&svg, (W, H)).into_drawing_area();
            $body?;
        }
        $files.push(format!("{}.png", $stem));
    }};
}

/// Draws every chart into `dir`; returns the PNG file names.
pub fn draw_all(dir: &Path, meta: &GridMeta, done: &[&RunLog], summaries: &[ArmSummary], speedups: &[Speedup], metric: Metric, bands: &[ClaimBand]) -> Result<Vec<String>> {
    register_font();
    let arms = &meta.arms;
    let mut files = Vec::new();
    let by_epoch = |_: &[&RunLog], e: usize| e as f64;
    let mean_wall = |rs: &[&RunLog], e: usize| mean_std(&rs.iter().filter_map(|r| r.rows.iter().find(|row| row.epoch == e).map(|row| row.wall_s)).collect::<Vec<_>>()).map(|m| m.0).unwrap_or(0.0);
    let map_value = |r: &EpochRow| r.map(metric);
    let map_epoch = curves(arms, done, &map_value, &by_epoch);
    let map_wall = curves(arms, done, &map_value, &mean_wall);
    let mean_train = |rs: &[&RunLog], e: usize| mean_std(&rs.iter().filter_map(|r| super::training_time(&r.rows).get(e - 1).copied()).collect::<Vec<_>>()).map(|m| m.0).unwrap_or(0.0);
    let map_train = curves(arms, done, &map_value, &mean_train);
    let fg = curves(arms, done, &|r| Some(r.fg_fraction), &by_epoch);
    let ylabel = format!("{} on the test split", metric.column());
    // the titles name the metric: VOC's "mAP", or COCO's summary (coco_ap, coco_ap50, ...)
    let name = match metric {
        Metric::Coco(_) => metric.column(),
        _ => "mAP",
    };
    both!(dir, "map_vs_epoch", files, |root| line_chart(&root, &format!("{name} against epoch (mean ± std over seeds)"), "epoch", &ylabel, arms, &map_epoch, true));
    both!(dir, "map_vs_wallclock", files, |root| line_chart(&root, &format!("{name} against wall-clock time (evaluation included)"), "wall-clock seconds since the start", &ylabel, arms, &map_wall, false));
    both!(dir, "map_vs_training_time", files, |root| line_chart(&root, &format!("{name} against training time (mean ± std over seeds; train + mining, evaluation excluded)"), "training seconds (mean over seeds)", &ylabel, arms, &map_train, true));
    both!(dir, "seconds_per_epoch", files, |root| stacked_bars(&root, summaries));
    let mut baselines: Vec<&str> = speedups.iter().map(|s| s.baseline.as_str()).collect();
    baselines.dedup();
    for b in baselines {
        let rows: Vec<&Speedup> = speedups.iter().filter(|s| s.baseline == b).collect();
        let stem = format!("speedup_vs_{}", file_stem(b));
        both!(dir, stem, files, |root| speedup_bars(&root, b, &rows, arms, bands));
    }
    both!(dir, "fg_fraction", files, |root| line_chart(&root, "Foreground fraction of the backpropagated RoIs", "epoch", "foreground fraction", arms, &fg, true));
    let miners: Vec<String> = arms.iter().filter(|a| done.iter().any(|r| &r.arm == *a && !r.mining.is_empty())).cloned().collect();
    if !miners.is_empty() {
        both!(dir, "mining", files, |root| mining_chart(&root, &miners, done));
    }
    Ok(files)
}

/// `ttt_ratio_vs_target.png`: the time-to-target ratio (baseline / arm) and its
/// interval (Bonferroni over the curve's targets) against the target, one line per compared pair.
/// The curve's claim bands (time to target) are shaded, and the report's own target (at which
/// the verdicts and Findings take time to target) drawn as a vertical line.
pub fn draw_target_curve(dir: &Path, points: &[TargetPoint], bands: &[ClaimBand], target: f64) -> Result<String> {
    register_font();
    let mut pairs: Vec<(String, String)> = points.iter().map(|p| (p.baseline.clone(), p.arm.clone())).collect();
    pairs.dedup();
    let bands: Vec<&ClaimBand> = bands.iter().filter(|b| b.measure == Measure::TimeToTarget && pairs.iter().any(|(x, y)| *x == b.baseline && *y == b.arm)).collect();
    let mut files = Vec::new();
    both!(dir, "ttt_ratio_vs_target", files, |root| target_chart(&root, &pairs, points, &bands, target));
    Ok(files.remove(0))
}

fn target_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, pairs: &[(String, String)], points: &[TargetPoint], bands: &[&ClaimBand], target: f64) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.target), b.max(p.target)));
    let (x0, x1) = (x0.min(target), x1.max(target));
    // a ratio on a log axis (a speed-up and a slow-down of one factor sit as far from 1), over the
    // ratios, the band and the intervals, within 10^-3..10^3 (an interval past that says nothing,
    // and is drawn cut at the edge): a wide interval no longer flattens the band and the curve
    let (floor, ceil) = (1e-3, 1e3);
    let values = || points.iter().flat_map(|p| [Some(p.ratio), p.ci.map(|c| c.0), p.ci.map(|c| c.1)]).flatten().chain(bands.iter().flat_map(|b| [b.lo, b.hi])).chain([1.0]);
    let ymin = (values().fold(f64::INFINITY, f64::min) / 1.5).clamp(floor, 0.5);
    // headroom above for the legend (upper left)
    let ymax = (values().fold(f64::NEG_INFINITY, f64::max) * 1.5).clamp(2.0, ceil) * 8.0;
    let clamp = |y: f64| y.clamp(ymin, ymax);
    let mut chart = ChartBuilder::on(root)
        .caption("Time-to-target ratio against the target (baseline / arm; Bonferroni over the targets)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 - 0.01)..(x1 + 0.01), (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("target mAP")
        .y_desc("time-to-target ratio (x, log scale)")
        .y_label_formatter(&|y| if *y >= 1.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    chart.draw_series(std::iter::once(PathElement::new(vec![(x0 - 0.01, 1.0), (x1 + 0.01, 1.0)], BLACK.stroke_width(1)))).map_err(err)?;
    let grey = RGBColor(120, 120, 120);
    for b in bands {
        chart
            .draw_series(std::iter::once(Rectangle::new([(x0 - 0.01, clamp(b.lo)), (x1 + 0.01, clamp(b.hi))], grey.mix(0.25).filled())))
            .map_err(err)?
            .label(format!("claim band, {} / {}: {:.2}-{:.2}x", b.baseline, b.arm, b.lo, b.hi))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], grey.mix(0.25).filled()));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(target, ymin), (target, ymax)], BLACK.stroke_width(2))))
        .map_err(err)?
        .label(format!("the report's target, {target:.4}"))
        .legend(move |(x, y)| PathElement::new(vec![(x + 10, y - 7), (x + 10, y + 7)], BLACK.stroke_width(2)));
    for (i, (b, a)) in pairs.iter().enumerate() {
        let c = colour(i);
        let pts: Vec<&TargetPoint> = points.iter().filter(|p| &p.baseline == b && &p.arm == a).collect();
        let with_ci: Vec<(f64, (f64, f64))> = pts.iter().filter_map(|p| p.ci.map(|ci| (p.target, ci))).collect();
        if with_ci.len() > 1 {
            let mut poly: Vec<(f64, f64)> = with_ci.iter().map(|(x, ci)| (*x, clamp(ci.1))).collect();
            poly.extend(with_ci.iter().rev().map(|(x, ci)| (*x, clamp(ci.0))));
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.2).filled()))).map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.target, clamp(p.ratio))), c.stroke_width(2)).point_size(3))
            .map_err(err)?
            .label(format!("{b} / {a}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 15)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A ratio against a count on a log-scale x axis, one line per series (dashed:
/// a peer's), with the band `[lo, hi]` shaded and 1 drawn: `<stem>.png`/`.svg`.
/// A point of a sweep: x, y and, where measured, y's interval (drawn as a whisker).
pub type SweepPoint = (f64, f64, Option<(f64, f64)>);

pub fn draw_sweep(dir: &Path, stem: &str, title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<SweepPoint>, bool)], band: (f64, f64)) -> Result<()> {
    register_font();
    let mut files = Vec::new();
    both!(dir, stem, files, |root| sweep_chart(&root, title, xlabel, ylabel, series, band));
    Ok(())
}

fn sweep_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<SweepPoint>, bool)], band: (f64, f64)) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (x0, x1, y1) = pts.fold((f64::INFINITY, 0.0f64, band.1), |(a, b, c), p| (a.min(p.0), b.max(p.0), c.max(p.2.map_or(p.1, |ci| ci.1))));
    let (x0, x1) = (x0.min(x1) / 1.3, x1 * 1.3);
    // a tick at every measured x (the log scale's own ticks skip most of a short range)
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale().with_key_points(xs), 0.0..y1 * 1.1)
        .map_err(err)?;
    chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).label_style(("sans-serif", 15)).x_label_formatter(&|x| format!("{x:.0}")).draw().map_err(err)?;
    chart.draw_series(std::iter::once(Rectangle::new([(x0, band.0), (x1, band.1)], RGBColor(44, 160, 44).mix(0.12).filled()))).map_err(err)?;
    chart.draw_series(std::iter::once(PathElement::new(vec![(x0, 1.0), (x1, 1.0)], BLACK.stroke_width(1)))).map_err(err)?;
    for (i, (label, pts, dashed)) in series.iter().enumerate() {
        let c = colour(i / 2);
        let style = if *dashed { c.mix(0.6).stroke_width(2) } else { c.stroke_width(3) };
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), style).point_size(if *dashed { 2 } else { 4 }))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        // the 95% interval of each point, a whisker with caps (the peer's a little to the right)
        let whisker = if *dashed { c.mix(0.6).stroke_width(1) } else { c.stroke_width(2) };
        let shift = if *dashed { 1.03 } else { 1.0 };
        for &(x, _, ci) in pts {
            if let Some((lo, hi)) = ci {
                let x = x * shift;
                let cap = |y: f64| PathElement::new(vec![(x / 1.015, y), (x * 1.015, y)], whisker);
                chart.draw_series([PathElement::new(vec![(x, lo), (x, hi)], whisker), cap(lo), cap(hi)]).map_err(err)?;
            }
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 14)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Per arm and round: the mean over seeds of a mining-round value.
fn round_curve(arm: &str, runs: &[&RunLog], value: &dyn Fn(&MiningRow) -> Option<f64>) -> Curve {
    let rs: Vec<&RunLog> = runs.iter().copied().filter(|r| r.arm == arm).collect();
    let rounds = rs.iter().map(|r| r.mining.len()).max().unwrap_or(0);
    (0..rounds)
        .filter_map(|k| {
            let vals: Vec<f64> = rs.iter().filter_map(|r| r.mining.get(k).and_then(value)).collect();
            mean_std(&vals).map(|(m, s)| ((k + 1) as f64, m, if s.is_finite() { s } else { 0.0 }))
        })
        .collect()
}

/// Offline mining per round, in three panels: hard negatives mined; their
/// mean loss against a random negative's; the share of the previous cache
/// still hard.
fn mining_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, miners: &[String], runs: &[&RunLog]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    let count: Vec<Curve> = miners.iter().map(|a| round_curve(a, runs, &|m| Some(m.stats.mined as f64))).collect();
    line_chart(&panels[0], "hard negatives mined", "mining round", "cache entries", miners, &count, true)?;
    let mut labels = Vec::new();
    let mut loss = Vec::new();
    for a in miners {
        labels.push(format!("{a}: mined"));
        loss.push(round_curve(a, runs, &|m| m.stats.mined_loss));
        labels.push(format!("{a}: random"));
        loss.push(round_curve(a, runs, &|m| m.stats.random_loss));
    }
    line_chart(&panels[1], "mean loss: mined vs random", "mining round", "per-RoI loss", &labels, &loss, false)?;
    let still: Vec<Curve> = miners.iter().map(|a| round_curve(a, runs, &|m| m.stats.prev_still_hard)).collect();
    line_chart(&panels[2], "previous cache still hard", "mining round", "share", miners, &still, false)?;
    Ok(())
}

/// `knob_<key>.png`/`.svg`: final `metric` against one knob's values (categories in the given
/// order), one line per method (mean over units, band ± std), each group's other knobs at its
/// default. Returns the PNG file name.
pub fn draw_knob(dir: &Path, knob: &str, metric: Metric, series: &[super::groups::KnobSeries]) -> Result<String> {
    register_font();
    let mut values: Vec<String> = Vec::new();
    for (_, _, pts) in series {
        for (v, _) in pts {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    // the categories in their numeric order, `none` after the numbers
    values.sort_by(|a, b| super::groups::order_key(a).total_cmp(&super::groups::order_key(b)).then(a.cmp(b)));
    let stem = format!("knob_{}", file_stem(knob));
    let mut files = Vec::new();
    both!(dir, stem, files, |root| knob_chart(&root, knob, metric, &values, series));
    Ok(files.remove(0))
}

fn knob_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, knob: &str, metric: Metric, values: &[String], series: &[super::groups::KnobSeries]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let stats: Vec<(String, Vec<(f64, f64, f64)>)> = series
        .iter()
        .map(|(name, _, pts)| {
            let p = pts
                .iter()
                .filter_map(|(v, ys)| {
                    let x = values.iter().position(|w| w == v)? as f64;
                    mean_std(ys).map(|(m, s)| (x, m, if s.is_finite() { s } else { 0.0 }))
                })
                .collect();
            (name.clone(), p)
        })
        .collect();
    let all = stats.iter().flat_map(|s| s.1.iter());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1 - p.2), b.max(p.1 + p.2)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.15).max(0.01);
    let n = values.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(format!("Final {} against {knob} (mean ± std over units; other knobs at the default)", metric.column()), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, (lo - pad).max(0.0)..hi + pad)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 && *x >= 0.0 { values.get(x.round() as usize).cloned().unwrap_or_default() } else { String::new() })
        .x_desc(knob)
        .y_desc(format!("final {} on the test split", metric.column()))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in stats.iter().enumerate() {
        let c = colour(i);
        if pts.len() > 1 {
            let mut poly: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 + p.2)).collect();
            poly.extend(pts.iter().rev().map(|p| (p.0, p.1 - p.2)));
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.2).filled()))).map_err(err)?;
        } else {
            chart.draw_series(pts.iter().map(|p| PathElement::new(vec![(p.0, p.1 - p.2), (p.0, p.1 + p.2)], c.stroke_width(2)))).map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)).point_size(4))
            .map_err(err)?
            .label(format!("{name} (filled: its default)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        // the method's default setting, a filled dot
        let default_x = series[i].1.as_ref().and_then(|d| values.iter().position(|v| v == d)).map(|x| x as f64);
        chart.draw_series(pts.iter().filter(|p| Some(p.0) == default_x).map(|p| Circle::new((p.0, p.1), 7, c.filled()))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 15)).position(SeriesLabelPosition::LowerRight).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `classes_<arm>.png`/`.svg`: per class, its share of the picked RoIs (thick) and of the
/// candidate RoIs (thin) at each bookkeeping iteration, means over units. Returns the PNG's name.
pub fn draw_classes(dir: &Path, arm: &str, curves: &super::classes::ClassCurves) -> Result<String> {
    register_font();
    let stem = format!("classes_{}", file_stem(arm));
    let mut files = Vec::new();
    both!(dir, stem, files, |root| classes_chart(&root, arm, curves));
    Ok(files.remove(0))
}

fn classes_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, arm: &str, curves: &super::classes::ClassCurves) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    // the foreground classes (the background, index 0 and first, holds the rest and would
    // flatten them against the axis)
    // each curve smoothed by a centred mean over 5 bookkeeping steps (100 iterations)
    let smooth = |p: &[(f64, f64, f64)]| -> Vec<(f64, f64, f64)> {
        (0..p.len())
            .map(|i| {
                let w = &p[i.saturating_sub(2)..(i + 3).min(p.len())];
                let n = w.len() as f64;
                (p[i].0, w.iter().map(|q| q.1).sum::<f64>() / n, w.iter().map(|q| q.2).sum::<f64>() / n)
            })
            .collect()
    };
    let curves: Vec<(String, Vec<(f64, f64, f64)>)> = curves[1.min(curves.len())..].iter().map(|(n, p)| (n.clone(), smooth(p))).collect();
    let pts = curves.iter().flat_map(|c| c.1.iter());
    let (xmax, ymax) = pts.fold((1.0f64, 0.01f64), |(x, y), p| (x.max(p.0), y.max(p.1).max(p.2)));
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{arm}: class shares of the picked RoIs (thick) and of the candidates (thin), mean of 5 steps"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.02, 0.0..(ymax * 1.1).min(1.0))
        .map_err(err)?;
    chart.configure_mesh().x_desc("iteration").y_desc("share (mean over units)").label_style(("sans-serif", 15)).x_label_formatter(&|x| format!("{x:.0}")).draw().map_err(err)?;
    for (i, (name, p)) in curves.iter().enumerate() {
        let c = colour(i + 1);
        chart.draw_series(LineSeries::new(p.iter().map(|q| (q.0, q.2)), c.mix(0.6).stroke_width(1))).map_err(err)?;
        chart
            .draw_series(LineSeries::new(p.iter().map(|q| (q.0, q.1)), c.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 14)).position(SeriesLabelPosition::UpperRight).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `per_class_ap.png`/`.svg`: each class's final VOC07 AP (mean over units), one bar per arm.
pub fn draw_per_class(dir: &Path, arms: &[String], classes: &[String], values: &[Vec<Option<f64>>]) -> Result<String> {
    register_font();
    let mut files = Vec::new();
    both!(dir, "per_class_ap", files, |root| per_class_chart(&root, arms, classes, values));
    Ok(files.remove(0))
}

fn per_class_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, arms: &[String], classes: &[String], values: &[Vec<Option<f64>>]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let ymax = values.iter().flatten().flatten().fold(0.1f64, |a, b| a.max(*b)) * 1.25;
    let mut chart = categorical(root, "Final VOC07 AP per class (mean over units)", classes, ymax.min(1.05), ("class", "AP"))?;
    let width = 0.8 / arms.len().max(1) as f64;
    for (k, (arm, v)) in arms.iter().zip(values).enumerate() {
        let c = colour(k);
        chart
            .draw_series(v.iter().enumerate().filter_map(|(i, x)| x.map(|y| Rectangle::new([(i as f64 - 0.4 + width * k as f64, 0.0), (i as f64 - 0.4 + width * (k as f64 + 0.9), y)], c.filled()))))
            .map_err(err)?
            .label(arm.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 14)).position(SeriesLabelPosition::UpperRight).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `compare.png`/`.svg` (`harness compare`): each study's final-accuracy findings between
/// shared arms, `labels[j]` a pair, `values[s][j]` study s's difference with its own
/// family-wise interval (low, high), one colour per study, and the line of no difference.
/// Returns the PNG file name.
pub fn draw_compare(dir: &Path, studies: &[String], labels: &[String], values: &[Vec<Option<(f64, f64, f64)>>], measure: &str) -> Result<String> {
    register_font();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    both!(dir, "compare", files, |root| compare_chart(&root, studies, labels, values, measure));
    Ok(files.remove(0))
}

fn compare_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, studies: &[String], labels: &[String], values: &[Vec<Option<(f64, f64, f64)>>], measure: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let pts = values.iter().flatten().flatten();
    let lo = pts.clone().map(|p| p.1.min(p.0)).fold(0.0f64, f64::min);
    let hi = pts.map(|p| p.2.max(p.0)).fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.005);
    // headroom above for the legend (upper left)
    let (ylo, yhi) = (lo - pad, hi + pad + (hi - lo + 2.0 * pad) * 0.3);
    let n = labels.len().max(1);
    let title = format!("Each study's {measure} findings (arm − baseline; its own family-wise interval)");
    let ydesc = format!("difference in {measure}");
    let mut chart = categorical_in(root, &title, labels, (ylo, yhi), ("arm − baseline", &ydesc), Some(&|y: &f64| if y.abs() < 1e-9 { "0".into() } else { format!("{y:+.2}") }))?;
    chart.draw_series(std::iter::once(PathElement::new(vec![(-0.5, 0.0), (n as f64 - 0.5, 0.0)], BLACK.stroke_width(1)))).map_err(err)?;
    let width = 0.6 / studies.len().max(1) as f64;
    for (s, name) in studies.iter().enumerate() {
        let c = colour(s);
        let xs: Vec<(f64, (f64, f64, f64))> = values[s].iter().enumerate().filter_map(|(j, v)| v.map(|v| (j as f64 - 0.3 + width * (s as f64 + 0.5), v))).collect();
        chart
            .draw_series(xs.iter().map(|(x, v)| Circle::new((*x, v.0), 5, c.filled())))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 7, y), 5, c.filled()));
        chart.draw_series(xs.iter().map(|(x, v)| PathElement::new(vec![(*x, v.1), (*x, v.2)], c.stroke_width(2)))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 15)).position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
