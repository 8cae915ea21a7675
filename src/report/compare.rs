//! Stage 2 of the report: the arms against each other. Speed-ups against each
//! baseline, final-mAP differences, warnings on offline-mining arms that
//! mined nothing, and verdicts on the claims the grid file names.

use super::aggregate::Aggregate;
use std::collections::BTreeSet;

use super::stats::{compare_units, family_level, gehan, seeds_needed, Estimate, Scale, Seeded};
use super::{judge, RunLog};
use crate::rundir::{Measure, Regime};

/// One speed-up: baseline / arm, with its 95% t-interval over seeds, and the family-wise one
/// (or, for a time to target that some seeds never reached, Gehan's test of the censored times).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speedup {
    pub baseline: String,
    pub arm: String,
    pub measure: Measure,
    pub ratio: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    /// The comparisons of the study's family ([`study_family`]), and this one's interval at
    /// [`family_level`] of them.
    pub family: usize,
    pub fw_lo: Option<f64>,
    pub fw_hi: Option<f64>,
    /// A time to target that some seeds did not reach: Gehan's test in place of the interval.
    pub censored: Option<CensoredTest>,
    pub note: String,
}

/// A time-to-target comparison with seeds that never reached the target: each such seed's
/// time counts as at least its run's training time (censored), and Gehan's rank test at the
/// family's level says whether one arm gets there later.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CensoredTest {
    pub target: f64,
    pub base_reached: usize,
    pub base_seeds: usize,
    pub arm_reached: usize,
    pub arm_seeds: usize,
    /// Gehan's W (> 0: the arm tends to get there first), its two-sided permutation p, the
    /// smallest p these seeds allow, and the family's threshold 0.05 / m.
    pub w: f64,
    pub p: f64,
    pub p_min: f64,
    pub threshold: f64,
}

impl CensoredTest {
    /// Whether the test resolves the order: `Some(true)`, the arm is later (slower); `Some(false)`, earlier.
    pub fn arm_later(&self) -> Option<bool> {
        (self.p <= self.threshold && self.w != 0.0).then_some(self.w < 0.0)
    }

    /// "ohem reaches 0.2400 within its budget in 0 of 5 seeds, frcn in 5 of 5".
    pub fn counts(&self, baseline: &str, arm: &str) -> String {
        format!("{arm} reaches {:.4} within its training budget in {} of {} seeds, {baseline} in {} of {}", self.target, self.arm_reached, self.arm_seeds, self.base_reached, self.base_seeds)
    }

    /// The test's result in words: p against the family's threshold (and, when the seeds
    /// cannot reach it at all, the smallest p they allow).
    pub fn test_text(&self) -> String {
        let floor = if self.p_min > self.threshold { format!("; the smallest p any split of these times allows is {:.4}, so these seeds cannot resolve it", self.p_min) } else { String::new() };
        format!("Gehan's test of the censored times, p = {:.4} against the family's {:.4}{floor}", self.p, self.threshold)
    }
}

/// Final mAP, arm − baseline, with its 95% interval, the family-wise one, and the seeds behind
/// it (a row of map_diffs.csv).
#[derive(Debug, Clone)]
pub struct MapDiff {
    pub baseline: String,
    pub arm: String,
    pub diff: Option<Estimate>,
    /// The comparisons of the study's family ([`study_family`]), and this one's interval at [`family_level`] of them.
    pub family: usize,
    pub fw: Option<Estimate>,
    pub baseline_seeds: usize,
    pub arm_seeds: usize,
}

/// How an interval was made, for the tables: "95%" for a family of one, else "Bonferroni over m (99.8%)".
pub fn family_text(m: usize) -> String {
    if m >= 2 { format!("Bonferroni over {m} ({:.2}%)", 100.0 * family_level(m)) } else { "95%".into() }
}

/// How an interval over units was made: the family's text, plus, in a study over resampled
/// splits, "corrected resampled t over (split, seed) units".
fn units_text(agg: &Aggregate, family: String) -> String {
    if agg.rho > 0.0 {
        format!("{family}, Nadeau-Bengio corrected over (split, seed) units")
    } else {
        family
    }
}

/// The study's family: every comparison its Findings, Verdicts and tuning section
/// ([`super::groups`]) state, one per unordered
/// pair of arms and measure (final mAP, or a speed measure), so that a pair compared in both
/// directions counts once. Every interval the words use is Bonferroni's over all of them, each
/// at `1 − 0.05 / m`: together they cover their true values with at least 95% probability,
/// so every "resolved" in a study's summary.md holds together at 95% (tests/stats.rs checks it
/// over whole simulated studies).
pub fn study_family(agg: &Aggregate) -> usize {
    let mut set = BTreeSet::new();
    let key = |b: &str, a: &str, m: &str| {
        let (x, y) = if b <= a { (b, a) } else { (a, b) };
        (x.to_string(), y.to_string(), m.to_string())
    };
    for b in &baselines(agg) {
        for a in agg.meta.arms.iter().filter(|a| *a != b) {
            if same_length(agg, b, a) {
                set.insert(key(b, a, "final"));
            }
            for measure in Measure::ALL.into_iter().filter(|&m| comparable(agg, b, a, m)) {
                set.insert(key(b, a, measure.name()));
            }
        }
    }
    // a sensitivity study's groups: every pair of settings a pick of best, worst or default
    // may land on, and OHEM's default against every other method's setting
    for (a, b) in super::groups::family_pairs(agg) {
        set.insert(key(&a, &b, "final"));
    }
    // the rarest and the most common third of the classes, each arm against each baseline
    for (b, a, t) in super::per_class::family_pairs(agg, &baselines(agg)) {
        set.insert(key(&b, &a, t));
    }
    // each arm's self-balancing feedback (its per-class bookkeeping) against 0
    for a in super::classes::arms_with_classes(agg) {
        set.insert(key(&a, &a, "feedback"));
    }
    for v in &agg.meta.report.verdicts {
        set.insert(key(&v.baseline, &v.arm, v.measure.name()));
        // the verdict line also states the pair's final-mAP difference with a family-wise interval
        if same_length(agg, &v.baseline, &v.arm) {
            set.insert(key(&v.baseline, &v.arm, "final"));
        }
    }
    set.len().max(1)
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
    /// The comparisons of the study's family ([`study_family`]): `ci_lo`/`ci_hi` are
    /// Bonferroni's interval over them, and the verdict's word comes from it.
    pub family: usize,
    pub seeds: usize,
    pub seeds_needed: Option<usize>,
    /// Final mAP, arm − baseline, with its family-wise interval.
    pub map_diff: Option<f64>,
    pub map_diff_lo: Option<f64>,
    pub map_diff_hi: Option<f64>,
    /// `notes` joined by "; " (verdicts.csv's column).
    pub note: String,
    /// What qualifies the verdict, one remark each (summary.md lists them under it).
    #[serde(skip)]
    pub notes: Vec<String>,
    /// The regime of the arm's measurement, and what of the claim's stated regime it differs in.
    pub regime: Regime,
    pub differs: Vec<&'static str>,
}

/// The baselines of the speed-ups and differences: `report.baselines`, else the first arm.
pub fn baselines(agg: &Aggregate) -> Vec<String> {
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

/// Gehan's test of `arm` against `baseline` on time to `agg.target`, at the level of a family of `family`.
fn censored_test(agg: &Aggregate, baseline: &str, arm: &str, family: usize) -> Option<CensoredTest> {
    let (bv, av) = (agg.censored(baseline, arm), agg.censored(arm, baseline));
    let g = gehan(&bv, &av)?;
    let reached = |v: &[super::stats::Censored]| v.iter().filter(|x| x.1).count();
    Some(CensoredTest { target: agg.target, base_reached: reached(&bv), base_seeds: bv.len(), arm_reached: reached(&av), arm_seeds: av.len(), w: g.w, p: g.p, p_min: g.p_min, threshold: 0.05 / family.max(1) as f64 })
}

/// Every arm against every baseline, on every measure; intervals at the level of a family of `family` ([`study_family`]).
pub fn speedups(agg: &Aggregate, family: usize) -> Vec<Speedup> {
    let mut out = Vec::new();
    for b in &baselines(agg) {
        for a in agg.meta.arms.iter().filter(|a| *a != b) {
            for measure in Measure::ALL.into_iter().filter(|m| *m != Measure::CpuSPerIter || agg.has_cpu) {
                let (bv, bn) = agg.per_seed(b, a, measure);
                let (av, an) = agg.per_seed(a, b, measure);
                let dnf = dnf(measure, (&bv, bn), (&av, an));
                // a pair the findings do not compare (one arm trained for fewer epochs) gets its
                // 95% interval for the tables, but no family-wise one and no test: it is no finding
                let stated = comparable(agg, b, a, measure);
                let r = if dnf { None } else { compare_units(&bv, &av, Scale::Ratio, 0.95, agg.rho) };
                let fw = if dnf || !stated { None } else { compare_units(&bv, &av, Scale::Ratio, family_level(family), agg.rho) }.and_then(|x| x.ci);
                let censored = if dnf && stated { censored_test(agg, b, a, family) } else { None };
                let note = if !stated {
                    let (eb, ea) = (epochs_of(agg, b).unwrap_or(0), epochs_of(agg, a).unwrap_or(0));
                    format!("not compared: {b} ran {} and {a} {}", epochs_text(eb), epochs_text(ea))
                } else if let Some(c) = censored {
                    format!("DNF, censored at each run's end: {}; {}", c.counts(b, a), c.test_text())
                } else if r.is_none() {
                    "no finished seeds".into()
                } else if r.and_then(|x| x.ci).is_some_and(|(lo, hi)| lo == hi) {
                    NO_SPREAD.into()
                } else {
                    String::new()
                };
                out.push(Speedup { baseline: b.clone(), arm: a.clone(), measure, ratio: r.map(|x| x.value), ci_lo: r.and_then(|x| x.ci).map(|c| c.0), ci_hi: r.and_then(|x| x.ci).map(|c| c.1), family, fw_lo: fw.map(|c| c.0), fw_hi: fw.map(|c| c.1), censored, note });
            }
        }
    }
    out
}

/// Final-mAP differences against each baseline (what an ablation reads); family-wise intervals
/// at the level of a family of `family` ([`study_family`]).
pub fn map_diffs(agg: &Aggregate, family: usize) -> Vec<MapDiff> {
    let mut out = Vec::new();
    for b in &baselines(agg) {
        let arms: Vec<&String> = agg.meta.arms.iter().filter(|a| *a != b && same_length(agg, b, a)).collect();
        for a in arms {
            let (bv, av) = (agg.finals_of(b), agg.finals_of(a));
            let diff = compare_units(&bv, &av, Scale::Difference, 0.95, agg.rho);
            let fw = compare_units(&bv, &av, Scale::Difference, family_level(family), agg.rho);
            out.push(MapDiff { baseline: b.clone(), arm: a.clone(), diff, family, fw, baseline_seeds: bv.len(), arm_seeds: av.len() });
        }
    }
    out
}

/// One line of the findings: a comparison and the words its interval allows, nothing more
/// (a row of `findings.csv`, which `harness compare` reads back).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub baseline: String,
    pub arm: String,
    /// `final_<metric>` (arm − baseline), or a speed measure (baseline / arm: > 1, the arm is faster).
    pub measure: String,
    pub value: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    /// "95%", "Bonferroni over m (…%)", or Gehan's test for censored times to target.
    pub interval: String,
    pub finding: String,
}

/// The words an interval allows: resolved above, resolved below, or not resolved (with why,
/// when there is no interval or no spread). `null` is 0 for a difference, 1 for a ratio.
pub(crate) fn words(ci: Option<(f64, f64)>, null: f64, above: &str, below: &str, missing: &str) -> String {
    match ci {
        None => format!("not resolved ({missing})"),
        Some((lo, hi)) if lo == hi => NO_SPREAD.into(),
        Some((lo, _)) if lo > null => format!("resolved above {null}: {above}"),
        Some((_, hi)) if hi < null => format!("resolved below {null}: {below}"),
        Some(_) => format!("not resolved (the interval spans {null})"),
    }
}

/// Every final-mAP difference and speed-up (between arms trained for as long, but seconds per
/// iteration), each pair of arms once (the first direction met), each with the words its
/// family-wise interval allows ([`study_family`]); a time to target that some seeds never
/// reached, with the words of Gehan's test at the family's level.
pub fn findings(agg: &Aggregate, speedups: &[Speedup], map_diffs: &[MapDiff]) -> Vec<Finding> {
    let metric = agg.metric().column();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut first = |b: &str, a: &str, m: &str| seen.insert(if b <= a { (b.to_string(), a.to_string(), m.to_string()) } else { (a.to_string(), b.to_string(), m.to_string()) });
    for d in map_diffs.iter().filter(|d| first(&d.baseline, &d.arm, "final")) {
        let ci = d.fw.and_then(|x| x.ci);
        let (a, b) = (&d.arm, &d.baseline);
        out.push(Finding {
            baseline: b.clone(),
            arm: a.clone(),
            measure: format!("final_{metric}"),
            value: d.diff.map(|x| x.value),
            ci_lo: ci.map(|c| c.0),
            ci_hi: ci.map(|c| c.1),
            interval: units_text(agg, family_text(d.family)),
            finding: words(ci, 0.0, &format!("{a} ends higher than {b}"), &format!("{a} ends lower than {b}"), "fewer than 2 seeds in an arm"),
        });
    }
    for s in speedups.iter().filter(|s| comparable(agg, &s.baseline, &s.arm, s.measure) && first(&s.baseline, &s.arm, s.measure.name())) {
        let ci = s.fw_lo.zip(s.fw_hi);
        let (a, b, m) = (&s.arm, &s.baseline, s.measure.name());
        if let Some(c) = s.censored {
            let finding = match c.arm_later() {
                Some(true) => format!("resolved: {a} is slower than {b} in {m}"),
                Some(false) => format!("resolved: {a} is faster than {b} in {m}"),
                None => "not resolved".to_string(),
            };
            out.push(Finding {
                baseline: b.clone(),
                arm: a.clone(),
                measure: m.to_string(),
                value: None,
                ci_lo: None,
                ci_hi: None,
                interval: format!("Gehan's test over {} (p ≤ {:.4})", s.family, c.threshold),
                finding: format!("{finding} ({}; {})", c.test_text(), c.counts(b, a)),
            });
            continue;
        }
        let missing = if s.note.is_empty() { "fewer than 2 seeds in an arm".to_string() } else { s.note.clone() };
        out.push(Finding {
            baseline: b.clone(),
            arm: a.clone(),
            measure: m.to_string(),
            value: s.ratio,
            ci_lo: ci.map(|c| c.0),
            ci_hi: ci.map(|c| c.1),
            interval: units_text(agg, family_text(s.family)),
            finding: words(ci, 1.0, &format!("{a} is faster than {b} in {m}"), &format!("{a} is slower than {b} in {m}"), &missing),
        });
    }
    out
}

/// A ratio to 2 decimals with an x, in powers of ten past 10^4 (a ratio's bound from a
/// disturbed cell can run to 1e30), where space is short (`compare`'s tables, the charts).
pub fn compact_ratio(x: f64) -> String {
    if x >= 1e4 {
        format!("{x:.1e}x")
    } else {
        format!("{x:.2}x")
    }
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
    match measure {
        Measure::CpuSPerIter => agg.has_cpu,
        Measure::SPerIter => true,
        _ => same_length(agg, baseline, arm),
    }
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
/// empty (fixed-ratio in disguise), and cells whose timings their own evidence
/// flags ([`crate::report::RunLog::timing_flag`]), which every timing
/// comparison leaves out.
pub fn warnings(agg: &Aggregate) -> Vec<Warning> {
    let mut out = mining_warnings(agg);
    for arm in &agg.meta.arms {
        let Some(f) = agg.flagged.get(arm) else { continue };
        let n = agg.by_arm(arm).len();
        let runs = agg.by_arm(arm);
        let name = |u: u64| runs.iter().find(|r| r.unit() == u).map(|r| r.unit_name()).unwrap_or_else(|| format!("seed {u}"));
        let why: Vec<String> = f.iter().map(|(u, why)| format!("{}: {why}", name(*u))).collect();
        out.push(Warning { arm: arm.clone(), text: format!("{arm}: {} of {n} cells left out of every timing comparison (and, to keep them paired, the same seeds of the arm compared with), their timings disturbed by their own evidence: {}", f.len(), why.join("; ")) });
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

/// The verdicts on the claims of `report.verdicts`, with the warnings on the arms they use;
/// their intervals at the level of a family of `family` ([`study_family`]).
pub fn verdicts(agg: &Aggregate, warnings: &[Warning], family: usize) -> Vec<Verdict> {
    let mut out = Vec::new();
    for v in &agg.meta.report.verdicts {
        let (bv, bn) = agg.per_seed(&v.baseline, &v.arm, v.measure);
        let (av, an) = agg.per_seed(&v.arm, &v.baseline, v.measure);
        let seeds = bn.min(an);
        let same_length = same_length(agg, &v.baseline, &v.arm);
        let md = if same_length { compare_units(&agg.finals_of(&v.baseline), &agg.finals_of(&v.arm), Scale::Difference, family_level(family), agg.rho) } else { None };
        let dnf = dnf(v.measure, (&bv, bn), (&av, an));
        // the verdict's words come from the study's family-wise interval
        let level = family_level(family);
        let r = if dnf { None } else { compare_units(&bv, &av, Scale::Ratio, level, agg.rho) };
        let (band_lo, band_hi) = (v.expected / v.tolerance, v.expected * v.tolerance);
        let regime = agg.regime(&v.arm);
        let (word, need, note) = match (r, r.and_then(|x| x.ci)) {
            // every seed gave the same ratio: a zero-width interval, which resolves nothing
            (Some(_), Some((lo, hi))) if lo == hi => (Word::NotResolved, None, NO_SPREAD.into()),
            (Some(est), Some((lo, hi))) => {
                let w = judge(lo, hi, v.expected, v.tolerance);
                // the nearest band edge is the one a resolution has to clear
                let edge = if (est.value.ln() - band_lo.ln()).abs() <= (est.value.ln() - band_hi.ln()).abs() { band_lo } else { band_hi };
                let need = (w == Word::NotResolved).then(|| seeds_needed(&est, edge, seeds, level)).flatten();
                let note = match (w, need) {
                    (Word::NotResolved, Some(n)) => format!("about {n} seeds per arm would resolve it with 80% power at the family's level, if the ratio and the spread stay as observed"),
                    (Word::NotResolved, None) => "the ratio sits on the edge of the band: no number of seeds resolves it".into(),
                    _ => String::new(),
                };
                (w, need, note)
            }
            (Some(_), None) => (Word::NotResolved, None, "one seed per arm: no interval".into()),
            (None, _) if dnf => censored_verdict(censored_test(agg, &v.baseline, &v.arm, family), &v.baseline, &v.arm, band_lo),
            (None, _) => (Word::NotResolved, None, "no finished seeds".into()),
        };
        let mut notes: Vec<String> = [note].into_iter().filter(|n: &String| !n.is_empty()).collect();
        if !same_length {
            let (eb, ea) = (epochs_of(agg, &v.baseline).unwrap_or(0), epochs_of(agg, &v.arm).unwrap_or(0));
            notes.push(format!("final mAP not compared: {} ran {} and {} {}", v.baseline, epochs_text(eb), v.arm, epochs_text(ea)));
        }
        if v.measure == Measure::TimeToTarget {
            notes.extend(target_range(agg, &v.baseline, &v.arm));
        }
        notes.extend(warnings.iter().filter(|w| w.arm == v.arm || w.arm == v.baseline).map(|w| format!("caution: {}", w.text)));
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
            note: notes.join("; "),
            notes,
            differs: v.regime.as_ref().map(|c| regime.differs_from(c)).unwrap_or_default(),
            regime,
        });
    }
    out
}

/// A time-to-target verdict with seeds that never reached the target: contradicted when
/// Gehan's test resolves the arm as the slower and the band lies above 1 (a speed-up below 1
/// is below it); otherwise not resolved, since no interval places the ratio in or out of the band.
fn censored_verdict(c: Option<CensoredTest>, baseline: &str, arm: &str, band_lo: f64) -> (Word, Option<usize>, String) {
    let Some(c) = c else { return (Word::NotResolved, None, "no finished seeds".into()) };
    let what = format!("DNF, censored at each run's end: {}; {}", c.counts(baseline, arm), c.test_text());
    match c.arm_later() {
        // slower means a ratio below 1, which contradicts only a band that lies above 1
        Some(true) if band_lo > 1.0 => (Word::Contradicted, None, format!("{what}: {arm} is resolved slower than {baseline} by rank, so the speed-up lies below 1 and below the band")),
        Some(true) => (Word::NotResolved, None, format!("{what}: {arm} is resolved slower, but with censored seeds no interval places the ratio in or out of the band")),
        Some(false) => (Word::NotResolved, None, format!("{what}: {arm} is resolved faster, but with censored seeds no interval places the ratio in or out of the band; lower report.target_map or train longer")),
        None => (Word::NotResolved, None, format!("{what}; lower report.target_map or train longer")),
    }
}

/// One point of the time-to-target curve: the ratio baseline / arm at a target.
#[derive(Debug, Clone)]
pub struct TargetPoint {
    pub baseline: String,
    pub arm: String,
    pub target: f64,
    pub ratio: f64,
    /// The interval at the level of a family of `family`: every target of the curve.
    pub ci: Option<(f64, f64)>,
    pub family: usize,
    /// Seeds of each arm that reached the target, of those that finished.
    pub reached: (usize, usize),
    pub seeds: (usize, usize),
}

/// The time-to-target ratio of `arm` against `baseline` at every target (a
/// 0.01 grid) that every seed of both arms reaches (so no seed is censored),
/// each interval Bonferroni's over the curve's targets: the curve holds
/// together at 95%, and the report writes no words on it. Targets that every
/// seed of both arms reaches at its first evaluation are left out: they
/// compare only the first epoch's speed.
pub fn target_curve(agg: &Aggregate, baseline: &str, arm: &str) -> Vec<TargetPoint> {
    let first_map = |r: &&RunLog| r.rows.iter().find_map(|e| e.map(agg.metric()));
    let first: Vec<f64> = agg.by_arm(baseline).iter().chain(agg.by_arm(arm).iter()).map(|r| first_map(r).unwrap_or(0.0)).collect();
    let mut out = Vec::new();
    for k in 1..100 {
        let target = k as f64 / 100.0;
        if first.iter().all(|m| *m >= target) {
            continue;
        }
        let (bv, bn) = agg.per_seed_at(baseline, arm, Measure::TimeToTarget, target);
        let (av, an) = agg.per_seed_at(arm, baseline, Measure::TimeToTarget, target);
        if bn == 0 || an == 0 || bv.len() < bn || av.len() < an {
            continue;
        }
        if let Some(e) = compare_units(&bv, &av, Scale::Ratio, 0.95, agg.rho) {
            out.push((TargetPoint { baseline: baseline.into(), arm: arm.into(), target, ratio: e.value, ci: e.ci, family: 1, reached: (bv.len(), av.len()), seeds: (bn, an) }, bv, av));
        }
    }
    // the curve as one family, from the seeds each point was computed from
    let k = out.len();
    out.into_iter()
        .map(|(mut p, bv, av)| {
            p.ci = compare_units(&bv, &av, Scale::Ratio, family_level(k), agg.rho).and_then(|e| e.ci);
            p.family = k;
            p
        })
        .collect()
}

/// "over targets 0.40–0.47 …, the ratio runs 0.65–0.94x": how the verdict depends on the target.
fn target_range(agg: &Aggregate, baseline: &str, arm: &str) -> Option<String> {
    let c = target_curve(agg, baseline, arm);
    let (first, last) = (c.first()?, c.last()?);
    let (lo, hi) = c.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p.ratio), h.max(p.ratio)));
    Some(format!(
        "target_curve.csv: over the targets {:.2}–{:.2} that every seed of both arms reaches, the ratio's estimates run {lo:.2}–{hi:.2}x, with intervals Bonferroni's over those {} targets",
        first.target, last.target, c.len()
    ))
}
