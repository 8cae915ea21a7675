//! The report beyond one split and one test set (issue 37): for each final-mAP comparison,
//! - **per split**, the mean difference over its seeds, and how many splits agree in sign
//!   with the overall mean (whether a finding holds across splits);
//! - **P(arm > baseline)** over the (split, seed) units, with Wilson's interval at the
//!   family's level on Nadeau and Bengio's effective count `1 / (1/J + ρ)` (Bouthillier et al.,
//!   MLSys 2021, recommend stating this probability rather than a bare sign);
//! - **the test set's share of the uncertainty**: a paired bootstrap of the test images
//!   ([`crate::eval::bootstrap`]), the same multisets for every arm and seed of a split, whose
//!   percentile interval of the mean difference (at the family's level) sits beside the
//!   interval over units.

use std::collections::{BTreeMap, HashMap};

use rand::SeedableRng;
use rayon::prelude::*;

use super::aggregate::Aggregate;
use super::compare::MapDiff;
use super::stats::family_level;
use super::RunLog;
use crate::eval::bootstrap::{draw, Outcomes};
use crate::eval::Metric;

/// Resamples of the test set per split.
pub const DRAWS: usize = 2000;

/// One final-mAP comparison beyond the interval over units.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Across {
    pub baseline: String,
    pub arm: String,
    /// Units (split, seed) with both arms finished.
    pub units: usize,
    /// Per split: its label, the mean of arm − baseline over its seeds, and how many seeds.
    pub per_split: Vec<(String, f64, usize)>,
    /// Splits whose mean difference has the sign of the mean over all units (ties agree with neither).
    pub agree: usize,
    /// P(arm > baseline) over the units (a tie counts half), and its interval.
    pub p_better: Option<f64>,
    pub p_lo: Option<f64>,
    pub p_hi: Option<f64>,
    /// The paired test-set bootstrap's interval of the mean difference, and over how many units.
    pub test_lo: Option<f64>,
    pub test_hi: Option<f64>,
    pub test_units: usize,
    /// Why a part is missing, or a mismatch between the outcomes and metrics.csv.
    pub note: String,
}

/// Wilson's score interval for a share `p` of `n` (effective) trials at the two-sided `level`.
pub fn wilson(p: f64, n: f64, level: f64) -> (f64, f64) {
    use statrs::distribution::{ContinuousCDF, Normal};
    let z = Normal::new(0.0, 1.0).map(|d| d.inverse_cdf(1.0 - (1.0 - level) / 2.0)).unwrap_or(f64::NAN);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The report's metric of one run's outcomes under weights `w`, where the outcomes give it.
fn metric_of(o: &Outcomes, w: &[u32], metric: Metric) -> Option<f64> {
    match metric {
        Metric::Voc07 => o.voc07(w),
        Metric::Coco(0) => o.coco_box_ap(w),
        _ => None,
    }
}

/// Each run's metric under every draw of its split's test set (None: no outcomes, or the
/// outcomes do not give back the run's own final value with unit weights: then a note).
fn resampled(agg: &Aggregate, notes: &mut Vec<String>) -> HashMap<(String, u64), Vec<f64>> {
    let metric = agg.metric();
    if !matches!(metric, Metric::Voc07 | Metric::Coco(0)) {
        return HashMap::new(); // the rows say which metrics the outcomes give
    }
    let runs: Vec<&RunLog> = agg.done.iter().copied().filter(|r| r.outcomes.is_some()).collect();
    let loaded: Vec<(&RunLog, anyhow::Result<Outcomes>)> = runs.par_iter().map(|r| (*r, Outcomes::read(r.outcomes.as_ref().expect("filtered")))).collect();
    // the draws of each split: seeded by the split alone, so every arm and seed of it shares them
    let mut draws: BTreeMap<(u64, usize), Vec<Vec<u32>>> = BTreeMap::new();
    let mut usable = Vec::new();
    for (r, o) in loaded {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                notes.push(format!("{} {}: outcomes unreadable, left out of the test-set bootstrap: {e:#}", r.arm, r.unit_name()));
                continue;
            }
        };
        let ones = vec![1u32; o.images];
        let (own, logged) = (metric_of(&o, &ones, metric), r.final_map(metric));
        if own.is_none() || logged.is_none_or(|l| (own.unwrap_or(f64::NAN) - l).abs() > 1e-9) {
            notes.push(format!("{} {}: its outcomes give {} {} but metrics.csv ends at {}: left out of the test-set bootstrap", r.arm, r.unit_name(), metric.column(), own.map(|x| format!("{x:.6}")).unwrap_or("nothing".into()), logged.map(|x| format!("{x:.6}")).unwrap_or("nothing".into())));
            continue;
        }
        let key = (r.split.as_ref().map_or(0, |s| s.index as u64 + 1), o.images);
        draws.entry(key).or_insert_with(|| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x7e57_5e7 ^ key.0);
            (0..DRAWS).map(|_| draw(o.images, &mut rng)).collect()
        });
        usable.push((r, o, key));
    }
    usable
        .par_iter()
        .map(|(r, o, key)| ((r.arm.clone(), r.unit()), draws[key].iter().map(|w| metric_of(o, w, metric).unwrap_or(0.0)).collect()))
        .collect()
}

/// The quantile `q` of sorted `v` (linear interpolation between order statistics).
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Every final-mAP comparison across splits, with P(arm > baseline) and the test-set
/// bootstrap, at the level of a family of `family`. Returns the rows and the notes.
pub fn across(agg: &Aggregate, map_diffs: &[MapDiff], family: usize) -> (Vec<Across>, Vec<String>) {
    let mut notes = Vec::new();
    let boot = resampled(agg, &mut notes);
    let level = family_level(family);
    let split_of: HashMap<u64, String> = agg.done.iter().map(|r| (r.unit(), r.split.as_ref().map(|s| s.label.clone()).unwrap_or_default())).collect();
    let mut out = Vec::new();
    for d in map_diffs {
        let (b, a) = (agg.finals_of(&d.baseline), agg.finals_of(&d.arm));
        let bm: HashMap<u64, f64> = b.iter().copied().collect();
        let pairs: Vec<(u64, f64)> = a.iter().filter_map(|(u, v)| bm.get(u).map(|x| (*u, v - x))).collect();
        if pairs.is_empty() {
            continue;
        }
        let n = pairs.len();
        let mean = pairs.iter().map(|p| p.1).sum::<f64>() / n as f64;
        let mut by_split: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (u, x) in &pairs {
            by_split.entry(split_of.get(u).cloned().unwrap_or_default()).or_default().push(*x);
        }
        let per_split: Vec<(String, f64, usize)> = by_split.into_iter().map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64, v.len())).collect();
        let agree = per_split.iter().filter(|s| s.1 != 0.0 && (s.1 > 0.0) == (mean > 0.0) && mean != 0.0).count();
        let p = pairs.iter().map(|(_, x)| if *x > 0.0 { 1.0 } else if *x == 0.0 { 0.5 } else { 0.0 }).sum::<f64>() / n as f64;
        // descriptive, at 95%: the effective count of Nadeau and Bengio's correction over the
        // splits (their seeds are no new splits), or the seeds on one split
        let j = if agg.splits > 0 { per_split.len() } else { n };
        let n_eff = 1.0 / (1.0 / j as f64 + agg.rho);
        let (p_lo, p_hi) = if n >= 2 { wilson(p, n_eff, 0.95) } else { (f64::NAN, f64::NAN) };
        // the paired bootstrap: units with both arms' outcomes
        let both: Vec<(&Vec<f64>, &Vec<f64>)> = pairs.iter().filter_map(|(u, _)| Some((boot.get(&(d.arm.clone(), *u))?, boot.get(&(d.baseline.clone(), *u))?))).collect();
        let (test_lo, test_hi, note) = if both.is_empty() {
            (None, None, format!("no outcomes.txt in these cells (runs older than the test-set bootstrap), or a metric it does not recompute (it recomputes {} and {})", Metric::Voc07.column(), Metric::Coco(0).column()))
        } else {
            let mut diffs: Vec<f64> = (0..DRAWS).map(|k| both.iter().map(|(x, y)| x[k] - y[k]).sum::<f64>() / both.len() as f64).collect();
            diffs.sort_by(f64::total_cmp);
            let note = if both.len() < n { format!("bootstrap over {} of the {n} units (the others lack outcomes)", both.len()) } else { String::new() };
            (Some(quantile(&diffs, (1.0 - level) / 2.0)), Some(quantile(&diffs, 1.0 - (1.0 - level) / 2.0)), note)
        };
        out.push(Across { baseline: d.baseline.clone(), arm: d.arm.clone(), units: n, per_split, agree, p_better: Some(p), p_lo: (n >= 2).then_some(p_lo), p_hi: (n >= 2).then_some(p_hi), test_lo, test_hi, test_units: both.len(), note });
    }
    (out, notes)
}

/// The section of summary.md: one line per comparison (only where the study has splits or
/// outcomes: older studies' summaries are unchanged).
pub fn section(md: &mut String, agg: &Aggregate, rows: &[Across], notes: &[String], family: usize) {
    if agg.splits == 0 && rows.iter().all(|r| r.test_units == 0) {
        return;
    }
    let metric = agg.metric().column();
    let units = if agg.splits > 0 { format!("(split, seed) units over {} splits", agg.splits) } else { "seeds".to_string() };
    md.push_str(&format!(
        "## Across splits and test sets\n\nFor each final-{metric} difference (arm − baseline): the mean over each split's seeds and how many splits agree in sign with the mean over all units; P(arm > baseline), the share of {units} in which the arm ends higher (a tie counts half), with Wilson's 95% interval on Nadeau and Bengio's effective count 1 / (1/J + n_test/n_train) over the J splits: a description, not a finding (it is not in the family, and its words are the Findings'); and the interval a paired bootstrap of the test images gives ({DRAWS} draws, the same images for every arm and seed of a split, percentile interval at the family's level, {}): how much of the uncertainty the test set alone makes, beside the Findings' interval. Also in `across_splits.csv`.\n\n",
        super::compare::family_text(family)
    ));
    for r in rows {
        md.push_str(&format!("- {}\n", line(r)));
    }
    for n in notes {
        md.push_str(&format!("- note: {n}\n"));
    }
    md.push('\n');
}

/// One comparison as a line of the section.
pub fn line(r: &Across) -> String {
    let splits = if r.per_split.len() > 1 || r.per_split.first().is_some_and(|s| !s.0.is_empty()) {
        let each: Vec<String> = r.per_split.iter().map(|(k, m, n)| format!("{k} {m:+.4} ({n})")).collect();
        format!("; per split (mean, seeds): {}; {} of {} splits agree in sign with the mean", each.join(", "), r.agree, r.per_split.len())
    } else {
        String::new()
    };
    let p = match (r.p_better, r.p_lo, r.p_hi) {
        (Some(p), Some(lo), Some(hi)) => format!("P({} > {}) = {p:.2} over {} units (95% Wilson {lo:.2} to {hi:.2}, descriptive)", r.arm, r.baseline, r.units),
        (Some(p), _, _) => format!("P({} > {}) = {p:.2} over {} unit", r.arm, r.baseline, r.units),
        _ => String::new(),
    };
    let test = match (r.test_lo, r.test_hi) {
        (Some(lo), Some(hi)) => format!("; test-set bootstrap of the mean difference [{lo:+.4}, {hi:+.4}]"),
        _ => String::new(),
    };
    let note = if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) };
    format!("{} − {}: {p}{splits}{test}{note}", r.arm, r.baseline)
}
