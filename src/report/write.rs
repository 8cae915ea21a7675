//! Stage 3 of the report: the writers. The CSV tables (polars) and the text
//! of summary.md; the charts are in [`super::charts`].

use std::path::Path;

use anyhow::Result;
use polars::prelude::*;

use super::aggregate::Aggregate;
use super::compare::{family_text, finding_line, Finding, MapDiff, Speedup, TargetPoint, Verdict, Warning};
use super::{mean_std, RunLog};
use crate::eval::Metric;
use crate::rundir::{write_file, MiningRow};

fn fmt_ms(v: Option<(f64, f64)>, digits: usize) -> String {
    v.map(|(m, s)| if s.is_finite() { format!("{m:.digits$} ± {s:.digits$}") } else { format!("{m:.digits$} ± —") }).unwrap_or_else(|| "—".into())
}

/// How an interval was made: "paired t, 4 df" or "Welch t, 5.3 df".
fn interval_kind(e: super::stats::Estimate) -> String {
    match (e.ci, e.paired) {
        (None, _) => String::new(),
        (Some((lo, hi)), _) if lo == hi => super::compare::NO_SPREAD.into(),
        (Some(_), true) => format!("paired t, {:.0} df", e.df),
        (Some(_), false) => format!("Welch t, {:.1} df", e.df),
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "—".into())
}

/// A verdict's sentence on the final mAPs ("" when they were not compared: a note says why).
fn map_sentence(v: &Verdict, metric: Metric) -> String {
    match v.map_diff {
        Some(d) => format!(
            "Final {} {} − {} = {d:+.4} ({} CI {}).",
            metric.column(),
            v.arm,
            v.baseline,
            family_text(v.family),
            v.map_diff_lo.zip(v.map_diff_hi).map(|(l, h)| format!("[{l:+.4}, {h:+.4}]")).unwrap_or_else(|| "—".into())
        ),
        None => String::new(),
    }
}

/// A verdict as summary.md lists it: its claim, ratio, interval and word on the first line,
/// and under it one line per remark, the final mAPs and the regime it was measured in.
pub fn verdict_md(v: &Verdict, metric: Metric) -> String {
    let mut md = format!("- {}.\n", verdict_head(v));
    for n in &v.notes {
        md.push_str(&format!("  - {n}\n"));
    }
    let map = map_sentence(v, metric);
    if !map.is_empty() {
        md.push_str(&format!("  - {map}\n"));
    }
    md.push_str(&format!("  - Measured in: {}.\n", v.regime.describe()));
    md
}

/// A verdict's claim, ratio, interval and word ("…: **not resolved**"), without a full stop.
fn verdict_head(v: &Verdict) -> String {
    format!(
        "\"{}\": {}/{} {} = {} ({} CI {}; band {:.2}-{:.2}x, {} seeds): **{}**{}",
        v.claim,
        v.baseline,
        v.arm,
        v.measure,
        v.ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()),
        family_text(v.family),
        v.ci_lo.zip(v.ci_hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into()),
        v.band_lo,
        v.band_hi,
        v.seeds,
        v.verdict,
        if v.differs.is_empty() { String::new() } else { format!(" in this regime (the claim's differs in {})", v.differs.join(", ")) },
    )
}

/// A verdict as one line (the run's closing notes; bold verdict word).
pub fn verdict_line(v: &Verdict, metric: Metric) -> String {
    let map = map_sentence(v, metric);
    let map_sentence = if map.is_empty() { map } else { format!(" {map}") };
    let note = if v.note.is_empty() { String::new() } else { format!(" ({})", v.note) };
    format!("{}{note}.{map_sentence} Measured in: {}.", verdict_head(v), v.regime.describe())
}

/// Writes `target_curve.csv`: the time-to-target ratio of each time-to-target verdict at every target both arms reach.
pub fn target_curve_csv(results: &Path, points: &[TargetPoint]) -> Result<()> {
    let mut df = df!(
        "baseline" => points.iter().map(|p| p.baseline.clone()).collect::<Vec<_>>(),
        "arm" => points.iter().map(|p| p.arm.clone()).collect::<Vec<_>>(),
        "target" => points.iter().map(|p| p.target).collect::<Vec<_>>(),
        "ratio" => points.iter().map(|p| p.ratio).collect::<Vec<_>>(),
        "family" => points.iter().map(|p| p.family as u64).collect::<Vec<_>>(),
        "ci_family_lo" => points.iter().map(|p| p.ci.map(|c| c.0)).collect::<Vec<_>>(),
        "ci_family_hi" => points.iter().map(|p| p.ci.map(|c| c.1)).collect::<Vec<_>>(),
        "baseline_reached" => points.iter().map(|p| p.reached.0 as u64).collect::<Vec<_>>(),
        "baseline_seeds" => points.iter().map(|p| p.seeds.0 as u64).collect::<Vec<_>>(),
        "arm_reached" => points.iter().map(|p| p.reached.1 as u64).collect::<Vec<_>>(),
        "arm_seeds" => points.iter().map(|p| p.seeds.1 as u64).collect::<Vec<_>>()
    )?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(&mut df)?;
    write_file(&results.join("target_curve.csv"), &buf)?;
    Ok(())
}

/// Writes summary.csv, speedups.csv, map_diffs.csv, verdicts.csv, findings.csv, mining.csv and runs.csv (polars).
pub fn tables(results: &Path, agg: &mut Aggregate, speedups: &[Speedup], map_diffs: &[MapDiff], verdicts: &[Verdict], findings: &[Finding]) -> Result<()> {
    let mut summary_df = summary_frame(agg)?;
    let mut speed_df = speedups_frame(speedups)?;
    let mut verdict_df = verdicts_frame(verdicts)?;
    let mut mining_df = mining_frame(agg)?;
    let mut diff_df = map_diffs_frame(map_diffs)?;
    let mut findings_df = findings_frame(findings)?;
    for (name, df) in [("summary.csv", &mut summary_df), ("speedups.csv", &mut speed_df), ("map_diffs.csv", &mut diff_df), ("verdicts.csv", &mut verdict_df), ("findings.csv", &mut findings_df), ("mining.csv", &mut mining_df), ("runs.csv", &mut agg.long)] {
        if name == "mining.csv" && df.height() == 0 {
            // no arm mined: no table (a stale one from an earlier report is not left behind)
            let stale = results.join(name);
            if stale.exists() {
                std::fs::remove_file(&stale).map_err(|e| anyhow::anyhow!("removing the stale {}: {e}", stale.display()))?;
            }
            continue;
        }
        let mut buf = Vec::new();
        CsvWriter::new(&mut buf).finish(df)?;
        write_file(&results.join(name), &buf)?;
    }

    Ok(())
}

/// summary.csv: one row per arm, its seeds, and each measure's mean and std over them.
fn summary_frame(agg: &Aggregate) -> PolarsResult<DataFrame> {
    let f = |v: Option<(f64, f64)>, i: usize| v.map(|x| if i == 0 { x.0 } else { x.1 }).filter(|x| x.is_finite());
    df!(
        "arm" => agg.summaries.iter().map(|s| s.arm.clone()).collect::<Vec<_>>(),
        "seeds" => agg.summaries.iter().map(|s| s.seeds as u64).collect::<Vec<_>>(),
        "failed" => agg.summaries.iter().map(|s| s.failed as u64).collect::<Vec<_>>(),
        "final_map_mean" => agg.summaries.iter().map(|s| s.final_map_mean).collect::<Vec<_>>(),
        "final_map_std" => agg.summaries.iter().map(|s| s.final_map_std).collect::<Vec<_>>(),
        "train_s_mean" => agg.summaries.iter().map(|s| f(s.train_s_per_epoch, 0)).collect::<Vec<_>>(),
        "train_s_std" => agg.summaries.iter().map(|s| f(s.train_s_per_epoch, 1)).collect::<Vec<_>>(),
        "mine_s_mean" => agg.summaries.iter().map(|s| f(s.mine_s_per_epoch, 0)).collect::<Vec<_>>(),
        "mine_s_std" => agg.summaries.iter().map(|s| f(s.mine_s_per_epoch, 1)).collect::<Vec<_>>(),
        "eval_s_mean" => agg.summaries.iter().map(|s| f(s.eval_s_per_epoch, 0)).collect::<Vec<_>>(),
        "eval_s_std" => agg.summaries.iter().map(|s| f(s.eval_s_per_epoch, 1)).collect::<Vec<_>>(),
        "s_per_iter_mean" => agg.summaries.iter().map(|s| f(s.s_per_iter, 0)).collect::<Vec<_>>(),
        "s_per_iter_std" => agg.summaries.iter().map(|s| f(s.s_per_iter, 1)).collect::<Vec<_>>(),
        "total_wall_s_mean" => agg.summaries.iter().map(|s| f(s.total_wall_s, 0)).collect::<Vec<_>>(),
        "total_wall_s_std" => agg.summaries.iter().map(|s| f(s.total_wall_s, 1)).collect::<Vec<_>>(),
        "time_to_target_mean" => agg.summaries.iter().map(|s| f(s.time_to_target, 0)).collect::<Vec<_>>(),
        "time_to_target_std" => agg.summaries.iter().map(|s| f(s.time_to_target, 1)).collect::<Vec<_>>(),
        "reached_target" => agg.summaries.iter().map(|s| s.reached as u64).collect::<Vec<_>>(),
        "did_not_finish" => agg.summaries.iter().map(|s| (s.seeds - s.reached) as u64).collect::<Vec<_>>()
    )
}

/// speedups.csv: one row per speed-up, with its 95% and family intervals.
fn speedups_frame(speedups: &[Speedup]) -> PolarsResult<DataFrame> {
    df!(
        "baseline" => speedups.iter().map(|s| s.baseline.clone()).collect::<Vec<_>>(),
        "arm" => speedups.iter().map(|s| s.arm.clone()).collect::<Vec<_>>(),
        "measure" => speedups.iter().map(|s| s.measure.name()).collect::<Vec<_>>(),
        "speedup" => speedups.iter().map(|s| s.ratio).collect::<Vec<_>>(),
        "ci95_lo" => speedups.iter().map(|s| s.ci_lo).collect::<Vec<_>>(),
        "ci95_hi" => speedups.iter().map(|s| s.ci_hi).collect::<Vec<_>>(),
        "family" => speedups.iter().map(|s| s.family as u64).collect::<Vec<_>>(),
        "ci_family_lo" => speedups.iter().map(|s| s.fw_lo).collect::<Vec<_>>(),
        "ci_family_hi" => speedups.iter().map(|s| s.fw_hi).collect::<Vec<_>>(),
        "family_interval" => speedups.iter().map(|s| family_text(s.family)).collect::<Vec<_>>(),
        "gehan_p" => speedups.iter().map(|s| s.censored.map(|c| c.p)).collect::<Vec<_>>(),
        "gehan_p_min" => speedups.iter().map(|s| s.censored.map(|c| c.p_min)).collect::<Vec<_>>(),
        "gehan_threshold" => speedups.iter().map(|s| s.censored.map(|c| c.threshold)).collect::<Vec<_>>(),
        "note" => speedups.iter().map(|s| s.note.clone()).collect::<Vec<_>>()
    )
}

/// verdicts.csv: one row per claim's verdict.
fn verdicts_frame(verdicts: &[Verdict]) -> PolarsResult<DataFrame> {
    df!(
        "claim" => verdicts.iter().map(|v| v.claim.clone()).collect::<Vec<_>>(),
        "baseline" => verdicts.iter().map(|v| v.baseline.clone()).collect::<Vec<_>>(),
        "arm" => verdicts.iter().map(|v| v.arm.clone()).collect::<Vec<_>>(),
        "measure" => verdicts.iter().map(|v| v.measure.name()).collect::<Vec<_>>(),
        "expected" => verdicts.iter().map(|v| v.expected).collect::<Vec<_>>(),
        "band_lo" => verdicts.iter().map(|v| v.band_lo).collect::<Vec<_>>(),
        "band_hi" => verdicts.iter().map(|v| v.band_hi).collect::<Vec<_>>(),
        "ratio" => verdicts.iter().map(|v| v.ratio).collect::<Vec<_>>(),
        "ci_lo" => verdicts.iter().map(|v| v.ci_lo).collect::<Vec<_>>(),
        "ci_hi" => verdicts.iter().map(|v| v.ci_hi).collect::<Vec<_>>(),
        "interval" => verdicts.iter().map(|v| family_text(v.family)).collect::<Vec<_>>(),
        "verdict" => verdicts.iter().map(|v| v.verdict.to_string()).collect::<Vec<_>>(),
        "seeds" => verdicts.iter().map(|v| v.seeds as u64).collect::<Vec<_>>(),
        "seeds_needed" => verdicts.iter().map(|v| v.seeds_needed.map(|n| n as u64)).collect::<Vec<_>>(),
        "final_map_diff" => verdicts.iter().map(|v| v.map_diff).collect::<Vec<_>>(),
        "final_map_diff_lo" => verdicts.iter().map(|v| v.map_diff_lo).collect::<Vec<_>>(),
        "final_map_diff_hi" => verdicts.iter().map(|v| v.map_diff_hi).collect::<Vec<_>>(),
        "note" => verdicts.iter().map(|v| v.note.clone()).collect::<Vec<_>>(),
        "regime" => verdicts.iter().map(|v| v.regime.describe()).collect::<Vec<_>>(),
        "claim_regime_differs_in" => verdicts.iter().map(|v| v.differs.join("; ")).collect::<Vec<_>>()
    )
}

/// mining.csv: one row per run and mining round.
fn mining_frame(agg: &Aggregate) -> PolarsResult<DataFrame> {
    let mining_runs: Vec<(&RunLog, &MiningRow)> = agg.runs.iter().flat_map(|r| r.mining.iter().map(move |m| (r, m))).collect();
    df!(
        "arm" => mining_runs.iter().map(|(r, _)| r.arm.clone()).collect::<Vec<_>>(),
        "seed" => mining_runs.iter().map(|(r, _)| r.seed).collect::<Vec<_>>(),
        "round" => mining_runs.iter().map(|(_, m)| m.round as u64).collect::<Vec<_>>(),
        "epoch" => mining_runs.iter().map(|(_, m)| m.epoch as u64).collect::<Vec<_>>(),
        "seconds" => mining_runs.iter().map(|(_, m)| m.stats.seconds).collect::<Vec<_>>(),
        "mined" => mining_runs.iter().map(|(_, m)| m.stats.mined as u64).collect::<Vec<_>>(),
        "negatives" => mining_runs.iter().map(|(_, m)| m.stats.negatives as u64).collect::<Vec<_>>(),
        "empty_images" => mining_runs.iter().map(|(_, m)| m.stats.empty_images as u64).collect::<Vec<_>>(),
        "mined_loss" => mining_runs.iter().map(|(_, m)| m.stats.mined_loss).collect::<Vec<_>>(),
        "random_loss" => mining_runs.iter().map(|(_, m)| m.stats.random_loss).collect::<Vec<_>>(),
        "mined_fg_score" => mining_runs.iter().map(|(_, m)| m.stats.mined_fg_score).collect::<Vec<_>>(),
        "random_fg_score" => mining_runs.iter().map(|(_, m)| m.stats.random_fg_score).collect::<Vec<_>>(),
        "prev_still_hard" => mining_runs.iter().map(|(_, m)| m.stats.prev_still_hard).collect::<Vec<_>>(),
        "mined_gt_iou" => mining_runs.iter().map(|(_, m)| m.stats.mined_gt_iou).collect::<Vec<_>>(),
        "random_gt_iou" => mining_runs.iter().map(|(_, m)| m.stats.random_gt_iou).collect::<Vec<_>>(),
        "mined_on_difficult" => mining_runs.iter().map(|(_, m)| m.stats.mined_on_difficult).collect::<Vec<_>>(),
        "random_on_difficult" => mining_runs.iter().map(|(_, m)| m.stats.random_on_difficult).collect::<Vec<_>>(),
        "mined_no_box" => mining_runs.iter().map(|(_, m)| m.stats.mined_no_box).collect::<Vec<_>>(),
        "random_no_box" => mining_runs.iter().map(|(_, m)| m.stats.random_no_box).collect::<Vec<_>>()
    )
}

/// map_diffs.csv: one row per difference of the final metric, with its 95% and family intervals.
fn map_diffs_frame(map_diffs: &[MapDiff]) -> PolarsResult<DataFrame> {
    df!(
        "baseline" => map_diffs.iter().map(|d| d.baseline.clone()).collect::<Vec<_>>(),
        "arm" => map_diffs.iter().map(|d| d.arm.clone()).collect::<Vec<_>>(),
        "final_map_diff" => map_diffs.iter().map(|d| d.diff.map(|x| x.value)).collect::<Vec<_>>(),
        "ci95_lo" => map_diffs.iter().map(|d| d.diff.and_then(|x| x.ci).map(|c| c.0)).collect::<Vec<_>>(),
        "ci95_hi" => map_diffs.iter().map(|d| d.diff.and_then(|x| x.ci).map(|c| c.1)).collect::<Vec<_>>(),
        "interval" => map_diffs.iter().map(|d| d.diff.map(interval_kind).unwrap_or_default()).collect::<Vec<_>>(),
        "family" => map_diffs.iter().map(|d| d.family as u64).collect::<Vec<_>>(),
        "ci_family_lo" => map_diffs.iter().map(|d| d.fw.and_then(|x| x.ci).map(|c| c.0)).collect::<Vec<_>>(),
        "ci_family_hi" => map_diffs.iter().map(|d| d.fw.and_then(|x| x.ci).map(|c| c.1)).collect::<Vec<_>>(),
        "family_interval" => map_diffs.iter().map(|d| family_text(d.family)).collect::<Vec<_>>(),
        "baseline_seeds" => map_diffs.iter().map(|d| d.baseline_seeds as u64).collect::<Vec<_>>(),
        "arm_seeds" => map_diffs.iter().map(|d| d.arm_seeds as u64).collect::<Vec<_>>()
    )
}

/// findings.csv: one row per finding.
fn findings_frame(findings: &[Finding]) -> PolarsResult<DataFrame> {
    df!(
        "baseline" => findings.iter().map(|f| f.baseline.clone()).collect::<Vec<_>>(),
        "arm" => findings.iter().map(|f| f.arm.clone()).collect::<Vec<_>>(),
        "measure" => findings.iter().map(|f| f.measure.clone()).collect::<Vec<_>>(),
        "value" => findings.iter().map(|f| f.value).collect::<Vec<_>>(),
        "ci_lo" => findings.iter().map(|f| f.ci_lo).collect::<Vec<_>>(),
        "ci_hi" => findings.iter().map(|f| f.ci_hi).collect::<Vec<_>>(),
        "interval" => findings.iter().map(|f| f.interval.clone()).collect::<Vec<_>>(),
        "finding" => findings.iter().map(|f| f.finding.clone()).collect::<Vec<_>>()
    )
}


/// One table row per arm and mining round: each column's mean over the seeds
/// that ran that round, to its digits.
fn mining_rows(md: &mut String, agg: &Aggregate, arms: &[&String], cols: &[(fn(&MiningRow) -> Option<f64>, usize)]) {
    for &arm in arms {
        let rs = agg.by_arm(arm);
        let rounds = rs.iter().map(|r| r.mining.len()).max().unwrap_or(0);
        for k in 0..rounds {
            let ms: Vec<&MiningRow> = rs.iter().filter_map(|r| r.mining.get(k)).collect();
            let cells: Vec<String> = cols.iter().map(|(f, digits)| fmt_opt(mean_std(&ms.iter().filter_map(|m| f(m)).collect::<Vec<_>>()).map(|x| x.0), *digits)).collect();
            md.push_str(&format!("| {arm} | {} | {} |\n", k + 1, cells.join(" | ")));
        }
    }
}

/// The text of summary.md.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::too_many_arguments)]
pub fn summary_md(results: &Path, agg: &Aggregate, speedups: &[Speedup], map_diffs: &[MapDiff], verdicts: &[Verdict], findings: &[Finding], across: (&[super::splits::Across], &[String]), tuning: (&[super::groups::GroupResult], &std::result::Result<super::groups::TuningVerdict, String>), (feedback, thirds): (&[super::classes::ArmFeedback], &[super::per_class::ThirdDiff]), warnings: &[Warning], unreadable: &[String], charts: &[String]) -> String {
    let metric_name = agg.metric().column();
    let mut md = format!("# {}: summary\n\nGenerated by `harness report {}` from the logs alone. Metric: {metric_name} on the test split.\n\n", agg.meta.name, results.display());
    run_section(&mut md, agg);
    verdicts_section(&mut md, verdicts, agg.metric());
    super::groups::section(&mut md, agg, tuning.0, tuning.1, super::compare::study_family(agg));
    findings_section(&mut md, findings, super::compare::study_family(agg), agg.splits, agg.has_cpu);
    super::splits::section(&mut md, agg, across.0, across.1, super::compare::study_family(agg));
    super::classes::section(&mut md, feedback, super::compare::study_family(agg));
    super::per_class::section(&mut md, agg, thirds, super::compare::study_family(agg));
    warnings_section(&mut md, warnings);
    arms_table(&mut md, agg);
    speedups_table(&mut md, speedups);
    map_diffs_table(&mut md, map_diffs, metric_name);
    mining_tables(&mut md, agg);
    cells_left_out(&mut md, agg, unreadable);
    md.push_str("\nCharts:\n\n");
    for c in charts {
        md.push_str(&format!("![{c}]({c})\n"));
    }
    md
}

/// Distinct values and how many cells had each, most first: "2584cfb (20 cells)".
fn counted(values: impl Iterator<Item = String>) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some(c) => c.1 += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if counts.is_empty() {
        return "—".into();
    }
    counts.iter().map(|(v, n)| format!("{v} ({n} {})", if *n == 1 { "cell" } else { "cells" })).collect::<Vec<_>>().join(", ")
}

/// "## The run": what ran the finished cells (commits, CPUs), their wall clock and when, and
/// what differs between the arms' configs.
fn run_section(md: &mut String, agg: &Aggregate) {
    let done = &agg.done;
    if done.is_empty() {
        return;
    }
    let manifests: Vec<&crate::rundir::Manifest> = done.iter().filter_map(|r| r.manifest.as_ref()).collect();
    let wall: f64 = done.iter().filter_map(|r| r.rows.last().map(|x| x.wall_s)).sum();
    let first = manifests.iter().map(|m| m.started.as_str()).min();
    let last = manifests.iter().filter_map(|m| m.ended.as_deref()).max();
    let when = match (first, last) {
        (Some(a), Some(b)) => format!(", the first started {a} and the last ended {b} (UTC; a cell resumed records its last process)"),
        _ => String::new(),
    };
    md.push_str("## The run

");
    md.push_str(&format!("- Commit: {}.
", counted(manifests.iter().map(|m| m.git_revision.clone().unwrap_or_else(|| "unknown".into())))));
    md.push_str(&format!("- CPU: {}.
", counted(manifests.iter().map(|m| format!("{}, {} cores, {}", m.cpu.as_deref().unwrap_or("unknown"), m.cores.map_or("?".into(), |c| c.to_string()), m.device_used.as_deref().unwrap_or(&m.device))))));
    md.push_str(&format!("- Wall clock: {} over the {} finished cells' epochs{when}.
", crate::fmt_duration(wall), done.len()));
    // each arm's first finished cell's config, compared key by key
    let firsts: Vec<(&String, &crate::config::TrainConfig)> = agg.meta.arms.iter().filter_map(|a| done.iter().filter(|r| &r.arm == a).min_by_key(|r| (r.split.as_ref().map(|s| s.index), r.seed)).and_then(|r| r.config.as_ref()).map(|c| (a, c))).collect();
    if firsts.len() > 1 {
        let diff = super::studies::config_diff(&firsts.iter().map(|f| f.1).collect::<Vec<_>>());
        md.push_str("
What differs between the arms (each arm's first finished cell; seed and device left out):

");
        md.push_str(&format!("| key | {} |
|---|{}
", firsts.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(" | "), "---|".repeat(firsts.len())));
        if diff.is_empty() {
            md.push_str(&format!("| (none) |{}
", " |".repeat(firsts.len())));
        }
        for (k, vals) in diff {
            md.push_str(&format!("| `{k}` | {} |
", vals.join(" | ")));
        }
    }
    md.push('\n');
}

/// "## Verdicts": the rule, then one line per verdict; nothing without verdicts.
fn verdicts_section(md: &mut String, verdicts: &[Verdict], metric: Metric) {
    if !verdicts.is_empty() {
        md.push_str("## Verdicts\n\nA claim \"about Rx\" is supported when the interval of the speed-up lies inside the band [R / tolerance, R × tolerance], contradicted when it lies wholly outside, and not resolved otherwise. The interval is Bonferroni's over the study's family: every comparison this summary's Verdicts and Findings state, one per pair of arms and measure (each interval at 1 − 0.05 / m), so that all of their words hold together at 95%. A time to target that some seeds never reach is censored at each run's end and judged by Gehan's rank test at the same level (contradicted when it resolves the arm as slower).\n\n");
        for v in verdicts {
            md.push_str(&verdict_md(v, metric));
        }
        md.push('\n');
    }
}

/// "## Findings": one line per comparison the report makes.
fn findings_section(md: &mut String, findings: &[Finding], family: usize, splits: usize, has_cpu: bool) {
    let m = family_text(family);
    let cpu = if has_cpu { " Of the speed measures, cpu_s_per_iter (the process's CPU seconds of training and mining, user + system, per training iteration) is the one that moved least when another process ran beside the cells (docs/benchmarks.md, \"Which timing moves least beside a busy process\"): it is the speed finding to read first; the wall-clock measures are what the claims name, and the cells whose own evidence shows a busy machine are left out of all of them." } else { "" };
    let units = if splits > 0 { format!(" The units are (split, seed) pairs over {splits} resampled splits of the data, paired across arms, and every interval is Nadeau and Bengio's corrected resampled t (the variance of a mean over J units taken as σ² (1/J + n_test/n_train), on J − 1 degrees of freedom), so that it covers the variation of the split as well as of the seed.") } else { String::new() };
    md.push_str(&format!("## Findings\n\nEvery comparison the report makes, each pair of arms once per measure, and only the words its interval allows: resolved above or below (the interval excludes 0 for a difference, 1 for a speed-up), or not resolved. Every interval is Bonferroni's over the study's family ({m}: every comparison of these Findings and of the Verdicts), so that all the words of this summary hold together at 95%.{units}{cpu} A time to target that some seeds never reach counts those seeds as censored at their run's end: Gehan's rank test at the family's level says whether one arm is slower, and the line says how many seeds of each arm reached the target. Also in `findings.csv`.\n\n"));
    for f in findings {
        md.push_str(&format!("- {}\n", finding_line(f)));
    }
    if findings.is_empty() {
        md.push_str("- None: a comparison needs two arms with finished cells.\n");
    }
    md.push('\n');
}

/// "## Warnings", when there are any.
fn warnings_section(md: &mut String, warnings: &[Warning]) {
    if !warnings.is_empty() {
        md.push_str("## Warnings\n\n");
        for w in warnings {
            md.push_str(&format!("- **{}**\n", w.text));
        }
        md.push('\n');
    }
}

/// "## Arms": what time to target means, then one row per arm.
fn arms_table(md: &mut String, agg: &Aggregate) {
    let metric_name = agg.metric().column();
    md.push_str("## Arms\n\n");
    md.push_str(&format!("Target for time-to-target: {}. Time to target is training time, mining included and evaluation excluded: the cumulative train + mine seconds through the first evaluated epoch at or above the target. DNF = did not reach it; never dropped. ± is the std over seeds (— with one seed); for the per-epoch and per-iteration columns, the std over seeds of each seed's mean over its epochs. These columns hold every finished cell; the speed comparisons below leave out the cells the Warnings name as disturbed.\n\n", agg.target_note));
    md.push_str(&format!("| arm | seeds | failed | final {metric_name} | train s/epoch | mine s/epoch | eval s/epoch | s/iter | total wall s | time to target s | reached |\n|---|---|---|---|---|---|---|---|---|---|---|\n"));
    for s in &agg.summaries {
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
}

/// The speed-ups, one row each.
fn speedups_table(md: &mut String, speedups: &[Speedup]) {
    md.push_str("\nSpeed-up = baseline / arm (> 1: the arm is faster), ratio of means over seeds, with the family-wise t-interval of the Findings on the log scale (delta method), paired by seed when both arms ran the same seeds and Welch's otherwise; — with one seed. `speedups.csv` also holds each comparison's 95% interval on its own (`ci95_*`), which resolves nothing.\n\n| baseline | arm | measure | speed-up | family-wise CI | note |\n|---|---|---|---|---|---|\n");
    for s in speedups {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s.baseline,
            s.arm,
            s.measure,
            s.ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()),
            s.fw_lo.zip(s.fw_hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into()),
            s.note
        ));
    }
}

/// The differences of the final metric, one row each.
fn map_diffs_table(md: &mut String, map_diffs: &[MapDiff], metric_name: &str) {
    md.push_str(&format!("\nFinal {metric_name}, arm − baseline: difference of the means over seeds, with the family-wise t-interval of the Findings (paired by seed when both arms ran the same seeds, Welch's otherwise). `map_diffs.csv` also holds each difference's 95% interval on its own (`ci95_*`), which resolves nothing. Pairs of arms trained for different numbers of epochs are left out.\n\n| baseline | arm | difference | family-wise CI | interval |\n|---|---|---|---|---|\n"));
    for d in map_diffs {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            d.baseline,
            d.arm,
            d.diff.map(|x| format!("{:+.4}", x.value)).unwrap_or_else(|| "—".into()),
            d.fw.and_then(|x| x.ci).map(|c| format!("[{:+.4}, {:+.4}]", c.0, c.1)).unwrap_or_else(|| "—".into()),
            d.fw.map(|e| [interval_kind(e), family_text(d.family)].into_iter().filter(|x| !x.is_empty()).collect::<Vec<_>>().join(", ")).unwrap_or_default()
        ));
    }
}

/// Offline mining per round, for the arms that mine: what was mined, and where the
/// mined negatives lie (for logs that have those columns).
fn mining_tables(md: &mut String, agg: &Aggregate) {
    let miners: Vec<&String> = agg.meta.arms.iter().filter(|a| agg.by_arm(a).iter().any(|r| r.mines())).collect();
    if !miners.is_empty() {
        md.push_str("\nOffline mining, per round (mean over seeds): hard negatives in the cache, their mean loss against a random negative's, and the share of the previous round's cache the model still rates hard.\n\n| arm | round | mined | images left empty | mined loss | random loss | mined fg score | random fg score | previous cache still hard |\n|---|---|---|---|---|---|---|---|---|\n");
        let stat = |f: fn(&MiningRow) -> Option<f64>, digits: usize| (f, digits);
        mining_rows(md, agg, &miners, &[
            stat(|m| Some(m.stats.mined as f64), 0),
            stat(|m| Some(m.stats.empty_images as f64), 1),
            stat(|m| m.stats.mined_loss, 3),
            stat(|m| m.stats.random_loss, 3),
            stat(|m| m.stats.mined_fg_score, 3),
            stat(|m| m.stats.random_fg_score, 3),
            stat(|m| m.stats.prev_still_hard, 2),
        ]);
        // where the mined negatives lie (logs written since these columns existed)
        let placed: Vec<&String> = miners.iter().copied().filter(|a| agg.by_arm(a).iter().any(|r| r.mining.iter().any(|m| m.stats.mined_gt_iou.is_some()))).collect();
        if !placed.is_empty() {
            md.push_str("\nWhere the mined negatives lie, per round (mean over seeds), against every eligible negative (what a random pick would give): mean best IoU with a labelled box; share on a difficult box (IoU ≥ 0.5 with one); share touching no box (IoU < 0.1 with every box, difficult ones included). Also in `mining.csv`.\n\n| arm | round | mined: IoU with a labelled box | random | mined: on a difficult box | random | mined: touching no box | random |\n|---|---|---|---|---|---|---|---|\n");
            mining_rows(md, agg, &placed, &[
                stat(|m| m.stats.mined_gt_iou, 3),
                stat(|m| m.stats.random_gt_iou, 3),
                stat(|m| m.stats.mined_on_difficult, 3),
                stat(|m| m.stats.random_on_difficult, 3),
                stat(|m| m.stats.mined_no_box, 3),
                stat(|m| m.stats.random_no_box, 3),
            ]);
        }
    }
}

/// Every cell that is not in the tables, and why: failed, still running, not started, unreadable.
fn cells_left_out(md: &mut String, agg: &Aggregate, unreadable: &[String]) {
    use crate::rundir::State;
    let not_done: Vec<&RunLog> = agg.runs.iter().filter(|r| r.state != State::Done).collect();
    if !not_done.is_empty() || !unreadable.is_empty() {
        md.push_str("\nCells not in the tables above:\n\n");
        for (state, word) in [(State::Failed, "failed"), (State::Running, "running"), (State::Pending, "pending")] {
            for r in not_done.iter().filter(|r| r.state == state) {
                let why = r.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default();
                md.push_str(&format!("- {} {}: {word}{why}\n", r.arm, r.unit_name()));
            }
        }
        for u in unreadable {
            md.push_str(&format!("- left out: {u}\n"));
        }
    }
}

/// Writes `across_splits.csv`: each final-mAP comparison per split, P(arm > baseline) and the
/// test-set bootstrap ([`super::splits`]).
pub fn across_csv(path: &Path, rows: &[super::splits::Across]) -> Result<()> {
    let mut df = df!(
        "baseline" => rows.iter().map(|r| r.baseline.clone()).collect::<Vec<_>>(),
        "arm" => rows.iter().map(|r| r.arm.clone()).collect::<Vec<_>>(),
        "units" => rows.iter().map(|r| r.units as u64).collect::<Vec<_>>(),
        "per_split" => rows.iter().map(|r| r.per_split.iter().map(|(k, m, n)| format!("{k}:{m:.6}:{n}")).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>(),
        "splits_agree" => rows.iter().map(|r| r.agree as u64).collect::<Vec<_>>(),
        "splits" => rows.iter().map(|r| r.per_split.len() as u64).collect::<Vec<_>>(),
        "p_better" => rows.iter().map(|r| r.p_better).collect::<Vec<_>>(),
        "p_lo" => rows.iter().map(|r| r.p_lo).collect::<Vec<_>>(),
        "p_hi" => rows.iter().map(|r| r.p_hi).collect::<Vec<_>>(),
        "test_lo" => rows.iter().map(|r| r.test_lo).collect::<Vec<_>>(),
        "test_hi" => rows.iter().map(|r| r.test_hi).collect::<Vec<_>>(),
        "test_units" => rows.iter().map(|r| r.test_units as u64).collect::<Vec<_>>(),
        "note" => rows.iter().map(|r| r.note.clone()).collect::<Vec<_>>()
    )?;
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).finish(&mut df)?;
    write_file(path, &buf)?;
    Ok(())
}

/// `groups.csv`: one row per group of a sensitivity study ([`super::groups`]).
pub fn groups_csv(path: &Path, groups: &[super::groups::GroupResult], family: usize) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["group", "kind", "default", "settings", "best", "best_mean", "worst", "worst_mean", "gap", "gap_lo", "gap_hi", "above_default", "spread", "spread_lo", "spread_hi", "resolved_pairs", "interval"])?;
    let f = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    for g in groups {
        let mean = |a: &Option<String>| a.as_ref().and_then(|a| g.settings.iter().find(|s| &s.arm == a)).and_then(|s| s.mean);
        let gap_ci = g.gap.and_then(|b| b.ci);
        let spread_ci = g.spread.and_then(|b| b.ci);
        w.write_record([
            g.name.clone(),
            g.kind.clone().unwrap_or_default(),
            g.default.clone(),
            g.settings.iter().map(|s| s.arm.as_str()).collect::<Vec<_>>().join(" "),
            g.best.clone().unwrap_or_default(),
            f(mean(&g.best)),
            g.worst.clone().unwrap_or_default(),
            f(mean(&g.worst)),
            f(g.gap.map(|b| b.value)),
            f(gap_ci.map(|c| c.0)),
            f(gap_ci.map(|c| c.1)),
            g.above_default.join(" "),
            f(g.spread.map(|b| b.value)),
            f(spread_ci.map(|c| c.0)),
            f(spread_ci.map(|c| c.1)),
            g.resolved_pairs.iter().map(|(h, l)| format!("{h}>{l}")).collect::<Vec<_>>().join(" "),
            family_text(family),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(write_file(path, &bytes)?)
}
