//! Stage 2 of the report: the arms against each other. Speed-ups against each
//! baseline, final-mAP differences, warnings on offline-mining arms that
//! mined nothing, and verdicts on the claims the grid file names.

use super::aggregate::Aggregate;
use super::stats::{compare, compare_at, family_level, seeds_needed, Estimate, Scale, Seeded};
use super::{judge, RunLog};
use crate::rundir::{Measure, Regime};

/// One speed-up: baseline / arm, with its 95% t-interval over seeds, and the family-wise one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speedup {
    pub baseline: String,
    pub arm: String,
    pub measure: Measure,
    pub ratio: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    /// The comparisons against this baseline on this measure, and this one's interval at
    /// [`family_interval_level`] of them (the 95% one when there are fewer than [`FAMILY_MIN`]).
    pub family: usize,
    pub fw_lo: Option<f64>,
    pub fw_hi: Option<f64>,
    pub note: String,
}

/// Final mAP, arm − baseline, with its 95% interval, the family-wise one, and the seeds behind
/// it (a row of map_diffs.csv).
#[derive(Debug, Clone)]
pub struct MapDiff {
    pub baseline: String,
    pub arm: String,
    pub diff: Option<Estimate>,
    /// The differences against this baseline, and this one's interval at [`family_interval_level`] of them.
    pub family: usize,
    pub fw: Option<Estimate>,
    pub baseline_seeds: usize,
    pub arm_seeds: usize,
}

/// From this many comparisons against one baseline on, the report's words come from
/// family-wise intervals: Bonferroni's, each at `1 − 0.05 / m`, so that the whole family of `m`
/// covers its true values with at least 95% probability (tests/stats.rs checks both sides).
pub const FAMILY_MIN: usize = 3;

/// The level of each interval in a family of `m` comparisons.
pub fn family_interval_level(m: usize) -> f64 {
    if m >= FAMILY_MIN { family_level(m) } else { 0.95 }
}

/// How an interval was made, for the tables: "95%", or "Bonferroni over m (99.2%)".
pub fn family_text(m: usize) -> String {
    if m >= FAMILY_MIN { format!("Bonferroni over {m} ({:.1}%)", 100.0 * family_level(m)) } else { "95%".into() }
}

/// What a zero-width interval says: every seed gave the same value, so it resolves nothing.
pub const NO_SPREAD: &str = "no spread across seeds (every seed gave the same value): not resolved";

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
    /// The comparisons against the verdict's baseline: from [`FAMILY_MIN`] on, `ci_lo`/`ci_hi`
    /// are Bonferroni's interval over them, and the verdict's word comes from it.
    pub family: usize,
    pub seeds: usize,
    pub seeds_needed: Option<usize>,
    /// Final mAP, arm − baseline, with its 95% interval.
    pub map_diff: Option<f64>,
    pub map_diff_lo: Option<f64>,
    pub map_diff_hi: Option<f64>,
    pub note: String,
    /// The regime of the arm's measurement, and what of the claim's stated regime it differs in.
    pub regime: Regime,
    pub differs: Vec<&'static str>,
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
fn dnf(measure: Measure, (bv, bn): (&[Seeded], usize), (av, an): (&[Seeded], usize)) -> bool {
    measure == Measure::TimeToTarget && (bv.len() < bn || av.len() < an)
}

/// Every arm against every baseline, on every measure.
pub fn speedups(agg: &Aggregate) -> Vec<Speedup> {
    let mut out = Vec::new();
    for b in &baselines(agg) {
        for a in agg.meta.arms.iter().filter(|a| *a != b) {
            for measure in Measure::ALL {
                let family = family_size(agg, b, measure);
                let (bv, bn) = agg.per_seed(b, measure);
                let (av, an) = agg.per_seed(a, measure);
                let dnf = dnf(measure, (&bv, bn), (&av, an));
                let r = if dnf { None } else { compare(&bv, &av, Scale::Ratio) };
                let fw = if dnf { None } else { compare_at(&bv, &av, Scale::Ratio, family_interval_level(family)) }.and_then(|x| x.ci);
                let note = if dnf {
                    format!("DNF: {} of {an} {a} and {} of {bn} {b} seeds reached the target", av.len(), bv.len())
                } else if r.is_none() {
                    "no finished seeds".into()
                } else if r.and_then(|x| x.ci).is_some_and(|(lo, hi)| lo == hi) {
                    NO_SPREAD.into()
                } else {
                    String::new()
                };
                out.push(Speedup { baseline: b.clone(), arm: a.clone(), measure, ratio: r.map(|x| x.value), ci_lo: r.and_then(|x| x.ci).map(|c| c.0), ci_hi: r.and_then(|x| x.ci).map(|c| c.1), family, fw_lo: fw.map(|c| c.0), fw_hi: fw.map(|c| c.1), note });
            }
        }
    }
    out
}

/// Final-mAP differences against each baseline (what an ablation reads).
pub fn map_diffs(agg: &Aggregate) -> Vec<MapDiff> {
    let mut out = Vec::new();
    for b in &baselines(agg) {
        let arms: Vec<&String> = agg.meta.arms.iter().filter(|a| *a != b && same_length(agg, b, a)).collect();
        let family = arms.len();
        for a in arms {
            let (bv, av) = (agg.finals_of(b), agg.finals_of(a));
            let diff = compare(&bv, &av, Scale::Difference);
            let fw = compare_at(&bv, &av, Scale::Difference, family_interval_level(family));
            out.push(MapDiff { baseline: b.clone(), arm: a.clone(), diff, family, fw, baseline_seeds: bv.len(), arm_seeds: av.len() });
        }
    }
    out
}

/// One line of the findings: a comparison and the words its interval allows, nothing more.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub baseline: String,
    pub arm: String,
    /// `final_<metric>` (arm − baseline), or a speed measure (baseline / arm: > 1, the arm is faster).
    pub measure: String,
    pub value: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    /// "95%" or "Bonferroni over m (…%)".
    pub interval: String,
    pub finding: String,
}

/// The words an interval allows: resolved above, resolved below, or not resolved (with why,
/// when there is no interval or no spread). `null` is 0 for a difference, 1 for a ratio.
fn words(ci: Option<(f64, f64)>, null: f64, above: &str, below: &str, missing: &str) -> String {
    match ci {
        None => format!("not resolved ({missing})"),
        Some((lo, hi)) if lo == hi => NO_SPREAD.into(),
        Some((lo, _)) if lo > null => format!("resolved above {null}: {above}"),
        Some((_, hi)) if hi < null => format!("resolved below {null}: {below}"),
        Some(_) => format!("not resolved (the interval spans {null})"),
    }
}

/// Every final-mAP difference and speed-up (between arms trained for as long, but seconds per
/// iteration), each with the words its interval allows (the family-wise interval from
/// [`FAMILY_MIN`] comparisons against one baseline on).
pub fn findings(agg: &Aggregate, speedups: &[Speedup], map_diffs: &[MapDiff]) -> Vec<Finding> {
    let metric = agg.metric().column();
    let mut out = Vec::new();
    for d in map_diffs {
        let ci = if d.family >= FAMILY_MIN { d.fw.and_then(|x| x.ci) } else { d.diff.and_then(|x| x.ci) };
        let (a, b) = (&d.arm, &d.baseline);
        out.push(Finding {
            baseline: b.clone(),
            arm: a.clone(),
            measure: format!("final_{metric}"),
            value: d.diff.map(|x| x.value),
            ci_lo: ci.map(|c| c.0),
            ci_hi: ci.map(|c| c.1),
            interval: family_text(d.family),
            finding: words(ci, 0.0, &format!("{a} ends higher than {b}"), &format!("{a} ends lower than {b}"), "fewer than 2 seeds in an arm"),
        });
    }
    for s in speedups.iter().filter(|s| comparable(agg, &s.baseline, &s.arm, s.measure)) {
        let ci = if s.family >= FAMILY_MIN { s.fw_lo.zip(s.fw_hi) } else { s.ci_lo.zip(s.ci_hi) };
        let (a, b, m) = (&s.arm, &s.baseline, s.measure.name());
        let missing = if s.note.is_empty() { "fewer than 2 seeds in an arm".to_string() } else { s.note.clone() };
        out.push(Finding {
            baseline: b.clone(),
            arm: a.clone(),
            measure: m.to_string(),
            value: s.ratio,
            ci_lo: ci.map(|c| c.0),
            ci_hi: ci.map(|c| c.1),
            interval: family_text(s.family),
            finding: words(ci, 1.0, &format!("{a} is faster than {b} in {m}"), &format!("{a} is slower than {b} in {m}"), &missing),
        });
    }
    out
}

/// A finding as one line of summary.md.
pub fn finding_line(f: &Finding) -> String {
    let ratio = !f.measure.starts_with("final_");
    let num = |x: f64| if ratio { format!("{x:.2}x") } else { format!("{x:+.4}") };
    let what = if ratio { format!("{} / {}, {}", f.baseline, f.arm, f.measure) } else { format!("{} − {}, {}", f.arm, f.baseline, f.measure) };
    let ci = f.ci_lo.zip(f.ci_hi).map(|(l, h)| format!(" [{}, {}]", num(l), num(h))).unwrap_or_default();
    format!("{what}: {}{ci} ({}): {}", f.value.map(num).unwrap_or_else(|| "—".into()), f.interval, f.finding)
}

/// Whether `baseline / arm` on `measure` is a comparison the findings make: seconds per
/// iteration between any two arms; time to target and total wall clock only between arms
/// trained for as long (a one-epoch timing arm against full runs is no comparison).
pub fn comparable(agg: &Aggregate, baseline: &str, arm: &str, measure: Measure) -> bool {
    measure == Measure::SPerIter || same_length(agg, baseline, arm)
}

/// The comparisons against `baseline` on `measure`: the size of its family.
fn family_size(agg: &Aggregate, baseline: &str, measure: Measure) -> usize {
    agg.meta.arms.iter().filter(|a| *a != baseline && comparable(agg, baseline, a, measure)).count()
}

/// The most epochs any cell of `arm` trained.
fn epochs_of(agg: &Aggregate, arm: &str) -> Option<usize> {
    agg.by_arm(arm).iter().map(|r| r.epochs).max()
}

/// A final mAP is comparable only between arms trained for as long: the
/// differences leave out pairs such as a one-epoch timing arm against full runs.
pub fn same_length(agg: &Aggregate, baseline: &str, arm: &str) -> bool {
    epochs_of(agg, baseline) == epochs_of(agg, arm)
}

/// "1 epoch", "4 epochs".
fn epochs_text(n: usize) -> String {
    format!("{n} epoch{}", if n == 1 { "" } else { "s" })
}

/// What makes an arm's figures suspect: offline mining whose cache stayed
/// empty (fixed-ratio in disguise), and cells that shared the machine (a load
/// above the core count when they started or ended).
pub fn warnings(agg: &Aggregate) -> Vec<Warning> {
    let mut out = mining_warnings(agg);
    for arm in &agg.meta.arms {
        let rs = agg.by_arm(arm);
        let loaded = rs.iter().filter(|r| r.manifest.as_ref().is_some_and(|m| m.overloaded())).count();
        if loaded > 0 {
            out.push(Warning { arm: arm.clone(), text: format!("{arm}: {loaded} of {} cells ran under a 1-minute load above the core count plus one (at their start or end: another busy process): their timings are suspect", rs.len()) });
        }
    }
    out
}

/// Offline-mining arms whose cache stayed empty: fixed-ratio in disguise.
fn mining_warnings(agg: &Aggregate) -> Vec<Warning> {
    let mut out = Vec::new();
    for arm in &agg.meta.arms {
        let rs: Vec<&RunLog> = agg.by_arm(arm).into_iter().filter(|r| r.mines()).collect();
        let empty = rs.iter().filter(|r| r.mined_nothing()).count();
        let first_empty = rs.iter().filter(|r| r.mining.first().is_some_and(|m| m.stats.mined == 0)).count();
        let text = if empty > 0 {
            format!("{arm} mined nothing in {empty} of {} seeds: in those seeds this arm is fixed-ratio (plus a mining stall), not hard-negative mining", rs.len())
        } else if first_empty > 0 {
            format!("{arm}: the first mining round left the cache empty in {first_empty} of {} seeds", rs.len())
        } else if let Some((thin, quota)) = thin_cache(&rs) {
            format!("{arm}: in {thin} of {} seeds a mining round left fewer hard negatives per image than the hard quota ({quota} per image): the rest of the quota is random negatives", rs.len())
        } else {
            continue;
        };
        out.push(Warning { arm: arm.clone(), text });
    }
    out
}

/// Seeds of offline-mining runs in which a round's cache held fewer hard
/// negatives per image than the hard quota (`hard_fraction` × B/N), and that quota.
fn thin_cache(rs: &[&RunLog]) -> Option<(usize, i64)> {
    let quota = |r: &RunLog| r.config.as_ref().and_then(|c| c.sampler.hard_quota(c.rois_per_image()));
    let thin = rs.iter().filter(|r| quota(r).is_some_and(|q| r.mining.iter().any(|m| m.stats.images > 0 && (m.stats.mined as f64 / m.stats.images as f64) < q as f64))).count();
    (thin > 0).then(|| (thin, rs.iter().find_map(|r| quota(r)).unwrap_or(0)))
}

/// The verdicts on the claims of `report.verdicts`, with the warnings on the arms they use.
pub fn verdicts(agg: &Aggregate, warnings: &[Warning]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for v in &agg.meta.report.verdicts {
        let (bv, bn) = agg.per_seed(&v.baseline, v.measure);
        let (av, an) = agg.per_seed(&v.arm, v.measure);
        let seeds = bn.min(an);
        let same_length = same_length(agg, &v.baseline, &v.arm);
        let md = if same_length { compare(&agg.finals_of(&v.baseline), &agg.finals_of(&v.arm), Scale::Difference) } else { None };
        let dnf = dnf(v.measure, (&bv, bn), (&av, an));
        // the verdict's words come from the family-wise interval: every arm compared with this baseline on this measure
        let family = family_size(agg, &v.baseline, v.measure);
        let r = if dnf { None } else { compare_at(&bv, &av, Scale::Ratio, family_interval_level(family)) };
        let (band_lo, band_hi) = (v.expected / v.tolerance, v.expected * v.tolerance);
        let regime = agg.regime(&v.arm);
        let (word, need, mut note) = match (r, r.and_then(|x| x.ci)) {
            // every seed gave the same ratio: a zero-width interval, which resolves nothing
            (Some(_), Some((lo, hi))) if lo == hi => (Word::NotResolved, None, NO_SPREAD.into()),
            (Some(est), Some((lo, hi))) => {
                let w = judge(lo, hi, v.expected, v.tolerance);
                // the nearest band edge is the one a resolution has to clear
                let edge = if (est.value.ln() - band_lo.ln()).abs() <= (est.value.ln() - band_hi.ln()).abs() { band_lo } else { band_hi };
                let need = (w == Word::NotResolved).then(|| seeds_needed(&est, edge, seeds)).flatten();
                let note = match (w, need) {
                    (Word::NotResolved, Some(n)) => format!("about {n} seeds per arm would resolve it with 80% power, if the ratio and the spread stay as observed"),
                    (Word::NotResolved, None) => "the ratio sits on the edge of the band: no number of seeds resolves it".into(),
                    _ => String::new(),
                };
                (w, need, note)
            }
            (Some(_), None) => (Word::NotResolved, None, "one seed per arm: no interval".into()),
            (None, _) if dnf => (Word::NotResolved, None, format!("DNF: {} of {an} {} and {} of {bn} {} seeds reached the target; lower report.target_map or train longer", av.len(), v.arm, bv.len(), v.baseline)),
            (None, _) => (Word::NotResolved, None, "no finished seeds".into()),
        };
        if !same_length {
            let (eb, ea) = (epochs_of(agg, &v.baseline).unwrap_or(0), epochs_of(agg, &v.arm).unwrap_or(0));
            note = format!("{note}{}final mAP not compared: {} ran {} and {} {}", if note.is_empty() { "" } else { "; " }, v.baseline, epochs_text(eb), v.arm, epochs_text(ea));
        }
        if v.measure == Measure::TimeToTarget {
            if let Some(range) = target_range(agg, &v.baseline, &v.arm) {
                note = format!("{note}{}{range}", if note.is_empty() { "" } else { "; " });
            }
        }
        for w in warnings.iter().filter(|w| w.arm == v.arm || w.arm == v.baseline) {
            note = format!("{note}{}caution: {}", if note.is_empty() { "" } else { "; " }, w.text);
        }
        out.push(Verdict {
            claim: v.claim.clone(),
            baseline: v.baseline.clone(),
            arm: v.arm.clone(),
            measure: v.measure,
            expected: v.expected,
            band_lo,
            band_hi,
            ratio: r.map(|x| x.value),
            ci_lo: r.and_then(|x| x.ci).map(|c| c.0),
            ci_hi: r.and_then(|x| x.ci).map(|c| c.1),
            verdict: word,
            family,
            seeds,
            seeds_needed: need,
            map_diff: md.map(|x| x.value),
            map_diff_lo: md.and_then(|x| x.ci).map(|c| c.0),
            map_diff_hi: md.and_then(|x| x.ci).map(|c| c.1),
            note,
            differs: v.regime.as_ref().map(|c| regime.differs_from(c)).unwrap_or_default(),
            regime,
        });
    }
    out
}

/// One point of the time-to-target curve: the ratio baseline / arm at a target.
#[derive(Debug, Clone)]
pub struct TargetPoint {
    pub baseline: String,
    pub arm: String,
    pub target: f64,
    pub ratio: f64,
    pub ci: Option<(f64, f64)>,
    /// Seeds of each arm that reached the target, of those that finished.
    pub reached: (usize, usize),
    pub seeds: (usize, usize),
}

/// The time-to-target ratio of `arm` against `baseline` at every target (a
/// 0.01 grid) that both arms reach in at least 80% of their seeds; the ratio
/// uses the seeds that reached it. Targets that every seed of both arms
/// reaches at its first evaluation are left out: they compare only the first
/// epoch's speed.
pub fn target_curve(agg: &Aggregate, baseline: &str, arm: &str) -> Vec<TargetPoint> {
    let first_map = |r: &&RunLog| r.rows.iter().find_map(|e| e.map(agg.metric()));
    let first: Vec<f64> = agg.by_arm(baseline).iter().chain(agg.by_arm(arm).iter()).map(|r| first_map(r).unwrap_or(0.0)).collect();
    let mut out = Vec::new();
    for k in 1..100 {
        let target = k as f64 / 100.0;
        if first.iter().all(|m| *m >= target) {
            continue;
        }
        let (bv, bn) = agg.per_seed_at(baseline, Measure::TimeToTarget, target);
        let (av, an) = agg.per_seed_at(arm, Measure::TimeToTarget, target);
        let enough = |reached: usize, n: usize| n > 0 && reached as f64 >= 0.8 * n as f64;
        if !(enough(bv.len(), bn) && enough(av.len(), an)) {
            continue;
        }
        if let Some(e) = compare(&bv, &av, Scale::Ratio) {
            out.push(TargetPoint { baseline: baseline.into(), arm: arm.into(), target, ratio: e.value, ci: e.ci, reached: (bv.len(), av.len()), seeds: (bn, an) });
        }
    }
    out
}

/// "over targets 0.40–0.47 …, the ratio runs 0.65–0.94x": how the verdict depends on the target.
fn target_range(agg: &Aggregate, baseline: &str, arm: &str) -> Option<String> {
    let c = target_curve(agg, baseline, arm);
    let (first, last) = (c.first()?, c.last()?);
    let (lo, hi) = c.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p.ratio), h.max(p.ratio)));
    Some(format!(
        "over the targets {:.2}–{:.2} that both arms reach in at least 80% of seeds, the ratio runs {lo:.2}–{hi:.2}x (target_curve.csv)",
        first.target, last.target
    ))
}
