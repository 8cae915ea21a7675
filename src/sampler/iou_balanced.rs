//! Libra R-CNN's balanced sampling (Pang et al., CVPR 2019), as mmdetection
//! implements it (`IoUBalancedNegSampler` and `InstanceBalancedPosSampler`,
//! combined as in `libra_faster_rcnn`'s config):
//!
//! - **Positives, instance-balanced:** when an image has more foreground RoIs than
//!   its quota (`fg_fraction` × B/N), each ground-truth box gets at most
//!   `round(quota / boxes) + 1` of its RoIs, drawn at random; a shortfall is filled
//!   at random from the other foreground RoIs, an excess cut at random.
//! - **Negatives, IoU-balanced:** background is IoU in `[0, bg_thresh_hi)`. When
//!   there are more than the quota, a `floor_fraction` share of it is drawn at
//!   random below `floor_thr`, and the rest evenly from `num_bins` IoU bins above
//!   it: each bin gets `int(n / num_bins)` draws (all its RoIs if it has fewer),
//!   and whatever the bins leave is drawn at random from the remaining negatives.
//!   With `floor_thr: -1` (the default) there is no floor and the bins start at 0.
//!
//! As in mmdetection, the bins span `[floor, m)` where `m` is the highest IoU of
//! *any* RoI of the image (ground-truth boxes are RoIs, so usually 1), not the
//! highest negative IoU: with 3 bins, the top bin `[0.67, 1)` holds no negative,
//! and its share is drawn at random from the rest. We keep that behaviour, since
//! it is what users of `libra_faster_rcnn` train with.

use anyhow::{bail, Result};
use tch::Tensor;

use super::fixed_ratio::quota;
use super::{host, random_choice, ImageRois, RoiLosses, Sampler};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IouBalancedConfig {
    /// RoIs per minibatch of N images (B).
    pub batch_size: i64,
    pub fg_fraction: f64,
    pub fg_thresh: f64,
    /// Negatives: IoU below this (mmdetection's `neg_iou_thr`).
    pub bg_thresh_hi: f64,
    pub num_bins: usize,
    /// IoU below which negatives are drawn at random for `floor_fraction` of the quota (-1: no floor).
    pub floor_thr: f64,
    pub floor_fraction: f64,
    /// Instance-balanced positives (`false`: drawn uniformly, as Fast R-CNN).
    pub instance_balanced: bool,
}

impl Default for IouBalancedConfig {
    fn default() -> Self {
        IouBalancedConfig { batch_size: 128, fg_fraction: 0.25, fg_thresh: 0.5, bg_thresh_hi: 0.5, num_bins: 3, floor_thr: -1.0, floor_fraction: 0.0, instance_balanced: true }
    }
}

impl IouBalancedConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch_size < 1 {
            bail!("sampler.batch_size = {}: at least 1 RoI per minibatch", self.batch_size);
        }
        for (k, v) in [("fg_fraction", self.fg_fraction), ("fg_thresh", self.fg_thresh), ("bg_thresh_hi", self.bg_thresh_hi), ("floor_fraction", self.floor_fraction)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("sampler.{k} = {v} is outside [0, 1]");
            }
        }
        if self.bg_thresh_hi > self.fg_thresh {
            bail!("sampler.bg_thresh_hi = {} is above sampler.fg_thresh = {}: a RoI would be both", self.bg_thresh_hi, self.fg_thresh);
        }
        if self.num_bins < 1 {
            bail!("sampler.num_bins = 0: at least 1 bin");
        }
        if !(self.floor_thr == -1.0 || (0.0..1.0).contains(&self.floor_thr)) {
            bail!("sampler.floor_thr = {} must be -1 (no floor) or in [0, 1)", self.floor_thr);
        }
        Ok(())
    }
}

pub struct IouBalanced {
    cfg: IouBalancedConfig,
}

impl IouBalanced {
    pub fn new(cfg: IouBalancedConfig) -> Self {
        IouBalanced { cfg }
    }
}

impl Sampler for IouBalanced {
    fn select(&mut self, r: &ImageRois, _: Option<&RoiLosses>, per_image: i64) -> Tensor {
        let c = &self.cfg;
        let (iou, labels, gt): (Vec<f32>, Vec<i64>, Vec<i64>) = (host(&r.max_iou), host(&r.labels), host(&r.gt_index));
        let pos: Vec<i64> = (0..iou.len() as i64).filter(|&i| labels[i as usize] > 0).collect();
        let n_pos = quota(c.fg_fraction, per_image) as usize;
        let mut keep = if c.instance_balanced { instance_balanced(&pos, &gt, n_pos) } else { random_choice(&pos, n_pos) };
        let neg: Vec<i64> = (0..iou.len() as i64).filter(|&i| labels[i as usize] == 0 && (iou[i as usize] as f64) < c.bg_thresh_hi).collect();
        keep.extend(iou_balanced_negatives(&neg, &iou, per_image.max(0) as usize - keep.len(), c));
        Tensor::from_slice(&keep).to_device(r.rois.device())
    }
}

/// mmdetection's `InstanceBalancedPosSampler._sample_pos`: up to `k` of the
/// foreground RoIs `pos`, balanced over their ground-truth boxes `gt[i]`.
pub fn instance_balanced(pos: &[i64], gt: &[i64], k: usize) -> Vec<i64> {
    if pos.len() <= k {
        return pos.to_vec();
    }
    let mut boxes: Vec<i64> = pos.iter().map(|&i| gt[i as usize]).collect();
    boxes.sort_unstable();
    boxes.dedup();
    let per_box = (k as f64 / boxes.len() as f64).round() as usize + 1;
    let mut picked: Vec<i64> = Vec::new();
    for b in &boxes {
        let of_box: Vec<i64> = pos.iter().copied().filter(|&i| gt[i as usize] == *b).collect();
        picked.extend(random_choice(&of_box, per_box));
    }
    if picked.len() < k {
        let rest: Vec<i64> = pos.iter().copied().filter(|i| !picked.contains(i)).collect();
        let extra = random_choice(&rest, k - picked.len());
        picked.extend(extra);
    } else if picked.len() > k {
        picked = random_choice(&picked, k);
    }
    picked
}

/// mmdetection's `IoUBalancedNegSampler._sample_neg`: `k` of the negatives `neg`
/// (indices into `iou`, the max IoU of every RoI of the image).
pub fn iou_balanced_negatives(neg: &[i64], iou: &[f32], k: usize, c: &IouBalancedConfig) -> Vec<i64> {
    if neg.len() <= k {
        return neg.to_vec();
    }
    let at = |i: &i64| iou[*i as usize] as f64;
    let (floor, above, floor_thr): (Vec<i64>, Vec<i64>, f64) = if c.floor_thr > 0.0 {
        (neg.iter().copied().filter(|i| at(i) < c.floor_thr).collect(), neg.iter().copied().filter(|i| at(i) >= c.floor_thr).collect(), c.floor_thr)
    } else if c.floor_thr == 0.0 {
        (neg.iter().copied().filter(|i| at(i) == 0.0).collect(), neg.iter().copied().filter(|i| at(i) > 0.0).collect(), 0.0)
    } else {
        (Vec::new(), neg.to_vec(), 0.0)
    };
    let k_above = (k as f64 * (1.0 - c.floor_fraction)) as usize;
    let mut picked = if above.len() > k_above {
        if c.num_bins >= 2 {
            by_bins(&above, iou, k_above, c.num_bins, floor_thr)
        } else {
            random_choice(&above, k_above)
        }
    } else {
        above
    };
    let floor = random_choice(&floor, k - picked.len());
    picked.splice(0..0, floor);
    if picked.len() < k {
        let rest: Vec<i64> = neg.iter().copied().filter(|i| !picked.contains(i)).collect();
        let extra = random_choice(&rest, k - picked.len());
        picked.extend(extra);
    }
    picked
}

/// mmdetection's `sample_via_interval`: `int(k / bins)` draws from each IoU bin of
/// `[floor, max IoU of the image)`, then the rest at random from `set`.
fn by_bins(set: &[i64], iou: &[f32], k: usize, bins: usize, floor: f64) -> Vec<i64> {
    let max_iou = iou.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let width = (max_iou - floor) / bins as f64;
    let per_bin = k / bins;
    let mut picked: Vec<i64> = Vec::new();
    for b in 0..bins {
        let (lo, hi) = (floor + b as f64 * width, floor + (b + 1) as f64 * width);
        let in_bin: Vec<i64> = set.iter().copied().filter(|&i| (iou[i as usize] as f64) >= lo && (iou[i as usize] as f64) < hi).collect();
        picked.extend(random_choice(&in_bin, per_bin));
    }
    if picked.len() < k {
        let rest: Vec<i64> = set.iter().copied().filter(|i| !picked.contains(i)).collect();
        let extra = random_choice(&rest, k - picked.len());
        picked.extend(extra);
    }
    picked
}
