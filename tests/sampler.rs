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
    }
}

#[test]
fn fixed_ratio_honours_quotas_and_thresholds() {
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
