//! "All RoIs": backpropagate every RoI with IoU >= bg_thresh_lo (0 by
//! default), up to B/N per image drawn at random (the paper's B = 2048,
//! bg_lo = 0 ablation). Foreground and background in their natural ratio.

use anyhow::{bail, Result};
use tch::Tensor;

use super::{sample_where, ImageRois, RoiLosses, Sampler};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllConfig {
    /// RoIs per minibatch of N images (B), a cap: 2048 in the paper's ablation.
    pub batch_size: i64,
    pub fg_thresh: f64,
    pub bg_thresh_lo: f64,
}

impl Default for AllConfig {
    fn default() -> Self {
        AllConfig { batch_size: 2048, fg_thresh: 0.5, bg_thresh_lo: 0.0 }
    }
}

impl AllConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch_size < 1 {
            bail!("sampler.batch_size = {}: at least 1 RoI per minibatch", self.batch_size);
        }
        if !(0.0..=1.0).contains(&self.fg_thresh) || !(0.0..=1.0).contains(&self.bg_thresh_lo) {
            bail!("sampler.fg_thresh = {} and sampler.bg_thresh_lo = {} must lie in [0, 1]", self.fg_thresh, self.bg_thresh_lo);
        }
        if self.bg_thresh_lo > self.fg_thresh {
            bail!("sampler.bg_thresh_lo = {} is above sampler.fg_thresh = {}", self.bg_thresh_lo, self.fg_thresh);
        }
        Ok(())
    }
}

pub struct AllRois {
    cfg: AllConfig,
}

impl AllRois {
    pub fn new(cfg: AllConfig) -> Self {
        AllRois { cfg }
    }
}

impl Sampler for AllRois {
    fn select(&mut self, r: &ImageRois, _: Option<&RoiLosses>, per_image: i64) -> Tensor {
        sample_where(&r.max_iou.ge(self.cfg.bg_thresh_lo), per_image)
    }
}
