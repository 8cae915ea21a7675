//! Between model and trainer: the shared pre-trained backbone, the analogue of
//! the paper's ImageNet initialisation (`harness pretrain`, `model.init: pretrained`).
//!
//! The task is supervised classification of boxes in small windows: every
//! sample is a `window x window` crop, cut from a training image at the
//! detector's own input scale, and one box in it (a RoI) to classify. The box
//! is either a jittered ground-truth object (its class, and its regression
//! target) or a random box that overlaps no object by IoU 0.3 or more
//! (background, R-CNN's threshold for negatives). The network is the
//! detector's own: backbone, RoI pooling, fc6/fc7, a classifier and a box
//! regressor, trained with batch norm in training mode on batches of
//! `batch_size` windows. Objects keep their native size (a window grows, and is
//! shrunk, only for objects larger than it), so the backbone learns the scales
//! it will see in detection. The saved file holds the backbone and fc6/fc7;
//! the detector's classifier and regressor start fresh, as in Fast R-CNN.
//!
//! Sources (`pretrain.source`):
//! - `dataset`: the configured dataset's training split. It works for any
//!   VOC-layout root, and never touches the test split.
//! - `synth`: scenes rendered by the default-data generator with a seed of
//!   their own (images that no split contains): the six shape classes, their
//!   near-miss distractors as background, `synth_images` scenes.
//! - `both` (default): the two together, labels merged by class name (a
//!   dataset without shape classes gets 6 extra classes to learn). On the
//!   default data the generated scenes triple the labelled objects; on a
//!   user's own data the training split keeps the features on its domain.
//!
//! A tenth of the source images (`val_fraction`) is held out and gives the
//! logged validation accuracy. The source's pixels stay within
//! `dataset.cache_mib`, as the trainer's do: a source that fits is decoded
//! (or rendered) up front and held; a larger one is read as its crops use
//! it, the images read first kept up to the budget and each next batch's
//! images decoded ahead on worker threads ([`crate::trainer::batch::Streamed`]).
//! Both give the same crops and the same weights. Crowd regions (COCO's
//! `iscrowd`) are never samples, as difficult objects are not; background
//! boxes avoid both. The result is cached under
//! `<cache>/pretrain/<key>/`, where the key is a SHA-256 of everything that
//! determines the weights: this config, the model's shape, the input
//! normalisation and scale, the bytes of the source images and annotations,
//! and the code's stamp ([`code_stamp`], a hash of the sources that train
//! them). Every arm and seed of a grid therefore shares one file, and it is
//! computed once. The folder also holds `pretrain.csv` (loss and accuracy per
//! epoch) and `pretrain.json` (what the key was made of).
//!
//! Where the weights come from, the cache, the shipped folder (`pretrained/`
//! in the source tree) or a run of this module, and the checks on each:
//! [`cache`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tch::{nn, Device, Kind, Tensor};

pub mod cache;
pub use cache::{code_only, code_stamp, ensure, ensure_with, file_digests, identity, key_of, sha256_of, ship, shipped_dir, verify, Digests, Origin, Pretrained, Verification};

use crate::boxes::{iou, BBox};
use crate::data::{synth, Dataset};
pub use crate::config::{PretrainConfig, Source};
use crate::config::{parse_device, TrainConfig};
use crate::model::sgd::Sgd;
use crate::model::{box_coder, per_roi_losses, FastRcnn, Init, ModelConfig};
use crate::trainer::batch::{ImageSource, Streamed, AHEAD};

/// The pre-training cache folder: `$OHEM_CACHE/pretrain`, else `~/.cache/ohem-harness/pretrain`.
pub fn default_cache_dir() -> PathBuf {
    crate::cache_root().join("pretrain")
}

/// One source image: its size, its objects to classify (0-based boxes, labels
/// 1..=K; neither difficult nor crowd) and every object box (difficult and
/// crowd ones too) that background boxes must avoid. Its pixels are in [`Pixels`].
struct SourceImage {
    h: i64,
    w: i64,
    objects: Vec<(BBox, i64)>,
    avoid: Vec<BBox>,
}

/// The source's images by index: the dataset's training files, then the generated scenes.
struct SourceFiles {
    ds: Option<Dataset>,
    files: Vec<(PathBuf, u32, u32)>,
    synth_seed: u64,
    synth: usize,
}

impl ImageSource for SourceFiles {
    fn len(&self) -> usize {
        self.files.len() + self.synth
    }
    fn decode(&self, i: usize) -> Result<image::RgbImage> {
        match (self.files.get(i), &self.ds) {
            (Some((path, w, h)), Some(ds)) => Ok(ds.load_image_file(path, *w, *h)?),
            _ => {
                let k = (i - self.files.len()) as u64;
                Ok(synth::render_image(self.synth_seed, k, &format!("pretrain{k:06}")).0)
            }
        }
    }
}

/// The source's pixels (`[3, H, W]` uint8): held, or read under the budget as crops use them.
enum Pixels {
    Held(Vec<Tensor>),
    Streamed(Streamed),
}

impl Pixels {
    fn get(&self, i: usize) -> Result<Tensor> {
        match self {
            Pixels::Held(v) => Ok(v[i].shallow_clone()),
            Pixels::Streamed(s) => s.image(i),
        }
    }

    /// Asks for the images of the next batch, so that workers decode them while this one trains.
    fn ahead(&self, crops: Option<&[Crop]>) {
        if let (Pixels::Streamed(s), Some(crops)) = (self, crops) {
            let mut next: Vec<usize> = Vec::with_capacity(crops.len());
            for c in crops {
                if !next.contains(&c.image) {
                    next.push(c.image);
                }
            }
            s.ahead(&next);
        }
    }
}

/// A SHA-256 of the source: the class list, and per training image (in split
/// order) what the pre-training reads of it: its size, its objects (class
/// name, box, difficult, crowd) and its file's bytes, hashed once while the
/// file is unchanged ([`cache::file_digests`]) (`dataset`); the
/// generator's version and settings (`synth`). Neither the layout nor the
/// ids are in it, so the same data as VOC and as COCO shares one key.
fn fingerprint(cfg: &TrainConfig) -> Result<String> {
    let mut h = Sha256::new();
    if cfg.pretrain.source.uses_dataset() {
        let ds = Dataset::from_config(&cfg.dataset)?;
        h.update(ds.classes.join("\n").as_bytes());
        let anns = ds.load_split(&cfg.dataset.train_split)?;
        // each file's hash from the record of earlier ones while its size and time are unchanged
        let digests = cache::file_digests(&anns.iter().map(|a| ds.image_path_of(a)).collect::<Vec<_>>())?.sums;
        for (a, d) in anns.iter().zip(digests) {
            h.update(format!("\n{}x{}", a.width, a.height).as_bytes());
            for o in &a.objects {
                let b = o.bbox.map(f32::to_bits);
                h.update(format!(" {} {:?} {} {}", o.name, b, o.difficult as u8, o.crowd as u8).as_bytes());
            }
            h.update(d);
        }
    }
    if cfg.pretrain.source.uses_synth() {
        h.update(format!("{} seed {} images {}", synth::GENERATOR, cfg.pretrain.seed, cfg.pretrain.synth_images).as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The source images and their pixels, and their class names (labels are 1 + an
/// index into them). With both sources, a generated class takes the label of the
/// dataset's class of the same name, or a new one. The pixels are held when they
/// fit `dataset.cache_mib`, else streamed under it (the module's doc).
fn load_source(cfg: &TrainConfig) -> Result<(Vec<SourceImage>, Pixels, Vec<String>)> {
    use rayon::prelude::*;
    let mut meta = Vec::new();
    let mut classes: Vec<String> = Vec::new();
    let mut files = SourceFiles { ds: None, files: Vec::new(), synth_seed: cfg.pretrain.seed ^ 0x5052_4554_5241_494E, synth: 0 };
    if cfg.pretrain.source.uses_dataset() {
        let ds = Dataset::from_config(&cfg.dataset)?;
        let anns = ds.load_split(&cfg.dataset.train_split)?;
        if anns.is_empty() {
            bail!("pretrain.source = {:?}: split {:?} of {} is empty", cfg.pretrain.source, cfg.dataset.train_split, ds.root.display());
        }
        meta = anns.iter().map(|a| source_image(a, &|c| c as i64 + 1)).collect();
        files.files = anns.iter().map(|a| (ds.image_path_of(a), a.width, a.height)).collect();
        classes = ds.classes.clone();
        files.ds = Some(ds.without_parses());
    }
    let mut labels = Vec::new();
    if cfg.pretrain.source.uses_synth() {
        labels = synth::CLASSES
            .iter()
            .map(|name| {
                let at = classes.iter().position(|c| c == name).unwrap_or_else(|| {
                    classes.push(name.to_string());
                    classes.len() - 1
                });
                at as i64 + 1
            })
            .collect();
        // a seed no generated split uses: these scenes are in no train or test split
        files.synth = cfg.pretrain.synth_images;
    }
    let scene_bytes: usize = (0..files.synth as u64).map(|k| synth::scene_size(files.synth_seed, k)).map(|(w, h)| 3 * w as usize * h as usize).sum();
    let bytes = files.files.iter().map(|f| 3 * f.1 as usize * f.2 as usize).sum::<usize>() + scene_bytes;
    let budget = (cfg.dataset.cache_mib() as usize).saturating_mul(1 << 20);
    let seed = files.synth_seed;
    let render = |k: usize| synth::render_image(seed, k as u64, &format!("pretrain{k:06}"));
    let pixels = if bytes <= budget {
        let mut held = crate::trainer::batch::decode_all(&SourceFiles { synth: 0, ..files.clone_files() })?;
        let scenes: Vec<(Tensor, SourceImage)> = (0..files.synth).into_par_iter().map(|k| render(k)).map(|(img, a)| (to_chw(&img), source_image(&a, &|c| labels[c]))).collect();
        for (t, m) in scenes {
            held.push(t);
            meta.push(m);
        }
        Pixels::Held(held)
    } else {
        // the scenes' objects (rendered once here; their pixels again when crops use them)
        meta.extend((0..files.synth).into_par_iter().map(|k| source_image(&render(k).1, &|c| labels[c])).collect::<Vec<_>>());
        Pixels::Streamed(Streamed::new(std::sync::Arc::new(files), budget, cfg.pretrain.batch_size.max(AHEAD)))
    };
    if meta.iter().all(|s| s.objects.is_empty()) {
        bail!("pretrain: the {:?} source has no non-difficult object to learn from", cfg.pretrain.source);
    }
    Ok((meta, pixels, classes))
}

impl SourceFiles {
    /// The same files (the dataset shared), for a decoding pass over them alone.
    fn clone_files(&self) -> SourceFiles {
        SourceFiles { ds: self.ds.clone(), files: self.files.clone(), synth_seed: self.synth_seed, synth: self.synth }
    }
}

/// An annotation's size, samples and boxes to avoid (0-based boxes): difficult objects and
/// crowd regions are no samples, but background boxes avoid them.
fn source_image(a: &crate::data::Annotation, label: &(dyn Fn(usize) -> i64 + Sync)) -> SourceImage {
    let to0 = |b: BBox| b.map(|v| v - 1.0);
    SourceImage {
        h: a.height as i64,
        w: a.width as i64,
        objects: a.objects.iter().filter(|o| !o.difficult && !o.crowd).map(|o| (to0(o.bbox), label(o.class))).collect(),
        avoid: a.objects.iter().map(|o| to0(o.bbox)).collect(),
    }
}

/// An image as `[3, H, W]` uint8.
fn to_chw(img: &image::RgbImage) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(img.as_raw()).view([h, w, 3]).permute([2, 0, 1]).contiguous()
}

/// One training sample: a window of a source image and a box in it.
#[derive(Debug, Clone)]
struct Crop {
    image: usize,
    /// Window `[x0, y0, side]` in continuous original-image pixels.
    window: [f32; 3],
    flip: bool,
    /// The box (0-based, inclusive, original pixels), its label, and the object it was jittered from.
    roi: BBox,
    label: i64,
    gt: BBox,
}

/// Draws one epoch's crops: `crops_per_object` per object, plus background
/// boxes to make `bg_fraction` of the total, shuffled.
fn draw_crops(src: &[SourceImage], images: &[usize], cfg: &TrainConfig, rng: &mut ChaCha8Rng) -> Vec<Crop> {
    let p = &cfg.pretrain;
    let mut crops = Vec::new();
    let scale_of = |i: usize| {
        let (h, w) = (src[i].h, src[i].w);
        (cfg.input.scale_for(h, w), h as f32, w as f32)
    };
    for &i in images {
        let (s, _, _) = scale_of(i);
        for &(b, label) in &src[i].objects {
            for _ in 0..p.crops_per_object {
                let (bw, bh) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
                // a jittered box that still overlaps the object by IoU >= 0.7
                let roi = loop {
                    let j = |r: &mut ChaCha8Rng, v: f32| r.random_range(-0.08..0.08f32) * v;
                    let r = [b[0] + j(rng, bw), b[1] + j(rng, bh), b[2] + j(rng, bw), b[3] + j(rng, bh)];
                    if r[2] - r[0] >= 1.0 && r[3] - r[1] >= 1.0 && iou(&r, &b) >= 0.7 {
                        break r;
                    }
                };
                // the window: `window` px at input scale, larger for large objects, the object inside
                let side = (p.window as f32 / s as f32).max(1.25 * bw.max(bh));
                let (cx, cy) = ((b[0] + b[2] + 1.0) / 2.0, (b[1] + b[3] + 1.0) / 2.0);
                let (sx, sy) = ((side - bw).max(0.0) * 0.4, (side - bh).max(0.0) * 0.4);
                let x0 = cx - side / 2.0 + rng.random_range(-sx..=sx);
                let y0 = cy - side / 2.0 + rng.random_range(-sy..=sy);
                crops.push(Crop { image: i, window: [x0, y0, side], flip: rng.random(), roi, label, gt: b });
            }
        }
    }
    let n_fg = crops.len();
    let n_bg = ((n_fg as f64) * p.bg_fraction / (1.0 - p.bg_fraction)).round() as usize;
    let mut tries = 0;
    while crops.len() < n_fg + n_bg && tries < 50 * (n_bg + 1) {
        tries += 1;
        let i = images[rng.random_range(0..images.len())];
        let (s, h, w) = scale_of(i);
        let side = p.window as f32 / s as f32;
        let x0 = rng.random_range(-0.25 * side..(w - 0.75 * side).max(-0.25 * side + 1.0));
        let y0 = rng.random_range(-0.25 * side..(h - 0.75 * side).max(-0.25 * side + 1.0));
        // a box of 12 px to the whole window (at input scale), aspect 1:2 to 2:1, inside the image
        let size = (rng.random_range((12.0f32).ln()..(p.window as f32).ln())).exp() / s as f32;
        let aspect = rng.random_range((0.5f32).ln()..(2.0f32).ln()).exp();
        let (bw, bh) = (size * aspect.sqrt(), size / aspect.sqrt());
        let bx = (x0 + rng.random_range(0.0..(side - bw).max(1.0))).clamp(0.0, (w - bw).max(0.0));
        let by = (y0 + rng.random_range(0.0..(side - bh).max(1.0))).clamp(0.0, (h - bh).max(0.0));
        let roi = [bx, by, (bx + bw - 1.0).min(w - 1.0), (by + bh - 1.0).min(h - 1.0)];
        if roi[2] - roi[0] < 1.0 || roi[3] - roi[1] < 1.0 || src[i].avoid.iter().any(|g| iou(&roi, g) >= 0.3) {
            continue;
        }
        crops.push(Crop { image: i, window: [x0, y0, side], flip: rng.random(), roi, label: 0, gt: roi });
    }
    crate::shuffle(&mut crops, rng);
    crops
}

/// Cuts and normalises a batch of crops: (`[B, 3, S, S]` windows, `[B, 5]` RoIs, `[B]` labels, `[B, 4]` targets).
fn make_batch(pixels: &Pixels, crops: &[Crop], cfg: &TrainConfig, device: Device) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let s = cfg.pretrain.window;
    let mean = Tensor::from_slice(&cfg.input.pixel_mean.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&cfg.input.pixel_std.map(|v| v as f32)).view([1, 3, 1, 1]);
    let steps = (Tensor::arange(s, (Kind::Float, Device::Cpu)) + 0.5) / s as f64; // [S] fractions of the window
    let mut windows = Vec::with_capacity(crops.len());
    let (mut rois, mut gts) = (Vec::new(), Vec::new());
    // each image of the batch read once, however many crops it gives
    let mut images: std::collections::HashMap<usize, Tensor> = std::collections::HashMap::new();
    for c in crops {
        if !images.contains_key(&c.image) {
            images.insert(c.image, pixels.get(c.image)?);
        }
        let img = images[&c.image].unsqueeze(0).to_kind(Kind::Float);
        let (h, w) = (img.size()[2] as f64, img.size()[3] as f64);
        let img = (img - &mean) / &std; // zero outside the image: the mean colour, as the detector's padding
        let [x0, y0, side] = c.window.map(|v| v as f64);
        // sample points in grid_sampler's [-1, 1] coordinates (align_corners = false)
        let mut gx = (&steps * side + x0) * (2.0 / w) - 1.0;
        let gy = (&steps * side + y0) * (2.0 / h) - 1.0;
        if c.flip {
            gx = gx.flip([0]);
        }
        let grid = Tensor::stack(&[gx.view([1, s]).expand([s, s], false), gy.view([s, 1]).expand([s, s], false)], 2).unsqueeze(0); // [1, S, S, 2]
        windows.push(img.grid_sampler_2d(&grid, 0, 0, false)); // bilinear, zero padding
        // boxes into window pixels (0-based inclusive), flipped with the window
        let k = s as f32 / c.window[2];
        let map = |b: BBox| {
            let (a, z) = ((b[0] - c.window[0]) * k, (b[2] + 1.0 - c.window[0]) * k - 1.0);
            let (x1, x2) = if c.flip { (s as f32 - 1.0 - z, s as f32 - 1.0 - a) } else { (a, z) };
            [x1, (b[1] - c.window[1]) * k, x2, (b[3] + 1.0 - c.window[1]) * k - 1.0]
        };
        rois.extend(map(c.roi));
        gts.extend(map(c.gt));
    }
    let b = crops.len() as i64;
    let rois = Tensor::from_slice(&rois).view([b, 4]);
    let gts = Tensor::from_slice(&gts).view([b, 4]);
    let targets = box_coder::encode(&rois, &gts);
    let batch_idx = Tensor::arange(b, (Kind::Float, Device::Cpu)).unsqueeze(1);
    let labels: Vec<i64> = crops.iter().map(|c| c.label).collect();
    Ok((
        Tensor::cat(&windows, 0).to_device(device),
        Tensor::cat(&[batch_idx, rois], 1).to_device(device),
        Tensor::from_slice(&labels).to_device(device),
        targets.to_device(device),
    ))
}

/// One row of `pretrain.csv`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainRow {
    pub epoch: usize,
    pub crops: usize,
    pub seconds: f64,
    pub lr: f64,
    pub loss: f64,
    pub accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// The model config the pre-training trains: the detector's, from scratch, batch norm in training
/// mode, without a region proposal network (Fast and Faster R-CNN share one backbone).
fn pretrain_model_cfg(m: &ModelConfig) -> ModelConfig {
    ModelConfig { init: Init::Scratch, weights: None, freeze_bn: Some(false), detector: crate::model::Detector::FastRcnn, rpn: None, ..m.clone() }
}

/// The weights' file name in a cache or shipped folder, and the log's.
pub const WEIGHTS: &str = "backbone.safetensors";
pub const LOG: &str = "pretrain.csv";
/// The key's material, the classes, and (shipped) the weights' SHA-256 and where they were made.
pub const RECORD: &str = "pretrain.json";

/// Trains `cfg`'s backbone into the folder `out`: the weights, the log and the record.
fn train_into(cfg: &TrainConfig, material: &serde_json::Value, out: &Path, progress: bool) -> Result<()> {
    let (src, pixels, classes) = load_source(cfg)?;
    let mut record = material.clone();
    record["classes"] = serde_json::json!(classes);
    std::fs::write(out.join(RECORD), serde_json::to_string_pretty(&record)?).with_context(|| format!("writing {}", out.display()))?;
    run(cfg, &src, &pixels, classes.len(), out, progress)
}

/// Trains the classifier on crops and writes `backbone.safetensors` and `pretrain.csv` into `out`.
fn run(cfg: &TrainConfig, src: &[SourceImage], pixels: &Pixels, n_classes: usize, out: &Path, progress: bool) -> Result<()> {
    let p = &cfg.pretrain;
    let device = parse_device(&cfg.device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x7072_6574_7261_696E);
    // hold out every image whose rank in a seeded shuffle falls in the validation share
    let mut order: Vec<usize> = (0..src.len()).collect();
    crate::shuffle(&mut order, &mut rng);
    let n_val = ((src.len() as f64) * p.val_fraction).round() as usize;
    let (val_imgs, train_imgs) = order.split_at(n_val.min(src.len().saturating_sub(1)));
    let val_crops = if val_imgs.is_empty() { Vec::new() } else { draw_crops(src, val_imgs, cfg, &mut rng) };

    tch::manual_seed(p.seed as i64);
    let mcfg = pretrain_model_cfg(&cfg.model);
    let vs = nn::VarStore::new(device);
    let model = FastRcnn::new(&vs.root(), &mcfg, n_classes);
    let mut opt = Sgd::new(&vs, p.momentum, p.weight_decay);
    let k = n_classes as i64;

    let epoch_crops = draw_crops(src, train_imgs, cfg, &mut rng.clone()).len();
    let steps_per_epoch = epoch_crops.div_ceil(p.batch_size);
    let total = steps_per_epoch * p.epochs;
    let warmup = (total / 20).max(1);
    let lr_at = |step: usize| {
        if step < warmup {
            p.lr * (step + 1) as f64 / warmup as f64
        } else {
            let f = ((step - warmup) as f64 / (total - warmup).max(1) as f64).min(1.0);
            p.lr * 0.5 * (1.0 + (std::f64::consts::PI * f).cos())
        }
    };
    let bar = crate::progress_bar(total as u64, "pre-training", progress);
    let mut plain = crate::PlainLines::new(progress, std::time::Duration::from_secs(30));
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut step = 0;
    for epoch in 0..p.epochs {
        let t = Instant::now();
        let crops = draw_crops(src, train_imgs, cfg, &mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        let chunks: Vec<&[Crop]> = crops.chunks(p.batch_size).filter(|c| c.len() >= 2).collect();
        for (b, chunk) in chunks.iter().enumerate() {
            if crate::rundir::STOP.load(std::sync::atomic::Ordering::SeqCst) {
                // a pre-emption signal (harness train, harness cell): pre-training keeps no
                // checkpoint, so the resumed cell pre-trains again; exit now rather than be killed
                return Err(crate::rundir::preempted(0, cfg.train.epochs, 0, 0).into());
            }
            let batch = make_batch(pixels, chunk, cfg, device)?;
            pixels.ahead(chunks.get(b + 1).copied());
            let (l, right) = train_batch(&model, &mut opt, batch, chunk.len(), k, lr_at(step));
            step += 1;
            if !l.is_finite() {
                bail!("pre-training diverged at epoch {} (loss {l}); lower pretrain.lr = {}", epoch + 1, p.lr);
            }
            loss_sum += l * chunk.len() as f64;
            correct += right;
            seen += chunk.len();
            bar.set_message(format!("epoch {}/{} acc {:.3}", epoch + 1, p.epochs, correct as f64 / seen as f64));
            bar.inc(1);
            crate::rundir::report_phase(crate::rundir::PhaseKind::Pretraining, epoch + 1, p.epochs, step, total);
            if plain.as_mut().is_some_and(|l| l.due()) {
                let secs = started.elapsed().as_secs_f64();
                let eta = secs / step as f64 * (total - step) as f64;
                eprintln!("pre-training the shared backbone: epoch {}/{}, step {step}/{total}, accuracy {:.3}, {} elapsed, ETA {}", epoch + 1, p.epochs, correct as f64 / seen as f64, crate::fmt_duration(secs), crate::fmt_duration(eta));
            }
        }
        let (val_loss, val_accuracy) = evaluate(&model, pixels, &val_crops, cfg, device, k)?;
        rows.push(PretrainRow {
            epoch: epoch + 1,
            crops: seen,
            seconds: t.elapsed().as_secs_f64(),
            lr: lr_at(step.saturating_sub(1)),
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy,
        });
        if progress {
            let r = rows.last().expect("pushed");
            bar.suspend(|| {
                eprintln!(
                    "pretrain epoch {:>2}: {} crops, loss {:.4}, accuracy {:.3}, validation accuracy {:.3}, {:.1}s",
                    r.epoch, r.crops, r.loss, r.accuracy, r.val_accuracy, r.seconds
                )
            });
        }
    }
    bar.finish_and_clear();
    write_outputs(out, &rows, &vs)
}

/// One SGD step on a batch of `n` crops (windows, RoIs, labels, targets) at `lr`: the
/// batch's loss before the step and how many crops the classifier got right.
fn train_batch(model: &FastRcnn, opt: &mut Sgd, batch: (Tensor, Tensor, Tensor, Tensor), n: usize, k: i64, lr: f64) -> (f64, i64) {
    let (x, rois, labels, targets) = batch;
    let feats = model.features(&x, true);
    let (logits, deltas) = model.head(&feats, &rois, true);
    let (cls, loc) = per_roi_losses(&logits, &deltas, &labels, &targets, k);
    let loss = cls.mean(Kind::Float) + loc.sum(Kind::Float) / n as f64;
    loss.backward();
    opt.step(lr);
    let right = logits.argmax(1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
    (loss.double_value(&[]), right)
}

/// Writes `pretrain.csv` and the weights: the backbone and fc6/fc7 (the detector's
/// classifier and regressor start fresh).
fn write_outputs(out: &Path, rows: &[PretrainRow], vs: &nn::VarStore) -> Result<()> {
    let mut w = csv::Writer::from_path(out.join(LOG)).with_context(|| format!("writing {}", out.join(LOG).display()))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| !n.starts_with("cls_score.") && !n.starts_with("bbox_pred.")).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let file = out.join(WEIGHTS);
    Tensor::write_safetensors(&named, &file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Mean loss and accuracy over fixed crops, in eval mode.
fn evaluate(model: &FastRcnn, pixels: &Pixels, crops: &[Crop], cfg: &TrainConfig, device: Device, k: i64) -> Result<(f64, f64)> {
    if crops.is_empty() {
        return Ok((f64::NAN, f64::NAN));
    }
    let (mut loss, mut correct) = (0.0, 0i64);
    tch::no_grad(|| -> Result<()> {
        let chunks: Vec<&[Crop]> = crops.chunks(cfg.pretrain.batch_size).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let (x, rois, labels, targets) = make_batch(pixels, chunk, cfg, device)?;
            pixels.ahead(chunks.get(n + 1).copied());
            let (logits, deltas) = model.head(&model.features(&x, false), &rois, false);
            let (cls, loc) = per_roi_losses(&logits, &deltas, &labels, &targets, k);
            loss += (cls + loc).sum(Kind::Float).double_value(&[]);
            correct += logits.argmax(1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
        }
        Ok(())
    })?;
    Ok((loss / crops.len() as f64, correct as f64 / crops.len() as f64))
}

/// Reads a `pretrain.csv`.
pub fn read_log(path: &Path) -> Result<Vec<PretrainRow>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize().enumerate().map(|(i, row)| row.with_context(|| format!("{}: row {}", path.display(), i + 2))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Annotation, Object};

    /// Difficult objects and crowd regions are no samples; background boxes avoid all three kinds.
    #[test]
    fn crowds_and_difficult_objects_are_no_samples() {
        let obj = |bbox: BBox, difficult: bool, crowd: bool| Object { name: "a".into(), class: 0, bbox, difficult, truncated: false, pose: "Unspecified".into(), crowd, area: None };
        let a = Annotation {
            id: "x".into(),
            filename: "x.jpg".into(),
            width: 100,
            height: 80,
            depth: 3,
            objects: vec![obj([1.0, 1.0, 10.0, 10.0], false, false), obj([11.0, 11.0, 20.0, 20.0], true, false), obj([21.0, 21.0, 40.0, 40.0], false, true)],
        };
        let s = source_image(&a, &|c| c as i64 + 1);
        assert_eq!((s.h, s.w), (80, 100));
        assert_eq!(s.objects, vec![([0.0, 0.0, 9.0, 9.0], 1)], "only the plain object is a sample");
        assert_eq!(s.avoid, vec![[0.0, 0.0, 9.0, 9.0], [10.0, 10.0, 19.0, 19.0], [20.0, 20.0, 39.0, 39.0]]);
    }
}
