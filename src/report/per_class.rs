//! Per-class AP (each cell's `per_class.csv`, [`crate::rundir::PerClassRow`]): where a method
//! wins or loses, class by class, and on a long tail the mean AP of the rarest third of the
//! classes and of the most common third (issue 38's long-tail test; issue 39's error analysis).
//!
//! A class's rarity is its count of non-difficult boxes in the test split (`npos`), which on a
//! generated long tail (`make-dataset --long-tail`) follows the training split's (the classes
//! are dealt over all images at once). The thirds are the `⌈K/3⌉` classes of fewest and of most
//! boxes (ties by class index). Each unit's third-mean is the mean VOC07 AP of those classes at
//! its last evaluation; in a study of class balance (`report.balance`) arm − baseline
//! differences of it get the t-interval over units at the study family's level, each (pair,
//! third) one comparison of the family. The table is given wherever cells logged per-class AP.

use std::collections::BTreeMap;

use super::aggregate::Aggregate;
use super::compare::{family_text, same_length};
use super::stats::{compare_units, family_level, Estimate, Scale, Seeded};
use super::RunLog;

/// The two thirds compared.
pub const THIRDS: [&str; 2] = ["rare_third", "common_third"];

/// The classes of the study (index, name, test boxes: over resampled splits, summed over each
/// split's test set, from one finished cell of each).
pub fn classes(agg: &Aggregate) -> Vec<(usize, String, usize)> {
    let mut by: BTreeMap<usize, (String, usize)> = BTreeMap::new();
    let mut splits = std::collections::BTreeSet::new();
    for r in agg.done.iter().filter(|r| !r.per_class.is_empty() && splits.insert(r.split.as_ref().map(|s| s.index))) {
        let last = r.per_class.iter().map(|p| p.epoch).max().unwrap_or(0);
        for p in r.per_class.iter().filter(|p| p.epoch == last) {
            by.entry(p.class).or_insert_with(|| (p.name.clone(), 0)).1 += p.npos;
        }
    }
    by.into_iter().map(|(c, (n, k))| (c, n, k)).collect()
}

/// Whether every finished cell of `arm` logged per-class AP (and it has one).
fn logged(agg: &Aggregate, arm: &str) -> bool {
    let rs = agg.by_arm(arm);
    !rs.is_empty() && rs.iter().all(|r| !r.per_class.is_empty())
}

/// The rarest and the most common third of `classes` (by test boxes), as class indices.
pub fn thirds(classes: &[(usize, String, usize)]) -> [Vec<usize>; 2] {
    let with: Vec<&(usize, String, usize)> = classes.iter().filter(|c| c.2 > 0).collect();
    let k = with.len().div_ceil(3);
    let mut by: Vec<&(usize, String, usize)> = with.clone();
    by.sort_by_key(|c| (c.2, c.0));
    let rare = by.iter().take(k).map(|c| c.0).collect();
    by.sort_by_key(|c| (std::cmp::Reverse(c.2), c.0));
    let common = by.iter().take(k).map(|c| c.0).collect();
    [rare, common]
}

/// A run's VOC07 AP per class at its last evaluation.
fn last_aps(r: &RunLog) -> BTreeMap<usize, f64> {
    let last = r.per_class.iter().map(|p| p.epoch).max().unwrap_or(0);
    r.per_class.iter().filter(|p| p.epoch == last).filter_map(|p| p.ap_voc07.map(|a| (p.class, a))).collect()
}

/// Each unit of `arm`: the mean AP over `set`.
fn third_of(agg: &Aggregate, arm: &str, set: &[usize]) -> Vec<Seeded> {
    agg.by_arm(arm)
        .iter()
        .filter_map(|r| {
            let aps = last_aps(r);
            let v: Vec<f64> = set.iter().filter_map(|c| aps.get(c).copied()).collect();
            (!v.is_empty() && v.len() == set.len()).then(|| (r.unit(), v.iter().sum::<f64>() / v.len() as f64))
        })
        .collect()
}

/// Whether the study's cells logged per-class AP (else the section is left out).
pub fn present(agg: &Aggregate) -> bool {
    agg.done.iter().any(|r| !r.per_class.is_empty())
}

/// The unordered (baseline, arm) pairs of the thirds' comparisons, for the study's family: in a
/// study of class balance (`report.balance`), between arms whose every finished cell logged
/// per-class AP.
pub fn family_pairs(agg: &Aggregate, baselines: &[String]) -> Vec<(String, String, &'static str)> {
    if !agg.meta.report.balance || !present(agg) || classes(agg).len() < 3 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for b in baselines.iter().filter(|b| logged(agg, b)) {
        for a in agg.meta.arms.iter().filter(|a| *a != b && same_length(agg, b, a) && logged(agg, a)) {
            for t in THIRDS {
                out.push((b.clone(), a.clone(), t));
            }
        }
    }
    out
}

/// One comparison of a third.
#[derive(Debug, Clone)]
pub struct ThirdDiff {
    pub baseline: String,
    pub arm: String,
    pub third: &'static str,
    pub est: Option<Estimate>,
}

/// The thirds' arm − baseline differences at the family's level.
pub fn third_diffs(agg: &Aggregate, baselines: &[String], family: usize) -> Vec<ThirdDiff> {
    let cls = classes(agg);
    let sets = thirds(&cls);
    family_pairs(agg, baselines)
        .into_iter()
        .map(|(b, a, t)| {
            let set = if t == THIRDS[0] { &sets[0] } else { &sets[1] };
            let est = compare_units(&third_of(agg, &b, set), &third_of(agg, &a, set), Scale::Difference, family_level(family), agg.rho);
            ThirdDiff { baseline: b, arm: a, third: t, est }
        })
        .collect()
}

/// The section of summary.md: the per-class table (final VOC07 AP, mean over units), then the
/// thirds' comparisons with their words.
pub fn section(md: &mut String, agg: &Aggregate, diffs: &[ThirdDiff], family: usize) {
    if !present(agg) {
        return;
    }
    let cls = classes(agg);
    let sets = thirds(&cls);
    let name = |c: &usize| cls.iter().find(|x| x.0 == *c).map(|x| x.1.clone()).unwrap_or_default();
    md.push_str("## Per class\n\nEach class's VOC07 AP at the last evaluation, mean over units (`per_class.csv` in each cell: every evaluation), with its count of test boxes. Chart: `per_class_ap.png`.\n\n");
    md.push_str(&format!("| class | test boxes | {} |\n|---|---|{}\n", agg.meta.arms.join(" | "), "---|".repeat(agg.meta.arms.len())));
    let (_, means) = chart_data(agg);
    for (i, (_, n, npos)) in cls.iter().enumerate() {
        let cells: Vec<String> = means.iter().map(|arm| arm[i].map(|m| format!("{m:.4}")).unwrap_or_else(|| "—".into())).collect();
        md.push_str(&format!("| {n} | {npos} | {} |\n", cells.join(" | ")));
    }
    if !diffs.is_empty() {
        md.push_str(&format!(
            "\nThe rarest third of the classes by test boxes ({}) and the most common third ({}): each unit's mean AP over them, arm − baseline, with the t-interval at the family's level ({}).\n\n",
            sets[0].iter().map(&name).collect::<Vec<_>>().join(", "),
            sets[1].iter().map(&name).collect::<Vec<_>>().join(", "),
            family_text(family)
        ));
        for d in diffs {
            let (value, ci) = match d.est {
                Some(e) => (format!("{:+.4}", e.value), e.ci),
                None => ("—".into(), None),
            };
            let third = d.third.replace('_', " ");
            let above = format!("{} ends higher than {} on the {third}", d.arm, d.baseline);
            let below = format!("{} ends lower than {} on the {third}", d.arm, d.baseline);
            let words = super::compare::words(ci, 0.0, &above, &below, "fewer than 2 units in an arm");
            let ci = ci.map(|(l, h)| format!(" [{l:+.4}, {h:+.4}]")).unwrap_or_default();
            md.push_str(&format!("- {} − {}, {}: {value}{ci}: {words}\n", d.arm, d.baseline, d.third));
        }
    }
    md.push('\n');
}

/// Per class (name) and arm: the mean final VOC07 AP over units, for the chart.
pub fn chart_data(agg: &Aggregate) -> (Vec<String>, Vec<Vec<Option<f64>>>) {
    let cls = classes(agg);
    let names = cls.iter().map(|c| c.1.clone()).collect();
    let values = agg
        .meta
        .arms
        .iter()
        .map(|a| {
            cls.iter()
                .map(|(c, _, _)| {
                    let v: Vec<f64> = agg.by_arm(a).iter().filter_map(|r| last_aps(r).get(c).copied()).collect();
                    super::mean_std(&v).map(|m| m.0)
                })
                .collect()
        })
        .collect();
    (names, values)
}
