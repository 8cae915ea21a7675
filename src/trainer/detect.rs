//! Inference: every proposal through the network, class-specific box
//! decoding, then per class a score threshold and NMS, and at most
//! `max_per_image` detections per image (py-faster-rcnn's `test_net`).
//!
//! Images go `test.images_per_batch` at a time: the backbone runs per image
//! (images differ in size, and padding would change the features at their
//! borders), RoI pooling per image, and the head once over the RoIs of all of
//! them; the per-class thresholds and NMS then run on the host, in parallel
//! over images. A batch gives the same detections as one image at a time
//! (tested).

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::batch::{prepare, ImageStore};
use crate::config::{InputConfig, TestConfig};
use crate::boxes::{nms, BBox};
use crate::eval::Detection;
use crate::model::{box_coder, roi_pool, FastRcnn};

/// Seconds spent in each stage of [`detect_timed`] (for the bench).
#[derive(Debug, Clone, Default)]
pub struct DetectTimes {
    /// Input transform and backbone.
    pub backbone: f64,
    pub roi_pool: f64,
    /// fc6/fc7, the two outputs, softmax and box decoding.
    pub head: f64,
    /// Thresholds, NMS and the cap per image, on the host.
    pub host: f64,
}

/// Detections per class (`[K]` lists) over all images of `store`, in VOC 1-based pixels.
pub fn detect(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device) -> anyhow::Result<Vec<Vec<Detection>>> {
    detect_timed(model, store, input, test, device, None)
}

/// [`detect`], adding each stage's seconds to `times` when given (which synchronises CUDA between stages).
pub fn detect_timed(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device, times: Option<&mut DetectTimes>) -> anyhow::Result<Vec<Vec<Detection>>> {
    detect_impl(model, store, input, test, device, times, &|| false)
}

/// [`detect`] that returns [`super::Stopped`] between two batches of images once `stop()` is
/// true (a pre-emption signal: the trainer checkpoints and exits, and evaluates on resume).
pub fn detect_until(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device, stop: &dyn Fn() -> bool) -> anyhow::Result<Vec<Vec<Detection>>> {
    detect_impl(model, store, input, test, device, None, stop)
}

fn detect_impl(model: &FastRcnn, store: &ImageStore, input: &InputConfig, test: &TestConfig, device: Device, mut times: Option<&mut DetectTimes>, stop: &dyn Fn() -> bool) -> anyhow::Result<Vec<Vec<Detection>>> {
    let k = model.num_classes as usize;
    let timed = times.is_some();
    let mut clock = std::time::Instant::now();
    // seconds since the last call (0 when not timing)
    let mut lap = || {
        if !timed {
            return 0.0;
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let s = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
        s
    };
    let mut t = DetectTimes::default();
    let mut out = vec![Vec::new(); k];
    let mut images = Vec::with_capacity(store.len());
    for i in 0..store.len() {
        // Faster R-CNN proposes for every image
        if model.rpn.is_some() || store.n_proposals(i)? > 0 {
            images.push(i);
        }
    }
    let groups: Vec<&[usize]> = images.chunks(test.images_per_batch.max(1)).collect();
    for (g, group) in groups.iter().enumerate() {
        if stop() {
            return Err(super::Stopped.into());
        }
        // the next group's images, decoded while this one runs (a split held in memory: nothing)
        if let Some(next) = groups.get(g + 1) {
            store.ahead(next);
        }
        // network: per-image backbone and RoI pooling, one head pass
        let (probs, boxes, sizes) = tch::no_grad(|| -> anyhow::Result<_> {
            let mut pooled = Vec::with_capacity(group.len());
            let mut boxes = Vec::with_capacity(group.len());
            let mut sizes = Vec::with_capacity(group.len());
            for &i in group.iter() {
                let ann = &store.anns[i];
                let p = prepare(store, i, input, false, device)?;
                let feats = model.features(&p.image.unsqueeze(0), false);
                // Faster R-CNN: the RPN's test-time proposals instead of the given ones
                let props = match &model.rpn {
                    Some(rpn) => super::step::rpn_proposals(rpn, &feats, std::slice::from_ref(&p), super::step::RpnUse::Testing).proposals.swap_remove(0),
                    None => p.proposals.shallow_clone(),
                };
                let n = props.size()[0];
                t.backbone += lap();
                let rois = roi_pool::with_batch_index(0, &props); // [P, 5]
                pooled.push(model.pool(&feats, &rois));
                t.roi_pool += lap();
                boxes.push((props, p.scale, ann.width as i64, ann.height as i64));
                sizes.push(n);
            }
            let (logits, deltas) = model.head_from_pooled(&Tensor::cat(&pooled, 0), false); // [ΣP, K+1], [ΣP, 4K]
            let probs = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
            let deltas = deltas.split_with_sizes(&sizes, 0);
            let boxes: Vec<Tensor> = boxes
                .into_iter()
                .zip(deltas)
                .map(|((props, scale, w, h), d)| {
                    let n = props.size()[0];
                    let b = box_coder::decode(&props, &d.view([n, k as i64, 4])) / scale; // [P, K, 4]
                    box_coder::clip(&b, w, h).to_device(Device::Cpu)
                })
                .collect();
            t.head += lap();
            Ok((probs.split_with_sizes(&sizes, 0), boxes, sizes))
        })?;
        // host: per class, threshold and NMS; then the cap per image
        let host: Vec<(Vec<f32>, Vec<f32>)> = probs
            .iter()
            .zip(&boxes)
            .map(|(p, b)| (Vec::try_from(p.flatten(0, -1)).expect("probs to host"), Vec::try_from(b.flatten(0, -1)).expect("boxes to host")))
            .collect();
        let per_image: Vec<Vec<(usize, f32, BBox)>> = host.par_iter().zip(&sizes).map(|((probs, boxes), &n)| postprocess(probs, boxes, n as usize, k, test)).collect();
        for (&i, dets) in group.iter().zip(per_image) {
            for (c, score, bbox) in dets {
                out[c].push(Detection { image: i as u32, score, bbox });
            }
        }
        t.host += lap();
    }
    if let Some(times) = times.as_deref_mut() {
        times.backbone += t.backbone;
        times.roi_pool += t.roi_pool;
        times.head += t.head;
        times.host += t.host;
    }
    Ok(out)
}

/// Faster R-CNN's proposals for every image of `store`, at the RPN's test-time settings: each
/// image's boxes in VOC 1-based pixels of the original image, best first.
pub fn propose(model: &FastRcnn, store: &ImageStore, input: &InputConfig, device: Device) -> anyhow::Result<Vec<Vec<BBox>>> {
    let Some(rpn) = &model.rpn else { anyhow::bail!("the model has no region proposal network (model.detector is fast_rcnn)") };
    (0..store.len())
        .map(|i| {
            let ann = &store.anns[i];
            let p = prepare(store, i, input, false, device)?;
            let props = tch::no_grad(|| {
                let feats = model.features(&p.image.unsqueeze(0), false);
                super::step::rpn_proposals(rpn, &feats, std::slice::from_ref(&p), super::step::RpnUse::Testing).proposals.swap_remove(0)
            });
            let b = box_coder::clip(&(props / p.scale), ann.width as i64, ann.height as i64) + 1.0;
            Ok(crate::sampler::host_boxes(&b))
        })
        .collect()
}

/// One image's detections from its class probabilities `[n, K+1]` and boxes `[n, K, 4]` (0-based).
fn postprocess(probs: &[f32], boxes: &[f32], n: usize, k: usize, test: &TestConfig) -> Vec<(usize, f32, BBox)> {
    let mut per_image: Vec<(usize, f32, BBox)> = Vec::new();
    for c in 0..k {
        let mut cand_boxes = Vec::new();
        let mut cand_scores = Vec::new();
        for r in 0..n {
            let s = probs[r * (k + 1) + c + 1];
            if s >= test.score_thresh {
                let o = (r * k + c) * 4;
                cand_boxes.push([boxes[o] + 1.0, boxes[o + 1] + 1.0, boxes[o + 2] + 1.0, boxes[o + 3] + 1.0]);
                cand_scores.push(s);
            }
        }
        for j in nms(&cand_boxes, &cand_scores, test.nms) {
            per_image.push((c, cand_scores[j], cand_boxes[j]));
        }
    }
    if per_image.len() > test.max_per_image {
        per_image.sort_by(|a, b| b.1.total_cmp(&a.1));
        per_image.truncate(test.max_per_image);
    }
    per_image
}

/// A split's detections from one epoch's checkpoint of a run (`harness detect`), with what
/// scoring them needs and what the run logged for that epoch.
pub struct CheckpointDetections {
    /// The run's config, its epoch (1-based, when the checkpoint's name gives it) and the split.
    pub cfg: crate::config::TrainConfig,
    pub epoch: Option<usize>,
    pub split: String,
    pub checkpoint: std::path::PathBuf,
    pub anns: Vec<crate::data::Annotation>,
    pub classes: Vec<String>,
    /// Per class, over the split's images (indices into `anns`).
    pub dets: Vec<Vec<Detection>>,
    /// COCO's numbers: each class's category id and each image's id.
    pub category_ids: Vec<i64>,
    pub image_ids: Vec<i64>,
    /// The COCO split's instances file (what `harness eval` scores COCO results against), else None.
    pub coco_instances: Option<std::path::PathBuf>,
    /// The run's `metrics.csv` row of that epoch, when there is one.
    pub logged: Option<crate::rundir::EpochRow>,
}

/// Runs the checkpoint `target` names over split `split` (the config's test split when None):
/// `target` is a run (or cell) directory, whose checkpoint of epoch `epoch` (1-based; the
/// newest kept when None) is used, or a checkpoint file. The config is `config`, else the
/// run's `config.yaml`. The split's proposals are the run's (its `proposals.*_file` or the
/// selective-search cache), and inference is the trainer's own: for the test split and an
/// evaluated epoch, the same detections the run scored.
pub fn detect_checkpoint(target: &std::path::Path, config: Option<&std::path::Path>, epoch: Option<usize>, split: Option<&str>, device: Option<&str>, opts: &super::TrainOptions) -> anyhow::Result<CheckpointDetections> {
    let l = load_checkpoint(target, config, epoch, split, device, false, opts)?;
    let dets = detect(&l.model, &l.store, &l.cfg.input, &l.cfg.test, l.device)?;
    let logged = match (&l.run_dir, l.epoch) {
        (Some(r), Some(e)) => crate::rundir::read_metrics(&r.join(crate::rundir::METRICS))?.into_iter().find(|row| row.epoch == e),
        _ => None,
    };
    let image_ids = crate::data::coco::image_ids(&l.store.anns);
    Ok(CheckpointDetections { anns: l.store.anns.clone(), classes: l.classes, dets, category_ids: l.category_ids, image_ids, coco_instances: l.coco_instances, logged, cfg: l.cfg, epoch: l.epoch, split: l.split, checkpoint: l.checkpoint })
}

/// A run's model with one epoch's checkpoint loaded, and a split to run it on.
pub struct LoadedCheckpoint {
    pub cfg: crate::config::TrainConfig,
    pub run_dir: Option<std::path::PathBuf>,
    pub checkpoint: std::path::PathBuf,
    pub epoch: Option<usize>,
    pub split: String,
    pub classes: Vec<String>,
    pub category_ids: Vec<i64>,
    pub coco_instances: Option<std::path::PathBuf>,
    /// The split's images (with the run's proposals, where it has any).
    pub store: ImageStore,
    pub model: FastRcnn,
    pub device: Device,
    _vs: tch::nn::VarStore,
}

/// Loads the checkpoint `target` names for a run over split `split`, as [`detect_checkpoint`]
/// describes. With `need_rpn`, a run without a region proposal network is refused before any
/// image or proposal is read.
pub fn load_checkpoint(target: &std::path::Path, config: Option<&std::path::Path>, epoch: Option<usize>, split: Option<&str>, device: Option<&str>, need_rpn: bool, opts: &super::TrainOptions) -> anyhow::Result<LoadedCheckpoint> {
    use anyhow::{bail, Context};
    use std::path::Path;
    let (run_dir, checkpoint, epoch) = if target.is_dir() {
        let ck = super::checkpoint::Checkpoints::new(target);
        let kept: Vec<usize> = (1..=9999).filter(|&e| ck.epoch_path(e).is_file()).collect();
        let e = match epoch {
            Some(e) if kept.contains(&e) => e,
            Some(e) => {
                let kept_s: Vec<String> = kept.iter().map(|k| k.to_string()).collect();
                bail!("{}: no checkpoint of epoch {e} ({}; a run keeps its last train.keep_checkpoints)", target.display(), if kept.is_empty() { "it has none".to_string() } else { format!("it keeps epochs {}", kept_s.join(", ")) });
            }
            None => *kept.last().with_context(|| format!("{}: no epoch checkpoint (checkpoints/epoch_NNN.safetensors): not a run directory, or no epoch finished yet", target.display()))?,
        };
        (Some(target.to_path_buf()), ck.epoch_path(e), Some(e))
    } else if target.is_file() {
        if epoch.is_some() {
            bail!("--epoch names a checkpoint of a run directory; {} is a checkpoint file already", target.display());
        }
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let e = name.strip_prefix("epoch_").and_then(|n| n.strip_suffix(".safetensors")).and_then(|n| n.parse::<usize>().ok());
        let run = target.parent().filter(|p| p.file_name().is_some_and(|n| n == crate::rundir::CHECKPOINTS)).and_then(Path::parent).map(Path::to_path_buf);
        (run, target.to_path_buf(), e)
    } else {
        bail!("{}: not found (a run or cell directory, or a checkpoint file)", target.display());
    };
    let config_path = match (config, &run_dir) {
        (Some(c), _) => c.to_path_buf(),
        (None, Some(r)) => r.join(crate::rundir::CONFIG),
        (None, None) => bail!("{}: not inside a run directory's checkpoints/ folder; name its config with --config", checkpoint.display()),
    };
    if !config_path.is_file() {
        bail!("{}: not found (the run's config; name another with --config)", config_path.display());
    }
    let mut cfg = crate::config::TrainConfig::load(&config_path, &[])?;
    if need_rpn && cfg.model.rpn_config().is_none() {
        bail!("{}: a run of model.detector fast_rcnn, which has no region proposal network", target.display());
    }
    if let Some(d) = device {
        cfg.device = d.to_string();
    }
    let device = crate::config::parse_device(&cfg.device)?;
    let split = split.unwrap_or(&cfg.dataset.test_split).to_string();
    let ds = crate::data::Dataset::from_config(&cfg.dataset)?;
    let (anns, category_ids, coco_instances) = match ds.coco_split(&split) {
        Some(s) => {
            let f = ds.coco_file(&split)?;
            (f.annotations(&s.images), f.category_ids(), Some(s.ann.clone()))
        }
        None => (ds.load_split(&split)?, (1..=ds.classes.len() as i64).collect(), None),
    };
    let file = if split == cfg.dataset.test_split {
        cfg.proposals.test_file.clone()
    } else if split == cfg.dataset.train_split {
        cfg.proposals.train_file.clone()
    } else {
        None
    };
    let store = super::store_of(&ds, &cfg, &split, anns, file.as_deref(), opts)?;
    // the model as the run built it, then every variable from the checkpoint
    let mut built = cfg.clone();
    built.model.init = crate::model::Init::Scratch;
    built.model.weights = None;
    let (mut vs, model) = super::build_model(&built, device, ds.classes.len(), None)?;
    vs.load(&checkpoint).with_context(|| format!("{}: the weights do not load into the model of {}", checkpoint.display(), config_path.display()))?;
    Ok(LoadedCheckpoint { cfg, run_dir, checkpoint, epoch, split, classes: ds.classes.clone(), category_ids, coco_instances, store, model, device, _vs: vs })
}
