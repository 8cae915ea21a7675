//! The tuning tax (issue 38): a sensitivity study's groups of settings, their best, gap and
//! spread with intervals that allow for picking the best and the worst, the claim's verdict by
//! the rule, and one chart per knob.

use ohem_harness::config::TrainConfig;
use ohem_harness::report::stats::{compare_at, family_level, t_quantile, Scale, Seeded};
use ohem_harness::report::{aggregate, compare, groups, RunLog, Word};
use ohem_harness::rundir::{ArmGroup, EpochRow, GridMeta, ReportConfig, State};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A config whose sampler is `sampler` (YAML flow text).
fn config(sampler: &str) -> TrainConfig {
    serde_saphyr::from_str(&format!("dataset: {{root: data/default}}\nsampler: {sampler}\n")).unwrap()
}

/// One finished run of `arm`, seed `seed`, ending at `map` after 2 epochs.
fn run(arm: &str, seed: u64, map: f64, sampler: &str) -> RunLog {
    let rows = (1..=2).map(|epoch| EpochRow { epoch, iterations: 10, train_s: 10.0, eval_s: 1.0, wall_s: 11.0 * epoch as f64, map_voc07: Some(map - 0.1 * (2 - epoch) as f64), map_voc10: Some(map), ..Default::default() }).collect();
    RunLog { arm: arm.into(), seed, split: None, outcomes: None, state: State::Done, reason: None, rows, mining: Vec::new(), classes: Vec::new(), per_class: Vec::new(), epochs: 2, manifest: None, config: Some(config(sampler)) }
}

fn group(name: &str, arms: &[&str], default: &str, knobs: &[&str]) -> ArmGroup {
    ArmGroup { name: name.into(), arms: arms.iter().map(|a| a.to_string()).collect(), default: default.into(), knobs: knobs.iter().map(|k| k.to_string()).collect() }
}

/// Fixed ratio f1 (default, fg 0.25), f2 (fg 0.5), f3 (fg 0.1); OHEM o1 (default, B 128), o2
/// (B 64); HNM h1: final mAP per seed = the arm's mean + its own small noise.
fn study(means: [f64; 6], noise: f64, seeds: usize) -> (GridMeta, Vec<RunLog>) {
    let arms = [
        ("f1", "{kind: fixed_ratio, fg_fraction: 0.25}"),
        ("f2", "{kind: fixed_ratio, fg_fraction: 0.5}"),
        ("f3", "{kind: fixed_ratio, fg_fraction: 0.1}"),
        ("o1", "{kind: ohem, batch_size: 128}"),
        ("o2", "{kind: ohem, batch_size: 64}"),
        ("h1", "{kind: hnm}"),
    ];
    // each arm's noise over the seeds: a different permutation of -2..2 per arm (mean 0 over 5
    // seeds), so that no two arms' differences are constant across seeds
    const PATTERN: [[f64; 5]; 6] = [[-2.0, -1.0, 0.0, 1.0, 2.0], [2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 2.0, -2.0, 1.0, -1.0], [1.0, -2.0, 2.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 2.0, -2.0], [2.0, -1.0, -2.0, 0.0, 1.0]];
    let mut runs = Vec::new();
    for (k, (arm, sampler)) in arms.iter().enumerate() {
        for s in 0..seeds {
            let e = noise * PATTERN[k][s];
            runs.push(run(arm, s as u64, means[k] + e, sampler));
        }
    }
    let report = ReportConfig {
        baselines: vec!["f1".into()],
        groups: vec![group("fixed_ratio", &["f1", "f2", "f3"], "f1", &["sampler.fg_fraction"]), group("ohem", &["o1", "o2"], "o1", &["sampler.batch_size"]), group("hnm", &["h1"], "h1", &[])],
        ..Default::default()
    };
    (GridMeta { name: "tuning".into(), arms: arms.iter().map(|a| a.0.to_string()).collect(), report }, runs)
}

fn finals(runs: &[RunLog], arm: &str) -> Vec<Seeded> {
    runs.iter().filter(|r| r.arm == arm).map(|r| (r.seed, r.rows.last().unwrap().map_voc07.unwrap())).collect()
}

/// The family, counted by hand; each group's best, worst, gap and spread against the
/// definition (the largest lower and upper ends of every pair's interval at the family's level,
/// computed here pair by pair from the runs).
#[test]
fn groups_by_hand() {
    let (meta, runs) = study([0.50, 0.53, 0.40, 0.51, 0.505, 0.52], 0.002, 5);
    let agg = aggregate(&meta, &runs).unwrap();
    let m = compare::study_family(&agg);
    // final-mAP pairs: within groups f1f2 f1f3 f2f3 o1o2; OHEM's default against the others
    // o1f1 o1f2 o1f3 o1h1; the baseline's f1o2 f1h1 (f1f2, f1f3, f1o1 already counted): 10;
    // speed: f1 against each of 5 arms by s_per_iter, time_to_target, total_wall_s: 15
    assert_eq!(m, 25);
    let level = family_level(m);
    let gs = groups::analyse(&agg, m);
    let f = gs.iter().find(|g| g.name == "fixed_ratio").unwrap();
    assert_eq!((f.best.as_deref(), f.worst.as_deref(), f.kind.as_deref()), (Some("f2"), Some("f3"), Some("fixed_ratio")));
    let d = |b: &str, a: &str| compare_at(&finals(&runs, b), &finals(&runs, a), Scale::Difference, level).unwrap();
    // the gap: the default f1 against f2 and f3
    let (g2, g3) = (d("f1", "f2"), d("f1", "f3"));
    let gap = f.gap.unwrap();
    assert!((gap.value - 0.03).abs() < 1e-9, "{gap:?}");
    let (lo, hi) = gap.ci.unwrap();
    assert!((lo - g2.ci.unwrap().0.max(g3.ci.unwrap().0).max(0.0)).abs() < 1e-12 && (hi - g2.ci.unwrap().1.max(g3.ci.unwrap().1)).abs() < 1e-12);
    assert!(lo > 0.0 && f.above_default == vec!["f2".to_string()], "{f:?}");
    // the spread: every ordered pair
    let mut los = vec![0.0f64];
    let mut his = vec![0.0f64];
    for (a, b) in [("f1", "f2"), ("f1", "f3"), ("f2", "f3")] {
        let (l, h) = d(a, b).ci.unwrap();
        los.extend([l, -h]);
        his.extend([h, -l]);
    }
    let spread = f.spread.unwrap();
    assert!((spread.value - 0.13).abs() < 1e-9);
    assert!((spread.ci.unwrap().0 - los.iter().cloned().fold(f64::MIN, f64::max)).abs() < 1e-12 && (spread.ci.unwrap().1 - his.iter().cloned().fold(f64::MIN, f64::max)).abs() < 1e-12);
    // the paired t by hand for f1 − f3 (5 seeds): the per-seed differences' sd over √5, t on 4 df
    let z: Vec<f64> = finals(&runs, "f1").iter().zip(finals(&runs, "f3")).map(|(a, b)| a.1 - b.1).collect();
    let mz = z.iter().sum::<f64>() / 5.0;
    let se = (z.iter().map(|x| (x - mz).powi(2)).sum::<f64>() / 4.0 / 5.0).sqrt();
    let (l, h) = d("f3", "f1").ci.unwrap();
    assert!((l - (mz - t_quantile(level, 4.0) * se)).abs() < 1e-12 && (h - (mz + t_quantile(level, 4.0) * se)).abs() < 1e-12);
    // the one-setting group has no gap and no spread; OHEM's settings are not resolved apart
    let h = gs.iter().find(|g| g.name == "hnm").unwrap();
    assert!(h.gap.is_none() && h.spread.is_none());
    let o = gs.iter().find(|g| g.name == "ohem").unwrap();
    assert!(o.resolved_pairs.is_empty() && o.spread.unwrap().ci.unwrap().0 == 0.0, "{o:?}");
    // f2 (0.53) or h1 (0.52) resolved above o1 (0.51) at this noise: contradicted
    let v = groups::verdict(&agg, &gs, m).unwrap();
    let resolved_above = d("o1", "h1").ci.unwrap().0 > 0.0 || d("o1", "f2").ci.unwrap().0 > 0.0;
    assert!(resolved_above);
    assert_eq!(v.word, Word::Contradicted, "{}", v.text);
    assert!(v.text.contains("f2") && v.text.contains("resolved above OHEM's default o1"), "{}", v.text);
}

/// The rule's three words: supported (no setting above OHEM's default, fixed ratio's spread
/// resolved larger than OHEM's), contradicted (OHEM's spread resolved larger), not resolved
/// (noise too large to resolve either).
#[test]
fn the_tuning_verdict_follows_the_rule() {
    // OHEM's default is the best of all; fixed ratio spreads 0.1, OHEM 0.005
    let (meta, runs) = study([0.50, 0.45, 0.40, 0.52, 0.515, 0.48], 0.001, 5);
    let agg = aggregate(&meta, &runs).unwrap();
    let m = compare::study_family(&agg);
    let v = groups::verdict(&agg, &groups::analyse(&agg, m), m).unwrap();
    assert_eq!(v.word, Word::Supported, "{}", v.text);
    // OHEM's settings spread 0.2, fixed ratio's 0.01; OHEM's default on top
    let (meta, runs) = study([0.50, 0.505, 0.495, 0.60, 0.40, 0.48], 0.001, 5);
    let agg = aggregate(&meta, &runs).unwrap();
    let m = compare::study_family(&agg);
    let v = groups::verdict(&agg, &groups::analyse(&agg, m), m).unwrap();
    assert_eq!(v.word, Word::Contradicted, "{}", v.text);
    assert!(v.text.contains("ohem's spread is resolved larger than fixed_ratio's"), "{}", v.text);
    // the first case's means under noise 20 times larger: nothing resolves
    let (meta, runs) = study([0.50, 0.45, 0.40, 0.52, 0.515, 0.48], 0.02, 5);
    let agg = aggregate(&meta, &runs).unwrap();
    let m = compare::study_family(&agg);
    let v = groups::verdict(&agg, &groups::analyse(&agg, m), m).unwrap();
    assert_eq!(v.word, Word::NotResolved, "{}", v.text);
    // the first case with no noise at all: every pair's interval has zero width, which
    // resolves nothing (as in the Findings), so no pair is resolved and the verdict is not either
    let (meta, runs) = study([0.50, 0.45, 0.40, 0.52, 0.515, 0.48], 0.0, 5);
    let agg = aggregate(&meta, &runs).unwrap();
    let m = compare::study_family(&agg);
    let gs = groups::analyse(&agg, m);
    assert!(gs.iter().all(|g| g.resolved_pairs.is_empty() && g.above_default.is_empty()), "{gs:?}");
    let v = groups::verdict(&agg, &gs, m).unwrap();
    assert_eq!(v.word, Word::NotResolved, "{}", v.text);
    // a setting with no finished cell (f3's cells not run): named, and the verdict waits for it
    let (meta, mut runs) = study([0.50, 0.45, 0.40, 0.52, 0.515, 0.48], 0.001, 5);
    runs.retain(|r| r.arm != "f3");
    let agg = aggregate(&meta, &runs).unwrap();
    let m = compare::study_family(&agg);
    let gs = groups::analyse(&agg, m);
    assert_eq!(gs[0].missing, ["f3"]);
    assert!(groups::line(&gs[0]).starts_with("fixed_ratio (3 settings, 1 without a finished cell: f3)"), "{}", groups::line(&gs[0]));
    let v = groups::verdict(&agg, &gs, m).unwrap();
    assert_eq!(v.word, Word::NotResolved, "{}", v.text);
    assert!(v.text.contains("settings without a finished cell: f3"), "{}", v.text);
    // without an OHEM group: no verdict, and why
    let (mut meta, runs) = study([0.5; 6], 0.01, 3);
    meta.report.groups.retain(|g| g.name != "ohem");
    let agg = aggregate(&meta, &runs).unwrap();
    let e = groups::verdict(&agg, &groups::analyse(&agg, 10), 10).unwrap_err();
    assert!(e.contains("ohem"), "{e}");
}

/// Under no true difference among 6 settings (3 seeds, a per-seed effect all settings share),
/// the spread's interval covers the true spread, 0, in at least 95% of simulated studies; the
/// interval of the picked best − worst pair taken at 95% as if chosen in advance does not.
#[test]
fn the_spread_interval_allows_for_picking_best_and_worst() {
    let arms: Vec<String> = (0..6).map(|i| format!("a{i}")).collect();
    let meta = GridMeta { name: "null".into(), arms: arms.clone(), report: ReportConfig { baselines: vec!["a0".into()], groups: vec![ArmGroup { name: "g".into(), arms: arms.clone(), default: "a0".into(), knobs: vec![] }], ..Default::default() } };
    let mut rng = ChaCha8Rng::seed_from_u64(38);
    let (mut covered, mut naive_covered) = (0, 0);
    let reps = 1000;
    for _ in 0..reps {
        let seed_fx: Vec<f64> = (0..3).map(|_| 0.01 * normal(&mut rng)).collect();
        let mut runs = Vec::new();
        for a in &arms {
            for (s, fx) in seed_fx.iter().enumerate() {
                let mut r = run(a, s as u64, 0.5 + fx + 0.005 * normal(&mut rng), "{kind: fixed_ratio}");
                r.config = None;
                runs.push(r);
            }
        }
        let agg = aggregate(&meta, &runs).unwrap();
        let m = compare::study_family(&agg);
        let g = &groups::analyse(&agg, m)[0];
        covered += (g.spread.unwrap().ci.unwrap().0 <= 0.0) as usize;
        let (best, worst) = (g.best.clone().unwrap(), g.worst.clone().unwrap());
        let naive = compare_at(&finals(&runs, &worst), &finals(&runs, &best), Scale::Difference, 0.95).unwrap().ci.unwrap();
        naive_covered += (naive.0 <= 0.0) as usize;
    }
    let (c, n) = (covered as f64 / reps as f64, naive_covered as f64 / reps as f64);
    eprintln!("spread interval covers 0 in {c:.3} of null studies; the picked pair's plain 95% interval in {n:.3}");
    assert!(c >= 0.95, "{c}");
    assert!(n < 0.9, "{n}");
}

/// One chart per knob, from a results folder's logs: its series hold the settings whose other
/// knobs are at the default (fg 0.5 with bg_lo 0 is not on the fg chart), values in numeric
/// order with `none` (no NMS) last; groups.csv and the summary's section are written.
#[test]
fn knob_charts_and_groups_csv_from_the_logs() {
    let t = tempfile::tempdir().unwrap();
    let res = &t.path().join("sens");
    let arms = [
        ("f25", "{kind: fixed_ratio, fg_fraction: 0.25, bg_thresh_lo: 0.1}"),
        ("f50", "{kind: fixed_ratio, fg_fraction: 0.5, bg_thresh_lo: 0.1}"),
        ("f10", "{kind: fixed_ratio, fg_fraction: 0.1, bg_thresh_lo: 0.1}"),
        ("f25lo0", "{kind: fixed_ratio, fg_fraction: 0.25, bg_thresh_lo: 0.0}"),
        ("f50lo0", "{kind: fixed_ratio, fg_fraction: 0.5, bg_thresh_lo: 0.0}"),
        ("o128", "{kind: ohem, batch_size: 128, nms_iou: 0.7}"),
        ("onone", "{kind: ohem, batch_size: 128, nms_iou: null}"),
    ];
    for (k, (arm, sampler)) in arms.iter().enumerate() {
        for s in 0..2u64 {
            let dir = res.join("cells").join(format!("{arm}-s{s}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cell.json"), format!("{{\"id\": \"{arm}{s}\", \"arm\": \"{arm}\", \"seed\": {s}, \"epochs\": 1}}")).unwrap();
            std::fs::write(dir.join("status.json"), "{\"state\": \"done\", \"reason\": null, \"updated\": \"x\"}").unwrap();
            std::fs::write(dir.join("config.yaml"), serde_saphyr::to_string(&config(sampler)).unwrap()).unwrap();
            let mut w = csv::Writer::from_path(dir.join("metrics.csv")).unwrap();
            w.serialize(EpochRow { epoch: 1, iterations: 10, train_s: 10.0, wall_s: 11.0, map_voc07: Some(0.4 + 0.01 * k as f64 + 0.003 * s as f64), ..Default::default() }).unwrap();
            w.flush().unwrap();
        }
    }
    let report = ReportConfig {
        baselines: vec!["f25".into()],
        groups: vec![group("fixed_ratio", &["f25", "f50", "f10", "f25lo0", "f50lo0"], "f25", &["sampler.fg_fraction", "sampler.bg_thresh_lo"]), group("ohem", &["o128", "onone"], "o128", &["sampler.nms_iou"])],
        ..Default::default()
    };
    let meta = GridMeta { name: "knobs".into(), arms: arms.iter().map(|a| a.0.to_string()).collect(), report };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    let out = ohem_harness::report::generate(res).unwrap();
    let (meta2, runs, _) = ohem_harness::report::load_runs(res).unwrap();
    let agg = aggregate(&meta2, &runs).unwrap();
    let series = groups::knob_series(&agg);
    let names = |k: &str| -> Vec<String> { series.iter().find(|s| s.0 == k).unwrap().1[0].2.iter().map(|p| p.0.clone()).collect() };
    assert_eq!(series.iter().find(|s| s.0 == "sampler.nms_iou").unwrap().1[0].1.as_deref(), Some("0.7"));
    assert_eq!(names("sampler.fg_fraction"), ["0.1", "0.25", "0.5"]);
    assert_eq!(names("sampler.bg_thresh_lo"), ["0.0", "0.1"]);
    assert_eq!(names("sampler.nms_iou"), ["0.7", "none"]);
    for stem in ["knob_sampler_fg_fraction", "knob_sampler_bg_thresh_lo", "knob_sampler_nms_iou"] {
        let png = std::fs::read(res.join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "{stem}.png");
    }
    let csv = std::fs::read_to_string(res.join("groups.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().starts_with("fixed_ratio,fixed_ratio,f25,f25 f50 f10 f25lo0 f50lo0,f50lo0,"), "{csv}");
    let text = std::fs::read_to_string(&out.summary).unwrap();
    assert!(text.contains("## Tuning: each method over its own knobs") && text.contains("- OHEM needs no sampling hyperparameters: **"), "{text}");
    assert!(out.notes.iter().any(|n| n.starts_with("verdict: OHEM needs no sampling hyperparameters:")), "{:?}", out.notes);
    // the claims table quotes the verdict line of the study's summary.md
    let line = text.lines().find(|l| l.starts_with("- OHEM needs no sampling hyperparameters: ")).unwrap();
    let claims = ohem_harness::report::claims::claims_md(t.path()).unwrap();
    assert!(claims.contains(&format!("- [sens]({}/sens/summary.md): {}", t.path().display(), &line[2..])), "{claims}");
}
