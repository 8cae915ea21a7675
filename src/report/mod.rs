//! Stage 8 of the pipeline: `harness report <results-dir>`, from the logs alone.
//!
//! Reads `grid.json` and every cell's `cell.json`, `status.json` and
//! `metrics.csv`; builds one long table of all epochs of all runs (polars);
//! aggregates per arm: seeds, final mAP (mean ± std over seeds), seconds per
//! epoch split into train, mine and eval, seconds per iteration, total
//! wall-clock time, and time to a target mAP. Time to target is training
//! time: the cumulative `train_s + mine_s` (mining stalls training, so it
//! counts; evaluation is the harness's instrument and every arm pays the same,
//! so it does not) through the first evaluated epoch at or above the target.
//! Runs that never reach the target are did-not-finish (DNF) and are never
//! dropped: in a comparison they count as censored (at least their run's
//! training time), and Gehan's rank test replaces the interval. Speed-ups
//! against each baseline arm are ratios of means (baseline / arm, so > 1
//! means faster) and final-mAP differences are differences of means, each
//! with the t-interval of [`stats`] (paired by seed when the arms ran the
//! same seeds, Welch otherwise), at 95% in the tables and at the study's
//! family level ([`compare::study_family`]: Bonferroni over every comparison
//! the Findings and Verdicts state) for every word. The grid's
//! `report.verdicts` turn chosen speed-ups into verdicts (supported,
//! contradicted, not resolved, with the seeds a resolution would need). Offline-mining arms whose cache stayed empty are
//! flagged. Writes `summary.csv`, `speedups.csv`, `verdicts.csv`, `runs.csv`,
//! `mining.csv` (every round of every cell, where an arm mined), `across_splits.csv` (over
//! resampled splits, or where cells kept their outcomes), `summary.md` and the charts (PNG
//! and SVG) into the results directory. It reads only the files of
//! [`crate::rundir`].

//!
//! The stages, each a function with typed input and output:
//! [`load_runs`] (the logs) → [`aggregate::aggregate`] (per arm) →
//! [`compare`] (speed-ups, mAP differences, warnings, verdicts) →
//! [`write`] (CSV tables and summary.md) and [`charts`]. Across studies,
//! [`claims`] gathers every study's verdicts into the README's claims table.

pub mod aggregate;
pub mod charts;
pub mod classes;
pub mod claims;
pub mod compare;
pub mod groups;
pub mod per_class;
pub mod splits;
pub mod stats;
pub mod studies;
pub mod write;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};

use crate::eval::Metric;
use crate::rundir::{read_manifest, read_metrics, read_mining, read_status, CellMeta, Manifest, EpochRow, GridMeta, Measure, MiningRow, State, CELLS, CELL_JSON, GRID_JSON, METRICS, MINING};
pub use aggregate::{aggregate, Aggregate, ArmSummary};
pub use compare::{Finding, MapDiff, Speedup, Verdict, Warning, Word};

/// One cell's logs.
#[derive(Debug, Clone)]
pub struct RunLog {
    pub arm: String,
    pub seed: u64,
    /// The resampled split it ran on (a grid with `splits:`).
    pub split: Option<crate::rundir::CellSplit>,
    /// Its final evaluation's match outcomes (`outcomes.txt`), where the run wrote them.
    pub outcomes: Option<PathBuf>,
    pub state: State,
    pub reason: Option<String>,
    pub rows: Vec<EpochRow>,
    /// Offline mining rounds (`mining.csv`; empty for samplers that do not mine).
    pub mining: Vec<MiningRow>,
    /// The per-class bookkeeping (`classes.csv`; empty in logs that predate it).
    pub classes: Vec<crate::rundir::ClassRow>,
    /// Each class's AP at every evaluation (`per_class.csv`; empty in logs that predate it).
    pub per_class: Vec<crate::rundir::PerClassRow>,
    pub epochs: usize,
    /// What ran the cell (absent in directories that predate manifests).
    pub manifest: Option<Manifest>,
    /// The cell's config (`config.yaml`), when it parses.
    pub config: Option<crate::config::TrainConfig>,
}

impl RunLog {
    /// The unit its comparisons pair on: the seed, or (split, seed) in a grid with `splits:`
    /// (`(split index + 1) << 32 | seed`: the seed alone where there are no splits).
    pub fn unit(&self) -> u64 {
        unit_of(self.split.as_ref().map(|s| s.index), self.seed)
    }

    /// CPU seconds per training iteration over the run, where every epoch logged them and the
    /// run trained on the CPU (on a GPU the process's CPU time is not the training's cost).
    pub fn cpu_s_per_iter(&self) -> Option<f64> {
        let on_gpu = self.manifest.as_ref().and_then(|m| m.device_used.as_deref()).is_some_and(|d| d.starts_with("cuda"));
        if on_gpu || self.rows.is_empty() {
            return None;
        }
        let cpu: Option<f64> = self.rows.iter().map(|e| e.cpu_s).sum();
        let iters: usize = self.rows.iter().map(|e| e.iterations).sum();
        cpu.filter(|_| iters > 0).map(|c| c / iters as f64)
    }

    /// "seed 3", or "split f2 seed 3".
    pub fn unit_name(&self) -> String {
        match &self.split {
            Some(s) => format!("split {} seed {}", s.label, self.seed),
            None => format!("seed {}", self.seed),
        }
    }

    /// Whether the run mined offline (rounds logged, or mining time spent).
    pub fn mines(&self) -> bool {
        !self.mining.is_empty() || self.rows.iter().any(|r| r.mine_s > 0.0)
    }

    /// Whether a mining run's cache stayed empty in every round.
    pub fn mined_nothing(&self) -> bool {
        self.mines() && self.mining.iter().all(|m| m.stats.mined == 0) && self.rows.iter().all(|r| r.cache_size == 0)
    }

    /// Why this run's timings are not to be read, from its own evidence, or None:
    /// - its manifest's 1-minute load when it ended above the core count plus one (another
    ///   busy process in its last minute);
    /// - an epoch in which other processes took more than [`OTHERS_SHARE_MAX`] of the machine's
    ///   CPU time (`others_cpu_share`, measured over the epoch);
    /// - an epoch whose seconds per iteration (the median of its iterations, else its mean)
    ///   lies more than [`EPOCH_DEPARTURE_MAX`] times above or below the run's own median over
    ///   its epochs: something slowed that epoch alone.
    pub fn timing_flag(&self) -> Option<String> {
        // the load when the cell ended covers its own last minute (the one when it started is
        // the previous cell's, and says nothing of this one)
        if let Some((load, cores)) = self.manifest.as_ref().and_then(|m| m.load_end.zip(m.cores)).filter(|(l, c)| *l > *c as f64 + 1.0) {
            return Some(format!("the 1-minute load when it ended was {load:.2} on {cores} cores"));
        }
        if let Some(e) = self.rows.iter().find(|e| e.others_cpu_share.is_some_and(|s| s > OTHERS_SHARE_MAX)) {
            return Some(format!("other processes took {:.0}% of the machine's CPU time in epoch {}", 100.0 * e.others_cpu_share.unwrap_or(0.0), e.epoch));
        }
        let per_iter: Vec<(usize, f64)> = self.rows.iter().filter(|e| e.iterations > 0).map(|e| (e.epoch, e.iter_median_s.unwrap_or(e.train_s / e.iterations as f64))).collect();
        let mut sorted: Vec<f64> = per_iter.iter().map(|x| x.1).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
        };
        per_iter
            .iter()
            // "more than" 1.5x: an epoch at exactly 1.5x (up to rounding) is not flagged
            .find(|(_, v)| median > 0.0 && (v / median > EPOCH_DEPARTURE_MAX + 1e-9 || median / v > EPOCH_DEPARTURE_MAX + 1e-9))
            .map(|(epoch, v)| format!("epoch {epoch} took {v:.3} s per iteration, {:.1}x the run's median over its epochs ({median:.3} s)", v / median))
    }

    /// The machine that ran it, as its manifest names it (device, CPU model, vector extensions,
    /// cores); `None` without a manifest. Timings compare only between runs of one machine.
    pub fn machine(&self) -> Option<String> {
        let m = self.manifest.as_ref()?;
        let unknown = || "?".to_string();
        Some(format!(
            "{} ({}; {}; {} cores)",
            m.device_used.clone().unwrap_or_else(unknown),
            m.cpu.clone().unwrap_or_else(unknown),
            m.cpu_isa.clone().unwrap_or_else(unknown),
            m.cores.map_or_else(unknown, |c| c.to_string())
        ))
    }

    /// The last evaluated mAP by `metric`.
    pub fn final_map(&self, metric: Metric) -> Option<f64> {
        self.rows.iter().rev().find_map(|e| e.map(metric))
    }

    /// This run's value of a speed-up measure; None: the target was not reached
    /// (or, for the others, no epoch finished).
    pub fn measure(&self, measure: Measure, metric: Metric, target: f64) -> Option<f64> {
        match measure {
            Measure::TimeToTarget => time_to_target(&self.rows, metric, target),
            Measure::TotalWallS => self.rows.last().map(|e| e.wall_s),
            Measure::SPerIter => Some(self.rows.iter().map(|e| e.train_s / e.iterations.max(1) as f64).sum::<f64>() / self.rows.len() as f64),
            Measure::CpuSPerIter => self.cpu_s_per_iter(),
        }
    }
}

/// The share of the machine's CPU time that other processes may take during an epoch before
/// the run's timings are left out: a tenth (a quiet machine's background is a few percent).
pub const OTHERS_SHARE_MAX: f64 = 0.10;

/// How far one epoch's seconds per iteration may lie from the run's median over its epochs
/// before the run's timings are left out (the quiet committed runs vary by at most 1.4x).
pub const EPOCH_DEPARTURE_MAX: f64 = 1.5;

/// mean ± sample std of values (std NaN for one value: no spread to speak of); None when empty.
pub fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = if v.len() > 1 { (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt() } else { f64::NAN };
    Some((m, s))
}

/// Training seconds (`train_s + mine_s`, evaluation excluded) through the
/// first evaluated epoch at or above `target`; None: did not finish.
pub fn time_to_target(rows: &[EpochRow], metric: Metric, target: f64) -> Option<f64> {
    let mut t = 0.0;
    for r in rows {
        t += r.train_s + r.mine_s;
        if r.map(metric).is_some_and(|m| m >= target) {
            return Some(t);
        }
    }
    None
}

/// Training seconds (`train_s + mine_s`) through each epoch.
pub fn training_time(rows: &[EpochRow]) -> Vec<f64> {
    rows.iter()
        .scan(0.0, |t, r| {
            *t += r.train_s + r.mine_s;
            Some(*t)
        })
        .collect()
}

/// A statistic of the two arms' means, `stat(mean(base), mean(arm))`, and its
/// percentile-bootstrap 95% interval, resampling each arm's seeds. The report's
/// intervals came from it until they were found to under-cover at 3–5 seeds;
/// it stays for the coverage test that shows why ([`stats`] replaced it).
fn bootstrap(base: &[f64], arm: &[f64], resamples: usize, seed: u64, stat: fn(f64, f64) -> f64) -> Option<(f64, f64, f64)> {
    if base.is_empty() || arm.is_empty() {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut draws: Vec<f64> = (0..resamples)
        .map(|_| {
            let b: f64 = (0..base.len()).map(|_| base[rng.random_range(0..base.len())]).sum::<f64>() / base.len() as f64;
            let a: f64 = (0..arm.len()).map(|_| arm[rng.random_range(0..arm.len())]).sum::<f64>() / arm.len() as f64;
            stat(b, a)
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    let q = |p: f64| draws[((p * (draws.len() - 1) as f64).round() as usize).min(draws.len() - 1)];
    Some((stat(mean(base), mean(arm)), q(0.025), q(0.975)))
}

/// Ratio of means `mean(base) / mean(arm)` and its percentile-bootstrap 95% interval (the old method, see [`bootstrap`]).
pub fn bootstrap_ratio(base: &[f64], arm: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64, f64)> {
    bootstrap(base, arm, resamples, seed, |b, a| b / a)
}

/// Mean difference `mean(arm) - mean(base)` and its percentile-bootstrap 95% interval (the old method).
pub fn bootstrap_diff(base: &[f64], arm: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64, f64)> {
    bootstrap(base, arm, resamples, seed, |b, a| a - b)
}

/// Judges "about `expected`× (within `tolerance`)" against a ratio's 95%
/// interval `[lo, hi]`. Supported: the interval lies inside
/// `[expected / tolerance, expected × tolerance]`; contradicted: wholly
/// outside; otherwise not resolved.
pub fn judge(lo: f64, hi: f64, expected: f64, tolerance: f64) -> Word {
    let (band_lo, band_hi) = (expected / tolerance, expected * tolerance);
    if lo >= band_lo && hi <= band_hi {
        Word::Supported
    } else if hi < band_lo || lo > band_hi {
        Word::Contradicted
    } else {
        Word::NotResolved
    }
}

/// Reads every cell of a results directory; a cell folder whose `cell.json` cannot be read or
/// parsed is left out and named in the third list (path and reason), never dropped in silence.
pub fn load_runs(results: &Path) -> Result<(GridMeta, Vec<RunLog>, Vec<String>)> {
    let gpath = results.join(GRID_JSON);
    let meta: GridMeta = serde_json::from_str(&crate::read_text(&gpath, &format!("is {} a results directory of `harness run`?", results.display()))?)
        .with_context(|| format!("parsing {}", gpath.display()))?;
    let mut runs = Vec::new();
    let mut unreadable = Vec::new();
    let cells = results.join(CELLS);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cells).with_context(|| format!("reading {}", cells.display()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    // the grid's cells: a folder that cells.json does not list (an earlier plan's, say a grid
    // whose splits were planned again) would pair with the current cells of its split and seed
    let listed: Option<std::collections::HashSet<String>> = crate::rundir::read_cells(results).ok().map(|c| c.into_iter().map(|c| c.dir).collect());
    for d in dirs {
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if listed.as_ref().is_some_and(|l| !l.contains(&name)) {
            unreadable.push(format!("{}: not a cell of {} (an earlier plan of the grid?)", d.display(), results.join(crate::rundir::CELLS_JSON).display()));
            continue;
        }
        let cpath = d.join(CELL_JSON);
        let cell: CellMeta = match std::fs::read_to_string(&cpath).map_err(anyhow::Error::from).and_then(|t| serde_json::from_str(&t).map_err(anyhow::Error::from)) {
            Ok(c) => c,
            Err(e) => {
                unreadable.push(format!("{}: unreadable: {e}", cpath.display()));
                continue;
            }
        };
        let status = read_status(&d);
        let rows = read_metrics(&d.join(METRICS))?;
        let mining = read_mining(&d.join(MINING))?;
        runs.push(RunLog {
            manifest: read_manifest(&d),
            config: std::fs::read_to_string(d.join(crate::rundir::CONFIG)).ok().and_then(|t| serde_saphyr::from_str(&t).ok()),
            mining,
            classes: crate::rundir::read_classes(&d.join(crate::rundir::CLASSES))?,
            per_class: crate::rundir::read_per_class(&d.join(crate::rundir::PER_CLASS))?,
            arm: cell.arm,
            seed: cell.seed,
            split: cell.split,
            outcomes: Some(d.join(crate::rundir::OUTCOMES)).filter(|p| p.is_file()),
            state: status.as_ref().map(|s| s.state).unwrap_or(State::Pending),
            reason: status.and_then(|s| s.reason),
            rows,
            epochs: cell.epochs,
        });
    }
    Ok((meta, runs, unreadable))
}

/// The unit key of (split index, seed): the seed alone without a split.
pub fn unit_of(split: Option<usize>, seed: u64) -> u64 {
    split.map_or(0, |i| (i as u64 + 1) << 32) | seed
}

/// What [`generate`] wrote, and what the command line should say.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The path of summary.md.
    pub summary: PathBuf,
    /// The verdict lines and the warnings (e.g. an offline-mining arm that mined nothing).
    pub notes: Vec<String>,
}

/// Aggregates a results directory; returns the path of summary.md and the lines to print.
pub fn generate(results: &Path) -> Result<Generated> {
    let (meta, runs, unreadable) = load_runs(results)?;
    if runs.is_empty() {
        bail!("{} holds no readable cells{}", results.join(CELLS).display(), unreadable.iter().map(|u| format!("\n  unreadable: {u}")).collect::<String>());
    }
    let mut agg = aggregate(&meta, &runs)?;
    let family = compare::study_family(&agg);
    let speedups = compare::speedups(&agg, family);
    let map_diffs = compare::map_diffs(&agg, family);
    let warnings = compare::warnings(&agg);
    let verdicts = compare::verdicts(&agg, &warnings, family);
    let mut notes: Vec<String> = unreadable.iter().map(|u| format!("warning: a cell left out of the report: {u}")).collect();
    notes.extend(warnings.iter().map(|w| format!("warning: {}", w.text)));
    notes.extend(verdicts.iter().map(|v| format!("verdict: {}", write::verdict_line(v, meta.report.metric).replace("**", ""))));
    let groups = groups::analyse(&agg, family);
    let tuning = groups::verdict(&agg, &groups, family);
    if let (false, Ok(v)) = (groups.is_empty(), &tuning) {
        notes.push(format!("verdict: {}", v.text.replace("**", "")));
    }
    let feedback = classes::analyse(&agg, family);
    let thirds = per_class::third_diffs(&agg, &compare::baselines(&agg), family);
    let findings = compare::findings(&agg, &speedups, &map_diffs);
    write::tables(results, &mut agg, &speedups, &map_diffs, &verdicts, &findings)?;
    let (across, across_notes) = splits::across(&agg, &map_diffs, family);
    let shown = agg.splits > 0 || across.iter().any(|r| r.test_units > 0);
    let across_csv = results.join("across_splits.csv");
    if shown {
        write::across_csv(&across_csv, &across)?;
    } else if across_csv.exists() {
        std::fs::remove_file(&across_csv).with_context(|| format!("removing the stale {}", across_csv.display()))?;
    }
    let curve: Vec<compare::TargetPoint> = meta.report.verdicts.iter().filter(|v| v.measure == Measure::TimeToTarget).flat_map(|v| compare::target_curve(&agg, &v.baseline, &v.arm)).collect();
    if !curve.is_empty() {
        write::target_curve_csv(results, &curve)?;
    } else {
        // a curve an earlier report drew, which these logs no longer give, is not left behind
        for stale in ["target_curve.csv", "ttt_ratio_vs_target.png", "ttt_ratio_vs_target.svg"] {
            let p = results.join(stale);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing the stale {}", p.display()))?;
            }
        }
    }
    let bands: Vec<charts::ClaimBand> = verdicts.iter().map(|v| charts::ClaimBand { baseline: v.baseline.clone(), arm: v.arm.clone(), measure: v.measure, lo: v.band_lo, hi: v.band_hi }).collect();
    let mut charts = charts::draw_all(results, &meta, &agg.done, &agg.summaries, &speedups, meta.report.metric, &bands)?;
    if !curve.is_empty() {
        charts.push(charts::draw_target_curve(results, &curve, &bands, agg.target)?);
    }
    if per_class::present(&agg) {
        let (names, values) = per_class::chart_data(&agg);
        charts.push(charts::draw_per_class(results, &meta.arms, &names, &values)?);
    }
    for arm in classes::arms_with_classes(&agg) {
        charts.push(charts::draw_classes(results, &arm, &classes::curves(&agg, &arm))?);
    }
    let groups_csv = results.join("groups.csv");
    if !groups.is_empty() {
        write::groups_csv(&groups_csv, &groups, family)?;
        for (knob, series) in groups::knob_series(&agg) {
            if series.iter().any(|s| !s.2.is_empty()) {
                charts.push(charts::draw_knob(results, &knob, meta.report.metric, &series)?);
            }
        }
    } else if groups_csv.exists() {
        std::fs::remove_file(&groups_csv).with_context(|| format!("removing the stale {}", groups_csv.display()))?;
    }
    let path = results.join("summary.md");
    crate::rundir::write_file(&path, write::summary_md(results, &agg, &speedups, &map_diffs, &verdicts, &findings, (&across, &across_notes), (&groups, &tuning), (&feedback, &thirds), &warnings, &unreadable, &charts).as_bytes())?;
    Ok(Generated { summary: path, notes })
}
