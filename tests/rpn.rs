//! The region proposal network held to torchvision (tests/fixtures/rpn_torchvision.json, written by
//! scripts/rpn_reference.py) and to cases worked out by hand.

use std::path::Path;

use ohem_harness::proposals::rpn::{assign_anchors, cell_anchors, decode, encode, filter_proposals, grid_anchors, nms, rpn_loss, sample_anchors, Rpn, RpnConfig};
use serde_json::Value;
use tch::{nn, Kind, Tensor};

const FIXTURE: &str = "tests/fixtures/rpn_torchvision.json";

fn floats(v: &Value) -> Vec<f32> {
    // JSON has no inf or nan: the reference writes them as strings
    v.as_array().expect("an array").iter().map(|x| x.as_f64().or_else(|| x.as_str().and_then(|s| s.parse().ok())).expect("a number") as f32).collect()
}

fn tensor(v: &Value, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&floats(v)).view(shape)
}

fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// Equal within `tol` (absolute, plus the same relative to the larger magnitude), element by element.
fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tol: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: {} values against torchvision's {}", ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs())), "{what}[{i}]: {a} against torchvision's {b}");
    }
}

fn reference(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Our anchors, targets, proposals and loss on the inputs of one reference file, against its outputs.
fn check_against(r: &Value) {
    let sizes: Vec<f64> = r["sizes"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let ratios: Vec<f64> = r["ratios"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let grid = (r["grid"][0].as_i64().unwrap(), r["grid"][1].as_i64().unwrap());
    let stride = r["stride"].as_i64().unwrap();
    let image_sizes: Vec<(i64, i64)> = r["image_sizes"].as_array().unwrap().iter().map(|s| (s[0].as_i64().unwrap(), s[1].as_i64().unwrap())).collect();
    let n = image_sizes.len() as i64;

    let anchors = grid_anchors(&cell_anchors(&sizes, &ratios), grid, stride, tch::Device::Cpu);
    assert_eq!(host(&anchors), floats(&r["anchors"]), "anchors differ from torchvision's AnchorGenerator");
    let a = anchors.size()[0];

    let mut all_targets = Vec::new();
    for i in 0..n as usize {
        let gt = tensor(&r["gt"][i], &[-1, 4]);
        let (labels, matched) = assign_anchors(&anchors, &gt, 0.7, 0.3);
        assert_eq!(host(&labels), floats(&r["labels"][i]), "image {i}: anchor labels differ from torchvision's");
        assert_eq!(host(&matched), floats(&r["matched"][i]), "image {i}: matched boxes differ from torchvision's");
        all_targets.push(encode(&matched, &anchors));
    }
    let targets = Tensor::cat(&all_targets, 0);
    assert_close("regression targets", &host(&targets), &floats(&r["targets"]), 1e-6);

    let objectness = tensor(&r["objectness"], &[n, a]);
    let deltas = tensor(&r["deltas"], &[n * a, 4]);
    let boxes = decode(&deltas, &anchors.repeat([n, 1]));
    assert_close("decoded proposals", &host(&boxes), &floats(&r["proposals"]), 1e-6);

    let kept = filter_proposals(&boxes.view([n, a, 4]), &objectness, &image_sizes, r["pre_nms_top_n"].as_i64().unwrap(), r["post_nms_top_n"].as_i64().unwrap(), r["nms"].as_f64().unwrap(), 1e-3);
    for (i, (b, s)) in kept.iter().enumerate() {
        assert_close(&format!("image {i}: kept proposals"), &host(b), &floats(&r["kept_boxes"][i]), 1e-6);
        assert_close(&format!("image {i}: kept scores"), &host(s), &floats(&r["kept_scores"][i]), 1e-6);
    }

    let (mut labels, mut pos, mut neg) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n as usize {
        labels.push(tensor(&r["labels"][i], &[-1]));
        pos.push(tensor(&r["sample_pos"][i], &[-1]).gt(0.0).nonzero().squeeze_dim(1) + i as i64 * a);
        neg.push(tensor(&r["sample_neg"][i], &[-1]).gt(0.0).nonzero().squeeze_dim(1) + i as i64 * a);
    }
    let (obj, bx) = rpn_loss(&objectness.reshape([-1]), &deltas, &Tensor::cat(&labels, 0), &targets, &Tensor::cat(&pos, 0), &Tensor::cat(&neg, 0));
    assert_close("objectness loss", &[obj.double_value(&[]) as f32], &[r["loss_objectness"].as_f64().unwrap() as f32], 1e-6);
    assert_close("box loss", &[bx.double_value(&[]) as f32], &[r["loss_box"].as_f64().unwrap() as f32], 1e-6);
}

#[test]
fn rpn_anchors_targets_proposals_and_loss_equal_torchvisions() {
    let r = reference(Path::new(FIXTURE));
    // the file covers the matcher's three cases: boxes that reach 0.7, a box that only its
    // best anchors match (low quality), and an image without boxes
    let positives: Vec<usize> = (0..3).map(|i| floats(&r["labels"][i]).iter().filter(|&&l| l == 1.0).count()).collect();
    assert!(positives[0] > 0 && positives[1] > 0 && positives[2] == 0, "positives per image {positives:?}");
    let g1 = tensor(&r["gt"][1], &[-1, 4]);
    let anchors = tensor(&r["anchors"], &[-1, 4]);
    let best = ohem_harness::proposals::rpn::box_iou(&g1, &anchors).max().double_value(&[]);
    assert!(best < 0.7, "image 1's box reaches IoU {best}: it no longer tests the low-quality matches");
    // and NMS, then the post-NMS cut, both remove proposals
    let pre = r["pre_nms_top_n"].as_u64().unwrap() as usize;
    for i in 0..3 {
        assert_eq!(floats(&r["kept_scores"][i]).len(), r["post_nms_top_n"].as_u64().unwrap() as usize);
        assert!(floats(&r["kept_scores"][i]).len() < pre);
    }
    check_against(&r);
}

/// torchvision run now gives what the committed reference holds (where the peer venv is installed;
/// it is not in CI, which checks the committed file above).
#[test]
fn rpn_reference_file_is_what_torchvision_gives_now() {
    let Some(python) = crate::util::peer_python() else {
        eprintln!("skipped: no torch + torchvision venv (scripts/peer-venv.sh makes one); the committed reference is checked by rpn_anchors_targets_proposals_and_loss_equal_torchvisions");
        return;
    };
    let out = std::process::Command::new(&python).arg("scripts/rpn_reference.py").output().expect("running scripts/rpn_reference.py");
    assert!(out.status.success(), "scripts/rpn_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed = reference(Path::new(FIXTURE));
    for key in ["anchors", "labels", "matched", "targets", "proposals", "kept_boxes", "kept_scores", "loss_objectness", "loss_box"] {
        assert_eq!(live[key], committed[key], "torchvision {} now gives another {key} than {FIXTURE}", live["torchvision"]);
    }
    check_against(&live);
}

#[test]
fn cell_anchors_are_ratio_major_with_height_over_width() {
    // size 16, ratio 4 (h/w): h = 16·2 = 32, w = 16/2 = 8 → (-4, -16, 4, 16); ratio 1 → ±8
    let c = host(&cell_anchors(&[16.0, 32.0], &[4.0, 1.0]));
    assert_eq!(c, vec![-4.0, -16.0, 4.0, 16.0, -8.0, -32.0, 8.0, 32.0, -8.0, -8.0, 8.0, 8.0, -16.0, -16.0, 16.0, 16.0]);
    // a 2 x 3 grid at stride 10: rows, then columns, then the cell's anchors
    let g = grid_anchors(&Tensor::from_slice(&[-1.0f32, -2.0, 1.0, 2.0]).view([1, 4]), (2, 3), 10, tch::Device::Cpu);
    let want: Vec<f32> = [(0, 0), (10, 0), (20, 0), (0, 10), (10, 10), (20, 10)].iter().flat_map(|&(x, y)| [x as f32 - 1.0, y as f32 - 2.0, x as f32 + 1.0, y as f32 + 2.0]).collect();
    assert_eq!(host(&g), want);
}

/// The slow, obvious NMS: the whole IoU matrix (torchvision's `box_iou`, as tensor ops), then
/// the greedy pass over it in descending score (a stable sort).
fn nms_by_matrix(boxes: &Tensor, scores: &Tensor, thresh: f64) -> Vec<i64> {
    let n = boxes.size()[0] as usize;
    let (_, order) = scores.sort_stable(true, 0, true);
    let sorted = boxes.index_select(0, &order);
    let over: Vec<bool> = Vec::try_from(ohem_harness::proposals::rpn::box_iou(&sorted, &sorted).gt(thresh).flatten(0, -1)).unwrap();
    let order: Vec<i64> = Vec::try_from(&order).unwrap();
    let mut removed = vec![false; n];
    let mut keep = Vec::new();
    for i in 0..n {
        if !removed[i] {
            keep.push(order[i]);
            for j in i + 1..n {
                removed[j] |= over[i * n + j];
            }
        }
    }
    keep
}

/// The RPN's NMS keeps what the IoU matrix gives, on proposals like the RPN's: many overlapping
/// boxes, tied scores, boxes sharing an edge, duplicates, and IoUs at the threshold.
#[test]
fn rpn_nms_equals_the_iou_matrix_reference() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(7);
    for (n, thresh) in [(1, 0.7), (50, 0.5), (400, 0.7), (2000, 0.7), (2000, 0.3), (300, 1.0)] {
        let xy = Tensor::rand([n, 2], (Kind::Float, tch::Device::Cpu)) * 200.0;
        // whole-pixel sizes from a few values: exact duplicates and IoUs at round values
        let wh = (Tensor::randint(4, [n, 2], (Kind::Int64, tch::Device::Cpu)).to_kind(Kind::Float) + 1.0) * 16.0;
        let mut boxes = Tensor::cat(&[&xy, &(&xy + &wh)], 1);
        if n >= 50 {
            // duplicates, boxes of no width, and a pair at IoU 0.3 (rounded to f32) exactly
            let dup = boxes.narrow(0, 0, 10).copy();
            let flat = Tensor::from_slice(&[5.0f32, 5.0, 5.0, 40.0, 0.0, 0.0, 10.0, 1.0, 7.0, 0.0, 10.0, 1.0]).view([3, 4]);
            boxes = Tensor::cat(&[boxes.narrow(0, 0, n - 13), dup, flat], 0);
        }
        // scores from 8 levels: ties everywhere
        let scores = Tensor::randint(8, [n], (Kind::Int64, tch::Device::Cpu)).to_kind(Kind::Float) / 8.0;
        let ours: Vec<i64> = Vec::try_from(nms(&boxes, &scores, thresh)).unwrap();
        assert_eq!(ours, nms_by_matrix(&boxes, &scores, thresh), "{n} boxes, NMS {thresh}");
        // at 1.0 nothing is suppressed, not even a duplicate (IoU 1 is not above 1)
        assert!(thresh < 1.0 || ours.len() as i64 == n, "{n} boxes, NMS {thresh}: {}", ours.len());
    }
}

#[test]
fn rpn_nms_keeps_by_score_and_suppresses_strictly_above_the_threshold() {
    // a: 10x10 at 0; b: shifted by 2 (IoU 80/120 = 0.667 with a); c: far away; d = a shifted by 1
    // (IoU 90/110 = 0.818)
    let boxes = Tensor::from_slice(&[0.0f32, 0.0, 10.0, 10.0, 2.0, 0.0, 12.0, 10.0, 50.0, 50.0, 60.0, 60.0, 1.0, 0.0, 11.0, 10.0]).view([4, 4]);
    let scores = Tensor::from_slice(&[0.9f32, 0.8, 0.7, 0.95]);
    // by score: d (0.95), a (0.9: IoU 0.818 with d, out), b (0.8: IoU 90/110 with d, out), c
    assert_eq!(Vec::<i64>::try_from(nms(&boxes, &scores, 0.7)).unwrap(), vec![3, 2]);
    // at 0.85 a survives d; b has IoU 0.818 with d and 0.667 with a: kept
    assert_eq!(Vec::<i64>::try_from(nms(&boxes, &scores, 0.85)).unwrap(), vec![3, 0, 1, 2]);
    // equal to the threshold is kept (strictly above suppresses)
    let two = Tensor::from_slice(&[0.0f32, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 5.0]).view([2, 4]);
    assert_eq!(Vec::<i64>::try_from(nms(&two, &Tensor::from_slice(&[1.0f32, 0.5]), 0.5)).unwrap(), vec![0, 1]);
    assert_eq!(nms(&Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu)), &Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)), 0.7).size(), vec![0]);
    // IoU 3/10, which is 0.3 rounded to f32 (above 0.3 in f64): compared in f32, as a float
    // tensor's gt(0.3) compares, so not above the threshold, and kept
    let edge = Tensor::from_slice(&[0.0f32, 0.0, 10.0, 1.0, 7.0, 0.0, 10.0, 1.0]).view([2, 4]);
    assert_eq!(Vec::<i64>::try_from(nms(&edge, &Tensor::from_slice(&[1.0f32, 0.5]), 0.3)).unwrap(), vec![0, 1]);
    assert_eq!(Vec::<i64>::try_from(nms(&edge, &Tensor::from_slice(&[1.0f32, 0.5]), 0.29)).unwrap(), vec![0]);
}

#[test]
fn rpn_sampling_caps_the_positives_and_fills_with_negatives() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(0);
    // 10 positives, 300 negatives, 5 ignored
    let labels = Tensor::cat(&[Tensor::ones([10], (Kind::Float, tch::Device::Cpu)), Tensor::zeros([300], (Kind::Float, tch::Device::Cpu)), Tensor::full([5], -1.0, (Kind::Float, tch::Device::Cpu))], 0);
    let (p, q) = sample_anchors(&labels, 256, 0.5);
    assert_eq!((p.size()[0], q.size()[0]), (10, 246));
    let (p, q) = sample_anchors(&labels, 16, 0.25);
    assert_eq!((p.size()[0], q.size()[0]), (4, 12));
    let all: Vec<i64> = Vec::try_from(Tensor::cat(&[&p, &q], 0)).unwrap();
    assert!(all.iter().take(4).all(|&i| i < 10) && all.iter().skip(4).all(|&i| (10..310).contains(&i)), "{all:?}");
    let mut uniq = all.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), all.len(), "an anchor drawn twice: {all:?}");
}

/// The head's outputs follow the anchors' order: logit index (y·W + x)·A + a.
#[test]
fn rpn_head_outputs_run_in_the_anchors_order() {
    // building the head draws its initial weights from libtorch's generator
    let _rng = crate::util::torch_rng_lock();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let cfg = RpnConfig::default();
    let (c, a, h, w) = (2i64, cfg.anchors_per_cell(), 3i64, 5i64);
    let rpn = Rpn::new(&(vs.root() / "rpn"), &cfg, c, 8);
    let vars = vs.variables();
    tch::no_grad(|| {
        // the 3x3 conv passes channel 0 through (centre tap 1), the 1x1 convs read it with weight 1
        // and add 1000 per output channel
        let mut conv = vars["rpn.conv.weight"].shallow_clone();
        let _ = conv.zero_();
        let _ = conv.get(0).get(0).get(1).get(1).fill_(1.0);
        let _ = vars["rpn.conv.bias"].shallow_clone().zero_();
        for (name, k) in [("cls_logits", 1i64), ("bbox_pred", 4)] {
            let mut wt = vars[&format!("rpn.{name}.weight")].shallow_clone();
            let _ = wt.zero_();
            let _ = wt.narrow(1, 0, 1).fill_(1.0);
            let bias = Tensor::arange(a * k, (Kind::Float, tch::Device::Cpu)) * 1000.0;
            let _ = vars[&format!("rpn.{name}.bias")].shallow_clone().copy_(&bias);
        }
    });
    let feats = Tensor::zeros([1, c, h, w], (Kind::Float, tch::Device::Cpu));
    let _ = feats.get(0).get(0).copy_(&Tensor::arange(h * w, (Kind::Float, tch::Device::Cpu)).view([h, w]));
    let (logits, deltas) = rpn.head.forward(&feats);
    assert_eq!(logits.size(), vec![1, h * w * a]);
    let l = host(&logits);
    for (i, v) in l.iter().enumerate() {
        let (cell, anchor) = (i as i64 / a, i as i64 % a);
        assert_eq!(*v, (cell + 1000 * anchor) as f32, "logit {i}");
    }
    let d = host(&deltas);
    for (i, v) in d.iter().enumerate() {
        let (row, k) = (i as i64 / 4, i as i64 % 4);
        let (cell, anchor) = (row / a, row % a);
        assert_eq!(*v, (cell + 1000 * (4 * anchor + k)) as f32, "delta {i}");
    }
    assert_eq!(rpn.anchors((h, w), tch::Device::Cpu).size(), vec![h * w * a, 4]);
}

/// A forward in training gives proposals inside each image and finite losses that backpropagate
/// into the head; at test time, no losses and the test top-k.
#[test]
fn rpn_forward_trains_and_proposes() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let cfg = RpnConfig { post_nms_top_n_train: 50, post_nms_top_n_test: 20, ..RpnConfig::default() };
    let rpn = Rpn::new(&(vs.root() / "rpn"), &cfg, 8, 8);
    let feats = Tensor::rand([2, 8, 6, 8], (Kind::Float, tch::Device::Cpu));
    let sizes = [(48, 64), (40, 50)];
    let gt = [Tensor::from_slice(&[4.0f32, 6.0, 30.0, 28.0]).view([1, 4]), Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu))];
    let out = rpn.forward(&feats, &sizes, Some(&gt), true);
    for (p, (h, w)) in out.proposals.iter().zip(sizes) {
        assert!(p.size()[0] > 0 && p.size()[0] <= 50);
        let b = host(p);
        assert!(b.chunks(4).all(|b| b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w as f32 && b[3] <= h as f32 && b[2] > b[0] && b[3] > b[1]));
    }
    let (obj, bx) = out.losses.expect("losses in training with ground truth");
    assert!(obj.double_value(&[]).is_finite() && bx.double_value(&[]) >= 0.0);
    (obj + bx).backward();
    let g = vs.variables()["rpn.cls_logits.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let test = rpn.forward(&feats, &sizes, None, false);
    assert!(test.losses.is_none() && test.proposals.iter().all(|p| p.size()[0] <= 20));
}

/// The RPN's defaults are part of what a Faster R-CNN cell means (a config that leaves `model.rpn`
/// out takes them, and its id does not name them): pinned here, torchvision's Faster R-CNN
/// defaults but for the anchor sizes, which fit the bundled data at stride 8. Changing one
/// changes existing Faster R-CNN cells; write the old value into their grids first.
#[test]
fn rpn_defaults_are_pinned() {
    let d = serde_json::to_value(RpnConfig::default()).unwrap();
    let want = serde_json::json!({
        "anchor_sizes": [16.0, 32.0, 64.0], "aspect_ratios": [0.5, 1.0, 2.0], "fg_iou": 0.7, "bg_iou": 0.3,
        "batch_per_image": 256, "positive_fraction": 0.5, "pre_nms_top_n_train": 2000, "pre_nms_top_n_test": 1000,
        "post_nms_top_n_train": 2000, "post_nms_top_n_test": 1000, "nms": 0.7, "min_size": 0.001
    });
    assert_eq!(d, want);
    // an anchor that rounds to nothing is refused by name
    let err = RpnConfig { anchor_sizes: vec![1.0, 16.0], ..RpnConfig::default() }.check().unwrap_err().to_string();
    assert!(err.contains("model.rpn.anchor_sizes = [1.0, 16.0]") && err.contains("less than a pixel"), "{err}");
    RpnConfig::default().check().unwrap();
}
