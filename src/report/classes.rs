//! Self-balancing classes (issue 38, claim 2), from each cell's `classes.csv`
//! ([`crate::rundir::ClassRow`]): the claim is that a class left out of the backward pass sees
//! its loss rise, so that it ranks higher and is picked more at the next iteration: class
//! balance by feedback, without a ratio.
//!
//! **The feedback statistic** of one run: at each bookkeeping step t and foreground class c,
//! the class's *deficit* `d = loss share − pick share` (its share of the minibatch's per-RoI
//! loss, over all its RoIs, less its share of the RoIs picked), and at the next bookkeeping step
//! its *excess pick share* `e = pick share − candidate share` (how much more of the picked RoIs
//! it holds than of the RoIs it could have been picked from). Each class's `d` and `e` are
//! centred on their own moving mean over [`DETREND`] steps (a class that is simply hard
//! throughout, or whose loss and picks drift together as training goes on, would otherwise
//! correlate with itself), and the statistic is Pearson's correlation of `d_t` with `e_{t+1}`
//! pooled over the classes. A deficit followed by more picks than the class's
//! candidates alone would give is positive; a sampler whose picks at t+1 depend on t+1's
//! images alone gives about 0.
//!
//! Why not the plain rise in pick share, `s_{t+1} − s_t`: it shares `s_t` with the deficit, so
//! it correlates with it when nothing feeds back at all (`Var(s_t) − Cov(l_t, s_t)`: chance picks
//! push it up, candidates that drive both the loss and the picks push it down). tests/balance.rs
//! shows the plain rise at about −0.17 on independent steps, where this statistic is near 0,
//! and this one positive under a known positive feedback and negative under a negative one.
//!
//! Per arm, the runs' statistics with a t-interval over units (Nadeau and Bengio's over
//! resampled splits), at the study family's level: each arm with bookkeeping is one comparison
//! of the family ([`super::compare::study_family`]).

use super::aggregate::Aggregate;
use super::compare::family_text;
use super::stats::{compare_units, family_level, Estimate, Scale, Seeded};
use crate::rundir::ClassRow;

/// The window, in bookkeeping steps, of the moving mean each class's series is centred on (9
/// steps: 180 iterations at one in 20).
pub const DETREND: usize = 9;

/// The feedback statistic of one run's bookkeeping, or None with fewer than 3 pairs of
/// consecutive steps or no spread.
pub fn feedback(rows: &[ClassRow]) -> Option<f64> {
    use std::collections::BTreeMap;
    // per step: the foreground classes' (deficit, excess pick share)
    let mut steps: BTreeMap<usize, Vec<&ClassRow>> = BTreeMap::new();
    for r in rows {
        steps.entry(r.iteration).or_default().push(r);
    }
    let shares = |rs: &[&ClassRow]| -> Option<BTreeMap<usize, (f64, f64)>> {
        let (sel, cand, loss) = rs.iter().fold((0i64, 0i64, 0.0f64), |(a, b, c), r| (a + r.selected, b + r.candidates, c + r.loss_sum));
        if sel == 0 || cand == 0 || loss <= 0.0 {
            return None;
        }
        Some(rs.iter().filter(|r| r.class > 0).map(|r| {
            let (s, a, l) = (r.selected as f64 / sel as f64, r.candidates as f64 / cand as f64, r.loss_sum / loss);
            (r.class, (l - s, s - a))
        }).collect())
    };
    let seq: Vec<BTreeMap<usize, (f64, f64)>> = steps.values().filter_map(|rs| shares(rs)).collect();
    // per class, the pairs (d_t, e_{t+1}) over consecutive steps
    let mut pairs: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for w in seq.windows(2) {
        for (c, (d, _)) in &w[0] {
            if let Some((_, e)) = w[1].get(c) {
                pairs.entry(*c).or_default().push((*d, *e));
            }
        }
    }
    let mut centred: Vec<(f64, f64)> = Vec::new();
    for v in pairs.values().filter(|v| v.len() >= 2) {
        // each series less its centred moving mean over DETREND steps: a class's slow drift over
        // training (falling losses, the learning-rate step) is no feedback, only its step-to-step
        // departures are
        let local = |i: usize, f: fn(&(f64, f64)) -> f64| {
            let w = &v[i.saturating_sub(DETREND / 2)..(i + DETREND / 2 + 1).min(v.len())];
            w.iter().map(f).sum::<f64>() / w.len() as f64
        };
        centred.extend(v.iter().enumerate().map(|(i, (d, e))| (d - local(i, |p| p.0), e - local(i, |p| p.1))));
    }
    if centred.len() < 3 {
        return None;
    }
    let (sdd, see, sde) = centred.iter().fold((0.0, 0.0, 0.0), |(a, b, c), (d, e)| (a + d * d, b + e * e, c + d * e));
    (sdd > 0.0 && see > 0.0).then(|| sde / (sdd * see).sqrt())
}

/// One arm's feedback over its units.
#[derive(Debug, Clone)]
pub struct ArmFeedback {
    pub arm: String,
    /// Each unit's statistic.
    pub units: Vec<Seeded>,
    /// Their mean with its interval at the family's level (a one-sample t: against 0).
    pub est: Option<Estimate>,
}

/// The arms whose finished cells logged bookkeeping, in grid order, in a study of class
/// balance (`report.balance`; elsewhere none: the section and its comparisons are left out).
pub fn arms_with_classes(agg: &Aggregate) -> Vec<String> {
    if !agg.meta.report.balance {
        return Vec::new();
    }
    agg.meta.arms.iter().filter(|a| agg.by_arm(a).iter().any(|r| !r.classes.is_empty())).cloned().collect()
}

/// Each arm's feedback at the level of a family of `family`.
pub fn analyse(agg: &Aggregate, family: usize) -> Vec<ArmFeedback> {
    arms_with_classes(agg)
        .into_iter()
        .map(|arm| {
            let units: Vec<Seeded> = agg.by_arm(&arm).iter().filter_map(|r| feedback(&r.classes).map(|f| (r.unit(), f))).collect();
            let zeros: Vec<Seeded> = units.iter().map(|(u, _)| (*u, 0.0)).collect();
            let est = compare_units(&zeros, &units, Scale::Difference, family_level(family), agg.rho);
            ArmFeedback { arm, units, est }
        })
        .collect()
}

/// One arm as a line of summary.md.
pub fn line(f: &ArmFeedback) -> String {
    let (value, ci) = match f.est {
        Some(e) => (format!("{:+.3}", e.value), e.ci),
        None => ("—".into(), None),
    };
    let words = super::compare::words(ci, 0.0, "a deficit is followed by more picks", "a deficit is followed by fewer picks", "fewer than 2 units");
    let ci = ci.map(|(l, h)| format!(" [{l:+.3}, {h:+.3}]")).unwrap_or_default();
    format!("{}: feedback {value}{ci} over {} units: {words}", f.arm, f.units.len())
}

/// The section of summary.md (only where some cell logged bookkeeping).
pub fn section(md: &mut String, rows: &[ArmFeedback], family: usize) {
    if rows.is_empty() {
        return;
    }
    md.push_str(&format!(
        "## Self-balancing classes\n\nFrom each cell's `classes.csv` (one iteration in 20): per foreground class, its deficit at one bookkeeping step (its share of the minibatch's per-RoI loss less its share of the picked RoIs) against its excess pick share at the next (its share of the picked RoIs less its share of the candidate RoIs), each centred on the class's own moving mean over 9 steps (so that a drift over training is no feedback); the feedback is their correlation pooled over the classes, per cell, then its mean over units with the t-interval at the family's level ({}). The claim that classes balance themselves predicts it above 0 for OHEM and about 0 for a fixed ratio. Charts: `classes_<arm>.png`.\n\n",
        family_text(family)
    ));
    for f in rows {
        md.push_str(&format!("- {}\n", line(f)));
    }
    md.push('\n');
}

/// Per class of `arm`: (its name, and per bookkeeping iteration the mean over units of its
/// pick share and of its candidate share), for the arm's chart.
pub type ClassCurves = Vec<(String, Vec<(f64, f64, f64)>)>;

/// [`ClassCurves`] of an arm.
pub fn curves(agg: &Aggregate, arm: &str) -> ClassCurves {
    use std::collections::BTreeMap;
    // (class, iteration) -> (Σ pick share, Σ candidate share, units)
    let mut acc: BTreeMap<(usize, usize), (f64, f64, usize)> = BTreeMap::new();
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for r in agg.by_arm(arm) {
        let mut totals: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
        for c in &r.classes {
            let t = totals.entry(c.iteration).or_default();
            t.0 += c.selected;
            t.1 += c.candidates;
        }
        for c in &r.classes {
            let (sel, cand) = totals[&c.iteration];
            if sel == 0 || cand == 0 {
                continue;
            }
            names.entry(c.class).or_insert_with(|| c.name.clone());
            let e = acc.entry((c.class, c.iteration)).or_default();
            e.0 += c.selected as f64 / sel as f64;
            e.1 += c.candidates as f64 / cand as f64;
            e.2 += 1;
        }
    }
    names
        .into_iter()
        .map(|(class, name)| {
            let pts = acc.range((class, 0)..(class + 1, 0)).map(|((_, it), (s, a, n))| (*it as f64, s / *n as f64, a / *n as f64)).collect();
            (name, pts)
        })
        .collect()
}
