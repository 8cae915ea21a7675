//! VOC evaluation: hand-computed cases, the IoU boundary, and a slow reference
//! written straight from the definition, compared on random inputs.

use ohem_harness::boxes::BBox;
use ohem_harness::data::{Annotation, Object};
use ohem_harness::eval::{average_precision, eval_class, evaluate, read_results_dir, write_results_dir, Detection, VocMetric};
use rand::{Rng, SeedableRng};

fn obj(class: usize, bbox: BBox, difficult: bool) -> Object {
    Object { name: format!("c{class}"), class, bbox, difficult, truncated: false, pose: "Unspecified".into(), crowd: false, area: None }
}

fn ann(id: &str, objects: Vec<Object>) -> Annotation {
    Annotation { id: id.into(), filename: format!("{id}.jpg"), width: 500, height: 500, depth: 3, objects }
}

/// A detection on image `image` (its index in the annotations).
fn det(image: u32, score: f32, bbox: BBox) -> Detection {
    Detection { image, score, bbox }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

const G1: BBox = [10., 10., 50., 50.];
const G2: BBox = [100., 100., 150., 140.];
const FAR: BBox = [300., 300., 320., 320.];

#[test]
fn perfect_detector_and_all_false_positives() {
    let anns = vec![ann("a", vec![obj(0, G1, false), obj(0, G2, false)])];
    let perfect = vec![det(0, 0.9, G1), det(0, 0.8, G2)];
    let junk = vec![det(0, 0.9, FAR), det(0, 0.8, FAR)];
    for m in [VocMetric::Voc07, VocMetric::Voc10] {
        assert!(close(eval_class(&anns, 0, &perfect, m).0.unwrap(), 1.0));
        assert!(close(eval_class(&anns, 0, &junk, m).0.unwrap(), 0.0));
        assert!(close(eval_class(&anns, 0, &[], m).0.unwrap(), 0.0), "a class with no detections has AP 0");
    }
}

#[test]
fn duplicates_are_false_positives() {
    // tp = [1, 0, 1], fp = [0, 1, 0]: rec = [.5, .5, 1], prec = [1, .5, 2/3]
    let anns = vec![ann("a", vec![obj(0, G1, false), obj(0, G2, false)])];
    let dets = vec![det(0, 0.9, G1), det(0, 0.8, [11., 11., 50., 50.]), det(0, 0.7, G2)];
    // 11-point: t <= .5 -> 1 (6 points); t >= .6 -> 2/3 (5 points)
    assert!(close(eval_class(&anns, 0, &dets, VocMetric::Voc07).0.unwrap(), (6.0 + 5.0 * 2.0 / 3.0) / 11.0));
    // all-point: .5 * 1 + .5 * 2/3
    assert!(close(eval_class(&anns, 0, &dets, VocMetric::Voc10).0.unwrap(), 0.5 + 0.5 * 2.0 / 3.0));
    assert_eq!(eval_class(&anns, 0, &dets, VocMetric::Voc10).2, 2);
}

#[test]
fn detections_matching_difficult_objects_are_ignored() {
    // the difficult box neither counts in npos nor makes its detection a TP or FP
    let anns = vec![ann("a", vec![obj(0, G1, true), obj(0, G2, false)])];
    let dets = vec![det(0, 0.9, G1), det(0, 0.8, G2)];
    for m in [VocMetric::Voc07, VocMetric::Voc10] {
        let (ap, npos, ntp) = eval_class(&anns, 0, &dets, m);
        assert_eq!((npos, ntp), (1, 1));
        assert!(close(ap.unwrap(), 1.0), "{m:?}: {ap:?}");
    }
    // a class with only difficult objects has no AP and stays out of the mAP
    let anns = vec![ann("a", vec![obj(0, G1, true), obj(1, G2, false)])];
    let classes = vec!["c0".to_string(), "c1".to_string()];
    let r = evaluate(&anns, &classes, &[vec![det(0, 0.9, G1)], vec![det(0, 0.9, G2)]], VocMetric::Voc07);
    assert_eq!(r.per_class[0].ap, None);
    assert!(close(r.map, 1.0));
}

#[test]
fn eleven_point_and_all_point_differ_where_expected() {
    // 4 objects; dets TP, FP, TP: rec = [.25, .25, .5], prec = [1, .5, 2/3]
    let anns = vec![ann("a", vec![obj(0, G1, false), obj(0, G2, false), obj(0, [200., 200., 240., 240.], false), obj(0, [400., 10., 450., 60.], false)])];
    let dets = vec![det(0, 0.9, G1), det(0, 0.8, FAR), det(0, 0.7, G2)];
    // 11-point: t in {0, .1, .2} -> 1; {.3, .4, .5} -> 2/3; t >= .6 -> 0
    let v07 = eval_class(&anns, 0, &dets, VocMetric::Voc07).0.unwrap();
    assert!(close(v07, (3.0 + 3.0 * 2.0 / 3.0) / 11.0), "{v07}");
    // all-point: .25 * 1 + .25 * 2/3 (recall never reaches beyond .5)
    let v10 = eval_class(&anns, 0, &dets, VocMetric::Voc10).0.unwrap();
    assert!(close(v10, 0.25 + 0.25 * 2.0 / 3.0), "{v10}");
}

#[test]
fn iou_of_exactly_half_is_a_match() {
    // gt 10x10 px, det the top 10x5 px: IoU = 50/100 = 0.5 exactly -> TP under the devkit's >=
    let anns = vec![ann("a", vec![obj(0, [1., 1., 10., 10.], false)])];
    assert!(close(eval_class(&anns, 0, &[det(0, 1.0, [1., 1., 10., 5.])], VocMetric::Voc07).0.unwrap(), 1.0));
    // one pixel row less: IoU 0.4 -> FP
    assert!(close(eval_class(&anns, 0, &[det(0, 1.0, [1., 1., 10., 4.])], VocMetric::Voc07).0.unwrap(), 0.0));
}

#[test]
fn matching_is_greedy_on_the_single_best_box() {
    // The det overlaps the matched A best and B at 0.5+: the devkit does not fall back to B.
    let a: BBox = [1., 1., 20., 20.];
    let b: BBox = [1., 6., 20., 25.];
    let anns = vec![ann("x", vec![obj(0, a, false), obj(0, b, false)])];
    let dets = vec![det(0, 0.9, a), det(0, 0.8, [1., 2., 20., 21.])];
    let (_, _, ntp) = eval_class(&anns, 0, &dets, VocMetric::Voc10);
    assert_eq!(ntp, 1, "second detection is a duplicate of A even though B is free");
}

// ---------------------------------------------------------------------------
// Slow reference, written from the definitions in ../shared/reference.md.

fn ref_iou(a: &BBox, b: &BBox) -> f64 {
    let (a, b) = (a.map(|v| v as f64), b.map(|v| v as f64));
    let iw = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - inter)
}

fn reference_ap(anns: &[Annotation], class: usize, dets: &[Detection], metric: VocMetric) -> Option<f64> {
    let npos = anns.iter().flat_map(|a| &a.objects).filter(|o| o.class == class && !o.difficult).count();
    if npos == 0 {
        return None;
    }
    // stable sort by descending score
    let mut sorted: Vec<&Detection> = dets.iter().collect();
    sorted.sort_by(|x, y| y.score.partial_cmp(&x.score).unwrap());
    let mut used: Vec<(String, usize)> = Vec::new();
    // (is_tp, is_fp) per detection
    let mut marks: Vec<(bool, bool)> = Vec::new();
    for d in sorted {
        let a = &anns[d.image as usize];
        let gts: Vec<(usize, &Object)> = a.objects.iter().enumerate().filter(|(_, o)| o.class == class).collect();
        let best = gts.iter().map(|(k, o)| (ref_iou(&d.bbox, &o.bbox), *k)).fold(None, |acc: Option<(f64, usize)>, x| match acc {
            Some(b) if b.0 >= x.0 => Some(b),
            _ => Some(x),
        });
        marks.push(match best {
            Some((ov, k)) if ov >= 0.5 => {
                if a.objects[k].difficult {
                    (false, false)
                } else if used.contains(&(a.id.clone(), k)) {
                    (false, true)
                } else {
                    used.push((a.id.clone(), k));
                    (true, false)
                }
            }
            _ => (false, true),
        });
    }
    // precision and recall after each prefix
    let pr: Vec<(f64, f64)> = (1..=marks.len())
        .map(|n| {
            let tp = marks[..n].iter().filter(|m| m.0).count() as f64;
            let fp = marks[..n].iter().filter(|m| m.1).count() as f64;
            (tp / npos as f64, if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 })
        })
        .collect();
    Some(match metric {
        // mean over t of the max precision at recall >= t
        VocMetric::Voc07 => (0..=10).map(|t| pr.iter().filter(|(r, _)| *r >= t as f64 / 10.0).map(|p| p.1).fold(0.0, f64::max)).sum::<f64>() / 11.0,
        // sum over each recall step of (step width) x (best precision at that recall or beyond)
        VocMetric::Voc10 => {
            let mut ap = 0.0;
            let mut prev_r = 0.0;
            for (i, (r, _)) in pr.iter().enumerate() {
                if *r > prev_r {
                    ap += (r - prev_r) * pr[i..].iter().map(|p| p.1).fold(0.0, f64::max);
                    prev_r = *r;
                }
            }
            ap
        }
    })
}

#[test]
fn agrees_with_the_slow_reference_on_random_inputs() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2016);
    for trial in 0..60 {
        let n_img = rng.random_range(1..6);
        let anns: Vec<Annotation> = (0..n_img)
            .map(|i| {
                let objs = (0..rng.random_range(0..5))
                    .map(|_| {
                        let (x, y) = (rng.random_range(1..60) as f32, rng.random_range(1..60) as f32);
                        obj(rng.random_range(0..2), [x, y, x + rng.random_range(4..30) as f32, y + rng.random_range(4..30) as f32], rng.random::<f32>() < 0.2)
                    })
                    .collect();
                ann(&format!("i{i}"), objs)
            })
            .collect();
        let dets: Vec<Detection> = (0..rng.random_range(0..25))
            .map(|_| {
                let image = rng.random_range(0..anns.len());
                let a = &anns[image];
                let base = a.objects.get(rng.random_range(0..a.objects.len() + 1)).map(|o| o.bbox).unwrap_or([20., 20., 40., 40.]);
                let j = |v: f32, r: &mut rand_chacha::ChaCha8Rng| (v + r.random_range(-4..5) as f32).max(1.0);
                let mut b = [j(base[0], &mut rng), j(base[1], &mut rng), j(base[2], &mut rng), j(base[3], &mut rng)];
                b[2] = b[2].max(b[0]);
                b[3] = b[3].max(b[1]);
                // scores on a coarse grid, so that ties occur
                det(image as u32, rng.random_range(0..8) as f32 / 8.0, b)
            })
            .collect();
        for m in [VocMetric::Voc07, VocMetric::Voc10] {
            let fast = eval_class(&anns, 0, &dets, m).0;
            let slow = reference_ap(&anns, 0, &dets, m);
            match (fast, slow) {
                (Some(f), Some(s)) => assert!((f - s).abs() < 1e-9, "trial {trial} {m:?}: {f} vs reference {s}"),
                (f, s) => assert_eq!(f, s, "trial {trial} {m:?}"),
            }
        }
    }
}

#[test]
fn average_precision_on_hand_curves() {
    // a single point at recall 1, precision 1 -> 1 for both
    assert!(close(average_precision(&[1.0], &[1.0], VocMetric::Voc07), 1.0));
    assert!(close(average_precision(&[1.0], &[1.0], VocMetric::Voc10), 1.0));
    // recall .5 at precision 1: 11-point counts t = 0 .. .5 (6/11); all-point .5
    assert!(close(average_precision(&[0.5], &[1.0], VocMetric::Voc07), 6.0 / 11.0));
    assert!(close(average_precision(&[0.5], &[1.0], VocMetric::Voc10), 0.5));
}

#[test]
fn results_files_round_trip_and_bad_lines_are_named() {
    let anns = vec![ann("000001", vec![obj(0, G1, false)]), ann("000002", vec![obj(1, G2, false)])];
    let classes = vec!["disc".to_string(), "ring".to_string()];
    let dets = vec![vec![det(0, 0.75, G1)], vec![det(1, 0.5, G2), det(0, 0.25, FAR)]];
    let t = tempfile::tempdir().unwrap();
    write_results_dir(t.path(), &classes, &anns, &dets).unwrap();
    let back = read_results_dir(t.path(), &classes, &anns).unwrap();
    assert_eq!(back, dets);

    std::fs::write(t.path().join("comp4_det_test_ring.txt"), "000002 0.5 1 1 9 9\n000003 0.5 1 1 9 9\n").unwrap();
    let err = read_results_dir(t.path(), &classes, &anns).unwrap_err().to_string();
    assert!(err.contains("comp4_det_test_ring.txt:2") && err.contains("000003"), "{err}");
    std::fs::write(t.path().join("comp4_det_test_ring.txt"), "000002 high 1 1 9 9\n").unwrap();
    let err = read_results_dir(t.path(), &classes, &anns).unwrap_err().to_string();
    assert!(err.contains("comp4_det_test_ring.txt:1") && err.contains("\"high\""), "{err}");
    std::fs::write(t.path().join("comp4_det_test_ring.txt"), "000002 0.5 1 1 9\n").unwrap();
    let err = read_results_dir(t.path(), &classes, &anns).unwrap_err().to_string();
    assert!(err.contains("comp4_det_test_ring.txt:1") && err.contains("5 fields"), "{err}");

    // a results file for a class the dataset lacks is named, not ignored
    std::fs::write(t.path().join("comp4_det_test_ring.txt"), "000002 0.5 1 1 9 9\n").unwrap();
    std::fs::write(t.path().join("comp4_det_test_square.txt"), "000002 0.5 1 1 9 9\n").unwrap();
    let err = read_results_dir(t.path(), &classes, &anns).unwrap_err().to_string();
    assert!(err.contains("comp4_det_test_square.txt") && err.contains("\"square\"") && err.contains("disc, ring"), "{err}");
    std::fs::remove_file(t.path().join("comp4_det_test_square.txt")).unwrap();
    // the devkit names a val split's files comp4_det_val_<class>.txt: read for --split val
    let v = tempfile::tempdir().unwrap();
    std::fs::write(v.path().join("comp4_det_val_ring.txt"), "000002 0.5 1 1 9 9\n").unwrap();
    let back = ohem_harness::eval::read_results_dir_of(v.path(), "val", &classes, &anns).unwrap();
    assert_eq!((back[0].len(), back[1].len()), (0, 1));
    // and a val evaluation of test-named files still reads them
    let back = ohem_harness::eval::read_results_dir_of(t.path(), "val", &classes, &anns).unwrap();
    assert_eq!(back[1].len(), 1);

    let empty = tempfile::tempdir().unwrap();
    let err = read_results_dir(empty.path(), &classes, &anns).unwrap_err().to_string();
    assert!(err.contains("no comp4_det_test_<class>.txt"), "{err}");
}
