//! `harness bench claim-a`: claim (a) across regimes, masked / read-only OHEM
//! seconds per iteration against RoIs per image, for the small backbone at
//! each head width and VGG16 at 600 px, with the PyTorch peer on the same
//! shapes; written to `claim_a.csv`, `claim_a.md` and a chart.

use std::path::Path;

use anyhow::{Context, Result};
use tch::Device;

use super::common::{batch_shapes, bench_config, bench_store, time_step, SMALL, VGG16};
use super::peer::{peer_python, run_peer};
use crate::config::TrainConfig;
use crate::model::Backbone;
use crate::sampler::ohem::OhemImpl;
use crate::sampler::{OhemConfig, SamplerConfig};

/// One point of the claim-(a) sweep: masked against read-only OHEM at one RoI count.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClaimAPoint {
    pub backbone: String,
    pub fc_width: i64,
    pub input_scale: u32,
    pub proposals: usize,
    pub rois_per_image: f64,
    /// Seconds per iteration, the mean over rounds.
    pub read_only_s: f64,
    pub masked_s: f64,
    /// Mean masked over mean read-only seconds, with the report's 95% interval
    /// (paired by round, log scale) when there are 2 or more rounds.
    pub ratio: f64,
    pub ratio_lo: Option<f64>,
    pub ratio_hi: Option<f64>,
    /// The band rule's word for "about 2x" (1.6–2.5x) from this point's 95% interval
    /// alone: supported, contradicted, not resolved; empty with one round. The words the
    /// bench states are the series-wise ones (`series_word`).
    #[serde(rename = "word95", alias = "word")]
    pub word: String,
    pub rounds: usize,
    pub peer_read_only_s: Option<f64>,
    pub peer_masked_s: Option<f64>,
    pub peer_ratio: Option<f64>,
    pub peer_ratio_lo: Option<f64>,
    pub peer_ratio_hi: Option<f64>,
    #[serde(rename = "peer_word95", alias = "peer_word")]
    pub peer_word: String,
    pub device: String,
    pub processor: String,
    pub threads: i32,
    /// Each round's seconds per iteration, `;`-separated, so that every interval recomputes
    /// from the CSV (empty in sweeps that predate them).
    #[serde(default)]
    pub read_only_rounds: String,
    #[serde(default)]
    pub masked_rounds: String,
    #[serde(default)]
    pub peer_read_only_rounds: String,
    #[serde(default)]
    pub peer_masked_rounds: String,
    /// The points of this point's series (one backbone, head width and scale), and the ratio's
    /// interval at Bonferroni's level over them, with the band rule's word from it: the words
    /// of a series hold together at 95%. Written by `write_sweep` and `--replot`.
    #[serde(default)]
    pub series_points: usize,
    #[serde(default)]
    pub series_lo: Option<f64>,
    #[serde(default)]
    pub series_hi: Option<f64>,
    #[serde(default)]
    pub series_word: String,
    #[serde(default)]
    pub peer_series_lo: Option<f64>,
    #[serde(default)]
    pub peer_series_hi: Option<f64>,
    #[serde(default)]
    pub peer_series_word: String,
}

/// Seconds per round as the CSV keeps them.
fn rounds_text(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:e}")).collect::<Vec<_>>().join(";")
}

/// The rounds of a CSV cell; None when it is empty (a sweep that predates them); an error
/// naming the cell when a value is not a positive number.
fn rounds_of(s: &str, what: &str) -> Result<Option<Vec<f64>>> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.split(';')
        .map(|x| x.trim().parse::<f64>().ok().filter(|v| *v > 0.0 && v.is_finite()).ok_or_else(|| anyhow::anyhow!("claim_a.csv: {what} = {s:?}: {x:?} is not a positive number of seconds")))
        .collect::<Result<Vec<f64>>>()
        .map(Some)
}

/// Both implementations' rounds of a point, which must pair up round for round.
fn paired_rounds(read_only: &str, masked: &str, what: &str, rounds: usize) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
    match (rounds_of(read_only, &format!("{what}read_only_rounds"))?, rounds_of(masked, &format!("{what}masked_rounds"))?) {
        (None, None) => Ok(None),
        (Some(r), Some(m)) if r.len() == m.len() && r.len() == rounds => Ok(Some((r, m))),
        (r, m) => anyhow::bail!("claim_a.csv: {what}read_only_rounds and {what}masked_rounds hold {} and {} rounds, and the point says {rounds}", r.map_or(0, |v| v.len()), m.map_or(0, |v| v.len())),
    }
}

/// The interval of masked / read-only at two-sided `level`, and its band word: from the
/// rounds when the CSV has them (paired by round, as [`claim_a_ratio`]); else, for a sweep
/// that predates them, from its 95% interval, whose half-width on the log scale is
/// t(0.975, rounds − 1) standard errors.
fn series_interval(rounds_times: Option<(Vec<f64>, Vec<f64>)>, ratio: f64, ci95: Option<(f64, f64)>, rounds: usize, level: f64) -> (Option<(f64, f64)>, String) {
    use crate::report::stats::{compare_at, t_quantile, Scale};
    let seeded = |v: &[f64]| v.iter().enumerate().map(|(i, x)| (i as u64, *x)).collect::<Vec<_>>();
    let ci = match rounds_times {
        Some((ro, ma)) => compare_at(&seeded(&ma), &seeded(&ro), Scale::Ratio, level).and_then(|e| e.ci),
        None => ci95.filter(|_| rounds >= 2).map(|(lo, hi)| {
            let df = rounds as f64 - 1.0;
            let se = (hi.ln() - lo.ln()) / (2.0 * t_quantile(0.95, df));
            let half = t_quantile(level, df) * se;
            ((ratio.ln() - half).exp(), (ratio.ln() + half).exp())
        }),
    };
    let word = match ci {
        Some((lo, hi)) if lo == hi => "no spread across rounds: not resolved".to_string(),
        Some((lo, hi)) => crate::report::judge(lo, hi, 2.0, 1.25).to_string(),
        None => String::new(),
    };
    (ci, word)
}

/// A point's series: its backbone, head width and scale, on one device, processor and
/// thread count (two runs on different machines in one CSV are two series).
type SeriesKey = (String, i64, u32, String, String, i32);

fn series_key(p: &ClaimAPoint) -> SeriesKey {
    (p.backbone.clone(), p.fc_width, p.input_scale, p.device.clone(), p.processor.clone(), p.threads)
}

/// The series of the points, in the order they came.
fn series_keys(points: &[ClaimAPoint]) -> Vec<SeriesKey> {
    let mut keys: Vec<SeriesKey> = Vec::new();
    for p in points {
        let k = series_key(p);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Gives every point its series' family-wise interval and word (ours and the peer's); an
/// error naming the column when a point's rounds are unreadable or do not pair up.
pub fn correct_series(points: &mut [ClaimAPoint]) -> Result<()> {
    for key in series_keys(points) {
        let members: Vec<usize> = (0..points.len()).filter(|&i| series_key(&points[i]) == key).collect();
        let level = crate::report::stats::family_level(members.len());
        for i in members.iter().copied() {
            let p = &mut points[i];
            let at = |what: &str| format!("{what} (the point at {} proposals of {} fc {})", p.proposals, p.backbone, p.fc_width);
            p.series_points = members.len();
            let ours = paired_rounds(&p.read_only_rounds, &p.masked_rounds, "", p.rounds).with_context(|| at("ours"))?;
            let (ci, word) = series_interval(ours, p.ratio, p.ratio_lo.zip(p.ratio_hi), p.rounds, level);
            (p.series_lo, p.series_hi, p.series_word) = (ci.map(|c| c.0), ci.map(|c| c.1), word);
            if let Some(r) = p.peer_ratio {
                let theirs = paired_rounds(&p.peer_read_only_rounds, &p.peer_masked_rounds, "peer_", p.rounds).with_context(|| at("the peer"))?;
                let (ci, word) = series_interval(theirs, r, p.peer_ratio_lo.zip(p.peer_ratio_hi), p.rounds, level);
                (p.peer_series_lo, p.peer_series_hi, p.peer_series_word) = (ci.map(|c| c.0), ci.map(|c| c.1), word);
            }
        }
    }
    Ok(())
}

/// The generated findings of a sweep, one line per series and implementation: where "about
/// 2x" is supported, contradicted (below or above the band) and not resolved, by the
/// series-wise words.
pub fn series_findings(points: &[ClaimAPoint]) -> Vec<String> {
    let mut out = Vec::new();
    for key in series_keys(points) {
        let (b, fc, scale) = (&key.0, key.1, key.2);
        let ps: Vec<&ClaimAPoint> = points.iter().filter(|p| series_key(p) == key).collect();
        let m = ps.len();
        for (who, word_of, hi_of) in [("ours", (|p: &ClaimAPoint| p.series_word.clone()) as fn(&ClaimAPoint) -> String, (|p: &ClaimAPoint| p.series_lo.map(|lo| lo > 2.5)) as fn(&ClaimAPoint) -> Option<bool>), ("PyTorch + torchvision", |p: &ClaimAPoint| p.peer_series_word.clone(), |p: &ClaimAPoint| p.peer_series_lo.map(|lo| lo > 2.5))] {
            if ps.iter().all(|p| word_of(p).is_empty()) {
                continue;
            }
            let at = |pred: &dyn Fn(&ClaimAPoint) -> bool| -> Vec<String> { ps.iter().filter(|p| pred(p)).map(|p| format!("{:.0}", p.rois_per_image)).collect() };
            let supported = at(&|p| word_of(p) == "supported");
            let mut parts = vec![if supported.is_empty() { "supported at no point".to_string() } else { format!("supported at {} RoIs/image", supported.join(", ")) }];
            for (what, r) in [
                ("contradicted below the band", at(&|p| word_of(p) == "contradicted" && hi_of(p) != Some(true))),
                ("contradicted above the band", at(&|p| word_of(p) == "contradicted" && hi_of(p) == Some(true))),
                ("not resolved", at(&|p| word_of(p) != "supported" && word_of(p) != "contradicted")),
            ] {
                if !r.is_empty() {
                    parts.push(format!("{what} at {}", r.join(", ")));
                }
            }
            out.push(format!("{b} fc {fc} at {scale} px ({who}), masked / read-only about 2x, each interval Bonferroni over the series' {m} points ({:.2}%): {}", 100.0 * crate::report::stats::family_level(m), parts.join("; ")));
        }
    }
    out
}

/// masked / read-only over rounds: the ratio of the mean times, its interval
/// (paired by round) and the band rule's word ("" with one round).
pub fn claim_a_ratio(read_only: &[f64], masked: &[f64]) -> (f64, Option<(f64, f64)>, String) {
    use crate::report::stats::{compare, Scale};
    let seeded = |v: &[f64]| v.iter().enumerate().map(|(i, x)| (i as u64, *x)).collect::<Vec<_>>();
    let est = compare(&seeded(masked), &seeded(read_only), Scale::Ratio).expect("positive times");
    let word = match est.ci {
        Some((lo, hi)) if lo == hi => "no spread across rounds: not resolved".to_string(),
        Some((lo, hi)) => crate::report::judge(lo, hi, 2.0, 1.25).to_string(),
        None => String::new(),
    };
    (est.value, est.ci, word)
}

/// The small backbone's head widths that `bench claim-a` sweeps: those given
/// (`--fc`), else 512 and 4096, or none when `--vgg16` asks for VGG16's points alone.
pub fn claim_a_widths(given: &[i64], vgg16: bool) -> Vec<i64> {
    match (given.is_empty(), vgg16) {
        (true, false) => vec![512, 4096],
        _ => given.to_vec(),
    }
}

/// Claim (a) across regimes (`harness bench claim-a`): masked / read-only OHEM
/// seconds per iteration against RoIs per image, for the small backbone at each
/// head width in `fc_widths` and, with `vgg16`, VGG16 (fc 4096) at 600 px; with
/// `peer`, PyTorch + torchvision on the same shapes in the same run. Writes
/// `claim_a.csv`, `claim_a.md` and `claim_a.png`/`.svg` (the [1.6, 2.5] band
/// of "about 2x" drawn) into `out`.
pub fn claim_a(out: &Path, iters: usize, proposal_counts: &[usize], fc_widths: &[i64], vgg16: Option<&[usize]>, peer: bool, rounds: usize) -> Result<()> {
    let rounds = rounds.max(1);
    let device = Device::cuda_if_available();
    let peer_python = if peer { Some(peer_python()?) } else { None };
    let configs = sweep_configs(fc_widths, vgg16.is_some())?;
    let processor = crate::rundir::cpu_model().filter(|_| !device.is_cuda()).unwrap_or_else(|| "GPU".into());
    let mut points = Vec::new();
    for base in &configs {
        let counts = match vgg16 {
            Some(v) if base.model.backbone == Backbone::Vgg16 => v,
            _ => proposal_counts,
        };
        for &n_props in counts {
            let times = time_point(base, n_props, iters, rounds, device, peer_python.as_deref())?;
            let point = claim_a_point(base, n_props, &times, rounds, device, &processor);
            print_point(&point);
            points.push(point);
        }
    }
    write_sweep(out, &points)
}

/// The sweep's training configs: the small backbone at each head width in
/// `fc_widths`, then, with `vgg16`, VGG16 at 600 px.
fn sweep_configs(fc_widths: &[i64], vgg16: bool) -> Result<Vec<TrainConfig>> {
    let mut configs: Vec<TrainConfig> = fc_widths.iter().map(|&fc| bench_config(SMALL).map(|mut c| { c.model.fc_dim = Some(fc); c })).collect::<Result<_>>()?;
    if vgg16 {
        configs.push(bench_config(VGG16)?);
    }
    Ok(configs)
}

/// One point's timings, a value per round: seconds per iteration of each
/// implementation, ours and the peer's (empty without the peer), and the RoIs
/// per image before sampling.
struct PointTimes {
    read_only: Vec<f64>,
    masked: Vec<f64>,
    peer_read_only: Vec<f64>,
    peer_masked: Vec<f64>,
    rois_per_image: f64,
}

/// Times read-only and masked OHEM on `base` with `n_props` proposals per image, in `rounds` rounds, with the peer when `peer_python` is given.
fn time_point(base: &TrainConfig, n_props: usize, iters: usize, rounds: usize, device: Device, peer_python: Option<&Path>) -> Result<PointTimes> {
    let store = bench_store(n_props);
    let shapes = batch_shapes(&store, &base.input, iters, device);
    // rounds: ours and the peer alternate which goes first (the peer in odd rounds), and
    // within ours, masked goes first in odd rounds, so that a machine's drift falls on both
    let (mut ro, mut ma, mut pro, mut pma, mut rois) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0.0);
    for round in 0..rounds {
        let mut ours = |ro: &mut Vec<f64>, ma: &mut Vec<f64>| -> Result<()> {
            let order = if round % 2 == 1 { [OhemImpl::Masked, OhemImpl::ReadOnly] } else { [OhemImpl::ReadOnly, OhemImpl::Masked] };
            for imp in order {
                let cfg = TrainConfig { sampler: SamplerConfig::Ohem(OhemConfig { implementation: imp, ..Default::default() }), ..base.clone() };
                let s = time_step(&cfg, &store, iters, device)?;
                rois = s.2;
                if imp == OhemImpl::ReadOnly { ro.push(s.0) } else { ma.push(s.0) }
            }
            Ok(())
        };
        let theirs = |pro: &mut Vec<f64>, pma: &mut Vec<f64>| -> Result<()> {
            if let Some(py) = &peer_python {
                let s = run_peer(py, n_props, iters, base, device, &shapes, &["ohem", "ohem_masked"], round == 0)?;
                if let (Some(r), Some(m)) = (s.secs("ohem"), s.secs("ohem_masked")) {
                    pro.push(r);
                    pma.push(m);
                }
            }
            Ok(())
        };
        if round % 2 == 1 {
            theirs(&mut pro, &mut pma)?;
            ours(&mut ro, &mut ma)?;
        } else {
            ours(&mut ro, &mut ma)?;
            theirs(&mut pro, &mut pma)?;
        }
    }
    Ok(PointTimes { read_only: ro, masked: ma, peer_read_only: pro, peer_masked: pma, rois_per_image: rois })
}

/// The point of `base` at `n_props` proposals: the mean times and the ratios with their intervals and words.
fn claim_a_point(base: &TrainConfig, n_props: usize, t: &PointTimes, rounds: usize, device: Device, processor: &str) -> ClaimAPoint {
    let (ro, ma, pro, pma) = (&t.read_only, &t.masked, &t.peer_read_only, &t.peer_masked);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ratio, ci, word) = claim_a_ratio(ro, ma);
    let peer = (!pro.is_empty()).then(|| claim_a_ratio(pro, pma));
    ClaimAPoint {
        backbone: format!("{:?}", base.model.backbone).to_lowercase(),
        fc_width: base.model.fc_width(),
        input_scale: base.input.scale,
        proposals: n_props,
        rois_per_image: t.rois_per_image,
        read_only_s: mean(ro),
        masked_s: mean(ma),
        ratio,
        ratio_lo: ci.map(|c| c.0),
        ratio_hi: ci.map(|c| c.1),
        word,
        rounds,
        peer_read_only_s: (!pro.is_empty()).then(|| mean(pro)),
        peer_masked_s: (!pma.is_empty()).then(|| mean(pma)),
        peer_ratio: peer.as_ref().map(|p| p.0),
        peer_ratio_lo: peer.as_ref().and_then(|p| p.1.map(|c| c.0)),
        peer_ratio_hi: peer.as_ref().and_then(|p| p.1.map(|c| c.1)),
        peer_word: peer.map(|p| p.2).unwrap_or_default(),
        device: if device.is_cuda() { "gpu".into() } else { "cpu".into() },
        processor: processor.to_string(),
        threads: tch::get_num_threads(),
        read_only_rounds: rounds_text(ro),
        masked_rounds: rounds_text(ma),
        peer_read_only_rounds: rounds_text(pro),
        peer_masked_rounds: rounds_text(pma),
        series_points: 0,
        series_lo: None,
        series_hi: None,
        series_word: String::new(),
        peer_series_lo: None,
        peer_series_hi: None,
        peer_series_word: String::new(),
    }
}

/// The point's line as the sweep goes.
fn print_point(point: &ClaimAPoint) {
    let ci = |lo: Option<f64>, hi: Option<f64>| lo.zip(hi).map(|(l, h)| format!(" [{l:.2}, {h:.2}]")).unwrap_or_default();
    println!(
        "{} fc {} at {} px, {:.0} RoIs/image ({} rounds): read-only {:.3} s/iter, masked {:.3}: masked / read-only {:.2}x{} (this point's 95% interval alone: {}){}; the series' words are in claim_a.md",
        point.backbone,
        point.fc_width,
        point.input_scale,
        point.rois_per_image,
        point.rounds,
        point.read_only_s,
        point.masked_s,
        point.ratio,
        ci(point.ratio_lo, point.ratio_hi),
        point.word,
        point.peer_ratio.map(|r| format!(" (peer {r:.2}x{}, 95% alone: {})", ci(point.peer_ratio_lo, point.peer_ratio_hi), point.peer_word)).unwrap_or_default()
    );
}

/// Writes the sweep's `claim_a.csv`, then its table and chart ([`draw_claim_a`]), into `out`.
fn write_sweep(out: &Path, points: &[ClaimAPoint]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut points = points.to_vec();
    correct_series(&mut points)?;
    write_points(out, &points)?;
    draw_claim_a(out, &points)?;
    println!("wrote {}/claim_a.csv, claim_a.md, claim_a.png", out.display());
    Ok(())
}

/// Redraws `claim_a.md` and the chart of a sweep from its `claim_a.csv` alone
/// (`harness bench claim-a --replot --out DIR`); times nothing.
pub fn replot_claim_a(dir: &std::path::Path) -> Result<()> {
    let path = dir.join("claim_a.csv");
    let mut r = csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let points: Vec<ClaimAPoint> = r.deserialize().collect::<Result<_, _>>().with_context(|| format!("reading {}", path.display()))?;
    let mut points = points;
    if points.is_empty() {
        anyhow::bail!("{} has no points", path.display());
    }
    // the series' words recomputed, and written back beside the measured columns
    correct_series(&mut points).with_context(|| format!("reading {}", path.display()))?;
    write_points(dir, &points)?;
    draw_claim_a(dir, &points)?;
    println!("wrote {}/claim_a.csv (series-wise intervals), claim_a.md, claim_a.png from claim_a.csv", dir.display());
    Ok(())
}

/// Writes `claim_a.csv`.
fn write_points(out: &Path, points: &[ClaimAPoint]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for p in points {
        w.serialize(p)?;
    }
    crate::rundir::write_file(&out.join("claim_a.csv"), &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    Ok(())
}

/// `claim_a.md` and `claim_a.png`/`.svg`: one series per backbone, head width
/// and scale (ours, and the peer's dashed), each point with its interval.
fn draw_claim_a(out: &std::path::Path, points: &[ClaimAPoint]) -> Result<()> {
    let rounds = points.iter().map(|p| p.rounds).max().unwrap_or(1);
    let derived = points.iter().any(|p| p.read_only_rounds.is_empty());
    let how = if derived { " This sweep predates the per-round columns of claim_a.csv: its series-wise intervals come from each point's 95% interval (half-width t(0.975, rounds − 1) standard errors on the log scale), rescaled to the series' level." } else { "" };
    let mut md = format!("Masked / read-only OHEM seconds per iteration: the ratio of the means over {rounds} round(s), with its interval paired by round (log scale) at Bonferroni's level over the points of its series (one backbone, head width and scale), and the band rule's word for \"about 2x\" from it (the interval inside the band 1.6–2.5x: supported; wholly outside: contradicted; else not resolved), so that the words of a series hold together at 95%. The 95% interval of each point alone is in claim_a.csv (`ratio_lo`, `ratio_hi`).{how}\n\n## Findings\n\n");
    for f in series_findings(points) {
        md.push_str(&format!("- {f}\n"));
    }
    md.push_str("\n| backbone | fc | px | RoIs/image | read-only s/iter | masked s/iter | masked / read-only | series-wise CI | about 2x | peer ratio | peer series-wise CI | peer: about 2x |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let ci = |lo: Option<f64>, hi: Option<f64>| lo.zip(hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into());
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.2}x | {} | {} | {} | {} | {} |\n",
            p.backbone, p.fc_width, p.input_scale, p.rois_per_image, p.read_only_s, p.masked_s, p.ratio, ci(p.series_lo, p.series_hi), if p.series_word.is_empty() { "—" } else { &p.series_word },
            p.peer_ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()), ci(p.peer_series_lo, p.peer_series_hi), if p.peer_series_word.is_empty() { "—" } else { &p.peer_series_word }
        ));
    }
    crate::rundir::write_file(&out.join("claim_a.md"), md.as_bytes())?;
    // one series per regime (backbone, head width, scale), in the order the points came
    let mut regimes: Vec<(&str, i64, u32)> = Vec::new();
    for p in points {
        let k = (p.backbone.as_str(), p.fc_width, p.input_scale);
        if !regimes.contains(&k) {
            regimes.push(k);
        }
    }
    let mut series = Vec::new();
    for (backbone, fc, scale) in regimes {
        let label = format!("{backbone} fc {fc}");
        let mine: Vec<&ClaimAPoint> = points.iter().filter(|p| p.backbone == backbone && p.fc_width == fc && p.input_scale == scale).collect();
        series.push((format!("{label} (ours)"), mine.iter().map(|p| (p.rois_per_image, p.ratio, p.series_lo.zip(p.series_hi))).collect::<Vec<_>>(), false));
        let theirs: Vec<_> = mine.iter().filter_map(|p| p.peer_ratio.map(|r| (p.rois_per_image, r, p.peer_series_lo.zip(p.peer_series_hi)))).collect();
        if !theirs.is_empty() {
            series.push((format!("{label} (PyTorch + torchvision)"), theirs, true));
        }
    }
    crate::report::charts::draw_sweep(out, "claim_a", "Masked / read-only OHEM, seconds per iteration (N = 2, B = 128; intervals Bonferroni over each series)", "RoIs per image (log scale)", "masked / read-only (x)", &series, (1.6, 2.5))
}
