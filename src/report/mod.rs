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
//! dropped. Speed-ups against each baseline arm are ratios of means
//! (baseline / arm, so > 1 means faster) with a 95% percentile-bootstrap
//! interval over seeds. The grid's `report.verdicts` turn chosen speed-ups
//! into verdicts (supported, contradicted, not resolved, with the seeds a
//! resolution would need). Offline-mining arms whose cache stayed empty are
//! flagged. Writes `summary.csv`, `speedups.csv`, `verdicts.csv`, `runs.csv`,
//! `mining.csv` (every round of every cell), `summary.md` and the charts (PNG
//! and SVG) into the results directory. It reads only the files of
//! [`crate::rundir`].

pub mod charts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use rand::{Rng, SeedableRng};

use crate::rundir::{read_csv, read_metrics, read_status, CellMeta, EpochRow, GridMeta, MiningRow, State, CELLS, CELL_JSON, GRID_JSON, METRICS, MINING};

/// One cell's logs.
#[derive(Debug, Clone)]
pub struct RunLog {
    pub arm: String,
    pub seed: u64,
    pub state: State,
    pub reason: Option<String>,
    pub rows: Vec<EpochRow>,
    /// Offline mining rounds (`mining.csv`; empty for samplers that do not mine).
    pub mining: Vec<MiningRow>,
    pub epochs: usize,
}

impl RunLog {
    /// Whether the run mined offline (rounds logged, or mining time spent).
    pub fn mines(&self) -> bool {
        !self.mining.is_empty() || self.rows.iter().any(|r| r.mine_s > 0.0)
    }

    /// Whether a mining run's cache stayed empty in every round.
    pub fn mined_nothing(&self) -> bool {
        self.mines() && self.mining.iter().all(|m| m.mined == 0) && self.rows.iter().all(|r| r.cache_size == 0)
    }
}

/// mean ± sample std of values (std NaN for one value: no spread to speak of); None when empty.
pub fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = if v.len() > 1 { (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt() } else { f64::NAN };
    Some((m, s))
}

fn metric(r: &EpochRow, name: &str) -> Option<f64> {
    if name == "map_voc10" {
        r.map_voc10
    } else {
        r.map_voc07
    }
}

/// Training seconds (`train_s + mine_s`, evaluation excluded) through the
/// first evaluated epoch at or above `target`; None: did not finish.
pub fn time_to_target(rows: &[EpochRow], metric_name: &str, target: f64) -> Option<f64> {
    let mut t = 0.0;
    for r in rows {
        t += r.train_s + r.mine_s;
        if metric(r, metric_name).is_some_and(|m| m >= target) {
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

/// Per-arm aggregates, one row of summary.csv.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArmSummary {
    pub arm: String,
    pub seeds: usize,
    pub failed: usize,
    pub final_map_mean: Option<f64>,
    pub final_map_std: Option<f64>,
    pub train_s_per_epoch: Option<(f64, f64)>,
    pub mine_s_per_epoch: Option<(f64, f64)>,
    pub eval_s_per_epoch: Option<(f64, f64)>,
    pub s_per_iter: Option<(f64, f64)>,
    pub total_wall_s: Option<(f64, f64)>,
    /// Time to target of the seeds that reached it, and how many of the seeds did.
    pub time_to_target: Option<(f64, f64)>,
    pub reached: usize,
}

/// One speed-up: baseline / arm, with a 95% bootstrap interval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speedup {
    pub baseline: String,
    pub arm: String,
    pub measure: String,
    pub ratio: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    pub note: String,
}

/// A statistic of the two arms' means, `stat(mean(base), mean(arm))`, and its
/// percentile-bootstrap 95% interval, resampling each arm's seeds.
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

/// Ratio of means `mean(base) / mean(arm)` and its percentile-bootstrap 95% interval, resampling each arm's seeds.
pub fn bootstrap_ratio(base: &[f64], arm: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64, f64)> {
    bootstrap(base, arm, resamples, seed, |b, a| b / a)
}

/// Mean difference `mean(arm) - mean(base)` and its percentile-bootstrap 95% interval.
pub fn bootstrap_diff(base: &[f64], arm: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64, f64)> {
    bootstrap(base, arm, resamples, seed, |b, a| a - b)
}

/// The word of a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Word {
    Supported,
    Contradicted,
    NotResolved,
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Word::Supported => "supported",
            Word::Contradicted => "contradicted",
            Word::NotResolved => "not resolved",
        })
    }
}

/// Judges "about `expected`× (within `tolerance`)" against a ratio's 95%
/// interval `[lo, hi]` from `seeds` seeds per arm. Supported: the interval
/// lies inside `[expected / tolerance, expected × tolerance]`; contradicted:
/// wholly outside; otherwise not resolved, with the seeds per arm that would
/// resolve it: the interval's half-width (on a log scale) shrinks as
/// 1/sqrt(seeds), and it must shrink below the distance from the ratio to the
/// nearest edge of the band. None when that distance is zero.
pub fn judge(ratio: f64, lo: f64, hi: f64, expected: f64, tolerance: f64, seeds: usize) -> (Word, Option<usize>) {
    let (band_lo, band_hi) = (expected / tolerance, expected * tolerance);
    if lo >= band_lo && hi <= band_hi {
        return (Word::Supported, None);
    }
    if hi < band_lo || lo > band_hi {
        return (Word::Contradicted, None);
    }
    let half = (hi.ln() - lo.ln()) / 2.0;
    let dist = (ratio.ln() - band_lo.ln()).abs().min((ratio.ln() - band_hi.ln()).abs());
    if !(dist > 1e-9) || !half.is_finite() {
        return (Word::NotResolved, None);
    }
    let need = (seeds.max(1) as f64 * (half / dist).powi(2)).ceil() as usize;
    (Word::NotResolved, Some(need.max(seeds + 1)))
}

/// A verdict line of summary.md (a row of verdicts.csv).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub claim: String,
    pub baseline: String,
    pub arm: String,
    pub measure: String,
    pub expected: f64,
    pub band_lo: f64,
    pub band_hi: f64,
    pub ratio: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    pub verdict: Word,
    pub seeds: usize,
    pub seeds_needed: Option<usize>,
    /// Final mAP, arm − baseline, with its 95% interval.
    pub map_diff: Option<f64>,
    pub map_diff_lo: Option<f64>,
    pub map_diff_hi: Option<f64>,
    pub note: String,
}

/// Reads every cell of a results directory.
pub fn load_runs(results: &Path) -> Result<(GridMeta, Vec<RunLog>)> {
    let gpath = results.join(GRID_JSON);
    let meta: GridMeta = serde_json::from_str(&std::fs::read_to_string(&gpath).with_context(|| format!("reading {} (is {} a results directory of `harness run`?)", gpath.display(), results.display()))?)
        .with_context(|| format!("parsing {}", gpath.display()))?;
    let mut runs = Vec::new();
    let cells = results.join(CELLS);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cells).with_context(|| format!("reading {}", cells.display()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for d in dirs {
        let cpath = d.join(CELL_JSON);
        let Ok(text) = std::fs::read_to_string(&cpath) else { continue };
        let cell: CellMeta = serde_json::from_str(&text).with_context(|| format!("parsing {}", cpath.display()))?;
        let status = read_status(&d);
        let rows = read_metrics(&d.join(METRICS))?;
        let mining = read_csv(&d.join(MINING))?;
        runs.push(RunLog {
            mining,
            arm: cell.arm,
            seed: cell.seed,
            state: status.as_ref().map(|s| s.state).unwrap_or(State::Pending),
            reason: status.and_then(|s| s.reason),
            rows,
            epochs: cell.epochs,
        });
    }
    Ok((meta, runs))
}

/// The long table of every epoch of every run, as a polars DataFrame.
pub fn long_table(runs: &[RunLog], metric_name: &str) -> Result<DataFrame> {
    let rows: Vec<(&RunLog, &EpochRow)> = runs.iter().flat_map(|r| r.rows.iter().map(move |e| (r, e))).collect();
    let df = df!(
        "arm" => rows.iter().map(|(r, _)| r.arm.clone()).collect::<Vec<_>>(),
        "seed" => rows.iter().map(|(r, _)| r.seed).collect::<Vec<_>>(),
        "state" => rows.iter().map(|(r, _)| format!("{:?}", r.state).to_lowercase()).collect::<Vec<_>>(),
        "epoch" => rows.iter().map(|(_, e)| e.epoch as u64).collect::<Vec<_>>(),
        "iterations" => rows.iter().map(|(_, e)| e.iterations as u64).collect::<Vec<_>>(),
        "train_s" => rows.iter().map(|(_, e)| e.train_s).collect::<Vec<_>>(),
        "mine_s" => rows.iter().map(|(_, e)| e.mine_s).collect::<Vec<_>>(),
        "eval_s" => rows.iter().map(|(_, e)| e.eval_s).collect::<Vec<_>>(),
        "wall_s" => rows.iter().map(|(_, e)| e.wall_s).collect::<Vec<_>>(),
        "s_per_iter" => rows.iter().map(|(_, e)| e.train_s / e.iterations.max(1) as f64).collect::<Vec<_>>(),
        "loss" => rows.iter().map(|(_, e)| e.loss).collect::<Vec<_>>(),
        "fg_fraction" => rows.iter().map(|(_, e)| e.fg_fraction).collect::<Vec<_>>(),
        "sel_loss" => rows.iter().map(|(_, e)| e.sel_loss).collect::<Vec<_>>(),
        "all_loss" => rows.iter().map(|(_, e)| e.all_loss).collect::<Vec<_>>(),
        "cache_size" => rows.iter().map(|(_, e)| e.cache_size as u64).collect::<Vec<_>>(),
        "map" => rows.iter().map(|(_, e)| metric(e, metric_name)).collect::<Vec<_>>()
    )?;
    Ok(df)
}

/// mean ± std of a column over the rows of one arm's finished runs.
fn column_stats(df: &DataFrame, arm: &str, col: &str) -> Result<Option<(f64, f64)>> {
    let mask = df.column("arm")?.str()?.equal(arm) & df.column("state")?.str()?.equal("done");
    let sub = df.filter(&mask)?;
    let c = sub.column(col)?.f64()?;
    Ok(c.mean().map(|m| (m, c.std(1).filter(|s| s.is_finite()).unwrap_or(0.0))))
}

fn fmt_ms(v: Option<(f64, f64)>, digits: usize) -> String {
    v.map(|(m, s)| if s.is_finite() { format!("{m:.digits$} ± {s:.digits$}") } else { format!("{m:.digits$} ± —") }).unwrap_or_else(|| "—".into())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "—".into())
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
    let (meta, runs) = load_runs(results)?;
    if runs.is_empty() {
        bail!("{} holds no cells", results.join(CELLS).display());
    }
    let metric_name = meta.report.metric.as_str();
    let mut long = long_table(&runs, metric_name)?;
    let done: Vec<&RunLog> = runs.iter().filter(|r| r.state == State::Done && !r.rows.is_empty()).collect();
    let by_arm = |arm: &str| -> Vec<&RunLog> { done.iter().copied().filter(|r| r.arm == arm).collect() };

    // final mAP per arm, then the target
    let finals: BTreeMap<&str, Vec<f64>> = meta.arms.iter().map(|a| (a.as_str(), by_arm(a).iter().filter_map(|r| r.rows.iter().rev().find_map(|e| metric(e, metric_name))).collect())).collect();
    let best_final = finals.values().filter_map(|v| mean_std(v).map(|m| m.0)).fold(f64::NAN, f64::max);
    let (target, target_note) = match meta.report.target_map {
        Some(t) => (t, format!("{t:.4} (set in the grid file)")),
        None => (meta.report.target_fraction * best_final, format!("{:.4} = {} × the best final mean {metric_name} ({best_final:.4})", meta.report.target_fraction * best_final, meta.report.target_fraction)),
    };

    // offline-mining arms whose cache stayed empty are fixed-ratio in disguise
    let mut notes = Vec::new();
    let mut mining_flags = Vec::new();
    for arm in &meta.arms {
        let rs: Vec<&RunLog> = by_arm(arm).into_iter().filter(|r| r.mines()).collect();
        let empty = rs.iter().filter(|r| r.mined_nothing()).count();
        let first_empty = rs.iter().filter(|r| r.mining.first().is_some_and(|m| m.mined == 0)).count();
        if empty > 0 {
            mining_flags.push((arm.clone(), format!("{arm} mined nothing in {empty} of {} seeds: in those seeds this arm is fixed-ratio (plus a mining stall), not hard-negative mining", rs.len())));
        } else if first_empty > 0 {
            mining_flags.push((arm.clone(), format!("{arm}: the first mining round left the cache empty in {first_empty} of {} seeds", rs.len())));
        }
    }
    notes.extend(mining_flags.iter().map(|f| format!("warning: {}", f.1)));

    let mut summaries = Vec::new();
    for arm in &meta.arms {
        let rs = by_arm(arm);
        let failed = runs.iter().filter(|r| &r.arm == arm && r.state == State::Failed).count();
        let ttt: Vec<f64> = rs.iter().filter_map(|r| time_to_target(&r.rows, metric_name, target)).collect();
        let fm = mean_std(&finals[arm.as_str()]);
        summaries.push(ArmSummary {
            arm: arm.clone(),
            seeds: rs.len(),
            failed,
            final_map_mean: fm.map(|m| m.0),
            final_map_std: fm.map(|m| m.1).filter(|s| s.is_finite()),
            train_s_per_epoch: column_stats(&long, arm, "train_s")?,
            mine_s_per_epoch: column_stats(&long, arm, "mine_s")?,
            eval_s_per_epoch: column_stats(&long, arm, "eval_s")?,
            s_per_iter: column_stats(&long, arm, "s_per_iter")?,
            total_wall_s: mean_std(&rs.iter().map(|r| r.rows.last().map(|e| e.wall_s).unwrap_or(0.0)).collect::<Vec<_>>()),
            time_to_target: mean_std(&ttt),
            reached: ttt.len(),
        });
    }

    // speed-ups against each baseline
    let baselines: Vec<String> = if meta.report.baselines.is_empty() { meta.arms.iter().take(1).cloned().collect() } else { meta.report.baselines.clone() };
    let per_seed = |arm: &str, measure: &str| -> (Vec<f64>, usize) {
        let rs = by_arm(arm);
        let v: Vec<f64> = match measure {
            "time_to_target" => rs.iter().filter_map(|r| time_to_target(&r.rows, metric_name, target)).collect(),
            "total_wall_s" => rs.iter().filter_map(|r| r.rows.last().map(|e| e.wall_s)).collect(),
            _ => rs.iter().map(|r| r.rows.iter().map(|e| e.train_s / e.iterations.max(1) as f64).sum::<f64>() / r.rows.len() as f64).collect(),
        };
        (v, rs.len())
    };
    let mut speedups = Vec::new();
    for (bi, b) in baselines.iter().enumerate() {
        for a in meta.arms.iter().filter(|a| *a != b) {
            for measure in ["time_to_target", "total_wall_s", "s_per_iter"] {
                let (bv, bn) = per_seed(b, measure);
                let (av, an) = per_seed(a, measure);
                let dnf = measure == "time_to_target" && (bv.len() < bn || av.len() < an);
                let r = if dnf { None } else { bootstrap_ratio(&bv, &av, meta.report.bootstrap, 1000 + bi as u64) };
                let note = if dnf { format!("DNF: {} of {an} {a} and {} of {bn} {b} seeds reached the target", av.len(), bv.len()) } else if r.is_none() { "no finished seeds".into() } else { String::new() };
                speedups.push(Speedup { baseline: b.clone(), arm: a.clone(), measure: measure.into(), ratio: r.map(|x| x.0), ci_lo: r.map(|x| x.1), ci_hi: r.map(|x| x.2), note });
            }
        }
    }

    // final-mAP differences against each baseline (what an ablation reads)
    let mut map_diffs = Vec::new();
    for (bi, b) in baselines.iter().enumerate() {
        for (ai, a) in meta.arms.iter().enumerate().filter(|(_, a)| *a != b) {
            let (bv, av) = (finals.get(b.as_str()).cloned().unwrap_or_default(), finals.get(a.as_str()).cloned().unwrap_or_default());
            let d = bootstrap_diff(&bv, &av, meta.report.bootstrap, 9000 + (bi * 1000 + ai) as u64);
            map_diffs.push((b.clone(), a.clone(), d, bv.len(), av.len()));
        }
    }

    // verdicts on the claims the grid names
    let mut verdicts = Vec::new();
    for (vi, v) in meta.report.verdicts.iter().enumerate() {
        let (bv, bn) = per_seed(&v.baseline, &v.measure);
        let (av, an) = per_seed(&v.arm, &v.measure);
        let seeds = bn.min(an);
        let (band_lo, band_hi) = (v.expected / v.tolerance, v.expected * v.tolerance);
        let final_of = |arm: &str| finals.get(arm).cloned().unwrap_or_default();
        let md = bootstrap_diff(&final_of(&v.baseline), &final_of(&v.arm), meta.report.bootstrap, 7000 + vi as u64);
        let dnf = v.measure == "time_to_target" && (bv.len() < bn || av.len() < an);
        let r = if dnf { None } else { bootstrap_ratio(&bv, &av, meta.report.bootstrap, 5000 + vi as u64) };
        let (word, need, note) = match r {
            Some((ratio, lo, hi)) => {
                let (w, n) = judge(ratio, lo, hi, v.expected, v.tolerance, seeds);
                let note = match (w, n) {
                    (Word::NotResolved, Some(n)) => format!("about {n} seeds per arm would resolve it at the observed spread"),
                    (Word::NotResolved, None) => "the ratio sits on the edge of the band: no number of seeds resolves it".into(),
                    _ => String::new(),
                };
                (w, n, note)
            }
            None if dnf => (Word::NotResolved, None, format!("DNF: {} of {an} {} and {} of {bn} {} seeds reached the target; lower report.target_map or train longer", av.len(), v.arm, bv.len(), v.baseline)),
            None => (Word::NotResolved, None, "no finished seeds".into()),
        };
        let mut note = note;
        for (arm, f) in &mining_flags {
            if *arm == v.arm || *arm == v.baseline {
                note = format!("{note}{}caution: {f}", if note.is_empty() { "" } else { "; " });
            }
        }
        verdicts.push(Verdict {
            claim: v.claim.clone(),
            baseline: v.baseline.clone(),
            arm: v.arm.clone(),
            measure: v.measure.clone(),
            expected: v.expected,
            band_lo,
            band_hi,
            ratio: r.map(|x| x.0),
            ci_lo: r.map(|x| x.1),
            ci_hi: r.map(|x| x.2),
            verdict: word,
            seeds,
            seeds_needed: need,
            map_diff: md.map(|x| x.0),
            map_diff_lo: md.map(|x| x.1),
            map_diff_hi: md.map(|x| x.2),
            note,
        });
    }
    let verdict_line = |v: &Verdict| {
        format!(
            "\"{}\": {}/{} {} = {} (95% CI {}; band {:.2}-{:.2}x, {} seeds): **{}**{}. Final {metric_name} {} − {} = {} (95% CI {}).",
            v.claim,
            v.baseline,
            v.arm,
            v.measure,
            v.ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()),
            v.ci_lo.zip(v.ci_hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into()),
            v.band_lo,
            v.band_hi,
            v.seeds,
            v.verdict,
            if v.note.is_empty() { String::new() } else { format!(" ({})", v.note) },
            v.arm,
            v.baseline,
            v.map_diff.map(|d| format!("{d:+.4}")).unwrap_or_else(|| "—".into()),
            v.map_diff_lo.zip(v.map_diff_hi).map(|(l, h)| format!("[{l:+.4}, {h:+.4}]")).unwrap_or_else(|| "—".into()),
        )
    };
    notes.extend(verdicts.iter().map(|v| format!("verdict: {}", verdict_line(v).replace("**", ""))));

    // CSV outputs (polars)
    let f = |v: Option<(f64, f64)>, i: usize| v.map(|x| if i == 0 { x.0 } else { x.1 }).filter(|x| x.is_finite());
    let mut summary_df = df!(
        "arm" => summaries.iter().map(|s| s.arm.clone()).collect::<Vec<_>>(),
        "seeds" => summaries.iter().map(|s| s.seeds as u64).collect::<Vec<_>>(),
        "failed" => summaries.iter().map(|s| s.failed as u64).collect::<Vec<_>>(),
        "final_map_mean" => summaries.iter().map(|s| s.final_map_mean).collect::<Vec<_>>(),
        "final_map_std" => summaries.iter().map(|s| s.final_map_std).collect::<Vec<_>>(),
        "train_s_mean" => summaries.iter().map(|s| f(s.train_s_per_epoch, 0)).collect::<Vec<_>>(),
        "train_s_std" => summaries.iter().map(|s| f(s.train_s_per_epoch, 1)).collect::<Vec<_>>(),
        "mine_s_mean" => summaries.iter().map(|s| f(s.mine_s_per_epoch, 0)).collect::<Vec<_>>(),
        "mine_s_std" => summaries.iter().map(|s| f(s.mine_s_per_epoch, 1)).collect::<Vec<_>>(),
        "eval_s_mean" => summaries.iter().map(|s| f(s.eval_s_per_epoch, 0)).collect::<Vec<_>>(),
        "eval_s_std" => summaries.iter().map(|s| f(s.eval_s_per_epoch, 1)).collect::<Vec<_>>(),
        "s_per_iter_mean" => summaries.iter().map(|s| f(s.s_per_iter, 0)).collect::<Vec<_>>(),
        "s_per_iter_std" => summaries.iter().map(|s| f(s.s_per_iter, 1)).collect::<Vec<_>>(),
        "total_wall_s_mean" => summaries.iter().map(|s| f(s.total_wall_s, 0)).collect::<Vec<_>>(),
        "total_wall_s_std" => summaries.iter().map(|s| f(s.total_wall_s, 1)).collect::<Vec<_>>(),
        "time_to_target_mean" => summaries.iter().map(|s| f(s.time_to_target, 0)).collect::<Vec<_>>(),
        "time_to_target_std" => summaries.iter().map(|s| f(s.time_to_target, 1)).collect::<Vec<_>>(),
        "reached_target" => summaries.iter().map(|s| s.reached as u64).collect::<Vec<_>>(),
        "did_not_finish" => summaries.iter().map(|s| (s.seeds - s.reached) as u64).collect::<Vec<_>>()
    )?;
    let mut speed_df = df!(
        "baseline" => speedups.iter().map(|s| s.baseline.clone()).collect::<Vec<_>>(),
        "arm" => speedups.iter().map(|s| s.arm.clone()).collect::<Vec<_>>(),
        "measure" => speedups.iter().map(|s| s.measure.clone()).collect::<Vec<_>>(),
        "speedup" => speedups.iter().map(|s| s.ratio).collect::<Vec<_>>(),
        "ci95_lo" => speedups.iter().map(|s| s.ci_lo).collect::<Vec<_>>(),
        "ci95_hi" => speedups.iter().map(|s| s.ci_hi).collect::<Vec<_>>(),
        "note" => speedups.iter().map(|s| s.note.clone()).collect::<Vec<_>>()
    )?;
    let mut verdict_df = df!(
        "claim" => verdicts.iter().map(|v| v.claim.clone()).collect::<Vec<_>>(),
        "baseline" => verdicts.iter().map(|v| v.baseline.clone()).collect::<Vec<_>>(),
        "arm" => verdicts.iter().map(|v| v.arm.clone()).collect::<Vec<_>>(),
        "measure" => verdicts.iter().map(|v| v.measure.clone()).collect::<Vec<_>>(),
        "expected" => verdicts.iter().map(|v| v.expected).collect::<Vec<_>>(),
        "band_lo" => verdicts.iter().map(|v| v.band_lo).collect::<Vec<_>>(),
        "band_hi" => verdicts.iter().map(|v| v.band_hi).collect::<Vec<_>>(),
        "ratio" => verdicts.iter().map(|v| v.ratio).collect::<Vec<_>>(),
        "ci95_lo" => verdicts.iter().map(|v| v.ci_lo).collect::<Vec<_>>(),
        "ci95_hi" => verdicts.iter().map(|v| v.ci_hi).collect::<Vec<_>>(),
        "verdict" => verdicts.iter().map(|v| v.verdict.to_string()).collect::<Vec<_>>(),
        "seeds" => verdicts.iter().map(|v| v.seeds as u64).collect::<Vec<_>>(),
        "seeds_needed" => verdicts.iter().map(|v| v.seeds_needed.map(|n| n as u64)).collect::<Vec<_>>(),
        "final_map_diff" => verdicts.iter().map(|v| v.map_diff).collect::<Vec<_>>(),
        "final_map_diff_lo" => verdicts.iter().map(|v| v.map_diff_lo).collect::<Vec<_>>(),
        "final_map_diff_hi" => verdicts.iter().map(|v| v.map_diff_hi).collect::<Vec<_>>(),
        "note" => verdicts.iter().map(|v| v.note.clone()).collect::<Vec<_>>()
    )?;
    let mining_runs: Vec<(&RunLog, &MiningRow)> = runs.iter().flat_map(|r| r.mining.iter().map(move |m| (r, m))).collect();
    let mut mining_df = df!(
        "arm" => mining_runs.iter().map(|(r, _)| r.arm.clone()).collect::<Vec<_>>(),
        "seed" => mining_runs.iter().map(|(r, _)| r.seed).collect::<Vec<_>>(),
        "round" => mining_runs.iter().map(|(_, m)| m.round as u64).collect::<Vec<_>>(),
        "epoch" => mining_runs.iter().map(|(_, m)| m.epoch as u64).collect::<Vec<_>>(),
        "seconds" => mining_runs.iter().map(|(_, m)| m.seconds).collect::<Vec<_>>(),
        "mined" => mining_runs.iter().map(|(_, m)| m.mined as u64).collect::<Vec<_>>(),
        "negatives" => mining_runs.iter().map(|(_, m)| m.negatives as u64).collect::<Vec<_>>(),
        "empty_images" => mining_runs.iter().map(|(_, m)| m.empty_images as u64).collect::<Vec<_>>(),
        "mined_loss" => mining_runs.iter().map(|(_, m)| m.mined_loss).collect::<Vec<_>>(),
        "random_loss" => mining_runs.iter().map(|(_, m)| m.random_loss).collect::<Vec<_>>(),
        "mined_fg_score" => mining_runs.iter().map(|(_, m)| m.mined_fg_score).collect::<Vec<_>>(),
        "random_fg_score" => mining_runs.iter().map(|(_, m)| m.random_fg_score).collect::<Vec<_>>(),
        "prev_still_hard" => mining_runs.iter().map(|(_, m)| m.prev_still_hard).collect::<Vec<_>>()
    )?;
    let mut diff_df = df!(
        "baseline" => map_diffs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        "arm" => map_diffs.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
        "final_map_diff" => map_diffs.iter().map(|d| d.2.map(|x| x.0)).collect::<Vec<_>>(),
        "ci95_lo" => map_diffs.iter().map(|d| d.2.map(|x| x.1)).collect::<Vec<_>>(),
        "ci95_hi" => map_diffs.iter().map(|d| d.2.map(|x| x.2)).collect::<Vec<_>>(),
        "baseline_seeds" => map_diffs.iter().map(|d| d.3 as u64).collect::<Vec<_>>(),
        "arm_seeds" => map_diffs.iter().map(|d| d.4 as u64).collect::<Vec<_>>()
    )?;
    for (name, df) in [("summary.csv", &mut summary_df), ("speedups.csv", &mut speed_df), ("map_diffs.csv", &mut diff_df), ("verdicts.csv", &mut verdict_df), ("mining.csv", &mut mining_df), ("runs.csv", &mut long)] {
        let mut buf = Vec::new();
        CsvWriter::new(&mut buf).finish(df)?;
        crate::data::voc::write_file(&results.join(name), &buf)?;
    }

    let chart_files = charts::draw_all(results, &meta, &done, &summaries, &speedups, metric_name)?;

    // summary.md
    let mut md = format!("# {}: summary\n\nGenerated by `harness report {}` from the logs alone. Metric: {metric_name} on the test split.\n\n", meta.name, results.display());
    if !verdicts.is_empty() {
        md.push_str("## Verdicts\n\nA claim \"about Rx\" is supported when the 95% interval of the speed-up lies inside the band [R / tolerance, R × tolerance], contradicted when it lies wholly outside, and not resolved otherwise.\n\n");
        for v in &verdicts {
            md.push_str(&format!("- {}\n", verdict_line(v)));
        }
        md.push('\n');
    }
    if !mining_flags.is_empty() {
        md.push_str("## Warnings\n\n");
        for (_, f) in &mining_flags {
            md.push_str(&format!("- **{f}**\n"));
        }
        md.push('\n');
    }
    md.push_str("## Arms\n\n");
    md.push_str(&format!("Target for time-to-target: {target_note}. Time to target is training time, mining included and evaluation excluded: the cumulative train + mine seconds through the first evaluated epoch at or above the target. DNF = did not reach it; never dropped. ± is the std over seeds (— with one seed).\n\n"));
    md.push_str("| arm | seeds | failed | final mAP | train s/epoch | mine s/epoch | eval s/epoch | s/iter | total wall s | time to target s | reached |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in &summaries {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |\n",
            s.arm,
            s.seeds,
            s.failed,
            fmt_ms(s.final_map_mean.map(|m| (m, s.final_map_std.unwrap_or(f64::NAN))), 4),
            fmt_ms(s.train_s_per_epoch, 1),
            fmt_ms(s.mine_s_per_epoch, 1),
            fmt_ms(s.eval_s_per_epoch, 1),
            fmt_ms(s.s_per_iter, 3),
            fmt_ms(s.total_wall_s, 0),
            fmt_ms(s.time_to_target, 0),
            s.reached,
            s.seeds
        ));
    }
    md.push_str("\nSpeed-up = baseline / arm (> 1: the arm is faster), ratio of means over seeds, 95% percentile-bootstrap interval over seeds.\n\n| baseline | arm | measure | speed-up | 95% CI | note |\n|---|---|---|---|---|---|\n");
    for s in &speedups {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s.baseline,
            s.arm,
            s.measure,
            s.ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()),
            s.ci_lo.zip(s.ci_hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into()),
            s.note
        ));
    }
    md.push_str(&format!("\nFinal {metric_name}, arm − baseline (mean over seeds, 95% percentile-bootstrap interval over seeds; an interval that excludes 0 is a difference these seeds resolve).\n\n| baseline | arm | difference | 95% CI |\n|---|---|---|---|\n"));
    for (b, a, d, _, _) in &map_diffs {
        md.push_str(&format!(
            "| {b} | {a} | {} | {} |\n",
            d.map(|x| format!("{:+.4}", x.0)).unwrap_or_else(|| "—".into()),
            d.map(|x| format!("[{:+.4}, {:+.4}]", x.1, x.2)).unwrap_or_else(|| "—".into())
        ));
    }
    let miners: Vec<&String> = meta.arms.iter().filter(|a| by_arm(a).iter().any(|r| r.mines())).collect();
    if !miners.is_empty() {
        md.push_str("\nOffline mining, per round (mean over seeds): hard negatives in the cache, their mean loss against a random negative's, and the share of the previous round's cache the model still rates hard.\n\n| arm | round | mined | images left empty | mined loss | random loss | mined fg score | random fg score | previous cache still hard |\n|---|---|---|---|---|---|---|---|---|\n");
        for arm in miners {
            let rs = by_arm(arm);
            let rounds = rs.iter().map(|r| r.mining.len()).max().unwrap_or(0);
            for k in 0..rounds {
                let ms: Vec<&MiningRow> = rs.iter().filter_map(|r| r.mining.get(k)).collect();
                let avg = |f: &dyn Fn(&MiningRow) -> Option<f64>| mean_std(&ms.iter().filter_map(|m| f(m)).collect::<Vec<_>>()).map(|x| x.0);
                md.push_str(&format!(
                    "| {arm} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    k + 1,
                    fmt_opt(avg(&|m| Some(m.mined as f64)), 0),
                    fmt_opt(avg(&|m| Some(m.empty_images as f64)), 1),
                    fmt_opt(avg(&|m| m.mined_loss), 3),
                    fmt_opt(avg(&|m| m.random_loss), 3),
                    fmt_opt(avg(&|m| m.mined_fg_score), 3),
                    fmt_opt(avg(&|m| m.random_fg_score), 3),
                    fmt_opt(avg(&|m| m.prev_still_hard), 2),
                ));
            }
        }
    }
    let failed: Vec<&RunLog> = runs.iter().filter(|r| r.state == State::Failed).collect();
    if !failed.is_empty() {
        md.push_str("\nFailed cells:\n\n");
        for r in failed {
            md.push_str(&format!("- {} seed {}: {}\n", r.arm, r.seed, r.reason.clone().unwrap_or_default()));
        }
    }
    md.push_str("\nCharts:\n\n");
    for c in &chart_files {
        md.push_str(&format!("![{c}]({c})\n"));
    }
    let path = results.join("summary.md");
    crate::data::voc::write_file(&path, md.as_bytes())?;
    Ok(Generated { summary: path, notes })
}
