//! The `harness` binary end to end: the subcommands work on the generated
//! data, and bad input gives a clear error, a non-zero exit and no panic.

use crate::util::{copy_of, harness, tiny_dataset};

fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = harness(args);
    assert!(!ok, "{args:?} should fail");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?}: a panic leaked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

#[test]
fn help_lists_the_subcommands() {
    let (ok, out, _) = harness(&["--help"]);
    assert!(ok);
    for sub in ["make-dataset", "proposals", "eval", "bench"] {
        assert!(out.contains(sub), "{out}");
    }
}

#[test]
fn proposals_and_eval_run_on_the_generated_data() {
    let ds = tiny_dataset().to_str().unwrap();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("p.txt");
    let cache = t.path().join("cache");
    let (ok, stdout, err) = harness(&["proposals", ds, "--split", "test", "--cache-dir", cache.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["recall"]["recall_at_05"].as_f64().unwrap() >= 0.9);
    // the written file is accepted back
    let (ok, stdout, err) = harness(&["proposals", ds, "--split", "test", "--from", out.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let w: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["recall"], w["recall"]);

    // ground truth written as detections scores mAP 1 under both metrics
    let d = ohem_harness::data::Dataset::open(tiny_dataset()).unwrap();
    let anns = d.load_split("test").unwrap();
    let mut dets = vec![Vec::new(); d.classes.len()];
    for (i, a) in anns.iter().enumerate() {
        for o in a.objects.iter().filter(|o| !o.difficult) {
            dets[o.class].push(ohem_harness::eval::Detection { image: i as u32, score: 1.0, bbox: o.bbox });
        }
    }
    let dir = t.path().join("dets");
    ohem_harness::eval::write_results_dir(&dir, &d.classes, &anns, &dets).unwrap();
    for metric in ["voc07", "voc10"] {
        let (ok, stdout, err) = harness(&["eval", ds, "--split", "test", "--dets", dir.to_str().unwrap(), "--metric", metric, "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!((v["map"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{stdout}");
    }
    let (ok, stdout, _) = harness(&["eval", ds, "--split", "test", "--dets", dir.to_str().unwrap()]);
    assert!(ok && stdout.contains("mAP") && stdout.contains("disc"), "{stdout}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let ds = tiny_dataset().to_str().unwrap();
    assert_clean_failure(&["proposals", "/no/such/root", "--split", "test"], &["/no/such/root"]);
    assert_clean_failure(&["proposals", ds, "--split", "nope"], &["nope.txt"]);
    // a missing or wrong file in words, not "(os error 2)"
    let no_os = |args: &[&str], needle: &str| {
        let (ok, _, err) = harness(args);
        assert!(!ok && err.contains(needle) && !err.contains("os error"), "{args:?}: {err}");
    };
    no_os(&["train", "/no/such/c.yaml", "--out", "/no/such/out"], "/no/such/c.yaml: not found (a config file, YAML)");
    no_os(&["train", ds, "--out", "/no/such/out"], &format!("{ds}: is a folder, not a file (a config file, YAML)"));
    no_os(&["run", "/no/such/g.yaml", "--dry-run"], "/no/such/g.yaml: not found (a grid file, YAML)");
    no_os(&["status", ds], &format!("{ds}/grid.json: not found (is {ds} a results directory of `harness run`?)"));
    no_os(&["report", ds], &format!("{ds}/grid.json: not found"));
    // a config's sampler key, named in full at its line; a value out of range at its line, or the --set's
    let cd = tempfile::tempdir().unwrap();
    let c = cd.path().join("c.yaml");
    std::fs::write(&c, format!("dataset:\n  root: {ds}\nsampler:\n  kind: ohem\n  batch_size: 12.5\n")).unwrap();
    let c = c.to_str().unwrap();
    assert_clean_failure(&["train", c, "--out", "/no/such/out"], &["c.yaml (line 5): key sampler.batch_size = 12.5: expected a whole number"]);
    assert_clean_failure(&["train", c, "--out", "/no/such/out", "--set", "sampler.batch_size=64", "--set", "sampler.fg_thresh=2"], &["--set sampler.fg_thresh: invalid config: sampler.fg_thresh = 2 is outside [0, 1]"]);
    std::fs::write(c, format!("dataset:\n  root: {ds}\nsampler:\n  kind: ohem\n  fg_thresh: 2\n")).unwrap();
    assert_clean_failure(&["train", c, "--out", "/no/such/out"], &["c.yaml (line 5): invalid config: sampler.fg_thresh = 2 is outside [0, 1]"]);
    // the Slurm executor's own inputs, refused before anything is submitted
    assert_clean_failure(&["cell", "/no/such/results", "--index", "0"], &["/no/such/results/cells.json"]);
    let g = tempfile::tempdir().unwrap();
    let grid = g.path().join("g.yaml");
    std::fs::write(&grid, format!("results: {}\nbase:\n  dataset: {{root: {ds}}}\nseeds: [0]\n", g.path().join("res").display())).unwrap();
    assert_clean_failure(&["run", grid.to_str().unwrap(), "--executor", "slurm", "--signal", "KILL@5"], &["--signal", "KILL@5"]);
    assert_clean_failure(&["run", grid.to_str().unwrap(), "--executor", "slurm", "--signal", "USR1"], &["--signal", "SIGNAL@SECONDS"]);
    // bench claim-a's sweep values, refused before any work
    assert_clean_failure(&["bench", "claim-a", "--rois", "0"], &["--rois"]);
    assert_clean_failure(&["bench", "claim-a", "--fc", "0"], &["--fc"]);
    // bench samplers: VGG16 has no batch norm to fold
    assert_clean_failure(&["bench", "samplers", "--vgg16", "--fold-bn"], &["--fold-bn", "--vgg16"]);
    assert_clean_failure(&["bench", "samplers", "--fold-bn", "--profile"], &["--fold-bn", "--profile"]);
    // a verdict's claimed regime: unknown keys are named
    std::fs::write(&grid, format!("results: {}\nbase:\n  dataset: {{root: {ds}}}\nseeds: [0]\nreport:\n  verdicts:\n    - {{claim: x, baseline: base, arm: base, measure: s_per_iter, regime: {{gpus: 8}}}}\n", g.path().join("res").display())).unwrap();
    assert_clean_failure(&["run", grid.to_str().unwrap(), "--dry-run"], &["g.yaml", "report.verdicts[0].regime", "gpus"]);
    let empty = copy_of(tiny_dataset());
    std::fs::write(empty.path().join("ImageSets/Main/empty.txt"), "").unwrap();
    assert_clean_failure(&["proposals", empty.path().to_str().unwrap(), "--split", "empty"], &["ImageSets/Main/empty.txt", "lists no images"]);
    assert_clean_failure(&["eval", ds, "--split", "test", "--dets", "/no/such/dets"], &["/no/such/dets"]);
    assert_clean_failure(&["proposals", ds, "--max-boxes", "0", "--no-cache"], &["max_boxes"]);
    assert_clean_failure(&["proposals", ds, "--split", "test", "--from", "/no/such/file.txt"], &["/no/such/file.txt"]);

    let copy = copy_of(tiny_dataset());
    let root = copy.path().to_str().unwrap();
    let ann = copy.path().join("Annotations/000017.xml");
    let text = std::fs::read_to_string(&ann).unwrap();
    std::fs::write(&ann, &text[..text.len() / 2]).unwrap();
    assert_clean_failure(&["eval", root, "--split", "test", "--dets", "/tmp"], &["000017.xml", "truncated"]);
    std::fs::write(&ann, text).unwrap();
    std::fs::write(copy.path().join("JPEGImages/000018.jpg"), b"GIF89a").unwrap();
    assert_clean_failure(&["proposals", root, "--split", "test", "--no-cache"], &["000018.jpg", "not a decodable image"]);
    assert_clean_failure(&["make-dataset", "--out", root], &["different parameters"]);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("x"), "").unwrap();
    assert_clean_failure(&["make-dataset", "--out", other.path().to_str().unwrap()], &["not empty"]);
    assert_clean_failure(&["make-dataset", "--out", "/tmp/x", "--size", "huge"], &["huge"]);
}

/// `harness detect` then `harness eval` give, to the last bit, the mAP and COCO AP the run
/// logged for that epoch: in VOC comp4 files and in a COCO results JSON, for each kept epoch.
#[test]
fn detect_then_eval_reproduces_the_logged_map_exactly() {
    let t = tempfile::tempdir().unwrap();
    let cfg = crate::util::tiny_config(t.path(), "");
    let run = t.path().join("run");
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let (ok, _, err) = harness(&["train", cfg.to_str().unwrap(), "--out", run.to_str().unwrap(), "--cache-dir", &cache]);
    assert!(ok, "{err}");
    let rows = ohem_harness::rundir::read_metrics(&run.join("metrics.csv")).unwrap();
    let ds = tiny_dataset().to_str().unwrap();
    let eval = |dets: &std::path::Path, metric: &str| -> serde_json::Value {
        let (ok, out, err) = harness(&["eval", ds, "--split", "test", "--dets", dets.to_str().unwrap(), "--metric", metric, "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    for row in &rows {
        let e = row.epoch.to_string();
        let (voc, coco) = (t.path().join(format!("voc{e}")), t.path().join(format!("coco{e}.json")));
        for (out, format) in [(&voc, "voc"), (&coco, "coco")] {
            let (ok, stdout, err) = harness(&["detect", run.to_str().unwrap(), "--epoch", &e, "--out", out.to_str().unwrap(), "--format", format, "--cache-dir", &cache]);
            assert!(ok, "{err}");
            assert!(stdout.contains(&format!("the run logged {:.4}", row.map_voc07.unwrap())), "{stdout}");
        }
        assert!(voc.join("comp4_det_test_disc.txt").is_file());
        for dets in [&voc, &coco] {
            assert_eq!(eval(dets, "voc07")["map"].as_f64(), row.map_voc07, "epoch {e}, {}", dets.display());
            assert_eq!(eval(dets, "voc10")["map"].as_f64(), row.map_voc10, "epoch {e}, {}", dets.display());
            let c = eval(dets, "coco");
            for (key, logged) in ohem_harness::eval::coco::SUMMARY_KEYS.iter().zip(row.coco()) {
                assert_eq!(c[key].as_f64().filter(|v| *v >= 0.0), logged, "epoch {e}, {key}, {}", dets.display());
            }
        }
    }
    // a checkpoint file names its run; an epoch no longer kept names those that are
    let ck = run.join("checkpoints/epoch_002.safetensors");
    let (ok, stdout, err) = harness(&["detect", ck.to_str().unwrap(), "--out", t.path().join("f.json").to_str().unwrap(), "--format", "coco", "--cache-dir", &cache]);
    assert!(ok && stdout.contains("epoch 2's"), "{err}");
    let out = t.path().join("x.json");
    assert_clean_failure(&["detect", run.to_str().unwrap(), "--epoch", "7", "--out", out.to_str().unwrap()], &["no checkpoint of epoch 7", "epochs 1, 2"]);
    assert_clean_failure(&["detect", t.path().join("nothing").to_str().unwrap(), "--out", out.to_str().unwrap()], &["nothing: not found"]);
    // a results JSON with a category the dataset lacks names the file and the entry
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(t.path().join("f.json")).unwrap()).unwrap();
    let image = written[0]["image_id"].as_i64().unwrap();
    std::fs::write(&out, format!(r#"[{{"image_id": {image}, "category_id": 99, "bbox": [1, 1, 5, 5], "score": 0.5}}]"#)).unwrap();
    assert_clean_failure(&["eval", ds, "--split", "test", "--dets", out.to_str().unwrap()], &["x.json", "result [0]", "category_id 99"]);
}

/// `harness compare`: the committed convergence and trees studies side by side; --out writes the
/// table and its chart; one folder, or a folder without a report, is an error naming it.
#[test]
fn compare_puts_two_studies_side_by_side() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (a, b) = (root.join("results/convergence"), root.join("results/trees"));
    let (ok, out, err) = harness(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(ok, "{err}");
    // the shared arms, the recipes' differences, each study's own finding for OHEM against FRCN
    for needle in ["| frcn |", "| ohem-nonms |", "`train.iterations` | — | 600 |", "| frcn / ohem, final_map_voc07 |", "resolved below 0"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let t = tempfile::tempdir().unwrap();
    let (ok, _, err) = harness(&["compare", a.to_str().unwrap(), b.to_str().unwrap(), "--out", t.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(t.path().join("compare.md")).unwrap();
    assert!(md.contains("![final-accuracy findings of each study](compare.png)") && t.path().join("compare.png").is_file() && t.path().join("compare.svg").is_file());
    let (ok, _, err) = harness(&["compare", a.to_str().unwrap()]);
    assert!(!ok && err.contains("compare") && !err.contains("panicked"), "{err}");
    assert_clean_failure(&["compare", a.to_str().unwrap(), t.path().to_str().unwrap()], &[&t.path().display().to_string()]);
}

/// On a COCO-layout dataset, `detect` writes a COCO results JSON (the default) that `eval`
/// scores against the split's instances file to the run's logged numbers exactly; VOC comp4
/// files are refused with the reason.
#[test]
fn detect_on_a_coco_dataset_reproduces_its_logged_numbers() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("coco");
    let (ok, _, err) = harness(&["make-dataset", "--out", ds.to_str().unwrap(), "--size", "tiny", "--format", "coco"]);
    assert!(ok, "{err}");
    let cfg = crate::util::tiny_config(t.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&tiny_dataset().display().to_string(), &ds.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let run = t.path().join("run");
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();
    let (ok, _, err) = harness(&["train", cfg.to_str().unwrap(), "--out", run.to_str().unwrap(), "--set", "train.epochs=1", "--cache-dir", &cache]);
    assert!(ok, "{err}");
    let row = ohem_harness::rundir::read_metrics(&run.join("metrics.csv")).unwrap().remove(0);
    let out = t.path().join("dets.json");
    let (ok, stdout, err) = harness(&["detect", run.to_str().unwrap(), "--out", out.to_str().unwrap(), "--cache-dir", &cache]);
    assert!(ok && stdout.contains("instances_test.json"), "{stdout}{err}");
    let gt = ds.join("annotations/instances_test.json");
    let eval = |metric: &str| -> serde_json::Value {
        let (ok, out_, err) = harness(&["eval", gt.to_str().unwrap(), "--dets", out.to_str().unwrap(), "--metric", metric, "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out_).unwrap()
    };
    assert_eq!(eval("voc07")["map"].as_f64(), row.map_voc07);
    let c = eval("coco");
    for (key, logged) in ohem_harness::eval::coco::SUMMARY_KEYS.iter().zip(row.coco()) {
        assert_eq!(c[key].as_f64().filter(|v| *v >= 0.0), logged, "{key}");
    }
    assert_clean_failure(&["detect", run.to_str().unwrap(), "--out", t.path().join("voc").to_str().unwrap(), "--format", "voc"], &["is a COCO split", "--format coco"]);
}

/// `bench samplers --detector faster_rcnn` times the trainer's Faster R-CNN step: at a pinned
/// count (the RPN's top N before and after an NMS that suppresses none) every kind's head sees
/// that many proposals an image plus the ground truth, then the RPN as trained (NMS 0.7) decides
/// its own count; Fast R-CNN's HNM and bookkeeping lines are left out.
#[test]
fn bench_samplers_times_the_faster_rcnn_step_at_a_pinned_proposal_count() {
    let (ok, out, err) = crate::util::harness(&["bench", "samplers", "--detector", "faster_rcnn", "--iters", "1", "--proposals", "40"]);
    assert!(ok, "{out}\n{err}");
    let (pinned, trained) = out.split_once("Faster R-CNN as trained").unwrap_or_else(|| panic!("no as-trained pass: {out}"));
    assert!(pinned.contains("the RPN's top 40 proposals per image by objectness"), "{out}");
    let per_image = |text: &str| -> Vec<f64> { text.lines().filter_map(|l| l.split(" RoIs/image").next().filter(|_| l.contains(" RoIs/image")).and_then(|h| h.rsplit(' ').next()).map(|v| v.parse().unwrap())).collect() };
    let (p, t) = (per_image(pinned), per_image(trained));
    assert_eq!((p.len(), t.len()), (4, 4), "{out}");
    // 40 proposals (a few may fall under min_size after clipping) and each image's few boxes
    assert!(p.iter().all(|&n| (36.0..=60.0).contains(&n)), "{p:?}\n{out}");
    assert!(t.iter().all(|&n| n > 1.0 && n <= 2010.0), "{t:?}\n{out}");
    assert!(!out.contains("HNM mining pass") && !out.contains("per-class bookkeeping"), "{out}");
}

/// The peer of `bench samplers --detector faster_rcnn`, where the peer venv is installed (not in
/// CI): torchvision's RPN with the settings the harness passes, at a pinned count (top 50 before
/// and after an NMS of 1.0), hands every kind's head 50 proposals an image plus the peer's 3
/// ground-truth boxes, and its losses join the step's.
#[test]
fn bench_peer_runs_torchvisions_rpn_at_the_pinned_count() {
    let Some(python) = crate::util::peer_python() else {
        eprintln!("skipped: no torch + torchvision venv (scripts/peer-venv.sh makes one)");
        return;
    };
    let out = std::process::Command::new(&python)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["scripts/bench_peer.py", "--detector", "faster_rcnn", "--iters", "1", "--proposals", "10", "--size", "64x96", "--stride", "8", "--freeze-bn"])
        .args(["--rpn-pre-nms", "50", "--rpn-post-nms", "50", "--rpn-nms", "1.0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["detector"], "faster_rcnn");
    for kind in ["fixed_ratio", "ohem", "ohem_masked", "all"] {
        assert_eq!(v["rois_per_image"][kind].as_f64(), Some(53.0), "{kind}: {v}");
        assert!(v["steps"][kind].as_f64().is_some_and(|s| s > 0.0), "{kind}: {v}");
    }
}
