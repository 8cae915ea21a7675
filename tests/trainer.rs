//! The trainer: config validation, determinism, exact resume, run directories.

use ohem_harness::rundir::{read_metrics, EpochRow};
use ohem_harness::config::TrainConfig;
use ohem_harness::trainer::train;
use tch::Tensor;

use std::path::{Path, PathBuf};

use crate::util::{harness, test_opts, tiny_config, tiny_dataset};

fn load_err(extra_yaml: &str, overrides: &[&str]) -> String {
    let t = tempfile::tempdir().unwrap();
    let p = tiny_config(t.path(), extra_yaml);
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match TrainConfig::load(&p, &o) {
        Ok(_) => "(loaded without an error)".to_string(),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_configs_name_the_key_and_value() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("", &["model.backbon=small"], &["--set model.backbon", "unknown key model.backbon (expected one of"]),
        // a key of the file: its line (the tiny config's 16 lines, then these), dotted in full
        // inside the sampler's tagged section, a type in plain words
        ("sampler:\n  kind: ohem\n  nms_thresh: 0.7\n", &[], &["config.yaml (line 19): unknown key sampler.nms_thresh (expected one of batch_size"]),
        ("test:\n  eval_every: often\n", &[], &["config.yaml (line 18): key test.eval_every = \"often\": expected a whole number ≥ 0"]),
        ("", &["train.epochs=two"], &["--set train.epochs: key train.epochs = \"two\": expected a whole number ≥ 0"]),
        ("", &["train.lr=[1]"], &["--set train.lr: key train.lr = a list: expected a number"]),
        ("sampler:\n  kind: fixed_ratio\n  fg_fraction: 1.5\n", &[], &["sampler.fg_fraction = 1.5"]),
        ("sampler:\n  kind: fixed_ratio\n  bg_thresh_lo: 0.6\n  bg_thresh_hi: 0.5\n  fg_thresh: 0.7\n", &[], &["sampler.bg_thresh_lo = 0.6", "0.5"]),
        ("", &["sampler.batch_size=0"], &["sampler.batch_size = 0"]),
        ("", &["dataset.root=/no/such/voc"], &["dataset.root = /no/such/voc"]),
        ("", &["train.images_per_batch=0"], &["train.images_per_batch = 0"]),
        ("", &["device=tpu"], &["device = \"tpu\""]),
        ("", &["sampler.kind=magic"], &["sampler", "magic"]),
        ("", &["train.lr=fast"], &["train.lr", "fast"]),
        ("oops: [1, 2\n", &[], &["config.yaml", "line"]),
        ("", &["model.weights=/no/such.safetensors"], &["model.weights = /no/such.safetensors"]),
        ("", &["model.fold_bn=true", "model.backbone=vgg16"], &["model.fold_bn = true", "Vgg16"]),
        ("", &["model.fold_bn=true", "model.freeze_bn=false"], &["model.fold_bn = true", "trained"]),
        ("", &["novalue"], &["--set \"novalue\"", "key=value"]),
        ("", &["train.iterations=6"], &["train.iterations replaces train.epochs (given as 2)", "lr_steps_iters"]),
        ("", &["train.epochs=0", "train.iterations=6"], &["train.iterations replaces train.lr_steps (given as [1])"]),
        ("", &["train.epochs=0", "train.lr_steps=[]", "train.iterations=6", "train.lr_steps_iters=[6]"], &["train.lr_steps_iters: 6 is not inside the 6 iterations"]),
        ("", &["train.lr_steps_iters=[3]"], &["train.lr_steps_iters needs train.iterations"]),
        // a check about two keys is blamed on the --set that wrote either of them
        ("sampler:\n  kind: fixed_ratio\n  bg_thresh_lo: 0.3\n", &["sampler.bg_thresh_hi=0.2"], &["--set sampler.bg_thresh_hi: ", "sampler.bg_thresh_lo = 0.3 is above sampler.bg_thresh_hi = 0.2"]),
        ("sampler:\n  kind: fixed_ratio\n  bg_thresh_hi: 0.2\n", &["sampler.bg_thresh_lo=0.3"], &["--set sampler.bg_thresh_lo: ", "sampler.bg_thresh_lo = 0.3 is above sampler.bg_thresh_hi = 0.2"]),
        // Faster R-CNN's keys
        ("", &["model.detector=faster"], &["--set model.detector", "faster_rcnn"]),
        ("", &["model.rpn.nms=0.5"], &["model.rpn configures the region proposal network of model.detector: faster_rcnn"]),
        ("", &["model.detector=faster_rcnn", "model.rpn.fg_iou=0.2"], &["--set model.rpn.fg_iou", "model.rpn.bg_iou = 0.3 and model.rpn.fg_iou = 0.2"]),
        ("", &["model.detector=faster_rcnn", "model.rpn.anchor_sizes=[]"], &["model.rpn.anchor_sizes = []"]),
        ("", &["model.detector=faster_rcnn", "model.rpn.anchors=[8]"], &["unknown key model.rpn.anchors (expected one of anchor_sizes"]),
        ("", &["model.detector=faster_rcnn", "sampler.kind=hnm", "sampler.cache=accumulate"], &["sampler.cache = accumulate", "faster_rcnn", "use replace"]),
    ];
    for (yaml, overrides, needles) in cases {
        let err = load_err(yaml, overrides);
        for n in *needles {
            assert!(err.contains(n), "{yaml:?} {overrides:?}: {err:?} lacks {n:?}");
        }
        assert!(!err.contains("error:") && !err.contains("<input>") && !err.contains("usize") && !err.contains("field"), "{err:?}");
    }
    // no dataset section: the key named, not "key ."
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("c.yaml");
    std::fs::write(&p, "seed: 1\nmodel:\n  fc_dim: 64\n").unwrap();
    let err = format!("{:#}", TrainConfig::load(&p, &[]).unwrap_err());
    assert!(err.ends_with("c.yaml: missing key dataset"), "{err}");
}

#[test]
fn the_cli_rejects_a_bad_config_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let p = tiny_config(t.path(), "sampler:\n  kind: fixed_ratio\n  fg_fraction: -0.5\n");
    let out = t.path().join("run");
    let (ok, _, err) = harness(&["train", p.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("sampler.fg_fraction = -0.5") && !err.contains("panicked"), "{err}");
    assert!(!out.exists(), "nothing is written for a rejected config");
}

/// A run directory as a kill after epoch 1 leaves it: epoch 2's row and checkpoint gone.
fn kill_after_epoch_1(run: &Path) {
    let rows = read_metrics(&run.join("metrics.csv")).unwrap();
    let mut w = csv::Writer::from_path(run.join("metrics.csv")).unwrap();
    w.serialize(&rows[0]).unwrap();
    w.flush().unwrap();
    std::fs::remove_file(run.join("checkpoints/epoch_002.safetensors")).unwrap();
    std::fs::remove_file(run.join("checkpoints/epoch_002.sgd.safetensors")).unwrap();
}

/// The columns that must not depend on timing.
fn outcome(r: &EpochRow) -> (usize, usize, f64, f64, f64, f64, f64, Option<f64>, Option<f64>) {
    (r.epoch, r.iterations, r.loss, r.loss_cls, r.loss_bbox, r.fg_fraction, r.lr, r.map_voc07, r.map_voc10)
}

#[test]
fn same_seed_same_run_and_exact_resume() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), ""), &[]).unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let ra = train(&cfg, &a, &test_opts()).unwrap();
    let rb = train(&cfg, &b, &test_opts()).unwrap();
    assert_eq!(ra.len(), 2);
    assert_eq!(ra.iter().map(outcome).collect::<Vec<_>>(), rb.iter().map(outcome).collect::<Vec<_>>(), "two CPU runs with one seed differ");
    assert!(ra.iter().all(|r| r.map_voc07.is_some() && r.rois_per_iter > 0.0 && r.wall_s > 0.0));
    assert_eq!(read_metrics(&a.join("metrics.csv")).unwrap(), ra);
    assert!(a.join("config.yaml").exists() && a.join("checkpoints/epoch_002.safetensors").exists());

    // Simulate a kill after epoch 1: drop epoch 2's row and checkpoint, then rerun.
    kill_after_epoch_1(&b);
    let resumed = train(&cfg, &b, &test_opts()).unwrap();
    assert_eq!(resumed.len(), 2);
    assert_eq!(outcome(&resumed[1]), outcome(&ra[1]), "a resumed epoch differs from the uninterrupted one");
    assert!(resumed[1].wall_s > resumed[0].wall_s);

    // A finished run is not trained again; a different config in the same directory is refused.
    let again = train(&cfg, &a, &test_opts()).unwrap();
    assert_eq!(again, ra);
    // another image budget is the same run (it changes what is held, not what is computed)
    let mut budget = cfg.clone();
    budget.dataset.cache_mib = Some(1);
    assert_eq!(train(&budget, &a, &test_opts()).unwrap(), ra);
    let mut other = cfg.clone();
    other.seed = 99;
    let err = train(&other, &a, &test_opts()).unwrap_err().to_string();
    assert!(err.contains("different config"), "{err}");
}

/// Faster R-CNN trains through the same trainer: the RPN's losses are logged and part of `loss`,
/// its proposals feed the head in training and at test time (mAP evaluated without selective
/// search: the proposal cache stays untouched), two runs with one seed agree, and a resume after
/// epoch 1 gives epoch 2 exactly (the RPN's anchor sampling, and offline mining's cached boxes,
/// included). With OHEM, and with offline HNM mining the RPN's proposals every 2 iterations.
#[test]
fn faster_rcnn_trains_evaluates_and_resumes_exactly() {
    for sampler in ["sampler:\n  kind: ohem\n", "sampler:\n  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 2\n  fp_topk: 8\n"] {
        faster_run_and_resume(sampler);
    }
}

/// An RPN whose filtering leaves an image no proposal (every box under `model.rpn.min_size`):
/// training goes on with the ground truth as the only RoIs, every loss stays finite, mining finds
/// nothing to mine, and evaluation, with no detection to rank, gives mAP 0 rather than an error.
/// With fixed ratio, OHEM and offline HNM.
#[test]
fn faster_rcnn_with_no_proposal_left_after_filtering_trains_and_evaluates() {
    let _rng = crate::util::torch_rng_lock();
    let ds = ohem_harness::data::Dataset::open(tiny_dataset()).unwrap();
    let most_boxes = ds.split_ids("trainval").unwrap().iter().map(|id| ds.annotation(id).unwrap().objects.len()).max().unwrap();
    for sampler in ["", "sampler:\n  kind: ohem\n", "sampler:\n  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 2\n  fp_topk: 8\n"] {
        let t = tempfile::tempdir().unwrap();
        let o = ["model.detector=faster_rcnn".to_string(), "model.rpn.min_size=100000".to_string()];
        let cfg = TrainConfig::load(&tiny_config(t.path(), sampler), &o).unwrap();
        let rows = train(&cfg, &t.path().join("run"), &test_opts()).unwrap_or_else(|e| panic!("{sampler:?}: {e:#}"));
        assert_eq!(rows.len(), 2, "{sampler:?}");
        for r in &rows {
            assert!(r.loss.is_finite() && r.loss_rpn_obj.is_some_and(f64::is_finite) && r.loss_rpn_box.is_some_and(f64::is_finite), "{sampler:?}: {r:?}");
            // the ground truth alone, no proposal
            assert!(r.rois_per_image.is_some_and(|n| n >= 1.0 && n <= most_boxes as f64), "{sampler:?}: {r:?}");
            // evaluated, not an error (a scratch model this short scores 0 with proposals too)
            assert_eq!(r.map_voc07, Some(0.0), "{sampler:?}: no proposal, no detection: {r:?}");
            if sampler.contains("hnm") {
                assert_eq!(r.cache_size, 0, "{sampler:?}: mined from no proposal: {r:?}");
            }
        }
    }
}

/// Offline mining on Faster R-CNN keeps boxes in the original image's pixels and brings them back
/// into a training input: `Prepared::to_input` of an image's proposals, flipped or not, is what
/// `prepare` made of them.
#[test]
fn boxes_in_original_pixels_come_back_as_the_input_has_them() {
    use ohem_harness::trainer::batch::prepare;
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), ""), &[]).unwrap();
    let ds = ohem_harness::data::Dataset::open(tiny_dataset()).unwrap();
    let store = ohem_harness::trainer::load_split(&ds, &cfg, "trainval", None, &test_opts()).unwrap();
    for flip in [false, true] {
        let p = prepare(&store, 0, &cfg.input, flip, tch::Device::Cpu).unwrap();
        let back = p.to_input(&store.proposals_of(0).unwrap());
        assert!(p.proposals.size()[0] > 0 && back.allclose(&p.proposals, 1e-6, 1e-4, false), "flip {flip}");
    }
}

fn faster_run_and_resume(sampler: &str) {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), sampler), &["model.detector=faster_rcnn".to_string(), "model.rpn.post_nms_top_n_train=300".to_string()]).unwrap();
    let mut opts = test_opts();
    opts.cache_dir = Some(t.path().join("proposal-cache"));
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let ra = train(&cfg, &a, &opts).unwrap();
    let rb = train(&cfg, &b, &opts).unwrap();
    let rpn = |r: &EpochRow| (r.loss_rpn_obj, r.loss_rpn_box, r.cache_size);
    assert_eq!(ra.iter().map(|r| (outcome(r), rpn(r))).collect::<Vec<_>>(), rb.iter().map(|r| (outcome(r), rpn(r))).collect::<Vec<_>>(), "{sampler}: two Faster R-CNN runs with one seed differ");
    for r in &ra {
        let (o, bx) = (r.loss_rpn_obj.expect("the RPN's objectness loss logged"), r.loss_rpn_box.expect("the RPN's box loss logged"));
        assert!((r.loss - (r.loss_cls + r.loss_bbox + o + bx)).abs() < 1e-9, "{r:?}");
        assert!(o > 0.0 && r.map_voc07.is_some() && r.rois_per_image.is_some_and(|n| n > 1.0));
    }
    if sampler.contains("hnm") {
        assert!(ra.iter().all(|r| r.cache_size > 0), "{sampler}: nothing mined: {ra:?}");
        let mining = std::fs::read_to_string(a.join("mining.csv")).unwrap();
        assert_eq!(mining.lines().count(), 1 + 2, "{mining}");
    }
    assert!(!t.path().join("proposal-cache").exists(), "Faster R-CNN ran selective search");
    assert_eq!(read_metrics(&a.join("metrics.csv")).unwrap(), ra);

    // a kill after epoch 1: epoch 2 again from its checkpoint
    kill_after_epoch_1(&b);
    let resumed = train(&cfg, &b, &opts).unwrap();
    assert_eq!((outcome(&resumed[1]), rpn(&resumed[1])), (outcome(&ra[1]), rpn(&ra[1])), "{sampler}: a resumed Faster R-CNN epoch differs from the uninterrupted one");
}

/// A finished run is noticed from its logs and annotations alone: with a training image gone
/// (and a schedule in iterations, whose epochs need the training split's size), a rerun
/// returns the run's rows without reading an image.
#[test]
fn a_finished_run_is_noticed_before_any_image_is_read() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let data = crate::util::copy_of(tiny_dataset());
    let o: Vec<String> = [format!("dataset.root={}", data.path().display()), "train.epochs=0".into(), "train.lr_steps=[]".into(), "train.iterations=4".into(), "train.lr_steps_iters=[]".into(), "train.iters_per_epoch=2".into()].to_vec();
    let cfg = TrainConfig::load(&tiny_config(t.path(), ""), &o).unwrap();
    let run = t.path().join("run");
    let rows = train(&cfg, &run, &test_opts()).unwrap();
    assert_eq!(rows.len(), 2);
    let ds = ohem_harness::data::Dataset::open(data.path()).unwrap();
    for id in ds.split_ids("trainval").unwrap() {
        std::fs::remove_file(ds.image_path(&id)).unwrap();
    }
    assert_eq!(train(&cfg, &run, &test_opts()).unwrap(), rows);
}

/// `train.iterations` that mean what `train.epochs` means train the same run,
/// bit for bit; a total that is not a whole number of epochs cuts the last
/// epoch short, and a step inside an epoch applies from that iteration on.
#[test]
fn an_iteration_schedule_equal_to_the_epoch_schedule_trains_the_same_run() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let path = tiny_config(t.path(), "");
    // tiny_config: 2 epochs of 3 iterations (iters_per_epoch), lr 0.01 stepped after epoch 1; add a warm-up
    let by_epochs = TrainConfig::load(&path, &["train.warmup_iters=4".into()]).unwrap();
    let iters = |total: &str, steps: &str| {
        let o: Vec<String> = ["train.warmup_iters=4", "train.epochs=0", "train.lr_steps=[]", &format!("train.iterations={total}"), &format!("train.lr_steps_iters={steps}")].iter().map(|s| s.to_string()).collect();
        TrainConfig::load(&path, &o).unwrap()
    };
    let by_iters = iters("6", "[3]");
    let (a, b) = (t.path().join("epochs"), t.path().join("iters"));
    let ra = train(&by_epochs, &a, &test_opts()).unwrap();
    let rb = train(&by_iters, &b, &test_opts()).unwrap();
    assert_eq!(ra.iter().map(outcome).collect::<Vec<_>>(), rb.iter().map(outcome).collect::<Vec<_>>());
    for f in ["epoch_002.safetensors", "epoch_002.sgd.safetensors"] {
        let (wa, wb) = (std::fs::read(a.join("checkpoints").join(f)).unwrap(), std::fs::read(b.join("checkpoints").join(f)).unwrap());
        assert!(wa == wb, "{f} differs between the epoch and the iteration schedule");
    }
    assert_eq!(ohem_harness::trainer::planned_epochs(&by_iters).unwrap(), 2);

    // 5 iterations with the step after iteration 4: epoch 2 has 2 iterations, the first at lr 0.01, the second at 0.001
    let short = iters("5", "[4]");
    let rc = train(&short, &t.path().join("short"), &test_opts()).unwrap();
    assert_eq!(rc.iter().map(|r| (r.epoch, r.iterations)).collect::<Vec<_>>(), vec![(1, 3), (2, 2)]);
    assert_eq!(outcome(&rc[0]), outcome(&ra[0]), "epoch 1 is the same three iterations");
    assert_eq!(rc[0].lr, 0.01);
    assert!((rc[1].lr - 0.001).abs() < 1e-12, "the logged lr is the epoch's last iteration's: {}", rc[1].lr);
    assert!(rc[1].map_voc07.is_some(), "the cut-short last epoch is evaluated");
    let cfg_lr = &short.train;
    let s = cfg_lr.schedule(8);
    assert_eq!((s.iters_per_epoch, s.epochs, s.total, s.iters_in(1)), (3, 2, 5, 2));
    // warm-up from lr/10 over 4 iterations, then the step at iteration 4
    let lrs: Vec<f64> = (0..5).map(|i| cfg_lr.lr_at(&s, i)).collect();
    let want = [0.001, 0.001 + 0.009 * 0.25, 0.001 + 0.009 * 0.5, 0.001 + 0.009 * 0.75, 0.001];
    assert!(lrs.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{lrs:?}");
}

/// Pre-emption at every iteration boundary and every epoch boundary: each call
/// trains one more iteration, checkpoints mid-epoch (weights, optimiser,
/// sampler cache, running sums, generators) and stops; the chain of resumed
/// calls ends with the same losses, mAP, mining log and cache as a run never
/// stopped. With OHEM (which draws from libtorch's generator through the
/// sampler) and with offline mining between iterations.
#[test]
fn preempted_at_every_iteration_resumes_exactly() {
    static ALWAYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let _rng = crate::util::torch_rng_lock();
    // (and fixed ratio over an epoch order with repeat factors)
    for (sampler, repeat) in [("  kind: ohem\n", None), ("  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 2\n", None), ("  kind: fixed_ratio\n", Some("train.repeat_factor=0.9"))] {
        let t = tempfile::tempdir().unwrap();
        let mut sets = vec!["train.iters_per_epoch=4".to_string()];
        sets.extend(repeat.map(str::to_string));
        let cfg = TrainConfig::load(&tiny_config(t.path(), &format!("sampler:\n{sampler}")), &sets).unwrap();
        // the per-class bookkeeping every 3 iterations: before, after and across the stops
        let every3 = ohem_harness::trainer::TrainOptions { class_every: Some(3), ..test_opts() };
        let whole = train(&cfg, &t.path().join("whole"), &every3).unwrap();
        let cut = t.path().join("cut");
        let stopping = ohem_harness::trainer::TrainOptions { stop: Some(&ALWAYS), class_every: Some(3), ..test_opts() };
        let mut stops = 0;
        let rows = loop {
            match train(&cfg, &cut, &stopping) {
                Ok(rows) => break rows,
                Err(e) => {
                    assert!(e.downcast_ref::<ohem_harness::rundir::Preempted>().is_some(), "{e:#}");
                    stops += 1;
                    assert!(stops < 20, "no progress");
                }
            }
        };
        // 4 iterations in each of 2 epochs: a stop after each of the first 3 of each epoch, one
        // in the evaluation after the last (the epoch is checkpointed; the next call evaluates it
        // from there), and one at the epoch boundary after that evaluation
        assert_eq!(stops, 9, "{sampler}");
        let key = |r: &EpochRow| (outcome(r), r.sel_loss, r.all_loss, r.cache_size, r.rois_per_iter);
        assert_eq!(rows.iter().map(key).collect::<Vec<_>>(), whole.iter().map(key).collect::<Vec<_>>(), "{sampler}: a pre-empted run differs from an uninterrupted one");
        let mining = |d: &str| -> Vec<(usize, usize, usize, Option<f64>)> {
            ohem_harness::rundir::read_mining(&t.path().join(d).join("mining.csv")).unwrap().iter().map(|m| (m.round, m.iteration, m.stats.mined, m.stats.mined_loss)).collect()
        };
        assert_eq!(mining("cut"), mining("whole"), "{sampler}");
        // iterations 0, 3 and 6 of 8, each once, as the uninterrupted run logged them
        let classes = |d: &str| ohem_harness::rundir::read_classes(&t.path().join(d).join("classes.csv")).unwrap();
        let iters: std::collections::BTreeSet<usize> = classes("cut").iter().map(|c| c.iteration).collect();
        assert_eq!(iters.into_iter().collect::<Vec<_>>(), [0, 3, 6], "{sampler}");
        assert_eq!(classes("cut"), classes("whole"), "{sampler}: the bookkeeping of a pre-empted run differs");
        let per_class = |d: &str| ohem_harness::rundir::read_per_class(&t.path().join(d).join("per_class.csv")).unwrap();
        assert_eq!(per_class("cut").len(), 2 * 6, "{sampler}: each class once an evaluation");
        assert_eq!(per_class("cut"), per_class("whole"), "{sampler}");
        assert!(!cut.join("checkpoints/partial").exists(), "a finished epoch removes its mid-epoch checkpoint");
        // TensorBoard, read back by its own reader: each of the 10 processes' session starts
        // (mid-epoch, at an evaluation, at an epoch boundary, around mining rounds) keeps every
        // point, each once, as the uninterrupted run wrote them
        let timeless = |s: crate::tensorboard::Scalars| -> crate::tensorboard::Scalars { s.into_iter().filter(|(k, _)| !["train/s_per_iter", "time/wall_s", "mining/seconds"].contains(&k.as_str())).collect() };
        assert_eq!(timeless(crate::tensorboard::read_back(&cut)), timeless(crate::tensorboard::read_back(&t.path().join("whole"))), "{sampler}: TensorBoard's points");
    }
}

#[test]
fn train_command_writes_a_run_directory() {
    let t = tempfile::tempdir().unwrap();
    let p = tiny_config(t.path(), "");
    let out = t.path().join("run");
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let (ok, stdout, err) = harness(&["train", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "train.epochs=1", "--cache-dir", &cache]);
    assert!(ok, "{err}");
    assert!(stdout.contains("mAP VOC07"), "{stdout}");
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let header = text.lines().next().unwrap();
    for col in ["epoch", "iterations", "train_s", "eval_s", "wall_s", "loss_cls", "loss_bbox", "rois_per_iter", "map_voc07", "map_voc10"] {
        assert!(header.split(',').any(|c| c == col), "metrics.csv lacks {col}: {header}");
    }
    let saved = std::fs::read_to_string(out.join("config.yaml")).unwrap();
    assert!(saved.contains("epochs: 1"), "the saved config is the exact one run, overrides included:\n{saved}");
    let _ = tiny_dataset();
}

/// One masked step and one read-only step, from the same weights on the same
/// batch, select the same RoIs and make the same parameter update.
#[test]
fn masked_and_read_only_ohem_make_the_same_update() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::model::sgd::Sgd;
    use ohem_harness::trainer::{batch, load_split, train_step};
    use tch::nn::VarStore;

    let t = tempfile::tempdir().unwrap();
    let base = "sampler:\n  kind: ohem\n  batch_size: 32\n";
    let ro = TrainConfig::load(&tiny_config(t.path(), base), &["model.dropout=0.0".into()]).unwrap();
    let masked = TrainConfig::load(&tiny_config(t.path(), &format!("{base}  impl: masked\n")), &["model.dropout=0.0".into()]).unwrap();
    let ds = Dataset::open(&ro.dataset.root).unwrap();
    let store = load_split(&ds, &ro, "trainval", None, &test_opts()).unwrap();
    let dev = tch::Device::Cpu;

    let run = |cfg: &TrainConfig| {
        tch::manual_seed(7);
        let vs = VarStore::new(dev);
        let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
        let mut opt = Sgd::new(&vs, 0.9, 5e-4);
        let mut sampler = cfg.sampler.build();
        let prepared: Vec<batch::Prepared> = [0, 3].iter().map(|&i| batch::prepare(&store, i, &cfg.input, i == 3, dev).unwrap()).collect();
        let out = train_step(&model, &mut opt, 0.01, sampler.as_mut(), &prepared, cfg).unwrap();
        (vs, out)
    };
    let (vs_ro, out_ro) = run(&ro);
    let (vs_m, out_m) = run(&masked);
    assert_eq!((out_ro.rois, out_ro.fg), (out_m.rois, out_m.fg), "different selections");
    assert!((out_ro.loss_cls - out_m.loss_cls).abs() < 1e-5 && (out_ro.loss_bbox - out_m.loss_bbox).abs() < 1e-5);
    let (a, b) = (vs_ro.variables(), vs_m.variables());
    let mut moved = 0.0;
    for (name, ta) in &a {
        let tb = &b[name];
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name} differs by {diff}");
        moved += ta.abs().sum(tch::Kind::Double).double_value(&[]);
    }
    assert!(moved > 0.0);
    // and the step did change the weights: compare with a fresh model from the same seed
    tch::manual_seed(7);
    let vs0 = VarStore::new(dev);
    let _m0 = FastRcnn::new(&vs0.root(), &ro.model, ds.classes.len());
    let v0 = vs0.variables();
    let changed = a.iter().filter(|(n, t)| (*t - &v0[*n]).abs().max().double_value(&[]) > 0.0).count();
    assert!(changed > 10, "only {changed} tensors changed");
}

/// A sampler that returns a weight of 1 for every RoI trains exactly as one that
/// returns none: the same losses and the same parameters, bit for bit.
#[test]
fn weights_of_one_reproduce_the_unweighted_step_exactly() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::sgd::Sgd;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::sampler::{ImageRois, Picked, RoiLosses, Sampler};
    use ohem_harness::trainer::{batch, load_split, train_step};
    use tch::nn::VarStore;

    struct Ones(Box<dyn Sampler>);
    impl Sampler for Ones {
        fn select(&mut self, r: &ImageRois, l: Option<&RoiLosses>, k: i64) -> tch::Tensor {
            self.0.select(r, l, k)
        }
        fn select_weighted(&mut self, r: &ImageRois, l: Option<&RoiLosses>, k: i64) -> Picked {
            let idx = self.0.select(r, l, k);
            let weight = Some(tch::Tensor::ones([idx.size()[0]], (tch::Kind::Float, tch::Device::Cpu)));
            Picked { idx, weight }
        }
        fn needs_roi_losses(&self) -> bool {
            self.0.needs_roi_losses()
        }
    }
    for kind in ["fixed_ratio", "ohem"] {
        let t = tempfile::tempdir().unwrap();
        let cfg = TrainConfig::load(&tiny_config(t.path(), &format!("sampler:\n  kind: {kind}\n")), &[]).unwrap();
        let ds = Dataset::open(&cfg.dataset.root).unwrap();
        let store = load_split(&ds, &cfg, "trainval", None, &test_opts()).unwrap();
        let run = |weighted: bool| {
            tch::manual_seed(11);
            let vs = VarStore::new(tch::Device::Cpu);
            let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
            let mut opt = Sgd::new(&vs, 0.9, 5e-4);
            let mut sampler: Box<dyn Sampler> = if weighted { Box::new(Ones(cfg.sampler.build())) } else { cfg.sampler.build() };
            let mut losses = Vec::new();
            for step in 0..3 {
                let prepared: Vec<batch::Prepared> = [step, step + 2].iter().map(|&i| batch::prepare(&store, i, &cfg.input, false, tch::Device::Cpu).unwrap()).collect();
                let out = train_step(&model, &mut opt, 0.01, sampler.as_mut(), &prepared, &cfg).unwrap();
                losses.push((out.loss_cls, out.loss_bbox, out.rois, out.fg));
            }
            (vs, losses)
        };
        let ((vs0, l0), (vs1, l1)) = (run(false), run(true));
        assert_eq!(l0, l1, "{kind}: losses differ");
        for (name, a) in vs0.variables() {
            assert!(a.equal(&vs1.variables()[&name]), "{kind}: {name} differs");
        }
    }
}

/// Each sampler, trained briefly on the tiny data, lowers the loss over all
/// proposals of the training set (the same yardstick for every sampler).
#[test]
fn every_sampler_lowers_the_training_loss() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::sampler::Miner;
    use ohem_harness::trainer::{load_split, FrozenScorer};

    let samplers = [
        "  kind: fixed_ratio\n",
        "  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 3\n",
        "  kind: ohem\n",
        "  kind: ohem\n  impl: masked\n",
        "  kind: all\n",
        "  kind: ohem\n  loss: cls\n  nms_iou: null\n  fg_fraction: 0.25\n",
        "  kind: iou_balanced\n",
        "  kind: focal\n",
        "  kind: pisa\n",
    ];
    for s in samplers {
        let t = tempfile::tempdir().unwrap();
        let epochs = 2;
        let cfg = TrainConfig::load(&tiny_config(t.path(), &format!("sampler:\n{s}test:\n  eval_every: 100\n")), &[format!("train.epochs={epochs}"), "train.iters_per_epoch=5".into(), "train.lr_steps=[]".into()]).unwrap();
        let ds = Dataset::open(&cfg.dataset.root).unwrap();
        let store = load_split(&ds, &cfg, "trainval", None, &test_opts()).unwrap();
        let mean_loss = |vs: &tch::nn::VarStore, model: &FastRcnn| {
            let _ = vs;
            let scores = FrozenScorer::new(model, &store, &cfg, tch::Device::Cpu).score_training_set().unwrap();
            let (sum, n) = scores.iter().fold((0.0, 0i64), |(s, n), x| (s + x.loss.sum(tch::Kind::Double).double_value(&[]), n + x.loss.size()[0]));
            sum / n as f64
        };
        // the model the trainer starts from (its constructor: the focal loss's background prior
        // included), so that "before" is what training starts at, not a model without the prior
        let (mut vs, model) = ohem_harness::trainer::build_model(&cfg, tch::Device::Cpu, ds.classes.len(), None).unwrap();
        let before = mean_loss(&vs, &model);
        let rows = train(&cfg, &t.path().join("run"), &test_opts()).unwrap();
        vs.load(t.path().join(format!("run/checkpoints/epoch_{epochs:03}.safetensors"))).unwrap();
        let after = mean_loss(&vs, &model);
        if s.contains("focal") {
            // The focal loss minimises its own loss (alpha 0.25 on foreground, 0.75 on background,
            // easy RoIs down-weighted), not the cross-entropy over all proposals, which from the
            // same prior moved 0.4576 -> 0.4414 in 2 epochs and 0.4486 in 4: no yardstick for it.
            // Its own training loss, logged per epoch from the same prior, must fall.
            let (first, last) = (rows[0].loss_cls, rows[rows.len() - 1].loss_cls);
            assert!(last < first * 0.95, "{s}: focal training loss {first:.5} -> {last:.5}");
        } else {
            assert!(after < before * 0.95, "{s}: loss over all proposals {before:.4} -> {after:.4}");
        }
        assert!(rows.iter().all(|r| r.rois_per_iter > 0.0 && (0.0..=1.0).contains(&r.fg_fraction)));
        if s.contains("hnm") {
            assert!(rows.iter().any(|r| r.mine_s > 0.0), "HNM logs its mining time");
            // iterations 3, 6 and 9 of 10: three rounds, each logged, each filling the cache
            let mining: Vec<ohem_harness::rundir::MiningRow> = ohem_harness::rundir::read_mining(&t.path().join("run/mining.csv")).unwrap();
            assert_eq!(mining.iter().map(|m| (m.round, m.epoch, m.iteration)).collect::<Vec<_>>(), vec![(1, 1, 3), (2, 2, 6), (3, 2, 9)]);
            assert!(mining.iter().all(|m| m.stats.mined > 0 && m.stats.mined_loss > m.stats.random_loss), "{mining:?}");
            assert_eq!(rows[1].cache_size, mining[2].stats.mined);
            assert!(mining[0].stats.prev_still_hard.is_none() && mining[1].stats.prev_still_hard.is_some());
        }
        if s.contains("ohem") {
            let r = &rows[1];
            let all = r.all_loss.expect("OHEM knows the loss over all RoIs");
            assert!(r.sel_loss > all, "OHEM's selected RoIs are harder than average: {} vs {all}", r.sel_loss);
            assert!(r.rois_per_iter <= 128.0);
        }
    }
}

/// Evaluation batches the head over several test images; the detections are
/// exactly those of one image at a time.
#[test]
fn batched_detection_equals_one_image_at_a_time() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::trainer::{detect::detect, load_split};
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), ""), &[]).unwrap();
    let ds = Dataset::open(&cfg.dataset.root).unwrap();
    let store = load_split(&ds, &cfg, "test", None, &test_opts()).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
    let run = |images_per_batch: usize| {
        let test = ohem_harness::config::TestConfig { images_per_batch, score_thresh: 0.0, ..cfg.test.clone() };
        detect(&model, &store, &cfg.input, &test, tch::Device::Cpu).unwrap()
    };
    let one = run(1);
    assert!(one.iter().map(|c| c.len()).sum::<usize>() > 100, "an untrained model detects plenty at threshold 0");
    for n in [3, 8, 100] {
        let batched = run(n);
        for (c, (a, b)) in one.iter().zip(&batched).enumerate() {
            assert_eq!(a.len(), b.len(), "class {c}, {n} images per batch: detection counts differ");
            for (x, y) in a.iter().zip(b) {
                assert_eq!((x.image, x.score, x.bbox), (y.image, y.score, y.bbox), "class {c}, {n} images per batch");
            }
        }
    }
}

/// The trainer's SGD (in place, checkpointable) makes PyTorch's update: the same
/// parameters as libtorch's own SGD (momentum, no dampening, weight decay) after
/// several steps, frozen variables untouched.
#[test]
fn sgd_matches_libtorchs_sgd() {
    use ohem_harness::model::sgd::Sgd;
    use tch::nn::{Module, OptimizerConfig};
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(11);
    let make = || {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let l1 = tch::nn::linear(vs.root() / "a", 5, 4, Default::default());
        let l2 = tch::nn::linear(vs.root() / "b", 4, 3, Default::default());
        (vs, l1, l2)
    };
    let (ours_vs, a1, a2) = make();
    let (ref_vs, b1, b2) = make();
    let mut ref_vs = ref_vs;
    ref_vs.copy(&ours_vs).unwrap();
    let _ = ours_vs.variables()["b.bias"].set_requires_grad(false);
    let _ = ref_vs.variables()["b.bias"].set_requires_grad(false);
    let frozen_before = ours_vs.variables()["b.bias"].copy();
    let mut ours = Sgd::new(&ours_vs, 0.9, 0.01);
    let mut reference = tch::nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 0.01, nesterov: false }.build(&ref_vs, 0.0).unwrap();
    for step in 0..6 {
        let x = Tensor::randn([8, 5], (tch::Kind::Float, tch::Device::Cpu));
        let lr = if step < 3 { 0.1 } else { 0.02 };
        a2.forward(&a1.forward(&x).relu()).pow_tensor_scalar(2).mean(tch::Kind::Float).backward();
        ours.step(lr);
        reference.set_lr(lr);
        reference.zero_grad();
        reference.backward_step(&b2.forward(&b1.forward(&x).relu()).pow_tensor_scalar(2).mean(tch::Kind::Float));
    }
    let (o, r) = (ours_vs.variables(), ref_vs.variables());
    for (name, t) in &o {
        let d = (t - &r[name]).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{name} differs from libtorch's SGD by {d}");
    }
    assert!(o["b.bias"].equal(&frozen_before), "a frozen variable moved");
    assert!(!o["a.weight"].equal(&make().0.variables()["a.weight"]), "the parameters moved");
}

/// `bench samplers --profile` on the trainer's own step: every stage of a read-only and a
/// masked OHEM step is charged to its family (the step's scopes, the backbone's kernels, the
/// RoI-pooling kernel's forward scope and its backward node), and the families add up to the
/// wall time. The step under the profiler makes the same update as without it.
#[test]
fn a_profiled_step_charges_every_stage_to_its_family() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::bench::profile;
    use ohem_harness::data::Dataset;
    use ohem_harness::model::sgd::Sgd;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::trainer::{batch, load_split, train_step};
    use tch::nn::VarStore;

    let t = tempfile::tempdir().unwrap();
    for extra in ["", "  impl: masked\n"] {
        let cfg = TrainConfig::load(&tiny_config(t.path(), &format!("sampler:\n  kind: ohem\n  batch_size: 32\n{extra}")), &["model.dropout=0.0".into()]).unwrap();
        let ds = Dataset::open(&cfg.dataset.root).unwrap();
        let store = load_split(&ds, &cfg, "trainval", None, &test_opts()).unwrap();
        let dev = tch::Device::Cpu;
        let run = |profiled: bool| {
            tch::manual_seed(7);
            let vs = VarStore::new(dev);
            let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
            let mut opt = Sgd::new(&vs, 0.9, 5e-4);
            let mut sampler = cfg.sampler.build();
            let prepared: Vec<batch::Prepared> = [0, 3].iter().map(|&i| batch::prepare(&store, i, &cfg.input, false, dev).unwrap()).collect();
            let mut step = || train_step(&model, &mut opt, 0.01, sampler.as_mut(), &prepared, &cfg).map(|_| ());
            let events = if profiled { profile::record(|| step()).unwrap().1 } else { step().map(|_| Vec::new()).unwrap() };
            (vs, events)
        };
        let (vs, events) = run(true);
        let b = profile::breakdown(&events, 1.0);
        let ms = |f: &str| b.iter().find(|x| x.0 == f).unwrap().1 * 1e3;
        for f in ["convolution forward", "convolution backward", "linear (fc)", "max pool", "RoI pooling", "loss", "sampling and targets", "SGD update"] {
            assert!(ms(f) > 0.0, "{extra:?}: nothing charged to {f}: {b:?}");
        }
        let backward_pool = events.iter().any(|e| e.name.contains("RoiPoolFn"));
        assert!(backward_pool, "the RoI-pooling kernel's backward node is not recorded: {:?}", events.iter().map(|e| &e.name).collect::<std::collections::BTreeSet<_>>());
        let total: f64 = b.iter().map(|x| x.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "the families add up to the wall time given: {total}");
        let (plain, _) = run(false);
        for (name, v) in vs.variables() {
            assert!(v.equal(&plain.variables()[&name]), "{extra:?}: {name} differs with the profiler on");
        }
    }
}

/// A mid-epoch checkpoint is used whole or not at all: a kill before, between or after each
/// of its writes and renames (simulated: the save stops there and the call fails, the files
/// left as they are) is followed by a resume that reproduces the uninterrupted run exactly.
/// The run first checkpoints after iteration 1 (complete), then is killed while checkpointing
/// after iteration 2; the resume starts from whichever checkpoint is whole.
#[test]
fn a_kill_during_a_mid_epoch_checkpoint_resumes_exactly() {
    static ALWAYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    let _rng = crate::util::torch_rng_lock();
    // OHEM draws from libtorch's generator; HNM (mining every iteration) has a mined cache to checkpoint
    for sampler in ["  kind: ohem\n", "  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 1\n"] {
        let t = tempfile::tempdir().unwrap();
        let cfg = TrainConfig::load(&tiny_config(t.path(), &format!("sampler:\n{sampler}")), &["train.iters_per_epoch=4".into()]).unwrap();
        let whole = train(&cfg, &t.path().join("whole"), &test_opts()).unwrap();
        let key = |r: &EpochRow| (outcome(r), r.sel_loss, r.all_loss, r.rois_per_iter, r.cache_size);
        // 8 points: before the first write, after each of the files (the sampler's, the momenta, the
        // weights, the generators, partial.json), after the first rename, and after the second
        for kill in 0..8 {
            let cut = t.path().join(format!("cut{kill}"));
            let stopping = ohem_harness::trainer::TrainOptions { stop: Some(&ALWAYS), ..test_opts() };
            let e = train(&cfg, &cut, &stopping).unwrap_err();
            assert!(e.downcast_ref::<ohem_harness::rundir::Preempted>().is_some(), "{e:#}");
            let killed = ohem_harness::trainer::TrainOptions { stop: Some(&ALWAYS), kill_checkpoint_after: Some(kill), ..test_opts() };
            let e = train(&cfg, &cut, &killed).unwrap_err();
            assert!(format!("{e:#}").contains("simulated kill"), "{e:#}");
            let rows = train(&cfg, &cut, &test_opts()).unwrap();
            assert_eq!(rows.iter().map(key).collect::<Vec<_>>(), whole.iter().map(key).collect::<Vec<_>>(), "{sampler}: killed after {kill} writes of a checkpoint: the resumed run differs");
            for left in ["partial", "partial.tmp", "partial.old"] {
                assert!(!cut.join("checkpoints").join(left).exists(), "killed after {kill}: checkpoints/{left} left behind");
            }
        }
        let mining = |d: &Path| -> Vec<(usize, usize, usize)> { ohem_harness::rundir::read_mining(&d.join("mining.csv")).unwrap().iter().map(|m| (m.round, m.iteration, m.stats.mined)).collect() };
        if sampler.contains("hnm") {
            assert_eq!(mining(&t.path().join("cut7")), mining(&t.path().join("whole")));
        }
    }
}

/// A stop that arrives during the evaluation: the epoch is already checkpointed, so the
/// process stops at once, and the next call evaluates that checkpoint instead of training
/// the epoch again. One that arrives during offline mining: the mid-epoch checkpoint is
/// taken before the round, and the next call mines again. Both end as an uninterrupted run.
#[test]
fn a_stop_during_evaluation_or_mining_resumes_there() {
    use ohem_harness::rundir::PhaseKind;
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), "sampler:\n  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 2\n"), &["train.iters_per_epoch=4".into()]).unwrap();
    let whole = train(&cfg, &t.path().join("whole"), &test_opts()).unwrap();
    let same = |rows: &[EpochRow]| rows.iter().map(|r| (outcome(r), r.sel_loss, r.cache_size)).collect::<Vec<_>>() == whole.iter().map(|r| (outcome(r), r.sel_loss, r.cache_size)).collect::<Vec<_>>();

    // the evaluation of epoch 1
    static STOP_EVAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let dir = t.path().join("eval");
    let opts = ohem_harness::trainer::TrainOptions { stop: Some(&STOP_EVAL), stop_in: Some(PhaseKind::Evaluating), ..test_opts() };
    let e = train(&cfg, &dir, &opts).unwrap_err();
    assert!(e.downcast_ref::<ohem_harness::rundir::Preempted>().is_some(), "{e:#}");
    assert!(read_metrics(&dir.join("metrics.csv")).unwrap().is_empty(), "no row before the evaluation");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoints/epoch_001.json")).unwrap()).unwrap();
    let pending_train_s = manifest["row"]["train_s"].as_f64().unwrap();
    let rows = train(&cfg, &dir, &test_opts()).unwrap();
    assert!(same(&rows), "stopped in the evaluation: the resumed run differs");
    // epoch 1's training time is the one measured before the stop: it was not trained again
    assert_eq!(rows[0].train_s.to_bits(), pending_train_s.to_bits(), "epoch 1 was trained again");
    assert!(rows[0].map_voc07.is_some());

    // the mining round at iteration 2 of epoch 1 (the process trained iterations 0 and 1 first)
    static STOP_MINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let dir = t.path().join("mine");
    let opts = ohem_harness::trainer::TrainOptions { stop: Some(&STOP_MINE), stop_in: Some(PhaseKind::Mining), ..test_opts() };
    let e = train(&cfg, &dir, &opts).unwrap_err();
    assert!(format!("{e:#}").contains("after iteration 2/4"), "{e:#}");
    let partial: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoints/partial/partial.json")).unwrap()).unwrap();
    assert_eq!(partial["next_iter"], 2);
    assert!(partial["mining"].as_array().unwrap().is_empty(), "the interrupted round is not logged");
    let rows = train(&cfg, &dir, &test_opts()).unwrap();
    assert!(same(&rows), "stopped in a mining round: the resumed run differs");
    let mining = |d: &Path| -> Vec<(usize, usize, usize)> { ohem_harness::rundir::read_mining(&d.join("mining.csv")).unwrap().iter().map(|m| (m.round, m.iteration, m.stats.mined)).collect() };
    assert_eq!(mining(&dir), mining(&t.path().join("whole")));
}

/// Every file of a checkpoint, truncated to half or overwritten with zeros in turn, in the
/// three states a resume meets: a mid-epoch checkpoint (its five files), epoch checkpoints only
/// (epoch 2's four), and an epoch checkpointed but not evaluated (epoch 3's four, a stop having
/// cut its evaluation short). The resume passes over the damaged checkpoint with a warning that
/// names the file, falls back to the previous whole one (the mid-epoch checkpoint's epoch start,
/// the epoch before, the mid-epoch checkpoint before the unevaluated epoch, the initial weights
/// when none is left) and ends as an uninterrupted run. With HNM, whose checkpoints carry a
/// mined cache.
#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_one() {
    use ohem_harness::rundir::PhaseKind;
    static ALWAYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
    static IN_EVAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), "sampler:\n  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 1\n"), &["train.iters_per_epoch=2".into(), "train.epochs=3".into()]).unwrap();
    let whole = train(&cfg, &t.path().join("whole"), &test_opts()).unwrap();
    let key = |rows: &[EpochRow]| rows.iter().map(|r| (outcome(r), r.sel_loss, r.cache_size)).collect::<Vec<_>>();
    // a run stopped inside epoch 3 after epochs 1 and 2 (both kept): epoch and mid-epoch checkpoints
    let mid = t.path().join("mid");
    let stopping = ohem_harness::trainer::TrainOptions { stop: Some(&ALWAYS), ..test_opts() };
    while read_metrics(&mid.join("metrics.csv")).unwrap().len() < 2 || !mid.join("checkpoints/partial/partial.json").exists() {
        assert!(train(&cfg, &mid, &stopping).is_err());
    }
    // the same without its mid-epoch checkpoint
    let epochs = t.path().join("epochs");
    crate::util::copy_dir(&mid, &epochs);
    std::fs::remove_dir_all(epochs.join("checkpoints/partial")).unwrap();
    // and one further: epoch 3 trained and checkpointed, its evaluation stopped
    let eval = t.path().join("eval");
    crate::util::copy_dir(&mid, &eval);
    let in_eval = ohem_harness::trainer::TrainOptions { stop: Some(&IN_EVAL), stop_in: Some(PhaseKind::Evaluating), ..test_opts() };
    assert!(train(&cfg, &eval, &in_eval).is_err());
    assert!(eval.join("checkpoints/epoch_003.json").exists() && read_metrics(&eval.join("metrics.csv")).unwrap().len() == 2);
    let files = |base: &Path, pick: &dyn Fn(&str) -> bool| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walk(&base.join("checkpoints")).into_iter().filter(|p| pick(&p.file_name().unwrap().to_string_lossy())).collect();
        v.sort();
        v
    };
    let cases = [
        (&mid, files(&mid, &|n| n.starts_with("partial.")), 5),
        (&epochs, files(&epochs, &|n| n.starts_with("epoch_002")), 4),
        (&eval, files(&eval, &|n| n.starts_with("epoch_003")), 4),
    ];
    for (base, damaged, count) in cases {
        assert_eq!(damaged.len(), count, "{}: {damaged:?}", base.display());
        for (n, file) in damaged.iter().enumerate() {
            for zeros in [false, true] {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                let what = format!("{} {name} {}", base.file_name().unwrap().to_string_lossy(), if zeros { "zeroed" } else { "truncated" });
                let run = t.path().join(format!("{}-{n}-{}", base.file_name().unwrap().to_string_lossy(), zeros as u8));
                crate::util::copy_dir(base, &run);
                let target = run.join(file.strip_prefix(base).unwrap());
                let len = std::fs::metadata(&target).unwrap().len() as usize;
                std::fs::write(&target, if zeros { vec![0u8; len] } else { std::fs::read(&target).unwrap()[..len / 2].to_vec() }).unwrap();
                let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let opts = ohem_harness::trainer::TrainOptions { warnings: Some(warnings.clone()), ..test_opts() };
                let rows = train(&cfg, &run, &opts).unwrap_or_else(|e| panic!("{what}: no resume: {e:#}"));
                assert_eq!(key(&rows), key(&whole), "{what}: the resumed run differs");
                let said = warnings.lock().unwrap().join("\n");
                assert!(said.contains(&name), "{what}: no warning names the file: {said}");
            }
        }
    }
    // epoch 2's weights emptied, without a mid-epoch checkpoint, through the command line
    let run = t.path().join("cli");
    crate::util::copy_dir(&epochs, &run);
    std::fs::write(run.join("checkpoints/epoch_002.safetensors"), b"").unwrap();
    let (cfg_path, run_s, cache) = (run.join("config.yaml"), run.to_string_lossy().into_owned(), crate::util::cache_dir().to_string_lossy().into_owned());
    let (ok, _, err) = harness(&["train", cfg_path.to_str().unwrap(), "--out", &run_s, "--cache-dir", &cache]);
    assert!(ok, "{err}");
    assert!(err.contains("epoch_002.safetensors") && err.contains("passed over") && err.contains("epoch 2 is trained again") && !err.contains("panicked"), "{err}");
    assert_eq!(key(&read_metrics(&run.join("metrics.csv")).unwrap()), key(&whole));
    // nothing usable at all: from the initial weights
    let run = t.path().join("fresh-fallback");
    crate::util::copy_dir(&epochs, &run);
    for f in ["epoch_001.safetensors", "epoch_002.safetensors"] {
        std::fs::write(run.join("checkpoints").join(f), b"").unwrap();
    }
    assert_eq!(key(&train(&cfg, &run, &test_opts()).unwrap()), key(&whole));
}

/// Every file under `dir`, folders walked.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The classification weights a sampler returns reach the RoIs and images they were given for:
/// with distinct weights per RoI and per image, the step's gradient of the class scores' bias
/// (read from the update: lr 1, no weight decay, so that `g = b_before − b_after`) equals the
/// gradient by hand, `Σ_i w_i (softmax(logits_i) − onehot(label_i)) / S`, over the picked RoIs
/// with the logits of the same model before the step. Weights attached to the wrong RoIs or the
/// wrong image change the sum.
#[test]
fn distinct_weights_per_roi_and_image_give_the_gradient_by_hand() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::roi_pool::with_batch_index;
    use ohem_harness::model::sgd::Sgd;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::sampler::{ImageRois, Picked, RoiLosses, Sampler};
    use ohem_harness::trainer::{batch, load_split, train_step};
    use std::sync::{Arc, Mutex};
    use tch::{nn::VarStore, Kind, Tensor};

    /// Fixed ratio's pick, each RoI weighted `base(image) + 0.1 × position`; records (rois, labels, weights) per image.
    struct Distinct(Box<dyn Sampler>, Arc<Mutex<Vec<(Tensor, Tensor, Tensor)>>>);
    impl Sampler for Distinct {
        fn select(&mut self, r: &ImageRois, l: Option<&RoiLosses>, k: i64) -> Tensor {
            self.0.select(r, l, k)
        }
        fn select_weighted(&mut self, r: &ImageRois, l: Option<&RoiLosses>, k: i64) -> Picked {
            let idx = self.0.select(r, l, k);
            let mut seen = self.1.lock().unwrap();
            let base = if seen.is_empty() { 0.5 } else { 2.0 };
            let weight = Tensor::arange(idx.size()[0], (Kind::Float, tch::Device::Cpu)) * 0.1 + base;
            seen.push((r.rois.index_select(0, &idx), r.labels.index_select(0, &idx), weight.shallow_clone()));
            Picked { idx, weight: Some(weight) }
        }
    }
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), "sampler:\n  kind: fixed_ratio\n"), &["model.dropout=0.0".into()]).unwrap();
    let ds = Dataset::open(&cfg.dataset.root).unwrap();
    let store = load_split(&ds, &cfg, "trainval", None, &test_opts()).unwrap();
    let dev = tch::Device::Cpu;
    let prepared: Vec<batch::Prepared> = [0, 3].iter().map(|&i| batch::prepare(&store, i, &cfg.input, false, dev).unwrap()).collect();
    let fresh = || {
        tch::manual_seed(11);
        let vs = VarStore::new(dev);
        let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
        (vs, model)
    };
    // the step
    let picks = Arc::new(Mutex::new(Vec::new()));
    let (vs, model) = fresh();
    let bias = |vs: &VarStore| vs.variables()["cls_score.bias"].copy();
    let before = bias(&vs);
    let mut opt = Sgd::new(&vs, 0.9, 0.0);
    let mut sampler = Distinct(cfg.sampler.build(), picks.clone());
    tch::manual_seed(5);
    train_step(&model, &mut opt, 1.0, &mut sampler, &prepared, &cfg).unwrap();
    let step_grad = &before - bias(&vs);
    // by hand, from the same initial weights
    let (_vs0, model0) = fresh();
    let picks = picks.lock().unwrap();
    assert_eq!(picks.len(), 2, "one pick per image");
    // Σ_i w_i (softmax(logits_i) − onehot(label_i)) / S over the picked RoIs, for given weights
    let grad_by_hand = |weights: &Tensor| {
        tch::no_grad(|| {
            let feats = model0.features(&batch::collate(&prepared), true);
            let rois = Tensor::cat(&picks.iter().enumerate().map(|(b, p)| with_batch_index(b as i64, &p.0)).collect::<Vec<_>>(), 0);
            let labels = Tensor::cat(&picks.iter().map(|p| p.1.shallow_clone()).collect::<Vec<_>>(), 0);
            let (logits, _) = model0.head(&feats, &rois, true);
            let onehot = labels.one_hot(logits.size()[1]).to_kind(Kind::Float);
            ((logits.softmax(1, Kind::Float) - onehot) * weights.unsqueeze(1)).sum_dim_intlist(0, false, Kind::Float) / labels.size()[0] as f64
        })
    };
    let by_hand = grad_by_hand(&Tensor::cat(&picks.iter().map(|p| p.2.shallow_clone()).collect::<Vec<_>>(), 0));
    let diff = (&step_grad - &by_hand).abs().max().double_value(&[]);
    let scale = by_hand.abs().max().double_value(&[]);
    assert!(scale > 1e-3, "a gradient to compare: {by_hand:?}");
    assert!(diff < 1e-5 * scale.max(1.0), "the step's gradient of cls_score.bias differs from the one by hand by {diff}: {step_grad:?} vs {by_hand:?}");
    // and the weights matter: the same sum with the two images' weights swapped is another gradient
    let (n0, n1) = (picks[0].0.size()[0], picks[1].0.size()[0]);
    let swapped = grad_by_hand(&Tensor::cat(&[Tensor::ones([n0], (Kind::Float, dev)) * 2.0, Tensor::ones([n1], (Kind::Float, dev)) * 0.5], 0));
    assert!((&step_grad - &swapped).abs().max().double_value(&[]) > 100.0 * diff.max(1e-7), "the check can tell weights on the wrong image apart");
}

/// `--set key=null` (and `key=~`, `key=`) unsets a key; before, a value was
/// parsed as a YAML document and null became an empty map.
#[test]
fn a_null_override_unsets_a_key() {
    use ohem_harness::config::parse_override;
    for s in ["sampler.mine_every_epochs=null", "sampler.mine_every_epochs=~", "sampler.mine_every_epochs="] {
        let (k, v) = parse_override(s).unwrap();
        assert_eq!(k, "sampler.mine_every_epochs");
        assert!(v.is_null(), "{s} gave {v}");
    }
    assert_eq!(parse_override("a={}").unwrap().1, serde_json::json!({}));
    assert_eq!(parse_override("a=[3]").unwrap().1, serde_json::json!([3]));
    // HNM mining by iterations, from a config that mines by epochs
    let t = tempfile::tempdir().unwrap();
    let path = tiny_config(t.path(), "sampler:\n  kind: hnm\n  mine_every_epochs: 1\n");
    let cfg = TrainConfig::load(&path, &["sampler.mine_every_epochs=null".into(), "sampler.mine_every_iters=2".into()]).unwrap();
    let v = serde_json::to_value(&cfg.sampler).unwrap();
    assert!(v["mine_every_epochs"].is_null() && v["mine_every_iters"] == 2, "{v}");
}

/// Images read from disk as they are used (`dataset.cache_mib: 0`, none
/// held; 1 MiB, a few held) train the run that images decoded up front train,
/// bit for bit, HNM's mining passes included; the store streams only when the
/// split exceeds the budget, and gives the same tensors either way.
#[test]
fn streamed_images_train_the_same_run() {
    use ohem_harness::trainer::batch::{decoded_bytes, ImageStore};
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let path = tiny_config(t.path(), "test:\n  eval_every: 1\nsampler:\n  kind: hnm\n  mine_every_epochs: null\n  mine_every_iters: 2\n");
    let held = TrainConfig::load(&path, &[]).unwrap();
    let ra = train(&held, &t.path().join("held"), &test_opts()).unwrap();
    for mib in ["0", "1"] {
        let cfg = TrainConfig::load(&path, &[format!("dataset.cache_mib={mib}")]).unwrap();
        assert_eq!(ohem_harness::harness::grid::cell_id(&cfg), ohem_harness::harness::grid::cell_id(&held), "the budget is not part of the cell's identity");
        let rb = train(&cfg, &t.path().join(format!("streamed-{mib}")), &test_opts()).unwrap();
        assert_eq!(ra.iter().map(outcome).collect::<Vec<_>>(), rb.iter().map(outcome).collect::<Vec<_>>(), "cache_mib {mib}");
    }
    // the store itself
    let ds = ohem_harness::data::Dataset::open(tiny_dataset()).unwrap();
    let anns = ds.load_split("test").unwrap();
    let props: Vec<Vec<[f32; 4]>> = anns.iter().map(|a| vec![[1.0, 1.0, a.width as f32, a.height as f32]]).collect();
    let mem = ImageStore::load(&ds, anns.clone(), props.clone(), 1 + (decoded_bytes(&anns) >> 20) as u64).unwrap();
    let disk = ImageStore::load(&ds, anns.clone(), props, 0).unwrap();
    assert!(!mem.streams() && disk.streams());
    disk.ahead(&[2, 3, 4]);
    for i in (0..anns.len()).rev() {
        assert!(mem.image(i).unwrap().equal(&disk.image(i).unwrap()), "image {i}");
    }
    let st = disk.loader_stats();
    assert_eq!((mem.loader_stats().decoded, st.decoded), (0, anns.len()), "nothing held at 0 MiB: each image decoded when used");
    assert_eq!(disk.image(0).unwrap().size(), mem.image(0).unwrap().size());
    assert_eq!(disk.loader_stats().decoded, anns.len() + 1, "and again when used again");
}

/// A split larger than the budget (nothing held: `cache_mib` 0), over three epochs: every
/// image a step uses is read from disk, and every one but the first step's two was decoded
/// ahead by a worker, in every epoch. The look-ahead of an epoch's last steps reads the next
/// epoch's order (it used to wrap to the epoch that just ended, whose images then held the
/// look-ahead's slots at random places of the next epoch, and next to nothing was prefetched).
#[test]
fn the_look_ahead_runs_on_into_the_next_epoch() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&tiny_config(t.path(), ""), &["dataset.cache_mib=0".into(), "train.iters_per_epoch=null".into(), "train.epochs=3".into()]).unwrap();
    let rows = train(&cfg, &t.path().join("run"), &test_opts()).unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let streamed = r.streamed_images.expect("a streamed split logs its reads");
        assert_eq!(streamed, 2.0 * r.iterations as f64, "epoch {}: each step reads its two images", r.epoch);
        let want = streamed - if r.epoch == 1 { 2.0 } else { 0.0 };
        assert_eq!(r.prefetched_images, Some(want), "epoch {}: {streamed} images read, {:?} of them prefetched", r.epoch, r.prefetched_images);
    }
    // held in memory: nothing is read during training, and the columns stay empty
    let held = train(&TrainConfig::load(&tiny_config(t.path(), ""), &["train.epochs=1".into()]).unwrap(), &t.path().join("held"), &test_opts()).unwrap();
    assert_eq!((held[0].streamed_images, held[0].prefetched_images), (None, None));
    // the look-ahead by hand: 3 iterations of 2 images over a 6-image order, then the next epoch's
    let (order, next) = ([5, 0, 3, 1, 4, 2], [2, 4, 0, 5, 1, 3]);
    assert_eq!(ohem_harness::trainer::look_ahead(&order, Some(&next), 0, 3, 2), vec![3, 1, 4, 2]);
    assert_eq!(ohem_harness::trainer::look_ahead(&order, Some(&next), 1, 3, 2), vec![4, 2, 2, 4]);
    assert_eq!(ohem_harness::trainer::look_ahead(&order, Some(&next), 2, 3, 2), vec![2, 4, 0, 5]);
    assert_eq!(ohem_harness::trainer::look_ahead(&order, None, 2, 3, 2), Vec::<usize>::new());
}

/// A streamed image that cannot be decoded when its turn comes is an error
/// naming the file (also through a prefetch); a missing one is found when the
/// split is loaded, before training starts.
#[test]
fn a_bad_streamed_image_is_an_error_naming_it() {
    use ohem_harness::trainer::batch::{prepare, ImageStore};
    let data = crate::util::copy_of(tiny_dataset());
    let ds = ohem_harness::data::Dataset::open(data.path()).unwrap();
    let anns = ds.load_split("trainval").unwrap();
    let props: Vec<Vec<[f32; 4]>> = anns.iter().map(|a| vec![[1.0, 1.0, a.width as f32, a.height as f32]]).collect();
    let store = ImageStore::load(&ds, anns.clone(), props.clone(), 0).unwrap();
    std::fs::write(ds.image_path(&anns[5].id), b"not an image").unwrap();
    let input = ohem_harness::config::InputConfig::default();
    for prefetched in [false, true] {
        if prefetched {
            store.ahead(&[5]);
        }
        let e = format!("{:#}", prepare(&store, 5, &input, false, tch::Device::Cpu).err().expect("an error"));
        assert!(e.contains(&format!("{}.jpg", anns[5].id)) && e.contains("not a decodable image"), "{e}");
    }
    assert!(prepare(&store, 4, &input, false, tch::Device::Cpu).is_ok());
    std::fs::remove_file(ds.image_path(&anns[6].id)).unwrap();
    let e = ImageStore::load(&ds, anns.clone(), props, 0).err().expect("a missing image").to_string();
    assert!(e.contains(&format!("{}.jpg", anns[6].id)) && e.contains("missing"), "{e}");
}

/// The epoch's own timing evidence in metrics.csv: the process's CPU seconds, the median and
/// interquartile range of its iterations, and the share of the machine other processes took,
/// which a busy loop on every core beside the cell drives above the report's threshold.
#[test]
fn a_cell_beside_a_busy_loop_says_so_in_its_own_row() {
    let t = tempfile::tempdir().unwrap();
    let p = tiny_config(t.path(), "");
    let out = t.path().join("run");
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    // a busy process beside the cell: one spinning child per core, for as long as the cell runs
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let spinners: Vec<std::process::Child> = (0..cores).map(|_| std::process::Command::new("sh").arg("-c").arg("while :; do :; done").spawn().unwrap()).collect();
    let (ok, _, err) = harness(&["train", p.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "train.epochs=1", "--cache-dir", &cache]);
    for mut c in spinners {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(ok, "{err}");
    let mut r = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let rows: Vec<ohem_harness::rundir::EpochRow> = r.deserialize().map(|x| x.unwrap()).collect();
    let e = &rows[0];
    assert!(e.cpu_s.is_some_and(|c| c > 0.0) && e.iter_median_s.is_some_and(|m| m > 0.0) && e.iter_iqr_s.is_some_and(|q| q >= 0.0), "{e:?}");
    let share = e.others_cpu_share.unwrap();
    assert!(share > ohem_harness::report::OTHERS_SHARE_MAX && share <= 1.0, "other processes took {share} of the machine beside {cores} spinning processes");
}

/// `/proc/stat`'s first line by hand: busy is everything but idle and iowait; and the median
/// and interquartile range of iteration times by hand.
#[test]
fn cpu_counters_and_iteration_spread_by_hand() {
    use ohem_harness::trainer::cpu::{machine_seconds, median_iqr};
    let stat = "cpu  100 20 30 400 50 5 5 10 0 0\ncpu0 50 10 15 200 25 2 3 5 0 0\n";
    let (busy, total) = machine_seconds(stat, 100.0).unwrap();
    assert!((busy - 1.7).abs() < 1e-12 && (total - 6.2).abs() < 1e-12, "{busy} {total}");
    assert_eq!(machine_seconds("intr 1 2\n", 100.0), None);
    assert_eq!(median_iqr(&[4.0, 1.0, 3.0, 2.0, 5.0]), Some((3.0, 2.0)));
    assert_eq!(median_iqr(&[]), None);
}

/// The per-class bookkeeping by hand: counts, loss sums and the unpicked RoIs' losses of a
/// small batch; the shares sum to 1.
#[test]
fn class_tally_by_hand() {
    use ohem_harness::trainer::class_tally;
    use tch::Tensor;
    let labels = Tensor::from_slice(&[0i64, 1, 1, 2, 0, 0, 2]);
    let sel = Tensor::from_slice(&[1i64, 4, 6]);
    let loss = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let t = class_tally(&labels, &sel, &loss, 3);
    assert_eq!(t.candidates, [3, 2, 2, 0]);
    assert_eq!(t.selected, [1, 1, 1, 0]);
    assert_eq!(t.loss_sum, [12.0, 5.0, 11.0, 0.0]);
    // not picked: background 0 and 5 (1 + 6), class 1's 2 (3), class 2's 3 (4)
    assert_eq!(t.unpicked_loss_sum, [7.0, 3.0, 4.0, 0.0]);
    let share = |v: &[i64]| v.iter().map(|&x| x as f64 / v.iter().sum::<i64>() as f64).sum::<f64>();
    assert!((share(&t.candidates) - 1.0).abs() < 1e-12 && (share(&t.selected) - 1.0).abs() < 1e-12);
}

/// The bookkeeping changes nothing of the step: from the same weights on the same batch, a
/// step with it and one without make bit-identical updates (fixed ratio: its own read-only
/// forward; OHEM: the losses it ranked by), and its counts cover every RoI and every pick.
#[test]
fn the_class_bookkeeping_leaves_the_step_unchanged() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::sgd::Sgd;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::trainer::{batch, load_split, train_step_tallied};
    use tch::nn::VarStore;
    let t = tempfile::tempdir().unwrap();
    for sampler in ["sampler:\n  kind: fixed_ratio\n", "sampler:\n  kind: ohem\n  batch_size: 32\n"] {
        let cfg = TrainConfig::load(&tiny_config(t.path(), sampler), &["model.dropout=0.0".into()]).unwrap();
        let ds = Dataset::open(&cfg.dataset.root).unwrap();
        let store = load_split(&ds, &cfg, "trainval", None, &test_opts()).unwrap();
        let dev = tch::Device::Cpu;
        let run = |tally: bool| {
            tch::manual_seed(7);
            let vs = VarStore::new(dev);
            let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
            let mut opt = Sgd::new(&vs, 0.9, 5e-4);
            let mut s = cfg.sampler.build();
            let prepared: Vec<batch::Prepared> = [0, 3].iter().map(|&i| batch::prepare(&store, i, &cfg.input, i == 3, dev).unwrap()).collect();
            tch::manual_seed(5);
            let out = train_step_tallied(&model, &mut opt, 0.01, s.as_mut(), &prepared, &cfg, tally).unwrap();
            (vs, out)
        };
        let (vs_a, out_a) = run(false);
        let (vs_b, out_b) = run(true);
        assert!(out_a.classes.is_none());
        let c = out_b.classes.unwrap();
        assert_eq!(c.candidates.len(), ds.classes.len() + 1);
        assert_eq!(c.candidates.iter().sum::<i64>(), out_b.rois_all, "every RoI counted once");
        assert_eq!(c.selected.iter().sum::<i64>(), out_b.rois, "every pick counted once");
        assert_eq!(c.selected.iter().skip(1).sum::<i64>(), out_b.fg);
        assert!(c.loss_sum.iter().zip(&c.unpicked_loss_sum).all(|(a, u)| *u <= *a + 1e-9 && *u >= 0.0));
        assert_eq!((out_a.loss_cls, out_a.loss_bbox), (out_b.loss_cls, out_b.loss_bbox));
        let (a, b) = (vs_a.variables(), vs_b.variables());
        for (name, ta) in &a {
            assert!(ta.equal(&b[name]), "{sampler}: {name} differs with the bookkeeping");
        }
    }
}

/// Repeat-factor sampling by hand: the classes' factors from the images that hold them, each
/// image's its rarest class's; an epoch's order repeats each image by its factor on average
/// and is the same for the same seed and epoch.
#[test]
fn repeat_factors_by_hand() {
    use ohem_harness::trainer::{epoch_order, repeat_factors};
    // five images, the fifth with no label (factor 1): class 1 in 3 of them, 2 and 3 in one each
    let labels: Vec<&[i64]> = vec![&[1], &[1, 2, 2], &[1], &[3], &[]];
    let r = repeat_factors(&labels, 0.5);
    let s2 = 2f64.sqrt();
    // t = 0.5: class 1 in 3 of 5 → sqrt(0.5/0.6) < 1 → 1; classes 2 and 3 in 1 of 5 → sqrt(2.5)
    let r23 = (0.5f64 / 0.2).sqrt();
    assert_eq!(r, vec![1.0, r23, 1.0, r23, 1.0]);
    assert!(r23 > s2);
    // the first four alone: class 1 in 3 of 4 → 1; 2 and 3 in 1 of 4 → sqrt(0.5 / 0.25) = √2
    assert_eq!(repeat_factors(&labels[..4], 0.5), vec![1.0, s2, 1.0, s2]);
    // each image's mean count over many epochs is its factor
    let f = [1.0, 2.5, 1.0, 3.2];
    let epochs = 4000;
    let mut counts = [0usize; 4];
    for e in 0..epochs {
        for i in epoch_order(7, e, 4, Some(&f)).0 {
            counts[i] += 1;
        }
    }
    for (i, &c) in counts.iter().enumerate() {
        let mean = c as f64 / epochs as f64;
        assert!((mean - f[i]).abs() < 0.05, "image {i}: {mean} against {}", f[i]);
    }
    assert_eq!(epoch_order(7, 3, 4, Some(&f)).0, epoch_order(7, 3, 4, Some(&f)).0);
    // without factors: a permutation, as before
    let mut p = epoch_order(7, 3, 5, None).0;
    p.sort();
    assert_eq!(p, vec![0, 1, 2, 3, 4]);
    // a threshold outside (0, 1] is refused by name
    let t = tempfile::tempdir().unwrap();
    let err = TrainConfig::load(&tiny_config(t.path(), ""), &["train.repeat_factor=1.5".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("train.repeat_factor = 1.5"), "{err:#}");
}
