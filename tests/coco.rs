//! COCO: the instances reader's errors, the box conversion, hand-computed
//! COCO AP cases, and parity with pycocotools 2.0.11 on random cases.

use std::path::{Path, PathBuf};

use ohem_harness::data::coco::{coco_to_voc, voc_to_coco, CocoFile};
use ohem_harness::eval::coco::{evaluate, random_case, DetBox, GtBox, SUMMARY_KEYS};
use rand::{Rng, SeedableRng};

fn gt(image_id: i64, category_id: i64, bbox: [f64; 4], iscrowd: bool) -> GtBox {
    GtBox { image_id, category_id, bbox, area: bbox[2] * bbox[3], iscrowd }
}

fn det(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> DetBox {
    DetBox { image_id, category_id, bbox, score }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn coco_box_round_trip() {
    // whole pixels: [x, y, w, h] = [0, 0, 10, 5] covers pixels 1..=10 x 1..=5 (VOC, 1-based inclusive)
    assert_eq!(coco_to_voc([0.0, 0.0, 10.0, 5.0]), [1.0, 1.0, 10.0, 5.0]);
    assert_eq!(voc_to_coco([1.0, 1.0, 10.0, 5.0]), [0.0, 0.0, 10.0, 5.0]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..1000 {
        // whole and half pixels are exact in f32
        let b = [rng.random_range(0..500) as f64 / 2.0, rng.random_range(0..500) as f64 / 2.0, rng.random_range(2..300) as f64 / 2.0, rng.random_range(2..300) as f64 / 2.0];
        assert_eq!(voc_to_coco(coco_to_voc(b)), b);
    }
}

#[test]
fn coco_ap_hand_computed() {
    let imgs = [1];
    // one box, one exact detection: every threshold matches, AP = AR = 1
    let g = [gt(1, 1, [10.0, 10.0, 50.0, 50.0], false)];
    let r = evaluate(&imgs, &[1], &g, &[det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9)]);
    assert!(close(r.stats[0], 1.0) && close(r.stats[8], 1.0), "{:?}", r.stats);
    // IoU 0.62 (the detection is [10, 10, 31, 50]: 1550 / 2500): matches at 0.50, 0.55, 0.60 of the 10 thresholds
    let r = evaluate(&imgs, &[1], &g, &[det(1, 1, [10.0, 10.0, 31.0, 50.0], 0.9)]);
    assert!(close(r.stats[0], 0.3), "AP {}", r.stats[0]);
    assert!(close(r.stats[1], 1.0) && close(r.stats[2], 0.0), "AP50 {} AP75 {}", r.stats[1], r.stats[2]);
    assert!(close(r.stats[8], 0.3), "AR100 {}", r.stats[8]);
    // area 2500 is medium: small and large have no ground truth (−1); medium as all
    assert!(close(r.stats[3], -1.0) && close(r.stats[4], 0.3) && close(r.stats[5], -1.0), "{:?}", r.stats);
    // a false positive of higher score first: precision 1/2 at recall 1 → AP50 = 0.5 (101 points, all at 0.5)
    let r = evaluate(&imgs, &[1], &g, &[det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.5), det(1, 1, [200.0, 200.0, 20.0, 20.0], 0.9)]);
    assert!(close(r.stats[1], 0.5), "AP50 {}", r.stats[1]);
    // the same false positive on a crowd region (inside it: IoU over the detection's area = 1) is ignored
    let g2 = [g[0].clone(), gt(1, 1, [190.0, 190.0, 60.0, 60.0], true)];
    let r = evaluate(&imgs, &[1], &g2, &[det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.5), det(1, 1, [200.0, 200.0, 20.0, 20.0], 0.9)]);
    assert!(close(r.stats[1], 1.0), "AP50 with the crowd region {}", r.stats[1]);
    // a crowd region matches many detections: two on it, both ignored
    let r = evaluate(&imgs, &[1], &g2, &[det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.5), det(1, 1, [200.0, 200.0, 20.0, 20.0], 0.9), det(1, 1, [195.0, 195.0, 20.0, 20.0], 0.8)]);
    assert!(close(r.stats[1], 1.0), "AP50 with two on the crowd region {}", r.stats[1]);
    // a duplicate of a matched box is a false positive
    let r = evaluate(&imgs, &[1], &g, &[det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9), det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.8)]);
    assert!(close(r.stats[1], 1.0) && close(r.stats[8], 1.0), "{:?}", r.stats);
    // an area of exactly 32² is small and medium
    let g3 = [GtBox { area: 1024.0, ..gt(1, 1, [0.0, 0.0, 32.0, 32.0], false) }];
    let r = evaluate(&imgs, &[1], &g3, &[det(1, 1, [0.0, 0.0, 32.0, 32.0], 0.9)]);
    assert!(close(r.stats[3], 1.0) && close(r.stats[4], 1.0) && close(r.stats[5], -1.0), "{:?}", r.stats);
    // a category without ground truth is left out of the mean (not counted as 0)
    let r = evaluate(&imgs, &[1, 7], &g, &[det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9), det(1, 7, [10.0, 10.0, 50.0, 50.0], 0.9)]);
    assert!(close(r.stats[0], 1.0) && r.per_category[1].is_none(), "{:?}", r);
    // at most 100 detections per image and category: the exact box at rank 101 is not seen
    let mut d: Vec<DetBox> = (0..100).map(|i| det(1, 1, [300.0 + i as f64, 300.0, 5.0, 5.0], 0.9)).collect();
    d.push(det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.1));
    let r = evaluate(&imgs, &[1], &g, &d);
    assert!(close(r.stats[8], 0.0), "AR100 {}", r.stats[8]);
    // ties keep input order: two detections of score 0.9, the false positive first → AP50 0.5; swapped → 1
    let tp = det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9);
    let fp = det(1, 1, [200.0, 200.0, 20.0, 20.0], 0.9);
    assert!(close(evaluate(&imgs, &[1], &g, &[fp.clone(), tp.clone()]).stats[1], 0.5));
    assert!(close(evaluate(&imgs, &[1], &g, &[tp, fp]).stats[1], 1.0));
}

/// Where the pycocotools venv's python is: `OHEM_COCO_PYTHON` (set by
/// scripts/test.sh), else the venv that scripts/coco-venv.sh makes.
fn reference_python() -> PathBuf {
    if let Some(p) = std::env::var_os("OHEM_COCO_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("OHEM_CACHE").map(PathBuf::from).or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("ohem-harness"))).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ohem-harness"));
    let p = cache.join("coco-venv/bin/python");
    assert!(p.exists(), "pycocotools is not installed: run ./scripts/coco-venv.sh (./scripts/test.sh does)");
    p
}

fn our_stats(gt_path: &Path, dets: &serde_json::Value) -> [f64; 12] {
    let f = CocoFile::read(gt_path).expect("a valid case");
    let d: Vec<DetBox> = serde_json::from_value(dets.clone()).unwrap();
    let imgs: Vec<i64> = f.images.iter().map(|i| i.id).collect();
    let cats: Vec<i64> = f.categories.iter().map(|c| c.id).collect();
    evaluate(&imgs, &cats, &ohem_harness::eval::coco::gt_of_file(&f), &d).stats
}

#[test]
fn coco_ap_matches_pycocotools() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for seed in 0..60 {
        let (g, d) = random_case(seed, 6, 4);
        let d = serde_json::to_value(&d).unwrap();
        let c = dir.path().join(format!("case{seed}"));
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("gt.json"), g.to_string()).unwrap();
        std::fs::write(c.join("dets.json"), d.to_string()).unwrap();
        cases.push((c, d));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/coco_reference.py");
    let out = std::process::Command::new(reference_python()).arg(&script).args(cases.iter().map(|c| &c.0)).output().expect("running pycocotools");
    assert!(out.status.success(), "pycocotools failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "2.0.11", "the reference is pycocotools 2.0.11");
    let mut checked = 0;
    for ((c, d), r) in cases.iter().zip(v["cases"].as_array().unwrap()) {
        let theirs: Vec<f64> = r["stats"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let ours = our_stats(&c.join("gt.json"), d);
        for (k, (a, b)) in SUMMARY_KEYS.iter().zip(ours.iter().zip(&theirs)) {
            assert!((a - b).abs() <= 1e-6, "{}: {k} ours {a} pycocotools {b}", c.display());
            checked += (*b > -1.0) as usize;
        }
    }
    // the cases measure something: most summaries have a value
    assert!(checked > 60 * 8, "only {checked} summaries were measured");
}

fn expect_err(json: &str, needles: &[&str]) {
    let p = Path::new("instances_x.json");
    let e = CocoFile::parse(p, json).expect_err("must be refused").to_string();
    assert!(e.contains("instances_x.json"), "{e}");
    for n in needles {
        assert!(e.contains(n), "{e:?} lacks {n:?}");
    }
}

#[test]
fn bad_instances_files_are_refused_with_the_id() {
    let img = r#"{"id": 7, "width": 100, "height": 80, "file_name": "a.jpg"}"#;
    let cat = r#"{"id": 3, "name": "tree"}"#;
    let file = |anns: &str| format!(r#"{{"images": [{img}], "categories": [{cat}], "annotations": [{anns}]}}"#);
    expect_err("{\"images\": [", &["malformed JSON"]);
    expect_err(r#"{"images": []}"#, &["categories"]);
    expect_err(&file(r#"{"id": 1, "image_id": 7, "category_id": 3}"#), &["annotation id 1", "bbox"]);
    expect_err(&file(r#"{"id": 1, "image_id": 8, "category_id": 3, "bbox": [1, 1, 5, 5]}"#), &["annotation id 1", "image_id 8"]);
    expect_err(&file(r#"{"id": 1, "image_id": 7, "category_id": 4, "bbox": [1, 1, 5, 5]}"#), &["annotation id 1", "category_id 4"]);
    expect_err(&file(r#"{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]}, {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]}"#), &["annotation id 1 appears twice"]);
    expect_err(&file(r#"{"id": 2, "image_id": 7, "category_id": 3, "bbox": [1, 1, 0, 5]}"#), &["annotation id 2", "not positive"]);
    expect_err(&file(r#"{"id": 2, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, -1]}"#), &["annotation id 2", "not positive"]);
    expect_err(&file(r#"{"id": 2, "image_id": 7, "category_id": 3, "bbox": [100, 1, 5, 5]}"#), &["annotation id 2", "wholly outside"]);
    expect_err(&file(r#"{"id": 2, "image_id": 7, "category_id": 3, "bbox": [-10, 1, 10, 5]}"#), &["annotation id 2", "wholly outside"]);
    expect_err(&format!(r#"{{"images": [{img}, {img}], "categories": [{cat}]}}"#), &["image id 7 appears twice"]);
    expect_err(&format!(r#"{{"images": [{{"id": 9, "width": 10, "file_name": "b.jpg"}}], "categories": [{cat}]}}"#), &["image id 9", "height"]);
    expect_err(&format!(r#"{{"images": [{img}], "categories": [{cat}, {cat}]}}"#), &["category id 3 appears twice"]);
    // sparse ids, an image without annotations, a crowd region: accepted
    let ok = format!(r#"{{"images": [{img}, {{"id": 9, "width": 10, "height": 10, "file_name": "b.png"}}], "categories": [{{"id": 90, "name": "dead"}}, {cat}], "annotations": [{{"id": 5, "image_id": 7, "category_id": 90, "bbox": [0, 0, 10, 8], "iscrowd": 1}}]}}"#);
    let f = CocoFile::parse(Path::new("ok.json"), &ok).unwrap();
    assert_eq!(f.classes(), ["tree", "dead"]);
    let anns = f.annotations(Path::new("imgs"));
    assert_eq!(anns.len(), 2);
    assert_eq!(anns[0].objects[0].class, 1);
    assert!(anns[0].objects[0].crowd);
    assert_eq!(anns[0].objects[0].bbox, [1.0, 1.0, 10.0, 8.0]);
    assert!(anns[1].objects.is_empty());
    assert_eq!(Path::new(&anns[1].filename), Path::new("imgs/b.png"));
}

fn outcome(r: &ohem_harness::rundir::EpochRow) -> Vec<Option<f64>> {
    let mut v = vec![Some(r.loss), Some(r.loss_cls), Some(r.loss_bbox), Some(r.fg_fraction), Some(r.sel_loss), r.map_voc07, r.map_voc10];
    v.extend(r.coco());
    v
}

/// The tiny dataset converted to COCO (`harness convert`) trains the run the
/// VOC layout trains: the same losses, VOC mAP and COCO summaries, bit for bit.
/// With crowd regions in both splits and a backbone pre-trained on the data:
/// one pre-training key (so one backbone, crowds no samples of it) and one run.
#[test]
fn the_same_data_as_voc_and_as_coco_trains_the_same_run() {
    use ohem_harness::config::TrainConfig;
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    // the tiny data with the first object of every third image a crowd region
    let voc = crate::util::copy_of(crate::util::tiny_dataset());
    let ds = ohem_harness::data::Dataset::open(voc.path()).unwrap();
    let mut crowds = 0;
    for split in ["trainval", "test"] {
        for id in ds.split_ids(split).unwrap().iter().step_by(3) {
            let path = ds.annotation_path(id);
            let xml = std::fs::read_to_string(&path).unwrap();
            if let Some(at) = xml.find("<difficult>0</difficult>") {
                std::fs::write(&path, format!("{}<difficult>1</difficult><iscrowd>1</iscrowd>{}", &xml[..at], &xml[at + "<difficult>0</difficult>".len()..])).unwrap();
                crowds += 1;
            }
        }
    }
    assert!(crowds >= 4, "{crowds} crowd regions");
    let coco_root = t.path().join("coco");
    let (ok, _, err) = crate::util::harness(&["convert", voc.path().to_str().unwrap(), "--out", coco_root.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(coco_root.join("annotations/instances_trainval.json").is_file() && coco_root.join("images").is_dir());
    let path = crate::util::tiny_config(t.path(), "test:\n  eval_every: 1\n");
    let pre = ["model.init=pretrained", "pretrain.source=both", "pretrain.synth_images=10", "pretrain.epochs=1", "pretrain.window=48", "pretrain.batch_size=16", "pretrain.crops_per_object=1"].map(String::from);
    let with = |root: &std::path::Path| TrainConfig::load(&path, &[pre.to_vec(), vec![format!("dataset.root={}", root.display())]].concat()).unwrap();
    let (voc_cfg, coco_cfg) = (with(voc.path()), with(&coco_root));
    let ds = ohem_harness::data::Dataset::from_config(&coco_cfg.dataset).unwrap();
    assert!(ds.coco.is_some(), "the COCO layout is detected from the root");
    assert!(ds.load_split("trainval").unwrap().iter().flat_map(|a| &a.objects).any(|o| o.crowd && !o.difficult));
    let key = |c: &TrainConfig| ohem_harness::pretrain::key_of(c).unwrap().0;
    assert_eq!(key(&voc_cfg), key(&coco_cfg), "one pre-training for the same data in either layout");
    let ra = ohem_harness::trainer::train(&voc_cfg, &t.path().join("voc-run"), &crate::util::test_opts()).unwrap();
    let rb = ohem_harness::trainer::train(&coco_cfg, &t.path().join("coco-run"), &crate::util::test_opts()).unwrap();
    assert_eq!(ra.len(), 2);
    assert!(ra.iter().all(|r| r.map_voc07.is_some() && r.coco_ap.is_some()), "every epoch is evaluated, COCO summaries included");
    let (oa, ob): (Vec<_>, Vec<_>) = (ra.iter().map(outcome).collect(), rb.iter().map(outcome).collect());
    assert_eq!(oa, ob, "VOC and COCO layouts of the same data");
}

/// `harness make-dataset --format coco` and `harness eval <instances.json>
/// --dets <results.json> --metric coco --json`: the ground truth as
/// detections scores 1 everywhere measured; a result naming an unknown image
/// is refused with the file and the entry.
#[test]
fn eval_reads_coco_results_against_an_instances_file() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("c");
    let (ok, out, err) = crate::util::harness(&["make-dataset", "--out", root.to_str().unwrap(), "--size", "tiny", "--format", "coco"]);
    assert!(ok, "{out}{err}");
    let ann = root.join("annotations/instances_test.json");
    let f = CocoFile::read(&ann).unwrap();
    assert!(!f.annotations.is_empty());
    let dets: Vec<DetBox> = f.annotations.iter().map(|a| det(a.image_id, a.category_id, a.bbox, 1.0)).collect();
    let res = t.path().join("results.json");
    std::fs::write(&res, serde_json::to_string(&dets).unwrap()).unwrap();
    let (ok, out, err) = crate::util::harness(&["eval", ann.to_str().unwrap(), "--dets", res.to_str().unwrap(), "--metric", "coco", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.keys().map(String::as_str).collect::<Vec<_>>(), SUMMARY_KEYS);
    for (k, x) in &v {
        let x = x.as_f64().unwrap();
        // AR at 1 and 10 detections per image and class miss what is beyond them
        let capped = k == "AR1" || k == "AR10";
        assert!(x == -1.0 || (x - 1.0).abs() < 1e-12 || (capped && x > 0.0 && x < 1.0), "{k} = {x}");
    }
    assert_eq!(v["AP"].as_f64(), Some(1.0));
    // VOC mAP from the same files
    let (ok, out, err) = crate::util::harness(&["eval", ann.to_str().unwrap(), "--dets", res.to_str().unwrap(), "--metric", "voc07", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((v["map"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{v}");
    // an unknown image id
    std::fs::write(&res, r#"[{"image_id": 99999, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}]"#).unwrap();
    let (ok, _, err) = crate::util::harness(&["eval", ann.to_str().unwrap(), "--dets", res.to_str().unwrap(), "--metric", "coco"]);
    assert!(!ok && err.contains("results.json") && err.contains("image_id 99999") && !err.contains("panicked"), "{err}");
}

/// VOC → COCO → VOC keeps every annotation and image byte.
#[test]
fn convert_round_trips() {
    use ohem_harness::data::Dataset;
    let t = tempfile::tempdir().unwrap();
    let src = crate::util::tiny_dataset();
    let (c, v) = (t.path().join("coco"), t.path().join("voc"));
    for (from, to) in [(src, &c), (&c, &v)] {
        let (ok, out, err) = crate::util::harness(&["convert", from.to_str().unwrap(), "--out", to.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
    }
    let (a, b) = (Dataset::open(src).unwrap(), Dataset::open(&v).unwrap());
    assert_eq!(a.classes, b.classes);
    for split in ["trainval", "test"] {
        let (sa, sb) = (a.load_split(split).unwrap(), b.load_split(split).unwrap());
        assert_eq!(sa.len(), sb.len());
        for (x, y) in sa.iter().zip(&sb) {
            // ids come back from the file names COCO holds (000001.jpg → 000001)
            assert_eq!(x.id, y.id);
            let strip = |o: &ohem_harness::data::Object| (o.name.clone(), o.class, o.bbox, o.difficult, o.crowd);
            assert_eq!(x.objects.iter().map(strip).collect::<Vec<_>>(), y.objects.iter().map(strip).collect::<Vec<_>>(), "image {}", x.id);
            assert_eq!(std::fs::read(a.image_path(&x.id)).unwrap(), std::fs::read(b.image_path(&y.id)).unwrap());
        }
    }
    // an existing output is refused, and nothing is written beside it
    let (ok, _, err) = crate::util::harness(&["convert", src.to_str().unwrap(), "--out", c.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
}

/// A VOC root whose two splits have ids that are not numbers (tiles: `a_x0_y0`, `b_x0_y0`):
/// VOC → COCO gives image ids unique over both splits, and COCO → VOC gives each split its
/// own images back, byte for byte (numbering each split from 1 put both splits' images in
/// one `JPEGImages/<id>.jpg` and both split files listed the same ids).
#[test]
fn converting_two_splits_keeps_them_apart() {
    use ohem_harness::data::Dataset;
    let t = tempfile::tempdir().unwrap();
    let src = crate::util::tiny_dataset();
    let voc = t.path().join("voc");
    let a = Dataset::open(src).unwrap();
    let b = Dataset { root: voc.clone(), ..a.clone() };
    b.write_classes().unwrap();
    for (split, pre) in [("trainval", "tv_"), ("test", "te_")] {
        let ids: Vec<String> = a.split_ids(split).unwrap().into_iter().take(4).collect();
        for id in &ids {
            std::fs::create_dir_all(voc.join("JPEGImages")).unwrap();
            std::fs::copy(a.image_path(id), b.image_path(&format!("{pre}{id}"))).unwrap();
            std::fs::create_dir_all(voc.join("Annotations")).unwrap();
            std::fs::copy(a.annotation_path(id), b.annotation_path(&format!("{pre}{id}"))).unwrap();
        }
        std::fs::create_dir_all(voc.join("ImageSets/Main")).unwrap();
        std::fs::write(b.split_path(split), ids.iter().map(|i| format!("{pre}{i}\n")).collect::<String>()).unwrap();
    }
    let (c, back) = (t.path().join("coco"), t.path().join("back"));
    ohem_harness::data::coco::convert(&voc, &c, &[]).unwrap();
    let mut all = Vec::new();
    for split in ["trainval", "test"] {
        let f = ohem_harness::data::coco::CocoFile::read(&c.join(format!("annotations/instances_{split}.json"))).unwrap();
        all.extend(f.images.iter().map(|i| i.id));
    }
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 8, "COCO image ids shared between splits: {all:?}");
    ohem_harness::data::coco::convert(&c, &back, &[]).unwrap();
    let r = Dataset::open(&back).unwrap();
    for split in ["trainval", "test"] {
        let (want, got) = (b.split_ids(split).unwrap(), r.split_ids(split).unwrap());
        assert_eq!(want, got, "split {split}");
        for id in &got {
            assert!(std::fs::read(b.image_path(id)).unwrap() == std::fs::read(r.image_path(id)).unwrap(), "{split} image {id} came back with other bytes");
        }
    }
}

/// A COCO dataset whose splits number their images from 1 each, as annotation tools export
/// them: distinct file names become distinct VOC images; one file stem in two image folders
/// is refused, naming both files, and nothing is written.
#[test]
fn coco_splits_numbered_from_one_convert_by_file_name() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("c");
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 9]));
    let write = |split: &str, names: &[&str], shade: u8| {
        std::fs::create_dir_all(root.join(split)).unwrap();
        let mut images = Vec::new();
        for (k, n) in names.iter().enumerate() {
            let mut im = img.clone();
            im.put_pixel(0, 0, image::Rgb([shade, k as u8, 0]));
            im.save(root.join(split).join(n)).unwrap();
            images.push(serde_json::json!({"id": k + 1, "width": 40, "height": 30, "file_name": n}));
        }
        let anns: Vec<_> = (0..names.len()).map(|k| serde_json::json!({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0})).collect();
        let f = serde_json::json!({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]});
        std::fs::write(root.join(format!("annotations/instances_{split}.json")), f.to_string()).unwrap();
    };
    write("train", &["t1.png", "t2.png"], 10);
    write("val", &["v1.png", "v2.png"], 200);
    let voc = t.path().join("voc");
    ohem_harness::data::coco::convert(&root, &voc, &[]).unwrap();
    let ds = ohem_harness::data::Dataset::open(&voc).unwrap();
    assert_eq!(ds.split_ids("train").unwrap(), ["t1", "t2"]);
    assert_eq!(ds.split_ids("val").unwrap(), ["v1", "v2"]);
    for (id, shade) in [("t1", 10u8), ("v1", 200)] {
        let a = ds.annotation(id).unwrap();
        let px = ds.load_image(&a).unwrap().get_pixel(0, 0).0[0] as i32;
        assert!((px - shade as i32).abs() < 12, "{id}: pixel {px}, its split's is {shade}");
    }
    // one stem, two files
    write("val", &["t1.png", "v2.png"], 200);
    let voc2 = t.path().join("voc2");
    let e = format!("{:#}", ohem_harness::data::coco::convert(&root, &voc2, &[]).unwrap_err());
    let (f1, f2) = (root.join("train/t1.png"), root.join("val/t1.png"));
    assert!(e.contains(&*f1.to_string_lossy()) && e.contains(&*f2.to_string_lossy()) && e.contains("\"t1\""), "{e}");
    assert!(!voc2.exists() && !t.path().join("voc2.partial").exists());
}

/// A COCO dataset's images: missing, undecodable, or of another size than
/// the file says: each error names the image file.
#[test]
fn bad_coco_images_are_refused_with_the_file() {
    use ohem_harness::config::DatasetConfig;
    use ohem_harness::data::Dataset;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("c");
    ohem_harness::data::coco::convert(crate::util::tiny_dataset(), &root, &[]).unwrap();
    let cfg = DatasetConfig { train_split: "test".into(), test_split: "test".into(), ..DatasetConfig::voc(&root) };
    let ds = Dataset::from_config(&cfg).unwrap();
    let anns = ds.load_split("test").unwrap();
    let (p0, p1) = (ds.image_path_of(&anns[0]), ds.image_path_of(&anns[1]));
    std::fs::remove_file(&p0).unwrap();
    let e = ds.load_image(&anns[0]).unwrap_err().to_string();
    assert!(e.contains(&*p0.to_string_lossy()) && e.contains("missing"), "{e}");
    std::fs::write(&p1, b"neither JPEG nor PNG").unwrap();
    let e = ds.load_image(&anns[1]).unwrap_err().to_string();
    assert!(e.contains(&*p1.to_string_lossy()) && e.contains("not a decodable image"), "{e}");
    // a size that disagrees with the file's width and height
    let mut wrong = anns[2].clone();
    wrong.width += 1;
    let e = ds.load_image(&wrong).unwrap_err().to_string();
    assert!(e.contains("differs from the annotation"), "{e}");
    // and a PNG is read
    let img = ds.load_image(&anns[3]).unwrap();
    let png = ds.image_path_of(&anns[3]);
    img.save_with_format(&png, image::ImageFormat::Png).unwrap();
    assert_eq!(ds.load_image(&anns[3]).unwrap(), img);
}

/// COCO boxes within a pixel of the right or bottom edge, or under a pixel
/// wide, read as valid VOC boxes (1 <= x1 <= x2 <= width): the 1-based pixel
/// they start in, clipped to the image, at least one pixel wide. Boxes that
/// were valid before keep their numbers exactly. `convert` to VOC writes XML
/// that the VOC reader reads back, with the same boxes.
#[test]
fn coco_border_boxes_read_valid_and_convert_to_voc() {
    use ohem_harness::data::coco::convert;
    use ohem_harness::data::Dataset;
    let t = tempfile::tempdir().unwrap();
    let coco = t.path().join("coco");
    convert(crate::util::tiny_dataset(), &coco, &[]).unwrap();
    let ann_path = coco.join("annotations/instances_test.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ann_path).unwrap()).unwrap();
    let im = v["images"][0].clone();
    let (id, w, h) = (im["id"].as_i64().unwrap(), im["width"].as_f64().unwrap(), im["height"].as_f64().unwrap());
    let (wf, hf) = (w as f32, h as f32);
    let cat = v["categories"][0]["id"].as_i64().unwrap();
    // [x, y, w, h] and the VOC box expected, by hand
    let cases: Vec<([f64; 4], [f32; 4])> = vec![
        // starts in the last column, ends before its right side: that column
        ([w - 0.5, 2.0, 0.4, 3.0], [wf, 3.0, wf, 5.0]),
        // the same at the bottom
        ([2.0, h - 0.4, 3.0, 0.3], [3.0, hf, 5.0, hf]),
        // under a pixel wide, inside the image: the pixel it starts in
        ([5.0, 3.0, 0.4, 2.0], [6.0, 4.0, 6.0, 5.0]),
        // starts left of the image and ends in its first column
        ([-0.5, 0.0, 1.0, 4.0], [1.0, 1.0, 1.0, 4.0]),
        // starts in the last column and row and runs past the image
        ([w - 0.8, h - 0.8, 5.0, 5.0], [wf, hf, wf, hf]),
        // valid before: unchanged, whole pixels and fractions
        ([3.0, 2.0, 4.0, 5.0], [4.0, 3.0, 7.0, 7.0]),
        ([w - 10.0, 1.0, 15.0, 3.0], [wf - 9.0, 2.0, wf, 4.0]),
        ([2.25, 1.5, 5.5, 3.25], [3.25, 2.5, 7.75, 4.75]),
        ([0.0, 0.0, w, h], [1.0, 1.0, wf, hf]),
    ];
    let anns = v["annotations"].as_array_mut().unwrap();
    let first_new = anns.len() as i64 + 1000;
    for (k, (b, _)) in cases.iter().enumerate() {
        anns.push(serde_json::json!({"id": first_new + k as i64, "image_id": id, "category_id": cat, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}));
    }
    std::fs::write(&ann_path, v.to_string()).unwrap();
    let f = CocoFile::read(&ann_path).unwrap();
    let a = f.annotations(Path::new("")).into_iter().find(|a| a.id == id.to_string()).unwrap();
    let got: Vec<[f32; 4]> = a.objects[a.objects.len() - cases.len()..].iter().map(|o| o.bbox).collect();
    let want: Vec<[f32; 4]> = cases.iter().map(|c| c.1).collect();
    assert_eq!(got, want);
    assert!(a.objects.iter().all(|o| o.bbox[0] >= 1.0 && o.bbox[1] >= 1.0 && o.bbox[0] <= o.bbox[2] && o.bbox[1] <= o.bbox[3] && o.bbox[2] <= wf && o.bbox[3] <= hf));
    // to VOC and back
    let voc = t.path().join("voc");
    convert(&coco, &voc, &["test".to_string()]).unwrap();
    let back = Dataset::open(&voc).unwrap().load_split("test").unwrap();
    // VOC names the image by its file's stem
    let stem = Path::new(&a.filename).file_stem().unwrap().to_str().unwrap().to_string();
    let b = back.iter().find(|b| b.id == stem).unwrap();
    assert_eq!(b.objects.iter().map(|o| o.bbox).collect::<Vec<_>>(), a.objects.iter().map(|o| o.bbox).collect::<Vec<_>>());
}

/// `harness eval INSTANCES.json --dets RESULTS.json`: results whose category
/// the ground truth lacks are left out, as pycocotools' COCOeval evaluates only
/// the ground truth's categories, with a warning naming the results file, how
/// many results and which category ids. The summaries are those without them.
#[test]
fn eval_ignores_results_of_categories_the_ground_truth_lacks() {
    let t = tempfile::tempdir().unwrap();
    let coco = t.path().join("coco");
    ohem_harness::data::coco::convert(crate::util::tiny_dataset(), &coco, &[]).unwrap();
    let ann = coco.join("annotations/instances_test.json");
    let f = CocoFile::read(&ann).unwrap();
    // imperfect detections: shifted ground truth with mixed scores, and a false positive per image
    let mut dets: Vec<DetBox> = f.annotations.iter().enumerate().map(|(k, a)| det(a.image_id, a.category_id, [a.bbox[0] + (k % 4) as f64, a.bbox[1], a.bbox[2], a.bbox[3]], 0.3 + (k % 7) as f64 / 10.0)).collect();
    dets.extend(f.images.iter().map(|im| det(im.id, f.categories[0].id, [0.0, 0.0, 6.0, 6.0], 0.8)));
    let plain = t.path().join("plain.json");
    std::fs::write(&plain, serde_json::to_string(&dets).unwrap()).unwrap();
    let image = f.images[0].id;
    let mut with = dets.clone();
    with.insert(3, det(image, 999, [1.0, 1.0, 8.0, 8.0], 0.95));
    with.push(det(image, 1000, [2.0, 2.0, 8.0, 8.0], 0.5));
    with.push(det(f.images[1].id, 999, [3.0, 3.0, 8.0, 8.0], 0.99));
    let extra = t.path().join("extra-cats.json");
    std::fs::write(&extra, serde_json::to_string(&with).unwrap()).unwrap();
    for metric in ["coco", "voc07"] {
        let run = |res: &Path| crate::util::harness(&["eval", ann.to_str().unwrap(), "--dets", res.to_str().unwrap(), "--metric", metric, "--json"]);
        let (ok, want, err) = run(&plain);
        assert!(ok && err.is_empty(), "{err}");
        let (ok, got, err) = run(&extra);
        assert!(ok, "{metric}: {err}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&got).unwrap(), serde_json::from_str::<serde_json::Value>(&want).unwrap(), "{metric}");
        assert!(err.contains("warning") && err.contains("extra-cats.json") && err.contains("3 results") && err.contains("999, 1000"), "{metric}: {err}");
    }
    let v: serde_json::Value = serde_json::from_str(&crate::util::harness(&["eval", ann.to_str().unwrap(), "--dets", plain.to_str().unwrap(), "--metric", "coco", "--json"]).1).unwrap();
    let ap = v["AP"].as_f64().unwrap();
    assert!(ap > 0.0 && ap < 1.0, "a case where leaving results out could move AP: {ap}");
}

/// One parse of an instances file while it is in use: the dataset holds its training split's
/// parse, and every later read of the unchanged file (the annotations, the pre-training's key and
/// source) gets that same parse; a changed file is parsed again.
#[test]
fn an_instances_file_is_parsed_once_while_it_is_held() {
    use ohem_harness::config::DatasetConfig;
    use ohem_harness::data::coco::CocoFile;
    use ohem_harness::data::Dataset;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("c");
    ohem_harness::data::coco::convert(crate::util::tiny_dataset(), &root, &[]).unwrap();
    let ds = Dataset::from_config(&DatasetConfig::voc(&root)).unwrap();
    let ann = root.join("annotations/instances_trainval.json");
    let held = ds.coco_file("trainval").unwrap();
    assert!(std::sync::Arc::ptr_eq(&held, &CocoFile::read_shared(&ann).unwrap()), "a second read while the dataset holds the file");
    let again = Dataset::from_config(&DatasetConfig::voc(&root)).unwrap();
    assert!(std::sync::Arc::ptr_eq(&held, &again.coco_file("trainval").unwrap()), "a second dataset of the same root");
    // a changed file (another length) is parsed again, even while the old parse is held
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ann).unwrap()).unwrap();
    v["images"].as_array_mut().unwrap().truncate(3);
    let keep: Vec<i64> = v["images"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    v["annotations"].as_array_mut().unwrap().retain(|a| keep.contains(&a["image_id"].as_i64().unwrap()));
    std::fs::write(&ann, v.to_string()).unwrap();
    let fresh = CocoFile::read_shared(&ann).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&held, &fresh) && fresh.images.len() == 3);
    // the memo holds no parse itself: once nothing does, the next read parses again
    drop((held, ds, again, fresh));
    assert_eq!(CocoFile::read_shared(&ann).unwrap().images.len(), 3);
}
