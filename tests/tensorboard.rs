//! TensorBoard scalars (src/trainer/tensorboard.rs), read back by TensorBoard's own event
//! reader (the `tensorboard` package's EventAccumulator, from scripts/tb-venv.sh) and checked
//! against the run's CSV logs: every value, at its step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ohem_harness::config::TrainConfig;
use ohem_harness::rundir::{read_classes, read_metrics, read_mining, read_per_class, Metric};
use ohem_harness::trainer::{train, TrainOptions};

use crate::util::{test_opts, tiny_config};

pub type Scalars = BTreeMap<String, Vec<(i64, f64)>>;

/// The tensorboard venv's python: `OHEM_TB_PYTHON` (set by scripts/test.sh), else the venv
/// that scripts/tb-venv.sh makes.
fn tb_python() -> PathBuf {
    if let Some(p) = std::env::var_os("OHEM_TB_PYTHON") {
        return p.into();
    }
    let p = ohem_harness::cache_root().join("tb-venv/bin/python");
    assert!(p.exists(), "tensorboard is not installed: run ./scripts/tb-venv.sh (./scripts/test.sh does)");
    p
}

/// Every scalar TensorBoard shows for the run in `dir`: tag → (step, value) in its order.
pub fn read_back(dir: &Path) -> Scalars {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}))
"#;
    let out = std::process::Command::new(tb_python()).arg("-c").arg(script).arg(dir).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A value as the event file holds it (a float32).
fn f32_of(v: f64) -> f64 {
    v as f32 as f64
}

fn at(s: &Scalars, tag: &str, step: i64) -> f64 {
    let pts = s.get(tag).unwrap_or_else(|| panic!("no scalar {tag}; tags: {:?}", s.keys().collect::<Vec<_>>()));
    let hits: Vec<f64> = pts.iter().filter(|p| p.0 == step).map(|p| p.1).collect();
    assert_eq!(hits.len(), 1, "{tag} at step {step}: {pts:?}");
    hits[0]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-3)
}

#[test]
fn every_scalar_reads_back_in_tensorboard_as_the_logs_hold_it() {
    let _rng = crate::util::torch_rng_lock();
    for sampler in ["  kind: ohem\n", "  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 2\n"] {
        let t = tempfile::tempdir().unwrap();
        let cfg = TrainConfig::load(&tiny_config(t.path(), &format!("sampler:\n{sampler}")), &[]).unwrap();
        let dir = t.path().join("run");
        let opts = TrainOptions { class_every: Some(2), ..test_opts() };
        let rows = train(&cfg, &dir, &opts).unwrap();
        let s = read_back(&dir);
        let iters = rows[0].iterations as i64;
        assert_eq!(s["loss/total"].iter().map(|p| p.0).collect::<Vec<_>>(), (1..=2 * iters).collect::<Vec<_>>(), "{sampler}: one point per iteration");
        for (e, r) in rows.iter().enumerate() {
            let steps = (e as i64 * iters + 1)..=((e as i64 + 1) * iters);
            let mean = |tag: &str| steps.clone().map(|k| at(&s, tag, k)).sum::<f64>() / iters as f64;
            assert!(close(mean("loss/cls"), r.loss_cls) && close(mean("loss/bbox"), r.loss_bbox) && close(mean("loss/total"), r.loss), "{sampler}: epoch {}'s losses", r.epoch);
            assert!(close(mean("sampler/rois"), r.rois_per_iter));
            // the foreground fraction of the epoch is Σ fg / Σ rois
            let fg: f64 = steps.clone().map(|k| at(&s, "sampler/fg_fraction", k) * at(&s, "sampler/rois", k)).sum();
            assert!(close(fg / (mean("sampler/rois") * iters as f64), r.fg_fraction), "{sampler}");
            assert_eq!(at(&s, "train/lr", *steps.end()), f32_of(r.lr));
            // the evaluation at the epoch's last iteration, every metric the row has
            for m in Metric::all() {
                if let Some(v) = r.map(m) {
                    assert_eq!(at(&s, &format!("eval/{}", m.column()), *steps.end()), f32_of(v), "{sampler}: {}", m.column());
                }
            }
            assert_eq!(at(&s, "time/wall_s", *steps.end()), f32_of(r.wall_s));
        }
        if sampler.contains("ohem") {
            assert!(s.contains_key("sampler/all_roi_loss"), "OHEM's ranking pass scores every RoI");
        }
        for p in read_per_class(&dir.join("per_class.csv")).unwrap() {
            if let Some(ap) = p.ap_voc07 {
                assert_eq!(at(&s, &format!("ap_voc07/{}", p.name), p.epoch as i64 * iters), f32_of(ap));
            }
        }
        // the bookkeeping at iterations 0, 2, 4 (steps 1, 3, 5): each class's shares
        let classes = read_classes(&dir.join("classes.csv")).unwrap();
        assert!(!classes.is_empty());
        for c in &classes {
            let at_iter: Vec<_> = classes.iter().filter(|d| d.iteration == c.iteration).collect();
            let (nc, ns) = (at_iter.iter().map(|d| d.candidates).sum::<i64>(), at_iter.iter().map(|d| d.selected).sum::<i64>());
            let step = c.iteration as i64 + 1;
            assert_eq!(at(&s, &format!("class_candidate_share/{}", c.name), step), f32_of(c.candidates as f64 / nc as f64));
            assert_eq!(at(&s, &format!("class_pick_share/{}", c.name), step), f32_of(c.selected as f64 / ns as f64));
        }
        let mining = read_mining(&dir.join("mining.csv")).unwrap();
        assert_eq!(s.get("mining/mined").map_or(0, Vec::len), mining.len(), "{sampler}: one point per mining round");
        for m in &mining {
            // at the step of the iteration the round comes before
            assert_eq!(at(&s, "mining/mined", m.iteration as i64 + 1), m.stats.mined as f64);
        }
    }
}

/// A run killed after its first epoch's checkpoint, with its second epoch's points already
/// written, then resumed: TensorBoard shows the points of an uninterrupted run, each once (the
/// resumed process's session start drops the killed one's points from there on).
#[test]
fn a_resumed_run_shows_each_point_once_as_an_uninterrupted_run() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), ""), &[]).unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    train(&cfg, &a, &test_opts()).unwrap();
    let rows = train(&cfg, &b, &test_opts()).unwrap();
    // the kill: epoch 2's row and checkpoint gone, its points left in the first event file
    let mut w = csv::Writer::from_path(b.join("metrics.csv")).unwrap();
    w.serialize(&rows[0]).unwrap();
    w.flush().unwrap();
    for f in ["epoch_002.safetensors", "epoch_002.sgd.safetensors"] {
        std::fs::remove_file(b.join("checkpoints").join(f)).unwrap();
    }
    train(&cfg, &b, &test_opts()).unwrap();
    let files = std::fs::read_dir(&b).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("tfevents")).count();
    assert_eq!(files, 2, "a file per process");
    let timeless = |s: Scalars| -> Scalars { s.into_iter().filter(|(k, _)| !["train/s_per_iter", "time/wall_s"].contains(&k.as_str())).collect() };
    let (sa, sb) = (timeless(read_back(&a)), timeless(read_back(&b)));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (tag, pts) in &sa {
        assert_eq!(&sb[tag], pts, "{tag}");
    }
    // --force starts the run's scalars over too
    let opts = TrainOptions { force: true, ..test_opts() };
    train(&cfg, &b, &opts).unwrap();
    let files = std::fs::read_dir(&b).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("tfevents")).count();
    assert_eq!(files, 1, "--force removes the old event files");
}

/// `tensorboard --logdir` on a running cell: the event file holds each iteration as it ends,
/// and TensorBoard's reader reads the file as it stands mid-run.
#[test]
fn a_running_cell_shows_its_curves_while_it_trains() {
    use prost::Message;
    use ohem_harness::trainer::tensorboard::{Event, What};
    let t = tempfile::tempdir().unwrap();
    let p = tiny_config(t.path(), "");
    let out = t.path().join("run");
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["train", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "train.epochs=3", "--set", "train.iters_per_epoch=12", "--cache-dir", &cache, "--quiet"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // the records written so far, decoded: the first loss point while the process runs
    let losses = |f: &Path| -> usize {
        let bytes = std::fs::read(f).unwrap_or_default();
        let (mut pos, mut n) = (0, 0);
        while pos + 12 <= bytes.len() {
            let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
            let Some(data) = bytes.get(pos + 12..pos + 12 + len) else { break };
            if let Ok(Event { what: Some(What::Summary(s)), .. }) = Event::decode(data) {
                n += s.value.iter().filter(|v| v.tag == "loss/total").count();
            }
            pos += 16 + len;
        }
        n
    };
    let snapshot = t.path().join("snapshot");
    let started = std::time::Instant::now();
    let seen = loop {
        let file = std::fs::read_dir(&out).into_iter().flatten().flatten().map(|e| e.path()).find(|p| p.to_string_lossy().contains("tfevents"));
        if let Some(f) = file.filter(|f| losses(f) > 0) {
            // copied as it stands, and the process still running then
            std::fs::create_dir_all(&snapshot).unwrap();
            std::fs::copy(&f, snapshot.join(f.file_name().unwrap())).unwrap();
            break child.try_wait().unwrap().is_none();
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before any scalar was seen");
        assert!(started.elapsed().as_secs() < 300, "no scalar after 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(seen, "the run ended before its first point was read");
    assert!(child.wait().unwrap().success());
    let mid = read_back(&snapshot);
    let n_mid = mid["loss/total"].len();
    assert!(n_mid >= 1);
    let end = read_back(&out);
    // (an epoch is at most the training images' pairs: 8 iterations of the tiny set)
    let rows = read_metrics(&out.join("metrics.csv")).unwrap();
    let total: usize = rows.iter().map(|r| r.iterations).sum();
    assert_eq!(end["loss/total"].len(), total);
    assert!(n_mid < total, "{n_mid} points mid-run");
    assert_eq!(end["loss/total"][..n_mid], mid["loss/total"][..], "the points read mid-run are the run's first");
    let ends: Vec<i64> = rows.iter().scan(0, |k, r| { *k += r.iterations as i64; Some(*k) }).collect();
    assert_eq!(end["eval/map_voc07"].iter().map(|p| p.0).collect::<Vec<_>>(), ends);
}
