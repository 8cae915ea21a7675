//! Stage 1 of the report: the logs per arm. One long polars table of every
//! epoch of every run, each arm's final mAP over its seeds, the time-to-target
//! target, and the per-arm rows of summary.csv.

use std::collections::BTreeMap;

use anyhow::Result;
use polars::prelude::*;

use super::stats::Seeded;
use super::{mean_std, time_to_target, RunLog};
use crate::eval::Metric;
use crate::rundir::{EpochRow, GridMeta, Measure, Regime, State};

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

/// The runs of a results directory, aggregated per arm: what every later stage reads.
pub struct Aggregate<'a> {
    pub meta: &'a GridMeta,
    pub runs: &'a [RunLog],
    /// Finished runs with at least one epoch.
    pub done: Vec<&'a RunLog>,
    /// Every epoch of every run (`runs.csv`).
    pub long: DataFrame,
    /// Per arm, the final mAP of each finished seed.
    pub finals: BTreeMap<String, Vec<Seeded>>,
    /// The mAP of time to target, and how it was set (for summary.md).
    pub target: f64,
    pub target_note: String,
    /// One per arm, in grid order.
    pub summaries: Vec<ArmSummary>,
    /// Per arm, the finished seeds whose timings are not to be read, and why
    /// ([`RunLog::timing_flag`]): left out of every timing comparison.
    pub flagged: BTreeMap<String, BTreeMap<u64, String>>,
    /// Nadeau and Bengio's n_test / n_train over the cells' resampled splits (0 without
    /// splits): every interval over units is widened by it ([`super::stats::compare_units`]).
    pub rho: f64,
    /// How many resampled splits the finished cells ran on (0 without `splits:`).
    pub splits: usize,
    /// Whether any finished cell logged its CPU seconds (on the CPU): only then is
    /// `cpu_s_per_iter` compared (older logs' reports are unchanged).
    pub has_cpu: bool,
}

impl<'a> Aggregate<'a> {
    pub fn metric(&self) -> Metric {
        self.meta.report.metric
    }

    /// The finished runs of `arm`.
    pub fn by_arm(&self, arm: &str) -> Vec<&'a RunLog> {
        self.done.iter().copied().filter(|r| r.arm == arm).collect()
    }

    /// The final mAP of each finished seed of `arm`.
    pub fn finals_of(&self, arm: &str) -> Vec<Seeded> {
        self.finals.get(arm).cloned().unwrap_or_default()
    }

    /// The finished runs of `arm` whose timings a comparison with `other` may read: those of
    /// seeds flagged in neither arm (so that a seed left out of one arm leaves the other too,
    /// and the comparison stays paired).
    pub fn timed(&self, arm: &str, other: &str) -> Vec<&'a RunLog> {
        let flagged = |a: &str, seed: u64| self.flagged.get(a).is_some_and(|f| f.contains_key(&seed));
        self.by_arm(arm).into_iter().filter(|r| !flagged(arm, r.unit()) && !flagged(other, r.unit())).collect()
    }

    /// `measure` (a timing) for each timed seed of `arm` against `other` that has it, and how
    /// many timed seeds there are; time to target at `agg.target`.
    pub fn per_seed(&self, arm: &str, other: &str, measure: Measure) -> (Vec<Seeded>, usize) {
        self.per_seed_at(arm, other, measure, self.target)
    }

    /// The regime `arm` was measured in: its model, input and data (the first
    /// finished cell's config), its device and processor (the manifest), and
    /// the mean RoIs per image over its seeds and epochs.
    pub fn regime(&self, arm: &str) -> Regime {
        let rs = self.by_arm(arm);
        let mut g = Regime::default();
        if let Some(c) = rs.iter().find_map(|r| r.config.as_ref()) {
            g.backbone = Some(format!("{:?}", c.model.backbone).to_lowercase());
            g.fc_width = Some(c.model.fc_width());
            g.input_scale = Some(c.input.scale);
            g.dataset = c.dataset.root.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        if let Some(m) = rs.iter().find_map(|r| r.manifest.as_ref()) {
            g.device = Some(m.device_used.clone().map(|d| if d.starts_with("cuda") { "gpu".into() } else { d }).unwrap_or_else(|| m.device.clone()));
            g.processor = m.cpu.clone().filter(|_| g.device.as_deref() == Some("cpu"));
        }
        let rois: Vec<f64> = rs.iter().flat_map(|r| r.rows.iter().filter_map(|e| e.rois_per_image)).collect();
        g.rois_per_image = mean_std(&rois).map(|m| m.0);
        g
    }

    /// Each finished seed of `arm`'s time to the target, censored where the run ended without
    /// reaching it: (its training time to the target, true), or (its training time through its
    /// last evaluated epoch, false).
    pub fn censored(&self, arm: &str, other: &str) -> Vec<super::stats::Censored> {
        self.timed(arm, other)
            .iter()
            .map(|r| match time_to_target(&r.rows, self.metric(), self.target) {
                Some(t) => (t, true),
                // censored at the last epoch that was evaluated: the run is known not to have
                // reached the target by then, and no later
                None => {
                    let times = super::training_time(&r.rows);
                    let last = r.rows.iter().rposition(|e| e.map(self.metric()).is_some());
                    (last.map(|i| times[i]).unwrap_or(0.0), false)
                }
            })
            .collect()
    }

    /// As [`Aggregate::per_seed`], with time to target taken at `target`.
    pub fn per_seed_at(&self, arm: &str, other: &str, measure: Measure, target: f64) -> (Vec<Seeded>, usize) {
        let rs = self.timed(arm, other);
        (rs.iter().filter_map(|r| r.measure(measure, self.metric(), target).map(|v| (r.unit(), v))).collect(), rs.len())
    }
}

/// Aggregates the runs of a grid.
pub fn aggregate<'a>(meta: &'a GridMeta, runs: &'a [RunLog]) -> Result<Aggregate<'a>> {
    let metric = meta.report.metric;
    let done: Vec<&RunLog> = runs.iter().filter(|r| r.state == State::Done && !r.rows.is_empty()).collect();
    let by_arm = |arm: &str| -> Vec<&RunLog> { done.iter().copied().filter(|r| r.arm == arm).collect() };
    let finals: BTreeMap<String, Vec<Seeded>> = meta.arms.iter().map(|a| (a.clone(), by_arm(a).iter().filter_map(|r| r.final_map(metric).map(|m| (r.unit(), m))).collect())).collect();
    let values = |v: &[Seeded]| v.iter().map(|x| x.1).collect::<Vec<f64>>();
    let best_final = finals.values().filter_map(|v| mean_std(&values(v)).map(|m| m.0)).fold(f64::NAN, f64::max);
    let (target, target_note) = match meta.report.target_map {
        Some(t) => (t, format!("{t:.4} (set in the grid file)")),
        None => {
            let t = meta.report.target_fraction * best_final;
            (t, format!("{t:.4} = {} × the best final mean {} ({best_final:.4})", meta.report.target_fraction, metric.column()))
        }
    };
    let long = long_table(runs, metric)?;
    let mut summaries = Vec::new();
    for arm in &meta.arms {
        let rs = by_arm(arm);
        let failed = runs.iter().filter(|r| &r.arm == arm && r.state == State::Failed).count();
        let ttt: Vec<f64> = rs.iter().filter_map(|r| time_to_target(&r.rows, metric, target)).collect();
        let fm = mean_std(&values(&finals[arm]));
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
    let mut flagged: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let common = common_machine(&done);
    for r in &done {
        let other = r.machine().zip(common.as_ref()).filter(|(m, c)| m != *c);
        let why = r.timing_flag().or_else(|| other.map(|(m, c)| format!("it ran on {m}, and most of the study's cells on {c}: timings of two machines do not compare")));
        if let Some(why) = why {
            flagged.entry(r.arm.clone()).or_default().insert(r.unit(), why);
        }
    }
    // Nadeau and Bengio's correction: the mean share of test to training images over the
    // finished cells' splits (0 without splits: the seed-only interval, unchanged)
    let ratios: Vec<f64> = done.iter().filter_map(|r| r.split.as_ref()).map(|s| s.test as f64 / s.train.max(1) as f64).collect();
    let rho = if ratios.is_empty() { 0.0 } else { ratios.iter().sum::<f64>() / ratios.len() as f64 };
    let splits = done.iter().filter_map(|r| r.split.as_ref().map(|s| s.index)).collect::<std::collections::BTreeSet<_>>().len();
    let has_cpu = done.iter().any(|r| r.cpu_s_per_iter().is_some());
    Ok(Aggregate { meta, runs, done, long, finals, target, target_note, summaries, flagged, rho, splits, has_cpu })
}

/// The machine most of the finished runs ran on ([`RunLog::machine`]; a tie goes to the one
/// named first in sort order), or None where no run has a manifest.
fn common_machine(done: &[&RunLog]) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for m in done.iter().filter_map(|r| r.machine()) {
        *counts.entry(m).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == most).map(|(m, _)| m)
}

/// The long table of every epoch of every run, as a polars DataFrame.
pub fn long_table(runs: &[RunLog], metric: Metric) -> Result<DataFrame> {
    let rows: Vec<(&RunLog, &EpochRow)> = runs.iter().flat_map(|r| r.rows.iter().map(move |e| (r, e))).collect();
    let mut df = df!(
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
        "map" => rows.iter().map(|(_, e)| e.map(metric)).collect::<Vec<_>>()
    )?;
    if runs.iter().any(|r| r.split.is_some()) {
        let split = Column::new("split".into(), rows.iter().map(|(r, _)| r.split.as_ref().map(|s| s.label.clone()).unwrap_or_default()).collect::<Vec<_>>());
        df.insert_column(2, split)?;
    }
    Ok(df)
}

/// Mean and std over seeds of a column's per-seed mean over the epochs of one
/// arm's finished runs (std NaN with one seed: no spread to speak of).
fn column_stats(df: &DataFrame, arm: &str, col: &str) -> Result<Option<(f64, f64)>> {
    let mask = df.column("arm")?.str()?.equal(arm) & df.column("state")?.str()?.equal("done");
    let sub = df.filter(&mask)?;
    let seeds = sub.column("seed")?.u64()?;
    // the unit: the seed, or (split, seed) where the table has splits
    let splits: Vec<String> = match sub.column("split") {
        Ok(c) => c.str()?.iter().map(|x| x.unwrap_or_default().to_string()).collect(),
        Err(_) => vec![String::new(); sub.height()],
    };
    let mut uniq: Vec<(String, u64)> = splits.iter().cloned().zip(seeds.iter().flatten()).collect();
    uniq.sort_unstable();
    uniq.dedup();
    let mut per_seed = Vec::new();
    for (split, seed) in uniq {
        let in_split = BooleanChunked::from_iter(splits.iter().map(|x| *x == split));
        let rows = sub.filter(&(seeds.equal(seed) & in_split))?;
        per_seed.extend(rows.column(col)?.f64()?.mean());
    }
    Ok(mean_std(&per_seed))
}

