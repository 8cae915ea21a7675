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
        let fg_quota = (self.cfg.fg_fraction * per_image as f64).round() as i64;
        let fg = sample_where(&r.max_iou.ge(self.cfg.fg_thresh), fg_quota);
        let bg_mask = r.max_iou.lt(self.cfg.bg_thresh_hi).logical_and(&r.max_iou.ge(self.cfg.bg_thresh_lo));
        let bg = sample_where(&bg_mask, per_image - fg.size()[0]);
        Tensor::cat(&[fg, bg], 0).to_kind(Kind::Int64)
    }
}
