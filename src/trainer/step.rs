//! One SGD iteration, the same for every sampler: assignment, the sampler's
//! pick (after a read-only forward over all RoIs when it ranks by loss), the
//! head over the picked RoIs (or all of them, masked), the loss and the update.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::batch::{self, collate};
use super::scope::scoped;
use crate::config::TrainConfig;
use crate::model::sgd::Sgd;
pub use crate::model::minibatch_loss;
use crate::model::loss::{self, LossConfig};
use crate::model::{per_roi_losses, roi_pool, FastRcnn};
use crate::proposals::rpn::{self, Rpn, RpnOut};
use crate::sampler::{self, Backprop, ImageRois, Picked, RoiLosses};

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
    /// The per-class bookkeeping, when asked for ([`train_step_tallied`]).
    pub classes: Option<ClassTally>,
    /// Faster R-CNN: the RPN's (objectness, box) losses, which the step adds to the head's.
    pub loss_rpn: Option<(f64, f64)>,
}

/// Per class, index 0 background and 1..=K the classes, over a minibatch's RoIs (all of its
/// images' proposals and ground truth): how many RoIs are the class's, how many of them the
/// sampler picked, and the per-RoI loss (Fast R-CNN's classification + smooth L1, from the
/// weights before the step) summed over them all and over those not picked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassTally {
    pub candidates: Vec<i64>,
    pub selected: Vec<i64>,
    pub loss_sum: Vec<f64>,
    pub unpicked_loss_sum: Vec<f64>,
}

/// [`ClassTally`] of RoIs with `labels` `[ΣR]` (0..=k), picked at offsets `sel` `[S]`, with
/// per-RoI losses `loss` `[ΣR]`: tensor counts, no loop over RoIs.
pub fn class_tally(labels: &Tensor, sel: &Tensor, loss: &Tensor, k: i64) -> ClassTally {
    let n = k + 1;
    let loss = loss.to_kind(Kind::Double);
    let picked = Tensor::zeros_like(&loss).index_fill(0, sel, 1.0);
    let vec_i = |t: Tensor| Vec::<i64>::try_from(t.to_device(tch::Device::Cpu)).unwrap_or_default();
    let vec_f = |t: Tensor| Vec::<f64>::try_from(t.to_device(tch::Device::Cpu)).unwrap_or_default();
    ClassTally {
        candidates: vec_i(labels.bincount::<Tensor>(None, n)),
        selected: vec_i(labels.index_select(0, sel).bincount::<Tensor>(None, n)),
        loss_sum: vec_f(labels.bincount(Some(&loss), n)),
        unpicked_loss_sum: vec_f(labels.bincount(Some(&(&loss * (1.0 - picked))), n)),
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// Splits per-RoI losses `[ΣR]` and the (detached) outputs they came from into the images' pieces.
fn split_losses(cls: &Tensor, loc: &Tensor, logits: &Tensor, deltas: &Tensor, sizes: &[i64]) -> Vec<RoiLosses> {
    let (cls, loc, logits, deltas) = (cls.split_with_sizes(sizes, 0), loc.split_with_sizes(sizes, 0), logits.split_with_sizes(sizes, 0), deltas.split_with_sizes(sizes, 0));
    cls.into_iter().zip(loc).zip(logits.into_iter().zip(deltas)).map(|((cls, loc), (logits, deltas))| RoiLosses { cls, loc, logits, deltas }).collect()
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
    train_step_tallied(model, opt, lr, sampler, batch, cfg, false)
}

/// [`train_step`], with the per-class bookkeeping when `tally` ([`ClassTally`]): where the
/// sampler computed no per-RoI losses, a read-only forward of the head over all RoIs (no
/// gradient, features detached, the weights before the step) gives them; it draws no random
/// number and changes no weight, so the step is the same with or without it.
pub fn train_step_tallied(
    model: &FastRcnn,
    opt: &mut Sgd,
    lr: f64,
    sampler: &mut dyn sampler::Sampler,
    batch: &[batch::Prepared],
    cfg: &TrainConfig,
    tally: bool,
) -> Result<IterOut> {
    let images = collate(batch); // [N, 3, H, W]
    let feats = model.features(&images, true); // [N, C, H/16, W/16]
    let per_image = cfg.rois_per_image();
    let fg_thresh = cfg.sampler.fg_thresh();
    // Faster R-CNN: the RPN's proposals replace the given ones; its losses join the head's
    let rpn = model.rpn.as_ref().map(|r| scoped("ohem::rpn", || rpn_proposals(r, &feats, batch, RpnUse::Training)));

    // Assignment: proposals first, then ground truth as extra RoIs.
    let a = scoped("ohem::assign", || assign(batch, rpn.as_ref().map(|o| o.proposals.as_slice()), &*sampler, fg_thresh));
    let loss_cfg = sampler.loss();

    // Selection, as offsets into the concatenated RoIs.
    let (mode, needs_losses) = (sampler.backprop(), sampler.needs_roi_losses());
    let select = |losses: Option<&[RoiLosses]>| select_offsets(sampler, &a, losses, per_image);

    let Losses { loss_cls, loss_bbox, cls, loc, sel, ranked } = match mode {
        Backprop::Selected => backprop_selected(model, &feats, &a, batch, select, needs_losses, &loss_cfg)?,
        Backprop::MaskedAll => backprop_masked_all(model, &feats, &a, batch, select, &loss_cfg)?,
    };
    let n_sel = sel.size()[0];
    let classes = tally.then(|| {
        let _scope = super::scope::Scope::new("ohem::classes");
        let loss = match &ranked {
            Some(ls) => Tensor::cat(&ls.iter().map(|l| &l.cls + &l.loc).collect::<Vec<_>>(), 0),
            None => tch::no_grad(|| {
                let (logits, deltas) = head(model, &feats.detach(), &a.all_rois, false);
                let (cls, loc) = per_roi_losses(&logits, &deltas, &a.all_labels, &a.all_targets, model.num_classes);
                cls + loc
            }),
        };
        class_tally(&a.all_labels, &sel, &loss, model.num_classes)
    });
    let rpn_losses = rpn.and_then(|o| o.losses);
    match &rpn_losses {
        None => (&loss_cls + &loss_bbox).backward(),
        Some((obj, bx)) => (&loss_cls + &loss_bbox + obj + bx).backward(),
    }
    scoped("ohem::sgd", || opt.step(lr));

    let (lc, lb) = (scalar(&loss_cls), scalar(&loss_bbox));
    let loss_rpn = rpn_losses.map(|(o, b)| (scalar(&o), scalar(&b)));
    if !lc.is_finite() || !lb.is_finite() || loss_rpn.is_some_and(|(o, b)| !o.is_finite() || !b.is_finite()) {
        bail!("the training loss is not finite (loss_cls {lc}, loss_bbox {lb}{})", loss_rpn.map(|(o, b)| format!(", loss_rpn_obj {o}, loss_rpn_box {b}")).unwrap_or_default());
    }
    // The logs' statistics, beyond the step itself.
    let _stats = super::scope::Scope::new("ohem::stats");
    let Assignment { sizes, all_labels, .. } = &a;
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
        classes,
        loss_rpn,
    })
}

/// The minibatch's RoIs after assignment: each image's, their counts, and all
/// of them concatenated (boxes with their image's index, labels, targets).
struct Assignment {
    assigned: Vec<ImageRois>,
    sizes: Vec<i64>,
    /// `[ΣR, 5]`
    all_rois: Tensor,
    /// `[ΣR]`
    all_labels: Tensor,
    /// `[ΣR, 4]`
    all_targets: Tensor,
}

/// Assigns each image's RoIs, its proposals (the given ones, or `proposed`: the RPN's, followed
/// by any the sampler brings, [`sampler::Sampler::mined_rois`]) first and then its ground truth
/// as extra RoIs.
fn assign(batch: &[batch::Prepared], proposed: Option<&[Tensor]>, sampler: &dyn sampler::Sampler, fg_thresh: f64) -> Assignment {
    let assigned: Vec<ImageRois> = batch
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mined = proposed.and(sampler.mined_rois(p.index)).map(|m| p.to_input(&m));
            let props = match (proposed, &mined) {
                (Some(r), Some(m)) => Tensor::cat(&[&r[i], m], 0),
                (Some(r), None) => r[i].shallow_clone(),
                (None, _) => p.proposals.shallow_clone(),
            };
            let rois = Tensor::cat(&[props.shallow_clone(), p.gt.shallow_clone()], 0); // [R, 4]
            let mut a = sampler::assign(p.index, props.size()[0], rois, &p.gt, &p.gt_labels, fg_thresh);
            a.n_mined = mined.map_or(0, |m| m.size()[0]);
            a
        })
        .collect();
    let sizes: Vec<i64> = assigned.iter().map(|a| a.rois.size()[0]).collect();
    let all_rois = Tensor::cat(&assigned.iter().enumerate().map(|(b, a)| roi_pool::with_batch_index(b as i64, &a.rois)).collect::<Vec<_>>(), 0); // [ΣR, 5]
    let all_labels = Tensor::cat(&assigned.iter().map(|a| a.labels.shallow_clone()).collect::<Vec<_>>(), 0); // [ΣR]
    let all_targets = Tensor::cat(&assigned.iter().map(|a| a.targets.shallow_clone()).collect::<Vec<_>>(), 0); // [ΣR, 4]
    Assignment { assigned, sizes, all_rois, all_labels, all_targets }
}

/// The sampler's pick in each image, as offsets into the concatenated RoIs `[S]`,
/// with the weights `[S]`: `None` unless some image's pick carries them (then 1 for the others).
fn select_offsets(sampler: &mut dyn sampler::Sampler, a: &Assignment, losses: Option<&[RoiLosses]>, per_image: i64) -> (Tensor, Option<Tensor>) {
    let Assignment { assigned, sizes, .. } = a;
    let _scope = super::scope::Scope::new("ohem::select");
    let mut offset = 0i64;
    let picks: Vec<Picked> = assigned.iter().enumerate().map(|(b, a)| sampler.select_weighted(a, losses.map(|l| &l[b]), per_image)).collect();
    let weighted = picks.iter().any(|p| p.weight.is_some());
    let (mut idx, mut weight) = (Vec::with_capacity(picks.len()), Vec::with_capacity(picks.len()));
    for (b, p) in picks.into_iter().enumerate() {
        if weighted {
            weight.push(p.weight.unwrap_or_else(|| Tensor::ones([p.idx.size()[0]], (Kind::Float, p.idx.device()))));
        }
        idx.push(p.idx + offset);
        offset += sizes[b];
    }
    (Tensor::cat(&idx, 0), weighted.then(|| Tensor::cat(&weight, 0))) // [S], [S]
}

/// The minibatch's loss, ready for the backward: its two terms, the per-RoI
/// losses it sums (`[S]`, or `[ΣR]` zero where unselected in the masked mode),
/// the selected offsets, and every image's RoI losses when they were computed.
struct Losses {
    loss_cls: Tensor,
    loss_bbox: Tensor,
    cls: Tensor,
    loc: Tensor,
    sel: Tensor,
    ranked: Option<Vec<RoiLosses>>,
}

/// `Backprop::Selected`: the losses of every RoI from a read-only forward when
/// the sampler ranks by them, then the head with gradients over the selected RoIs alone.
fn backprop_selected(
    model: &FastRcnn,
    feats: &Tensor,
    a: &Assignment,
    batch: &[batch::Prepared],
    select: impl FnOnce(Option<&[RoiLosses]>) -> (Tensor, Option<Tensor>),
    needs_losses: bool,
    loss_cfg: &LossConfig,
) -> Result<Losses> {
    let k = model.num_classes;
    let Assignment { assigned, sizes, all_rois, all_labels, all_targets } = a;
    let ranked = needs_losses.then(|| {
        tch::no_grad(|| {
            let (logits, deltas) = head(model, &feats.detach(), all_rois, false);
            scoped("ohem::loss", || {
                let (cls, loc) = per_roi_losses(&logits, &deltas, all_labels, all_targets, k);
                split_losses(&cls, &loc, &logits, &deltas, sizes)
            })
        })
    });
    let (sel, weight) = select(ranked.as_deref());
    empty_check(&sel, batch)?;
    let (logits, deltas) = head(model, feats, &scoped("ohem::select", || all_rois.index_select(0, &sel)), true);
    let (gt, boxes, labels, targets) = scoped("ohem::select", || {
        let gt = all_gt_index(assigned, batch).index_select(0, &sel);
        let boxes = all_rois.index_select(0, &sel).narrow(1, 1, 4);
        (gt, boxes, all_labels.index_select(0, &sel), all_targets.index_select(0, &sel))
    });
    let s = loss::Selected { logits: &logits, deltas: &deltas, labels: &labels, targets: &targets, boxes: &boxes, gt: &gt, weight: weight.as_ref() };
    let (loss_cls, loss_bbox, cls, loc) = scoped("ohem::loss", || loss::minibatch(&s, loss_cfg, k));
    Ok(Losses { loss_cls, loss_bbox, cls, loc, sel, ranked })
}

/// `Backprop::MaskedAll`: the head with gradients over every RoI, the sampler
/// ranking by those losses (detached), the unselected RoIs' losses multiplied by zero.
fn backprop_masked_all(
    model: &FastRcnn,
    feats: &Tensor,
    a: &Assignment,
    batch: &[batch::Prepared],
    select: impl FnOnce(Option<&[RoiLosses]>) -> (Tensor, Option<Tensor>),
    loss_cfg: &LossConfig,
) -> Result<Losses> {
    let k = model.num_classes;
    let Assignment { sizes, all_rois, all_labels, all_targets, .. } = a;
    if *loss_cfg != LossConfig::default() {
        bail!("the masked mode trains with Fast R-CNN's loss only (the sampler asks for {loss_cfg:?})");
    }
    let (logits, deltas) = head(model, feats, all_rois, true);
    let (cls, loc, ranked) = scoped("ohem::loss", || {
        let (cls, loc) = per_roi_losses(&logits, &deltas, all_labels, all_targets, k);
        let ranked = split_losses(&cls.detach(), &loc.detach(), &logits.detach(), &deltas.detach(), sizes);
        (cls, loc, ranked)
    });
    let (sel, weight) = select(Some(&ranked));
    empty_check(&sel, batch)?;
    let (loss_cls, loss_bbox, cls, loc) = scoped("ohem::loss", || {
        let mask = Tensor::zeros_like(&cls).index_copy(0, &sel, &weight.unwrap_or_else(|| Tensor::ones([sel.size()[0]], (Kind::Float, cls.device()))));
        let (cls, loc) = (cls * &mask, loc * mask.gt(0.0).to_kind(Kind::Float));
        let (loss_cls, loss_bbox) = minibatch_loss(&cls, &loc, sel.size()[0]);
        (loss_cls, loss_bbox, cls, loc)
    });
    Ok(Losses { loss_cls, loss_bbox, cls, loc, sel, ranked: Some(ranked) })
}

/// What the RPN's proposals are for ([`rpn_proposals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RpnUse {
    /// A training step: the training top-k, and the RPN's losses.
    Training,
    /// Offline mining: the pool a training step would see (its top-k), without losses.
    TrainingPool,
    /// Inference: the test-time top-k.
    Testing,
}

/// Faster R-CNN's RPN over a batch's features `[N, C, h, w]`: each image's proposals, in the
/// input's inclusive pixels as the given proposals are, and for a training step its losses
/// against the images' ground truth.
pub(crate) fn rpn_proposals(rpn: &Rpn, feats: &Tensor, batch: &[batch::Prepared], using: RpnUse) -> RpnOut {
    let sizes: Vec<(i64, i64)> = batch.iter().map(|p| (p.image.size()[1], p.image.size()[2])).collect();
    let gt: Vec<Tensor> = batch.iter().map(|p| rpn::from_inclusive(&p.gt)).collect();
    let out = rpn.forward(feats, &sizes, (using == RpnUse::Training).then_some(gt.as_slice()), using != RpnUse::Testing);
    RpnOut { proposals: out.proposals.iter().map(rpn::to_inclusive).collect(), losses: out.losses }
}

/// The head over `rois` (the model's [`FastRcnn::head`]), its RoI pooling in the `ohem::roi_pool` scope.
fn head(model: &FastRcnn, feats: &Tensor, rois: &Tensor, train: bool) -> (Tensor, Tensor) {
    let pooled = scoped("ohem::roi_pool", || model.pool(feats, rois));
    model.head_from_pooled(&pooled, train)
}


fn empty_check(sel: &Tensor, batch: &[batch::Prepared]) -> Result<()> {
    if sel.size()[0] == 0 {
        bail!("the sampler selected no RoI in a minibatch (images {:?})", batch.iter().map(|p| p.index).collect::<Vec<_>>());
    }
    Ok(())
}

/// `[ΣR]` each RoI's best ground-truth box as a minibatch-wide index (image offsets added).
fn all_gt_index(assigned: &[ImageRois], batch: &[batch::Prepared]) -> Tensor {
    let mut offset = 0i64;
    let parts: Vec<Tensor> = assigned
        .iter()
        .zip(batch)
        .map(|(a, p)| {
            let t = &a.gt_index + offset;
            offset += p.gt.size()[0];
            t
        })
        .collect();
    Tensor::cat(&parts, 0)
}
