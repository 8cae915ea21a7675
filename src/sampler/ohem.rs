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
//! mmdetection's `OHEMSampler` is a different algorithm, reachable with options:
//! it keeps a foreground share (`fg_fraction: 0.25`: the hardest foreground RoIs
//! by loss up to that share, then the hardest background to fill B/N), ranks by
//! classification loss only (`loss: cls`) and uses no NMS (`nms_iou: null`).
//! That preset, `{kind: ohem, loss: cls, nms_iou: null, fg_fraction: 0.25}`, is
//! docs/samplers.md's "OHEM (mmdetection)". `bg_thresh_lo` (default 0) restricts the
//! eligible background as Fast R-CNN's sampler does.
//!
//! `impl: read_only` trains only the selected RoIs (the paper's design);
//! `impl: masked` forwards and backpropagates all RoIs with the loss of the
//! unselected ones set to zero (the naive design the paper compares with).
//! Both select the same RoIs and give the same gradients.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::fixed_ratio::quota;
use super::{host, host_boxes, Backprop, ImageRois, RoiLosses, Sampler};
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
    /// A foreground share of B/N, filled with the hardest foreground RoIs
    /// (mmdetection's variant); `null` (default): no share, as in the paper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fg_fraction: Option<f64>,
    /// Background RoIs need IoU >= this to be eligible (default 0: every RoI, as in the paper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bg_thresh_lo: Option<f64>,
}

impl Default for OhemConfig {
    fn default() -> Self {
        OhemConfig { batch_size: 128, fg_thresh: 0.5, nms_iou: Some(0.7), nms_per_label: false, loss: OhemLoss::ClsLoc, implementation: OhemImpl::ReadOnly, fg_fraction: None, bg_thresh_lo: None }
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
        for (k, v) in [("fg_fraction", self.fg_fraction), ("bg_thresh_lo", self.bg_thresh_lo)] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    bail!("sampler.{k} = {v} is outside [0, 1]");
                }
            }
        }
        if let Some(lo) = self.bg_thresh_lo {
            if lo > self.fg_thresh {
                bail!("sampler.bg_thresh_lo = {lo} is above sampler.fg_thresh = {}", self.fg_thresh);
            }
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
        let (c, per_image) = (&self.cfg, per_image.max(0) as usize);
        let boxes = host_boxes(&r.rois);
        let (labels, score): (Vec<i64>, Vec<f32>) = (host(&r.labels), host(&score.to_kind(Kind::Float)));
        let hardest = |among: &[usize], k: usize| -> Vec<usize> {
            let sub = |v: &[f32]| among.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let keep = select_hard(&among.iter().map(|&i| boxes[i]).collect::<Vec<_>>(), &sub(&score), &among.iter().map(|&i| labels[i]).collect::<Vec<_>>(), k, c.nms_iou, c.nms_per_label);
            keep.into_iter().map(|j| among[j]).collect()
        };
        let keep = match (c.fg_fraction, c.bg_thresh_lo) {
            (None, None) => select_hard(&boxes, &score, &labels, per_image, c.nms_iou, c.nms_per_label),
            (fg_fraction, lo) => {
                let iou: Vec<f32> = host(&r.max_iou);
                let lo = lo.unwrap_or(0.0) as f32;
                let eligible: Vec<usize> = (0..iou.len()).filter(|&i| labels[i] > 0 || iou[i] >= lo).collect();
                match fg_fraction {
                    None => hardest(&eligible, per_image),
                    Some(f) => {
                        let (fg, bg): (Vec<usize>, Vec<usize>) = eligible.into_iter().partition(|&i| labels[i] > 0);
                        let mut keep = hardest(&fg, quota(f, per_image as i64) as usize);
                        keep.extend(hardest(&bg, per_image - keep.len()));
                        keep
                    }
                }
            }
        };
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
