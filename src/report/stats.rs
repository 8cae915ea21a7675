//! The one interval every figure of the report uses: a 95% t-interval for the
//! difference of two arms' means, or for the ratio of their means on the log
//! scale (delta method), **paired by seed** when both arms ran the same seeds
//! and Welch's otherwise; and the seeds a comparison would need, as a power
//! statement from the same standard error.
//!
//! Why t and not a bootstrap: with 3–5 seeds a percentile bootstrap resamples
//! 3–5 values, so its spread is about √((n−1)/n) of the mean's standard error
//! and its discreteness leaves it well short of 95% coverage (the coverage
//! test shows 80–85% at 3 seeds). Student's t with the Welch–Satterthwaite
//! degrees of freedom holds 95% at these counts for normal and near-lognormal
//! seeds (Henderson et al. 2018, "Deep RL that matters"; Bouthillier et al.
//! 2021, "Accounting for variance in ML benchmarks").

use statrs::distribution::{ContinuousCDF, StudentsT};

/// What an interval is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// `mean(arm) − mean(base)`.
    Difference,
    /// `mean(base) / mean(arm)` (a speed-up when the values are times), on the log scale.
    Ratio,
}

/// A comparison of two arms over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The difference or ratio of the means.
    pub value: f64,
    /// The 95% interval; None with fewer than 2 seeds in an arm (no spread to estimate).
    pub ci: Option<(f64, f64)>,
    /// Standard error of the value (of its log for a ratio) and its degrees of freedom.
    pub se: f64,
    pub df: f64,
    /// Whether the seeds were paired.
    pub paired: bool,
    pub scale: Scale,
    /// Nadeau and Bengio's n_test / n_train (0: units are independent seeds on one split).
    pub rho: f64,
}

/// One seed's value of a measure.
pub type Seeded = (u64, f64);

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn var(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0)
}

/// The two-sided quantile `t(1 − (1 − level)/2, df)`.
pub fn t_quantile(level: f64, df: f64) -> f64 {
    let p = 1.0 - (1.0 - level) / 2.0;
    if !(df.is_finite() && df > 0.0) {
        return f64::NAN;
    }
    StudentsT::new(0.0, 1.0, df).map(|t| t.inverse_cdf(p)).unwrap_or(f64::NAN)
}

/// The values of `a` and `b` matched seed for seed, when both arms have exactly the same seeds.
fn pairs(base: &[Seeded], arm: &[Seeded]) -> Option<Vec<(f64, f64)>> {
    let mut b: Vec<Seeded> = base.to_vec();
    let mut a: Vec<Seeded> = arm.to_vec();
    b.sort_by_key(|x| x.0);
    a.sort_by_key(|x| x.0);
    (b.len() == a.len() && b.iter().zip(&a).all(|(x, y)| x.0 == y.0)).then(|| b.iter().zip(&a).map(|(x, y)| (x.1, y.1)).collect())
}

/// Compares `arm` with `base`: the difference or ratio of their means with a
/// 95% interval, paired by seed when both arms ran the same seeds. None when an
/// arm has no value (or, for a ratio, a mean that is not positive).
pub fn compare(base: &[Seeded], arm: &[Seeded], scale: Scale) -> Option<Estimate> {
    compare_at(base, arm, scale, 0.95)
}

/// The two-sided level of each of `m` intervals that together cover all their true values with
/// at least 95% probability (Bonferroni: `1 − 0.05 / m`; 0.95 for one).
pub fn family_level(m: usize) -> f64 {
    1.0 - 0.05 / m.max(1) as f64
}

/// [`compare`] with the interval at a two-sided `level` (e.g. [`family_level`]).
pub fn compare_at(base: &[Seeded], arm: &[Seeded], scale: Scale, level: f64) -> Option<Estimate> {
    compare_units(base, arm, scale, level, 0.0)
}

/// [`compare_at`] over units that are (split, seed) pairs of a resampled dataset, whose
/// training sets overlap: Nadeau and Bengio's corrected resampled t (Machine Learning 52, 2003;
/// for repeated k-fold, Bouckaert and Frank 2004). Each split's seeds are averaged first (they
/// share its training and test sets, so they are no new splits); the variance of the mean over
/// the J splits is `σ² (1/J + ρ)` instead of `σ²/J`, with ρ = n_test / n_train, on J − 1
/// degrees of freedom:
/// the units' results are correlated through the data they share, and the plain `σ²/J`
/// shrinks with J as if they were not (tests/stats.rs shows the plain interval falling short
/// of 95% under a simulated split effect, and this one holding). `rho` 0 is the plain interval.
pub fn compare_units(base: &[Seeded], arm: &[Seeded], scale: Scale, level: f64, rho: f64) -> Option<Estimate> {
    if rho > 0.0 {
        // the seeds of one split share its training and test sets: they are not new splits, so
        // the units the correction counts are the splits, each its seeds' mean (J = the splits)
        return compare_plain(&split_means(base), &split_means(arm), scale, level, rho);
    }
    compare_plain(base, arm, scale, level, rho)
}

/// Each split's mean over its seeds, keyed by the split's part of the unit key
/// (`crate::report::unit_of`: the split index + 1 in the high 32 bits).
fn split_means(v: &[Seeded]) -> Vec<Seeded> {
    let mut by: std::collections::BTreeMap<u64, (f64, usize)> = std::collections::BTreeMap::new();
    for (u, x) in v {
        let e = by.entry(u >> 32 << 32).or_insert((0.0, 0));
        e.0 += x;
        e.1 += 1;
    }
    by.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect()
}

fn compare_plain(base: &[Seeded], arm: &[Seeded], scale: Scale, level: f64, rho: f64) -> Option<Estimate> {
    if base.is_empty() || arm.is_empty() {
        return None;
    }
    let bv: Vec<f64> = base.iter().map(|x| x.1).collect();
    let av: Vec<f64> = arm.iter().map(|x| x.1).collect();
    let (mb, ma) = (mean(&bv), mean(&av));
    let value = match scale {
        Scale::Difference => ma - mb,
        Scale::Ratio if mb > 0.0 && ma > 0.0 => mb / ma,
        Scale::Ratio => return None,
    };
    let centre = if scale == Scale::Ratio { value.ln() } else { value };
    let (se, df, paired) = match pairs(base, arm) {
        Some(p) if p.len() >= 2 => {
            // per-seed contributions: the difference, or the delta method's linearised log ratio
            let z: Vec<f64> = match scale {
                Scale::Difference => p.iter().map(|(b, a)| a - b).collect(),
                Scale::Ratio => p.iter().map(|(b, a)| b / mb - a / ma).collect(),
            };
            (scaled(var(&z), z.len(), 1.0, rho).sqrt(), z.len() as f64 - 1.0, true)
        }
        _ if bv.len() >= 2 && av.len() >= 2 => {
            let (k_b, k_a) = if scale == Scale::Ratio { (mb * mb, ma * ma) } else { (1.0, 1.0) };
            let (vb, va) = (scaled(var(&bv), bv.len(), k_b, rho), scaled(var(&av), av.len(), k_a, rho));
            let se2 = vb + va;
            let denom = vb * vb / (bv.len() as f64 - 1.0) + va * va / (av.len() as f64 - 1.0);
            // Welch–Satterthwaite; with no spread at all, the pooled count
            let df = if denom > 0.0 { se2 * se2 / denom } else { (bv.len() + av.len()) as f64 - 2.0 };
            (se2.sqrt(), df, false)
        }
        _ => return Some(Estimate { value, ci: None, se: f64::NAN, df: f64::NAN, paired: false, scale, rho }),
    };
    let half = t_quantile(level, df) * se;
    let (lo, hi) = (centre - half, centre + half);
    let ci = match scale {
        Scale::Difference => (lo, hi),
        Scale::Ratio => (lo.exp(), hi.exp()),
    };
    Some(Estimate { value, ci: Some(ci), se, df, paired, scale, rho })
}

/// The variance of a mean over `n` units of variance `v`, divided by `k`: `v / (n k)`, or with
/// Nadeau and Bengio's ρ `v (1/n + ρ) / k`. With ρ = 0 it is computed exactly as the plain
/// interval always did, bit for bit.
fn scaled(v: f64, n: usize, k: f64, rho: f64) -> f64 {
    if rho == 0.0 {
        v / (n as f64 * k)
    } else {
        v * (1.0 / n as f64 + rho) / k
    }
}

/// Seeds per arm that would resolve `est` against the threshold `edge` (a
/// difference of 0, or a band edge of a ratio) with 80% power at the two-sided
/// `level` the words use (the family's, [`family_level`]), if the true value
/// were the observed one and the spread stayed as observed: the smallest n with
/// `|value − edge| ≥ (t(1 − (1 − level)/2, df_n) + t(0.80, df_n)) · se · √(n₀ / n)`,
/// where n₀ is the seeds behind `se`. None when the value sits on the edge or
/// has no standard error.
pub fn seeds_needed(est: &Estimate, edge: f64, seeds: usize, level: f64) -> Option<usize> {
    let (centre, edge) = match est.scale {
        Scale::Difference => (est.value, edge),
        Scale::Ratio => (est.value.ln(), edge.ln()),
    };
    let dist = (centre - edge).abs();
    // over resampled splits more seeds do not shrink the split's share of the variance: no
    // count of seeds is promised (more splits would be needed, and the correction has no power
    // statement of its own)
    if !(dist > 1e-12 && est.se.is_finite() && est.se > 0.0 && seeds >= 2) || est.rho > 0.0 {
        return None;
    }
    (2..=100_000).find(|&n| {
        let df = if est.paired { n as f64 - 1.0 } else { 2.0 * n as f64 - 2.0 };
        let z = t_quantile(level, df) + t_quantile(0.60, df); // t(1 − α/2) + t(0.80)
        dist >= z * est.se * (seeds as f64 / n as f64).sqrt()
    })
}

/// One seed's time to a target: the time, and whether the target was reached
/// then (`false`: the run ended at that time without reaching it, so its time
/// to the target is at least that: censored).
pub type Censored = (f64, bool);

/// Gehan's generalized Wilcoxon test of two samples of right-censored times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gehan {
    /// Σ over (arm, base) pairs of +1 where the arm's time is surely the
    /// earlier, −1 where the base's is, 0 where censoring leaves it open or
    /// they tie: > 0, the arm tends to get there first.
    pub w: f64,
    /// The two-sided permutation p-value of |W|, exact over every split of
    /// the pooled seeds into the two arms' sizes.
    pub p: f64,
    /// The smallest p any split of these times could give: a test at a level
    /// below it can never resolve, whatever the order of the seeds.
    pub p_min: f64,
}

/// Whether `x` surely comes before `y`: `x` reached its target, and before
/// `y`'s time (or, when `y` was censored, no later than `y`'s end).
fn surely_before(x: Censored, y: Censored) -> bool {
    x.1 && (x.0 < y.0 || (!y.1 && x.0 <= y.0))
}

/// Gehan's test of `arm` against `base` (Gehan 1965): for censored data it
/// counts only the orderings the data make sure of. Its null distribution is
/// the permutation one, exact: with `s_i = Σ_j u(i, j)` over every pooled
/// seed (pairs within one arm cancel, u being antisymmetric), W is the sum of
/// the arm's `s_i`, so its distribution over every split is that of a sum of
/// `arm.len()` of the n integers `s_i`, counted by dynamic programming. It
/// assumes that, under no difference, which seeds end censored does not
/// depend on the arm (each seed's budget drawn alike), as a permutation test
/// of censored data does. None when an arm is empty.
pub fn gehan(base: &[Censored], arm: &[Censored]) -> Option<Gehan> {
    if base.is_empty() || arm.is_empty() {
        return None;
    }
    let pooled: Vec<Censored> = arm.iter().chain(base).copied().collect();
    let (n, k) = (pooled.len(), arm.len());
    let u = |i: usize, j: usize| -> i64 {
        if surely_before(pooled[i], pooled[j]) {
            1
        } else if surely_before(pooled[j], pooled[i]) {
            -1
        } else {
            0
        }
    };
    let scores: Vec<i64> = (0..n).map(|i| (0..n).map(|j| u(i, j)).sum()).collect();
    let w: i64 = scores[..k].iter().sum();
    // ways[c][t]: subsets of c scores summing to t − offset
    let offset = scores.iter().map(|s| s.abs()).sum::<i64>();
    let width = (2 * offset + 1) as usize;
    let mut ways = vec![vec![0f64; width]; k + 1];
    ways[0][offset as usize] = 1.0;
    for &s in &scores {
        for c in (1..=k).rev() {
            let (lower, upper) = ways.split_at_mut(c);
            for (t, &m) in lower[c - 1].iter().enumerate().filter(|(_, m)| **m > 0.0) {
                upper[0][(t as i64 + s) as usize] += m;
            }
        }
    }
    let dist: Vec<(i64, f64)> = ways[k].iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(t, &m)| (t as i64 - offset, m)).collect();
    let total: f64 = dist.iter().map(|d| d.1).sum();
    let max = dist.iter().map(|d| d.0.abs()).max().unwrap_or(0);
    let p = dist.iter().filter(|d| d.0.abs() >= w.abs()).map(|d| d.1).sum::<f64>() / total;
    let p_min = dist.iter().filter(|d| d.0.abs() == max).map(|d| d.1).sum::<f64>() / total;
    Some(Gehan { w: w as f64, p, p_min })
}
