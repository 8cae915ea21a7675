//! The experiment's configuration, below every stage that reads it: the
//! training config (`harness train <config.yaml>`) with its sections for the
//! data, proposals, model, pre-training, input, solver, sampler and test, and
//! the YAML plumbing that grid files share. Read once and validated before
//! any work.
//!
//! Loading goes YAML → a generic value → `--set key=value` overrides →
//! the typed [`TrainConfig`], so that every error names the file and the
//! dotted key: unknown keys are rejected, and [`TrainConfig::check`] rejects
//! out-of-range values. The YAML plumbing and the errors that name the key,
//! the file and the line are in `config/yaml.rs`, outside the sources that key
//! the pre-trained backbone (they move no value a run reads).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::model::ModelConfig;
use crate::sampler::SamplerConfig;

mod yaml;
pub use yaml::{check_error, default_sampler_kind, from_value, holds_key, locate_key, parse_override, parse_yaml, set_dotted, with_line, KeyError};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A label for the run (optional).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seed: u64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    pub dataset: DatasetConfig,
    #[serde(default)]
    pub proposals: ProposalConfig,
    #[serde(default)]
    pub model: ModelConfig,
    /// The shared pre-trained backbone (`model.init: pretrained`).
    #[serde(default)]
    pub pretrain: PretrainConfig,
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub train: SolverConfig,
    #[serde(default)]
    pub sampler: SamplerConfig,
    #[serde(default)]
    pub test: TestConfig,
}

fn default_device() -> String {
    "auto".into()
}

/// Where the pre-training crops come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Dataset,
    Synth,
    Both,
}

/// The `pretrain:` section of a config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    pub source: Source,
    /// Seeds the weights, the crops and (for `synth`) the scenes.
    pub seed: u64,
    pub epochs: usize,
    /// Crop side in pixels at the detector's input scale; a multiple of 16.
    pub window: i64,
    /// Windows per SGD step.
    pub batch_size: usize,
    /// Jittered crops of each object per epoch.
    pub crops_per_object: usize,
    /// Share of background boxes among all crops.
    pub bg_fraction: f64,
    /// Peak learning rate (linear warm-up over the first 5% of steps, then cosine to 0).
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Source images held out for the validation accuracy.
    pub val_fraction: f64,
    /// Scenes rendered for `source: synth`.
    pub synth_images: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            source: Source::Both,
            seed: 0,
            epochs: 8,
            window: 64,
            batch_size: 64,
            crops_per_object: 3,
            bg_fraction: 0.5,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            val_fraction: 0.1,
            synth_images: 1000,
        }
    }
}

impl PretrainConfig {
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("pretrain.epochs = 0: at least one epoch");
        }
        if self.window < 32 || self.window % 16 != 0 {
            bail!("pretrain.window = {}: a multiple of 16, at least 32", self.window);
        }
        if self.batch_size < 2 {
            bail!("pretrain.batch_size = {}: at least 2 (batch norm needs a batch)", self.batch_size);
        }
        if self.crops_per_object == 0 {
            bail!("pretrain.crops_per_object = 0: at least one crop per object");
        }
        if !(0.0..1.0).contains(&self.bg_fraction) {
            bail!("pretrain.bg_fraction = {} is outside [0, 1)", self.bg_fraction);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("pretrain.lr = {}: must be positive", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("pretrain.momentum = {} is outside [0, 1)", self.momentum);
        }
        if self.weight_decay < 0.0 {
            bail!("pretrain.weight_decay = {} is negative", self.weight_decay);
        }
        if !(0.0..0.5).contains(&self.val_fraction) {
            bail!("pretrain.val_fraction = {} is outside [0, 0.5)", self.val_fraction);
        }
        if self.source.uses_synth() && self.synth_images < 10 {
            bail!("pretrain.synth_images = {}: at least 10", self.synth_images);
        }
        Ok(())
    }
}

impl Source {
    pub fn uses_dataset(self) -> bool {
        matches!(self, Source::Dataset | Source::Both)
    }
    pub fn uses_synth(self) -> bool {
        matches!(self, Source::Synth | Source::Both)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The dataset's root folder (VOC layout, or COCO's `annotations/` and image folders).
    pub root: PathBuf,
    #[serde(default = "default_train_split")]
    pub train_split: String,
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// `voc` or `coco`; unset: `coco` when the root has `annotations/instances_*.json`
    /// and no `Annotations/` folder, else `voc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// COCO: the training split's instances JSON [default: `<root>/annotations/instances_<train_split>.json`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_ann: Option<PathBuf>,
    /// COCO: the test split's instances JSON [default: `<root>/annotations/instances_<test_split>.json`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_ann: Option<PathBuf>,
    /// COCO: the folder `file_name` is relative to [default: `<root>/<split>` when it exists, else `<root>/images`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    /// MiB of decoded images held per split [default: [`DEFAULT_CACHE_MIB`]]: a split
    /// that fits is decoded up front; a larger one is read from disk as used,
    /// this much of it kept (trainer/batch.rs). Not part of a run's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mib: Option<u64>,
}

/// `dataset.cache_mib` when unset: VOC 2007's trainval (about 2.8 GB decoded) is held.
pub const DEFAULT_CACHE_MIB: u64 = 4096;

/// A dataset's on-disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Voc,
    Coco,
}

impl DatasetConfig {
    /// A VOC dataset at `root` with the default splits.
    pub fn voc(root: impl Into<PathBuf>) -> Self {
        DatasetConfig { root: root.into(), train_split: default_train_split(), test_split: default_test_split(), format: None, train_ann: None, test_ann: None, images: None, cache_mib: None }
    }

    /// `cache_mib`, or its default.
    pub fn cache_mib(&self) -> u64 {
        self.cache_mib.unwrap_or(DEFAULT_CACHE_MIB)
    }
}

fn default_train_split() -> String {
    "trainval".into()
}
fn default_test_split() -> String {
    "test".into()
}

/// Selective search's named diversification settings (what each runs is
/// `SsMode::strategies`, in the proposals stage). It and [`SsParams`] live
/// here, not in that stage, so that the configuration depends on no stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SsMode {
    /// One strategy: HSV, k=100, C+T+S+F.
    Single,
    /// The paper's "fast": {HSV, Lab} x {k=50, 100} x {C+T+S+F, T+S+F}.
    #[default]
    Fast,
    /// The paper's "quality": {HSV, Lab, rgI, RGB} x {k=50, 100, 150, 300} x {C+T+S+F, T+S+F}.
    Quality,
}

/// Selective-search parameters. Part of the cache key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsParams {
    pub mode: SsMode,
    /// Gaussian sigma of the Felzenszwalb-Huttenlocher pre-smoothing.
    pub sigma: f32,
    /// Boxes narrower or shorter than this (pixels) are dropped.
    pub min_side: u32,
    /// At most this many boxes per image, best-ranked first.
    pub max_boxes: usize,
}

impl Default for SsParams {
    fn default() -> Self {
        SsParams { mode: SsMode::Fast, sigma: 0.8, min_side: 6, max_boxes: 2000 }
    }
}

impl SsParams {
    pub fn check(&self) -> Result<()> {
        if !(self.sigma >= 0.0 && self.sigma <= 10.0) {
            bail!("proposals.sigma = {} is outside [0, 10]", self.sigma);
        }
        if self.max_boxes == 0 {
            bail!("proposals.max_boxes = 0: at least one box per image is needed");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProposalConfig {
    pub mode: SsMode,
    pub sigma: f32,
    pub min_side: u32,
    pub max_boxes: usize,
    /// Precomputed proposals for the train / test split (the proposals file format) instead of selective search.
    pub train_file: Option<PathBuf>,
    pub test_file: Option<PathBuf>,
}

impl Default for ProposalConfig {
    fn default() -> Self {
        let d = SsParams::default();
        ProposalConfig { mode: d.mode, sigma: d.sigma, min_side: d.min_side, max_boxes: d.max_boxes, train_file: None, test_file: None }
    }
}

impl ProposalConfig {
    pub fn ss_params(&self) -> SsParams {
        SsParams { mode: self.mode, sigma: self.sigma, min_side: self.min_side, max_boxes: self.max_boxes }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Shorter side after rescaling, in pixels (600 in Fast R-CNN).
    pub scale: u32,
    /// Cap on the longer side (1000 in Fast R-CNN).
    pub max_size: u32,
    /// Random horizontal flips in training.
    pub flip: bool,
    /// Per-channel RGB mean and std on a 0-255 scale (torchvision's ImageNet values).
    pub pixel_mean: [f64; 3],
    pub pixel_std: [f64; 3],
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig { scale: 224, max_size: 320, flip: true, pixel_mean: [123.675, 116.28, 103.53], pixel_std: [58.395, 57.12, 57.375] }
    }
}

impl InputConfig {
    /// The rescale factor for an `h x w` image: shorter side to `scale`, longer side capped at `max_size`.
    pub fn scale_for(&self, h: i64, w: i64) -> f64 {
        let s = self.scale as f64 / h.min(w) as f64;
        if (h.max(w) as f64 * s).round() > self.max_size as f64 {
            self.max_size as f64 / h.max(w) as f64
        } else {
            s
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SolverConfig {
    /// Passes over the training images. With `iterations` set it follows from
    /// it (and is 0 in the saved config).
    pub epochs: usize,
    /// The schedule in SGD iterations instead of epochs, as the paper and
    /// mmdetection / detectron2 state it: train this many iterations; the
    /// epochs are the passes over the training images they make (the last one
    /// cut short). Replaces `epochs` and `lr_steps`; give `lr_steps_iters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Iterations after which the learning rate is multiplied by `gamma` (with `iterations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_steps_iters: Option<Vec<usize>>,
    /// Images per iteration (N).
    pub images_per_batch: usize,
    /// Cap on iterations per epoch (default: one pass over the training images).
    pub iters_per_epoch: Option<usize>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Epochs (1-based) after which the learning rate is multiplied by `gamma`.
    pub lr_steps: Vec<usize>,
    pub gamma: f64,
    /// Linear warm-up: the learning rate rises from lr/10 to lr over this many first iterations.
    pub warmup_iters: usize,
    /// Checkpoints kept in the run directory.
    pub keep_checkpoints: usize,
    /// Repeat-factor sampling (LVIS, Gupta et al. 2019) at this threshold t: each class's
    /// factor is `max(1, sqrt(t / f))`, f the share of training images that hold it, and each
    /// image repeats in an epoch's order by its rarest class's factor (stochastic rounding).
    /// Any RoI sampler combines with it. Absent: every image once an epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_factor: Option<f64>,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig { epochs: 12, iterations: None, lr_steps_iters: None, images_per_batch: 2, iters_per_epoch: None, lr: 0.005, momentum: 0.9, weight_decay: 5e-4, lr_steps: vec![9], gamma: 0.1, warmup_iters: 50, keep_checkpoints: 2, repeat_factor: None }
    }
}

/// A solver schedule resolved against the training set's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Iterations of a whole epoch: one pass over the training images (capped by `train.iters_per_epoch`).
    pub iters_per_epoch: usize,
    pub epochs: usize,
    /// Iterations in all; the last epoch has `total - (epochs - 1) * iters_per_epoch`.
    pub total: usize,
}

impl Schedule {
    /// Iterations of epoch `epoch` (0-based).
    pub fn iters_in(&self, epoch: usize) -> usize {
        self.total.saturating_sub(epoch * self.iters_per_epoch).min(self.iters_per_epoch)
    }
}

impl SolverConfig {
    /// The learning rate at `iteration` without the warm-up: `lr` times `gamma`
    /// per step passed (what `metrics.csv` logs for an epoch, at its last iteration).
    pub fn stepped_lr(&self, s: &Schedule, iteration: usize) -> f64 {
        let steps = match &self.lr_steps_iters {
            Some(at) => at.iter().filter(|&&k| iteration >= k).count(),
            None => self.lr_steps.iter().filter(|&&e| iteration / s.iters_per_epoch >= e).count(),
        };
        self.lr * self.gamma.powi(steps as i32)
    }

    /// The schedule for a training set of `n_train` images (after images without
    /// a non-difficult object are left out).
    pub fn schedule(&self, n_train: usize) -> Schedule {
        let ipe = n_train.div_ceil(self.images_per_batch).min(self.iters_per_epoch.unwrap_or(usize::MAX)).max(1);
        match self.iterations {
            Some(total) => Schedule { iters_per_epoch: ipe, epochs: total.div_ceil(ipe), total },
            None => Schedule { iters_per_epoch: ipe, epochs: self.epochs, total: self.epochs * ipe },
        }
    }

    /// Learning rate at `iteration` (0-based, since the start): a step schedule
    /// (steps after `lr_steps` epochs of `s`, or after `lr_steps_iters` iterations),
    /// with a linear warm-up from lr/10 over the first `warmup_iters`.
    pub fn lr_at(&self, s: &Schedule, iteration: usize) -> f64 {
        let lr = self.stepped_lr(s, iteration);
        if iteration < self.warmup_iters {
            let f = iteration as f64 / self.warmup_iters as f64;
            lr * (0.1 + 0.9 * f)
        } else {
            lr
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestConfig {
    /// Per-class NMS IoU threshold.
    pub nms: f32,
    pub score_thresh: f32,
    pub max_per_image: usize,
    /// Evaluate every this many epochs (the last epoch is always evaluated).
    pub eval_every: usize,
    /// Test images whose RoIs share one head pass (the detections do not depend on it).
    pub images_per_batch: usize,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig { nms: 0.3, score_thresh: 0.05, max_per_image: 100, eval_every: 1, images_per_batch: 8 }
    }
}

impl TrainConfig {
    /// Rejects out-of-range values and missing input files, naming the key and the value.
    pub fn check(&self) -> Result<()> {
        if !self.dataset.root.is_dir() {
            bail!("dataset.root = {}: no such directory", self.dataset.root.display());
        }
        if self.dataset.format == Some(DataFormat::Voc) {
            for (key, v) in [("dataset.train_ann", &self.dataset.train_ann), ("dataset.test_ann", &self.dataset.test_ann), ("dataset.images", &self.dataset.images)] {
                if let Some(v) = v {
                    bail!("{key} = {}: only a COCO dataset (dataset.format: coco) has it", v.display());
                }
            }
        }
        for f in [&self.proposals.train_file, &self.proposals.test_file].into_iter().flatten() {
            if !f.is_file() {
                bail!("proposals file {}: no such file", f.display());
            }
        }
        self.check_values()
    }

    /// [`TrainConfig::check`] less the files: what a dry run can check before the data exist.
    pub fn check_values(&self) -> Result<()> {
        parse_device(&self.device)?;
        self.proposals.ss_params().check()?;
        self.model.check()?;
        if self.model.rpn_config().is_some() {
            if let Some(f) = self.proposals.train_file.as_ref().or(self.proposals.test_file.as_ref()) {
                bail!("proposals.{}_file = {}: model.detector: faster_rcnn proposes its own RoIs; drop the file or use fast_rcnn", if self.proposals.train_file.is_some() { "train" } else { "test" }, f.display());
            }
        }
        self.sampler.check_detector(self.model.detector)?;
        self.pretrain.check()?;
        let i = &self.input;
        if i.scale < 16 || i.max_size < i.scale {
            bail!("input.scale = {} / input.max_size = {}: need 16 <= scale <= max_size", i.scale, i.max_size);
        }
        if i.pixel_std.iter().any(|s| *s <= 0.0) {
            bail!("input.pixel_std = {:?}: every std must be positive", i.pixel_std);
        }
        let t = &self.train;
        match (t.iterations, &t.lr_steps_iters) {
            (None, None) if t.epochs == 0 => bail!("train.epochs = 0: at least one epoch"),
            (None, None) => {}
            (None, Some(_)) => bail!("train.lr_steps_iters needs train.iterations (or give train.lr_steps in epochs)"),
            (Some(0), _) => bail!("train.iterations = 0: at least one iteration"),
            (Some(n), steps) => {
                if t.epochs != 0 || !t.lr_steps.is_empty() {
                    bail!("train.iterations = {n} replaces train.epochs and train.lr_steps: leave those out and give the steps as train.lr_steps_iters");
                }
                if let Some(&k) = steps.iter().flatten().find(|&&k| k == 0 || k >= n) {
                    bail!("train.lr_steps_iters: {k} is not inside the {n} iterations");
                }
            }
        }
        if t.images_per_batch == 0 {
            bail!("train.images_per_batch = 0: at least one image per iteration");
        }
        if let Some(r) = t.repeat_factor.filter(|r| !(*r > 0.0 && *r <= 1.0)) {
            bail!("train.repeat_factor = {r}: the threshold is a share of the training images, in (0, 1]");
        }
        if t.iters_per_epoch == Some(0) {
            bail!("train.iters_per_epoch = 0: at least one iteration");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr = {}: must be positive", t.lr);
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bail!("train.momentum = {} is outside [0, 1)", t.momentum);
        }
        if t.weight_decay < 0.0 {
            bail!("train.weight_decay = {} is negative", t.weight_decay);
        }
        if !(t.gamma > 0.0 && t.gamma <= 1.0) {
            bail!("train.gamma = {} is outside (0, 1]", t.gamma);
        }
        if t.keep_checkpoints == 0 {
            bail!("train.keep_checkpoints = 0: the last checkpoint is needed to resume");
        }
        self.sampler.check()?;
        let b = self.sampler.batch_size();
        if b < t.images_per_batch as i64 {
            bail!("sampler.batch_size = {b} is below train.images_per_batch = {}: each image needs at least one RoI", t.images_per_batch);
        }
        let s = &self.test;
        if !(0.0..=1.0).contains(&s.nms) {
            bail!("test.nms = {} is outside [0, 1]", s.nms);
        }
        if !(0.0..=1.0).contains(&s.score_thresh) {
            bail!("test.score_thresh = {} is outside [0, 1]", s.score_thresh);
        }
        for (k, v) in [("max_per_image", s.max_per_image), ("eval_every", s.eval_every), ("images_per_batch", s.images_per_batch)] {
            if v == 0 {
                bail!("test.{k} = 0: at least 1");
            }
        }
        Ok(())
    }

    /// RoIs per image (B/N).
    pub fn rois_per_image(&self) -> i64 {
        self.sampler.batch_size() / self.train.images_per_batch as i64
    }
}

/// `auto` | `cpu` | `cuda` | `cuda:N` → a device, or an error naming the value.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    match s {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => parse_device("cuda:0"),
        _ => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| anyhow!("device = {s:?}: expected auto, cpu, cuda or cuda:N"))?;
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                bail!("device = {s:?}: this machine has {count} CUDA device(s)");
            }
            Ok(tch::Device::Cuda(n))
        }
    }
}


impl TrainConfig {
    /// The typed config of a YAML value (a config file's, or a grid cell's
    /// merged one): `sampler.kind` defaulted, and with `train.iterations` the
    /// epoch keys it replaces set to their "unset" values (0 epochs, no epoch
    /// steps), so that giving both units is an error rather than a silent choice.
    pub fn from_value(mut v: Value, origin: &str) -> Result<Self> {
        default_sampler_kind(&mut v);
        let iters_mode = v.pointer("/train/iterations").is_some_and(|x| !x.is_null());
        if iters_mode {
            let train = v.get_mut("train").and_then(Value::as_object_mut).expect("train.iterations is set");
            for (k, unset) in [("epochs", Value::from(0)), ("lr_steps", Value::Array(vec![]))] {
                match train.get(k) {
                    Some(x) if *x != unset => bail!("{origin}: train.iterations replaces train.{k} (given as {x}): leave it out; the learning-rate steps go in train.lr_steps_iters"),
                    _ => {
                        train.insert(k.to_string(), unset);
                    }
                }
            }
        }
        from_value(v, origin)
    }

    /// The config as YAML, as saved in a run directory.
    pub fn to_yaml(&self) -> Result<String> {
        serde_saphyr::to_string(self).map_err(|e| anyhow!("serialising the config: {e}"))
    }
}
