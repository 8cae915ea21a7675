//! Stage 5 of the pipeline: the one Fast R-CNN trainer every sampler drives.
//!
//! Per iteration: N images are flipped, rescaled and normalised; the backbone
//! runs once with gradients; each image's RoIs (proposals plus ground truth)
//! are assigned to ground truth; if the sampler asks, a read-only forward of
//! the head over all RoIs gives per-RoI losses; the sampler picks RoIs; the
//! picked RoIs (or all, masked) go through the head; the loss
//! `mean(cross-entropy) + sum(smooth L1)/R` is backpropagated and SGD steps.
//! After each epoch: a checkpoint, VOC mAP on the test split, and a row of
//! `metrics.csv`. A run directory holds the exact config, the metrics and the
//! checkpoints, and a rerun resumes after the last finished epoch.

pub mod batch;
pub mod config;
pub mod detect;
pub mod resume;
pub mod sgd;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

use crate::data::Dataset;
use crate::eval::{self, Metric};
use crate::model::{per_roi_losses, roi_pool, FastRcnn, Init};
use crate::proposals;
use crate::sampler::{self, Backprop, ImageRois, ImageScores, Miner, Progress, RoiLosses};
use crate::rundir::{read_csv, read_metrics, write_csv, EpochRow, MiningRow, CHECKPOINTS, CONFIG, METRICS, MINING};
pub use crate::rundir::RunDirBusy;
use batch::{collate, prepare, ImageStore};
use resume::{EpochStats, Partial};
pub use config::TrainConfig;

/// Options of a training run that are not part of the experiment.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub progress: bool,
    /// Discard what the run directory holds and start over.
    pub force: bool,
    /// Proposal cache folder (None: the default).
    pub cache_dir: Option<PathBuf>,
    /// Pre-trained backbone cache folder (None: the default, [`crate::pretrain::default_cache_dir`]).
    pub pretrain_dir: Option<PathBuf>,
    /// Stop at the next iteration boundary, checkpoint and return [`crate::rundir::Preempted`]
    /// once this is set (`harness train` points it at [`crate::rundir::STOP`], which
    /// SIGUSR1 and SIGTERM set).
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

impl TrainOptions {
    fn stopping(&self) -> bool {
        self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The weights a run starts from: `model.weights`, the shared pre-trained
/// backbone (made now if the cache lacks it), or none.
pub fn initial_weights(cfg: &TrainConfig, opts: &TrainOptions) -> Result<Option<PathBuf>> {
    Ok(match (&cfg.model.weights, cfg.model.init) {
        (Some(w), _) => Some(w.clone()),
        (None, Init::Pretrained) => {
            let dir = opts.pretrain_dir.clone().unwrap_or_else(crate::pretrain::default_cache_dir);
            Some(crate::pretrain::ensure(cfg, &dir, opts.progress)?.weights)
        }
        (None, Init::Scratch) => None,
    })
}

fn checkpoint_path(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(format!("epoch_{epoch:03}.safetensors"))
}

/// Loads a split's annotations and proposals (from the cache, selective search or a file).
pub fn load_split(ds: &Dataset, cfg: &TrainConfig, split: &str, file: Option<&Path>, opts: &TrainOptions) -> Result<ImageStore> {
    let anns = ds.load_split(split)?;
    if anns.is_empty() {
        bail!("split {split:?} of {} is empty", ds.root.display());
    }
    let props = match file {
        Some(f) => proposals::from_file(f, &anns)?,
        None => {
            let cache = opts.cache_dir.clone().unwrap_or_else(proposals::default_cache_dir);
            proposals::compute(ds, &anns, &cfg.proposals.ss_params(), Some(&cache), opts.progress)?.0
        }
    };
    ImageStore::load(ds, anns, props)
}

/// Scores the training set with the current (frozen) model, for offline mining:
/// eval mode, no gradient, every proposal of every image, no flip.
pub struct FrozenScorer<'a> {
    pub model: &'a FastRcnn,
    pub store: &'a ImageStore,
    pub cfg: &'a TrainConfig,
    pub device: Device,
}

impl Miner for FrozenScorer<'_> {
    fn score_training_set(&mut self) -> Result<Vec<ImageScores>> {
        let fg_thresh = self.cfg.sampler.fg_thresh();
        let k = self.model.num_classes;
        let mut out = Vec::with_capacity(self.store.len());
        for i in 0..self.store.len() {
            let p = prepare(self.store, i, &self.cfg.input, false, self.device);
            let n = p.proposals.size()[0];
            let s = tch::no_grad(|| {
                let feats = self.model.features(&p.image.unsqueeze(0), false);
                let a = sampler::assign(i, n, p.proposals.shallow_clone(), &p.gt, &p.gt_labels, fg_thresh);
                let rois = roi_pool::with_batch_index(0, &p.proposals);
                let (logits, deltas) = self.model.head(&feats, &rois, false);
                let (cls, loc) = per_roi_losses(&logits, &deltas, &a.labels, &a.targets, k);
                let fg_score = logits.softmax(-1, Kind::Float).narrow(1, 1, k).amax([1], false);
                ImageScores { image: i, labels: a.labels, max_iou: a.max_iou, fg_score, loss: cls + loc }
            });
            out.push(s);
        }
        Ok(out)
    }
}

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
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
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
    opt: &mut sgd::Sgd,
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
    let loss_cls = cls.sum(Kind::Float) / n_sel as f64;
    let loss_bbox = loc.sum(Kind::Float) / n_sel as f64;
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
    })
}

/// Trains `cfg` in `run_dir`; resumes after the last finished epoch found there.
pub fn train(cfg: &TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<Vec<EpochRow>> {
    cfg.check()?;
    let device = config::parse_device(&cfg.device)?;
    let metrics_path = run_dir.join(METRICS);
    let config_path = run_dir.join(CONFIG);
    let yaml = cfg.to_yaml()?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let _lock = crate::rundir::try_lock(run_dir)?;
    if opts.force {
        let _ = std::fs::remove_file(&metrics_path);
        let _ = std::fs::remove_file(run_dir.join(MINING));
        let _ = std::fs::remove_dir_all(run_dir.join(CHECKPOINTS));
        let _ = std::fs::remove_file(run_dir.join(crate::rundir::PROGRESS));
    } else if config_path.exists() {
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
        // the device is where a run happens, not what it is: a cell may resume on another GPU
        let same = serde_saphyr::from_str::<TrainConfig>(&text).map(|mut old| {
            old.device = cfg.device.clone();
            old == *cfg
        });
        if !matches!(same, Ok(true)) {
            bail!("{} holds a run of a different config; use another output directory or --force", run_dir.display());
        }
    }
    crate::data::voc::write_file(&config_path, yaml.as_bytes())?;
    let mut rows = read_metrics(&metrics_path)?;
    let start_epoch = rows.len();
    // mining rounds of the finished epochs (a killed epoch's rounds are redone on resume)
    let mining_path = run_dir.join(MINING);
    let mut mining: Vec<MiningRow> = if opts.force { Vec::new() } else { read_csv(&mining_path)? };
    mining.retain(|m| m.epoch <= start_epoch);
    if start_epoch >= cfg.train.epochs {
        return Ok(rows);
    }

    let ds = Dataset::open(&cfg.dataset.root)?;
    let mut train_set = load_split(&ds, cfg, &cfg.dataset.train_split, cfg.proposals.train_file.as_deref(), opts)?;
    // As py-faster-rcnn's filter_roidb: an image without non-difficult ground truth has no foreground to learn from.
    let dropped = train_set.keep_where(|a| a.objects.iter().any(|o| !o.difficult));
    if train_set.is_empty() {
        bail!("no image of split {:?} has a non-difficult object to train on", cfg.dataset.train_split);
    }
    if dropped > 0 && opts.progress {
        eprintln!("training on {} images ({dropped} without non-difficult objects left out)", train_set.len());
    }
    let test_set = load_split(&ds, cfg, &cfg.dataset.test_split, cfg.proposals.test_file.as_deref(), opts)?;

    let weights = initial_weights(cfg, opts)?; // before seeding: pre-training draws from the same generator
    tch::manual_seed(cfg.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
    let missing = model.load_from_and_freeze(&mut vs, weights.as_deref())?;
    if cfg.model.init == Init::Pretrained && cfg.model.weights.is_none() {
        let lacking: Vec<&String> = missing.iter().filter(|n| !n.starts_with("cls_score.") && !n.starts_with("bbox_pred.")).collect();
        if !lacking.is_empty() {
            bail!("the pre-trained backbone {} lacks {} of the model's variables, e.g. {}", weights.as_deref().unwrap_or(Path::new("?")).display(), lacking.len(), lacking[0]);
        }
    }
    let mut opt = sgd::Sgd::new(&vs, cfg.train.momentum, cfg.train.weight_decay);
    if start_epoch > 0 {
        let ck = checkpoint_path(run_dir, start_epoch);
        vs.load(&ck).with_context(|| format!("resuming from {}", ck.display()))?;
        opt.load(&ck.with_extension("sgd.safetensors"))?;
    }
    let mut sampler = cfg.sampler.build();
    if start_epoch > 0 {
        let sp = checkpoint_path(run_dir, start_epoch).with_extension("sampler.json");
        if sp.exists() {
            let text = std::fs::read_to_string(&sp).with_context(|| format!("reading {}", sp.display()))?;
            sampler.restore(serde_json::from_str(&text).with_context(|| format!("parsing {}", sp.display()))?)?;
        }
    }
    // a checkpoint inside the epoch that comes next (pre-emption) takes over from the epoch's
    let partial = resume::read_partial(run_dir, start_epoch)?;
    if partial.is_some() {
        let p = |e: &str| resume::partial_path(run_dir, e);
        vs.load(p("safetensors")).with_context(|| format!("resuming from {}", p("safetensors").display()))?;
        opt.load(&p("sgd.safetensors"))?;
        if p("sampler.json").exists() {
            let text = std::fs::read_to_string(p("sampler.json")).with_context(|| format!("reading {}", p("sampler.json").display()))?;
            sampler.restore(serde_json::from_str(&text).with_context(|| format!("parsing {}", p("sampler.json").display()))?)?;
        }
    }
    let mut partial = partial;

    let n_img = cfg.train.images_per_batch;
    let iters = train_set.len().div_ceil(n_img).min(cfg.train.iters_per_epoch.unwrap_or(usize::MAX));
    let mut wall = rows.last().map(|r| r.wall_s).unwrap_or(0.0);
    let mut progressed = false; // stop at an epoch boundary only after some work, so every call advances
    for epoch in start_epoch..cfg.train.epochs {
        if opts.stopping() && progressed {
            return Err(crate::rundir::Preempted { where_: format!("after epoch {epoch} of {}", cfg.train.epochs) }.into());
        }
        let t_epoch = Instant::now();
        let lr_epoch = cfg.train.lr_at(epoch, usize::MAX);
        // Seeds per epoch, so a resumed run draws what an uninterrupted one would.
        tch::manual_seed((cfg.seed as i64).wrapping_mul(1_000_003).wrapping_add(epoch as i64));
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        crate::shuffle(&mut order, &mut rng);
        let mut st = EpochStats::default();
        let mut first_iter = 0;
        let mut elapsed_before = 0.0; // seconds of this epoch before a mid-epoch checkpoint
        if let Some(p) = partial.take() {
            // continue where the mid-epoch checkpoint left off: the same generators, sums and mining log
            rng.set_word_pos(p.rng_word_pos.parse::<u128>().with_context(|| format!("{}: rng_word_pos", resume::partial_path(run_dir, "json").display()))?);
            resume::restore_rng(run_dir, device)?;
            st = p.stats;
            first_iter = p.next_iter;
            elapsed_before = p.elapsed_s;
            wall = p.wall_s;
            mining.extend(p.mining);
            if opts.progress {
                eprintln!("resuming epoch {} at iteration {}/{iters}", epoch + 1, first_iter + 1);
            }
        }
        let bar = crate::progress_bar(iters as u64, "training", opts.progress);
        bar.inc(first_iter as u64);
        for it in first_iter..iters {
            crate::rundir::report_phase("training", epoch + 1, cfg.train.epochs, it, iters);
            let at = Progress { epoch, iter_in_epoch: it, iteration: epoch * iters + it };
            let mut scorer = FrozenScorer { model: &model, store: &train_set, cfg, device };
            if sampler.is_due(at) {
                crate::rundir::report_phase("mining", epoch + 1, cfg.train.epochs, 0, 0);
            }
            if let Some(rep) = sampler.before_iteration(at, &mut scorer)? {
                st.mine_s += rep.seconds;
                if opts.progress {
                    bar.suspend(|| {
                        eprintln!(
                            "mining round {}: {} hard negatives in {:.1}s (mean loss {} vs {} for a random negative)",
                            mining.len() + 1,
                            rep.mined,
                            rep.seconds,
                            rep.mined_loss.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
                            rep.random_loss.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
                        )
                    });
                }
                mining.push(MiningRow {
                    round: mining.len() + 1,
                    epoch: epoch + 1,
                    iteration: at.iteration,
                    seconds: rep.seconds,
                    images: rep.images,
                    negatives: rep.negatives,
                    mined: rep.mined,
                    empty_images: rep.empty_images,
                    mined_loss: rep.mined_loss,
                    random_loss: rep.random_loss,
                    mined_fg_score: rep.mined_fg_score,
                    random_fg_score: rep.random_fg_score,
                    prev_still_hard: rep.prev_still_hard,
                });
            }
            let idx: Vec<usize> = (0..n_img).map(|j| order[(it * n_img + j) % order.len()]).collect();
            let prepared: Vec<batch::Prepared> = idx.iter().map(|&i| prepare(&train_set, i, &cfg.input, cfg.input.flip && rng.random::<bool>(), device)).collect();
            let out = train_step(&model, &mut opt, cfg.train.lr_at(epoch, at.iteration), sampler.as_mut(), &prepared, cfg)
                .with_context(|| format!("epoch {} iteration {}", epoch + 1, it + 1))?;
            st.iterations += 1;
            progressed = true;
            st.loss_cls += out.loss_cls;
            st.loss_bbox += out.loss_bbox;
            st.rois += out.rois as f64;
            st.fg += out.fg as f64;
            st.sel_loss_sum += out.sel_loss_sum;
            if let Some((s, n)) = out.all_loss {
                st.all_loss_sum += s;
                st.all_rois += n as f64;
            }
            bar.set_message(format!("epoch {}/{} loss {:.3}", epoch + 1, cfg.train.epochs, (st.loss_cls + st.loss_bbox) / st.iterations as f64));
            bar.inc(1);
            if opts.stopping() && it + 1 < iters {
                // pre-empted inside the epoch: checkpoint at this iteration boundary and stop
                bar.finish_and_clear();
                crate::rundir::report_phase("checkpointing", epoch + 1, cfg.train.epochs, it + 1, iters);
                let p = |e: &str| resume::partial_path(run_dir, e);
                std::fs::create_dir_all(run_dir.join(CHECKPOINTS))?;
                let state = sampler.state();
                if !state.is_null() {
                    crate::data::voc::write_file(&p("sampler.json"), serde_json::to_string(&state)?.as_bytes())?;
                }
                opt.save(&p("sgd.safetensors"))?;
                vs.save(p("safetensors")).with_context(|| format!("writing {}", p("safetensors").display()))?;
                let this_epoch: Vec<MiningRow> = mining.iter().filter(|m| m.epoch == epoch + 1).cloned().collect();
                let elapsed = elapsed_before + t_epoch.elapsed().as_secs_f64();
                let partial = Partial { epoch, next_iter: it + 1, stats: st, elapsed_s: elapsed, wall_s: wall + t_epoch.elapsed().as_secs_f64(), rng_word_pos: rng.get_word_pos().to_string(), mining: this_epoch };
                resume::write_partial(run_dir, &partial, device)?;
                return Err(crate::rundir::Preempted { where_: format!("in epoch {}/{} after iteration {}/{iters}", epoch + 1, cfg.train.epochs, it + 1) }.into());
            }
        }
        bar.finish_and_clear();
        let train_s = elapsed_before + t_epoch.elapsed().as_secs_f64() - st.mine_s;

        let ck = checkpoint_path(run_dir, epoch + 1);
        std::fs::create_dir_all(ck.parent().expect("has parent"))?;
        // optimizer and sampler state first, weights last: the weights file marks a complete checkpoint
        let state = sampler.state();
        if !state.is_null() {
            crate::data::voc::write_file(&ck.with_extension("sampler.json"), serde_json::to_string(&state)?.as_bytes())?;
        }
        let sgd_ck = ck.with_extension("sgd.safetensors");
        opt.save(&sgd_ck.with_extension("tmp"))?;
        std::fs::rename(sgd_ck.with_extension("tmp"), &sgd_ck)?;
        let tmp = ck.with_extension("tmp.safetensors");
        vs.save(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &ck)?;

        let t_eval = Instant::now();
        let last = epoch + 1 == cfg.train.epochs;
        let (map07, map10) = if last || (epoch + 1) % cfg.test.eval_every == 0 {
            crate::rundir::report_phase("evaluating", epoch + 1, cfg.train.epochs, 0, 0);
            let dets = detect::detect(&model, &test_set, &cfg.input, &cfg.test, device);
            let m07 = eval::evaluate(&test_set.anns, &ds.classes, &dets, Metric::Voc07).map;
            let m10 = eval::evaluate(&test_set.anns, &ds.classes, &dets, Metric::Voc10).map;
            (Some(m07), Some(m10))
        } else {
            (None, None)
        };
        let eval_s = t_eval.elapsed().as_secs_f64();
        wall += t_epoch.elapsed().as_secs_f64();
        let n = st.iterations.max(1) as f64;
        rows.push(EpochRow {
            epoch: epoch + 1,
            iterations: st.iterations,
            train_s,
            mine_s: st.mine_s,
            eval_s,
            wall_s: wall,
            loss: (st.loss_cls + st.loss_bbox) / n,
            loss_cls: st.loss_cls / n,
            loss_bbox: st.loss_bbox / n,
            rois_per_iter: st.rois / n,
            fg_fraction: st.fg / st.rois.max(1.0),
            sel_loss: st.sel_loss_sum / st.rois.max(1.0),
            all_loss: (st.all_rois > 0.0).then(|| st.all_loss_sum / st.all_rois),
            cache_size: sampler.cache_size(),
            lr: lr_epoch,
            map_voc07: map07,
            map_voc10: map10,
        });
        if !mining.is_empty() || mining_path.exists() {
            write_csv(&mining_path, &mining)?;
        }
        write_csv(&metrics_path, &rows)?;
        resume::remove_partial(run_dir);
        // keep the newest checkpoints only
        for old in 1..=(epoch + 1).saturating_sub(cfg.train.keep_checkpoints) {
            let _ = std::fs::remove_file(checkpoint_path(run_dir, old));
            let _ = std::fs::remove_file(checkpoint_path(run_dir, old).with_extension("sgd.safetensors"));
            let _ = std::fs::remove_file(checkpoint_path(run_dir, old).with_extension("sampler.json"));
        }
        if opts.progress {
            let r = rows.last().expect("just pushed");
            eprintln!(
                "epoch {:>3}: loss {:.4} (cls {:.4}, bbox {:.4}), fg {:.2}, train {:.1}s, eval {:.1}s, mAP07 {}",
                r.epoch,
                r.loss,
                r.loss_cls,
                r.loss_bbox,
                r.fg_fraction,
                r.train_s,
                r.eval_s,
                r.map_voc07.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(rows)
}
