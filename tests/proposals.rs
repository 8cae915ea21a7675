//! Selective search on the generated data, the cache, and the proposals file format.

use ohem_harness::data::Dataset;
use ohem_harness::proposals::{compute, from_file, read_proposals_file, recall_report, write_proposals_file, SsParams};

use crate::util::tiny_dataset;

#[test]
fn selective_search_covers_the_objects_and_the_cache_returns_the_same_boxes() {
    let ds = Dataset::open(tiny_dataset()).unwrap();
    let anns = ds.load_split("test").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let params = SsParams::default();
    let (boxes, stats) = compute(&ds, &anns, &params, Some(cache.path()), false).unwrap();
    assert_eq!((stats.computed, stats.from_cache), (anns.len(), 0));
    let r = recall_report(&anns, &boxes);
    assert!(r.recall_at_05 >= 0.9, "recall@0.5 {} on the tiny test split", r.recall_at_05);
    assert!(r.recall_at_07 <= r.recall_at_05 && r.abo > 0.5 && r.abo <= 1.0);
    for (a, bs) in anns.iter().zip(&boxes) {
        assert!(!bs.is_empty() && bs.len() <= params.max_boxes);
        for b in bs {
            assert!(b[0] >= 1.0 && b[1] >= 1.0 && b[2] <= a.width as f32 && b[3] <= a.height as f32, "{b:?} outside {}x{}", a.width, a.height);
            assert!(b[2] - b[0] + 1.0 >= params.min_side as f32 && b[3] - b[1] + 1.0 >= params.min_side as f32);
        }
    }
    let (again, stats) = compute(&ds, &anns, &params, Some(cache.path()), false).unwrap();
    assert_eq!((stats.computed, stats.from_cache), (0, anns.len()));
    assert_eq!(again, boxes);
    // another parameter set is another cache entry
    let other = SsParams { max_boxes: 10, ..params };
    let (few, stats) = compute(&ds, &anns, &other, Some(cache.path()), false).unwrap();
    assert_eq!(stats.computed, anns.len());
    assert!(few.iter().zip(&boxes).all(|(f, b)| f.len() <= 10 && b.starts_with(f)), "the cap keeps the best-ranked boxes");
}

#[test]
fn recall_report_by_hand() {
    use ohem_harness::data::{Annotation, Object};
    let o = |b: [f32; 4], difficult| Object { name: "disc".into(), class: 0, bbox: b, difficult, truncated: false, pose: String::new(), crowd: false, area: None };
    let anns = vec![Annotation { id: "a".into(), filename: String::new(), width: 100, height: 100, depth: 3, objects: vec![o([1., 1., 10., 10.], false), o([50., 50., 59., 59.], false), o([80., 80., 90., 90.], true)] }];
    // box 1 exact (IoU 1), box 2 covered at IoU 0.6 (60/100), difficult one ignored
    let props = vec![vec![[1., 1., 10., 10.], [50., 50., 59., 55.]]];
    let r = recall_report(&anns, &props);
    assert_eq!(r.gt_boxes, 2);
    assert!((r.recall_at_05 - 1.0).abs() < 1e-9 && (r.recall_at_07 - 0.5).abs() < 1e-9);
    assert!((r.abo - 0.8).abs() < 1e-6);
    assert!((r.mean_boxes_per_image - 2.0).abs() < 1e-9);
}

#[test]
fn proposals_file_round_trips_and_rejects_bad_lines() {
    let ds = Dataset::open(tiny_dataset()).unwrap();
    let anns = ds.load_split("test").unwrap();
    let boxes: Vec<Vec<[f32; 4]>> = anns.iter().map(|a| vec![[1., 1., a.width as f32, a.height as f32], [2., 3., 20., 30.]]).collect();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("props.txt");
    let ids: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
    write_proposals_file(&f, &ids, &boxes).unwrap();
    assert_eq!(from_file(&f, &anns).unwrap(), boxes);

    let bad = |text: &str, needles: &[&str]| {
        std::fs::write(&f, text).unwrap();
        let err = format!("{:#}", read_proposals_file(&f).and_then(|_| from_file(&f, &anns).map(|_| ())).unwrap_err());
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
    };
    bad("# header\n000017 1 1 5\n", &["props.txt:2", "4 fields"]);
    bad("000017 1 1 five 9\n", &["props.txt:1", "\"five\""]);
    bad("000017 9 1 5 9\n", &["props.txt:1", "x2 < x1"]);
    bad("000017 1 1 5 9\n", &["props.txt", "no proposals for image"]);
    let mut lines: String = ids.iter().map(|id| format!("{id} 1 1 5 5\n")).collect();
    lines.push_str(&format!("{} 1 1 5000 5\n", ids[0]));
    bad(&lines, &["props.txt", "outside"]);
}

/// The binary proposals file: what is written is read back, image by image,
/// as the text file reads it; a damaged or foreign file is an error naming it.
#[test]
fn binary_proposals_round_trip_and_refuse_damage() {
    use ohem_harness::proposals::binary::{is_binary, BinaryProposals};
    let ds = Dataset::open(tiny_dataset()).unwrap();
    let anns = ds.load_split("test").unwrap();
    let t = tempfile::tempdir().unwrap();
    let boxes: Vec<Vec<[f32; 4]>> = anns.iter().enumerate().map(|(i, a)| (0..i + 1).map(|k| [1.0 + k as f32, 2.0, a.width as f32 - k as f32, a.height as f32 - 0.5]).collect()).collect();
    let ids: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
    let (bin, txt) = (t.path().join("p.bin"), t.path().join("p.txt"));
    write_proposals_file(&bin, &ids, &boxes).unwrap();
    write_proposals_file(&txt, &ids, &boxes).unwrap();
    assert!(is_binary(&bin) && !is_binary(&txt));
    assert_eq!(from_file(&bin, &anns).unwrap(), boxes);
    assert_eq!(from_file(&txt, &anns).unwrap(), boxes);
    let f = BinaryProposals::open(&bin).unwrap();
    assert_eq!(f.ids(), ids.as_slice());
    assert_eq!(f.read(ids[2], anns[2].width, anns[2].height).unwrap(), boxes[2]);
    // damage: truncated, foreign, an image it lacks, a box outside its image
    let bytes = std::fs::read(&bin).unwrap();
    let cut = t.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = BinaryProposals::open(&cut).err().expect("truncated").to_string();
    assert!(e.contains("cut.bin") && e.contains("truncated"), "{e}");
    let e = BinaryProposals::open(&txt).err().expect("text").to_string();
    assert!(e.contains("p.txt") && e.contains("OHEMPRP1"), "{e}");
    let e = f.read("no-such-image", 10, 10).unwrap_err().to_string();
    assert!(e.contains("p.bin") && e.contains("no-such-image"), "{e}");
    let e = f.read(ids[3], 5, 5).unwrap_err().to_string();
    assert!(e.contains(ids[3]) && e.contains("inside its 5x5 image"), "{e}");
}

/// Training from a binary proposals file (read per image, never held) is
/// training from the same proposals as text, bit for bit.
#[test]
fn training_from_binary_proposals_is_training_from_text() {
    use ohem_harness::config::TrainConfig;
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let root = tiny_dataset().to_str().unwrap();
    let mut files = Vec::new();
    for ext in ["txt", "bin"] {
        for split in ["trainval", "test"] {
            let out = t.path().join(format!("{split}.{ext}"));
            let (ok, _, err) = crate::util::harness(&["proposals", root, "--split", split, "--cache-dir", crate::util::cache_dir().to_str().unwrap(), "--out", out.to_str().unwrap()]);
            assert!(ok, "{err}");
            files.push(out);
        }
    }
    let path = crate::util::tiny_config(t.path(), "");
    let run = |train: &std::path::Path, test: &std::path::Path, out: &str| {
        let cfg = TrainConfig::load(&path, &[format!("proposals.train_file={}", train.display()), format!("proposals.test_file={}", test.display())]).unwrap();
        ohem_harness::trainer::train(&cfg, &t.path().join(out), &crate::util::test_opts()).unwrap()
    };
    let a = run(&files[0], &files[1], "text");
    let b = run(&files[2], &files[3], "binary");
    let key = |r: &ohem_harness::rundir::EpochRow| (r.loss, r.loss_cls, r.loss_bbox, r.map_voc07, r.map_voc10);
    assert_eq!(a.iter().map(key).collect::<Vec<_>>(), b.iter().map(key).collect::<Vec<_>>());
}

/// A binary proposals file whose index is corrupt is refused at open, with an
/// error naming the file and the image (or the index entry): offsets near
/// `u64::MAX` that wrap when added to a length, boxes or ids outside their
/// block, an image count whose index size overflows. Never a panic, never an
/// allocation the size the index claims.
#[test]
fn binary_proposals_refuse_a_corrupt_index_at_open() {
    use ohem_harness::proposals::binary::BinaryProposals;
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good.bin");
    // 16-byte header, two 24-byte entries (64), ids "img-a" "img-b" at 64..74, boxes at 74..122
    write_proposals_file(&good, &["img-a", "img-b"], &[vec![[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 5.0, 5.0]], vec![[2.0, 2.0, 6.0, 6.0]]]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    assert_eq!(bytes.len(), 122);
    assert!(BinaryProposals::open(&good).is_ok());
    // an index entry's field: id offset 0, id length 8, box count 12, box offset 16
    fn entry(i: usize, field: usize) -> usize {
        16 + 24 * i + field
    }
    fn set(b: &mut [u8], at: usize, v: &[u8]) {
        b[at..at + v.len()].copy_from_slice(v);
    }
    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Patch, &[&str])> = vec![
        ("box offset that wraps past u64::MAX", Box::new(|b| set(b, entry(0, 16), &(u64::MAX - 15).to_le_bytes())), &["img-a"]),
        ("boxes inside the index", Box::new(|b| set(b, entry(1, 16), &16u64.to_le_bytes())), &["img-b"]),
        ("boxes starting in the id block", Box::new(|b| set(b, entry(0, 16), &70u64.to_le_bytes())), &["img-a"]),
        ("box count past the file", Box::new(|b| set(b, entry(0, 12), &u32::MAX.to_le_bytes())), &["img-a"]),
        ("id in the header", Box::new(|b| set(b, entry(0, 0), &0u64.to_le_bytes())), &["entry 0"]),
        ("id running into the boxes", Box::new(|b| set(b, entry(1, 0), &70u64.to_le_bytes())), &["entry 1"]),
        ("id offset that wraps with a 4 GiB length", Box::new(|b| { set(b, entry(1, 0), &(u64::MAX - u32::MAX as u64 + 50).to_le_bytes()); set(b, entry(1, 8), &u32::MAX.to_le_bytes()) }), &["entry 1"]),
        ("an image count whose index size wraps to 0", Box::new(|b| set(b, 8, &(u64::MAX / 24).to_le_bytes())), &[]),
        ("an image count past u64", Box::new(|b| set(b, 8, &u64::MAX.to_le_bytes())), &[]),
    ];
    let mut wrong = Vec::new();
    for (n, (what, patch, needles)) in cases.iter().enumerate() {
        let mut b = bytes.clone();
        patch(&mut b);
        let p = t.path().join(format!("corrupt{n}.bin"));
        std::fs::write(&p, &b).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        match std::panic::catch_unwind(|| BinaryProposals::open(&p).map(|_| ())) {
            Err(_) => wrong.push(format!("{what}: open panicked")),
            Ok(Ok(())) => wrong.push(format!("{what}: accepted at open")),
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                if !e.contains(&name) || !needles.iter().all(|s| e.contains(s)) {
                    wrong.push(format!("{what}: the error does not name {name} and {needles:?}: {e}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `harness proposals --rpn`: a Faster R-CNN run's proposals on a split, their recall at the
/// first N an image (never more than N boxes, recall not falling as N grows), and clear errors
/// for a Fast R-CNN run and an epoch without a checkpoint.
#[test]
fn a_trained_rpns_proposals_and_their_recall_at_top_n() {
    let t = tempfile::tempdir().unwrap();
    let cfg = crate::util::tiny_config(t.path(), "");
    let run = t.path().join("run");
    let (ok, _, err) = crate::util::harness(&["train", cfg.to_str().unwrap(), "--out", run.to_str().unwrap(), "--set", "model.detector=faster_rcnn"]);
    assert!(ok, "{err}");
    let out = t.path().join("rpn.txt");
    let (ok, stdout, err) = crate::util::harness(&["proposals", "--rpn", run.to_str().unwrap(), "--split", "test", "--top", "5,50", "--json", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let top = v["at_top"].as_array().unwrap();
    let (r5, r50) = (&top[0]["recall"], &top[1]["recall"]);
    assert_eq!((top[0]["top"].as_u64(), top[1]["top"].as_u64()), (Some(5), Some(50)));
    assert!(r5["mean_boxes_per_image"].as_f64().unwrap() <= 5.0 && v["recall"]["mean_boxes_per_image"].as_f64().unwrap() <= 50.0, "{v}");
    assert!(r5["recall_at_05"].as_f64().unwrap() <= r50["recall_at_05"].as_f64().unwrap());
    // the file holds every image's boxes, 1-based inside the image
    let ds = Dataset::open(tiny_dataset()).unwrap();
    let anns = ds.load_split("test").unwrap();
    let written = read_proposals_file(&out).unwrap();
    assert_eq!(written.len(), anns.len());
    for a in &anns {
        assert!(written[&a.id].iter().all(|b| b[0] >= 1.0 && b[1] >= 1.0 && b[2] <= a.width as f32 && b[3] <= a.height as f32 && b[0] <= b[2] && b[1] <= b[3]));
    }
    let (ok, _, err) = crate::util::harness(&["proposals", "--rpn", run.to_str().unwrap(), "--epoch", "7"]);
    assert!(!ok && err.contains("no checkpoint of epoch 7"), "{err}");
    let fast = t.path().join("fast");
    let (ok, _, err) = crate::util::harness(&["train", cfg.to_str().unwrap(), "--out", fast.to_str().unwrap(), "--set", "train.epochs=1", "--set", "train.lr_steps=[]"]);
    assert!(ok, "{err}");
    let (ok, _, err) = crate::util::harness(&["proposals", "--rpn", fast.to_str().unwrap()]);
    assert!(!ok && err.contains("fast_rcnn, which has no region proposal network") && !err.contains("panicked"), "{err}");
    // refused before selective search ran on its split: a fresh cache stays untouched
    let cache = t.path().join("fresh-cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness")).args(["proposals", "--rpn", fast.to_str().unwrap(), "--split", "test", "--quiet"]).env("OHEM_CACHE", &cache).output().unwrap();
    assert!(!out.status.success() && !cache.join("proposals").exists(), "{}", String::from_utf8_lossy(&out.stderr));
}
