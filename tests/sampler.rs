//! Sampler invariants: assignment by hand, and the fixed-ratio quotas.

use ohem_harness::sampler::{assign, FixedRatio, FixedRatioConfig, ImageRois, Sampler};
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

#[test]
fn assignment_by_hand() {
    // gt: a 10x10 box of class 2 and a 10x10 box of class 1, far apart
    let gt = Tensor::from_slice(&[0f32, 0., 9., 9., 100., 100., 109., 109.]).view([2, 4]);
    let gt_labels = Tensor::from_slice(&[2i64, 1]);
    let rois = Tensor::from_slice(&[
        0f32, 0., 9., 9., // IoU 1 with gt 0
        0., 0., 9., 4., // IoU 0.5 with gt 0: foreground at fg_thresh 0.5
        0., 0., 9., 3., // IoU 0.4: background
        100., 100., 109., 104., // IoU 0.5 with gt 1
        50., 50., 59., 59., // no overlap
    ])
    .view([5, 4]);
    let a = assign(0, 5, rois, &gt, &gt_labels, 0.5);
    assert_eq!(Vec::<i64>::try_from(&a.labels).unwrap(), vec![2, 2, 0, 1, 0]);
    let iou: Vec<f32> = Vec::try_from(&a.max_iou).unwrap();
    for (got, want) in iou.iter().zip([1.0, 0.5, 0.4, 0.5, 0.0]) {
        assert!((got - want).abs() < 1e-6, "{iou:?}");
    }
    // an image without ground truth: everything is background at IoU 0
    let none = assign(0, 3, Tensor::zeros([3, 4], (Kind::Float, tch::Device::Cpu)), &Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu)), &Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu)), 0.5);
    assert_eq!(Vec::<i64>::try_from(&none.labels).unwrap(), vec![0, 0, 0]);
}

/// An image's RoIs with the given max IoUs (labels 1 where IoU >= 0.5).
pub fn rois_with_iou(iou: &[f32]) -> ImageRois {
    let n = iou.len() as i64;
    let max_iou = Tensor::from_slice(iou);
    ImageRois {
        image: 0,
        n_proposals: n,
        rois: Tensor::zeros([n, 4], (Kind::Float, tch::Device::Cpu)),
        labels: max_iou.ge(0.5).to_kind(Kind::Int64),
        max_iou,
        targets: Tensor::zeros([n, 4], (Kind::Float, tch::Device::Cpu)),
        gt_index: Tensor::zeros([n], (Kind::Int64, tch::Device::Cpu)),
        n_mined: 0,
    }
}

#[test]
fn fixed_ratio_honours_quotas_and_thresholds() {
    let _rng = crate::util::torch_rng_lock();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    tch::manual_seed(1);
    let cfg = FixedRatioConfig::default();
    let mut s = FixedRatio::new(cfg.clone());
    for trial in 0..30 {
        let n = rng.random_range(1..400);
        // vary the foreground share from scarce to plentiful
        let p_fg = [0.0, 0.02, 0.2, 0.8][trial % 4];
        let iou: Vec<f32> = (0..n).map(|_| if rng.random::<f32>() < p_fg { rng.random_range(0.5..1.0) } else { rng.random_range(0.0..0.5) }).collect();
        let r = rois_with_iou(&iou);
        let sel: Vec<i64> = Vec::try_from(&s.select(&r, None, 64)).unwrap();
        let mut uniq = sel.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), sel.len(), "an index twice");
        let fg: Vec<i64> = sel.iter().copied().filter(|&i| iou[i as usize] >= 0.5).collect();
        let bg = sel.len() - fg.len();
        assert!(sel.len() <= 64 && fg.len() <= 16, "quota: {} selected, {} fg", sel.len(), fg.len());
        for &i in &sel {
            let v = iou[i as usize];
            assert!(v >= 0.5 || (0.1..0.5).contains(&v), "IoU {v} is neither fg nor bg");
        }
        // as many as available, up to the quotas: fg first, bg fills the rest
        let n_fg = iou.iter().filter(|&&v| v >= 0.5).count();
        let n_bg = iou.iter().filter(|&&v| (0.1..0.5).contains(&v)).count();
        assert_eq!(fg.len(), n_fg.min(16));
        assert_eq!(bg, n_bg.min(64 - fg.len()));
    }
}

#[test]
fn fixed_ratio_config_rejects_bad_values() {
    let bad = [
        (FixedRatioConfig { fg_fraction: 1.5, ..Default::default() }, "sampler.fg_fraction = 1.5"),
        (FixedRatioConfig { bg_thresh_lo: 0.6, bg_thresh_hi: 0.5, ..Default::default() }, "sampler.bg_thresh_lo = 0.6"),
        (FixedRatioConfig { batch_size: 0, ..Default::default() }, "sampler.batch_size = 0"),
        (FixedRatioConfig { bg_thresh_hi: 0.7, ..Default::default() }, "sampler.bg_thresh_hi = 0.7"),
    ];
    for (cfg, want) in bad {
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    FixedRatioConfig::default().check().unwrap();
}

// ---------------------------------------------------------------------------
// OHEM

use ohem_harness::boxes::{nms, BBox};
use ohem_harness::sampler::hnm::{CachePolicy, FpRule, HnmState};
use ohem_harness::sampler::ohem::{select_hard, OhemImpl};
use ohem_harness::sampler::{Backprop, Hnm, HnmConfig, Ohem, OhemConfig, Progress, RoiLosses, SamplerConfig};

fn random_boxes(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<BBox> {
    (0..n)
        .map(|_| {
            let (x, y) = (rng.random_range(0..80) as f32, rng.random_range(0..80) as f32);
            [x, y, x + rng.random_range(4..40) as f32, y + rng.random_range(4..40) as f32]
        })
        .collect()
}

/// Brute force: full greedy NMS (per label when asked) over all RoIs by loss, then the k hardest survivors.
fn reference_hard(boxes: &[BBox], loss: &[f32], labels: &[i64], k: usize, t: Option<f64>, per_label: bool) -> Vec<usize> {
    let mut kept: Vec<usize> = match (t, per_label) {
        (None, _) => (0..boxes.len()).collect(),
        (Some(t), false) => nms(boxes, loss, t as f32),
        (Some(t), true) => {
            let mut all = Vec::new();
            let mut ls: Vec<i64> = labels.to_vec();
            ls.sort();
            ls.dedup();
            for l in ls {
                let idx: Vec<usize> = (0..boxes.len()).filter(|&i| labels[i] == l).collect();
                let b: Vec<BBox> = idx.iter().map(|&i| boxes[i]).collect();
                let s: Vec<f32> = idx.iter().map(|&i| loss[i]).collect();
                all.extend(nms(&b, &s, t as f32).into_iter().map(|j| idx[j]));
            }
            all
        }
    };
    kept.sort_by(|&i, &j| loss[j].total_cmp(&loss[i]).then(i.cmp(&j)));
    kept.truncate(k);
    kept
}

#[test]
fn ohem_picks_the_hardest_survivors_of_nms() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    for trial in 0..60 {
        let n = rng.random_range(1..300);
        let boxes = random_boxes(&mut rng, n);
        // coarse losses, so that ties occur
        let loss: Vec<f32> = (0..n).map(|_| rng.random_range(0..50) as f32 / 10.0).collect();
        let labels: Vec<i64> = (0..n).map(|_| rng.random_range(0..3)).collect();
        let k = [1, 16, 64, 500][trial % 4];
        for t in [None, Some(0.5), Some(0.7)] {
            for per_label in [false, true] {
                let got = select_hard(&boxes, &loss, &labels, k, t, per_label);
                assert_eq!(got, reference_hard(&boxes, &loss, &labels, k, t, per_label), "trial {trial} t {t:?} per_label {per_label}");
                assert!(got.len() <= k);
            }
        }
    }
}

#[test]
fn ohem_sampler_selects_at_most_b_over_n_without_repeats_and_clamps() {
    let _rng = crate::util::torch_rng_lock();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut s = Ohem::new(OhemConfig::default());
    assert!(s.needs_roi_losses() && s.backprop() == Backprop::Selected);
    assert_eq!(Ohem::new(OhemConfig { implementation: OhemImpl::Masked, ..Default::default() }).backprop(), Backprop::MaskedAll);
    for n in [10usize, 300] {
        let boxes = random_boxes(&mut rng, n);
        let iou: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let mut r = rois_with_iou(&iou);
        r.rois = Tensor::from_slice(&boxes.concat()).view([n as i64, 4]);
        let cls = Tensor::rand([n as i64], (Kind::Float, tch::Device::Cpu));
        let loc = Tensor::rand([n as i64], (Kind::Float, tch::Device::Cpu)) * r.labels.gt(0).to_kind(Kind::Float);
        let sel: Vec<i64> = Vec::try_from(&s.select(&r, Some(&RoiLosses { cls: cls.shallow_clone(), loc: loc.shallow_clone(), logits: Tensor::zeros([n as i64, 3], (Kind::Float, tch::Device::Cpu)), deltas: Tensor::zeros([n as i64, 8], (Kind::Float, tch::Device::Cpu)) }), 64)).unwrap();
        let mut u = sel.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), sel.len());
        assert!(sel.len() <= 64);
        // cls+loc is the ranking loss, bg_lo = 0: RoIs of any IoU are eligible
        let total: Vec<f32> = Vec::try_from(&(&cls + &loc)).unwrap();
        let labels: Vec<i64> = Vec::try_from(&r.labels).unwrap();
        let want = select_hard(&boxes, &total, &labels, 64, Some(0.7), false);
        assert_eq!(sel, want.iter().map(|&i| i as i64).collect::<Vec<_>>());
        if n == 10 {
            assert_eq!(sel.len(), select_hard(&boxes, &total, &labels, 10, Some(0.7), false).len(), "fewer RoIs than B/N: all that survive NMS");
        }
    }
}

#[test]
fn sampler_configs_reject_bad_values() {
    let bad: Vec<(SamplerConfig, &str)> = vec![
        (SamplerConfig::Ohem(OhemConfig { nms_iou: Some(0.0), ..Default::default() }), "sampler.nms_iou = 0"),
        (SamplerConfig::Ohem(OhemConfig { nms_iou: Some(1.5), ..Default::default() }), "sampler.nms_iou = 1.5"),
        (SamplerConfig::Hnm(HnmConfig { fg_fraction: 0.5, hard_fraction: 0.5, random_fraction: 0.25, ..Default::default() }), "exceeds 1"),
        (SamplerConfig::Hnm(HnmConfig { mine_every_iters: Some(10), ..Default::default() }), "exactly one of"),
        (SamplerConfig::Hnm(HnmConfig { mine_every_epochs: Some(0), ..Default::default() }), "at least 1"),
    ];
    for (cfg, want) in bad {
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    SamplerConfig::Ohem(OhemConfig { nms_iou: None, ..Default::default() }).check().unwrap();
}

// ---------------------------------------------------------------------------
// Offline hard-negative mining

#[test]
fn hnm_quotas_with_a_cache_and_fixed_ratio_before_mining() {
    let _rng = crate::util::torch_rng_lock();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    tch::manual_seed(8);
    let cfg = HnmConfig::default();
    let mut s = Hnm::new(cfg.clone());
    let iou: Vec<f32> = (0..400).map(|_| if rng.random::<f32>() < 0.2 { rng.random_range(0.5..1.0) } else { rng.random_range(0.0..0.5) }).collect();
    let r = rois_with_iou(&iou);
    // before mining: fixed ratio (fg up to 16, the rest background)
    let sel: Vec<i64> = Vec::try_from(&s.select(&r, None, 64)).unwrap();
    assert_eq!(sel.len(), 64);
    assert_eq!(sel.iter().filter(|&&i| iou[i as usize] >= 0.5).count(), 16);

    // with a cache of 10 hard negatives: all 10 used (quota 32), randoms fill up to 64 - 16 - 10
    let bg: Vec<i64> = (0..400).filter(|&i| iou[i as usize] < 0.5).map(|i| i as i64).collect();
    let cached: Vec<i64> = bg[..10].to_vec();
    s.state = HnmState { rounds: 1, cache: vec![cached.clone()], ..Default::default() };
    let sel: Vec<i64> = Vec::try_from(&s.select(&r, None, 64)).unwrap();
    let mut u = sel.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), sel.len(), "an index twice");
    let n_fg = sel.iter().filter(|&&i| iou[i as usize] >= 0.5).count();
    let n_hard = sel.iter().filter(|i| cached.contains(i)).count();
    assert_eq!((n_fg, n_hard, sel.len()), (16, 10, 64));

    // with a big cache: hard negatives capped at half the batch, random ones at a quarter
    s.state = HnmState { rounds: 1, cache: vec![bg[..200].to_vec()], ..Default::default() };
    let sel: Vec<i64> = Vec::try_from(&s.select(&r, None, 64)).unwrap();
    let n_hard = sel.iter().filter(|i| bg[..200].contains(i)).count();
    assert!(n_hard >= 32 && sel.len() == 64, "{n_hard} hard of {}", sel.len());
}

#[test]
fn hnm_mines_on_schedule() {
    struct Count(usize);
    impl ohem_harness::sampler::Miner for Count {
        fn score_each(&mut self, _: &mut dyn FnMut(ohem_harness::sampler::ImageScores) -> anyhow::Result<()>) -> anyhow::Result<()> {
            self.0 += 1;
            Ok(())
        }
    }
    let at = |epoch, iter_in_epoch, iteration| Progress { epoch, iter_in_epoch, iteration };
    let mut m = Count(0);
    let mut s = Hnm::new(HnmConfig { mine_every_epochs: Some(2), ..Default::default() });
    for (e, i, it) in [(0, 0, 0), (1, 0, 10), (2, 0, 20), (2, 1, 21), (3, 0, 30), (4, 0, 40)] {
        s.before_iteration(at(e, i, it), &mut m).unwrap();
    }
    assert_eq!(m.0, 2, "epochs 2 and 4");
    let mut m = Count(0);
    let mut s = Hnm::new(HnmConfig { mine_every_epochs: None, mine_every_iters: Some(5), ..Default::default() });
    for it in 0..16 {
        s.before_iteration(at(0, it, it), &mut m).unwrap();
    }
    assert_eq!(m.0, 3, "iterations 5, 10, 15");
}

/// The cache holds exactly the false positives of the frozen model: checked
/// against a slow path that scores each proposal alone and computes IoU in Rust.
#[test]
fn hnm_cache_is_exactly_the_frozen_models_false_positives() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::boxes::iou;
    use ohem_harness::data::Dataset;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::sampler::Miner;
    use ohem_harness::config::TrainConfig;
    use ohem_harness::trainer::{batch, load_split, FrozenScorer};

    let t = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig::load(&crate::util::tiny_config(t.path(), "sampler:\n  kind: hnm\n"), &[]).unwrap();
    cfg.input.flip = false;
    let ds = Dataset::open(&cfg.dataset.root).unwrap();
    let mut store = load_split(&ds, &cfg, "trainval", None, &crate::util::test_opts()).unwrap();
    store.keep_where(|a| a.id == "000002" || a.id == "000005");
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
    let scores = FrozenScorer::new(&model, &store, &cfg, tch::Device::Cpu).score_training_set().unwrap();

    // Slow path: every proposal alone through the head; IoU with non-difficult ground truth in Rust.
    let mut slow: Vec<Vec<(usize, f32)>> = Vec::new(); // (proposal, fg score) of background proposals
    for i in 0..store.len() {
        let p = batch::prepare(&store, i, &cfg.input, false, tch::Device::Cpu).unwrap();
        let feats = tch::no_grad(|| model.features(&p.image.unsqueeze(0), false));
        let props: Vec<f32> = Vec::try_from(p.proposals.flatten(0, -1)).unwrap();
        let gts: Vec<f32> = Vec::try_from(p.gt.flatten(0, -1)).unwrap();
        let mut bg = Vec::new();
        for (j, b) in props.chunks(4).enumerate() {
            let b: BBox = [b[0], b[1], b[2], b[3]];
            let best = gts.chunks(4).map(|g| iou(&b, &[g[0], g[1], g[2], g[3]])).fold(0.0f32, f32::max);
            if best >= 0.5 {
                continue;
            }
            let roi = Tensor::from_slice(&[0.0, b[0], b[1], b[2], b[3]]).view([1, 5]);
            let (logits, _) = tch::no_grad(|| model.head(&feats, &roi, false));
            let fg: f32 = logits.softmax(-1, Kind::Float).narrow(1, 1, ds.classes.len() as i64).max().double_value(&[]) as f32;
            bg.push((j, fg));
        }
        slow.push(bg);
    }
    // A threshold in the widest gap between fg scores near the middle, so float noise cannot flip a RoI.
    let mut all: Vec<f32> = slow.iter().flatten().map(|x| x.1).collect();
    all.sort_by(f32::total_cmp);
    let mid = all.len() / 2;
    let (lo, hi) = (mid.saturating_sub(all.len() / 4), (mid + all.len() / 4).min(all.len() - 1));
    let g = (lo..hi).max_by(|&a, &b| (all[a + 1] - all[a]).total_cmp(&(all[b + 1] - all[b]))).unwrap();
    let thresh = (all[g] + all[g + 1]) / 2.0;

    let mut hnm = Hnm::new(HnmConfig { fp_rule: FpRule::Score, fp_score_thresh: thresh as f64, cache: CachePolicy::Replace, cache_cap_per_image: 100_000, ..Default::default() });
    hnm.update_cache(&scores);
    for (i, bg) in slow.iter().enumerate() {
        let mut want: Vec<i64> = bg.iter().filter(|x| x.1 >= thresh).map(|x| x.0 as i64).collect();
        let mut got = hnm.state.cache[i].clone();
        want.sort();
        got.sort();
        assert!(!want.is_empty() && want.len() < bg.len(), "the threshold should split the background");
        assert_eq!(got, want, "image {i}");
    }
    assert_eq!(hnm.cache_size(), slow.iter().flatten().filter(|x| x.1 >= thresh).count());
}

/// The default offline HNM fills its cache from the first round on the tiny
/// data, even with an untrained model, and what it mines is harder than a
/// random background RoI. What it reports is checked against a recount from
/// the frozen model's scores.
#[test]
fn default_hnm_mines_negatives_harder_than_random_ones_from_the_first_round() {
    let _rng = crate::util::torch_rng_lock();
    use ohem_harness::data::Dataset;
    use ohem_harness::model::FastRcnn;
    use ohem_harness::sampler::Miner;
    use ohem_harness::config::TrainConfig;
    use ohem_harness::trainer::{load_split, FrozenScorer};
    use rand::{Rng, SeedableRng};

    let t = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(&crate::util::tiny_config(t.path(), "sampler:\n  kind: hnm\n"), &[]).unwrap();
    let ds = Dataset::open(&cfg.dataset.root).unwrap();
    let store = load_split(&ds, &cfg, "trainval", None, &crate::util::test_opts()).unwrap();
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
    let scores = FrozenScorer::new(&model, &store, &cfg, tch::Device::Cpu).score_training_set().unwrap();

    let mut hnm = Hnm::new(HnmConfig::default());
    let rep = hnm.update_cache(&scores);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (mut cached_loss, mut n_cached, mut random_loss, mut n_random, mut all_bg) = (0.0f64, 0usize, 0.0f64, 0usize, 0usize);
    for s in &scores {
        let iou: Vec<f32> = Vec::try_from(&s.max_iou).unwrap();
        let labels: Vec<i64> = Vec::try_from(&s.labels).unwrap();
        let loss: Vec<f32> = Vec::try_from(&s.loss).unwrap();
        let bg: Vec<usize> = (0..iou.len()).filter(|&i| labels[i] == 0 && iou[i] < 0.5).collect();
        all_bg += bg.len();
        let cache = &hnm.state.cache[s.image];
        assert!(!cache.is_empty(), "image {}: empty cache after the first round", s.image);
        assert!(cache.len() <= 64);
        for &i in cache {
            assert!(bg.contains(&(i as usize)), "image {}: cache entry {i} is not a background RoI", s.image);
            cached_loss += loss[i as usize] as f64;
        }
        n_cached += cache.len();
        for _ in 0..cache.len() {
            random_loss += loss[bg[rng.random_range(0..bg.len())]] as f64;
        }
        n_random += cache.len();
    }
    let (cached_mean, random_mean) = (cached_loss / n_cached as f64, random_loss / n_random as f64);
    assert!(cached_mean > random_mean, "mined negatives {cached_mean:.4} vs random {random_mean:.4}");
    assert_eq!((rep.mined, rep.empty_images, rep.negatives, rep.images), (n_cached, 0, all_bg, scores.len()));
    assert!((rep.mined_loss.unwrap() - cached_mean).abs() < 1e-4 * cached_mean.max(1.0));
    assert!(rep.mined_loss.unwrap() > rep.random_loss.unwrap());
    assert_eq!(rep.prev_still_hard, None, "no previous cache in the first round");
    // a second round with the same model: every old entry is still as hard as before
    let rep2 = hnm.update_cache(&scores);
    assert_eq!(rep2.prev_still_hard, Some(1.0));
}

/// Where the mined negatives lie (the mining log's placement columns), on a
/// hand-made image: 5 background proposals, the 2 of highest loss mined.
#[test]
fn mining_logs_where_the_hard_negatives_lie() {
    use ohem_harness::sampler::ImageScores;
    let t = |v: &[f32]| Tensor::from_slice(v);
    let scores = vec![ImageScores {
        image: 0,
        labels: Tensor::from_slice(&[0i64, 0, 0, 0, 0]),
        max_iou: t(&[0.4, 0.05, 0.3, 0.0, 0.2]),
        fg_score: t(&[0.9, 0.8, 0.1, 0.1, 0.1]),
        loss: t(&[5.0, 4.0, 3.0, 2.0, 1.0]),
        difficult_iou: t(&[0.0, 0.6, 0.0, 0.05, 0.0]),
        boxes: None,
    }];
    let mut hnm = Hnm::new(HnmConfig { fp_topk: 2, ..Default::default() });
    let rep = hnm.update_cache(&scores);
    assert_eq!(hnm.state.cache[0], vec![0, 1]);
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-6;
    // mined: proposals 0 and 1; random: all 5
    assert!(close(rep.mined_gt_iou, (0.4 + 0.05) / 2.0) && close(rep.random_gt_iou, (0.4 + 0.05 + 0.3 + 0.0 + 0.2) / 5.0), "{rep:?}");
    assert!(close(rep.mined_on_difficult, 0.5) && close(rep.random_on_difficult, 0.2), "{rep:?}");
    // touching no box: only proposal 3 (IoU 0 with the labelled boxes, 0.05 with the difficult one)
    assert!(close(rep.mined_no_box, 0.0) && close(rep.random_no_box, 0.2), "{rep:?}");
}

/// On Faster R-CNN the proposals change every iteration, so a mining round keeps its negatives'
/// boxes: the trainer appends them to the image's RoIs, and the hard quota is drawn from that
/// block alone (the image's last `n_mined` proposals), never from the RPN's own.
#[test]
fn mined_boxes_come_back_as_the_images_last_proposals() {
    use ohem_harness::sampler::ImageScores;
    let _rng = crate::util::torch_rng_lock();
    tch::manual_seed(3);
    let t = |v: &[f32]| Tensor::from_slice(v);
    let boxes = Tensor::from_slice(&[0.0f32, 0.0, 9.0, 9.0, 10.0, 0.0, 19.0, 9.0, 20.0, 0.0, 29.0, 9.0, 30.0, 0.0, 39.0, 9.0]).view([4, 4]);
    let scores = vec![ImageScores {
        image: 1,
        labels: Tensor::from_slice(&[0i64, 0, 0, 0]),
        max_iou: t(&[0.2, 0.2, 0.2, 0.2]),
        fg_score: t(&[0.1, 0.1, 0.1, 0.1]),
        loss: t(&[1.0, 4.0, 2.0, 3.0]),
        difficult_iou: t(&[0.0, 0.0, 0.0, 0.0]),
        boxes: Some(boxes),
    }];
    let mut hnm = Hnm::new(HnmConfig { fp_topk: 2, ..Default::default() });
    hnm.update_cache(&scores);
    // the two of highest loss (1 then 3), as boxes
    assert_eq!(hnm.state.boxes[1], vec![[10.0, 0.0, 19.0, 9.0], [30.0, 0.0, 39.0, 9.0]]);
    assert!(hnm.mined_rois(0).is_none());
    let m: Vec<f32> = Vec::try_from(hnm.mined_rois(1).unwrap().flatten(0, -1)).unwrap();
    assert_eq!(m, vec![10.0, 0.0, 19.0, 9.0, 30.0, 0.0, 39.0, 9.0]);
    // 12 background proposals, the last 2 the mined ones: the hard quota (32 of 64 RoIs an image)
    // takes exactly those two, the rest is random background
    let mut r = rois_with_iou(&[0.2; 12]);
    r.image = 1;
    r.n_mined = 2;
    let picked: Vec<i64> = Vec::try_from(hnm.select(&r, None, 64)).unwrap();
    assert_eq!(picked.len(), 12);
    let hard: Vec<i64> = picked.iter().copied().filter(|&i| i >= 10).collect();
    assert_eq!(hard.len(), 2);
    // Fast R-CNN's state (indices into fixed proposals) serialises as before: no boxes key
    let mut fast = Hnm::new(HnmConfig { fp_topk: 2, ..Default::default() });
    fast.update_cache(&[ImageScores { boxes: None, ..scores.into_iter().next().unwrap() }]);
    assert!(fast.state.boxes.is_empty() && !fast.state().to_string().contains("boxes"));
}
