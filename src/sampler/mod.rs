//! Stage 4 of the pipeline: which RoIs each iteration trains on.
//!
//! The trainer assigns every RoI of an image to ground truth ([`assign`]) and
//! hands the result to a [`Sampler`], which returns the indices to
//! backpropagate. A sampler can ask for more without the loop changing:
//! - per-RoI losses from a read-only forward over all RoIs
//!   ([`Sampler::needs_roi_losses`], used by OHEM);
//! - the masked training mode, where all RoIs go forward and backward and the
//!   loss of unselected ones is zeroed ([`Sampler::backprop`]);
//! - a mining pass over the whole training set with the model frozen, before
//!   an iteration ([`Sampler::before_iteration`] with a [`Miner`], used by
//!   offline hard-negative mining).
//!
//! - per-RoI classification-loss weights with the indices
//!   ([`Sampler::select_weighted`], used by PISA), and a loss other than
//!   Fast R-CNN's ([`Sampler::loss`]: the focal loss, ISR-P, CARL; see
//!   [`crate::model::loss`]).
//!
//! Samplers are built from the serde-tagged [`SamplerConfig`]; adding one is a
//! file, a variant and a match arm. The strategies, each in its file:
//! `fixed_ratio` (Fast R-CNN), `hnm` (offline hard-negative mining), `ohem`
//! (the paper's, and mmdetection's `OHEMSampler` as a preset), `iou_balanced`
//! (Libra R-CNN), `focal` (RetinaNet's loss over all RoIs), `pisa` (ScoreHLR,
//! ISR-P and CARL) and `all`.

pub mod all;
pub mod fixed_ratio;
pub mod focal;
pub mod hnm;
pub mod iou_balanced;
pub mod ohem;
pub mod pisa;

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::boxes::{iou, BBox};
use crate::model::box_coder;
use crate::model::loss::LossConfig;
pub use crate::rundir::MiningStats;
// defined with the loss that also uses them (the model does not depend on the samplers)
pub use crate::model::loss::hierarchical_ranks;
pub(crate) use crate::model::host;

pub use all::{AllConfig, AllRois};
pub use fixed_ratio::{FixedRatio, FixedRatioConfig};
pub use focal::{Focal, FocalConfig};
pub use hnm::{Hnm, HnmConfig};
pub use iou_balanced::{IouBalanced, IouBalancedConfig};
pub use ohem::{Ohem, OhemConfig};
pub use pisa::{Pisa, PisaConfig};

/// The RoIs of one training image, assigned to its ground truth.
/// The first `n_proposals` rows are the image's proposals, in proposal-file
/// order; ground-truth boxes follow.
pub struct ImageRois {
    /// Index of the image in the training set.
    pub image: usize,
    pub n_proposals: i64,
    /// `[R, 4]`, 0-based pixels of the (scaled, maybe flipped) input.
    pub rois: Tensor,
    /// `[R]` int64: `1..=K` when `max_iou >= fg_thresh`, else 0.
    pub labels: Tensor,
    /// `[R]` float: best IoU with any (non-difficult) ground-truth box, 0 when there is none.
    pub max_iou: Tensor,
    /// `[R, 4]` normalised regression targets to the best ground-truth box.
    pub targets: Tensor,
    /// `[R]` int64: the index of that box in the image's ground truth (0 when there is none).
    pub gt_index: Tensor,
    /// How many of the proposals, the last ones, are RoIs the sampler brought itself
    /// ([`Sampler::mined_rois`]: offline mining's negatives on Faster R-CNN); 0 otherwise.
    pub n_mined: i64,
}

/// Assigns RoIs `[R, 4]` to ground truth `gt` `[G, 4]` with labels `gt_labels` `[G]` (1..=K).
pub fn assign(image: usize, n_proposals: i64, rois: Tensor, gt: &Tensor, gt_labels: &Tensor, fg_thresh: f64) -> ImageRois {
    let r = rois.size()[0];
    let dev = rois.device();
    if gt.size()[0] == 0 {
        return ImageRois {
            image,
            n_proposals,
            labels: Tensor::zeros([r], (Kind::Int64, dev)),
            max_iou: Tensor::zeros([r], (Kind::Float, dev)),
            targets: Tensor::zeros([r, 4], (Kind::Float, dev)),
            gt_index: Tensor::zeros([r], (Kind::Int64, dev)),
            rois,
            n_mined: 0,
        };
    }
    let iou = box_coder::iou_matrix(&rois, gt); // [R, G]
    let (max_iou, arg) = iou.max_dim(1, false); // [R], [R]
    let labels = gt_labels.index_select(0, &arg) * max_iou.ge(fg_thresh).to_kind(Kind::Int64); // [R]
    let targets = box_coder::encode(&rois, &gt.index_select(0, &arg)); // [R, 4]
    ImageRois { image, n_proposals, rois, labels, max_iou, targets, gt_index: arg, n_mined: 0 }
}

/// Per-RoI losses from the read-only forward, for samplers that rank by loss.
pub struct RoiLosses {
    /// `[R]` cross-entropy.
    pub cls: Tensor,
    /// `[R]` smooth L1 over the RoI's own class (0 for background).
    pub loc: Tensor,
    /// `[R, K+1]` class logits and `[R, 4K]` box deltas of the same forward (detached).
    pub logits: Tensor,
    pub deltas: Tensor,
}

/// A sampler's pick for one image.
pub struct Picked {
    /// `[k]` int64 indices into the image's RoIs, no index twice.
    pub idx: Tensor,
    /// `[k]` float weights of those RoIs' classification loss (mmdetection's
    /// `label_weights`); `None` means 1 for every RoI.
    pub weight: Option<Tensor>,
}

/// How the selected RoIs are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backprop {
    /// Only the selected RoIs go through the trained head, forward and backward.
    Selected,
    /// All RoIs go forward and backward; the loss of unselected ones is zero.
    MaskedAll,
}

/// Where training is, passed to [`Sampler::before_iteration`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based iteration within the epoch.
    pub iter_in_epoch: usize,
    /// 0-based iteration since the start of training.
    pub iteration: usize,
}

/// The scores of every proposal of one training image under the frozen model.
pub struct ImageScores {
    pub image: usize,
    /// `[P]` labels and best IoU, as in [`ImageRois`] (proposals only).
    pub labels: Tensor,
    pub max_iou: Tensor,
    /// `[P]` the highest foreground class probability.
    pub fg_score: Tensor,
    /// `[P]` per-RoI loss (cross-entropy + smooth L1 for foreground).
    pub loss: Tensor,
    /// `[P]` best IoU with a difficult box of the image (0 when it has none):
    /// what the mining log says about where hard negatives lie.
    pub difficult_iou: Tensor,
    /// `[P, 4]` the scored boxes in 0-based pixels of the original image, when they are not the
    /// image's given proposals (Faster R-CNN: the RPN's at mining time); None otherwise.
    pub boxes: Option<Tensor>,
}

/// Scores the training set with the model frozen (no gradient, eval mode).
/// The trainer provides it; offline mining uses it.
pub trait Miner {
    /// Scores every training image in order and hands each image's scores to `each` as soon
    /// as they are computed: nothing is kept, so memory does not grow with the training set.
    fn score_each(&mut self, each: &mut dyn FnMut(ImageScores) -> Result<()>) -> Result<()>;

    /// Every image's scores at once (tests and benches, on a few images).
    fn score_training_set(&mut self) -> Result<Vec<ImageScores>> {
        let mut all = Vec::new();
        self.score_each(&mut |s| {
            all.push(s);
            Ok(())
        })?;
        Ok(all)
    }
}

/// Chooses the RoIs to train on.
pub trait Sampler {
    /// Picks RoIs of one image; returns `[k]` int64 indices into `rois`, no
    /// index twice, `k <= per_image`.
    fn select(&mut self, rois: &ImageRois, losses: Option<&RoiLosses>, per_image: i64) -> Tensor;

    /// The pick with per-RoI classification-loss weights; the trainer calls this.
    /// By default [`Sampler::select`] with no weights (every weight 1).
    fn select_weighted(&mut self, rois: &ImageRois, losses: Option<&RoiLosses>, per_image: i64) -> Picked {
        Picked { idx: self.select(rois, losses, per_image), weight: None }
    }

    /// How the selected RoIs' losses make the minibatch loss (default: Fast R-CNN's).
    fn loss(&self) -> LossConfig {
        LossConfig::default()
    }

    /// Whether [`Sampler::select`] needs [`RoiLosses`] from a read-only forward over all RoIs.
    fn needs_roi_losses(&self) -> bool {
        false
    }

    fn backprop(&self) -> Backprop {
        Backprop::Selected
    }

    /// Runs before each iteration; a mining sampler scores the training set here
    /// and returns what the round found (a row of the run's `mining.csv`).
    /// RoIs the sampler brings to training image `image` beyond its proposals, `[M, 4]` in
    /// 0-based pixels of the original image, or None: offline mining's cached negatives where
    /// the proposals change at every iteration (Faster R-CNN). The trainer appends them to the
    /// image's proposals (flipped and scaled as the image is) and counts them in
    /// [`ImageRois::n_mined`].
    fn mined_rois(&self, _image: usize) -> Option<Tensor> {
        None
    }

    fn before_iteration(&mut self, _at: Progress, _miner: &mut dyn Miner) -> Result<Option<MiningStats>> {
        Ok(None)
    }

    /// Whether [`Sampler::before_iteration`] will mine at `at` (for progress reports).
    fn is_due(&self, _at: Progress) -> bool {
        false
    }

    /// Entries in a hard-example cache, for the logs (0 without one).
    fn cache_size(&self) -> usize {
        0
    }

    /// State to checkpoint with the weights (e.g. a mined cache), so a resumed run continues exactly.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    fn restore(&mut self, _state: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The `sampler:` section of a config, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SamplerConfig {
    /// Fast R-CNN's fixed-ratio sampler.
    FixedRatio(FixedRatioConfig),
    /// Offline hard-negative mining.
    Hnm(HnmConfig),
    /// Online hard example mining (read-only or masked).
    Ohem(OhemConfig),
    /// Every RoI, up to B/N per image.
    All(AllConfig),
    /// Libra R-CNN's IoU-balanced negatives and instance-balanced positives.
    IouBalanced(IouBalancedConfig),
    /// The focal loss over every RoI.
    Focal(FocalConfig),
    /// PISA: ScoreHLR negatives, ISR-P and CARL.
    Pisa(PisaConfig),
}

/// Why a `sampler:` section does not convert, as the path inside it and serde's message: the
/// section read as its kind's own struct (serde's path stops at the tagged enum). None when its
/// kind is missing or unknown, or it converts.
pub fn section_error(v: &serde_json::Value) -> Option<(String, String)> {
    fn inner<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Option<(String, String)> {
        serde_path_to_error::deserialize::<_, T>(v).err().map(|e| (e.path().to_string(), e.into_inner().to_string()))
    }
    let mut rest = v.as_object()?.clone();
    let kind = rest.remove("kind")?;
    let rest = serde_json::Value::Object(rest);
    match kind.as_str()? {
        "fixed_ratio" => inner::<FixedRatioConfig>(rest),
        "hnm" => inner::<HnmConfig>(rest),
        "ohem" => inner::<OhemConfig>(rest),
        "all" => inner::<AllConfig>(rest),
        "iou_balanced" => inner::<IouBalancedConfig>(rest),
        "focal" => inner::<FocalConfig>(rest),
        "pisa" => inner::<PisaConfig>(rest),
        _ => None,
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig::FixedRatio(FixedRatioConfig::default())
    }
}

impl SamplerConfig {
    /// Offline mining's hard quota per image (`hard_fraction` × B/N), what the
    /// report compares each round's cache with; `None` for the other kinds.
    pub fn hard_quota(&self, per_image: i64) -> Option<i64> {
        match self {
            SamplerConfig::Hnm(h) => Some(fixed_ratio::quota(h.hard_fraction, per_image)),
            _ => None,
        }
    }

    /// RoIs per minibatch (B).
    pub fn batch_size(&self) -> i64 {
        match self {
            SamplerConfig::FixedRatio(c) => c.batch_size,
            SamplerConfig::Hnm(c) => c.batch_size,
            SamplerConfig::Ohem(c) => c.batch_size,
            SamplerConfig::All(c) => c.batch_size,
            SamplerConfig::IouBalanced(c) => c.batch_size,
            SamplerConfig::Focal(c) => c.batch_size,
            SamplerConfig::Pisa(c) => c.batch_size,
        }
    }

    /// The foreground IoU threshold used for labels.
    pub fn fg_thresh(&self) -> f64 {
        match self {
            SamplerConfig::FixedRatio(c) => c.fg_thresh,
            SamplerConfig::Hnm(c) => c.fg_thresh,
            SamplerConfig::Ohem(c) => c.fg_thresh,
            SamplerConfig::All(c) => c.fg_thresh,
            SamplerConfig::IouBalanced(c) => c.fg_thresh,
            SamplerConfig::Focal(c) => c.fg_thresh,
            SamplerConfig::Pisa(c) => c.fg_thresh,
        }
    }

    /// The classifier's initial background probability that the strategy asks for
    /// (the focal loss's prior, RetinaNet's π = 0.01), applied when the model is built.
    pub fn background_prior(&self) -> Option<f64> {
        match self {
            SamplerConfig::Focal(c) => c.prior_prob,
            _ => None,
        }
    }

    pub fn check(&self) -> Result<()> {
        match self {
            SamplerConfig::FixedRatio(c) => c.check(),
            SamplerConfig::Hnm(c) => c.check(),
            SamplerConfig::Ohem(c) => c.check(),
            SamplerConfig::All(c) => c.check(),
            SamplerConfig::IouBalanced(c) => c.check(),
            SamplerConfig::Focal(c) => c.check(),
            SamplerConfig::Pisa(c) => c.check(),
        }
    }

    /// What the strategy needs of the detector (`model.detector`): on Faster R-CNN, offline
    /// mining's cache holds boxes of one round's proposals, which the next round cannot rescore.
    pub fn check_detector(&self, detector: crate::model::Detector) -> Result<()> {
        if let (SamplerConfig::Hnm(c), crate::model::Detector::FasterRcnn) = (self, detector) {
            if c.cache == hnm::CachePolicy::Accumulate {
                anyhow::bail!("sampler.cache = accumulate: on model.detector = faster_rcnn each mining round scores new proposals (the RPN's at that time), so old entries cannot be scored again; use replace");
            }
        }
        Ok(())
    }

    pub fn build(&self) -> Box<dyn Sampler> {
        match self {
            SamplerConfig::FixedRatio(c) => Box::new(FixedRatio::new(c.clone())),
            SamplerConfig::Hnm(c) => Box::new(Hnm::new(c.clone())),
            SamplerConfig::Ohem(c) => Box::new(Ohem::new(c.clone())),
            SamplerConfig::All(c) => Box::new(AllRois::new(c.clone())),
            SamplerConfig::IouBalanced(c) => Box::new(IouBalanced::new(c.clone())),
            SamplerConfig::Focal(c) => Box::new(Focal::new(c.clone())),
            SamplerConfig::Pisa(c) => Box::new(Pisa::new(c.clone())),
        }
    }
}

/// Up to `k` indices, chosen uniformly without replacement, where `mask` is true.
pub fn sample_where(mask: &Tensor, k: i64) -> Tensor {
    let idx = mask.nonzero().squeeze_dim(1);
    let n = idx.size()[0];
    if n <= k {
        return idx;
    }
    let perm = Tensor::randperm(n, (Kind::Int64, idx.device())).narrow(0, 0, k);
    idx.index_select(0, &perm)
}

/// Up to `k` of `items`, chosen uniformly without replacement (libtorch's RNG, so a
/// run's seed fixes the draws), in the order drawn; all of them when there are at most `k`.
pub fn random_choice(items: &[i64], k: usize) -> Vec<i64> {
    if items.len() <= k {
        return items.to_vec();
    }
    let perm: Vec<i64> = host(&Tensor::randperm(items.len() as i64, (Kind::Int64, tch::Device::Cpu)).narrow(0, 0, k as i64));
    perm.into_iter().map(|i| items[i as usize]).collect()
}

/// mmcv's `nms_match`: boxes in descending score; each box not yet taken opens
/// a group and takes every later untaken box with IoU >= `thresh`. Returns each
/// box's group id (groups numbered in the order they open).
pub fn nms_match(boxes: &[BBox], score: &[f32], thresh: f64) -> Vec<i64> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&i, &j| score[j].total_cmp(&score[i]).then(i.cmp(&j)));
    let mut group = vec![-1i64; score.len()];
    let mut next = 0;
    for (a, &i) in order.iter().enumerate() {
        if group[i] >= 0 {
            continue;
        }
        group[i] = next;
        for &j in &order[a + 1..] {
            if group[j] < 0 && iou(&boxes[i], &boxes[j]) as f64 >= thresh {
                group[j] = next;
            }
        }
        next += 1;
    }
    group
}

/// `[R, 4]` boxes to host boxes.
pub(crate) fn host_boxes(t: &Tensor) -> Vec<BBox> {
    let v: Vec<f32> = host(&t.to_kind(Kind::Float));
    v.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}
