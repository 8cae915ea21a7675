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
    /// The band rule's word for "about 2x" ([1.6, 2.5]): supported, contradicted,
    /// not resolved; empty with one round.
    pub word: String,
    pub rounds: usize,
    pub peer_read_only_s: Option<f64>,
    pub peer_masked_s: Option<f64>,
    pub peer_ratio: Option<f64>,
    pub peer_ratio_lo: Option<f64>,
    pub peer_ratio_hi: Option<f64>,
    pub peer_word: String,
    pub device: String,
    pub processor: String,
    pub threads: i32,
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
    }
}

/// The point's line as the sweep goes.
fn print_point(point: &ClaimAPoint) {
    let ci = |lo: Option<f64>, hi: Option<f64>| lo.zip(hi).map(|(l, h)| format!(" [{l:.2}, {h:.2}]")).unwrap_or_default();
    println!(
        "{} fc {} at {} px, {:.0} RoIs/image ({} rounds): read-only {:.3} s/iter, masked {:.3}: masked / read-only {:.2}x{} {}{}",
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
        point.peer_ratio.map(|r| format!(" (peer {r:.2}x{} {})", ci(point.peer_ratio_lo, point.peer_ratio_hi), point.peer_word)).unwrap_or_default()
    );
}

/// Writes the sweep's `claim_a.csv`, then its table and chart ([`draw_claim_a`]), into `out`.
fn write_sweep(out: &Path, points: &[ClaimAPoint]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = csv::Writer::from_writer(Vec::new());
    for p in points {
        w.serialize(p)?;
    }
    crate::rundir::write_file(&out.join("claim_a.csv"), &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    draw_claim_a(out, points)?;
    println!("wrote {}/claim_a.csv, claim_a.md, claim_a.png", out.display());
    Ok(())
}

/// Redraws `claim_a.md` and the chart of a sweep from its `claim_a.csv` alone
/// (`harness bench claim-a --replot --out DIR`); times nothing.
pub fn replot_claim_a(dir: &std::path::Path) -> Result<()> {
    let path = dir.join("claim_a.csv");
    let mut r = csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let points: Vec<ClaimAPoint> = r.deserialize().collect::<Result<_, _>>().with_context(|| format!("reading {}", path.display()))?;
    if points.is_empty() {
        anyhow::bail!("{} has no points", path.display());
    }
    draw_claim_a(dir, &points)?;
    println!("wrote {}/claim_a.md, claim_a.png from claim_a.csv", dir.display());
    Ok(())
}

/// `claim_a.md` and `claim_a.png`/`.svg`: one series per backbone, head width
/// and scale (ours, and the peer's dashed), each point with its interval.
fn draw_claim_a(out: &std::path::Path, points: &[ClaimAPoint]) -> Result<()> {
    let rounds = points.iter().map(|p| p.rounds).max().unwrap_or(1);
    let mut md = format!("Masked / read-only OHEM seconds per iteration: the ratio of the means over {rounds} round(s), with the 95% interval paired by round (log scale), and the band rule's word for \"about 2x\" (the interval inside [1.6, 2.5]: supported; wholly outside: contradicted; else not resolved).\n\n| backbone | fc | px | RoIs/image | read-only s/iter | masked s/iter | masked / read-only | 95% CI | about 2x | peer ratio | peer 95% CI | peer: about 2x |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let ci = |lo: Option<f64>, hi: Option<f64>| lo.zip(hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into());
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.2}x | {} | {} | {} | {} | {} |\n",
            p.backbone, p.fc_width, p.input_scale, p.rois_per_image, p.read_only_s, p.masked_s, p.ratio, ci(p.ratio_lo, p.ratio_hi), if p.word.is_empty() { "—" } else { &p.word },
            p.peer_ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()), ci(p.peer_ratio_lo, p.peer_ratio_hi), if p.peer_word.is_empty() { "—" } else { &p.peer_word }
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
        series.push((format!("{label} (ours)"), mine.iter().map(|p| (p.rois_per_image, p.ratio, p.ratio_lo.zip(p.ratio_hi))).collect::<Vec<_>>(), false));
        let theirs: Vec<_> = mine.iter().filter_map(|p| p.peer_ratio.map(|r| (p.rois_per_image, r, p.peer_ratio_lo.zip(p.peer_ratio_hi)))).collect();
        if !theirs.is_empty() {
            series.push((format!("{label} (PyTorch + torchvision)"), theirs, true));
        }
    }
    crate::report::charts::draw_sweep(out, "claim_a", "Masked / read-only OHEM, seconds per iteration (N = 2, B = 128; 95% intervals)", "RoIs per image (log scale)", "masked / read-only (x)", &series, (1.6, 2.5))
}
