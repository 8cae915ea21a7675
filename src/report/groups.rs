//! The tuning tax (issue 38): a sensitivity study's methods, each over its own knobs
//! (`report.groups` of the grid), and the claim that OHEM needs no sampling hyperparameters.
//!
//! For each group (a method's settings, one arm each):
//! - its **best setting** and **worst setting**, by the mean final metric over units;
//! - its **default's gap to the best**, `max_j (μ_j − μ_default)` over the group's settings j;
//! - its **spread**, `max_{i,j} (μ_i − μ_j)`, best − worst.
//!
//! The best and the worst are picked from the same logs their intervals come from, so an
//! interval of "best − default" taken as if the pair had been chosen in advance would be too
//! narrow (the winner's curse). The intervals here allow for the choice: every pair of settings
//! a pick could land on is a comparison of the study's family ([`family_pairs`]), so that all of
//! their Bonferroni intervals hold together at 95%; when they do, the true gap
//! `max_j (θ_j − θ_default)` lies in `[max_j lo_j, max_j hi_j]` (each true difference lies in its
//! interval), and likewise the true spread over all ordered pairs. Both are ≥ 0 by definition,
//! so their bounds are clipped at 0.
//!
//! The claim's verdict, written here from those intervals alone (the rule):
//! **supported** when no setting of another method is resolved above OHEM's default and fixed
//! ratio's spread is resolved larger than OHEM's (its interval's lower end above the upper end
//! of OHEM's); **contradicted** when a setting of another method is resolved above OHEM's
//! default, or OHEM's spread is resolved larger than fixed ratio's; **not resolved** otherwise.
//! OHEM's group and fixed ratio's are the groups whose default arm's sampler kind is `ohem` and
//! `fixed_ratio`.

use super::aggregate::Aggregate;
use super::compare::{family_text, same_length, Word};
use super::stats::{compare_units, family_level, Estimate, Scale};
use crate::rundir::ArmGroup;

/// One setting of a group: its arm, its mean final metric and over how many units.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Setting {
    pub arm: String,
    pub mean: Option<f64>,
    pub units: usize,
}

/// A bound on a maximum of differences: the point estimate and its simultaneous interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MaxBound {
    pub value: f64,
    pub ci: Option<(f64, f64)>,
}

/// One group's analysis (a row of groups.csv).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupResult {
    pub name: String,
    pub default: String,
    pub settings: Vec<Setting>,
    pub best: Option<String>,
    pub worst: Option<String>,
    /// The default's gap to the best setting, and the settings resolved above the default.
    pub gap: Option<MaxBound>,
    pub above_default: Vec<String>,
    /// Best − worst, and the pairs (higher, lower) resolved apart.
    pub spread: Option<MaxBound>,
    pub resolved_pairs: Vec<(String, String)>,
    /// The sampler kind of the default arm's config (`ohem`, `fixed_ratio`, ...), where known.
    pub kind: Option<String>,
    /// Settings with no finished cell: left out of every comparison, named, and no verdict
    /// is supported or contradicted without them.
    pub missing: Vec<String>,
}

/// The claim's verdict.
#[derive(Debug, Clone)]
pub struct TuningVerdict {
    pub word: Word,
    pub text: String,
}

/// The claim, as its verdict line names it.
pub const CLAIM: &str = "OHEM needs no sampling hyperparameters";

/// The unordered pairs of arms the analysis compares (each a final-metric comparison of the
/// study's family): every pair of settings within a group (the best, the worst and the default
/// may be any of them), and OHEM's default against every setting of every other group.
pub fn family_pairs(agg: &Aggregate) -> Vec<(String, String)> {
    let groups = &agg.meta.report.groups;
    let mut out = Vec::new();
    for g in groups {
        for (i, a) in g.arms.iter().enumerate() {
            for b in &g.arms[i + 1..] {
                if same_length(agg, a, b) {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
    }
    if let Some(o) = groups.iter().find(|g| kind_of(agg, &g.default).as_deref() == Some("ohem")) {
        for g in groups.iter().filter(|g| g.name != o.name) {
            for a in g.arms.iter().filter(|a| same_length(agg, &o.default, a)) {
                out.push((o.default.clone(), a.clone()));
            }
        }
    }
    out
}

/// The sampler kind of an arm's cells (its first finished cell's config).
pub fn kind_of(agg: &Aggregate, arm: &str) -> Option<String> {
    let c = agg.by_arm(arm).into_iter().find_map(|r| r.config.as_ref())?;
    serde_json::to_value(&c.sampler).ok()?.get("kind")?.as_str().map(str::to_string)
}

/// An estimate's interval where it says something: none for fewer than 2 units, and none for a
/// zero-width interval (every unit gave the same difference: no spread, so it resolves nothing,
/// as in the Findings).
fn informative(e: Estimate) -> Option<(f64, f64)> {
    e.ci.filter(|(l, h)| l < h)
}

/// `arm − base` on the final metric at the family's level.
fn diff(agg: &Aggregate, base: &str, arm: &str, level: f64) -> Option<Estimate> {
    compare_units(&agg.finals_of(base), &agg.finals_of(arm), Scale::Difference, level, agg.rho)
}

/// The simultaneous bound on `max` of the differences `ests` (each `(value, interval)`), with
/// a zero difference always among them (the maximum of a gap or a spread is never below 0):
/// None when any interval is missing (fewer than 2 units in an arm).
pub fn max_bound(ests: &[Option<Estimate>]) -> Option<MaxBound> {
    let mut value = 0.0f64;
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    let mut ci_known = true;
    for e in ests {
        let e = (*e)?;
        value = value.max(e.value);
        match informative(e) {
            Some((l, h)) => {
                lo = lo.max(l);
                hi = hi.max(h);
            }
            None => ci_known = false,
        }
    }
    Some(MaxBound { value, ci: ci_known.then_some((lo, hi)) })
}

/// Each group's analysis at the study's family level (`family` comparisons).
pub fn analyse(agg: &Aggregate, family: usize) -> Vec<GroupResult> {
    let level = family_level(family);
    agg.meta.report.groups.iter().map(|g| analyse_group(agg, g, level)).collect()
}

fn analyse_group(agg: &Aggregate, g: &ArmGroup, level: f64) -> GroupResult {
    let settings: Vec<Setting> = g
        .arms
        .iter()
        .map(|a| {
            let v = agg.finals_of(a);
            Setting { arm: a.clone(), mean: super::mean_std(&v.iter().map(|x| x.1).collect::<Vec<_>>()).map(|m| m.0), units: v.len() }
        })
        .collect();
    let ranked: Vec<&Setting> = {
        let mut r: Vec<&Setting> = settings.iter().filter(|s| s.mean.is_some()).collect();
        r.sort_by(|a, b| b.mean.partial_cmp(&a.mean).unwrap_or(std::cmp::Ordering::Equal));
        r
    };
    let others: Vec<&String> = g.arms.iter().filter(|a| **a != g.default && same_length(agg, &g.default, a)).collect();
    let gaps: Vec<Option<Estimate>> = others.iter().map(|a| diff(agg, &g.default, a, level)).collect();
    let above_default = others.iter().zip(&gaps).filter(|(_, e)| e.and_then(informative).is_some_and(|c| c.0 > 0.0)).map(|(a, _)| (*a).clone()).collect();
    let mut pair_ests = Vec::new();
    let mut resolved_pairs = Vec::new();
    for (i, a) in g.arms.iter().enumerate() {
        for b in g.arms[i + 1..].iter().filter(|b| same_length(agg, a, b)) {
            let e = diff(agg, a, b, level);
            // both directions: b − a, and a − b (its negation)
            pair_ests.push(e);
            pair_ests.push(e.map(|e| Estimate { value: -e.value, ci: e.ci.map(|(l, h)| (-h, -l)), ..e }));
            match e.and_then(informative) {
                Some((l, _)) if l > 0.0 => resolved_pairs.push((b.clone(), a.clone())),
                Some((_, h)) if h < 0.0 => resolved_pairs.push((a.clone(), b.clone())),
                _ => {}
            }
        }
    }
    GroupResult {
        name: g.name.clone(),
        default: g.default.clone(),
        best: ranked.first().map(|s| s.arm.clone()),
        worst: ranked.last().map(|s| s.arm.clone()),
        gap: if others.is_empty() { None } else { max_bound(&gaps) },
        above_default,
        spread: if pair_ests.is_empty() { None } else { max_bound(&pair_ests) },
        resolved_pairs,
        kind: kind_of(agg, &g.default),
        missing: settings.iter().filter(|s| s.units == 0).map(|s| s.arm.clone()).collect(),
        settings,
    }
}

fn fmt_bound(b: Option<MaxBound>) -> String {
    match b {
        Some(MaxBound { value, ci: Some((l, h)) }) => format!("{value:+.4} [{l:+.4}, {h:+.4}]"),
        Some(MaxBound { value, ci: None }) => format!("{value:+.4} (no interval: fewer than 2 units, or no spread, in a pair of settings)"),
        None => "— (fewer than two settings with finished cells)".into(),
    }
}

/// The verdict on [`CLAIM`] from the groups' intervals, or None (with why) when the study has no
/// group whose default is OHEM or none whose default is fixed ratio.
pub fn verdict(agg: &Aggregate, groups: &[GroupResult], family: usize) -> Result<TuningVerdict, String> {
    let level = family_level(family);
    let o = groups.iter().find(|g| g.kind.as_deref() == Some("ohem")).ok_or("no group's default arm is an ohem sampler with finished cells")?;
    let f = groups.iter().find(|g| g.kind.as_deref() == Some("fixed_ratio")).ok_or("no group's default arm is a fixed_ratio sampler with finished cells")?;
    // every setting of every other method against OHEM's default
    let mut against: Vec<(String, Option<Estimate>)> = Vec::new();
    for g in agg.meta.report.groups.iter().filter(|g| g.name != o.name) {
        for a in g.arms.iter().filter(|a| same_length(agg, &o.default, a)) {
            against.push((a.clone(), diff(agg, &o.default, a, level)));
        }
    }
    let above: Vec<&String> = against.iter().filter(|(_, e)| e.and_then(informative).is_some_and(|c| c.0 > 0.0)).map(|(a, _)| a).collect();
    let closest = against.iter().filter_map(|(a, e)| e.map(|e| (a, e))).max_by(|x, y| x.1.value.total_cmp(&y.1.value));
    let closest_text = match closest {
        Some((a, e)) => format!("the highest other setting, {a} − {}: {:+.4}{}", o.default, e.value, e.ci.map(|(l, h)| format!(" [{l:+.4}, {h:+.4}]")).unwrap_or_else(|| " (no interval)".into())),
        None => "no other method's setting has finished cells".into(),
    };
    let spreads = format!("{}'s spread {} against {}'s {}", f.name, fmt_bound(f.spread), o.name, fmt_bound(o.spread));
    let (fs, os) = (f.spread.and_then(|b| b.ci), o.spread.and_then(|b| b.ci));
    let f_larger = fs.zip(os).is_some_and(|(fc, oc)| fc.0 > oc.1);
    let o_larger = fs.zip(os).is_some_and(|(fc, oc)| oc.0 > fc.1);
    let unfinished: Vec<&String> = groups.iter().flat_map(|g| g.missing.iter()).collect();
    let missing = closest.is_none() || against.iter().any(|(_, e)| e.and_then(informative).is_none()) || fs.is_none() || os.is_none() || !unfinished.is_empty();
    let (word, why) = if !above.is_empty() || o_larger {
        let mut why = Vec::new();
        if !above.is_empty() {
            why.push(format!("{} end resolved above OHEM's default {}", above.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "), o.default));
        }
        if o_larger {
            why.push(format!("{}'s spread is resolved larger than {}'s", o.name, f.name));
        }
        (Word::Contradicted, why.join("; "))
    } else if f_larger && !missing {
        (Word::Supported, format!("no other method's setting is resolved above OHEM's default {}, and {}'s spread is resolved larger than {}'s", o.default, f.name, o.name))
    } else if !unfinished.is_empty() {
        (Word::NotResolved, format!("settings without a finished cell: {}", unfinished.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")))
    } else if missing {
        (Word::NotResolved, "a comparison has no interval (fewer than 2 units, or no spread across them)".to_string())
    } else {
        (Word::NotResolved, format!("no other method's setting is resolved above OHEM's default {}, but the spreads' intervals overlap", o.default))
    };
    let text = format!("{CLAIM}: **{word}**: {why} ({closest_text}; {spreads}; {}, intervals allowing for the pick of best and worst)", family_text(family));
    Ok(TuningVerdict { word, text })
}

/// One group as a line of summary.md.
pub fn line(g: &GroupResult) -> String {
    let mean = |a: &Option<String>| a.as_ref().and_then(|a| g.settings.iter().find(|s| &s.arm == a)).and_then(|s| s.mean).map(|m| format!(" ({m:.4})")).unwrap_or_default();
    let gap_words = match g.gap.and_then(|b| b.ci) {
        None => "not resolved (no interval)".to_string(),
        Some(_) if !g.above_default.is_empty() => format!("resolved above 0: {} end higher than the default", g.above_default.join(", ")),
        Some(_) => "not resolved (no setting is resolved above the default)".to_string(),
    };
    let spread_words = match g.spread.and_then(|b| b.ci) {
        None => "not resolved (no interval)".to_string(),
        Some(_) if !g.resolved_pairs.is_empty() => {
            let n = g.settings.len() * (g.settings.len() - 1) / 2;
            let ends = match (&g.best, &g.worst) {
                (Some(b), Some(w)) if g.resolved_pairs.contains(&(b.clone(), w.clone())) => format!(", {b} ends higher than {w}"),
                _ => String::new(),
            };
            format!("resolved above 0 ({} of {n} pairs of settings resolved apart{ends}; each in groups.csv)", g.resolved_pairs.len())
        }
        Some(_) => "not resolved (no two settings are resolved apart)".to_string(),
    };
    let unfinished = if g.missing.is_empty() { String::new() } else { format!(", {} without a finished cell: {}", g.missing.len(), g.missing.join(", ")) };
    format!(
        "{} ({} settings{unfinished}): best {}{}, worst {}{}; the default {}'s gap to the best {}: {gap_words}; the spread, best − worst, {}: {spread_words}",
        g.name,
        g.settings.len(),
        g.best.as_deref().unwrap_or("—"),
        mean(&g.best),
        g.worst.as_deref().unwrap_or("—"),
        mean(&g.worst),
        g.default,
        fmt_bound(g.gap),
        fmt_bound(g.spread),
    )
}

/// The section of summary.md (only in a study with `report.groups`).
pub fn section(md: &mut String, agg: &Aggregate, groups: &[GroupResult], verdict: &Result<TuningVerdict, String>, family: usize) {
    if groups.is_empty() {
        return;
    }
    let metric = agg.metric().column();
    md.push_str(&format!(
        "## Tuning: each method over its own knobs\n\nEach method's settings (`report.groups`), by final {metric}: its best and worst setting (by the mean), its default's gap to the best (the largest difference of a setting over the default, ≥ 0), and its spread (best − worst). The best and the worst are picked from these same logs, so every pair of settings a pick could land on is in the study's family ({}); when all those intervals hold, the true gap and the true spread lie between the largest lower end and the largest upper end of their pairs' intervals (clipped at 0), and that is the interval given. The verdict's rule: supported when no setting of another method is resolved above OHEM's default and fixed ratio's spread is resolved larger than OHEM's (its lower end above OHEM's upper end); contradicted when a setting of another method is resolved above OHEM's default, or OHEM's spread is resolved larger than fixed ratio's; not resolved otherwise. Also in `groups.csv`; one chart per knob (`knob_<key>.png`).\n\n",
        family_text(family)
    ));
    match verdict {
        Ok(v) => md.push_str(&format!("- {}\n", v.text)),
        Err(why) => md.push_str(&format!("- {CLAIM}: no verdict: {why}\n")),
    }
    for g in groups {
        md.push_str(&format!("- {}\n", line(g)));
    }
    md.push('\n');
}

/// A knob's value in an arm's config as the chart's label: its YAML text, or `none` where the
/// config leaves it unset (e.g. `sampler.nms_iou: null`, no NMS).
pub fn knob_value(agg: &Aggregate, arm: &str, knob: &str) -> Option<String> {
    let c = agg.by_arm(arm).into_iter().find_map(|r| r.config.as_ref())?;
    let mut flat = Vec::new();
    crate::harness::grid::flatten("", &serde_json::to_value(c).ok()?, &mut flat);
    Some(match flat.into_iter().find(|(k, _)| k == knob).map(|(_, v)| v) {
        None | Some(serde_json::Value::Null) => "none".to_string(),
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
    })
}

/// One chart's data: for `knob`, per group that varies it, the settings whose other knobs are
/// at the default's values: (the group, the default's value of the knob, and per setting the
/// knob's value and the arm's per-unit final values).
pub type KnobSeries = (String, Option<String>, Vec<(String, Vec<f64>)>);

/// The series of each knob's chart, in the order the groups name the knobs.
pub fn knob_series(agg: &Aggregate) -> Vec<(String, Vec<KnobSeries>)> {
    let mut knobs: Vec<String> = Vec::new();
    for g in &agg.meta.report.groups {
        for k in &g.knobs {
            if !knobs.contains(k) {
                knobs.push(k.clone());
            }
        }
    }
    knobs
        .into_iter()
        .map(|k| {
            let series = agg
                .meta
                .report
                .groups
                .iter()
                .filter(|g| g.knobs.contains(&k))
                .map(|g| {
                    let at_default = |a: &str| g.knobs.iter().filter(|o| **o != k).all(|o| knob_value(agg, a, o) == knob_value(agg, &g.default, o));
                    let mut pts: Vec<(String, Vec<f64>)> = g
                        .arms
                        .iter()
                        .filter(|a| at_default(a))
                        .filter_map(|a| knob_value(agg, a, &k).map(|v| (v, agg.finals_of(a).iter().map(|x| x.1).collect::<Vec<_>>())))
                        .filter(|(_, v)| !v.is_empty())
                        .collect();
                    pts.sort_by(|a, b| order_key(&a.0).total_cmp(&order_key(&b.0)).then(a.0.cmp(&b.0)));
                    (g.name.clone(), knob_value(agg, &g.default, &k), pts)
                })
                .collect();
            (k, series)
        })
        .collect()
}

/// Numbers in their order, then `none` (no value: no NMS, say) after them, then other text.
pub fn order_key(v: &str) -> f64 {
    v.parse::<f64>().unwrap_or(if v == "none" { f64::MAX / 2.0 } else { f64::MAX })
}
