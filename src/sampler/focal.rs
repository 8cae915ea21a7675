//! The focal loss (Lin et al., ICCV 2017) as the answer to imbalance instead of
//! a sampler: every RoI with IoU >= `bg_thresh_lo` (0 by default) is trained, up
//! to B/N per image drawn at random (the default B = 2048 is a cap that the
//! bundled data's ~500 proposals per image never reach), and the classification
//! loss is `-α_t (1 - p_t)^γ log p_t` (γ = 2, α = 0.25 for foreground and 0.75
//! for background), normalised by the number of foreground RoIs, the box loss too.
//!
//! Why all RoIs and not a fixed-ratio minibatch: the focal loss was designed to
//! replace sampling and hard mining (RetinaNet trains on every anchor and needs
//! no sampler; the paper reports it above its best OHEM variant). Inside a
//! 25%-foreground minibatch the imbalance it corrects is already gone, and it
//! would only scale the loss down. RetinaNet's classifier is a sigmoid per
//! class; the Fast R-CNN head here is a softmax over K + 1, so `p_t` is the
//! softmax probability of the RoI's label and α weights its foreground or
//! background role (the paper's softmax variant, Sec. 3 and Appendix).
//! `normalise: selected` divides by the RoIs trained instead. As in RetinaNet,
//! the classifier starts from the prior π = 0.01 (`prior_prob`): the background
//! bias is set so that every RoI starts at background probability about 0.99,
//! which keeps the many easy background RoIs from swamping the first
//! iterations (Lin et al., Sec. 4.1).

use anyhow::{bail, Result};
use tch::Tensor;

use super::{sample_where, ImageRois, RoiLosses, Sampler};
use crate::model::loss::{ClsLoss, LossConfig, Normalise};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FocalNorm {
    Foreground,
    Selected,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FocalConfig {
    /// RoIs per minibatch of N images (B), a cap.
    pub batch_size: i64,
    pub fg_thresh: f64,
    pub bg_thresh_lo: f64,
    pub gamma: f64,
    /// Foreground weight α (background 1 - α); `null`: no α-balancing.
    pub alpha: Option<f64>,
    pub normalise: FocalNorm,
    /// What the box loss is divided by; `null` (the default): as `normalise`
    /// (RetinaNet divides both by the foreground count). `selected` puts the box
    /// loss on the other arms' scale: at 6% foreground, dividing by the
    /// foreground weighs it about 16x theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_normalise: Option<FocalNorm>,
    /// RetinaNet's prior π: the classifier starts at foreground probability π
    /// (background bias `ln((1 - π) K / π)`); `null` keeps Fast R-CNN's zero bias.
    pub prior_prob: Option<f64>,
}

impl Default for FocalConfig {
    fn default() -> Self {
        FocalConfig { batch_size: 2048, fg_thresh: 0.5, bg_thresh_lo: 0.0, gamma: 2.0, alpha: Some(0.25), normalise: FocalNorm::Foreground, box_normalise: None, prior_prob: Some(0.01) }
    }
}

impl FocalConfig {
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
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            bail!("sampler.gamma = {} must be a finite number >= 0", self.gamma);
        }
        if let Some(a) = self.alpha {
            if !(0.0..=1.0).contains(&a) {
                bail!("sampler.alpha = {a} is outside [0, 1] (null turns it off)");
            }
        }
        if let Some(p) = self.prior_prob {
            if !(p > 0.0 && p < 1.0) {
                bail!("sampler.prior_prob = {p} is outside (0, 1) (null turns it off)");
            }
        }
        Ok(())
    }
}

pub struct Focal {
    cfg: FocalConfig,
}

impl Focal {
    pub fn new(cfg: FocalConfig) -> Self {
        Focal { cfg }
    }
}

impl Sampler for Focal {
    fn select(&mut self, r: &ImageRois, _: Option<&RoiLosses>, per_image: i64) -> Tensor {
        sample_where(&r.max_iou.ge(self.cfg.bg_thresh_lo), per_image)
    }

    fn loss(&self) -> LossConfig {
        let norm = |n: FocalNorm| match n {
            FocalNorm::Foreground => Normalise::Foreground,
            FocalNorm::Selected => Normalise::Selected,
        };
        LossConfig { cls: ClsLoss::Focal { gamma: self.cfg.gamma, alpha: self.cfg.alpha }, normalise: norm(self.cfg.normalise), normalise_loc: self.cfg.box_normalise.map(norm), ..LossConfig::default() }
    }
}
