//! One SGD iteration, the same for every sampler: assignment, the sampler's
//! pick (after a read-only forward over all RoIs when it ranks by loss), the
//! head over the picked RoIs (or all of them, masked), the loss and the update.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::batch::{self, collate};
use crate::config::TrainConfig;
use crate::model::sgd::Sgd;
use crate::model::{per_roi_losses, roi_pool, FastRcnn};
use crate::sampler::{self, Backprop, ImageRois, RoiLosses};

/// Result of one training iteration.
pub struct IterOut {
    pub loss_cls: f64,
    pub loss_bbox: f64,
    /// RoIs backpropagated, and the foreground among them.
    pub rois: i64,
    pub fg: i64,
    pub sel_loss_sum: f64,
    /// (sum, count) of per-RoI losses over all RoIs, when they were computed.
    pub all_loss: Option<(f64, i64)>,
    /// The images of the minibatch and their RoIs (proposals and ground truth), before sampling.
    pub images: i64,
    pub rois_all: i64,
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// The minibatch loss from per-RoI losses `[S]` of the `n_sel` selected RoIs:
/// (`sum(cls) / n_sel`, `sum(loc) / n_sel`), Fast R-CNN's normalisation (the
/// unselected RoIs of the masked mode contribute zeros to the sums).
pub fn minibatch_loss(cls: &Tensor, loc: &Tensor, n_sel: i64) -> (Tensor, Tensor) {
    (cls.sum(Kind::Float) / n_sel as f64, loc.sum(Kind::Float) / n_sel as f64)
}

/// Splits per-RoI losses `[ΣR]` into the images' pieces.
fn split_losses(cls: &Tensor, loc: &Tensor, sizes: &[i64]) -> Vec<RoiLosses> {
    cls.split_with_sizes(sizes, 0).into_iter().zip(loc.split_with_sizes(sizes, 0)).map(|(cls, loc)| RoiLosses { cls, loc }).collect()
}

/// One SGD iteration on `batch` (public for the tests and the bench).
///
/// `Backprop::Selected`: if the sampler ranks by loss, a read-only forward of
/// the head over all RoIs (no gradient, features detached) gives the losses;
/// only the selected RoIs then go through the head with gradients.
/// `Backprop::MaskedAll`: all RoIs go through the head with gradients; the
/// sampler ranks by those same losses (detached), and the loss of unselected
/// RoIs is multiplied by zero. Both normalise by the number selected.
pub fn train_step(
    model: &FastRcnn,
    opt: &mut Sgd,
    lr: f64,
    sampler: &mut dyn sampler::Sampler,
    batch: &[batch::Prepared],
    cfg: &TrainConfig,
) -> Result<IterOut> {
    let k = model.num_classes;
    let images = collate(batch); // [N, 3, H, W]
    let feats = model.features(&images, true); // [N, C, H/16, W/16]
    let per_image = cfg.rois_per_image();
    let fg_thresh = cfg.sampler.fg_thresh();

    // Assignment: proposals first, then ground truth as extra RoIs.
    let assigned: Vec<ImageRois> = batch
        .iter()
        .map(|p| {
            let rois = Tensor::cat(&[p.proposals.shallow_clone(), p.gt.shallow_clone()], 0); // [R, 4]
            sampler::assign(p.index, p.proposals.size()[0], rois, &p.gt, &p.gt_labels, fg_thresh)
        })
        .collect();
    let sizes: Vec<i64> = assigned.iter().map(|a| a.rois.size()[0]).collect();
    let all_rois = Tensor::cat(&assigned.iter().enumerate().map(|(b, a)| roi_pool::with_batch_index(b as i64, &a.rois)).collect::<Vec<_>>(), 0); // [ΣR, 5]
    let all_labels = Tensor::cat(&assigned.iter().map(|a| a.labels.shallow_clone()).collect::<Vec<_>>(), 0); // [ΣR]
    let all_targets = Tensor::cat(&assigned.iter().map(|a| a.targets.shallow_clone()).collect::<Vec<_>>(), 0); // [ΣR, 4]

    // Selection, as offsets into the concatenated RoIs.
    let (mode, needs_losses) = (sampler.backprop(), sampler.needs_roi_losses());
    let mut select = |losses: Option<&[RoiLosses]>| -> Tensor {
        let mut offset = 0i64;
        let mut picked = Vec::with_capacity(batch.len());
        for (b, a) in assigned.iter().enumerate() {
            picked.push(sampler.select(a, losses.map(|l| &l[b]), per_image) + offset);
            offset += sizes[b];
        }
        Tensor::cat(&picked, 0) // [S]
    };

    let (cls, loc, sel, ranked): (Tensor, Tensor, Tensor, Option<Vec<RoiLosses>>) = match mode {
        Backprop::Selected => {
            let ranked = needs_losses.then(|| {
                tch::no_grad(|| {
                    let (logits, deltas) = model.head(&feats.detach(), &all_rois, false);
                    let (cls, loc) = per_roi_losses(&logits, &deltas, &all_labels, &all_targets, k);
                    split_losses(&cls, &loc, &sizes)
                })
            });
            let sel = select(ranked.as_deref());
            let (logits, deltas) = model.head(&feats, &all_rois.index_select(0, &sel), true);
            let (cls, loc) = per_roi_losses(&logits, &deltas, &all_labels.index_select(0, &sel), &all_targets.index_select(0, &sel), k);
            (cls, loc, sel, ranked)
        }
        Backprop::MaskedAll => {
            let (logits, deltas) = model.head(&feats, &all_rois, true);
            let (cls, loc) = per_roi_losses(&logits, &deltas, &all_labels, &all_targets, k);
            let ranked = split_losses(&cls.detach(), &loc.detach(), &sizes);
            let sel = select(Some(&ranked));
            let mask = Tensor::zeros_like(&cls).index_fill(0, &sel, 1.0);
            (cls * &mask, loc * mask, sel, Some(ranked))
        }
    };
    let n_sel = sel.size()[0];
    if n_sel == 0 {
        bail!("the sampler selected no RoI in a minibatch (images {:?})", batch.iter().map(|p| p.index).collect::<Vec<_>>());
    }
    let (loss_cls, loss_bbox) = minibatch_loss(&cls, &loc, n_sel);
    (&loss_cls + &loss_bbox).backward();
    opt.step(lr);

    let (lc, lb) = (scalar(&loss_cls), scalar(&loss_bbox));
    if !lc.is_finite() || !lb.is_finite() {
        bail!("the training loss is not finite (loss_cls {lc}, loss_bbox {lb})");
    }
    let all_loss = ranked.map(|ls| {
        let s: f64 = ls.iter().map(|l| scalar(&(&l.cls + &l.loc).sum(Kind::Float))).sum();
        (s, sizes.iter().sum())
    });
    Ok(IterOut {
        loss_cls: lc,
        loss_bbox: lb,
        rois: n_sel,
        fg: scalar(&all_labels.index_select(0, &sel).gt(0).sum(Kind::Int64)) as i64,
        // per-RoI loss (cls + loc) of the selected RoIs; in masked mode the others are zero
        sel_loss_sum: scalar(&(cls + loc).sum(Kind::Float).detach()),
        all_loss,
        images: batch.len() as i64,
        rois_all: sizes.iter().sum(),
    })
}

