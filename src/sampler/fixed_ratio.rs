//! Fast R-CNN's fixed-ratio sampler: per image, up to `fg_fraction * B/N`
//! foreground RoIs (IoU >= fg_thresh) and the rest background RoIs (IoU in
//! `[bg_thresh_lo, bg_thresh_hi)`), each drawn uniformly at random. RoIs below
//! `bg_thresh_lo` are never sampled.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::{sample_where, ImageRois, RoiLosses, Sampler};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixedRatioConfig {
    /// RoIs per minibatch of N images (B).
    pub batch_size: i64,
    pub fg_fraction: f64,
    pub fg_thresh: f64,
    pub bg_thresh_hi: f64,
    pub bg_thresh_lo: f64,
}

impl Default for FixedRatioConfig {
    fn default() -> Self {
        FixedRatioConfig { batch_size: 128, fg_fraction: 0.25, fg_thresh: 0.5, bg_thresh_hi: 0.5, bg_thresh_lo: 0.1 }
    }
}

impl FixedRatioConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch_size < 1 {
            bail!("sampler.batch_size = {}: at least 1 RoI per minibatch", self.batch_size);
        }
        if !(0.0..=1.0).contains(&self.fg_fraction) {
            bail!("sampler.fg_fraction = {} is outside [0, 1]", self.fg_fraction);
        }
        for (k, v) in [("fg_thresh", self.fg_thresh), ("bg_thresh_hi", self.bg_thresh_hi), ("bg_thresh_lo", self.bg_thresh_lo)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("sampler.{k} = {v} is outside [0, 1]");
            }
        }
        if self.bg_thresh_lo > self.bg_thresh_hi {
            bail!("sampler.bg_thresh_lo = {} is above sampler.bg_thresh_hi = {}", self.bg_thresh_lo, self.bg_thresh_hi);
        }
        if self.bg_thresh_hi > self.fg_thresh {
            bail!("sampler.bg_thresh_hi = {} is above sampler.fg_thresh = {}: a RoI would be both", self.bg_thresh_hi, self.fg_thresh);
        }
        Ok(())
    }
}

pub struct FixedRatio {
    cfg: FixedRatioConfig,
}

impl FixedRatio {
    pub fn new(cfg: FixedRatioConfig) -> Self {
        FixedRatio { cfg }
    }
}

impl Sampler for FixedRatio {
    fn select(&mut self, r: &ImageRois, _: Option<&RoiLosses>, per_image: i64) -> Tensor {
        let c = &self.cfg;
        pick(r, c.fg_thresh, c.fg_fraction, (c.bg_thresh_lo, c.bg_thresh_hi), per_image)
    }
}

/// The RoIs' share of B/N that a fraction asks for: `round(fraction × per_image)`.
pub fn quota(fraction: f64, per_image: i64) -> i64 {
    (fraction * per_image as f64).round() as i64
}

/// Up to `quota(fg_fraction, per_image)` foreground RoIs (IoU >= `fg_thresh`), drawn uniformly.
pub fn foreground(r: &ImageRois, fg_thresh: f64, fg_fraction: f64, per_image: i64) -> Tensor {
    sample_where(&r.max_iou.ge(fg_thresh), quota(fg_fraction, per_image))
}

/// The background RoIs: IoU in `[lo, hi)`.
pub fn background_mask(r: &ImageRois, (lo, hi): (f64, f64)) -> Tensor {
    r.max_iou.lt(hi).logical_and(&r.max_iou.ge(lo))
}

/// Fast R-CNN's pick: [`foreground`] RoIs, then background RoIs (IoU in
/// `[bg.0, bg.1)`) drawn uniformly to fill the image's B/N.
pub fn pick(r: &ImageRois, fg_thresh: f64, fg_fraction: f64, bg: (f64, f64), per_image: i64) -> Tensor {
    let fg = foreground(r, fg_thresh, fg_fraction, per_image);
    let bg = sample_where(&background_mask(r, bg), per_image - fg.size()[0]);
    Tensor::cat(&[fg, bg], 0).to_kind(Kind::Int64)
}
