//! Stage 3 of the pipeline: the Fast R-CNN model (its initial weights come from [`crate::pretrain`]).
//! With `model.detector: faster_rcnn` it is Faster R-CNN: the same network with a region proposal
//! network ([`crate::proposals::rpn`]) on the shared features, whose proposals replace the given ones.
//!
//! Image batch `[N, 3, H, W]` → backbone → features `[N, C, H/s, W/s]` (stride s = 8 or 16);
//! RoIs `[R, 5]` → RoI max pooling `[R, C, 7, 7]` → fc6 → fc7 →
//! `cls_score` `[R, K+1]` and class-specific `bbox_pred` `[R, 4K]`.
//! [`loss`]: the unreduced per-RoI losses every sampler ranks or sums, and the minibatch loss.

pub mod backbone;
pub mod box_coder;
pub mod loss;
pub mod roi_pool;
pub mod sgd;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::nn::{self, Module};
use tch::Tensor;

pub use backbone::Backbone;
pub use loss::{minibatch_loss, per_roi_losses};

use crate::proposals::rpn::{Rpn, RpnConfig};

/// A tensor's values on the host, flattened.
pub(crate) fn host<T>(t: &Tensor) -> Vec<T>
where
    Vec<T>: TryFrom<Tensor>,
    <Vec<T> as TryFrom<Tensor>>::Error: std::fmt::Debug,
{
    Vec::try_from(t.to_device(tch::Device::Cpu).flatten(0, -1)).expect("tensor to host")
}

/// Model hyperparameters (the `model:` section of a config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `small` (the CPU default) or `vgg16` (torchvision layout).
    pub backbone: Backbone,
    /// Where the weights start: `pretrained` (the shared backbone that
    /// `harness pretrain` makes, see [`crate::pretrain`]) or `scratch`.
    pub init: Init,
    /// Safetensors weights to start from instead (vgg16: converted from torchvision).
    pub weights: Option<PathBuf>,
    /// Batch norm frozen (running statistics, fixed affine) in training.
    /// Default: frozen when the weights start pre-trained, trained from scratch.
    pub freeze_bn: Option<bool>,
    /// Feature stride: 8 (`small`'s default: its last max pool dropped, so that
    /// 14-px objects span about two feature cells) or 16 (`small` with every
    /// pool; `vgg16`'s only stride).
    pub stride: Option<i64>,
    /// RoI pooling output size (7 in Fast R-CNN).
    pub roi_size: i64,
    /// Bilinear samples per bin side in RoI pooling.
    pub roi_samples: i64,
    /// fc6/fc7 width; default 512 for small, 4096 for vgg16.
    pub fc_dim: Option<i64>,
    /// Dropout after fc6 and fc7 (0: masked and read-only OHEM then make identical updates;
    /// Fast R-CNN's VGG16 used 0.5).
    pub dropout: f64,
    /// Fold each frozen batch norm into the convolution before it, at every forward
    /// (`small` with frozen batch norm only): w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β.
    /// The same function up to float rounding and the same trainable variables and
    /// checkpoints (the unfolded weights stay the variables); one op per layer less
    /// forward and backward. Off by default: it changes the last bits, and training
    /// carries them into the results, so the committed studies would no longer
    /// reproduce bit for bit from their grid files. Left out of a config's identity
    /// when off, so existing cell ids stay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fold_bn: bool,
    /// `fast_rcnn` (the default: RoIs are the given proposals, selective search's or a file's)
    /// or `faster_rcnn` (RoIs are a region proposal network's, trained jointly). Left out of a
    /// config's identity when `fast_rcnn`, so existing cell ids stay.
    #[serde(skip_serializing_if = "Detector::is_fast_rcnn")]
    pub detector: Detector,
    /// The region proposal network of `faster_rcnn` (its defaults when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpn: Option<RpnConfig>,
}

/// `model.detector`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    #[default]
    FastRcnn,
    FasterRcnn,
}

impl Detector {
    pub fn is_fast_rcnn(&self) -> bool {
        *self == Detector::FastRcnn
    }
}

/// `model.init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Pretrained,
    Scratch,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { backbone: Backbone::Small, init: Init::Pretrained, weights: None, freeze_bn: None, stride: None, roi_size: 7, roi_samples: 2, fc_dim: None, dropout: 0.0, fold_bn: false, detector: Detector::FastRcnn, rpn: None }
    }
}

impl ModelConfig {
    pub fn check(&self) -> Result<()> {
        match (self.backbone, self.feature_stride()) {
            (_, 16) | (Backbone::Small, 8) => {}
            (b, s) => bail!("model.stride = {s}: the {b:?} backbone has stride 16{}", if b == Backbone::Small { " or 8" } else { "" }),
        }
        if !(1..=32).contains(&self.roi_size) {
            bail!("model.roi_size = {} is outside 1..=32", self.roi_size);
        }
        if !(1..=8).contains(&self.roi_samples) {
            bail!("model.roi_samples = {} is outside 1..=8", self.roi_samples);
        }
        if let Some(d) = self.fc_dim {
            if d < 1 {
                bail!("model.fc_dim = {d} must be positive");
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("model.dropout = {} is outside [0, 1)", self.dropout);
        }
        if self.fold_bn && (self.backbone != Backbone::Small || !self.bn_frozen()) {
            bail!(
                "model.fold_bn = true needs batch norm to fold and frozen: the small backbone with model.freeze_bn true (here backbone {:?}, batch norm {})",
                self.backbone,
                if self.bn_frozen() { "frozen" } else { "trained" }
            );
        }
        match (&self.rpn, self.detector) {
            (Some(_), Detector::FastRcnn) => bail!("model.rpn configures the region proposal network of model.detector: faster_rcnn (here fast_rcnn, which trains on the given proposals)"),
            (Some(r), Detector::FasterRcnn) => r.check()?,
            (None, _) => {}
        }
        if let Some(w) = &self.weights {
            if !w.is_file() {
                bail!("model.weights = {}: no such file", w.display());
            }
            if self.init == Init::Scratch {
                bail!("model.weights = {} contradicts model.init = scratch; drop one of them", w.display());
            }
        }
        Ok(())
    }

    /// Whether batch norm is frozen in training (see [`ModelConfig::freeze_bn`]).
    pub fn bn_frozen(&self) -> bool {
        self.freeze_bn.unwrap_or(self.init == Init::Pretrained || self.weights.is_some())
    }

    /// The feature stride, the backbone's default unless set.
    pub fn feature_stride(&self) -> i64 {
        self.stride.unwrap_or_else(|| self.backbone.default_stride())
    }

    /// The region proposal network's config: `Some` for Faster R-CNN (its defaults unless set).
    pub fn rpn_config(&self) -> Option<RpnConfig> {
        (self.detector == Detector::FasterRcnn).then(|| self.rpn.clone().unwrap_or_default())
    }

    /// fc6/fc7 width, the backbone's default unless set.
    pub fn fc_width(&self) -> i64 {
        self.fc_dim.unwrap_or_else(|| self.backbone.default_fc_dim())
    }
}

/// Fast R-CNN: backbone, RoI pooling, fc6/fc7, classifier and box regressor; with a region
/// proposal network, Faster R-CNN.
pub struct FastRcnn {
    pub cfg: ModelConfig,
    /// Object classes K (background is class 0 of the scores).
    pub num_classes: i64,
    features: nn::SequentialT,
    fc: nn::SequentialT,
    cls_score: nn::Linear,
    bbox_pred: nn::Linear,
    /// Variable-name prefixes that are not trained.
    pub frozen: Vec<String>,
    /// Faster R-CNN's region proposal network (variables `rpn.*`), made after the head's
    /// variables so that Fast R-CNN's initial weights stay what they were.
    pub rpn: Option<Rpn>,
}

impl FastRcnn {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, num_classes: usize) -> Self {
        let k = num_classes as i64;
        let (features, frozen) = backbone::features(p, cfg.backbone, cfg.bn_frozen(), cfg.feature_stride(), cfg.fold_bn);
        let fc_dim = cfg.fc_width();
        let in_dim = cfg.backbone.channels() * cfg.roi_size * cfg.roi_size;
        let fc = backbone::fc_layers(p, cfg.backbone, in_dim, fc_dim, cfg.dropout);
        // Fast R-CNN's initialisation: N(0, 0.01) for scores, N(0, 0.001) for boxes.
        let cls_score = nn::linear(p / "cls_score", fc_dim, k + 1, nn::LinearConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 }, bs_init: Some(nn::Init::Const(0.0)), bias: true });
        let bbox_pred = nn::linear(p / "bbox_pred", fc_dim, 4 * k, nn::LinearConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.001 }, bs_init: Some(nn::Init::Const(0.0)), bias: true });
        let rpn = cfg.rpn_config().map(|r| Rpn::new(&(p / "rpn"), &r, cfg.backbone.channels(), cfg.feature_stride()));
        FastRcnn { cfg: cfg.clone(), num_classes: k, features, fc, cls_score, bbox_pred, frozen, rpn }
    }

    /// Loads `cfg.weights` (missing head layers are fine) and freezes the frozen layers.
    pub fn load_and_freeze(&self, vs: &mut nn::VarStore) -> Result<()> {
        self.load_from_and_freeze(vs, self.cfg.weights.as_deref()).map(|_| ())
    }

    /// Loads `weights` by name, when given, and freezes the frozen layers.
    /// Returns the names of the model's variables that the file lacks.
    pub fn load_from_and_freeze(&self, vs: &mut nn::VarStore, weights: Option<&std::path::Path>) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        if let Some(w) = weights {
            missing = vs.load_partial(w).with_context(|| format!("loading model weights {}", w.display()))?;
            let n_vars = vs.variables().len();
            if missing.len() == n_vars {
                bail!("model weights {}: none of the {} variables of the {:?} model is in the file", w.display(), n_vars, self.cfg.backbone);
            }
        }
        for (name, t) in vs.variables() {
            if self.frozen.iter().any(|f| name.starts_with(f.as_str())) {
                let _ = t.set_requires_grad(false);
            }
        }
        Ok(missing)
    }

    /// RetinaNet's prior initialisation, for a softmax head: the background
    /// bias is set to `ln((1 - π) K / π)`, so that with the other logits near 0
    /// (their weights start at N(0, 0.01)) every RoI starts at background
    /// probability about `1 - π` and the many easy background RoIs do not
    /// swamp the first iterations of a focal loss.
    pub fn set_background_prior(&self, pi: f64) {
        let bias = ((1.0 - pi) * self.num_classes as f64 / pi).ln();
        tch::no_grad(|| {
            if let Some(b) = &self.cls_score.bs {
                let _ = b.get(0).fill_(bias);
            }
        });
    }

    /// `[N, 3, H, W]` → `[N, C, H/16, W/16]`.
    pub fn features(&self, images: &Tensor, train: bool) -> Tensor {
        backbone::run(&self.features, images, train)
    }

    /// RoI pooling plus the head. `rois`: `[R, 5]` → (`[R, K+1]` logits, `[R, 4K]` deltas).
    pub fn head(&self, feats: &Tensor, rois: &Tensor, train: bool) -> (Tensor, Tensor) {
        self.head_from_pooled(&self.pool(feats, rois), train)
    }

    /// RoI pooling of `rois` `[R, 5]` over `feats`: `[R, C, 7, 7]`.
    pub fn pool(&self, feats: &Tensor, rois: &Tensor) -> Tensor {
        roi_pool::roi_pool(feats, rois, self.cfg.roi_size, self.cfg.roi_samples, 1.0 / self.cfg.feature_stride() as f64)
    }

    /// fc6, fc7 and the two outputs on pooled features `[R, C, 7, 7]`.
    pub fn head_from_pooled(&self, pooled: &Tensor, train: bool) -> (Tensor, Tensor) {
        let x = backbone::run(&self.fc, &pooled.flatten(1, -1), train); // [R, fc_dim]
        (self.cls_score.forward(&x), self.bbox_pred.forward(&x))
    }
}
