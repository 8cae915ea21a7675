//! Stage 2 of the report: the arms against each other. Speed-ups against each
//! baseline, final-mAP differences, warnings on offline-mining arms that
//! mined nothing, and verdicts on the claims the grid file names.

use super::aggregate::Aggregate;
use super::{bootstrap_diff, bootstrap_ratio, judge, RunLog};
use crate::rundir::Measure;

/// One speed-up: baseline / arm, with a 95% bootstrap interval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speedup {
    pub baseline: String,
    pub arm: String,
    pub measure: Measure,
    pub ratio: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    pub note: String,
}

/// Final mAP, arm − baseline, with its 95% interval, and the seeds behind it (a row of map_diffs.csv).
#[derive(Debug, Clone)]
pub struct MapDiff {
    pub baseline: String,
    pub arm: String,
    /// (difference, interval low, interval high)
    pub diff: Option<(f64, f64, f64)>,
    pub baseline_seeds: usize,
    pub arm_seeds: usize,
}

/// A warning on one arm (summary.md, the command line, and the verdicts that use the arm).
#[derive(Debug, Clone)]
pub struct Warning {
    pub arm: String,
    pub text: String,
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

/// A verdict line of summary.md (a row of verdicts.csv).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub claim: String,
    pub baseline: String,
    pub arm: String,
    pub measure: Measure,
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

/// The baselines of the speed-ups and differences: `report.baselines`, else the first arm.
fn baselines(agg: &Aggregate) -> Vec<String> {
    let m = agg.meta;
    if m.report.baselines.is_empty() {
        m.arms.iter().take(1).cloned().collect()
    } else {
        m.report.baselines.clone()
    }
}

/// Whether a time-to-target comparison has seeds that never reached the target.
fn dnf(measure: Measure, (bv, bn): (&[f64], usize), (av, an): (&[f64], usize)) -> bool {
    measure == Measure::TimeToTarget && (bv.len() < bn || av.len() < an)
}

/// Every arm against every baseline, on every measure.
pub fn speedups(agg: &Aggregate) -> Vec<Speedup> {
    let mut out = Vec::new();
    for (bi, b) in baselines(agg).iter().enumerate() {
        for a in agg.meta.arms.iter().filter(|a| *a != b) {
            for measure in Measure::ALL {
                let (bv, bn) = agg.per_seed(b, measure);
                let (av, an) = agg.per_seed(a, measure);
                let dnf = dnf(measure, (&bv, bn), (&av, an));
                let r = if dnf { None } else { bootstrap_ratio(&bv, &av, agg.meta.report.bootstrap, 1000 + bi as u64) };
                let note = if dnf { format!("DNF: {} of {an} {a} and {} of {bn} {b} seeds reached the target", av.len(), bv.len()) } else if r.is_none() { "no finished seeds".into() } else { String::new() };
                out.push(Speedup { baseline: b.clone(), arm: a.clone(), measure, ratio: r.map(|x| x.0), ci_lo: r.map(|x| x.1), ci_hi: r.map(|x| x.2), note });
            }
        }
    }
    out
}

/// Final-mAP differences against each baseline (what an ablation reads).
pub fn map_diffs(agg: &Aggregate) -> Vec<MapDiff> {
    let mut out = Vec::new();
    for (bi, b) in baselines(agg).iter().enumerate() {
        for (ai, a) in agg.meta.arms.iter().enumerate().filter(|(_, a)| *a != b) {
            let (bv, av) = (agg.finals_of(b), agg.finals_of(a));
            let diff = bootstrap_diff(&bv, &av, agg.meta.report.bootstrap, 9000 + (bi * 1000 + ai) as u64);
            out.push(MapDiff { baseline: b.clone(), arm: a.clone(), diff, baseline_seeds: bv.len(), arm_seeds: av.len() });
        }
    }
    out
}

/// Offline-mining arms whose cache stayed empty: fixed-ratio in disguise.
pub fn mining_warnings(agg: &Aggregate) -> Vec<Warning> {
    let mut out = Vec::new();
    for arm in &agg.meta.arms {
        let rs: Vec<&RunLog> = agg.by_arm(arm).into_iter().filter(|r| r.mines()).collect();
        let empty = rs.iter().filter(|r| r.mined_nothing()).count();
        let first_empty = rs.iter().filter(|r| r.mining.first().is_some_and(|m| m.stats.mined == 0)).count();
        let text = if empty > 0 {
            format!("{arm} mined nothing in {empty} of {} seeds: in those seeds this arm is fixed-ratio (plus a mining stall), not hard-negative mining", rs.len())
        } else if first_empty > 0 {
            format!("{arm}: the first mining round left the cache empty in {first_empty} of {} seeds", rs.len())
        } else {
            continue;
        };
        out.push(Warning { arm: arm.clone(), text });
    }
    out
}

/// The verdicts on the claims of `report.verdicts`, with the warnings on the arms they use.
pub fn verdicts(agg: &Aggregate, warnings: &[Warning]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for (vi, v) in agg.meta.report.verdicts.iter().enumerate() {
        let (bv, bn) = agg.per_seed(&v.baseline, v.measure);
        let (av, an) = agg.per_seed(&v.arm, v.measure);
        let seeds = bn.min(an);
        let md = bootstrap_diff(&agg.finals_of(&v.baseline), &agg.finals_of(&v.arm), agg.meta.report.bootstrap, 7000 + vi as u64);
        let dnf = dnf(v.measure, (&bv, bn), (&av, an));
        let r = if dnf { None } else { bootstrap_ratio(&bv, &av, agg.meta.report.bootstrap, 5000 + vi as u64) };
        let (word, need, mut note) = match r {
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
        for w in warnings.iter().filter(|w| w.arm == v.arm || w.arm == v.baseline) {
            note = format!("{note}{}caution: {}", if note.is_empty() { "" } else { "; " }, w.text);
        }
        out.push(Verdict {
            claim: v.claim.clone(),
            baseline: v.baseline.clone(),
            arm: v.arm.clone(),
            measure: v.measure,
            expected: v.expected,
            band_lo: v.expected / v.tolerance,
            band_hi: v.expected * v.tolerance,
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
    out
}
