//! The harness: grid expansion, bad grid files, skip and resume, failure
//! isolation, report aggregation by hand, charts, and an end-to-end grid.

use std::path::Path;

use ohem_harness::harness::Grid;
use ohem_harness::rundir::{read_status, CellMeta, GridMeta, ReportConfig, State, VerdictConfig};
use ohem_harness::rundir::EpochRow;

use crate::util::{harness, tiny_dataset};

fn write_grid(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("grid.yaml");
    let text = format!(
        "results: {}\nbase:\n  device: cpu\n  dataset:\n    root: {}\n  model:\n    fc_dim: 64\n    init: scratch\n  input:\n    scale: 160\n    max_size: 224\n  train:\n    epochs: 1\n    iters_per_epoch: 2\n    lr_steps: []\n{body}",
        dir.join("results").display(),
        tiny_dataset().display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn grids_expand_to_arms_times_axes_times_seeds_with_stable_ids() {
    let t = tempfile::tempdir().unwrap();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  ohem:\n    sampler: {kind: ohem}\naxes:\n  sampler.batch_size: [32, 64]\n  train.lr: [0.01, 0.02, 0.03]\nseeds: [0, 1]\n");
    let g = Grid::load(&p, &[]).unwrap();
    assert_eq!(g.cells.len(), 2 * 2 * 3 * 2);
    assert_eq!(g.arms.len(), 2 * 2 * 3);
    assert!(g.arms.contains(&"ohem batch_size=64 lr=0.02".to_string()), "{:?}", g.arms);
    let c = g.cells.iter().find(|c| c.arm == "ohem batch_size=64 lr=0.02" && c.seed == 1).unwrap();
    assert_eq!((c.config.sampler.batch_size(), c.config.train.lr, c.config.seed), (64, 0.02, 1));
    // stable: the same file gives the same ids; an override changes every id
    let again = Grid::load(&p, &[]).unwrap();
    assert_eq!(g.cells.iter().map(|c| &c.id).collect::<Vec<_>>(), again.cells.iter().map(|c| &c.id).collect::<Vec<_>>());
    let over = Grid::load(&p, &["train.epochs=3".into()]).unwrap();
    assert!(over.cells.iter().all(|c| c.config.train.epochs == 3));
    assert!(over.cells.iter().zip(&g.cells).all(|(a, b)| a.id != b.id));
    // ids are unique
    let mut ids: Vec<&String> = g.cells.iter().map(|c| &c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), g.cells.len());
    // run order: seed-major, every arm of seed 0 before any of seed 1
    assert_eq!(g.cells.iter().map(|c| c.seed).collect::<Vec<_>>(), [vec![0; 12], vec![1; 12]].concat());
    // within a seed, every arm once, in an order shuffled by the grid's order_seed and the seed:
    // the same file gives the same order, the two seeds' orders differ, another order_seed moves it
    let order = |g: &Grid, seed: u64| g.cells.iter().filter(|c| c.seed == seed).map(|c| c.arm.clone()).collect::<Vec<_>>();
    let mut arms0 = order(&g, 0);
    assert_ne!(arms0, g.arms, "seed 0 runs the arms in grid order");
    assert_ne!(order(&g, 0), order(&g, 1));
    assert_eq!(order(&g, 0), order(&again, 0));
    arms0.sort();
    let mut all = g.arms.clone();
    all.sort();
    assert_eq!(arms0, all);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{text}order_seed: 7\n")).unwrap();
    let other = Grid::load(&p, &[]).unwrap();
    assert_ne!(order(&other, 0), order(&g, 0));
    assert_eq!(other.cells.iter().map(|c| &c.id).collect::<std::collections::BTreeSet<_>>(), g.cells.iter().map(|c| &c.id).collect::<std::collections::BTreeSet<_>>(), "the order changes no cell");
}

#[test]
fn bad_grid_files_are_rejected_with_file_key_and_value() {
    let cases: &[(&str, &[&str])] = &[
        ("seeds: [0\n", &["grid.yaml", "line"]),
        // (the grid's 15 lines of header first: the line numbers count them)
        ("seeds: [0]\nbogus: 1\n", &["grid.yaml (line 17): unknown key bogus"]),
        ("seeds: [0]\narms:\n  a:\n    model: {backbon: small}\n", &["grid.yaml: arm a (line 19): unknown key model.backbon"]),
        ("seeds: [0]\narms:\n  a:\n    sampler:\n      kind: ohem\n      nms_iuo: 0.5\n", &["grid.yaml: arm a (line 21): unknown key sampler.nms_iuo"]),
        ("seeds: [0]\narms:\n  a: {}\n", &[]), // (the base's typo is planted below)
        ("seeds: [0]\naxes:\n  sampler.nms_iuo: [0.5]\n", &["grid.yaml", "sampler.nms_iuo"]),
        ("seeds: [0]\naxes:\n  train.lr: []\n", &["grid.yaml", "axes.train.lr", "empty"]),
        ("seeds: [0]\narms:\n  a: {}\n  a: {}\n", &["grid.yaml", "duplicate", "a"]),
        ("arms:\n  a: {}\n", &["grid.yaml", "seeds"]),
        ("seeds: []\n", &["grid.yaml", "seeds", "empty"]),
        ("seeds: [0]\narms:\n  a:\n    sampler: {kind: fixed_ratio, fg_fraction: 2}\n", &["grid.yaml", "arm a", "sampler.fg_fraction = 2"]),
        ("seeds: [0]\nreport:\n  baselines: [nope]\n", &["grid.yaml", "report.baselines", "nope"]),
        ("seeds: [0]\narms:\n  a: {}\n  b: {train: {lr: 0.1}}\nreport:\n  verdicts:\n    - {claim: x, baseline: a, arm: c, measure: s_per_iter}\n", &["grid.yaml", "report.verdicts[0].arm", "\"c\""]),
        ("seeds: [0]\narms:\n  a: {}\n  b: {train: {lr: 0.1}}\nreport:\n  verdicts:\n    - {claim: x, baseline: a, arm: b, measure: speed}\n", &["grid.yaml", "report.verdicts[0].measure", "speed"]),
        ("seeds: [0]\narms:\n  a: {}\n  b: {train: {lr: 0.1}}\nreport:\n  verdicts:\n    - {claim: x, baseline: a, arm: b, measure: s_per_iter, tolerance: 0.5}\n", &["grid.yaml", "report.verdicts[0].tolerance = 0.5"]),
        ("seeds: [0]\nreport:\n  target_map: 1.5\n", &["grid.yaml", "report.target_map = 1.5"]),
        ("seeds: [0]\narms:\n  a: {}\n  b: {train: {lr: 0.1}}\nreport:\n  groups:\n    - {name: g, arms: [a, b], default: c, knobs: [train.lr]}\n", &["grid.yaml", "report.groups[0]", "\"c\""]),
        ("seeds: [0]\narms:\n  a: {}\n  b: {train: {lr: 0.1}}\nreport:\n  groups:\n    - {name: g, arms: [a, b], default: a, knobs: [train.lrr]}\n", &["grid.yaml", "report.groups[0].knobs", "train.lrr"]),
        ("seeds: [0]\narms:\n  a: {}\n  b: {train: {lr: 0.1}}\nreport:\n  groups:\n    - {name: g, arms: [a], default: a, knobs: [train.lr]}\n    - {name: h, arms: [a, b], default: b, knobs: [train.lr]}\n", &["grid.yaml", "arm \"a\" is in two groups"]),
    ];
    for (body, needles) in cases {
        let t = tempfile::tempdir().unwrap();
        let p = write_grid(t.path(), body);
        if needles.is_empty() {
            // a typo in base is named in base, not against the first arm
            let text = std::fs::read_to_string(&p).unwrap().replace("  model:\n", "  model:\n    backbon: small\n");
            std::fs::write(&p, text).unwrap();
            let err = format!("{:#}", Grid::load(&p, &[]).unwrap_err());
            assert!(err.contains("grid.yaml: base (line 7): unknown key model.backbon") && !err.contains("arm a"), "{err}");
            // a typo in --set is named in the --set, not against the grid file
            let p = write_grid(t.path(), body);
            let err = format!("{:#}", Grid::load(&p, &["train.lrr=0.5".to_string()]).unwrap_err());
            assert!(err.contains("--set train.lrr") && !err.contains("grid.yaml"), "{err}");
            // a sampler key is the cells' to judge: one that only an arm's kind takes is fine
            let ohem = write_grid(t.path(), "seeds: [0]\narms:\n  a: {sampler: {kind: ohem}}\n");
            assert!(Grid::load(&ohem, &["sampler.nms_iou=0.5".to_string()]).is_ok());
            continue;
        }
        let err = format!("{:#}", Grid::load(&p, &[]).unwrap_err());
        for n in *needles {
            assert!(err.contains(n), "{body:?}: {err:?} lacks {n:?}");
        }
        // and the CLI says the same, exits non-zero, runs nothing
        let (ok, _, stderr) = harness(&["run", p.to_str().unwrap()]);
        assert!(!ok && stderr.contains("grid.yaml") && !stderr.contains("panicked"), "{stderr}");
        assert!(!t.path().join("results").exists());
    }
}

fn row(epoch: usize, wall: f64, map: Option<f64>, train_s: f64, mine_s: f64) -> EpochRow {
    EpochRow {
        epoch,
        iterations: 10,
        train_s,
        mine_s,
        eval_s: 1.0,
        wall_s: wall,
        loss: 1.0,
        loss_cls: 0.7,
        loss_bbox: 0.3,
        rois_per_iter: 128.0,
        fg_fraction: 0.25,
        sel_loss: 1.0,
        all_loss: None,
        cache_size: 0,
        lr: 0.01,
        map_voc07: map,
        map_voc10: map.map(|m| m * 0.9),
        rois_per_image: Some(480.0),
        coco_ap: map.map(|m| m * 0.5),
        ..Default::default()
    }
}

fn fake_cell(results: &Path, arm: &str, seed: u64, state: State, rows: &[EpochRow]) {
    fake_cell_of(results, arm, seed, 3, state, rows)
}

fn fake_cell_of(results: &Path, arm: &str, seed: u64, epochs: usize, state: State, rows: &[EpochRow]) {
    let dir = results.join("cells").join(format!("{arm}-s{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cell.json"), serde_json::to_string(&CellMeta { id: format!("{arm}{seed}"), arm: arm.into(), seed, epochs, split: None }).unwrap()).unwrap();
    std::fs::write(dir.join("status.json"), format!("{{\"state\": \"{}\", \"reason\": null, \"updated\": \"x\"}}", match state { State::Done => "done", State::Failed => "failed", _ => "running" })).unwrap();
    let mut w = csv::Writer::from_path(dir.join("metrics.csv")).unwrap();
    for r in rows {
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn report_aggregates_by_hand() {
    let t = tempfile::tempdir().unwrap();
    let res = t.path();
    let verdict = VerdictConfig { claim: "b is 2x faster than a".into(), baseline: "a".into(), arm: "b".into(), measure: ohem_harness::rundir::Measure::TimeToTarget, expected: 2.0, tolerance: 1.25, regime: Some(ohem_harness::rundir::Regime { rois_per_image: Some(2000.0), device: Some("gpu".into()), ..Default::default() }) };
    let meta = GridMeta { name: "hand".into(), arms: vec!["a".into(), "b".into(), "h".into()], report: ReportConfig { baselines: vec!["a".into()], target_map: Some(0.5), verdicts: vec![verdict], ..Default::default() } };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    // arm a: seeds reach 0.5 at wall 20 and 40; finals 0.6 and 0.5
    fake_cell(res, "a", 0, State::Done, &[row(1, 10.0, Some(0.3), 8.0, 0.0), row(2, 20.0, Some(0.6), 8.0, 0.0)]);
    fake_cell(res, "a", 1, State::Done, &[row(1, 10.0, Some(0.4), 8.0, 0.0), row(2, 25.0, Some(0.45), 8.0, 0.0), row(3, 40.0, Some(0.5), 8.0, 0.0)]);
    // arm b: reaches 0.5 at 5 and 15; finals 0.7 and 0.55; mining time 2 s per epoch
    fake_cell(res, "b", 0, State::Done, &[row(1, 5.0, Some(0.7), 2.0, 2.0)]);
    fake_cell(res, "b", 1, State::Done, &[row(1, 5.0, Some(0.2), 2.0, 2.0), row(2, 15.0, Some(0.55), 4.0, 2.0)]);
    // a failed cell is counted, not aggregated
    fake_cell(res, "b", 2, State::Failed, &[row(1, 5.0, Some(0.9), 2.0, 2.0)]);
    // b's two seeds mined: round 1 of 40 and 60 negatives, round 2 (seed 1 only) of 50
    let mrow = |round: usize, mined: usize, still: Option<f64>| ohem_harness::rundir::MiningRow { round, epoch: round + 1, iteration: 0, stats: ohem_harness::rundir::MiningStats { mined, mined_loss: Some(2.0), random_loss: Some(0.5), prev_still_hard: still, ..Default::default() } };
    ohem_harness::rundir::write_mining(&res.join("cells/b-s0/mining.csv"), &[mrow(1, 40, None)]).unwrap();
    ohem_harness::rundir::write_mining(&res.join("cells/b-s1/mining.csv"), &[mrow(1, 60, None), mrow(2, 50, Some(0.25))]).unwrap();
    // arm h: one seed of an offline miner whose cache stayed empty
    fake_cell(res, "h", 0, State::Done, &[row(1, 9.0, Some(0.4), 4.0, 3.0)]);

    let out = ohem_harness::report::generate(res).unwrap();
    let text = std::fs::read_to_string(&out.summary).unwrap();
    assert!(text.contains("0.5000 (set in the grid file)"), "{text}");
    // the mining rounds, averaged over the seeds that had them
    assert!(text.contains("| b | 1 | 50 | 0.0 | 2.000 | 0.500 |") && text.contains("| b | 2 | 50 |") && text.contains("| 0.25 |"), "{text}");
    assert!(!text.contains("b mined nothing"), "{text}");
    // one seed: no spread to print
    assert!(text.contains("| h | 1 | 0 | 0.4000 ± — |"), "{text}");
    assert!(!text.contains("± 0.0000"), "{text}");
    // the empty cache is flagged in summary.md and in what the command line prints
    assert!(text.contains("h mined nothing in 1 of 1 seeds") && text.contains("is fixed-ratio"), "{text}");
    assert!(out.notes.iter().any(|n| n.starts_with("warning: h mined nothing")), "{:?}", out.notes);
    // the verdict line: b/a time to target is (16 + 24) / 2 / ((4 + 10) / 2) = 20 / 7
    assert!(out.notes.iter().any(|n| n.starts_with("verdict: \"b is 2x faster than a\": a/b time_to_target = 2.86x")), "{:?}", out.notes);
    // measured at 480 RoIs per image, no device recorded: the claim (2000 RoIs per image on a GPU) differs in both
    assert!(out.notes.iter().any(|n| n.contains("in this regime (the claim's differs in RoIs per image, device)") && n.contains("Measured in: 480 RoIs/image.")), "{:?}", out.notes);
    let mut v = csv::Reader::from_path(res.join("verdicts.csv")).unwrap();
    let vs: Vec<std::collections::HashMap<String, String>> = v.deserialize().map(|x| x.unwrap()).collect();
    assert_eq!(vs.len(), 1);
    assert!(["supported", "contradicted", "not resolved"].contains(&vs[0]["verdict"].as_str()));
    // final mAP b − a = 0.625 − 0.55
    assert!((vs[0]["final_map_diff"].parse::<f64>().unwrap() - 0.075).abs() < 1e-9, "{vs:?}");
    let mut d = csv::Reader::from_path(res.join("map_diffs.csv")).unwrap();
    let ds: Vec<std::collections::HashMap<String, String>> = d.deserialize().map(|x| x.unwrap()).collect();
    let ba = ds.iter().find(|r| r["baseline"] == "a" && r["arm"] == "b").unwrap();
    assert!((ba["final_map_diff"].parse::<f64>().unwrap() - 0.075).abs() < 1e-9, "{ba:?}");
    // paired by seed: differences 0.7 − 0.6 = 0.1 and 0.55 − 0.5 = 0.05, sd 0.05/√2, se 0.025, t(0.975, 1) = 12.7062
    let (lo, hi): (f64, f64) = (ba["ci95_lo"].parse().unwrap(), ba["ci95_hi"].parse().unwrap());
    assert!((lo - (0.075 - 12.7062 * 0.025)).abs() < 1e-4 && (hi - (0.075 + 12.7062 * 0.025)).abs() < 1e-4, "{lo} {hi}");
    assert_eq!(ba["interval"], "paired t, 1 df");
    assert!(text.contains("| a | b | +0.0750 |"), "{text}");

    let mut r = csv::Reader::from_path(res.join("summary.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> = r.deserialize().map(|x| x.unwrap()).collect();
    let get = |arm: &str, col: &str| -> f64 { rows.iter().find(|r| r["arm"] == arm).unwrap()[col].parse().unwrap() };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(get("a", "seeds"), 2.0) && close(get("b", "seeds"), 2.0) && close(get("b", "failed"), 1.0));
    assert!(close(get("a", "final_map_mean"), 0.55));
    assert!(close(get("a", "final_map_std"), (0.005f64).sqrt())); // sample std of {0.6, 0.5}
    assert!(close(get("b", "final_map_mean"), 0.625));
    // time to target is training time (train + mine through the epoch that reached it), not wall-clock:
    // a: 8 + 8 = 16 and 8 + 8 + 8 = 24; b: 2 + 2 = 4 and (2 + 2) + (4 + 2) = 10
    assert!(close(get("a", "time_to_target_mean"), 20.0) && close(get("b", "time_to_target_mean"), 7.0));
    assert!(close(get("b", "mine_s_mean"), 2.0) && close(get("a", "mine_s_mean"), 0.0));
    // train_s of b: each seed's mean over its epochs, {2} and {2, 4}, then over seeds: (2 + 3) / 2, std √0.5
    assert!(close(get("b", "train_s_mean"), 2.5) && close(get("b", "train_s_std"), 0.5f64.sqrt()));
    assert!(close(get("a", "total_wall_s_mean"), 30.0) && close(get("b", "total_wall_s_mean"), 10.0));

    let mut s = csv::Reader::from_path(res.join("speedups.csv")).unwrap();
    let sp: Vec<std::collections::HashMap<String, String>> = s.deserialize().map(|x| x.unwrap()).collect();
    let ttt = sp.iter().find(|r| r["arm"] == "b" && r["measure"] == "time_to_target").unwrap();
    assert!(close(ttt["speedup"].parse().unwrap(), 20.0 / 7.0), "{ttt:?}");
    let (lo, hi): (f64, f64) = (ttt["ci95_lo"].parse().unwrap(), ttt["ci95_hi"].parse().unwrap());
    // paired delta method on the log scale: z = a/20 − b/7 per seed = 16/20 − 4/7 and 24/20 − 10/7 = ±0.228571,
    // se = sd(z)/√2 = 0.228571, interval exp(ln(20/7) ± 12.7062 × 0.228571)
    let half = 12.7062 * (0.8f64 - 4.0 / 7.0);
    assert!((lo.ln() - ((20.0f64 / 7.0).ln() - half)).abs() < 1e-4 && (hi.ln() - ((20.0f64 / 7.0).ln() + half)).abs() < 1e-4, "{lo} {hi}");

    // a target nobody reaches: did-not-finish, reported, not dropped
    let meta2 = GridMeta { report: ReportConfig { target_map: Some(0.95), ..meta.report.clone() }, ..meta };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta2).unwrap()).unwrap();
    // (the time-to-target curve: targets 0.21–0.50, which every seed of both arms reaches and not all at once)
    let curve = std::fs::read_to_string(res.join("target_curve.csv")).unwrap();
    assert!(curve.lines().nth(1).unwrap().starts_with("a,b,0.21,") && curve.lines().last().unwrap().starts_with("a,b,0.5,"), "{curve}");
    ohem_harness::report::generate(res).unwrap();
    let mut r = csv::Reader::from_path(res.join("summary.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> = r.deserialize().map(|x| x.unwrap()).collect();
    assert_eq!(rows.iter().find(|r| r["arm"] == "a").unwrap()["did_not_finish"], "2");
    let text = std::fs::read_to_string(res.join("speedups.csv")).unwrap();
    assert!(text.contains("DNF"), "{text}");

    // a chart of every kind, PNG and SVG
    for stem in ["map_vs_epoch", "map_vs_wallclock", "map_vs_training_time", "seconds_per_epoch", "speedup_vs_a", "fg_fraction", "mining", "ttt_ratio_vs_target"] {
        let png = std::fs::read(res.join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "{stem}.png");
        let svg = std::fs::read_to_string(res.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{stem}.svg has no text");
    }
}

/// `report.metric: coco_ap`: the report reads that column (here 0.5 × VOC07's) for the final
/// means, the target and the time to it, the differences and the findings; a metric that is
/// not a column is refused by name.
#[test]
fn the_report_reads_the_metric_it_is_given() {
    let t = tempfile::tempdir().unwrap();
    let res = t.path();
    let report = ReportConfig { baselines: vec!["a".into()], target_map: Some(0.25), metric: ohem_harness::rundir::Metric::Coco(0), ..Default::default() };
    let meta = GridMeta { name: "coco".into(), arms: vec!["a".into(), "b".into()], report };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    // VOC07 finals a: 0.6, 0.5; b: 0.7, 0.56 — so coco_ap finals a: 0.3, 0.25; b: 0.35, 0.28
    fake_cell(res, "a", 0, State::Done, &[row(1, 10.0, Some(0.3), 8.0, 0.0), row(2, 20.0, Some(0.6), 8.0, 0.0)]);
    fake_cell(res, "a", 1, State::Done, &[row(1, 10.0, Some(0.4), 8.0, 0.0), row(2, 20.0, Some(0.5), 8.0, 0.0)]);
    fake_cell(res, "b", 0, State::Done, &[row(1, 10.0, Some(0.5), 4.0, 0.0), row(2, 20.0, Some(0.7), 4.0, 0.0)]);
    fake_cell(res, "b", 1, State::Done, &[row(1, 10.0, Some(0.2), 4.0, 0.0), row(2, 20.0, Some(0.56), 4.0, 0.0)]);
    let out = ohem_harness::report::generate(res).unwrap();
    let text = std::fs::read_to_string(&out.summary).unwrap();
    assert!(text.contains("Metric: coco_ap"), "{text}");
    let mut r = csv::Reader::from_path(res.join("summary.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> = r.deserialize().map(|x| x.unwrap()).collect();
    let get = |arm: &str, col: &str| -> f64 { rows.iter().find(|r| r["arm"] == arm).unwrap()[col].parse().unwrap() };
    assert!((get("a", "final_map_mean") - 0.275).abs() < 1e-9 && (get("b", "final_map_mean") - 0.315).abs() < 1e-9, "{rows:?}");
    // coco_ap ≥ 0.25: a at epoch 2 in both seeds (16 s), b at epoch 1 (0.25) and epoch 2 (0.28): 4 and 8 s
    assert!((get("a", "time_to_target_mean") - 16.0).abs() < 1e-9 && (get("b", "time_to_target_mean") - 6.0).abs() < 1e-9, "{rows:?}");
    let mut d = csv::Reader::from_path(res.join("map_diffs.csv")).unwrap();
    let ds: Vec<std::collections::HashMap<String, String>> = d.deserialize().map(|x| x.unwrap()).collect();
    let ba = ds.iter().find(|r| r["baseline"] == "a" && r["arm"] == "b").unwrap();
    assert!((ba["final_map_diff"].parse::<f64>().unwrap() - 0.04).abs() < 1e-9, "{ba:?}");
    assert!(std::fs::read_to_string(res.join("findings.csv")).unwrap().lines().count() > 1);
    // a study of one arm still has its findings section, which says there is nothing to compare
    let one = tempfile::tempdir().unwrap();
    let meta = GridMeta { name: "one".into(), arms: vec!["a".into()], report: ReportConfig::default() };
    std::fs::write(one.path().join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    fake_cell(one.path(), "a", 0, State::Done, &[row(1, 10.0, Some(0.3), 8.0, 0.0)]);
    let text = std::fs::read_to_string(ohem_harness::report::generate(one.path()).unwrap().summary).unwrap();
    assert!(text.contains("## Findings") && text.contains("- None: a comparison needs two arms"), "{text}");
    // a grid naming a metric that is no column
    let g = tempfile::tempdir().unwrap();
    let p = write_grid(g.path(), "seeds: [0]
report:
  metric: coco_apx
");
    let err = format!("{:#}", Grid::load(&p, &[]).unwrap_err());
    assert!(err.contains("grid.yaml") && err.contains("coco_apx"), "{err}");
}

/// A one-epoch timing arm (masked OHEM in experiments/speedup.yaml) has no final mAP to compare
/// with full runs: map_diffs.csv leaves its pairs out, and its verdict says why and prints no
/// mAP difference; pairs of equal length stay.
#[test]
fn final_maps_are_compared_only_between_arms_trained_as_long() {
    let t = tempfile::tempdir().unwrap();
    let res = t.path();
    let verdict = VerdictConfig { claim: "m is slower".into(), baseline: "m".into(), arm: "a".into(), measure: ohem_harness::rundir::Measure::SPerIter, expected: 2.0, tolerance: 1.25, regime: None };
    let meta = GridMeta { name: "len".into(), arms: vec!["a".into(), "b".into(), "m".into()], report: ReportConfig { baselines: vec!["a".into(), "m".into()], verdicts: vec![verdict], ..Default::default() } };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    for seed in 0..2 {
        let full = |m: f64| [row(1, 10.0, Some(m - 0.1), 8.0, 0.0), row(2, 20.0, Some(m - 0.05), 8.0, 0.0), row(3, 30.0, Some(m), 8.0, 0.0)];
        fake_cell_of(res, "a", seed, 3, State::Done, &full(0.5 + seed as f64 * 0.01));
        fake_cell_of(res, "b", seed, 3, State::Done, &full(0.6 + seed as f64 * 0.02));
        fake_cell_of(res, "m", seed, 1, State::Done, &[row(1, 20.0, Some(0.2), 16.0, 0.0)]);
    }
    let out = ohem_harness::report::generate(res).unwrap();
    let mut d = csv::Reader::from_path(res.join("map_diffs.csv")).unwrap();
    let ds: Vec<std::collections::HashMap<String, String>> = d.deserialize().map(|x| x.unwrap()).collect();
    let pairs: Vec<(String, String)> = ds.iter().map(|r| (r["baseline"].clone(), r["arm"].clone())).collect();
    assert_eq!(pairs, vec![("a".to_string(), "b".to_string())], "only a and b trained 3 epochs each");
    // b − a = (0.6 + 0.62) / 2 − (0.5 + 0.51) / 2 = 0.105
    assert!((ds[0]["final_map_diff"].parse::<f64>().unwrap() - 0.105).abs() < 1e-9, "{ds:?}");
    let line = out.notes.iter().find(|n| n.starts_with("verdict: \"m is slower\"")).unwrap();
    assert!(line.contains("final mAP not compared: m ran 1 epoch and a 3 epochs") && !line.contains("Final map_voc07"), "{line}");
    let text = std::fs::read_to_string(&out.summary).unwrap();
    let diffs = text.split("| baseline | arm | difference |").nth(1).unwrap().split("\n\n").next().unwrap();
    assert!(diffs.contains("| a | b | +0.1050 |") && !diffs.contains("| m |") && !diffs.contains("| a | m |"), "{diffs}");
}

#[test]
fn bootstrap_by_hand() {
    use ohem_harness::report::{bootstrap_ratio, mean_std, time_to_target};
    // identical seeds: no spread
    let r = bootstrap_ratio(&[4.0, 4.0], &[2.0, 2.0], 500, 1).unwrap();
    assert_eq!((r.0, r.1, r.2), (2.0, 2.0, 2.0));
    assert_eq!(mean_std(&[1.0, 3.0]), Some((2.0, 2f64.sqrt())));
    let one = mean_std(&[5.0]).unwrap();
    assert!(one.0 == 5.0 && one.1.is_nan(), "one seed has no spread: {one:?}");
    // training time: train + mine, evaluation (the gaps in wall_s) left out
    let rows = [row(1, 10.0, None, 1.0, 0.5), row(2, 20.0, Some(0.4), 1.0, 0.5), row(3, 30.0, Some(0.6), 1.0, 0.0)];
    assert_eq!(time_to_target(&rows, ohem_harness::rundir::Metric::Voc07, 0.5), Some(4.0));
    assert_eq!(time_to_target(&rows, ohem_harness::rundir::Metric::Voc07, 0.4), Some(3.0));
    assert_eq!(time_to_target(&rows, ohem_harness::rundir::Metric::Voc07, 0.7), None);
}

/// End to end through the CLI: two arms, two seeds, one epoch on the tiny
/// data; then a simulated kill and a rerun that resumes, and a failing cell
/// that does not stop the others.
#[test]
fn run_grid_end_to_end_with_resume_and_failure_isolation() {
    let t = tempfile::tempdir().unwrap();
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  ohem:\n    sampler: {kind: ohem}\nseeds: [0, 1]\nreport:\n  baselines: [frcn]\n");
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--dry-run"]);
    assert!(ok && out.contains("4 cells"), "{out}{err}");
    assert!(!t.path().join("results/cells").exists(), "--dry-run runs nothing");
    // a dataset that does not exist yet: the dry run lists the cells and says how to make it; a real run refuses
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--dry-run", "--set", "dataset.root=/no/such/large"]);
    assert!(ok && out.contains("4 cells") && err.contains("warning: dataset.root = /no/such/large") && err.contains("harness make-dataset --out /no/such/large --size large"), "{out}{err}");
    let (ok, _, err) = harness(&["run", p.to_str().unwrap(), "--set", "dataset.root=/no/such/large"]);
    assert!(!ok && err.contains("/no/such/large") && !err.contains("panicked"), "{err}");
    // a proposals file that does not exist: the dry run says so (the run refuses the cells)
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--dry-run", "--set", "proposals.train_file=/no/such/props.txt"]);
    assert!(ok && out.contains("4 cells") && err.contains("warning: proposals.train_file = /no/such/props.txt does not exist: the run will refuse to start"), "{out}{err}");

    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--cache-dir", &cache, "--jobs", "2"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("4 run, 0 already done") && out.contains("0 failed"), "{out}");
    let res = t.path().join("results");
    let summary = std::fs::read_to_string(res.join("summary.md")).unwrap();
    assert!(summary.contains("| frcn | 2 | 0 |") && summary.contains("| ohem | 2 | 0 |"), "{summary}");
    let cells: Vec<_> = std::fs::read_dir(res.join("cells")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cells.len(), 4);
    for c in &cells {
        assert_eq!(read_status(c).unwrap().state, State::Done);
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.join("manifest.json")).unwrap()).unwrap();
        assert!(m["libtorch"].as_str().unwrap().starts_with("2.13.0") && m["ended"].is_string(), "{m}");
        // what ran it: the CPU and its cores, and the load when the cell started and ended
        assert!(m["cpu"].as_str().is_some_and(|c| !c.is_empty()) && m["cores"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["load_start"].as_f64().unwrap() >= 0.0 && m["load_end"].as_f64().unwrap() >= 0.0, "{m}");
        assert!(c.join("config.yaml").exists() && c.join("metrics.csv").exists() && c.join("checkpoints").exists());
        // the per-class bookkeeping of the run's first iteration (every 20th): background and
        // each class once
        let classes = ohem_harness::rundir::read_classes(&c.join("classes.csv")).unwrap();
        assert!(!classes.is_empty() && classes.iter().all(|r| r.iteration == 0 && r.epoch == 1), "{classes:?}");
        assert_eq!(classes.iter().map(|r| r.class).collect::<Vec<_>>(), (0..classes.len()).collect::<Vec<_>>());
        assert_eq!(classes[0].name, "background");
        // each class's AP at every evaluation: their mean is the logged mAP
        let per_class = ohem_harness::rundir::read_per_class(&c.join("per_class.csv")).unwrap();
        let rows = ohem_harness::rundir::read_metrics(&c.join("metrics.csv")).unwrap();
        for r in &rows {
            let aps: Vec<f64> = per_class.iter().filter(|p| p.epoch == r.epoch).filter_map(|p| p.ap_voc07).collect();
            assert!(!aps.is_empty() && (aps.iter().sum::<f64>() / aps.len() as f64 - r.map_voc07.unwrap()).abs() < 1e-12, "epoch {}: {per_class:?}", r.epoch);
        }
    }

    // Rerun: everything is skipped.
    let (ok, out, _) = harness(&["run", p.to_str().unwrap(), "--cache-dir", &cache]);
    assert!(ok && out.contains("0 run, 4 already done"), "{out}");

    // Another grid whose arm `fixed` is frcn's config: --reuse copies its two finished cells
    // (the same cell ids) instead of training them, under this grid's arm name.
    let p4 = write_grid(t.path(), "arms:\n  fixed:\n    sampler: {kind: fixed_ratio}\nseeds: [0, 1]\n");
    let r4 = t.path().join("r4");
    let (ok, out, err) = harness(&["run", p4.to_str().unwrap(), "--cache-dir", &cache, "--out", r4.to_str().unwrap(), "--reuse", res.to_str().unwrap()]);
    assert!(ok && out.contains("2 cells copied from") && out.contains("0 run, 2 already done"), "{out}{err}");
    for seed in [0, 1] {
        let find = |root: &Path, prefix: &str| std::fs::read_dir(root.join("cells")).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{prefix}-s{seed}-"))).unwrap();
        let (src, dst) = (find(&res, "frcn"), find(&r4, "fixed"));
        assert_eq!(std::fs::read(src.join("metrics.csv")).unwrap(), std::fs::read(dst.join("metrics.csv")).unwrap());
        assert_eq!(std::fs::read(src.join("config.yaml")).unwrap(), std::fs::read(dst.join("config.yaml")).unwrap());
        let cell: CellMeta = serde_json::from_str(&std::fs::read_to_string(dst.join("cell.json")).unwrap()).unwrap();
        assert_eq!((cell.arm.as_str(), cell.seed), ("fixed", seed));
        assert!(std::fs::read_to_string(dst.join("train.log")).unwrap().contains("copied by `harness run --reuse` from"));
        assert!(!dst.join("lock").exists());
    }
    // a second time copies nothing; a twin whose config.yaml is not its id's is refused by name
    let (ok, out, _) = harness(&["run", p4.to_str().unwrap(), "--cache-dir", &cache, "--out", r4.to_str().unwrap(), "--reuse", res.to_str().unwrap()]);
    assert!(ok && out.contains("0 cells copied"), "{out}");
    let twin = std::fs::read_dir(res.join("cells")).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("frcn-s0-")).unwrap();
    let original = std::fs::read_to_string(twin.join("config.yaml")).unwrap();
    std::fs::write(twin.join("config.yaml"), original.replace("seed: 0", "seed: 7")).unwrap();
    let (ok, _, err) = harness(&["run", p4.to_str().unwrap(), "--cache-dir", &cache, "--out", t.path().join("r5").to_str().unwrap(), "--reuse", res.to_str().unwrap()]);
    assert!(!ok && err.contains(&twin.join("config.yaml").display().to_string()) && err.contains("not reused") && !err.contains("panicked"), "{err}");
    std::fs::write(twin.join("config.yaml"), original).unwrap();

    // Simulate a SIGKILL in the middle of a cell's second epoch: status left "running", one epoch logged.
    let p2 = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\nseeds: [0]\n");
    let (ok, _, err) = harness(&["run", p2.to_str().unwrap(), "--cache-dir", &cache, "--set", "train.epochs=2", "--out", t.path().join("r2").to_str().unwrap()]);
    assert!(ok, "{err}");
    let cell = std::fs::read_dir(t.path().join("r2/cells")).unwrap().next().unwrap().unwrap().path();
    let full = std::fs::read_to_string(cell.join("metrics.csv")).unwrap();
    let first_epoch: String = full.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(cell.join("metrics.csv"), &first_epoch).unwrap();
    std::fs::remove_file(cell.join("checkpoints/epoch_002.safetensors")).unwrap();
    std::fs::write(cell.join("status.json"), "{\"state\": \"running\", \"reason\": null, \"updated\": \"x\"}").unwrap();
    let (ok, out, err) = harness(&["run", p2.to_str().unwrap(), "--cache-dir", &cache, "--set", "train.epochs=2", "--out", t.path().join("r2").to_str().unwrap()]);
    assert!(ok && out.contains("1 run"), "{out}{err}");
    let resumed = std::fs::read_to_string(cell.join("metrics.csv")).unwrap();
    assert_eq!(resumed.lines().count(), 3, "resumed at epoch 2:\n{resumed}");
    assert_eq!(resumed.lines().nth(1), full.lines().nth(1), "epoch 1 was not redone");
    // the same CPU run gives the same epoch-2 losses and mAP
    // every column but the timings (seconds, and the epoch's CPU and machine evidence)
    let header: Vec<&str> = full.lines().next().unwrap().split(',').collect();
    let timing = ["train_s", "mine_s", "eval_s", "wall_s", "load_s", "cpu_s", "iter_median_s", "iter_iqr_s", "others_cpu_share"];
    let cols = |l: &str| l.split(',').enumerate().filter(|(i, _)| !timing.contains(&header[*i])).map(|(_, v)| v.to_string()).collect::<Vec<_>>();
    assert_eq!(cols(resumed.lines().nth(2).unwrap()), cols(full.lines().nth(2).unwrap()));

    // A cell that fails (a corrupt image in its dataset) is marked failed with its reason; the others finish.
    let broken = crate::util::copy_of(tiny_dataset());
    std::fs::write(broken.path().join("JPEGImages/000003.jpg"), b"not a jpeg").unwrap();
    let p3 = write_grid(t.path(), &format!("arms:\n  good:\n    sampler: {{kind: fixed_ratio}}\n  bad:\n    dataset: {{root: {}}}\nseeds: [0]\n", broken.path().display()));
    let (ok, out, err) = harness(&["run", p3.to_str().unwrap(), "--cache-dir", &cache, "--out", t.path().join("r3").to_str().unwrap()]);
    assert!(!ok, "a failed cell makes the exit code non-zero");
    assert!(out.contains("1 run") && out.contains("1 failed") && out.contains("000003.jpg"), "{out}\n{err}");
    assert!(err.contains("1 of 2 cells failed") && !err.contains("panicked"), "{err}");
    let statuses: Vec<State> = std::fs::read_dir(t.path().join("r3/cells")).unwrap().map(|e| read_status(&e.unwrap().path()).unwrap().state).collect();
    assert!(statuses.contains(&State::Done) && statuses.contains(&State::Failed));
    assert!(std::fs::read_to_string(t.path().join("r3/summary.md")).unwrap().contains("000003.jpg"));
}

/// Verdict words against hand-worked intervals: the band for "about 2x" with
/// tolerance 1.25 is [1.6, 2.5]. (Seeds needed: tests/stats.rs.)
#[test]
fn verdicts_by_hand() {
    use ohem_harness::report::{judge, Word};
    assert_eq!(judge(1.7, 2.3, 2.0, 1.25), Word::Supported);
    assert_eq!(judge(0.9, 1.1, 2.0, 1.25), Word::Contradicted);
    assert_eq!(judge(2.6, 3.5, 2.0, 1.25), Word::Contradicted);
    // [1.4, 2.3] straddles 1.6
    assert_eq!(judge(1.4, 2.3, 2.0, 1.25), Word::NotResolved);
    assert_eq!(judge(1.6, 2.5, 2.0, 1.25), Word::Supported);
}

/// The grid's ETA counts down as a cell advances, before any cell has finished.
#[test]
fn the_eta_counts_down_within_a_cell() {
    use ohem_harness::harness::{eta_seconds, CellClock};
    // nothing trained yet, nothing finished: unknown
    assert_eq!(eta_seconds(&[CellClock { elapsed: 5.0, done: None }], 2, None, 1), None);
    // half of the first cell after 60 s: 60 s left of it, and two queued cells of 120 s
    assert_eq!(eta_seconds(&[CellClock { elapsed: 60.0, done: Some(0.5) }], 2, None, 1), Some(300.0));
    // 30 s later, three quarters done: 30 s + 2 × 120 s
    assert_eq!(eta_seconds(&[CellClock { elapsed: 90.0, done: Some(0.75) }], 2, None, 1), Some(270.0));
    // once cells have finished (mean 100 s), a cell still pre-training counts as the mean less its elapsed time
    assert_eq!(eta_seconds(&[CellClock { elapsed: 30.0, done: None }], 1, Some(100.0), 1), Some(170.0));
    // two jobs share the work
    assert_eq!(eta_seconds(&[CellClock { elapsed: 50.0, done: Some(0.5) }, CellClock { elapsed: 10.0, done: Some(0.1) }], 2, Some(100.0), 2), Some((50.0 + 90.0 + 200.0) / 2.0));
}

/// Nothing is left out in silence: a cell whose cell.json cannot be read is a warning naming
/// its path, and summary.md lists every cell that is not in its tables (failed with the reason,
/// running, pending, unreadable). A comparison whose seeds all gave the same value has a
/// zero-width interval, which resolves nothing: "no spread across seeds", never "supported".
#[test]
fn the_report_names_every_cell_it_leaves_out_and_no_spread_resolves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let res = t.path();
    let verdict = VerdictConfig { claim: "b is 2x faster per iteration".into(), baseline: "a".into(), arm: "b".into(), measure: ohem_harness::rundir::Measure::SPerIter, expected: 2.0, tolerance: 1.25, regime: None };
    let meta = GridMeta { name: "left".into(), arms: vec!["a".into(), "b".into()], report: ReportConfig { baselines: vec!["a".into()], verdicts: vec![verdict], ..Default::default() } };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    // every seed: b twice as fast as a per iteration, and 0.125 above it in final mAP, exactly
    // (binary fractions, so that the differences are equal to the last bit)
    for seed in 0..2 {
        let m = 0.25 + 0.25 * seed as f64;
        fake_cell(res, "a", seed, State::Done, &[row(1, 10.0, Some(m), 8.0, 0.0)]);
        fake_cell(res, "b", seed, State::Done, &[row(1, 5.0, Some(m + 0.125), 4.0, 0.0)]);
    }
    fake_cell(res, "b", 2, State::Failed, &[]);
    std::fs::write(res.join("cells/b-s2/status.json"), "{\"state\": \"failed\", \"reason\": \"out of memory\", \"updated\": \"x\"}").unwrap();
    fake_cell(res, "a", 3, State::Running, &[]);
    fake_cell(res, "a", 4, State::Pending, &[]);
    std::fs::remove_file(res.join("cells/a-s4/status.json")).unwrap(); // never started: no status yet
    let broken = res.join("cells/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("cell.json"), "{\"id\": ").unwrap();

    let out = ohem_harness::report::generate(res).unwrap();
    let path = broken.join("cell.json").display().to_string();
    assert!(out.notes.iter().any(|n| n.starts_with("warning:") && n.contains(&path)), "{:?}", out.notes);
    let text = std::fs::read_to_string(&out.summary).unwrap();
    let left = text.split("Cells not in the tables above:").nth(1).expect("a section of the cells left out");
    for needle in ["- b seed 2: failed: out of memory", "- a seed 3: running", "- a seed 4: pending", &format!("- left out: {path}: unreadable")] {
        assert!(left.contains(needle), "{needle:?} not in:\n{left}");
    }
    // the zero-width interval: said, and never a resolution
    let mut v = csv::Reader::from_path(res.join("verdicts.csv")).unwrap();
    let vs: Vec<std::collections::HashMap<String, String>> = v.deserialize().map(|x| x.unwrap()).collect();
    assert_eq!(vs[0]["verdict"], "not resolved", "{vs:?}");
    assert!(vs[0]["note"].contains("no spread across seeds"), "{vs:?}");
    let mut d = csv::Reader::from_path(res.join("map_diffs.csv")).unwrap();
    let ds: Vec<std::collections::HashMap<String, String>> = d.deserialize().map(|x| x.unwrap()).collect();
    assert!(ds[0]["interval"].contains("no spread across seeds"), "{ds:?}");
    let mut s = csv::Reader::from_path(res.join("speedups.csv")).unwrap();
    let sp: Vec<std::collections::HashMap<String, String>> = s.deserialize().map(|x| x.unwrap()).collect();
    let per_iter = sp.iter().find(|r| r["arm"] == "b" && r["measure"] == "s_per_iter").unwrap();
    assert!(per_iter["note"].contains("no spread across seeds"), "{per_iter:?}");
}

/// With `train.iterations`, a cell's epochs follow from its training split:
/// 5 iterations of at most 2 per epoch are 3 epochs (the last cut short), and
/// `cells.json`-bound `Cell::epochs` says so before any cell runs.
#[test]
fn a_grid_in_iterations_plans_each_cells_epochs_from_its_data() {
    let t = tempfile::tempdir().unwrap();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\nseeds: [0, 1]\n");
    let o = |extra: &[&str]| ["train.epochs=0", "train.lr_steps=[]", "train.iterations=5"].iter().chain(extra).map(|s| s.to_string()).collect::<Vec<_>>();
    let g = Grid::load(&p, &o(&[])).unwrap();
    assert!(g.cells.iter().all(|c| c.epochs == 3), "{:?}", g.cells.iter().map(|c| c.epochs).collect::<Vec<_>>());
    // one pass over the tiny trainval split (16 images, each with a non-difficult object) is 8 iterations
    let whole = Grid::load(&p, &o(&["train.iters_per_epoch="])).unwrap();
    let n = ohem_harness::data::Dataset::open(tiny_dataset()).unwrap().load_split("trainval").unwrap().iter().filter(|a| ohem_harness::trainer::has_foreground(a)).count();
    assert!(whole.cells.iter().all(|c| c.epochs == 5usize.div_ceil(n.div_ceil(2))));
    // giving both units is refused, naming the key
    let err = format!("{:#}", Grid::load(&p, &["train.iterations=5".into()]).unwrap_err());
    assert!(err.contains("train.iterations replaces train.epochs"), "{err}");
}

/// `dataset.cache_mib` is not part of a cell's identity: a grid run again with a lower budget
/// (after a cell ran out of memory) keeps the cells and their ids, and the budget reaches the
/// cells' `config.yaml`, which the training process reads; any other change is a new cell.
#[test]
fn a_new_budget_reaches_the_cells_of_a_grid() {
    let t = tempfile::tempdir().unwrap();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\nseeds: [0]\n");
    let read = |g: &Grid| -> ohem_harness::config::TrainConfig {
        let path = g.results.join("cells").join(&g.cells[0].dir_name).join("config.yaml");
        ohem_harness::config::TrainConfig::load(&path, &[]).unwrap()
    };
    let g = Grid::load(&p, &[]).unwrap();
    ohem_harness::harness::prepare(&g).unwrap();
    assert_eq!(read(&g).dataset.cache_mib, None);
    let low = Grid::load(&p, &["dataset.cache_mib=64".into()]).unwrap();
    assert_eq!(low.cells[0].dir_name, g.cells[0].dir_name, "the same cell");
    ohem_harness::harness::prepare(&low).unwrap();
    assert_eq!(read(&low).dataset.cache_mib, Some(64), "the lower budget reaches the cell");
    assert_eq!(read(&low).train, g.cells[0].config.train);
}

/// With `train.iterations`, cells that train on different COCO instance files
/// under one root plan their epochs from their own file: the count of
/// trainable images is cached per (root, format, train split, instances file).
#[test]
fn a_grid_in_iterations_plans_epochs_per_instances_file() {
    use ohem_harness::data::{coco::convert, Dataset};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("coco");
    convert(tiny_dataset(), &root, &[]).unwrap();
    let full = root.join("annotations/instances_trainval.json");
    // a second instances file with the first 4 images and their annotations
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&full).unwrap()).unwrap();
    let keep: Vec<i64> = v["images"].as_array().unwrap()[..4].iter().map(|i| i["id"].as_i64().unwrap()).collect();
    v["images"].as_array_mut().unwrap().truncate(4);
    v["annotations"].as_array_mut().unwrap().retain(|a| keep.contains(&a["image_id"].as_i64().unwrap()));
    let small = root.join("annotations/small.json");
    std::fs::write(&small, v.to_string()).unwrap();
    let p = t.path().join("grid.yaml");
    let text = format!(
        "results: {}\nbase:\n  device: cpu\n  dataset:\n    root: {}\n  model:\n    fc_dim: 64\n    init: scratch\n  train:\n    epochs: 0\n    iterations: 20\n    lr_steps: []\narms:\n  full:\n    dataset: {{train_ann: {}}}\n  small:\n    dataset: {{train_ann: {}}}\nseeds: [0]\n",
        t.path().join("results").display(),
        root.display(),
        full.display(),
        small.display()
    );
    std::fs::write(&p, text).unwrap();
    let g = Grid::load(&p, &[]).unwrap();
    // the trainable images of each file, and 20 iterations of 2 images each over them (images_per_batch 2)
    let trainable = |ann: &Path| {
        let mut cfg = ohem_harness::config::DatasetConfig::voc(&root);
        cfg.train_ann = Some(ann.to_path_buf());
        let ds = Dataset::from_config(&cfg).unwrap();
        ds.load_split("trainval").unwrap().iter().filter(|a| ohem_harness::trainer::has_foreground(a)).count()
    };
    let (n_full, n_small) = (trainable(&full), trainable(&small));
    assert!(n_full > n_small && n_small > 0, "{n_full} {n_small}");
    let want = |n: usize| 20usize.div_ceil(n.div_ceil(2));
    assert_ne!(want(n_full), want(n_small));
    let mut epochs: Vec<(String, usize)> = g.cells.iter().map(|c| (c.arm.clone(), c.epochs)).collect();
    epochs.sort();
    assert_eq!(epochs, vec![("full".to_string(), want(n_full)), ("small".to_string(), want(n_small))]);
}

/// Time to a target that one arm never reaches: its seeds count as censored at their run's
/// end (not dropped), Gehan's test at the study's family level judges the order, and the
/// finding says how many seeds of each arm got there. 5 seeds against 5 resolve it (p =
/// 2/252 against 0.05/4); 3 against 3 cannot (the smallest p is 2/20), and the line says so.
/// (a reaches 0.5 at 16–20 s of training; b trains 30–34 s without reaching it.)
#[test]
fn runs_that_never_reach_the_target_are_censored_not_dropped() {
    for (n, resolved) in [(5u64, true), (3, false)] {
        let t = tempfile::tempdir().unwrap();
        let res = t.path();
        let verdict = VerdictConfig { claim: "b is 2x faster".into(), baseline: "a".into(), arm: "b".into(), measure: ohem_harness::rundir::Measure::TimeToTarget, expected: 2.0, tolerance: 1.25, regime: None };
        let meta = GridMeta { name: "dnf".into(), arms: vec!["a".into(), "b".into()], report: ReportConfig { baselines: vec!["a".into()], target_map: Some(0.5), verdicts: vec![verdict], ..Default::default() } };
        std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
        for seed in 0..n {
            let s = seed as f64;
            fake_cell(res, "a", seed, State::Done, &[row(1, 10.0, Some(0.4), 8.0 + s, 0.0), row(2, 20.0, Some(0.55), 8.0, 0.0), row(3, 30.0, Some(0.6), 8.0, 0.0)]);
            fake_cell(res, "b", seed, State::Done, &[row(1, 12.0, Some(0.3), 10.0 + s, 0.0), row(2, 24.0, Some(0.4), 10.0, 0.0), row(3, 36.0, Some(0.45), 10.0, 0.0)]);
        }
        let out = ohem_harness::report::generate(res).unwrap();
        let text = std::fs::read_to_string(&out.summary).unwrap();
        // 2 arms: final mAP and the 3 speed measures, one family of 4
        let line = text.lines().find(|l| l.starts_with("- a / b, time_to_target")).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains(&format!("b reaches 0.5000 within its training budget in 0 of {n} seeds, a in {n} of {n}")), "{line}");
        assert!(line.contains("p ≤ 0.0125"), "{line}");
        let v = out.notes.iter().find(|l| l.starts_with("verdict:")).unwrap();
        if resolved {
            assert!(line.contains("resolved: b is slower than a in time_to_target") && line.contains("p = 0.0079"), "{line}");
            assert!(v.contains(": contradicted") && v.contains("b is resolved slower than a"), "{v}");
        } else {
            assert!(line.contains(": not resolved (") && line.contains("the smallest p any split of these times allows is 0.1000"), "{line}");
            assert!(v.contains(": not resolved"), "{v}");
        }
        let sp = std::fs::read_to_string(res.join("speedups.csv")).unwrap();
        assert!(sp.lines().next().unwrap().contains("gehan_p,gehan_p_min,gehan_threshold"), "{sp}");
    }
}

/// A run's timings flagged from its own evidence, by hand: an epoch 2x slower than the run's
/// median epoch, other processes' share of the machine above a tenth, the load when the cell
/// ended; and a quiet run, or the load when it started (the previous cell's), flags nothing.
/// The report leaves flagged seeds out of both arms of a timing comparison, so it stays paired.
#[test]
fn timings_are_flagged_by_their_own_evidence_and_left_out() {
    use ohem_harness::report::RunLog;
    let run = |rows: Vec<EpochRow>, load: Option<(f64, f64)>| RunLog {
        arm: "a".into(), seed: 0, split: None, outcomes: None, state: State::Done, reason: None, rows, mining: Vec::new(), classes: Vec::new(), per_class: Vec::new(), epochs: 3,
        manifest: load.map(|(start, end)| serde_json::from_value(serde_json::json!({"harness_version": "x", "git_revision": "x", "libtorch": "x", "device": "cpu", "host": "h", "started": "s", "cores": 2, "load_start": start, "load_end": end})).unwrap()),
        config: None,
    };
    let quiet = || vec![row(1, 10.0, Some(0.3), 8.0, 0.0), row(2, 20.0, Some(0.4), 8.4, 0.0), row(3, 30.0, Some(0.5), 7.9, 0.0)];
    assert_eq!(run(quiet(), None).timing_flag(), None);
    // an epoch at twice the others' seconds per iteration
    let mut slow = quiet();
    slow[1].train_s = 16.0;
    let why = run(slow, None).timing_flag().unwrap();
    assert!(why.contains("epoch 2") && why.contains("2.0x"), "{why}");
    // the epochs' own medians win over their means when present
    let mut medians = quiet();
    medians[1].train_s = 16.5;
    for e in &mut medians {
        e.iter_median_s = Some(0.8);
    }
    assert_eq!(run(medians, None).timing_flag(), None);
    // other processes' share of the machine
    let mut busy = quiet();
    busy[2].others_cpu_share = Some(0.3);
    assert!(run(busy, None).timing_flag().unwrap().contains("30% of the machine's CPU time in epoch 3"));
    let mut calm = quiet();
    calm[2].others_cpu_share = Some(0.05);
    assert_eq!(run(calm, None).timing_flag(), None);
    // the load when it ended, not when it started
    assert!(run(quiet(), Some((1.0, 3.5))).timing_flag().unwrap().contains("3.50 on 2 cores"));
    assert_eq!(run(quiet(), Some((3.5, 2.0))).timing_flag(), None);

    // through the report: b's seed 1 is disturbed, so seed 1 leaves both arms of a / b
    let t = tempfile::tempdir().unwrap();
    let res = t.path();
    let meta = GridMeta { name: "flag".into(), arms: vec!["a".into(), "b".into()], report: ReportConfig { baselines: vec!["a".into()], target_map: Some(0.45), ..Default::default() } };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    for seed in 0..3u64 {
        let s = seed as f64;
        fake_cell(res, "a", seed, State::Done, &[row(1, 10.0, Some(0.3), 8.0 + s, 0.0), row(2, 20.0, Some(0.5), 8.0 + s, 0.0), row(3, 30.0, Some(0.6), 8.0 + s, 0.0)]);
        let b2 = if seed == 1 { 40.0 } else { 4.0 + s };
        fake_cell(res, "b", seed, State::Done, &[row(1, 10.0, Some(0.3), 4.0 + s, 0.0), row(2, 20.0, Some(0.5), b2, 0.0), row(3, 30.0, Some(0.6), 4.0 + s, 0.0)]);
    }
    let out = ohem_harness::report::generate(res).unwrap();
    assert!(out.notes.iter().any(|n| n.contains("b: 1 of 3 cells left out of every timing comparison") && n.contains("seed 1: epoch 2")), "{:?}", out.notes);
    let mut s = csv::Reader::from_path(res.join("speedups.csv")).unwrap();
    let sp: Vec<std::collections::HashMap<String, String>> = s.deserialize().map(|x| x.unwrap()).collect();
    let per_iter = sp.iter().find(|r| r["measure"] == "s_per_iter").unwrap();
    // seeds 0 and 2 only: a's (0.8 + 1.0) / 2 against b's (0.4 + 0.6) / 2 s per iteration = 1.8, paired
    assert!((per_iter["speedup"].parse::<f64>().unwrap() - 1.8).abs() < 1e-9, "{per_iter:?}");
}

/// A study resumed on another machine: the cells that ran on another machine than most of the
/// study's (here another CPU's vector extensions, as the manifests record them) are left out of
/// every timing comparison, with the two machines named, and the comparison stays paired.
#[test]
fn cells_of_another_machine_are_left_out_of_the_timings() {
    let t = tempfile::tempdir().unwrap();
    let res = t.path();
    let meta = GridMeta { name: "machines".into(), arms: vec!["a".into(), "b".into()], report: ReportConfig { baselines: vec!["a".into()], target_map: Some(0.45), ..Default::default() } };
    std::fs::write(res.join("grid.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    let manifest = |isa: &str| serde_json::json!({"harness_version": "x", "git_revision": "x", "libtorch": "x", "device": "auto", "device_used": "cpu", "host": "h", "started": "s", "cpu": "AMD EPYC", "cores": 2, "cpu_isa": isa, "load_start": 0.5, "load_end": 1.0}).to_string();
    for seed in 0..3u64 {
        let s = seed as f64;
        fake_cell(res, "a", seed, State::Done, &[row(1, 10.0, Some(0.3), 8.0 + s, 0.0), row(2, 20.0, Some(0.5), 8.0 + s, 0.0), row(3, 30.0, Some(0.6), 8.0 + s, 0.0)]);
        // b's seed 1 ran on the faster machine: a quarter of its time
        let b = if seed == 1 { 1.0 } else { 4.0 + s };
        fake_cell(res, "b", seed, State::Done, &[row(1, 10.0, Some(0.3), b, 0.0), row(2, 20.0, Some(0.5), b, 0.0), row(3, 30.0, Some(0.6), b, 0.0)]);
        for arm in ["a", "b"] {
            let isa = if arm == "b" && seed == 1 { "AVX2 yes, AVX-512 yes, AMX no" } else { "AVX2 yes, AVX-512 no, AMX no" };
            std::fs::write(res.join("cells").join(format!("{arm}-s{seed}")).join("manifest.json"), manifest(isa)).unwrap();
        }
    }
    let out = ohem_harness::report::generate(res).unwrap();
    assert!(
        out.notes.iter().any(|n| n.contains("b: 1 of 3 cells left out of every timing comparison") && n.contains("seed 1: it ran on cpu (AMD EPYC; AVX2 yes, AVX-512 yes, AMX no; 2 cores), and most of the study's cells on cpu (AMD EPYC; AVX2 yes, AVX-512 no, AMX no; 2 cores)")),
        "{:?}",
        out.notes
    );
    let mut s = csv::Reader::from_path(res.join("speedups.csv")).unwrap();
    let sp: Vec<std::collections::HashMap<String, String>> = s.deserialize().map(|x| x.unwrap()).collect();
    let per_iter = sp.iter().find(|r| r["measure"] == "s_per_iter").unwrap();
    // seeds 0 and 2 only: a's (0.8 + 1.0) / 2 against b's (0.4 + 0.6) / 2 s per iteration = 1.8
    assert!((per_iter["speedup"].parse::<f64>().unwrap() - 1.8).abs() < 1e-9, "{per_iter:?}");
}

/// Issue 37: a grid over resampled splits, run for real. Cells are arms × splits × seeds with
/// the split in their ids and folders; each fold's files partition the pool; each cell keeps
/// its final evaluation's outcomes, which give back its own final mAP (else the report would
/// say so); the report's intervals are the corrected ones and it has its section across splits
/// and test sets; a second run skips every cell and writes no split file anew.
#[test]
fn a_grid_over_resampled_splits_runs_and_reports_across_them() {
    let t = tempfile::tempdir().unwrap();
    let data = crate::util::copy_of(tiny_dataset());
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let body = "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  ohem:\n    sampler: {kind: ohem}\nsplits:\n  folds: 2\n  group_by: image\nseeds: [0, 1]\nreport:\n  baselines: [frcn]\n";
    let p = write_grid(t.path(), body);
    let root = data.path().to_str().unwrap();
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--dry-run", "--set", &format!("dataset.root={root}")]);
    assert!(ok && out.contains("8 cells") && out.contains("f0: ") && out.contains("f1: ") && out.contains("split f1") && out.contains("no tile records"), "{out}{err}");
    let main = data.path().join("ImageSets/Main");
    assert!(!std::fs::read_dir(&main).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("cv-")), "the dry run wrote split files");
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--cache-dir", &cache, "--set", &format!("dataset.root={root}")]);
    assert!(ok && out.contains("8 run"), "{out}\n{err}");
    // the folds partition the pool (trainval + test of the tiny set): each image tested once
    let ids = |f: &str| std::fs::read_to_string(main.join(f)).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
    let mut pool = [ids("trainval.txt"), ids("test.txt")].concat();
    pool.sort();
    let mut split_files: Vec<String> = std::fs::read_dir(&main).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("cv-")).collect();
    split_files.sort();
    assert_eq!(split_files.len(), 4, "{split_files:?}");
    let mut tested: Vec<String> = split_files.iter().filter(|f| f.ends_with("-test.txt")).flat_map(|f| ids(f)).collect();
    tested.sort();
    assert_eq!(tested, pool, "each pooled image is in exactly one test fold");
    for f in split_files.iter().filter(|f| f.ends_with("-test.txt")) {
        let test = ids(f);
        let train = ids(&f.replace("-test.txt", "-train.txt"));
        assert!(train.iter().all(|i| !test.contains(i)), "{f}: a test image is trained on");
        assert_eq!(train.len() + test.len(), pool.len());
    }
    let res = t.path().join("results");
    let cells = ohem_harness::rundir::read_cells(&res).unwrap();
    assert_eq!(cells.len(), 8);
    for c in &cells {
        let s = c.split.as_ref().expect("a split");
        assert!(c.dir.contains(&format!("-{}-s{}-", s.label, c.seed)), "{}", c.dir);
        assert!(res.join("cells").join(&c.dir).join("outcomes.txt").is_file());
        // a finished cell shows no phase ("evaluating" was the last one written)
        assert!(!res.join("cells").join(&c.dir).join("progress.json").exists(), "{}", c.dir);
    }
    assert!(res.join("splits.csv").is_file());
    let summary = std::fs::read_to_string(res.join("summary.md")).unwrap();
    assert!(summary.contains("## Across splits and test sets") && summary.contains("Nadeau-Bengio corrected over (split, seed) units"), "{summary}");
    assert!(summary.contains("per split (mean, seeds): f0 ") && summary.contains("test-set bootstrap of the mean difference ["), "{summary}");
    assert!(!summary.contains("outcomes give"), "outcomes that do not give back the logged mAP:\n{summary}");
    // the units pair across arms by split and seed: the Findings' difference is the mean of the
    // per-(split, seed) differences, computed here from the cells' own metrics.csv
    let final_map = |dir: &str| -> f64 {
        let text = std::fs::read_to_string(res.join("cells").join(dir).join("metrics.csv")).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let i = header.iter().position(|h| *h == "map_voc07").unwrap();
        text.lines().last().unwrap().split(',').nth(i).unwrap().parse().unwrap()
    };
    let mut diffs = Vec::new();
    for c in cells.iter().filter(|c| c.arm == "ohem") {
        let b = cells.iter().find(|b| b.arm == "frcn" && b.seed == c.seed && b.split.as_ref().unwrap().index == c.split.as_ref().unwrap().index).unwrap();
        diffs.push(final_map(&c.dir) - final_map(&b.dir));
    }
    let want = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let mut f = csv::Reader::from_path(res.join("findings.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> = f.deserialize().map(|x| x.unwrap()).collect();
    let got: f64 = rows.iter().find(|r| r["measure"] == "final_map_voc07").unwrap()["value"].parse().unwrap();
    assert!((got - want).abs() < 1e-9, "{got} against the paired mean {want}");
    // a folder an earlier plan left behind is not a cell of this grid: left out, and named
    let first = res.join("cells").join(&cells[0].dir);
    crate::util::copy_dir(&first, &res.join("cells").join("frcn-f0-s0-0123456789ab"));
    let rep = ohem_harness::report::generate(&res).unwrap();
    assert!(rep.notes.iter().any(|n| n.contains("frcn-f0-s0-0123456789ab") && n.contains("not a cell of")), "{:?}", rep.notes);
    let again = std::fs::read_to_string(res.join("summary.md")).unwrap();
    let tables = |t: &str| t.split("\nCells not in the tables").next().unwrap().split("\nCharts:").next().unwrap().to_string();
    assert_eq!(tables(&again), tables(&summary), "the leftover folder changed the tables");
    std::fs::remove_dir_all(res.join("cells").join("frcn-f0-s0-0123456789ab")).unwrap();
    // the second time: every cell skipped, the same split files
    let before: Vec<Vec<u8>> = split_files.iter().map(|f| std::fs::read(main.join(f)).unwrap()).collect();
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--cache-dir", &cache, "--set", &format!("dataset.root={root}")]);
    assert!(ok && out.contains("0 run, 8 already done"), "{out}{err}");
    let after: Vec<Vec<u8>> = split_files.iter().map(|f| std::fs::read(main.join(f)).unwrap()).collect();
    assert!(before == after);
}

/// Issue 37: `harness run --retime` trains a flagged cell again and takes its timings when
/// every deterministic column comes out the same; a cell whose logged accuracy the rerun does
/// not reproduce keeps what it had, and the command says so and fails.
#[test]
fn retime_replaces_the_timings_of_flagged_cells_only_when_the_accuracy_reproduces() {
    let t = tempfile::tempdir().unwrap();
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  hnm:\n    sampler: {kind: hnm}\nseeds: [0]\n");
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--cache-dir", &cache]);
    assert!(ok, "{out}{err}");
    let res = t.path().join("results");
    let cell = |arm: &str| std::fs::read_dir(res.join("cells")).unwrap().map(|e| e.unwrap().path()).find(|d| d.file_name().unwrap().to_string_lossy().starts_with(&format!("{arm}-"))).unwrap();
    // flag both cells by their own evidence (another process's share of the CPU), and break frcn's accuracy row
    let set = |dir: &Path, col: &str, value: &str| {
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let i = header.iter().position(|h| *h == col).unwrap();
        let body: Vec<String> = text.lines().skip(1).map(|l| l.split(',').enumerate().map(|(k, v)| if k == i { value.to_string() } else { v.to_string() }).collect::<Vec<_>>().join(",")).collect();
        std::fs::write(dir.join("metrics.csv"), format!("{}\n{}\n", header.join(","), body.join("\n"))).unwrap();
    };
    let (hnm, frcn) = (cell("hnm"), cell("frcn"));
    let hnm_before = std::fs::read_to_string(hnm.join("metrics.csv")).unwrap();
    let events = |d: &Path| -> Vec<String> { std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains("tfevents")).collect() };
    let (hnm_events, frcn_events) = (events(&hnm), events(&frcn));
    assert_eq!((hnm_events.len(), frcn_events.len()), (1, 1));
    set(&hnm, "others_cpu_share", "0.5");
    set(&frcn, "others_cpu_share", "0.5");
    set(&frcn, "loss", "9.5");
    let frcn_broken = std::fs::read_to_string(frcn.join("metrics.csv")).unwrap();
    let (ok, out, err) = harness(&["run", p.to_str().unwrap(), "--retime", "--cache-dir", &cache]);
    assert!(!ok && out.contains("2 finished cells flagged"), "{out}{err}");
    assert!(out.contains("retimed: the accuracy rows came out identical") && out.contains("column loss: 9.5 against"), "{out}");
    assert!(err.contains("1 of 2 flagged cells kept their old timings") && !err.contains("panicked"), "{err}");
    // hnm: every deterministic column as it first ran, the timings new (not the 0.5 planted)
    let hnm_after = std::fs::read_to_string(hnm.join("metrics.csv")).unwrap();
    assert_eq!(ohem_harness::harness::deterministic_difference(&hnm_before, &hnm_after), None);
    assert!(!hnm_after.contains(",0.5,") && !hnm_after.ends_with(",0.5\n"), "{hnm_after}");
    assert!(std::fs::read_to_string(hnm.join("train.log")).unwrap().contains("retimed"));
    assert!(!hnm.join("retime").exists());
    // its TensorBoard file is the rerun's (one, another)
    let after = events(&hnm);
    assert!(after.len() == 1 && after != hnm_events, "{after:?} against {hnm_events:?}");
    // frcn: untouched
    assert_eq!(std::fs::read_to_string(frcn.join("metrics.csv")).unwrap(), frcn_broken);
    assert_eq!(events(&frcn), frcn_events);
    assert!(!frcn.join("retime").exists());
    // the comparison of two CSVs by hand: a timing column may differ, nothing else
    let a = "epoch,loss,train_s\n1,0.5,3.0\n";
    assert_eq!(ohem_harness::harness::deterministic_difference(a, "epoch,loss,train_s\n1,0.5,9.0\n"), None);
    assert!(ohem_harness::harness::deterministic_difference(a, "epoch,loss,train_s\n1,0.6,3.0\n").unwrap().contains("column loss"));
    assert!(ohem_harness::harness::deterministic_difference(a, "epoch,loss,train_s\n1,0.5,3.0\n2,0.4,3.0\n").unwrap().contains("rows"));
    // a log written before a column existed: that column reads as empty, so a rerun that leaves it
    // empty (Fast R-CNN's RPN losses) matches, and one that fills it does not
    assert_eq!(ohem_harness::harness::deterministic_difference(a, "epoch,loss,train_s,loss_rpn_obj\n1,0.5,4.0,\n"), None);
    assert!(ohem_harness::harness::deterministic_difference(a, "epoch,loss,train_s,loss_rpn_obj\n1,0.5,4.0,0.1\n").unwrap().contains("column loss_rpn_obj: "));
    assert!(ohem_harness::harness::deterministic_difference("epoch,loss\n1,0.5\n", "loss,epoch\n0.6,1\n").unwrap().contains("column loss: 0.5 against 0.6"));
}

/// The grid's remaining cost, by hand: each arm's mean wall clock over its finished cells, a
/// running cell's share by its epochs left, an arm with none finished at the mean of all.
#[test]
fn the_status_estimate_by_hand() {
    use ohem_harness::harness::status::{CellState, GridStatus};
    use ohem_harness::rundir::State;
    let cell = |arm: &str, state: State, done: usize, wall: Option<f64>| CellState { index: 0, arm: arm.into(), seed: 0, dir: "x".into(), state, stale: false, reason: None, phase: None, epochs_done: done, epochs: 4, last_map: None, started: None, ended: None, wall_s: wall };
    let mut g = GridStatus { name: "g".into(), arms: vec!["a".into(), "b".into()], cells: vec![cell("a", State::Pending, 0, None), cell("b", State::Pending, 0, None)] };
    assert_eq!(g.estimate(), None, "nothing finished: no estimate");
    g.cells = vec![
        cell("a", State::Done, 4, Some(100.0)),
        cell("a", State::Done, 4, Some(200.0)),
        cell("a", State::Running, 1, Some(40.0)),
        cell("b", State::Pending, 0, None),
        cell("b", State::Failed, 2, Some(50.0)),
    ];
    let e = g.estimate().unwrap();
    // a's mean 150: the running one has 3/4 left (112.5); b has none finished: the mean of all
    // finished, 150, for its pending cell, and half of it for the failed one, which resumes
    // after its 2 of 4 epochs (75)
    assert_eq!(e.from_cells, 2);
    assert!((e.remaining_s - (112.5 + 150.0 + 75.0)).abs() < 1e-9, "{e:?}");
    assert!((e.total_s - (100.0 + 200.0 + 150.0 + 150.0 + 150.0)).abs() < 1e-9, "{e:?}");
    let text = g.to_string();
    assert!(text.contains("estimated: 5m38s left of 12m30s in all"), "{text}");
}

/// Where a config key is in a YAML file, by hand: in its section's block (not a later
/// section's), in flow style, past comments, the base's key found under base when the arm lacks
/// it, a missing key at its section's line.
#[test]
fn a_key_is_located_in_its_own_block() {
    use ohem_harness::config::locate_key;
    let text = "# lr: 1 (a comment)\nbase:\n  train:\n    epochs: 2   # lr: 3\n    lr: 0.1\narms:\n  a: {sampler: {kind: ohem, nms_iou: 0.5}}\n  b:\n    train:\n      lr: x\nseed: 1\n";
    // lines: 1 comment, 2 base, 3 train, 4 epochs, 5 lr, 6 arms, 7 a, 8 b, 9 train, 10 lr, 11 seed
    assert_eq!(locate_key(text, &[&["arms", "b"], &["base"]], "train.lr"), Some(10));
    assert_eq!(locate_key(text, &[&["arms", "a"], &["base"]], "train.lr"), Some(5), "a's lacks it: the base's");
    assert_eq!(locate_key(text, &[&["arms", "a"], &["base"]], "sampler.nms_iou"), Some(7), "flow style");
    assert_eq!(locate_key(text, &[&[]], "seed"), Some(11), "top level: column 0 only");
    assert_eq!(locate_key(text, &[&["base"]], "train.momentum"), Some(3), "a missing key: its section's line");
    assert_eq!(locate_key(text, &[&["arms", "c"]], "train.lr"), None, "no such scope");
    // a grid's --set type error is the --set's, not the grid file's
    let t = tempfile::tempdir().unwrap();
    let p = write_grid(t.path(), "seeds: [0]\narms:\n  a: {}\n");
    let err = format!("{:#}", Grid::load(&p, &["train.lr=abc".to_string()]).unwrap_err());
    assert!(err.contains("--set train.lr") && err.contains("expected a number") && !err.contains("grid.yaml"), "{err}");
    let err = format!("{:#}", Grid::load(&p, &["sampler.batch_size=abc".to_string()]).unwrap_err());
    assert!(err.contains("--set sampler.batch_size: key sampler.batch_size = \"abc\": expected a whole number"), "{err}");
    // a value out of range is the --set's too, and a file's at its line
    let err = format!("{:#}", Grid::load(&p, &["sampler.fg_fraction=2".to_string()]).unwrap_err());
    assert!(err.contains("--set sampler.fg_fraction: invalid config: sampler.fg_fraction = 2 is outside [0, 1]") && !err.contains("grid.yaml"), "{err}");
}

/// Issue 39: a key inside `sampler:` (an internally tagged enum, where serde's path stops) is
/// named in full at its own line, whatever its kind; one the base wrote is the base's, not the
/// arm's it was merged into; a grid without arms is not "arm base"; a value out of range has
/// its line.
#[test]
fn a_sampler_key_is_named_in_full_where_it_was_written() {
    let t = tempfile::tempdir().unwrap();
    let load = |body: &str| {
        let p = write_grid(t.path(), body);
        let text = std::fs::read_to_string(&p).unwrap();
        let err = format!("{:#}", Grid::load(&p, &[]).unwrap_err());
        (text, err)
    };
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (kind, key, value, want) in [
        ("ohem", "batch_size", "12.5", "key sampler.batch_size = 12.5: expected a whole number"),
        ("hnm", "fp_rule", "worst", "key sampler.fp_rule = worst: expected score or topk"),
        ("ohem", "impl", "fast", "key sampler.impl = fast: expected read_only or masked"),
        ("focal", "alpha", "x", "key sampler.alpha = \"x\": expected a number"),
        ("fixed_ratio", "fg_fraction", "2", "invalid config: sampler.fg_fraction = 2 is outside [0, 1]"),
        // a check about two keys, at the line of the one the arm wrote (the other a default)
        ("hnm", "mine_every_iters", "50", "invalid config: sampler.mine_every_epochs = 1 and sampler.mine_every_iters = 50: set exactly one of them"),
        ("pisa", "bias", "1.5", "invalid config: sampler.bias = 1.5 is outside [0, 1]"),
    ] {
        let (text, err) = load(&format!("arms:\n  a:\n    sampler:\n      kind: {kind}\n      {key}: {value}\nseeds: [0]\n"));
        let line = line_of(&text, &format!("{key}: {value}"));
        assert!(err.contains(&format!("arm a (line {line}): {want}")), "{kind} {key}: {err}");
    }
    // the base's key, merged into an arm that does not write it
    let (text, err) = load("  sampler:\n    batch_sise: 64\narms:\n  a: {sampler: {kind: fixed_ratio}}\nseeds: [0]\n");
    assert!(err.contains(&format!("grid.yaml: base (in arm a) (line {}): unknown key sampler.batch_sise", line_of(&text, "batch_sise"))), "{err}");
    let (_, err) = load("arms:\n  a: {sampler: {kind: fixed_ratio, batch_sise: 64}}\nseeds: [0]\n");
    assert!(err.contains("grid.yaml: arm a (line ") && err.contains("unknown key sampler.batch_sise"), "{err}");
    // no arms: the base
    let (_, err) = load("  sampler:\n    kind: ohem\n    nms_iou: 1.5\nseeds: [0]\n");
    assert!(err.contains("grid.yaml: base (line ") && err.contains("sampler.nms_iou = 1.5") && !err.contains("arm base"), "{err}");
    // every kind, as serde lists them (a kind the section's reader forgets fails here)
    let (_, err) = load("arms:\n  a: {sampler: {kind: nope}}\nseeds: [0]\n");
    let kinds: Vec<String> = err.split("expected one of ").nth(1).unwrap_or_else(|| panic!("{err}")).split(", ").map(|k| k.trim().to_string()).collect();
    assert!(kinds.len() >= 7 && kinds.contains(&"pisa".to_string()), "{kinds:?}");
    for kind in kinds {
        let (_, err) = load(&format!("arms:\n  a: {{sampler: {{kind: {kind}, batch_size: 1.5}}}}\nseeds: [0]\n"));
        assert!(err.contains("key sampler.batch_size = 1.5: expected a whole number"), "{kind}: {err}");
    }
    // a check about two keys is the fault of whichever of them a --set set
    let p = write_grid(t.path(), "arms:\n  a: {sampler: {kind: fixed_ratio}}\nseeds: [0]\n");
    let err = format!("{:#}", Grid::load(&p, &["train.images_per_batch=256".to_string()]).unwrap_err());
    assert!(err.contains("--set train.images_per_batch: invalid config: sampler.batch_size = 128 is below train.images_per_batch = 256"), "{err}");
}

/// Issue 39: a cell's cost is its own schedule: its iterations, its evaluations (every
/// `test.eval_every` epochs and the last) and its mining rounds (as its sampler schedules them),
/// counted by hand here.
#[test]
fn a_cells_work_is_counted_from_its_own_schedule() {
    use ohem_harness::harness::calibrate::{ArmTiming, CellWork};
    let t = tempfile::tempdir().unwrap();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  hnm:\n    sampler: {kind: hnm, mine_every_epochs: 2}\n  hnm-iters:\n    sampler: {kind: hnm, mine_every_epochs: null, mine_every_iters: 3}\nseeds: [0]\n");
    let g = Grid::load(&p, &["train.epochs=5".into(), "train.iters_per_epoch=4".into(), "test.eval_every=2".into()]).unwrap();
    let cfg = |arm: &str| g.cells.iter().find(|c| c.arm == arm).unwrap().config.clone();
    // 5 epochs of 4 iterations (20 training images, N = 2, capped at 4); evaluated after epochs 2, 4 and 5
    let w = CellWork::of(&cfg("frcn"), 20, 7);
    assert_eq!(w, CellWork { iterations: 20, evaluations: 3, mining_rounds: 0, train_images: 20, test_images: 7 });
    // every 2 epochs: at the start of epoch 3 and of epoch 5 (1-based), never before training
    assert_eq!(CellWork::of(&cfg("hnm"), 20, 7).mining_rounds, 2);
    // every 3 iterations of 20: at iterations 3, 6, ..., 18
    assert_eq!(CellWork::of(&cfg("hnm-iters"), 20, 7).mining_rounds, 6);
    // a short epoch: 5 training images make 3 iterations an epoch (the last batch short)
    assert_eq!(CellWork::of(&cfg("frcn"), 5, 7).iterations, 15);
    // priced: start-up + iterations + evaluations × test images + rounds × training images
    let at = ArmTiming { arm: "hnm".into(), s_per_iter: 0.5, eval_s_per_image: 0.1, mine_s_per_image: Some(0.01), overhead_s: 3.0 };
    let s = CellWork { iterations: 20, evaluations: 3, mining_rounds: 2, train_images: 20, test_images: 7 }.seconds(&at);
    assert!((s - (3.0 + 10.0 + 2.1 + 0.4)).abs() < 1e-9, "{s}");
}

/// Issue 39: before any cell has finished, `--dry-run --calibrate` prices the grid from a short
/// timed run of each arm; it says where the figures come from, and runs no cell.
#[test]
fn a_dry_run_calibrates_the_cost_when_no_cell_has_finished() {
    let t = tempfile::tempdir().unwrap();
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let p = write_grid(t.path(), "arms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  hnm:\n    sampler: {kind: hnm, mine_every_epochs: 1}\nseeds: [0, 1]\n");
    let g = p.to_str().unwrap();
    let (ok, out, err) = harness(&["run", g, "--dry-run"]);
    assert!(ok && out.contains("no cost estimate") && out.contains("--dry-run --calibrate"), "{out}{err}");
    let (ok, out, err) = harness(&["run", g, "--dry-run", "--calibrate", "2", "--cache-dir", &cache, "--set", "train.epochs=3"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("calibration frcn: ") && !out.lines().find(|l| l.contains("calibration frcn")).unwrap().contains("mining"), "{out}");
    assert!(out.lines().any(|l| l.contains("calibration hnm: ") && l.contains("mining")), "{out}");
    assert!(out.contains("from a timed calibration here: 4 iterations of each arm"), "{out}");
    assert!(!t.path().join("results/cells").exists(), "--calibrate runs no cell");
    let (ok, _, err) = harness(&["run", g, "--calibrate"]);
    assert!(!ok && err.contains("--dry-run") && !err.contains("panicked"), "{err}");
}

/// Issue 39: the grid's own keys (seeds, report, splits, axes) are blamed at their line too.
#[test]
fn a_grid_level_key_error_has_its_line() {
    let t = tempfile::tempdir().unwrap();
    for (body, needle, want) in [
        ("arms:\n  frcn: {}\nseeds: [0]\nreport:\n  baselines: [frnc]\n", "baselines:", "key report.baselines names \"frnc\", which is not an arm"),
        ("arms:\n  frcn: {}\nseeds: [0, 0]\n", "seeds:", "key seeds = [0, 0] repeats a seed"),
        ("arms:\n  frcn: {}\nsplits:\n  folds: 1\nseeds: [0]\n", "folds:", "key splits.folds = 1: at least 2 folds"),
        ("arms:\n  frcn: {}\nseeds: [0]\nreport:\n  verdicts:\n    - claim: x\n      baseline: frcn\n      arm: nope\n      measure: s_per_iter\n      expected: 2.0\n", "verdicts:", "key report.verdicts[0].arm names \"nope\""),
    ] {
        let p = write_grid(t.path(), body);
        let text = std::fs::read_to_string(&p).unwrap();
        let line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let err = format!("{:#}", Grid::load(&p, &[]).unwrap_err());
        assert!(err.contains(&format!("grid.yaml (line {line}): {want}")), "{body}: {err}");
    }
    // a missing key has no line to give
    let p = write_grid(t.path(), "arms:\n  frcn: {}\n");
    let err = format!("{:#}", Grid::load(&p, &[]).unwrap_err());
    assert!(err.contains("grid.yaml: key seeds is missing"), "{err}");
}

/// Every committed study's grid file still expands to the cells its results hold (the same ids,
/// so the same configs): a new config key that leaves the configs as they were keeps them, one
/// that changes a committed cell's canonical config shows here. A grid whose splits need a
/// dataset that is not made here (the trees pool) is skipped with a note.
#[test]
fn committed_grids_expand_to_the_cells_of_their_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("results")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("cells.json")) else { continue };
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let grid_file = root.join("experiments").join(format!("{name}.yaml"));
        let committed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let g = match Grid::load_without_data(&grid_file, &[]) {
            Ok(g) => g,
            Err(e) if format!("{e:#}").contains("must exist to plan its splits") => {
                eprintln!("{name}: skipped ({e:#})");
                continue;
            }
            Err(e) => panic!("{}: {e:#}", grid_file.display()),
        };
        let ours: Vec<&str> = g.cells.iter().map(|c| c.dir_name.as_str()).collect();
        let theirs: Vec<&str> = committed.iter().map(|c| c["dir"].as_str().unwrap()).collect();
        let (mut a, mut b) = (ours.clone(), theirs.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{}: the grid no longer expands to the cells of {}", grid_file.display(), dir.display());
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} committed studies checked");
}
