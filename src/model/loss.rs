//! The RoI head's losses: per-RoI cross-entropy and smooth L1 ([`per_roi_losses`],
//! what every sampler ranks or sums), and the minibatch loss ([`minibatch`]) with
//! the options that the loss-shaping strategies need:
//! - per-RoI classification weights returned by a sampler (PISA's ScoreHLR);
//! - the focal loss (Lin et al., ICCV 2017) in place of cross-entropy, with
//!   RetinaNet's normalisation by the number of foreground RoIs;
//! - PISA's ISR-P reweighting of positives and its CARL loss (Cao et al., CVPR 2020),
//!   as mmdetection computes them (`mmdet/models/losses/pisa_loss.py`).
//!
//! With the default [`LossConfig`] and no weights, [`minibatch`] is Fast R-CNN's
//! loss, computed by the very same operations as before the options existed.

use tch::{Kind, Reduction, Tensor};

use super::box_coder;

/// Unreduced per-RoI losses: `cls` = cross-entropy `[R]`, `loc` = smooth L1
/// (beta 1) summed over the 4 coordinates of the RoI's own class, 0 for
/// background `[R]`. `labels`: `[R]` in `0..=K` (0 = background); `targets`:
/// `[R, 4]` normalised.
pub fn per_roi_losses(logits: &Tensor, deltas: &Tensor, labels: &Tensor, targets: &Tensor, num_classes: i64) -> (Tensor, Tensor) {
    let cls = logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::None, -100, 0.0); // [R]
    let loc = own_class_deltas(deltas, labels, num_classes).smooth_l1_loss(targets, Reduction::None, 1.0).sum_dim_intlist(1, false, Kind::Float) * labels.gt(0).to_kind(Kind::Float); // [R]
    (cls, loc)
}

/// The `[R, 4]` deltas of each RoI's own class (class 1's for background, which no loss uses).
fn own_class_deltas(deltas: &Tensor, labels: &Tensor, num_classes: i64) -> Tensor {
    let r = labels.size()[0];
    let slot = (labels - 1).clamp_min(0); // [R]
    deltas.view([r, num_classes, 4]).gather(1, &slot.view([r, 1, 1]).expand([r, 1, 4], false), false).squeeze_dim(1)
}

/// Fast R-CNN's minibatch loss from per-RoI losses `[S]` of the `n_sel`
/// selected RoIs: (`sum(cls) / n_sel`, `sum(loc) / n_sel`) (the unselected RoIs
/// of the masked mode contribute zeros to the sums).
pub fn minibatch_loss(cls: &Tensor, loc: &Tensor, n_sel: i64) -> (Tensor, Tensor) {
    (cls.sum(Kind::Float) / n_sel as f64, loc.sum(Kind::Float) / n_sel as f64)
}

/// The classification loss of each RoI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClsLoss {
    CrossEntropy,
    /// `-α_t (1 - p_t)^γ log p_t` over the softmax, `α_t = α` for foreground
    /// RoIs and `1 - α` for background; no `α_t` when `alpha` is `None`.
    Focal { gamma: f64, alpha: Option<f64> },
}

/// What the sum of per-RoI losses is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalise {
    /// The RoIs selected (Fast R-CNN, mmdetection's RoI heads).
    Selected,
    /// The foreground RoIs among them, at least 1 (RetinaNet's focal loss).
    Foreground,
}

/// `(k, bias)` of PISA's ISR-P or CARL.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KBias {
    pub k: f64,
    pub bias: f64,
}

/// How a sampler's selected RoIs are turned into the minibatch loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub cls: ClsLoss,
    pub normalise: Normalise,
    /// What the box loss's sum is divided by; `None`: the same as the classification loss's.
    pub normalise_loc: Option<Normalise>,
    /// ISR-P: re-weight the positives' classification loss by their IoU-HLR rank.
    pub isr_p: Option<KBias>,
    /// CARL: add a regression loss weighted by the positive's score of its class.
    pub carl: Option<KBias>,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { cls: ClsLoss::CrossEntropy, normalise: Normalise::Selected, normalise_loc: None, isr_p: None, carl: None }
    }
}

/// The head's outputs and targets for the `S` selected RoIs of a minibatch.
pub struct Selected<'a> {
    /// `[S, K+1]`, `[S, 4K]`, with gradient.
    pub logits: &'a Tensor,
    pub deltas: &'a Tensor,
    /// `[S]` labels `0..=K`, `[S, 4]` normalised targets.
    pub labels: &'a Tensor,
    pub targets: &'a Tensor,
    /// `[S, 4]` the RoIs' boxes and `[S]` the minibatch-wide index of each RoI's
    /// best ground-truth box (ISR-P ranks the positives of each box).
    pub boxes: &'a Tensor,
    pub gt: &'a Tensor,
    /// `[S]` classification weights from the sampler (1 when `None`).
    pub weight: Option<&'a Tensor>,
}

/// The minibatch loss `(cls, loc)` of the selected RoIs under `cfg`.
/// Returns the per-RoI losses too (unweighted cross-entropy and smooth L1), for the logs.
pub fn minibatch(s: &Selected, cfg: &LossConfig, num_classes: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let (ce, loc) = per_roi_losses(s.logits, s.deltas, s.labels, s.targets, num_classes);
    let n_sel = s.labels.size()[0];
    let mut cls = match cfg.cls {
        ClsLoss::CrossEntropy => ce.shallow_clone(),
        ClsLoss::Focal { gamma, alpha } => focal(s.logits, s.labels, gamma, alpha),
    };
    let mut weight = s.weight.map(|w| w.shallow_clone());
    if let Some(isr) = cfg.isr_p {
        let w = weight.unwrap_or_else(|| Tensor::ones([n_sel], (Kind::Float, s.labels.device())));
        weight = Some(isr_p(s, &ce.detach(), &w, isr, num_classes));
    }
    if let Some(w) = &weight {
        cls = cls * w;
    }
    let divisor = |n: Normalise| match n {
        Normalise::Selected => n_sel,
        Normalise::Foreground => s.labels.gt(0).sum(Kind::Int64).int64_value(&[]).max(1),
    };
    let norm = divisor(cfg.normalise);
    let (loss_cls, mut loss_loc) = match cfg.normalise_loc.map(divisor) {
        Some(norm_loc) if norm_loc != norm => (minibatch_loss(&cls, &loc, norm).0, minibatch_loss(&cls, &loc, norm_loc).1),
        _ => minibatch_loss(&cls, &loc, norm),
    };
    if let Some(c) = cfg.carl {
        loss_loc = loss_loc + carl(s.logits, s.labels, &loc, c, n_sel);
    }
    (loss_cls, loss_loc, ce, loc)
}

/// Per-RoI focal loss `[R]` on softmax logits `[R, K+1]` (see [`ClsLoss::Focal`]);
/// the gradient flows through the modulating factor too, as in RetinaNet.
pub fn focal(logits: &Tensor, labels: &Tensor, gamma: f64, alpha: Option<f64>) -> Tensor {
    let logp = logits.log_softmax(1, Kind::Float).gather(1, &labels.unsqueeze(1), false).squeeze_dim(1); // [R]
    let modulating = (logp.exp().neg() + 1.0).pow_tensor_scalar(gamma);
    let mut fl = -(modulating * &logp);
    if let Some(a) = alpha {
        let fg = labels.gt(0).to_kind(Kind::Float);
        fl = fl * (&fg * a + (1.0 - fg) * (1.0 - a));
    }
    fl
}

/// PISA's ISR-P: the classification weights `[S]` with those of the positives
/// replaced by their importance. The positives' IoU (predicted box of their
/// class against their ground truth) ranks them per ground-truth box (local
/// rank); per class, the IoU-HLR orders them by local rank, then IoU; rank `r`
/// of a class with at most `n` positives per class gets `(n - r) / n`, then
/// `(bias + (1 - bias) w)^k`, scaled so that the positives' weighted
/// cross-entropy keeps its sum. All from detached values: the weights are constants.
pub fn isr_p(s: &Selected, ce: &Tensor, weight: &Tensor, kb: KBias, num_classes: i64) -> Tensor {
    let pos = s.labels.gt(0).nonzero().squeeze_dim(1); // [P]
    let p = pos.size()[0];
    if p == 0 {
        return weight.shallow_clone();
    }
    let (labels, rois) = (s.labels.index_select(0, &pos), s.boxes.index_select(0, &pos).to_kind(Kind::Float));
    let pred = own_class_deltas(&s.deltas.detach().index_select(0, &pos), &labels, num_classes); // [P, 4]
    let pred_box = box_coder::decode(&rois, &pred.unsqueeze(1)).squeeze_dim(1);
    let gt_box = box_coder::decode(&rois, &s.targets.index_select(0, &pos).unsqueeze(1)).squeeze_dim(1);
    let iou: Vec<f32> = super::host(&box_coder::aligned_iou(&pred_box, &gt_box));
    let (labels, gts): (Vec<i64>, Vec<i64>) = (super::host(&labels), super::host(&s.gt.index_select(0, &pos)));
    let imp = isr_importance(&labels, &gts, &iou, kb);
    let imp = Tensor::from_slice(&imp).to_device(weight.device());
    let (ce_pos, w_pos) = (ce.index_select(0, &pos), weight.index_select(0, &pos));
    let new = &w_pos * &imp;
    let ratio = (&ce_pos * &w_pos).sum(Kind::Float) / (&ce_pos * &new).sum(Kind::Float).clamp_min(1e-12);
    weight.index_copy(0, &pos, &(new * ratio))
}

/// ISR-P's importance of each positive, before normalisation: per class, the
/// [`hierarchical_ranks`] of its positives grouped by ground-truth box and keyed by IoU,
/// mapped linearly to `(n - r) / n` (`n`: the most positives of any one class),
/// then `(bias + (1 - bias) w)^k`.
pub fn isr_importance(labels: &[i64], gts: &[i64], iou: &[f32], kb: KBias) -> Vec<f32> {
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let members: Vec<Vec<usize>> = classes.iter().map(|c| (0..labels.len()).filter(|&i| labels[i] == *c).collect()).collect();
    let n = members.iter().map(Vec::len).max().unwrap_or(1) as f64;
    let mut imp = vec![0f32; labels.len()];
    for m in &members {
        let ranks = hierarchical_ranks(&m.iter().map(|&i| gts[i]).collect::<Vec<_>>(), &m.iter().map(|&i| iou[i]).collect::<Vec<_>>());
        for (&i, r) in m.iter().zip(ranks) {
            let w = (n - r as f64) / n;
            imp[i] = (kb.bias + (1.0 - kb.bias) * w).powf(kb.k) as f32;
        }
    }
    imp
}

/// PISA's CARL: `Σ_pos w_i · loc_i / n_sel`, with `w_i = (bias + (1 - bias) p_i)^k`
/// from the softmax score `p_i` of the positive's own class, scaled to sum to the
/// number of positives. The gradient flows through the scores (and the scaling), as
/// in mmdetection's `carl_loss`.
pub fn carl(logits: &Tensor, labels: &Tensor, loc: &Tensor, kb: KBias, n_sel: i64) -> Tensor {
    let pos = labels.gt(0).nonzero().squeeze_dim(1);
    let p = pos.size()[0];
    if p == 0 {
        return logits.sum(Kind::Float) * 0.0;
    }
    let score = logits.index_select(0, &pos).softmax(1, Kind::Float).gather(1, &labels.index_select(0, &pos).unsqueeze(1), false).squeeze_dim(1); // [P]
    let w = (score * (1.0 - kb.bias) + kb.bias).pow_tensor_scalar(kb.k);
    let w = &w * (p as f64) / w.sum(Kind::Float);
    (w * loc.index_select(0, &pos)).sum(Kind::Float) / n_sel as f64
}

/// Hierarchical local ranks (PISA's HLR): each item is first ranked within its
/// `group` by `key`, highest first (its local rank); all items are then ordered
/// by local rank, and within one local rank by key, highest first. Returns each
/// item's position in that order (0 = most important). Ties go to the lower index.
pub fn hierarchical_ranks(group: &[i64], key: &[f32]) -> Vec<usize> {
    let n = key.len();
    let by_key = |&i: &usize, &j: &usize| key[j].total_cmp(&key[i]).then(i.cmp(&j));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|i, j| group[*i].cmp(&group[*j]).then(by_key(i, j)));
    let mut local = vec![0usize; n];
    for (pos, &i) in order.iter().enumerate() {
        local[i] = if pos > 0 && group[order[pos - 1]] == group[i] { local[order[pos - 1]] + 1 } else { 0 };
    }
    order.sort_by(|i, j| local[*i].cmp(&local[*j]).then(by_key(i, j)));
    let mut rank = vec![0usize; n];
    for (pos, i) in order.into_iter().enumerate() {
        rank[i] = pos;
    }
    rank
}

