//! The hard-example strategies beside OHEM and HNM (mmdetection's OHEM, Libra's
//! IoU-balanced sampling, the focal loss, PISA), each against a slow reference,
//! a hand-computed case or its paper's formula.

use ohem_harness::boxes::BBox;
use ohem_harness::model::loss::{self, carl, focal, isr_importance, ClsLoss, KBias, LossConfig, Normalise};
use ohem_harness::model::per_roi_losses;
use ohem_harness::sampler::iou_balanced::{instance_balanced, iou_balanced_negatives};
use ohem_harness::sampler::pisa::score_hlr;
use ohem_harness::sampler::{hierarchical_ranks, nms_match, IouBalancedConfig, Ohem, OhemConfig, PisaConfig, RoiLosses, Sampler, SamplerConfig};
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

fn cpu() -> (Kind, tch::Device) {
    (Kind::Float, tch::Device::Cpu)
}

fn v32(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

// ---------------------------------------------------------------------------
// Hierarchical local ranks (PISA), against a brute-force count

/// Brute force: an item's local rank is the number of items of its group that
/// come before it (higher key, or equal key and lower index); its HLR is the
/// number of items with a smaller (local rank, -key, index).
fn reference_ranks(group: &[i64], key: &[f32]) -> Vec<usize> {
    let n = key.len();
    let before = |j: usize, i: usize| key[j] > key[i] || (key[j] == key[i] && j < i);
    let local: Vec<usize> = (0..n).map(|i| (0..n).filter(|&j| j != i && group[j] == group[i] && before(j, i)).count()).collect();
    (0..n).map(|i| (0..n).filter(|&j| j != i && (local[j] < local[i] || (local[j] == local[i] && before(j, i)))).count()).collect()
}

#[test]
fn hierarchical_ranks_match_a_brute_force_sort() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    for trial in 0..200 {
        let n = rng.random_range(0..60);
        let groups = rng.random_range(1..8);
        let group: Vec<i64> = (0..n).map(|_| rng.random_range(0..groups)).collect();
        // coarse keys so that ties occur
        let key: Vec<f32> = (0..n).map(|_| rng.random_range(0..10) as f32 / 10.0).collect();
        assert_eq!(hierarchical_ranks(&group, &key), reference_ranks(&group, &key), "trial {trial}");
    }
    // by hand: group A has keys 0.9, 0.6; group B 0.7 -> order 0.9 (A, 1st), 0.7 (B, 1st), 0.6 (A, 2nd)
    assert_eq!(hierarchical_ranks(&[0, 0, 1], &[0.9, 0.6, 0.7]), vec![0, 2, 1]);
}

#[test]
fn nms_match_groups_by_hand() {
    // boxes 0 and 1 overlap heavily, 2 overlaps 1 but not 0, 3 is alone
    let boxes: Vec<BBox> = vec![[0., 0., 9., 9.], [1., 0., 10., 9.], [9., 0., 18., 9.], [50., 50., 59., 59.]];
    // 2 has the top score: it opens group 0 and takes 1 only if IoU(2, 1) >= thresh (2/18 = 0.11: no)
    let g = nms_match(&boxes, &[0.5, 0.4, 0.9, 0.1], 0.5);
    assert_eq!(g, vec![1, 1, 0, 2], "IoU(0, 1) = 90/110 joins them under box 0");
    assert_eq!(nms_match(&boxes, &[0.5, 0.4, 0.9, 0.1], 0.95), vec![1, 2, 0, 3]);
}

// ---------------------------------------------------------------------------
// Libra R-CNN: IoU-balanced negatives and instance-balanced positives

fn counts_in(picked: &[i64], iou: &[f32], lo: f32, hi: f32) -> usize {
    picked.iter().filter(|&&i| iou[i as usize] >= lo && iou[i as usize] < hi).count()
}

fn assert_distinct_subset(picked: &[i64], of: &[i64]) {
    let mut u = picked.to_vec();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), picked.len(), "an index twice");
    assert!(picked.iter().all(|i| of.contains(i)), "a pick outside the candidates");
}

#[test]
fn iou_balanced_bins_by_hand_and_by_count() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(0);
    let cfg = IouBalancedConfig::default(); // 3 bins, no floor
    // A positive at IoU 0.9 sets the bins to [0, .3), [.3, .6), [.6, .9); negatives lie below 0.5,
    // so the top bin is empty and its share of 4 is drawn from the rest.
    let mut iou = vec![0.9f32];
    iou.extend((0..30).map(|i| i as f32 * 0.01)); // [0, 0.3)
    iou.extend((0..30).map(|i| 0.3 + i as f32 * 0.006)); // [0.3, 0.48)
    let neg: Vec<i64> = (1..iou.len() as i64).collect();
    for _ in 0..20 {
        let p = iou_balanced_negatives(&neg, &iou, 12, &cfg);
        assert_eq!(p.len(), 12);
        assert_distinct_subset(&p, &neg);
        assert!(counts_in(&p, &iou, 0.0, 0.3) >= 4 && counts_in(&p, &iou, 0.3, 0.6) >= 4);
    }
    // fewer negatives than asked: all of them
    assert_eq!(iou_balanced_negatives(&neg[..5], &iou, 12, &cfg).len(), 5);

    // Every bin full and no extra draws: each bin gets exactly k / bins, uniformly within the bin.
    // No positive: the highest IoU (0.45, the one RoI not in any bin) sets bins of width 0.15.
    let mut iou: Vec<f32> = Vec::new();
    iou.extend((0..10).map(|i| 0.01 + i as f32 * 0.01)); // bin 0: 10 RoIs
    iou.extend((0..20).map(|i| 0.16 + i as f32 * 0.005)); // bin 1: 20
    iou.extend((0..40).map(|i| 0.31 + i as f32 * 0.003)); // bin 2: 40
    iou.push(0.45);
    let neg: Vec<i64> = (0..iou.len() as i64).collect();
    let trials = 400;
    let mut hits = vec![0usize; iou.len()];
    for _ in 0..trials {
        let p = iou_balanced_negatives(&neg, &iou, 15, &cfg);
        assert_distinct_subset(&p, &neg);
        assert_eq!((counts_in(&p, &iou, 0.0, 0.15), counts_in(&p, &iou, 0.15, 0.3), counts_in(&p, &iou, 0.3, 0.45)), (5, 5, 5));
        for i in p {
            hits[i as usize] += 1;
        }
    }
    // inclusion probability 5/10, 5/20, 5/40 in the three bins, 0 for the top RoI
    for (i, &h) in hits.iter().enumerate() {
        let p = [0.5, 0.25, 0.125, 0.0][(i >= 10) as usize + (i >= 30) as usize + (i >= 70) as usize];
        let sd = (p * (1.0 - p) / trials as f64).sqrt();
        let got = h as f64 / trials as f64;
        assert!((got - p).abs() <= 4.5 * sd + 1e-9, "RoI {i}: drawn {got:.3}, expected {p}");
    }

    // A floor: half the quota from IoU < 0.1 at random, the rest by bins above it.
    let floor = IouBalancedConfig { floor_thr: 0.1, floor_fraction: 0.5, ..cfg.clone() };
    let p = iou_balanced_negatives(&neg, &iou, 16, &floor);
    assert_eq!(p.len(), 16);
    assert_eq!(counts_in(&p, &iou, 0.0, 0.1), 8, "8 = 16 - int(16 x 0.5) from the floor");
}

#[test]
fn instance_balanced_positives_by_hand() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(1);
    // three boxes with 30, 5 and 2 foreground RoIs; quota 16 -> round(16/3) + 1 = 6 per box:
    // 6 + 5 + 2 = 13, then 3 more from box 0's other 24
    let mut gt = vec![0i64; 30];
    gt.extend([1; 5]);
    gt.extend([2; 2]);
    let pos: Vec<i64> = (0..37).collect();
    for _ in 0..10 {
        let p = instance_balanced(&pos, &gt, 16);
        assert_distinct_subset(&p, &pos);
        let per = |b| p.iter().filter(|&&i| gt[i as usize] == b).count();
        assert_eq!((per(0), per(1), per(2)), (9, 5, 2));
    }
    // four boxes of 10: 6 each would make 24 > 16, cut at random to 16
    let gt: Vec<i64> = (0..40).map(|i| i / 10).collect();
    let pos: Vec<i64> = (0..40).collect();
    let p = instance_balanced(&pos, &gt, 16);
    assert_eq!(p.len(), 16);
    assert!((0..4).all(|b| p.iter().filter(|&&i| gt[i as usize] == b).count() <= 6));
    assert_eq!(instance_balanced(&pos[..7], &gt, 16).len(), 7);
}

// ---------------------------------------------------------------------------
// mmdetection's OHEM: a foreground share, cls loss, no NMS

#[test]
fn mmdet_ohem_keeps_the_hardest_in_each_share() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let cfg = OhemConfig { fg_fraction: Some(0.25), nms_iou: None, loss: ohem_harness::sampler::ohem::OhemLoss::Cls, ..Default::default() };
    let mut s = Ohem::new(cfg);
    for n_fg in [3usize, 40] {
        let n = 200;
        let iou: Vec<f32> = (0..n).map(|i| if i < n_fg { 0.7 } else { rng.random_range(0.0..0.5) }).collect();
        let r = crate::sampler::rois_with_iou(&iou);
        let cls: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..5.0)).collect();
        let losses = RoiLosses { cls: Tensor::from_slice(&cls), loc: Tensor::ones([n as i64], cpu()), logits: Tensor::zeros([n as i64, 2], cpu()), deltas: Tensor::zeros([n as i64, 4], cpu()) };
        let mut got: Vec<i64> = Vec::try_from(&s.select(&r, Some(&losses), 64)).unwrap();
        // brute force: sort each share by cls loss, highest first
        let by_loss = |mut v: Vec<i64>, k: usize| {
            v.sort_by(|&a, &b| cls[b as usize].total_cmp(&cls[a as usize]));
            v.truncate(k);
            v
        };
        let fg = by_loss((0..n_fg as i64).collect(), 16);
        let mut want = fg.clone();
        want.extend(by_loss((n_fg as i64..n as i64).collect(), 64 - fg.len()));
        got.sort();
        want.sort();
        assert_eq!(got, want, "{n_fg} foreground RoIs");
    }
    // the paper's OHEM is untouched by the new options: no share, every RoI eligible, NMS 0.7 over
    // (RoI, loss). 25 pairs of boxes: within a pair shifted by 1 px (IoU 0.82, or 0.83 with VOC's
    // +1, above 0.7 either way), pairs 20 px apart (IoU 0). Checked against a brute force written
    // here: greedy NMS by loss, highest first, keeping a box unless a kept one overlaps it above 0.7.
    let boxes: Vec<BBox> = (0..50).map(|i| {
        let x = (i / 2) as f32 * 20.0 + (i % 2) as f32;
        [x, 0., x + 10.0, 10.]
    }).collect();
    let loss: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32).collect(); // a permutation of 0..50: no ties
    let mut r = crate::sampler::rois_with_iou(&[0.0; 50]);
    r.rois = Tensor::from_slice(&boxes.concat()).view([50, 4]);
    let l = RoiLosses { cls: Tensor::from_slice(&loss), loc: Tensor::zeros([50], cpu()), logits: Tensor::zeros([50, 2], cpu()), deltas: Tensor::zeros([50, 4], cpu()) };
    let mut got: Vec<i64> = Vec::try_from(&Ohem::new(OhemConfig::default()).select(&r, Some(&l), 8)).unwrap();
    let iou = |a: &BBox, b: &BBox| {
        let (w, h) = ((a[2].min(b[2]) - a[0].max(b[0])).max(0.0), (a[3].min(b[3]) - a[1].max(b[1])).max(0.0));
        let area = |x: &BBox| (x[2] - x[0]) * (x[3] - x[1]);
        w * h / (area(a) + area(b) - w * h)
    };
    let mut order: Vec<usize> = (0..50).collect();
    order.sort_by(|&a, &b| loss[b].total_cmp(&loss[a]));
    let mut want: Vec<i64> = Vec::new();
    for i in order {
        if want.iter().all(|&j| iou(&boxes[i], &boxes[j as usize]) <= 0.7) {
            want.push(i as i64);
        }
        if want.len() == 8 {
            break;
        }
    }
    // each kept box is the harder of its pair, and no two kept boxes share a pair
    assert!(want.iter().all(|&i| loss[i as usize] > loss[(i ^ 1) as usize]));
    got.sort();
    want.sort();
    assert_eq!(got, want, "the paper's OHEM: NMS 0.7 over (RoI, loss), the 8 hardest survivors");
}

// ---------------------------------------------------------------------------
// The focal loss

#[test]
fn focal_loss_by_hand_and_cross_entropy_at_gamma_zero() {
    let _rng = crate::util::torch_rng_lock();
    // K = 2: RoI 0 is class 1 with uniform logits (p_t = 1/3), RoI 1 background with logits (2, 0, 0)
    let logits = Tensor::from_slice(&[0f32, 0., 0., 2., 0., 0.]).view([2, 3]);
    let labels = Tensor::from_slice(&[1i64, 0]);
    let fl = v32(&focal(&logits, &labels, 2.0, Some(0.25)));
    let p1 = 2f64.exp() / (2f64.exp() + 2.0);
    let want = [0.25 * (2.0f64 / 3.0).powi(2) * 3f64.ln(), 0.75 * (1.0 - p1).powi(2) * -p1.ln()];
    for (g, w) in fl.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{fl:?} vs {want:?}");
    }
    // gamma 0 without alpha: the cross-entropy
    tch::manual_seed(3);
    let logits = Tensor::randn([50, 6], cpu()) * 3.0;
    let labels = Tensor::randint(6, [50], (Kind::Int64, tch::Device::Cpu));
    let (ce, _) = per_roi_losses(&logits, &Tensor::zeros([50, 20], cpu()), &labels, &Tensor::zeros([50, 4], cpu()), 5);
    let d = (focal(&logits, &labels, 0.0, None) - &ce).abs().max().double_value(&[]);
    assert!(d < 1e-5, "FL(gamma 0) differs from CE by {d}");
    // and easy examples are down-weighted: FL < CE everywhere for gamma 2
    assert!(focal(&logits, &labels, 2.0, None).le_tensor(&(&ce + 1e-7)).all().int64_value(&[]) == 1);
}

/// `n` selected RoIs for [`loss::minibatch`]: random logits with gradient, labels, zero deltas.
struct Batch {
    logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    boxes: Tensor,
    gt: Tensor,
}

fn batch(n: i64, k: i64, seed: i64) -> Batch {
    tch::manual_seed(seed);
    let boxes = Tensor::from_slice(&(0..n).flat_map(|i| [i as f32, i as f32, i as f32 + 20.0, i as f32 + 20.0]).collect::<Vec<_>>()).view([n, 4]);
    Batch {
        logits: (Tensor::randn([n, k + 1], cpu()) * 2.0).set_requires_grad(true),
        deltas: (Tensor::randn([n, 4 * k], cpu()) * 0.5).set_requires_grad(true),
        labels: Tensor::randint(k + 1, [n], (Kind::Int64, tch::Device::Cpu)),
        targets: Tensor::randn([n, 4], cpu()) * 0.5,
        boxes,
        gt: Tensor::randint(3, [n], (Kind::Int64, tch::Device::Cpu)),
    }
}

impl Batch {
    fn selected<'a>(&'a self, weight: Option<&'a Tensor>) -> loss::Selected<'a> {
        loss::Selected { logits: &self.logits, deltas: &self.deltas, labels: &self.labels, targets: &self.targets, boxes: &self.boxes, gt: &self.gt, weight }
    }
}

#[test]
fn weights_reach_the_gradient_as_computed_by_hand() {
    // d/dz of (1/S) Σ w_i CE_i = w_i (softmax(z_i) - onehot(y_i)) / S
    let (n, k) = (8, 3);
    let b = batch(n, k, 4);
    let w = Tensor::from_slice(&[0.5f32, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0]);
    let (cls, _, _, _) = loss::minibatch(&b.selected(Some(&w)), &LossConfig::default(), k);
    let g = Tensor::run_backward(&[cls], &[&b.logits], false, false).remove(0);
    let p = b.logits.detach().softmax(1, Kind::Float);
    let onehot = b.labels.one_hot(k + 1).to_kind(Kind::Float);
    let want = (p - onehot) * w.unsqueeze(1) / n as f64;
    let d = (g - want).abs().max().double_value(&[]);
    assert!(d < 1e-6, "gradient differs by {d}");
}

#[test]
fn the_default_loss_is_fast_rcnns_and_focal_normalises_by_foreground() {
    let (n, k) = (12, 4);
    let b = batch(n, k, 5);
    let (ce, loc) = per_roi_losses(&b.logits, &b.deltas, &b.labels, &b.targets, k);
    let (c, l, _, _) = loss::minibatch(&b.selected(None), &LossConfig::default(), k);
    assert_eq!(c.double_value(&[]), (ce.sum(Kind::Float) / n as f64).double_value(&[]), "bit for bit");
    assert_eq!(l.double_value(&[]), (loc.sum(Kind::Float) / n as f64).double_value(&[]));
    let ones = Tensor::ones([n], cpu());
    let (c1, _, _, _) = loss::minibatch(&b.selected(Some(&ones)), &LossConfig::default(), k);
    assert_eq!(c1.double_value(&[]), c.double_value(&[]), "weight 1 is no weight");
    let cfg = LossConfig { cls: ClsLoss::Focal { gamma: 2.0, alpha: Some(0.25) }, normalise: Normalise::Foreground, ..LossConfig::default() };
    let (cf, lf, _, _) = loss::minibatch(&b.selected(None), &cfg, k);
    let n_fg = b.labels.gt(0).sum(Kind::Int64).int64_value(&[]).max(1) as f64;
    let want = focal(&b.logits, &b.labels, 2.0, Some(0.25)).sum(Kind::Float).double_value(&[]) / n_fg;
    assert!((cf.double_value(&[]) - want).abs() < 1e-6);
    assert!((lf.double_value(&[]) - loc.sum(Kind::Float).double_value(&[]) / n_fg).abs() < 1e-6);
    // the box loss on the other arms' scale: divided by the selected RoIs, the classification loss as before
    let cfg = LossConfig { normalise_loc: Some(Normalise::Selected), ..cfg };
    let (cs, ls, _, _) = loss::minibatch(&b.selected(None), &cfg, k);
    assert_eq!(cs.double_value(&[]), cf.double_value(&[]));
    assert!((ls.double_value(&[]) - loc.sum(Kind::Float).double_value(&[]) / n as f64).abs() < 1e-6);
    assert!(n_fg < n as f64, "the case has background RoIs, so the two divisors differ");
}

// ---------------------------------------------------------------------------
// PISA: ISR-P, CARL and ScoreHLR

#[test]
fn isr_p_importance_by_hand_and_loss_sum_kept() {
    // one class: box A's positives at IoU 0.9 and 0.6, box B's at 0.7 -> HLR 0, 2, 1 -> (3 - r) / 3 -> squared
    let imp = isr_importance(&[1, 1, 1], &[0, 0, 1], &[0.9, 0.6, 0.7], KBias { k: 2.0, bias: 0.0 });
    let want = [1.0, 1.0 / 9.0, 4.0 / 9.0];
    assert!(imp.iter().zip(want).all(|(g, w)| (*g as f64 - w).abs() < 1e-6), "{imp:?}");
    // two classes: n is the larger class's count (2); class 2's lone positive gets (2 - 0) / 2 = 1
    let imp = isr_importance(&[1, 2, 1], &[0, 1, 0], &[0.5, 0.1, 0.8], KBias { k: 1.0, bias: 0.0 });
    assert_eq!(imp, vec![0.5, 1.0, 1.0]);
    // in the loss: the positives' weighted CE keeps its sum, so the loss value is the plain one
    // while the gradient moves toward the prime positives
    let (n, k) = (16, 2);
    let b = batch(n, k, 6);
    let plain = loss::minibatch(&b.selected(None), &LossConfig::default(), k).0;
    let cfg = LossConfig { isr_p: Some(KBias { k: 2.0, bias: 0.0 }), ..LossConfig::default() };
    let isr = loss::minibatch(&b.selected(None), &cfg, k).0;
    assert!((plain.double_value(&[]) - isr.double_value(&[])).abs() < 1e-5);
    let g0 = Tensor::run_backward(&[plain], &[&b.logits], false, false).remove(0);
    let g1 = Tensor::run_backward(&[isr], &[&b.logits], false, false).remove(0);
    assert!((g0 - g1).abs().max().double_value(&[]) > 1e-4, "ISR-P changed no gradient");
}

#[test]
fn carl_by_its_formula() {
    let (n, k) = (10, 3);
    let b = batch(n, k, 7);
    let (_, loc) = per_roi_losses(&b.logits, &b.deltas, &b.labels, &b.targets, k);
    let got = carl(&b.logits, &b.labels, &loc, KBias { k: 1.0, bias: 0.2 }, n).double_value(&[]);
    let p = v32(&b.logits.softmax(1, Kind::Float));
    let (labels, loc): (Vec<i64>, Vec<f32>) = (Vec::try_from(&b.labels).unwrap(), v32(&loc));
    let pos: Vec<usize> = (0..n as usize).filter(|&i| labels[i] > 0).collect();
    let w: Vec<f64> = pos.iter().map(|&i| 0.2 + 0.8 * p[i * (k as usize + 1) + labels[i] as usize] as f64).collect();
    let scale = pos.len() as f64 / w.iter().sum::<f64>();
    let want: f64 = pos.iter().zip(&w).map(|(&i, w)| w * scale * loc[i] as f64).sum::<f64>() / n as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn score_hlr_by_hand() {
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(8);
    // negatives 0 and 1 overlap (one group, scores 0.9 then 0.8), 2 and 3 stand alone (0.7, 0.3),
    // 4 scores below score_thr. HLR: 0.9, 0.7, 0.3 (the groups' tops), then 0.8.
    let boxes: Vec<BBox> = vec![[0., 0., 9., 9.], [0., 0., 9., 8.], [40., 0., 49., 9.], [80., 0., 89., 9.], [0., 40., 9., 49.]];
    let score = [0.9f32, 0.8, 0.7, 0.3, 0.01];
    let ce = [2.0f32, 1.0, 1.5, 0.5, 0.1];
    let c = PisaConfig::default(); // k 0.5, bias 0
    let (pick, w) = score_hlr(&boxes, &score, &ce, 3, &c);
    assert_eq!(pick, vec![0, 2, 3]);
    // u = max(3, 4 valid) = 4: (4 - r) / 4 for r = 0, 1, 2, then ^0.5, scaled to keep Σ ce
    let raw: Vec<f64> = [1.0f64, 0.75, 0.5].iter().map(|x| x.sqrt()).collect();
    let scale = (2.0 + 1.5 + 0.5) / (2.0 * raw[0] + 1.5 * raw[1] + 0.5 * raw[2]);
    for (g, r) in w.iter().zip(&raw) {
        assert!((*g as f64 - r * scale).abs() < 1e-6, "{w:?}");
    }
    // more asked than valid: the 4 ranked, then one random from the invalid, at the lowest weight
    let (pick, w) = score_hlr(&boxes, &score, &ce, 5, &c);
    assert_eq!(pick, vec![0, 2, 3, 1, 4]);
    assert_eq!(w[4], w[3]);
}

#[test]
fn new_sampler_configs_reject_bad_values() {
    let bad: Vec<(&str, &str)> = vec![
        ("kind: focal\ngamma: -1", "sampler.gamma = -1"),
        ("kind: focal\nalpha: 1.5", "sampler.alpha = 1.5"),
        ("kind: iou_balanced\nnum_bins: 0", "sampler.num_bins = 0"),
        ("kind: iou_balanced\nfloor_thr: 2", "sampler.floor_thr = 2"),
        ("kind: pisa\nscore_thr: 1.5", "sampler.score_thr = 1.5"),
        ("kind: pisa\nisr_p: {k: 0, bias: 0}", "sampler.isr_p"),
        ("kind: ohem\nfg_fraction: 2", "sampler.fg_fraction = 2"),
    ];
    for (yaml, want) in bad {
        let cfg: SamplerConfig = serde_saphyr::from_str(yaml).unwrap();
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains(want), "{yaml}: {err:?} lacks {want:?}");
    }
    for ok in ["kind: focal", "kind: iou_balanced", "kind: pisa", "kind: pisa\nisr_p: null\ncarl: null", "kind: ohem\nloss: cls\nnms_iou: null\nfg_fraction: 0.25"] {
        let cfg: SamplerConfig = serde_saphyr::from_str(ok).unwrap();
        cfg.check().unwrap();
    }
    // the paper's OHEM serialises as before, so existing cells keep their ids
    let json = serde_json::to_string(&SamplerConfig::Ohem(OhemConfig::default())).unwrap();
    assert!(!json.contains("fg_fraction") && !json.contains("bg_thresh_lo"), "{json}");
}
