//! Online Hard Example Mining (Shrivastava, Gupta & Girshick, CVPR 2016).
//!
//! Each iteration the trainer runs the head read-only (no gradient) over all
//! RoIs of the N images and hands over per-RoI losses. Per image, RoIs are
//! ranked by loss (cross-entropy, plus smooth L1 for foreground RoIs with
//! `loss: cls+loc`); greedy NMS at `nms_iou` (default 0.7; `null` turns it
//! off) removes RoIs that overlap a harder kept RoI, and the hardest B/N
//! survivors are kept. There is no fg fraction and bg_lo is 0: every RoI is
//! eligible. When an image has fewer eligible RoIs than B/N, all of them are
//! taken (a clamp, not an error).
//!
//! NMS choice: the paper describes NMS over (RoI, loss) per image; the
//! official code also splits it by label. `nms_per_label: false` (default)
//! follows the paper, `true` the code.
//!
//! `impl: read_only` trains only the selected RoIs (the paper's design);
//! `impl: masked` forwards and backpropagates all RoIs with the loss of the
//! unselected ones set to zero (the naive design the paper compares with).
//! Both select the same RoIs and give the same gradients.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::{host, Backprop, ImageRois, RoiLosses, Sampler};
use crate::boxes::{iou, BBox};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OhemLoss {
    #[serde(rename = "cls")]
    Cls,
    #[serde(rename = "cls+loc")]
    ClsLoc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OhemImpl {
    ReadOnly,
    Masked,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OhemConfig {
    /// RoIs per minibatch of N images (B); B/N per image.
    pub batch_size: i64,
    pub fg_thresh: f64,
    /// NMS IoU over (RoI, loss); `null` disables NMS.
    pub nms_iou: Option<f64>,
    pub nms_per_label: bool,
    pub loss: OhemLoss,
    #[serde(rename = "impl")]
    pub implementation: OhemImpl,
}

impl Default for OhemConfig {
    fn default() -> Self {
        OhemConfig { batch_size: 128, fg_thresh: 0.5, nms_iou: Some(0.7), nms_per_label: false, loss: OhemLoss::ClsLoc, implementation: OhemImpl::ReadOnly }
    }
}

impl OhemConfig {
    pub fn check(&self) -> Result<()> {
        if self.batch_size < 1 {
            bail!("sampler.batch_size = {}: at least 1 RoI per minibatch", self.batch_size);
        }
        if !(0.0..=1.0).contains(&self.fg_thresh) {
            bail!("sampler.fg_thresh = {} is outside [0, 1]", self.fg_thresh);
        }
        if let Some(t) = self.nms_iou {
            if !(t > 0.0 && t <= 1.0) {
                bail!("sampler.nms_iou = {t} is outside (0, 1] (use null to turn NMS off)");
            }
        }
        Ok(())
    }
}

pub struct Ohem {
    cfg: OhemConfig,
}

impl Ohem {
    pub fn new(cfg: OhemConfig) -> Self {
        Ohem { cfg }
    }
}

/// The OHEM selection on host values: indices of the `k` highest losses that
/// survive greedy NMS (`iou > t` suppresses; optionally only within a label),
/// in descending loss order. Stops as soon as `k` are kept.
pub fn select_hard(boxes: &[BBox], loss: &[f32], labels: &[i64], k: usize, nms: Option<f64>, per_label: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..loss.len()).collect();
    order.sort_by(|&i, &j| loss[j].total_cmp(&loss[i]).then(i.cmp(&j)));
    let Some(t) = nms else {
        order.truncate(k);
        return order;
    };
    let mut kept: Vec<usize> = Vec::with_capacity(k);
    for i in order {
        if kept.len() == k {
            break;
        }
        let suppressed = kept.iter().any(|&j| (!per_label || labels[i] == labels[j]) && iou(&boxes[i], &boxes[j]) as f64 > t);
        if !suppressed {
            kept.push(i);
        }
    }
    kept
}

impl Sampler for Ohem {
    fn select(&mut self, r: &ImageRois, losses: Option<&RoiLosses>, per_image: i64) -> Tensor {
        let l = losses.expect("OHEM is given per-RoI losses (needs_roi_losses)");
        let score = match self.cfg.loss {
            OhemLoss::Cls => l.cls.shallow_clone(),
            OhemLoss::ClsLoc => &l.cls + &l.loc,
        };
        let boxes: Vec<f32> = host(&r.rois.to_kind(Kind::Float));
        let boxes: Vec<BBox> = boxes.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let labels: Vec<i64> = host(&r.labels);
        let keep = select_hard(&boxes, &host::<f32>(&score.to_kind(Kind::Float)), &labels, per_image.max(0) as usize, self.cfg.nms_iou, self.cfg.nms_per_label);
        let keep: Vec<i64> = keep.into_iter().map(|i| i as i64).collect();
        Tensor::from_slice(&keep).to_device(r.rois.device())
    }

    fn needs_roi_losses(&self) -> bool {
        true
    }

    fn backprop(&self) -> Backprop {
        match self.cfg.implementation {
            OhemImpl::ReadOnly => Backprop::Selected,
            OhemImpl::Masked => Backprop::MaskedAll,
        }
    }
}
