//! Offline mining's view of the model: every proposal of every training
//! image scored by the frozen model, for a sampler that mines
//! ([`crate::sampler::Miner`]).

use anyhow::Result;
use tch::{Device, Kind};

use super::batch::{prepare, ImageStore};
use crate::config::TrainConfig;
use crate::model::{per_roi_losses, roi_pool, FastRcnn};
use crate::sampler::{self, ImageScores, Miner};

/// Scores the training set with the current (frozen) model, for offline mining:
/// eval mode, no gradient, every proposal of every image, no flip. Returns
/// [`super::Stopped`] between two images once `stop()` is true (a pre-emption
/// signal: the trainer checkpoints before the round, which a resume mines again).
pub struct FrozenScorer<'a> {
    pub model: &'a FastRcnn,
    pub store: &'a ImageStore,
    pub cfg: &'a TrainConfig,
    pub device: Device,
    pub stop: &'a dyn Fn() -> bool,
}

impl<'a> FrozenScorer<'a> {
    /// A scorer that is never stopped (benches, tests).
    pub fn new(model: &'a FastRcnn, store: &'a ImageStore, cfg: &'a TrainConfig, device: Device) -> Self {
        FrozenScorer { model, store, cfg, device, stop: &|| false }
    }
}

impl Miner for FrozenScorer<'_> {
    fn score_each(&mut self, each: &mut dyn FnMut(ImageScores) -> Result<()>) -> Result<()> {
        let fg_thresh = self.cfg.sampler.fg_thresh();
        let k = self.model.num_classes;
        for i in 0..self.store.len() {
            if (self.stop)() {
                return Err(super::Stopped.into());
            }
            self.store.ahead(&(i + 1..i + 1 + super::batch::AHEAD).collect::<Vec<_>>());
            let p = prepare(self.store, i, &self.cfg.input, false, self.device)?;
            let s = tch::no_grad(|| -> Result<ImageScores> {
                let feats = self.model.features(&p.image.unsqueeze(0), false);
                // Faster R-CNN mines the RPN's proposals of this moment, as training would see them
                let (props, boxes, difficult_iou) = match &self.model.rpn {
                    Some(rpn) => {
                        let props = super::step::rpn_proposals(rpn, &feats, std::slice::from_ref(&p), super::step::RpnUse::TrainingPool).proposals.swap_remove(0);
                        // in the original image's pixels, clipped to it (the input's rounded size can reach past it)
                        let ann = &self.store.anns[i];
                        let orig = crate::model::box_coder::clip(&(&props / p.scale), ann.width as i64, ann.height as i64);
                        let d = self.store.difficult_iou_of(i, &orig);
                        (props, Some(orig), d)
                    }
                    None => (p.proposals.shallow_clone(), None, self.store.difficult_iou(i)?),
                };
                let a = sampler::assign(i, props.size()[0], props.shallow_clone(), &p.gt, &p.gt_labels, fg_thresh);
                let rois = roi_pool::with_batch_index(0, &props);
                let (logits, deltas) = self.model.head(&feats, &rois, false);
                let (cls, loc) = per_roi_losses(&logits, &deltas, &a.labels, &a.targets, k);
                let fg_score = logits.softmax(-1, Kind::Float).narrow(1, 1, k).amax([1], false);
                Ok(ImageScores { image: i, labels: a.labels, max_iou: a.max_iou, fg_score, loss: cls + loc, difficult_iou, boxes })
            })?;
            each(s)?;
        }
        Ok(())
    }
}

