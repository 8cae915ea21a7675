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
