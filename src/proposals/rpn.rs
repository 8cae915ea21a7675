//! Learned proposals: the region proposal network of Faster R-CNN (Ren, He, Girshick & Sun,
//! NeurIPS 2015), as torchvision's `RegionProposalNetwork` builds it, on the backbone that the
//! Fast R-CNN head shares.
//!
//! - **Anchors** ([`cell_anchors`], [`grid_anchors`]): every feature cell holds one anchor per
//!   (aspect ratio, size), ratio-major, centred on the cell's top-left image pixel
//!   (`x * stride`, `y * stride`), rounded as torchvision rounds them; a feature map's anchors
//!   run over rows, then columns, then the cell's anchors.
//! - **Head** ([`RpnHead`]): a 3×3 convolution and ReLU, then 1×1 convolutions to one objectness
//!   logit and four box deltas per anchor, initialised N(0, 0.01) with zero biases.
//! - **Targets** ([`assign_anchors`]): IoU ≥ `fg_iou` (0.7) is positive, < `bg_iou` (0.3)
//!   negative, between ignored; each ground-truth box's best anchors are positive as well
//!   (torchvision's `allow_low_quality_matches`, ties included), so that a box too small or too
//!   oddly shaped for 0.7 is still learned. An image without boxes has only negatives.
//! - **Sampling** ([`sample_anchors`]): `batch_per_image` (256) anchors an image, up to
//!   `positive_fraction` (half) of them positive, drawn uniformly without replacement.
//! - **Loss** ([`rpn_loss`]): binary cross-entropy with logits, the mean over the sampled
//!   anchors, plus smooth L1 (β = 1/9) over the sampled positives' deltas, divided by the
//!   number sampled.
//! - **Proposals** ([`filter_proposals`]): deltas decoded on their anchors (detached: Faster
//!   R-CNN's approximate joint training does not backpropagate through the proposals), the
//!   `pre_nms_top_n` highest objectness logits of each image, clipped to the image, boxes
//!   narrower or shorter than `min_size` dropped, NMS at `nms` over sigmoid scores, then the first
//!   `post_nms_top_n`. Training and testing have their own top-k.
//!
//! The RPN works in torchvision's continuous coordinates (a box's width is `x2 - x1`) with its
//! box coder (weights 1, dw and dh clamped at ln(1000/16)); the RoI head that takes its
//! proposals keeps Fast R-CNN's coder, pooling and losses ([`crate::model`]). Anchors, targets,
//! filtering and the loss equal torchvision 0.28's on the inputs of `scripts/rpn_reference.py`
//! (tests/rpn.rs). Every step is whole-tensor work on the features' device, except NMS, which
//! walks a host copy of the sorted boxes as torchvision's CPU kernel does.

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::model::host;

/// The `rpn:` section of a config: anchors, target assignment, sampling and proposal filtering.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpnConfig {
    /// Anchor sizes in input pixels (the square root of an anchor's area).
    pub anchor_sizes: Vec<f64>,
    /// Anchor aspect ratios, height / width.
    pub aspect_ratios: Vec<f64>,
    /// IoU at or above which an anchor is positive.
    pub fg_iou: f64,
    /// IoU below which an anchor is negative (between the two: ignored).
    pub bg_iou: f64,
    /// Anchors sampled per image for the loss.
    pub batch_per_image: i64,
    /// The largest share of positives among them.
    pub positive_fraction: f64,
    /// Proposals kept per image, by objectness, before NMS, in training and at test time.
    pub pre_nms_top_n_train: i64,
    pub pre_nms_top_n_test: i64,
    /// Proposals kept per image after NMS, in training and at test time.
    pub post_nms_top_n_train: i64,
    pub post_nms_top_n_test: i64,
    /// NMS IoU over the proposals (suppressed when strictly above).
    pub nms: f64,
    /// Proposals narrower or shorter than this, in pixels, are dropped.
    pub min_size: f64,
}

impl Default for RpnConfig {
    fn default() -> Self {
        RpnConfig {
            anchor_sizes: vec![16.0, 32.0, 64.0],
            aspect_ratios: vec![0.5, 1.0, 2.0],
            fg_iou: 0.7,
            bg_iou: 0.3,
            batch_per_image: 256,
            positive_fraction: 0.5,
            pre_nms_top_n_train: 2000,
            pre_nms_top_n_test: 1000,
            post_nms_top_n_train: 2000,
            post_nms_top_n_test: 1000,
            nms: 0.7,
            min_size: 1e-3,
        }
    }
}

impl RpnConfig {
    pub fn check(&self) -> Result<()> {
        if self.anchor_sizes.is_empty() || self.anchor_sizes.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("model.rpn.anchor_sizes = {:?}: give one or more positive sizes in pixels", self.anchor_sizes);
        }
        if self.aspect_ratios.is_empty() || self.aspect_ratios.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            bail!("model.rpn.aspect_ratios = {:?}: give one or more positive ratios (height / width)", self.aspect_ratios);
        }
        // anchors are rounded to whole pixels: one that rounds to no width or height has no box
        let cell: Vec<f32> = Vec::try_from(cell_anchors(&self.anchor_sizes, &self.aspect_ratios).flatten(0, -1)).unwrap_or_default();
        if cell.chunks(4).any(|a| a[2] - a[0] < 1.0 || a[3] - a[1] < 1.0) {
            bail!("model.rpn.anchor_sizes = {:?} with model.rpn.aspect_ratios = {:?}: an anchor rounds to less than a pixel wide or high", self.anchor_sizes, self.aspect_ratios);
        }
        if !(0.0..=1.0).contains(&self.bg_iou) || !(0.0..=1.0).contains(&self.fg_iou) || self.bg_iou > self.fg_iou {
            bail!("model.rpn.bg_iou = {} and model.rpn.fg_iou = {}: both in [0, 1], bg_iou at most fg_iou", self.bg_iou, self.fg_iou);
        }
        if self.batch_per_image < 1 {
            bail!("model.rpn.batch_per_image = {} must be positive", self.batch_per_image);
        }
        if !(0.0..=1.0).contains(&self.positive_fraction) {
            bail!("model.rpn.positive_fraction = {} is outside [0, 1]", self.positive_fraction);
        }
        for (key, v) in [("pre_nms_top_n_train", self.pre_nms_top_n_train), ("pre_nms_top_n_test", self.pre_nms_top_n_test), ("post_nms_top_n_train", self.post_nms_top_n_train), ("post_nms_top_n_test", self.post_nms_top_n_test)] {
            if v < 1 {
                bail!("model.rpn.{key} = {v} must be positive");
            }
        }
        if !(self.nms > 0.0 && self.nms <= 1.0) {
            bail!("model.rpn.nms = {} is outside (0, 1]", self.nms);
        }
        if !(self.min_size.is_finite() && self.min_size >= 0.0) {
            bail!("model.rpn.min_size = {} must be 0 or more", self.min_size);
        }
        Ok(())
    }

    /// Anchors per feature cell.
    pub fn anchors_per_cell(&self) -> i64 {
        (self.anchor_sizes.len() * self.aspect_ratios.len()) as i64
    }

    /// (pre-NMS, post-NMS) top-k in training or at test time.
    pub fn top_n(&self, train: bool) -> (i64, i64) {
        if train {
            (self.pre_nms_top_n_train, self.post_nms_top_n_train)
        } else {
            (self.pre_nms_top_n_test, self.post_nms_top_n_test)
        }
    }
}

/// The anchors of one feature cell centred on (0, 0): `[R·S, 4]` for R ratios and S sizes,
/// ratio-major, each `(-w/2, -h/2, w/2, h/2)` rounded, with `h/w` the ratio and `√(wh)` the size.
pub fn cell_anchors(sizes: &[f64], ratios: &[f64]) -> Tensor {
    let scales = Tensor::from_slice(&sizes.iter().map(|&s| s as f32).collect::<Vec<_>>());
    let ratios = Tensor::from_slice(&ratios.iter().map(|&r| r as f32).collect::<Vec<_>>());
    let h_ratios = ratios.sqrt();
    let w_ratios = h_ratios.reciprocal();
    let ws = (w_ratios.unsqueeze(1) * scales.unsqueeze(0)).view([-1]);
    let hs = (h_ratios.unsqueeze(1) * scales.unsqueeze(0)).view([-1]);
    (Tensor::stack(&[-&ws, -&hs, ws, hs], 1) / 2.0).round()
}

/// Every anchor of a `grid = (height, width)` feature map at `stride` input pixels a cell:
/// `[H·W·A, 4]`, rows, then columns, then the cell's anchors `cell` `[A, 4]`.
pub fn grid_anchors(cell: &Tensor, grid: (i64, i64), stride: i64, device: tch::Device) -> Tensor {
    let (gh, gw) = grid;
    let shifts_x = Tensor::arange(gw, (Kind::Float, device)) * stride as f64;
    let shifts_y = Tensor::arange(gh, (Kind::Float, device)) * stride as f64;
    let mesh = Tensor::meshgrid_indexing(&[shifts_y, shifts_x], "ij");
    let (sy, sx) = (mesh[0].reshape([-1]), mesh[1].reshape([-1]));
    let shifts = Tensor::stack(&[&sx, &sy, &sx, &sy], 1);
    (shifts.view([-1, 1, 4]) + cell.to_device(device).view([1, -1, 4])).reshape([-1, 4])
}

/// Areas of `[R, 4]` boxes, continuous coordinates.
fn areas(b: &Tensor) -> Tensor {
    (b.select(1, 2) - b.select(1, 0)) * (b.select(1, 3) - b.select(1, 1))
}

/// IoU matrix `[A, B]` in continuous coordinates (torchvision's `box_iou`).
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let lt = a.narrow(1, 0, 2).unsqueeze(1).maximum(&b.narrow(1, 0, 2).unsqueeze(0));
    let rb = a.narrow(1, 2, 2).unsqueeze(1).minimum(&b.narrow(1, 2, 2).unsqueeze(0));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = areas(a).unsqueeze(1) + areas(b).unsqueeze(0) - &inter;
    inter / union
}

/// Anchor targets of one image: `labels` `[A]` float (1 positive, 0 negative, -1 ignored) and
/// each anchor's matched ground-truth box `[A, 4]` (zeros when the image has none).
pub fn assign_anchors(anchors: &Tensor, gt: &Tensor, fg_iou: f64, bg_iou: f64) -> (Tensor, Tensor) {
    let a = anchors.size()[0];
    let dev = anchors.device();
    if gt.size()[0] == 0 {
        return (Tensor::zeros([a], (Kind::Float, dev)), Tensor::zeros([a, 4], (Kind::Float, dev)));
    }
    let quality = box_iou(gt, anchors); // [G, A]
    let (best, matches) = quality.max_dim(0, false); // [A]
    // every ground-truth box's best anchors (ties included) keep their match whatever its IoU
    let (highest, _) = quality.max_dim(1, true); // [G, 1]
    let low_quality = quality.eq_tensor(&highest).any_dim(0, false); // [A]
    let negative = best.lt(bg_iou).logical_and(&low_quality.logical_not());
    let between = best.ge(bg_iou).logical_and(&best.lt(fg_iou)).logical_and(&low_quality.logical_not());
    let labels = Tensor::ones([a], (Kind::Float, dev)).masked_fill(&negative, 0.0).masked_fill(&between, -1.0);
    // as torchvision: an anchor that is not positive takes the first box (its target is unused)
    let matches = matches.masked_fill(&labels.lt(1.0), 0);
    (labels, gt.index_select(0, &matches))
}

/// Regression targets of `reference` boxes on `anchors` (`[A, 4]` each), box-coder weights 1.
pub fn encode(reference: &Tensor, anchors: &Tensor) -> Tensor {
    let (ex, ey, ew, eh) = centre_size(anchors);
    let (gx, gy, gw, gh) = centre_size(reference);
    Tensor::stack(&[(gx - &ex) / &ew, (gy - &ey) / &eh, (gw / ew).log(), (gh / eh).log()], 1)
}

/// Boxes `[A, 4]` from `deltas` `[A, 4]` on `anchors` `[A, 4]`, dw and dh clamped at ln(1000/16).
pub fn decode(deltas: &Tensor, anchors: &Tensor) -> Tensor {
    let (cx, cy, w, h) = centre_size(anchors);
    let clamp = (1000.0f64 / 16.0).ln();
    let pcx = deltas.select(1, 0) * &w + cx;
    let pcy = deltas.select(1, 1) * &h + cy;
    let pw = deltas.select(1, 2).clamp_max(clamp).exp() * w;
    let ph = deltas.select(1, 3).clamp_max(clamp).exp() * h;
    let (hw, hh) = (pw * 0.5, ph * 0.5);
    Tensor::stack(&[&pcx - &hw, &pcy - &hh, pcx + hw, pcy + hh], 1)
}

fn centre_size(b: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let w = b.select(1, 2) - b.select(1, 0);
    let h = b.select(1, 3) - b.select(1, 1);
    let cx = b.select(1, 0) + &w * 0.5;
    let cy = b.select(1, 1) + &h * 0.5;
    (cx, cy, w, h)
}

/// Greedy NMS in continuous coordinates: boxes by descending score (a stable sort, so ties keep
/// their order), each kept unless its IoU with a kept box is strictly above `thresh`. Returns the
/// kept indices `[K]` int64 in descending score, on the boxes' device.
///
/// The algorithm of torchvision's CPU `nms` kernel, on the host: each kept box against the boxes
/// after it that are still in, the IoU computed as [`box_iou`] computes it (f32, `inter /
/// (area_i + area_j - inter)`). The comparison is in f32, as a float tensor's `gt(thresh)` makes
/// it and as this function did when it thresholded a `[N, N]` IoU matrix, so the kept set is
/// that matrix's; torchvision's kernel compares in f64, which differs only for an IoU equal to
/// `thresh` rounded up to f32 (0.3: kept here, suppressed there). Without the matrix, whose
/// tensor ops made the RPN 2.6 times the peer's in a profile at 2000 proposals (`harness bench
/// samplers --detector faster_rcnn --profile`, beside a running study); docs/benchmarks.md.
pub fn nms(boxes: &Tensor, scores: &Tensor, thresh: f64) -> Tensor {
    let n = boxes.size()[0];
    let dev = boxes.device();
    if n == 0 {
        return Tensor::zeros([0], (Kind::Int64, dev));
    }
    let (_, order) = scores.sort_stable(true, 0, true);
    let sorted: Vec<f32> = host(&boxes.index_select(0, &order).to_kind(Kind::Float));
    let b: Vec<[f32; 4]> = sorted.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    let area: Vec<f32> = b.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    let t = thresh as f32;
    let mut removed = vec![false; b.len()];
    let mut keep = Vec::new();
    for i in 0..b.len() {
        if removed[i] {
            continue;
        }
        keep.push(i as i64);
        let bi = b[i];
        for j in i + 1..b.len() {
            if removed[j] {
                continue;
            }
            let bj = b[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            if inter / (area[i] + area[j] - inter) > t {
                removed[j] = true;
            }
        }
    }
    order.index_select(0, &Tensor::from_slice(&keep).to_device(dev))
}

/// Clips `[R, 4]` boxes to an image of `height × width` pixels: x in [0, width], y in [0, height].
pub fn clip_to_image(boxes: &Tensor, height: i64, width: i64) -> Tensor {
    let x1 = boxes.select(1, 0).clamp(0.0, width as f64);
    let y1 = boxes.select(1, 1).clamp(0.0, height as f64);
    let x2 = boxes.select(1, 2).clamp(0.0, width as f64);
    let y2 = boxes.select(1, 3).clamp(0.0, height as f64);
    Tensor::stack(&[x1, y1, x2, y2], 1)
}

/// Each image's proposals from its decoded boxes `[N, A, 4]` and objectness logits `[N, A]`
/// (both detached): (`[P, 4]` boxes, `[P]` sigmoid scores) per image, best first.
/// `image_sizes`: each image's `(height, width)` before padding.
pub fn filter_proposals(boxes: &Tensor, objectness: &Tensor, image_sizes: &[(i64, i64)], pre_nms_top_n: i64, post_nms_top_n: i64, nms_thresh: f64, min_size: f64) -> Vec<(Tensor, Tensor)> {
    let a = objectness.size()[1];
    let (top, idx) = objectness.topk(pre_nms_top_n.min(a), 1, true, true); // [N, k]
    let scores = top.sigmoid();
    image_sizes
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            let b = clip_to_image(&boxes.get(i as i64).index_select(0, &idx.get(i as i64)), h, w);
            let s = scores.get(i as i64);
            let big = (b.select(1, 2) - b.select(1, 0)).ge(min_size).logical_and(&(b.select(1, 3) - b.select(1, 1)).ge(min_size));
            let kept = big.nonzero().squeeze_dim(1);
            let (b, s) = (b.index_select(0, &kept), s.index_select(0, &kept));
            let keep = nms(&b, &s, nms_thresh);
            let keep = keep.narrow(0, 0, keep.size()[0].min(post_nms_top_n));
            (b.index_select(0, &keep), s.index_select(0, &keep))
        })
        .collect()
}

/// The anchors of one image that its loss sees: up to `batch · fraction` positives, then
/// negatives to fill `batch`, each drawn uniformly without replacement (libtorch's generator).
/// Returns (positive, negative) indices into `labels` `[A]` (1 / 0 / -1).
pub fn sample_anchors(labels: &Tensor, batch: i64, fraction: f64) -> (Tensor, Tensor) {
    let pos = crate::sampler::sample_where(&labels.ge(1.0), (batch as f64 * fraction) as i64);
    let neg = crate::sampler::sample_where(&labels.eq(0.0), batch - pos.size()[0]);
    (pos, neg)
}

/// The RPN's two losses over all images' anchors: objectness `[ΣA]` logits, `deltas` `[ΣA, 4]`,
/// `labels` `[ΣA]`, regression `targets` `[ΣA, 4]`, and the sampled positives and negatives
/// (indices into the same rows). Returns (objectness loss, box loss).
pub fn rpn_loss(objectness: &Tensor, deltas: &Tensor, labels: &Tensor, targets: &Tensor, pos: &Tensor, neg: &Tensor) -> (Tensor, Tensor) {
    let sampled = Tensor::cat(&[pos, neg], 0);
    if sampled.size()[0] == 0 {
        // no anchor to learn from (a config check keeps this from happening): no loss, not NaN
        let zero = objectness.sum(Kind::Float) * 0.0;
        return (zero.shallow_clone(), zero);
    }
    let box_loss = deltas.index_select(0, pos).smooth_l1_loss(&targets.index_select(0, pos), tch::Reduction::Sum, 1.0 / 9.0) / sampled.size()[0].max(1) as f64;
    let obj_loss = objectness.index_select(0, &sampled).binary_cross_entropy_with_logits::<Tensor>(&labels.index_select(0, &sampled), None, None, tch::Reduction::Mean);
    (obj_loss, box_loss)
}

/// The RPN's convolutions: a shared 3×3 with ReLU, then objectness and box deltas per anchor.
#[derive(Debug)]
pub struct RpnHead {
    conv: nn::Conv2D,
    cls: nn::Conv2D,
    bbox: nn::Conv2D,
    anchors: i64,
}

impl RpnHead {
    pub fn new(p: &nn::Path, channels: i64, anchors: i64) -> Self {
        let init = |pad| nn::ConvConfig { padding: pad, ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 }, bs_init: nn::Init::Const(0.0), ..Default::default() };
        RpnHead {
            conv: nn::conv2d(p / "conv", channels, channels, 3, init(1)),
            cls: nn::conv2d(p / "cls_logits", channels, anchors, 1, init(0)),
            bbox: nn::conv2d(p / "bbox_pred", channels, 4 * anchors, 1, init(0)),
            anchors,
        }
    }

    /// Features `[N, C, H, W]` → objectness logits `[N, H·W·A]` and deltas `[N, H·W·A, 4]`, in
    /// the order of [`grid_anchors`].
    pub fn forward(&self, feats: &Tensor) -> (Tensor, Tensor) {
        let t = self.conv.forward(feats).relu();
        let (n, _, h, w) = feats.size4().expect("features are [N, C, H, W]");
        let logits = self.cls.forward(&t).view([n, self.anchors, 1, h, w]).permute([0, 3, 4, 1, 2]).reshape([n, -1]);
        let deltas = self.bbox.forward(&t).view([n, self.anchors, 4, h, w]).permute([0, 3, 4, 1, 2]).reshape([n, -1, 4]);
        (logits, deltas)
    }
}

/// Boxes `[R, 4]` in the crate's inclusive pixels (width `x2 - x1 + 1`) to the RPN's continuous
/// coordinates (width `x2 - x1`): the box covers its last pixel.
pub fn from_inclusive(b: &Tensor) -> Tensor {
    let one = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0]).to_device(b.device()).to_kind(b.kind());
    b + one.unsqueeze(0)
}

/// The inverse of [`from_inclusive`], a box narrower than one pixel kept one pixel wide.
pub fn to_inclusive(b: &Tensor) -> Tensor {
    let (x1, y1) = (b.select(1, 0), b.select(1, 1));
    let x2 = (b.select(1, 2) - 1.0).maximum(&x1);
    let y2 = (b.select(1, 3) - 1.0).maximum(&y1);
    Tensor::stack(&[x1, y1, x2, y2], 1)
}

/// What one RPN forward gives: each image's proposals (`[P, 4]`, continuous coordinates, best
/// first, detached) and, in training with ground truth, the (objectness, box) losses.
pub struct RpnOut {
    pub proposals: Vec<Tensor>,
    pub losses: Option<(Tensor, Tensor)>,
}

/// The region proposal network over one feature map.
#[derive(Debug)]
pub struct Rpn {
    pub cfg: RpnConfig,
    pub head: RpnHead,
    stride: i64,
    cell: Tensor,
}

impl Rpn {
    /// The RPN's variables go under `p` (e.g. `rpn.conv.weight`), over features of `channels`
    /// channels at `stride` input pixels a cell.
    pub fn new(p: &nn::Path, cfg: &RpnConfig, channels: i64, stride: i64) -> Self {
        let head = RpnHead::new(p, channels, cfg.anchors_per_cell());
        Rpn { cfg: cfg.clone(), head, stride, cell: cell_anchors(&cfg.anchor_sizes, &cfg.aspect_ratios) }
    }

    /// Anchors of a feature map of `grid = (H, W)` cells, on `device`.
    pub fn anchors(&self, grid: (i64, i64), device: tch::Device) -> Tensor {
        grid_anchors(&self.cell, grid, self.stride, device)
    }

    /// Proposals for `feats` `[N, C, H, W]` of images of `image_sizes` (`(height, width)` each,
    /// unpadded); with `gt` (each image's boxes `[G, 4]`), the losses too, on
    /// `batch_per_image` sampled anchors an image.
    pub fn forward(&self, feats: &Tensor, image_sizes: &[(i64, i64)], gt: Option<&[Tensor]>, train: bool) -> RpnOut {
        let (n, _, h, w) = feats.size4().expect("features are [N, C, H, W]");
        let (logits, deltas) = self.head.forward(feats);
        let anchors = self.anchors((h, w), feats.device()); // [A, 4]
        let a = anchors.size()[0];
        let boxes = decode(&deltas.detach().reshape([-1, 4]), &anchors.repeat([n, 1])).view([n, a, 4]);
        let (pre, post) = self.cfg.top_n(train);
        let proposals = filter_proposals(&boxes, &logits.detach(), image_sizes, pre, post, self.cfg.nms, self.cfg.min_size).into_iter().map(|(b, _)| b).collect();
        let losses = gt.map(|gt| {
            let (mut labels, mut targets, mut pos, mut neg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (i, g) in gt.iter().enumerate() {
                let (l, matched) = assign_anchors(&anchors, &g.to_kind(Kind::Float), self.cfg.fg_iou, self.cfg.bg_iou);
                let (p, q) = sample_anchors(&l, self.cfg.batch_per_image, self.cfg.positive_fraction);
                let offset = i as i64 * a;
                pos.push(p + offset);
                neg.push(q + offset);
                targets.push(encode(&matched, &anchors));
                labels.push(l);
            }
            rpn_loss(&logits.reshape([-1]), &deltas.reshape([-1, 4]), &Tensor::cat(&labels, 0), &Tensor::cat(&targets, 0), &Tensor::cat(&pos, 0), &Tensor::cat(&neg, 0))
        });
        RpnOut { proposals, losses }
    }
}
