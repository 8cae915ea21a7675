//! The report's intervals against their promise: simulated seeds with a known
//! true difference and ratio, at the seed counts people use.

use ohem_harness::report::bootstrap_diff;
use ohem_harness::report::stats::{compare, compare_at, compare_units, family_level, gehan, seeds_needed, t_quantile, Censored, Scale, Seeded};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[derive(Clone, Copy, Debug)]
enum Dist {
    Normal,
    LogNormal,
}

/// Draws `n` seeds per arm: base with mean `mb`, arm with mean `ma`, relative spreads
/// `cb` and `ca`; `shared` of the variance is a per-seed effect both arms see (pairing).
fn draw(rng: &mut ChaCha8Rng, dist: Dist, n: usize, (mb, cb): (f64, f64), (ma, ca): (f64, f64), shared: f64) -> (Vec<Seeded>, Vec<Seeded>) {
    let mut b = Vec::new();
    let mut a = Vec::new();
    for seed in 0..n as u64 {
        let s = normal(rng);
        let zb = shared.sqrt() * s + (1.0 - shared).sqrt() * normal(rng);
        let za = shared.sqrt() * s + (1.0 - shared).sqrt() * normal(rng);
        let (x, y) = match dist {
            Dist::Normal => (mb * (1.0 + cb * zb), ma * (1.0 + ca * za)),
            // lognormal with mean m: exp(ln m − σ²/2 + σ z)
            Dist::LogNormal => ((mb.ln() - cb * cb / 2.0 + cb * zb).exp(), (ma.ln() - ca * ca / 2.0 + ca * za).exp()),
        };
        b.push((seed, x));
        a.push((seed, y));
    }
    (b, a)
}

/// Share of `reps` simulated studies whose 95% interval covers the true value.
fn coverage(dist: Dist, n: usize, scale: Scale, shared: f64, reps: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (base, arm) = ((100.0, 0.3), (70.0, 0.2));
    let truth = match scale {
        Scale::Difference => arm.0 - base.0,
        Scale::Ratio => base.0 / arm.0,
    };
    let mut hit = 0;
    for _ in 0..reps {
        let (b, a) = draw(&mut rng, dist, n, base, arm, shared);
        // unpaired: the arms ran different seeds
        let a: Vec<Seeded> = if shared == 0.0 { a.iter().map(|(s, v)| (s + 1000, *v)).collect() } else { a };
        let (lo, hi) = compare(&b, &a, scale).unwrap().ci.unwrap();
        hit += (lo <= truth && truth <= hi) as usize;
    }
    hit as f64 / reps as f64
}

#[test]
fn t_intervals_cover_95_percent_at_3_5_and_10_seeds() {
    let mut report = Vec::new();
    for (i, dist) in [Dist::Normal, Dist::LogNormal].into_iter().enumerate() {
        for (j, scale) in [Scale::Difference, Scale::Ratio].into_iter().enumerate() {
            // shared 0: Welch (different seeds); 0.6: paired by seed
            for (k, shared) in [0.0, 0.6].into_iter().enumerate() {
                for n in [3, 5, 10] {
                    let c = coverage(dist, n, scale, shared, 2000, (i * 100 + j * 10 + k) as u64 * 1000 + n as u64);
                    report.push(format!("{dist:?} {scale:?} shared {shared} n {n}: {c:.3}"));
                    assert!(c >= 0.93, "coverage {c:.3} < 0.93 for {dist:?} {scale:?} shared {shared} n {n}\n{}", report.join("\n"));
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn the_old_percentile_bootstrap_under_covers_at_3_seeds() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (reps, mut hit) = (2000, 0);
    for r in 0..reps {
        let (b, a) = draw(&mut rng, Dist::Normal, 3, (100.0, 0.3), (70.0, 0.2), 0.0);
        let v = |x: &[Seeded]| x.iter().map(|p| p.1).collect::<Vec<f64>>();
        let (_, lo, hi) = bootstrap_diff(&v(&b), &v(&a), 2000, r).unwrap();
        hit += (lo <= -30.0 && -30.0 <= hi) as usize;
    }
    let c = hit as f64 / reps as f64;
    assert!(c < 0.93, "the percentile bootstrap covered {c:.3} at 3 seeds");
    eprintln!("percentile bootstrap, 3 seeds: coverage {c:.3}");
}

#[test]
fn t_quantiles_match_the_table() {
    // Student's t, 0.975 quantile: the printed table values
    for (df, t) in [(1.0, 12.706), (2.0, 4.303), (4.0, 2.776), (10.0, 2.228), (30.0, 2.042), (1e6, 1.960)] {
        assert!((t_quantile(0.95, df) - t).abs() < 1e-3, "t(0.975, {df}) = {}", t_quantile(0.95, df));
    }
    assert!((t_quantile(0.60, 4.0) - 0.941).abs() < 1e-3); // t(0.80, 4)
}

#[test]
fn hand_computed_intervals() {
    // paired difference: per-seed differences 1, 2, 3 → mean 2, sd 1, se 1/√3, t(0.975, 2) = 4.3027
    let b = [(0, 10.0), (1, 20.0), (2, 30.0)];
    let a = [(0, 11.0), (1, 22.0), (2, 33.0)];
    let e = compare(&b, &a, Scale::Difference).unwrap();
    let half = 4.302653 / 3f64.sqrt();
    assert!(e.paired && (e.value - 2.0).abs() < 1e-12);
    let (lo, hi) = e.ci.unwrap();
    assert!((lo - (2.0 - half)).abs() < 1e-4 && (hi - (2.0 + half)).abs() < 1e-4, "{lo} {hi}");
    // Welch: other seeds; var 100 and 121 over 3 each → se √(221/3); df = se⁴ / ((100/3)²/2 + (121/3)²/2)
    let a2: Vec<Seeded> = a.iter().map(|(s, v)| (s + 10, *v)).collect();
    let w = compare(&b, &a2, Scale::Difference).unwrap();
    let se2 = 221.0 / 3.0;
    let df = se2 * se2 / ((100.0f64 / 3.0).powi(2) / 2.0 + (121.0f64 / 3.0).powi(2) / 2.0);
    assert!(!w.paired && (w.df - df).abs() < 1e-9 && (w.se - se2.sqrt()).abs() < 1e-12);
    // one seed: a value, no interval
    assert!(compare(&[(0, 1.0)], &[(0, 2.0)], Scale::Ratio).unwrap().ci.is_none());
    // a ratio is symmetric on the log scale around the ratio of the means
    let r = compare(&b, &a2, Scale::Ratio).unwrap();
    let (lo, hi) = r.ci.unwrap();
    assert!((r.value - 20.0 / 22.0).abs() < 1e-12 && ((lo * hi).sqrt() - r.value).abs() < 1e-9);
}

#[test]
fn seeds_needed_is_the_first_count_with_80_percent_power() {
    let b: Vec<Seeded> = (0..5).map(|s| (s, 100.0 + 10.0 * (s as f64 - 2.0))).collect();
    let a: Vec<Seeded> = (0..5).map(|s| (s + 100, 95.0 + 10.0 * (s as f64 - 2.0))).collect();
    let e = compare(&b, &a, Scale::Difference).unwrap();
    let n = seeds_needed(&e, 0.0, 5, 0.95).unwrap();
    // at n the projected distance clears (t(0.975) + t(0.80)) standard errors, at n − 1 it does not
    let clears = |n: usize| {
        let df = 2.0 * n as f64 - 2.0;
        e.value.abs() >= (t_quantile(0.95, df) + t_quantile(0.60, df)) * e.se * (5.0 / n as f64).sqrt()
    };
    assert!(clears(n) && !clears(n - 1), "n = {n}");
    // about 2 × (1.96 + 0.84)² × σ² / d² = 2 × 7.84 × 250 / 25 ≈ 157 per arm for σ² = 250, d = 5 (normal approximation)
    assert!((140..=175).contains(&n), "n = {n}");
    assert_eq!(seeds_needed(&e, e.value, 5, 0.95), None);
    // at a family's level (Bonferroni over 20) the same distance needs more seeds: t(1 − 0.0025/2) in place of t(0.975)
    let nf = seeds_needed(&e, 0.0, 5, family_level(20)).unwrap();
    let clears_at = |n: usize| {
        let df = 2.0 * n as f64 - 2.0;
        e.value.abs() >= (t_quantile(family_level(20), df) + t_quantile(0.60, df)) * e.se * (5.0 / n as f64).sqrt()
    };
    assert!(clears_at(nf) && !clears_at(nf - 1) && nf > n, "n = {n}, at the family's level {nf}");
}

/// The bench's median (of rounds): by hand, odd and even counts, order-free.
#[test]
fn the_bench_median_is_the_middle_value() {
    use ohem_harness::bench::median;
    assert_eq!(median(&[0.3]), 0.3);
    assert_eq!(median(&[0.9, 0.1, 0.5]), 0.5);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(median(&[1.0, 100.0, 2.0]), 2.0, "one slow round does not move it");
}

/// Share of `reps` simulated studies of 6 arms against one baseline, no arm different from it,
/// in which every one of the 6 intervals at `level` covers the truth (family-wise coverage).
fn family_coverage(n: usize, scale: Scale, shared: f64, level: f64, reps: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let truth = match scale {
        Scale::Difference => 0.0,
        Scale::Ratio => 1.0,
    };
    let mut hit = 0;
    for _ in 0..reps {
        // one baseline draw shared by the 6 comparisons, as in a study
        let (b, _) = draw(&mut rng, Dist::Normal, n, (100.0, 0.2), (100.0, 0.2), shared);
        let all = (0..6).all(|_| {
            // each arm: the same per-seed effect as the baseline when paired, its own noise
            let (_, a) = draw(&mut rng, Dist::Normal, n, (100.0, 0.2), (100.0, 0.2), 0.0);
            let a: Vec<Seeded> = if shared == 0.0 {
                a.iter().map(|(s, v)| (s + 1000, *v)).collect()
            } else {
                b.iter().zip(&a).map(|((s, bv), (_, av))| (*s, shared.sqrt() * bv + (1.0 - shared.sqrt()) * av)).collect()
            };
            let (lo, hi) = compare_at(&b, &a, scale, level).unwrap().ci.unwrap();
            lo <= truth && truth <= hi
        });
        hit += all as usize;
    }
    hit as f64 / reps as f64
}

/// With 6 comparisons against one baseline and 3–5 seeds, Bonferroni's intervals (each at
/// 1 − 0.05/6) cover all 6 truths in at least 93% of studies and at most 99% (not simply too
/// wide); the unadjusted 95% intervals do not reach 93% family-wise.
#[test]
fn family_wise_intervals_cover_all_six_comparisons() {
    assert!((family_level(6) - (1.0 - 0.05 / 6.0)).abs() < 1e-15 && family_level(1) == 0.95);
    let mut report = Vec::new();
    for (j, scale) in [Scale::Difference, Scale::Ratio].into_iter().enumerate() {
        for (k, shared) in [0.0, 0.6].into_iter().enumerate() {
            for n in [3, 5] {
                let seed = (j * 10 + k) as u64 * 1000 + n as u64;
                let fw = family_coverage(n, scale, shared, family_level(6), 2000, seed);
                let plain = family_coverage(n, scale, shared, 0.95, 2000, seed);
                report.push(format!("{scale:?} shared {shared} n {n}: Bonferroni {fw:.3}, unadjusted {plain:.3}"));
                assert!((0.93..=0.99).contains(&fw), "family-wise coverage {fw:.3} outside [0.93, 0.99]\n{}", report.join("\n"));
                assert!(plain < 0.93, "the unadjusted intervals covered the family {plain:.3} of the time\n{}", report.join("\n"));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// bench claim-a's sweep: both head widths by default, VGG16 alone with --vgg16, --fc as given.
#[test]
fn claim_a_sweeps_the_widths_asked_for() {
    use ohem_harness::bench::claim_a_widths;
    assert_eq!(claim_a_widths(&[], false), vec![512, 4096]);
    assert_eq!(claim_a_widths(&[], true), Vec::<i64>::new());
    assert_eq!(claim_a_widths(&[4096], true), vec![4096]);
    assert_eq!(claim_a_widths(&[512], false), vec![512]);
}

/// `bench claim-a --replot`: claim_a.md and the chart come back from claim_a.csv alone, with
/// each point's numbers and its series-wise words (Bonferroni over the points of one
/// backbone, head width and scale); a folder without the CSV is an error naming it.
#[test]
fn claim_a_replots_from_its_csv() {
    use ohem_harness::bench::{replot_claim_a, ClaimAPoint};
    let t = tempfile::tempdir().unwrap();
    let point = |rois: f64, ratio: f64, lo: f64, hi: f64, word: &str| ClaimAPoint {
        backbone: "vgg16".into(), fc_width: 4096, input_scale: 600, proposals: rois as usize, rois_per_image: rois + 2.0,
        read_only_s: 10.0, masked_s: 10.0 * ratio, ratio, ratio_lo: Some(lo), ratio_hi: Some(hi), word: word.into(), rounds: 3,
        peer_read_only_s: None, peer_masked_s: None, peer_ratio: None, peer_ratio_lo: None, peer_ratio_hi: None, peer_word: String::new(),
        device: "cpu".into(), processor: "x".into(), threads: 2,
        read_only_rounds: String::new(), masked_rounds: String::new(), peer_read_only_rounds: String::new(), peer_masked_rounds: String::new(),
        series_points: 0, series_lo: None, series_hi: None, series_word: String::new(), peer_series_lo: None, peer_series_hi: None, peer_series_word: String::new(),
    };
    // a sweep that predates the per-round columns (its CSV has none of the new columns)
    let old = "backbone,fc_width,input_scale,proposals,rois_per_image,read_only_s,masked_s,ratio,ratio_lo,ratio_hi,word,rounds,peer_read_only_s,peer_masked_s,peer_ratio,peer_ratio_lo,peer_ratio_hi,peer_word,device,processor,threads\n\
vgg16,4096,600,500,502,10,11.7,1.17,1.13,1.22,contradicted,3,,,,,,,cpu,x,2\n\
vgg16,4096,600,2000,2002,10,16.5,1.65,1.61,1.69,supported,3,,,,,,,cpu,x,2\n";
    std::fs::write(t.path().join("claim_a.csv"), old).unwrap();
    replot_claim_a(t.path()).unwrap();
    let md = std::fs::read_to_string(t.path().join("claim_a.md")).unwrap();
    // the series of 2 points at 97.5%: the 95% half-width on the log scale × t(0.99375, 2) / t(0.975, 2)
    let widen = |lo: f64, hi: f64, r: f64| {
        let h = (hi / lo).ln() / 2.0 * t_quantile(family_level(2), 2.0) / t_quantile(0.95, 2.0);
        ((r.ln() - h).exp(), (r.ln() + h).exp())
    };
    let (lo, hi) = widen(1.61, 1.69, 1.65);
    assert!(lo < 1.6 && hi < 2.5, "{lo} {hi}: the 95% interval inside the band, the series-wise one not");
    assert!(md.contains(&format!("| vgg16 | 4096 | 600 | 2002 | 10.000 | 16.500 | 1.65x | [{lo:.2}, {hi:.2}] | not resolved |")), "{md}");
    let (lo, hi) = widen(1.13, 1.22, 1.17);
    assert!(md.contains(&format!("| 502 | 10.000 | 11.700 | 1.17x | [{lo:.2}, {hi:.2}] | contradicted |")), "{md}");
    assert!(md.contains("- vgg16 fc 4096 at 600 px (ours), masked / read-only about 2x, each interval Bonferroni over the series' 2 points (97.50%): supported at no point; contradicted below the band at 502; not resolved at 2002"), "{md}");
    assert!(std::fs::read(t.path().join("claim_a.png")).unwrap().starts_with(b"\x89PNG"));
    // the CSV now carries the series' columns
    let csv_text = std::fs::read_to_string(t.path().join("claim_a.csv")).unwrap();
    assert!(csv_text.lines().next().unwrap().ends_with("series_points,series_lo,series_hi,series_word,peer_series_lo,peer_series_hi,peer_series_word"), "{csv_text}");
    // a sweep with its rounds: the series-wise interval is the paired interval of those rounds at the series' level
    let t2 = tempfile::tempdir().unwrap();
    let mut p = point(500.0, 2.0, 1.9, 2.1, "supported");
    (p.read_only_rounds, p.masked_rounds) = ("1;1.1;0.9".into(), "2.1;2.1;1.8".into());
    let mut q = point(1000.0, 2.0, 1.9, 2.1, "supported");
    (q.read_only_rounds, q.masked_rounds) = ("1;1.1;0.9".into(), "2.0;2.3;1.7".into());
    let mut w = csv::Writer::from_path(t2.path().join("claim_a.csv")).unwrap();
    w.serialize(&p).unwrap();
    w.serialize(&q).unwrap();
    w.flush().unwrap();
    replot_claim_a(t2.path()).unwrap();
    let mut r = csv::Reader::from_path(t2.path().join("claim_a.csv")).unwrap();
    let back: Vec<ClaimAPoint> = r.deserialize().map(|x| x.unwrap()).collect();
    let seeded = |v: &[f64]| v.iter().enumerate().map(|(i, x)| (i as u64, *x)).collect::<Vec<Seeded>>();
    let e = compare_at(&seeded(&[2.1, 2.1, 1.8]), &seeded(&[1.0, 1.1, 0.9]), Scale::Ratio, family_level(2)).unwrap();
    let (lo, hi) = e.ci.unwrap();
    assert!((back[0].series_lo.unwrap() - lo).abs() < 1e-12 && (back[0].series_hi.unwrap() - hi).abs() < 1e-12 && back[0].series_points == 2, "{:?}", back[0]);
    let empty = tempfile::tempdir().unwrap();
    let e = format!("{:#}", replot_claim_a(empty.path()).unwrap_err());
    assert!(e.contains("claim_a.csv"), "{e}");
}

/// bench claim-a's word per point, from the rounds' times: the ratio of the
/// mean times, its interval paired by round, and the band [1.6, 2.5].
#[test]
fn claim_a_points_get_the_band_rules_word() {
    use ohem_harness::bench::claim_a_ratio;
    let ro = [1.0, 1.1, 0.9];
    let (r, ci, w) = claim_a_ratio(&ro, &[2.1, 2.1, 1.8]);
    assert!((r - 2.0).abs() < 1e-12 && w == "supported", "{r} {ci:?} {w}");
    let (lo, hi) = ci.unwrap();
    assert!(lo > 1.6 && hi < 2.5 && lo < 2.0 && hi > 2.0, "{lo} {hi}");
    // every round exactly 2x: no spread, nothing resolved
    let (_, _, w) = claim_a_ratio(&ro, &[2.0, 2.2, 1.8]);
    assert!(w.starts_with("no spread"), "{w}");
    let (_, _, w) = claim_a_ratio(&ro, &[3.0, 3.3, 2.7]);
    assert_eq!(w, "contradicted");
    let (_, ci, w) = claim_a_ratio(&ro, &[2.0, 3.0, 1.2]);
    assert_eq!(w, "not resolved", "{ci:?}");
    let (_, ci, w) = claim_a_ratio(&[1.0], &[2.0]);
    assert!(ci.is_none() && w.is_empty(), "one round: no interval");
}

/// Gehan's statistic by its definition, and its permutation p and smallest p by brute force
/// over every split of the pooled seeds (a bit mask per split: one arm's seeds set).
fn gehan_slow(base: &[Censored], arm: &[Censored]) -> (f64, f64, f64) {
    // x surely before y: x reached the target, and y reached it later or ended, unreached, no earlier
    let earlier = |x: Censored, y: Censored| match (x.1, y.1) {
        (false, _) => false,
        (true, true) => x.0 < y.0,
        (true, false) => x.0 <= y.0,
    };
    let w_of = |a: &[Censored], b: &[Censored]| -> f64 {
        let mut w = 0.0;
        for &x in a {
            for &y in b {
                if earlier(x, y) {
                    w += 1.0;
                }
                if earlier(y, x) {
                    w -= 1.0;
                }
            }
        }
        w
    };
    let w = w_of(arm, base);
    let pooled: Vec<Censored> = arm.iter().chain(base).copied().collect();
    let n = pooled.len();
    let mut all = Vec::new();
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != arm.len() {
            continue;
        }
        let a: Vec<Censored> = (0..n).filter(|i| mask >> i & 1 == 1).map(|i| pooled[i]).collect();
        let b: Vec<Censored> = (0..n).filter(|i| mask >> i & 1 == 0).map(|i| pooled[i]).collect();
        all.push(w_of(&a, &b).abs());
    }
    let max = all.iter().cloned().fold(0.0, f64::max);
    let share = |f: &dyn Fn(f64) -> bool| all.iter().filter(|&&x| f(x)).count() as f64 / all.len() as f64;
    (w, share(&|x| x >= w.abs()), share(&|x| x == max))
}

/// Gehan's test by hand and against the brute-force reference: censored seeds count as
/// "at least their run's end", orderings that censoring leaves open count 0.
#[test]
fn gehan_by_hand_and_against_brute_force() {
    // every arm seed reaches later than every base seed: W = −4; of the 6 splits of 4 seeds, 2 are as extreme
    let g = gehan(&[(5.0, true), (6.0, true)], &[(10.0, true), (12.0, true)]).unwrap();
    assert_eq!(g.w, -4.0);
    assert!((g.p - 2.0 / 6.0).abs() < 1e-12 && (g.p_min - 2.0 / 6.0).abs() < 1e-12, "{g:?}");
    // the arm never reaches the target in its budget of 20 s, the base does at 5–7 s: W = −9, p = 2 / C(6, 3)
    let g = gehan(&[(5.0, true), (6.0, true), (7.0, true)], &[(20.0, false), (20.0, false), (20.0, false)]).unwrap();
    assert_eq!(g.w, -9.0);
    assert!((g.p - 0.1).abs() < 1e-12 && (g.p_min - 0.1).abs() < 1e-12, "{g:?}");
    // a run that ended at 4 s without the target says nothing against one that reached it at 5 s
    let g = gehan(&[(5.0, true)], &[(4.0, false)]).unwrap();
    assert_eq!(g.w, 0.0);
    assert_eq!(g.p, 1.0);
    // 5 against 5 seeds: the smallest p is 2 / 252, above Bonferroni's 0.05 / 20 = 0.0025
    let base: Vec<Censored> = (0..5).map(|i| (10.0 + i as f64, true)).collect();
    let arm: Vec<Censored> = (0..5).map(|_| (30.0, false)).collect();
    let g = gehan(&base, &arm).unwrap();
    assert!((g.p_min - 2.0 / 252.0).abs() < 1e-12 && (g.p - 2.0 / 252.0).abs() < 1e-12, "{g:?}");
    // mixed cases against the reference, up to 8 seeds an arm
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..40 {
        let draw = |rng: &mut ChaCha8Rng, n: usize| -> Vec<Censored> { (0..n).map(|_| ((rng.random_range(1..8)) as f64, rng.random_bool(0.6))).collect() };
        let (nb, na) = (1 + case % 8, 1 + (case * 3) % 8);
        let (b, a) = (draw(&mut rng, nb), draw(&mut rng, na));
        let g = gehan(&b, &a).unwrap();
        let (w, p, p_min) = gehan_slow(&b, &a);
        assert!(g.w == w && (g.p - p).abs() < 1e-12 && (g.p_min - p_min).abs() < 1e-12, "case {case}: {b:?} {a:?}: {g:?} against W {w}, p {p}, p_min {p_min}");
        assert!(g.p_min <= g.p + 1e-12);
    }
    // 40 seeds an arm, beyond any enumeration: every arm seed before every base seed gives p = 2 / C(80, 40)
    let base: Vec<Censored> = (0..40).map(|i| (100.0 + i as f64, true)).collect();
    let arm: Vec<Censored> = (0..40).map(|i| (1.0 + i as f64, true)).collect();
    let g = gehan(&base, &arm).unwrap();
    assert_eq!(g.w, 1600.0);
    let c80_40 = (0..40).fold(1f64, |c, i| c * (80 - i) as f64 / (i + 1) as f64);
    assert!((g.p / (2.0 / c80_40) - 1.0).abs() < 1e-9, "{g:?}");
}

/// One simulated study's runs: `arms` arms with no true difference, `n` seeds each, 4 epochs;
/// per seed a shared effect on mAP and speed (the seeds' data order), per run its own noise.
fn null_study(rng: &mut ChaCha8Rng, arms: &[&str], n: usize) -> Vec<ohem_harness::report::RunLog> {
    use ohem_harness::rundir::{EpochRow, State};
    let seed_effects: Vec<(f64, f64)> = (0..n).map(|_| (0.01 * normal(rng), 0.05 * normal(rng))).collect();
    let mut out = Vec::new();
    for arm in arms {
        for (seed, (m_seed, t_seed)) in seed_effects.iter().enumerate() {
            let (m_run, t_run) = (0.01 * normal(rng), 0.05 * normal(rng));
            let mut rows = Vec::new();
            let mut wall = 0.0;
            for epoch in 1..=4 {
                let train_s = 20.0 * (t_seed + t_run + 0.03 * normal(rng)).exp();
                wall += train_s + 5.0;
                let map = 0.30 + 0.04 * epoch as f64 + m_seed + m_run + 0.01 * normal(rng);
                rows.push(EpochRow { epoch, iterations: 100, train_s, eval_s: 5.0, wall_s: wall, map_voc07: Some(map), map_voc10: Some(map), ..Default::default() });
            }
            out.push(ohem_harness::report::RunLog { arm: arm.to_string(), seed: seed as u64, split: None, outcomes: None, state: State::Done, reason: None, rows, mining: Vec::new(), classes: Vec::new(), per_class: Vec::new(), epochs: 4, manifest: None, config: None });
        }
    }
    out
}

/// A study's words under no true difference: the share of `reps` simulated studies with a
/// false "resolved" among all their Findings (and verdict lines), the same share with the old
/// families (per baseline and measure, at 1 − 0.05/3), the studies with a censored time to
/// target, and those in which Gehan's test could have resolved one (its smallest p at most the
/// family's threshold).
fn null_studies(arms: &[&str], baselines: &[&str], n: usize, target: f64, reps: usize, seed: u64) -> (f64, f64, usize, usize, usize) {
    use ohem_harness::report::{aggregate, compare, Word};
    use ohem_harness::rundir::{GridMeta, Measure, ReportConfig, VerdictConfig};
    // a band that contains 1, so that a verdict's "supported" or "contradicted" would be a false resolution
    let verdict = VerdictConfig { claim: "b about as fast as a".into(), baseline: arms[0].into(), arm: arms[1].into(), measure: Measure::TimeToTarget, expected: 1.0, tolerance: 1.5, regime: None };
    let meta = GridMeta { name: "null".into(), arms: arms.iter().map(|a| a.to_string()).collect(), report: ReportConfig { baselines: baselines.iter().map(|b| b.to_string()).collect(), target_map: Some(target), verdicts: vec![verdict], ..Default::default() } };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut false_study, mut old_false, mut censored_seen, mut resolvable, mut m_seen) = (0, 0, 0, 0, 0);
    for _ in 0..reps {
        let runs = null_study(&mut rng, arms, n);
        let agg = aggregate(&meta, &runs).unwrap();
        let m = compare::study_family(&agg);
        m_seen = m;
        let speedups = compare::speedups(&agg, m);
        censored_seen += speedups.iter().any(|s| s.censored.is_some()) as usize;
        resolvable += speedups.iter().any(|s| s.censored.is_some_and(|c| c.p_min <= c.threshold)) as usize;
        let findings = compare::findings(&agg, &speedups, &compare::map_diffs(&agg, m));
        let verdicts = compare::verdicts(&agg, &[], m);
        let any = findings.iter().any(|f| f.finding.starts_with("resolved")) || verdicts.iter().any(|v| v.verdict == Word::Contradicted);
        false_study += any as usize;
        // the same study judged per (baseline, measure) at 1 − 0.05 / 3, as before
        let old = compare::speedups(&agg, 3).iter().any(|s| s.fw_lo.zip(s.fw_hi).is_some_and(|(lo, hi)| lo > 1.0 || hi < 1.0)) || compare::map_diffs(&agg, 3).iter().any(|d| d.fw.and_then(|e| e.ci).is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0));
        old_false += old as usize;
    }
    (false_study as f64 / reps as f64, old_false as f64 / reps as f64, censored_seen, resolvable, m_seen)
}

/// Across all the Findings of a whole simulated study, with no true difference anywhere, a
/// false "resolved" appears in at most 5% of studies: the study's family holds together. And
/// in more than 1%, so that intervals simply too wide would fail here; the old per-baseline
/// families fail the 5%. Two designs: 4 arms, 2 baselines (so reverse pairs), 4 measures, 5
/// seeds, some times to target censored; and 2 arms with 8 seeds and a target about half the
/// runs miss, where Gehan's test can resolve (its smallest p is below the family's 0.05/4).
#[test]
fn a_null_study_resolves_something_in_at_most_5_percent_of_studies() {
    let (rate, old_rate, censored, _, m) = null_studies(&["a", "b", "c", "d"], &["a", "b"], 5, 0.42, 1000, 36);
    eprintln!("4 arms, 5 seeds: null studies with a false \"resolved\": {rate:.3} (families of 3 per baseline and measure: {old_rate:.3}); with a censored time to target: {censored}");
    assert_eq!(m, 20, "5 pairs of arms (b against a counted once) × 4 measures");
    assert!(rate <= 0.05 && rate > 0.01, "{rate}");
    assert!(old_rate > 0.05, "{old_rate}");
    assert!(censored > 0, "the simulation never exercised the censored test");
    let (rate, _, censored, resolvable, m) = null_studies(&["a", "b"], &["a"], 8, 0.45, 1000, 37);
    eprintln!("2 arms, 8 seeds: null studies with a false \"resolved\": {rate:.3}; with a censored time to target: {censored}, of which Gehan could resolve {resolvable}");
    assert_eq!(m, 4);
    assert!(rate <= 0.05 && rate > 0.01, "{rate}");
    assert!(resolvable > 500, "Gehan's test could resolve in only {resolvable} of 1000 studies");
}

/// One simulated study over resampled splits: a pool of `n_images` drawn from a population in
/// which the arms do not differ (the truth is 0); k folds of the pool, each fold run with
/// `seeds` seeds. A unit's difference is the mean over its test images of a per-image effect
/// (`test_sd`: how differently the arms detect on that image), plus a training-set effect (the
/// mean over its training images of a per-image effect, `train_sd`: what the images taught one
/// arm over the other), plus seed noise. Folds share training images and the seeds of a fold
/// share its test set, so the units are correlated; returns (units, n_test / n_train).
fn split_study(rng: &mut ChaCha8Rng, n_images: usize, k: usize, seeds: usize, test_sd: f64, train_sd: f64, seed_sd: f64) -> (Vec<Seeded>, f64) {
    let d: Vec<f64> = (0..n_images).map(|_| test_sd * normal(rng)).collect();
    let e: Vec<f64> = (0..n_images).map(|_| train_sd * normal(rng)).collect();
    let mut units = Vec::new();
    for f in 0..k {
        let test: Vec<usize> = (0..n_images).filter(|i| i % k == f).collect();
        let train: Vec<usize> = (0..n_images).filter(|i| i % k != f).collect();
        let t = test.iter().map(|&i| d[i]).sum::<f64>() / test.len() as f64;
        let tr = train.iter().map(|&i| e[i]).sum::<f64>() / train.len() as f64;
        for s in 0..seeds {
            units.push((((f as u64 + 1) << 32) | s as u64, t + tr + seed_sd * normal(rng)));
        }
    }
    (units, 1.0 / (k as f64 - 1.0))
}

/// Issue 37: with a split effect, the plain t interval over (split, seed) units covers well
/// short of 95%, and Nadeau and Bengio's corrected resampled t holds it, where the split effect
/// is what the model was made for: which images the test set draws, what the training images
/// teach one arm over the other, plus seed noise (5 folds of a 60-image pool, 2 or 4 seeds a
/// fold). Its limit is measured too: when what the training images teach dominates (folds
/// share 3/4 of their training images), the correction helps but falls short of 95%. No
/// interval from one pool can do better there (Bengio and Grandvalet 2004: k-fold's variance
/// has no unbiased estimator); docs/report.md says so.
#[test]
fn corrected_resampled_t_covers_where_the_plain_interval_does_not() {
    let mut report = Vec::new();
    // (seeds a fold, per-image test sd, per-image training sd, seed sd, whether 95% is promised)
    let cases = [(2usize, 1.0, 0.0, 0.05, true), (4, 1.0, 0.0, 0.05, true), (2, 1.0, 0.5, 0.2, true), (2, 1.0, 1.0, 0.05, true), (2, 0.5, 3.0, 0.05, false)];
    for (i, &(seeds, test_sd, train_sd, seed_sd, promised)) in cases.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(37 + i as u64);
        let (mut plain, mut corrected, reps) = (0, 0, 2000);
        for _ in 0..reps {
            let (arm, rho) = split_study(&mut rng, 60, 5, seeds, test_sd, train_sd, seed_sd);
            let base: Vec<Seeded> = arm.iter().map(|(u, _)| (*u, 0.0)).collect();
            let (lo, hi) = compare_units(&base, &arm, Scale::Difference, 0.95, 0.0).unwrap().ci.unwrap();
            plain += (lo <= 0.0 && 0.0 <= hi) as usize;
            let (lo, hi) = compare_units(&base, &arm, Scale::Difference, 0.95, rho).unwrap().ci.unwrap();
            corrected += (lo <= 0.0 && 0.0 <= hi) as usize;
        }
        let (p, c) = (plain as f64 / reps as f64, corrected as f64 / reps as f64);
        report.push(format!("{seeds} seeds a fold, test sd {test_sd}, train sd {train_sd}, seed sd {seed_sd}: plain {p:.3}, corrected {c:.3}"));
        assert!(p < 0.90, "the plain interval covers {p:.3}: the simulated split effect is too weak to test anything\n{}", report.join("\n"));
        if promised {
            assert!(c >= 0.93, "the corrected interval covers {c:.3} < 0.93\n{}", report.join("\n"));
        } else {
            assert!(c >= p + 0.1, "the correction does not help: {c:.3} against {p:.3}\n{}", report.join("\n"));
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// Without splits (rho 0) the units are seeds and the interval is the plain one, bit for bit.
#[test]
fn rho_zero_is_the_plain_interval() {
    // three splits of one seed each (the split index + 1 in the high 32 bits of the unit)
    let b: Vec<Seeded> = vec![(1 << 32, 0.41), (2 << 32, 0.43), (3 << 32, 0.40)];
    let a: Vec<Seeded> = vec![(1 << 32, 0.45), (2 << 32, 0.44), (3 << 32, 0.47)];
    for scale in [Scale::Difference, Scale::Ratio] {
        assert_eq!(compare_units(&b, &a, scale, 0.99, 0.0), compare_at(&b, &a, scale, 0.99));
        let wide = compare_units(&b, &a, scale, 0.99, 0.25).unwrap().ci.unwrap();
        let plain = compare_at(&b, &a, scale, 0.99).unwrap().ci.unwrap();
        assert!(wide.0 < plain.0 && wide.1 > plain.1, "{wide:?} is not wider than {plain:?}");
    }
    // by hand, paired: z = 0.04, 0.01, 0.07; sd 0.03; se² = 0.0009 (1/3 + 0.25) = 0.000525
    let e = compare_units(&b, &a, Scale::Difference, 0.95, 0.25).unwrap();
    assert!((e.se - 0.000525f64.sqrt()).abs() < 1e-12 && e.df == 2.0, "{} on {} df", e.se, e.df);
    // a second seed on each split is no new split: the seeds are averaged, J stays 3 (2 df);
    // seed 1 repeats seed 0's differences, so the split means and the interval are the same
    let b2: Vec<Seeded> = b.iter().flat_map(|&(u, x)| [(u, x), (u | 1, x + 0.01)]).collect();
    let a2: Vec<Seeded> = a.iter().flat_map(|&(u, x)| [(u, x), (u | 1, x + 0.01)]).collect();
    let e2 = compare_units(&b2, &a2, Scale::Difference, 0.95, 0.25).unwrap();
    assert!((e2.se - e.se).abs() < 1e-12 && e2.df == 2.0, "{} on {} df", e2.se, e2.df);
}
