//! Stage 5 of the pipeline: the one Fast R-CNN trainer every sampler drives.
//!
//! [`train`] is the loop: per epoch, per iteration, N images are flipped,
//! rescaled and normalised ([`batch`]), a mining sampler may score the
//! training set with the model frozen first ([`mining`]), and one SGD step
//! runs ([`step`]): the backbone once with gradients, assignment to ground
//! truth, the sampler's pick (after a read-only forward over all RoIs when it
//! ranks by loss), the head over the picked RoIs (or all, masked), and the
//! loss `mean(cross-entropy) + sum(smooth L1)/R`. After each epoch: a
//! checkpoint ([`checkpoint`], which also holds the mid-epoch checkpoints of a
//! pre-emption), VOC mAP on the test split ([`detect`]), and a row of
//! `metrics.csv`. What the loop reports goes to an [`observer`]. A run
//! directory holds the exact config, the metrics and the checkpoints, and a
//! rerun resumes after the last finished epoch.

pub mod batch;
pub mod checkpoint;
pub mod cpu;
pub mod detect;
pub mod mining;
pub mod observer;
pub mod scope;
pub mod step;
pub mod tensorboard;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device};

use crate::config::{parse_device, Schedule, TrainConfig};
use crate::data::{Annotation, Dataset};
use crate::eval::{self, VocMetric};
use crate::model::sgd::Sgd;
use crate::model::{FastRcnn, Init};
use crate::proposals;
use crate::rundir::{read_classes, read_metrics, read_mining, read_per_class, write_csv, write_file, write_mining, ClassRow, EpochRow, MiningRow, PerClassRow, PhaseKind, CLASSES, CONFIG, METRICS, MINING, PER_CLASS, PROGRESS};
use crate::sampler::{Progress, Sampler};
use batch::{prepare, ImageStore};
use checkpoint::{Checkpoints, EpochStats, Partial, Resume};
pub use mining::FrozenScorer;
use observer::{Console, Observer};
pub use step::{class_tally, minibatch_loss, train_step, train_step_tallied, ClassTally, IterOut};
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
    /// For tests: a mid-epoch checkpoint fails after this many of its writes and renames,
    /// leaving the files as a kill there would ([`Checkpoints::kill_after_writes`]).
    pub kill_checkpoint_after: Option<usize>,
    /// For tests: raise `stop` as this phase (mining, evaluating) starts, as a signal arriving then would.
    pub stop_in: Option<PhaseKind>,
    /// Also collects the warnings of a resume (checkpoints passed over), which go to stderr.
    pub warnings: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
    /// For tests: the per-class bookkeeping's cadence in iterations (None: [`CLASS_EVERY`]).
    pub class_every: Option<usize>,
}

impl TrainOptions {
    fn stopping(&self) -> bool {
        self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A phase that honours the stop flag (mining, evaluation) returned early: the caller
/// checkpoints what is whole and stops ([`crate::rundir::Preempted`]).
#[derive(Debug, thiserror::Error)]
#[error("stopped by a pre-emption signal")]
pub struct Stopped;

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

/// Loads a split's annotations and proposals (from the cache, selective search or a file).
pub fn load_split(ds: &Dataset, cfg: &TrainConfig, split: &str, file: Option<&Path>, opts: &TrainOptions) -> Result<ImageStore> {
    store_of(ds, cfg, split, ds.load_split(split)?, file, opts)
}

/// The images and proposals of a split's annotations `anns` (see [`load_split`]).
fn store_of(ds: &Dataset, cfg: &TrainConfig, split: &str, anns: Vec<Annotation>, file: Option<&Path>, opts: &TrainOptions) -> Result<ImageStore> {
    if anns.is_empty() {
        bail!("split {split:?} of {} is empty", ds.root.display());
    }
    let props = match file {
        // Faster R-CNN proposes its own RoIs: no selective search, no file
        _ if cfg.model.rpn_config().is_some() => vec![Vec::new(); anns.len()],
        // a binary file stays on disk, read one image at a time
        Some(f) if proposals::binary::is_binary(f) => {
            return ImageStore::load_with_file(ds, anns, proposals::binary::BinaryProposals::open(f)?, cfg.dataset.cache_mib()).with_context(|| f.display().to_string());
        }
        Some(f) => proposals::from_file(f, &anns)?,
        None => {
            let cache = opts.cache_dir.clone().unwrap_or_else(proposals::default_cache_dir);
            proposals::compute(ds, &anns, &cfg.proposals.ss_params(), Some(&cache), opts.progress)?.0
        }
    };
    ImageStore::load(ds, anns, props, cfg.dataset.cache_mib())
}

/// The detector of `cfg` for `num_classes` classes, seeded with `cfg.seed`,
/// with `weights` loaded by name and the frozen layers frozen: what the trainer
/// trains, and what `harness bench` times. A pre-trained backbone must provide
/// every variable but the classifier and the box regressor.
pub fn build_model(cfg: &TrainConfig, device: Device, num_classes: usize, weights: Option<&Path>) -> Result<(nn::VarStore, FastRcnn)> {
    tch::manual_seed(cfg.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = FastRcnn::new(&vs.root(), &cfg.model, num_classes);
    let missing = model.load_from_and_freeze(&mut vs, weights)?;
    if let Some(pi) = cfg.sampler.background_prior() {
        model.set_background_prior(pi);
    }
    if cfg.model.init == Init::Pretrained && cfg.model.weights.is_none() {
        // the classifier, the box regressor and Faster R-CNN's RPN start from their own initialisation
        let lacking: Vec<&String> = missing.iter().filter(|n| !["cls_score.", "bbox_pred.", "rpn."].iter().any(|p| n.starts_with(p))).collect();
        if !lacking.is_empty() {
            bail!("the pre-trained backbone {} lacks {} of the model's variables, e.g. {}", weights.unwrap_or(Path::new("?")).display(), lacking.len(), lacking[0]);
        }
    }
    Ok((vs, model))
}

/// Refuses a run directory that holds a run of another config. The device is
/// where a run happens, not what it is: a cell may resume on another GPU; nor
/// is `dataset.cache_mib` (how many decoded images are held does not change
/// what is computed): a run may resume under a smaller budget after running
/// out of memory. The config written back holds the new values.
fn check_same_config(cfg: &TrainConfig, config_path: &Path) -> Result<()> {
    if !config_path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let same = serde_saphyr::from_str::<TrainConfig>(&text).map(|mut old| {
        old.device = cfg.device.clone();
        old.dataset.cache_mib = cfg.dataset.cache_mib;
        old == *cfg
    });
    if !matches!(same, Ok(true)) {
        bail!("{} holds a run of a different config; use another output directory or --force", config_path.parent().unwrap_or(Path::new(".")).display());
    }
    Ok(())
}

/// A run directory's logs: the rows of its finished epochs (`metrics.csv`) and
/// their mining rounds (`mining.csv`; a killed epoch's rounds are redone on resume).
struct Logs {
    /// `outcomes.txt`: the final evaluation's matches, for the report's test-set bootstrap.
    outcomes_path: PathBuf,
    metrics_path: PathBuf,
    mining_path: PathBuf,
    rows: Vec<EpochRow>,
    mining: Vec<MiningRow>,
    /// `classes.csv`: the per-class bookkeeping every [`CLASS_EVERY`] iterations.
    classes_path: PathBuf,
    classes: Vec<ClassRow>,
    /// `per_class.csv`: each class's AP at every evaluation of the finished epochs.
    per_class_path: PathBuf,
    per_class: Vec<PerClassRow>,
}

/// The per-class bookkeeping ([`step::ClassTally`], `classes.csv`) runs every this many
/// iterations of a run (its first included): where the sampler computes no per-RoI losses it
/// costs a read-only forward of the head over all RoIs, and at this cadence that stays under 2%
/// of the training time (`harness bench samplers` measures it).
pub const CLASS_EVERY: usize = 20;

impl Logs {
    fn open(run_dir: &Path) -> Result<Logs> {
        let (metrics_path, mining_path, classes_path) = (run_dir.join(METRICS), run_dir.join(MINING), run_dir.join(CLASSES));
        let rows = read_metrics(&metrics_path)?;
        let mut mining = read_mining(&mining_path)?;
        mining.retain(|m| m.epoch <= rows.len());
        // kept as far as the resumed state reaches ([`Logs::keep_epochs`])
        let classes = read_classes(&classes_path)?;
        let per_class_path = run_dir.join(PER_CLASS);
        let mut per_class = read_per_class(&per_class_path)?;
        per_class.retain(|p| p.epoch <= rows.len());
        Ok(Logs { outcomes_path: run_dir.join(crate::rundir::OUTCOMES), metrics_path, mining_path, rows, mining, classes_path, classes, per_class_path, per_class })
    }

    /// Keeps the first `n` epochs' rows and mining rounds (a resume from an earlier checkpoint),
    /// and the bookkeeping of the iterations the resumed state has trained: the first `trained`
    /// epochs', and of epoch `trained + 1` (1-based) those before iteration `next` of a
    /// mid-epoch checkpoint.
    fn keep_epochs(&mut self, n: usize, trained: usize, next: Option<usize>) {
        self.rows.truncate(n);
        self.mining.retain(|m| m.epoch <= n);
        self.per_class.retain(|p| p.epoch <= n);
        self.classes.retain(|c| c.epoch <= trained || next.is_some_and(|i| c.epoch == trained + 1 && c.iter_in_epoch < i));
    }

    /// Rewrites the files (each atomically).
    fn write(&self) -> Result<()> {
        if !self.mining.is_empty() || self.mining_path.exists() {
            write_mining(&self.mining_path, &self.mining)?;
        }
        self.write_classes()?;
        if !self.per_class.is_empty() || self.per_class_path.exists() {
            write_csv(&self.per_class_path, &self.per_class)?;
        }
        write_csv(&self.metrics_path, &self.rows)
    }

    /// Rewrites `classes.csv` (atomically), where there is bookkeeping.
    fn write_classes(&self) -> Result<()> {
        if !self.classes.is_empty() || self.classes_path.exists() {
            write_csv(&self.classes_path, &self.classes)?;
        }
        Ok(())
    }
}

/// The training and test images with their proposals, and the class names.
struct Data {
    classes: Vec<String>,
    train: ImageStore,
    test: ImageStore,
    /// The test split as COCO evaluation reads it: a COCO file's own numbers, or VOC boxes converted.
    coco_gt: Vec<eval::coco::GtBox>,
    /// The COCO category id of each class (a COCO file's ids in order; 1.. for VOC).
    category_ids: Vec<i64>,
}

impl Data {
    /// The splits of `ds` (opened once by the caller, with `train_anns` its training split's annotations).
    fn load(cfg: &TrainConfig, ds: &Dataset, train_anns: Vec<Annotation>, opts: &TrainOptions, obs: &mut dyn Observer) -> Result<Data> {
        // As py-faster-rcnn's filter_roidb: an image without non-difficult ground truth has no
        // foreground to learn from (left out before its image or proposals are read)
        let before = train_anns.len();
        let train_anns: Vec<Annotation> = train_anns.into_iter().filter(has_foreground).collect();
        let dropped = before - train_anns.len();
        if train_anns.is_empty() && before > 0 {
            bail!("no image of split {:?} has a non-difficult object to train on", cfg.dataset.train_split);
        }
        let mut train = store_of(ds, cfg, &cfg.dataset.train_split, train_anns, cfg.proposals.train_file.as_deref(), opts)?;
        if dropped > 0 {
            obs.note(&format!("training on {} images ({dropped} without non-difficult objects left out)", train.len()));
        }
        // COCO crowd regions are neither foreground nor background: proposals mostly inside one are not trained on
        match train.drop_crowd_proposals(batch::CROWD_IOF) {
            Some(0) => {}
            Some(n) => obs.note(&format!("{n} training proposals lie ≥ {:.0}% inside a crowd region and are left out", batch::CROWD_IOF * 100.0)),
            None if train.anns.iter().any(|a| a.objects.iter().any(|o| o.crowd)) => {
                obs.note(&format!("training proposals ≥ {:.0}% inside a crowd region are left out as each image's are read", batch::CROWD_IOF * 100.0))
            }
            None => {}
        }
        // a COCO test split's instances file is read once: its annotations, and its ground truth for COCO AP
        let split = &cfg.dataset.test_split;
        let (anns, coco) = match ds.coco_split(split) {
            Some(s) => {
                let f = ds.coco_file(split)?;
                (f.annotations(&s.images), Some((eval::coco::gt_of_file(&f), f.category_ids())))
            }
            None => (ds.load_split(split)?, None),
        };
        let test = store_of(ds, cfg, split, anns, cfg.proposals.test_file.as_deref(), opts)?;
        let (coco_gt, category_ids) = coco.unwrap_or_else(|| (eval::coco::gt_of_annotations(&test.anns), (1..=ds.classes.len() as i64).collect()));
        Ok(Data { classes: ds.classes.clone(), train, test, coco_gt, category_ids })
    }
}

/// Whether an image has a non-difficult object, which training needs (py-faster-rcnn's filter_roidb).
pub fn has_foreground(a: &crate::data::Annotation) -> bool {
    a.objects.iter().any(|o| !o.difficult && !o.crowd)
}

/// The training images a run of `cfg` keeps (those with a non-difficult
/// object), counted from the annotations alone: no image is decoded.
pub fn trainable_images(cfg: &TrainConfig) -> Result<usize> {
    let ds = Dataset::from_config(&cfg.dataset)?;
    Ok(ds.load_split(&cfg.dataset.train_split)?.iter().filter(|a| has_foreground(a)).count())
}

/// Whether epoch `epoch` (0-based) of `epochs` ends with an evaluation of the test split:
/// every `test.eval_every` epochs, and the last.
pub fn evaluates(test: &crate::config::TestConfig, epoch: usize, epochs: usize) -> bool {
    epoch + 1 == epochs || (epoch + 1) % test.eval_every == 0
}

/// The epochs a run of `cfg` trains, from its config alone (`train.epochs`) or,
/// with `train.iterations`, from the training images it keeps.
pub fn planned_epochs(cfg: &TrainConfig) -> Result<usize> {
    match cfg.train.iterations {
        None => Ok(cfg.train.epochs),
        Some(_) => Ok(cfg.train.schedule(trainable_images(cfg)?).epochs),
    }
}

/// Trains `cfg` in `run_dir`; resumes from the newest whole checkpoint found
/// there: after the last finished epoch, inside the next one after a
/// pre-emption, or at the evaluation of an epoch whose evaluation a stop cut
/// short ([`checkpoint::Checkpoints::restore`]).
pub fn train(cfg: &TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<Vec<EpochRow>> {
    cfg.check()?;
    let device = parse_device(&cfg.device)?;
    let yaml = cfg.to_yaml()?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let _lock = crate::rundir::try_lock(run_dir)?;
    let mut ck = Checkpoints::new(run_dir);
    ck.kill_after_writes = opts.kill_checkpoint_after;
    if opts.force {
        for f in [METRICS, MINING, CLASSES, PER_CLASS, PROGRESS, crate::rundir::OUTCOMES] {
            let _ = std::fs::remove_file(run_dir.join(f));
        }
        for entry in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
            if tensorboard::is_event_file(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        ck.clear();
    } else {
        check_same_config(cfg, &run_dir.join(CONFIG))?;
    }
    write_file(&run_dir.join(CONFIG), yaml.as_bytes())?;
    let mut logs = Logs::open(run_dir)?;
    if cfg.train.iterations.is_none() && logs.rows.len() >= cfg.train.epochs {
        return Ok(logs.rows);
    }
    // the schedule from the annotations alone: a finished run is noticed before any image is read
    let ds = Dataset::from_config(&cfg.dataset)?;
    let train_anns = ds.load_split(&cfg.dataset.train_split)?;
    let sched = cfg.train.schedule(train_anns.iter().filter(|a| has_foreground(a)).count());
    if logs.rows.len() >= sched.epochs {
        return Ok(logs.rows);
    }
    // the backbone before the splits are loaded, so that pre-training's images and the splits'
    // are never held at once (each within dataset.cache_mib); before seeding the model too:
    // pre-training draws from the same generator
    let weights = initial_weights(cfg, opts)?;
    if let Some(w) = &weights {
        // into the cell's train.log: which backbone this run started from, by content
        eprintln!("initial weights: {} (SHA-256 {})", w.display(), crate::pretrain::sha256_of(w)?);
    }
    let mut obs = Console::new(opts.progress, sched.epochs);
    let data = Data::load(cfg, &ds, train_anns, opts, &mut obs)?;
    debug_assert_eq!(cfg.train.schedule(data.train.len()).epochs, sched.epochs);
    drop(ds); // its parsed instances file served the pre-training's key and source too
    let (mut vs, mut model) = build_model(cfg, device, data.classes.len(), weights.as_deref())?;
    let fresh = |vs: &nn::VarStore| (Sgd::new(vs, cfg.train.momentum, cfg.train.weight_decay), cfg.sampler.build());
    let (mut opt, mut sampler) = fresh(&vs);
    let mut warn = |w: String| {
        eprintln!("warning: {w}");
        if let Some(sink) = &opts.warnings {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(w);
        }
    };
    let resume = ck.restore(logs.rows.len(), &mut vs, &mut opt, &mut sampler, &fresh, device, &mut warn)?;
    let (first_epoch, mut partial, pending) = match resume {
        Resume::Fresh => {
            if ck.exists() {
                // a checkpoint that failed to load may have left part of itself in the model
                (vs, model) = build_model(cfg, device, data.classes.len(), weights.as_deref())?;
                (opt, sampler) = fresh(&vs);
            }
            (0, None, None)
        }
        Resume::Epoch(k) => (k, None, None),
        Resume::Partial(p) => (p.epoch, Some(p), None),
        Resume::Evaluate(m) => (m.epoch - 1, None, Some(m)),
    };
    // the epochs whose iterations the resumed state has trained (an epoch awaiting its
    // evaluation is trained), and the next iteration of a mid-epoch checkpoint
    let trained = pending.as_ref().map_or(first_epoch, |m| m.epoch);
    logs.keep_epochs(first_epoch, trained, partial.as_ref().map(|p| p.next_iter));
    let wall = logs.rows.last().map(|r| r.wall_s).unwrap_or(0.0);
    let repeat = cfg.train.repeat_factor.map(|t| repeat_factors(&(0..data.train.len()).map(|i| data.train.labels_of(i)).collect::<Vec<_>>(), t));
    let tb = open_tensorboard(run_dir, &sched, first_epoch, pending.is_some(), partial.as_ref(), &mut warn);
    let mut run = Run { cfg, opts, device, vs, model, opt, sampler, data, ck, logs, obs, sched, wall, progressed: false, repeat, tb };
    let mut epoch = first_epoch;
    if let Some(m) = pending {
        run.obs.note(&format!("epoch {} was trained and checkpointed but not evaluated: evaluating it from its checkpoint", m.epoch));
        run.logs.mining.extend(m.mining);
        run.finish_epoch(epoch, m.row, Instant::now())?;
        epoch += 1;
    }
    while epoch < sched.epochs {
        // stop at an epoch boundary only after some work, so every call advances
        if opts.stopping() && run.progressed {
            return Err(crate::rundir::preempted(epoch, sched.epochs, 0, 0).into());
        }
        run.epoch(epoch, partial.take())?;
        epoch += 1;
    }
    // the run is done: no phase is left to show (the last one written was its evaluation)
    let _ = std::fs::remove_file(run_dir.join(PROGRESS));
    Ok(run.logs.rows)
}

/// The run's TensorBoard event file for this process ([`tensorboard`]), whose steps are
/// iterations trained: it writes from the one after the resumed state's (`first_epoch` epochs,
/// an epoch awaiting evaluation after them when `evaluating`, or a mid-epoch checkpoint). A
/// failure to open it is a warning, and the run goes on without.
fn open_tensorboard(run_dir: &Path, sched: &Schedule, first_epoch: usize, evaluating: bool, partial: Option<&Partial>, warn: &mut dyn FnMut(String)) -> Option<tensorboard::Events> {
    let done = match (evaluating, partial) {
        (true, _) => end_step(sched, first_epoch),
        (false, Some(p)) => (p.epoch * sched.iters_per_epoch + p.next_iter) as i64,
        (false, None) => (first_epoch * sched.iters_per_epoch) as i64,
    };
    tensorboard::Events::open(run_dir, done + 1).map_err(|e| warn(format!("no TensorBoard scalars for this run: {e:#}"))).ok()
}

/// The data order of epoch `epoch` (0-based) over `n` images, and the epoch's generator
/// after the shuffle (it then draws the flips): seeded per epoch, so that a resumed run
/// draws what an uninterrupted one would, and the next epoch's order is known in advance.
///
/// With repeat factors (`train.repeat_factor`, [`repeat_factors`]), image i appears
/// `floor(r_i)` times plus once more with probability `r_i − floor(r_i)` (detectron2's
/// `RepeatFactorTrainingSampler`), drawn from the same generator before the shuffle; the epoch
/// keeps its iterations, so it takes the first of the longer order, and an image's expected
/// share of the epoch is `r_i / Σ r`.
pub fn epoch_order(seed: u64, epoch: usize, n: usize, repeat: Option<&[f64]>) -> (Vec<usize>, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
    let mut order: Vec<usize> = match repeat {
        None => (0..n).collect(),
        Some(r) => (0..n).flat_map(|i| std::iter::repeat_n(i, r[i].floor() as usize + (rng.random::<f64>() < r[i].fract()) as usize)).collect(),
    };
    crate::shuffle(&mut order, &mut rng);
    (order, rng)
}

/// Repeat-factor sampling's per-image factors (LVIS, Gupta et al. 2019) at threshold `t`, from
/// each training image's labels: a class's `r_c = max(1, sqrt(t / f_c))`, f_c the share of the
/// images that hold it; an image's `r_i = max` over its classes (1 with none).
pub fn repeat_factors(labels: &[&[i64]], t: f64) -> Vec<f64> {
    let n = labels.len().max(1) as f64;
    let mut images_with: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for l in labels {
        let mut seen: Vec<i64> = l.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for c in seen {
            *images_with.entry(c).or_default() += 1;
        }
    }
    let r_c = |c: &i64| (t / (images_with[c] as f64 / n)).sqrt().max(1.0);
    labels.iter().map(|l| l.iter().map(r_c).fold(1.0, f64::max)).collect()
}

/// The images to decode ahead after iteration `it` of an epoch of `iters` iterations of
/// `per_iter` images: the next [`batch::AHEAD`] in the order the trainer will use them,
/// running on into the next epoch's order (`next`; `None` after the last epoch).
pub fn look_ahead(order: &[usize], next: Option<&[usize]>, it: usize, iters: usize, per_iter: usize) -> Vec<usize> {
    let end = iters * per_iter;
    (0..batch::AHEAD)
        .map(|j| (it + 1) * per_iter + j)
        .filter_map(|pos| if pos < end { Some(order[pos % order.len()]) } else { next.map(|n| n[(pos - end) % n.len()]) })
        .collect()
}

/// A training run in progress: the model, its optimiser and sampler, the data,
/// the checkpoints and logs, and the observer.
struct Run<'a> {
    cfg: &'a TrainConfig,
    opts: &'a TrainOptions,
    device: Device,
    vs: nn::VarStore,
    model: FastRcnn,
    opt: Sgd,
    sampler: Box<dyn Sampler>,
    data: Data,
    ck: Checkpoints,
    logs: Logs,
    obs: Console,
    /// Iterations per epoch and epochs.
    sched: Schedule,
    /// Wall-clock seconds of the run so far, over every process that worked on it.
    wall: f64,
    /// Whether this process did a unit of work yet (an iteration, a mining pass, an evaluation).
    progressed: bool,
    /// The training images' repeat factors (`train.repeat_factor`), else None.
    repeat: Option<Vec<f64>>,
    /// The run's TensorBoard scalars ([`tensorboard`]); None after a write failed (warned once).
    tb: Option<tensorboard::Events>,
}

/// The TensorBoard step of epoch `epoch`'s (0-based) end: the iterations trained by then.
fn end_step(sched: &Schedule, epoch: usize) -> i64 {
    (epoch * sched.iters_per_epoch + sched.iters_in(epoch)) as i64
}

/// An epoch in progress: its order and generator, its running sums, and its clocks.
struct EpochState {
    order: Vec<usize>,
    next_order: Option<Vec<usize>>,
    rng: ChaCha8Rng,
    st: EpochStats,
    /// Seconds of the epoch before this process resumed it, and this process's start of it.
    elapsed_before: f64,
    started: Instant,
    /// The CPU counters when this process started (or resumed) the epoch.
    cpu_at: Option<cpu::CpuSnapshot>,
}

impl EpochState {
    /// The epoch's statistics with the CPU time since this process took it up added.
    fn stats_now(&self) -> EpochStats {
        let mut st = self.st.clone();
        if let (Some(at), Some(now)) = (self.cpu_at, cpu::snapshot()) {
            let d = now.since(&at);
            st.cpu_s += d.own_s;
            st.others_cpu_s += d.others_s;
            st.machine_cpu_s += d.total_s;
        }
        st
    }
}

impl Run<'_> {
    /// Enters a phase: reported, and for tests the stop raised there ([`TrainOptions::stop_in`]).
    fn enter(&mut self, phase: PhaseKind, epoch: usize, done: usize, total: usize) {
        self.obs.phase(phase, epoch, done, total);
        if let (Some(p), Some(stop)) = (self.opts.stop_in, self.opts.stop) {
            if p == phase {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// Whether a phase that honours the stop flag should stop now: a stop was asked for,
    /// and this process has done some work (so that every call advances).
    fn should_stop(&self) -> bool {
        self.opts.stopping() && self.progressed
    }

    /// Epoch `epoch` (0-based), from its start or from a checkpoint inside it:
    /// the iterations, then the checkpoint, the evaluation and the row of `metrics.csv`.
    fn epoch(&mut self, epoch: usize, partial: Option<Partial>) -> Result<()> {
        let (cfg, sched) = (self.cfg, self.sched);
        let iters = sched.iters_in(epoch);
        // Seeds per epoch, so a resumed run draws what an uninterrupted one would.
        tch::manual_seed((cfg.seed as i64).wrapping_mul(1_000_003).wrapping_add(epoch as i64));
        let n = self.data.train.len();
        let (order, rng) = epoch_order(cfg.seed, epoch, n, self.repeat.as_deref());
        let next_order = (epoch + 1 < sched.epochs).then(|| epoch_order(cfg.seed, epoch + 1, n, self.repeat.as_deref()).0);
        let mut e = EpochState { order, next_order, rng, st: EpochStats::default(), elapsed_before: 0.0, started: Instant::now(), cpu_at: cpu::snapshot() };
        let mut first_iter = 0;
        if let Some(p) = partial {
            // continue where the mid-epoch checkpoint left off: the same generators, sums and mining log
            e.rng.set_word_pos(self.ck.restore_rngs(&p, self.device)?);
            (e.st, first_iter, e.elapsed_before, self.wall) = (p.stats, p.next_iter, p.elapsed_s, p.wall_s);
            self.logs.mining.extend(p.mining);
            self.obs.note(&format!("resuming epoch {} at iteration {}/{iters}", epoch + 1, first_iter + 1));
        }
        self.obs.epoch_started(iters, first_iter);
        for it in first_iter..iters {
            self.enter(PhaseKind::Training, epoch, it, iters);
            let at = Progress { epoch, iter_in_epoch: it, iteration: epoch * sched.iters_per_epoch + it };
            match self.mine(at, &mut e.st) {
                Err(err) if err.is::<Stopped>() => return Err(self.stop_inside(epoch, it, iters, &e)),
                r => r?,
            }
            self.iteration(epoch, it, iters, &mut e)?;
            if self.opts.stopping() && it + 1 < iters {
                // pre-empted inside the epoch: checkpoint at this iteration boundary and stop
                return Err(self.stop_inside(epoch, it + 1, iters, &e));
            }
        }
        self.obs.epoch_trained();
        let train_s = e.elapsed_before + e.started.elapsed().as_secs_f64() - e.st.mine_s;
        let lr = cfg.train.stepped_lr(&sched, epoch * sched.iters_per_epoch + iters - 1);
        let mut row = e.stats_now().row(epoch, train_s, self.sampler.cache_size(), lr);
        // the wall clock up to here; finish_epoch adds the checkpoint's and the evaluation's time
        let now = Instant::now();
        row.wall_s = self.wall + now.duration_since(e.started).as_secs_f64();
        let mining: Vec<MiningRow> = self.logs.mining.iter().filter(|m| m.epoch == epoch + 1).cloned().collect();
        // the epoch's bookkeeping before its checkpoint: an epoch resumed for its evaluation
        // is not trained again
        self.logs.write_classes()?;
        self.ck.save_epoch(epoch + 1, &self.vs, &self.opt, self.sampler.as_ref(), &row, &mining)?;
        self.finish_epoch(epoch, row, now)
    }

    /// One iteration: the batch's images (and the next ones asked for ahead), then one SGD step.
    fn iteration(&mut self, epoch: usize, it: usize, iters: usize, e: &mut EpochState) -> Result<()> {
        let cfg = self.cfg;
        let began = Instant::now();
        let n_img = cfg.train.images_per_batch;
        let before = self.data.train.loader_stats();
        let prepared: Vec<batch::Prepared> = (0..n_img)
            .map(|j| e.order[(it * n_img + j) % e.order.len()])
            .map(|i| prepare(&self.data.train, i, &cfg.input, cfg.input.flip && e.rng.random::<bool>(), self.device))
            .collect::<Result<_>>()?;
        // the next images, decoded while this iteration trains (a split held in memory: nothing)
        self.data.train.ahead(&look_ahead(&e.order, e.next_order.as_deref(), it, iters, n_img));
        let after = self.data.train.loader_stats();
        e.st.load_s += (after.stall - before.stall).as_secs_f64();
        if self.data.train.streams() {
            // this step's reads only (a mining round's are its own)
            e.st.streamed += (after.decoded - before.decoded) as f64;
            e.st.prefetched += (after.prefetched - before.prefetched) as f64;
        }
        let iteration = epoch * self.sched.iters_per_epoch + it;
        let lr = cfg.train.lr_at(&self.sched, iteration);
        let tally = iteration % self.opts.class_every.unwrap_or(CLASS_EVERY).max(1) == 0;
        let mut out = train_step_tallied(&self.model, &mut self.opt, lr, self.sampler.as_mut(), &prepared, cfg, tally).with_context(|| format!("epoch {} iteration {}", epoch + 1, it + 1))?;
        let seconds = began.elapsed().as_secs_f64();
        self.tensorboard(|tb, names| {
            tb.iteration(iteration as i64 + 1, &out, lr, seconds)?;
            if let Some(t) = &out.classes {
                tb.classes(iteration as i64 + 1, t, names)?;
            }
            tb.flush()
        });
        if let Some(t) = out.classes.take() {
            for c in 0..t.candidates.len() {
                let name = if c == 0 { "background".to_string() } else { self.data.classes.get(c - 1).cloned().unwrap_or_default() };
                self.logs.classes.push(ClassRow { epoch: epoch + 1, iter_in_epoch: it, iteration, class: c, name, candidates: t.candidates[c], selected: t.selected[c], loss_sum: t.loss_sum[c], unpicked_loss_sum: t.unpicked_loss_sum[c] });
            }
        }
        e.st.add(&out);
        e.st.iter_s.push(seconds);
        self.progressed = true;
        self.obs.iteration_done(epoch, e.st.mean_loss());
        Ok(())
    }

    /// Stops inside epoch `epoch` before iteration `next_iter` of `iters`: a mid-epoch
    /// checkpoint of everything the rest of the epoch depends on (none before the first
    /// iteration: the previous epoch's checkpoint is that state), and the error to stop with.
    fn stop_inside(&mut self, epoch: usize, next_iter: usize, iters: usize, e: &EpochState) -> anyhow::Error {
        let sched = self.sched;
        if next_iter == 0 {
            return crate::rundir::preempted(epoch, sched.epochs, 0, 0).into();
        }
        self.obs.epoch_trained();
        self.enter(PhaseKind::Checkpointing, epoch, next_iter, iters);
        let mining = self.logs.mining.iter().filter(|m| m.epoch == epoch + 1).cloned().collect();
        if let Err(err) = self.logs.write_classes() {
            return err;
        }
        let secs = e.started.elapsed().as_secs_f64();
        let p = Partial { epoch, next_iter, stats: e.stats_now(), elapsed_s: e.elapsed_before + secs, wall_s: self.wall + secs, rng_word_pos: e.rng.get_word_pos().to_string(), mining, files: Default::default() };
        if let Err(err) = self.ck.save_partial(&p, &self.vs, &self.opt, self.sampler.as_ref(), self.device) {
            return err;
        }
        crate::rundir::preempted(epoch + 1, sched.epochs, next_iter, iters).into()
    }

    /// The end of epoch `epoch` (0-based), whose checkpoint is saved: the evaluation, and
    /// `row` (the epoch's row before evaluation, its `wall_s` the run's wall clock at `since`)
    /// completed and logged.
    fn finish_epoch(&mut self, epoch: usize, mut row: EpochRow, since: Instant) -> Result<()> {
        let (eval_s, maps) = match self.evaluate(epoch) {
            Err(err) if err.is::<Stopped>() => return Err(crate::rundir::preempted(epoch + 1, self.sched.epochs, 0, 0).into()),
            r => r?,
        };
        (row.map_voc07, row.map_voc10) = maps.as_ref().map_or((None, None), |m| (Some(m.0), Some(m.1)));
        if let Some(m) = &maps {
            row.set_coco(&m.2.stats);
        }
        row.eval_s = eval_s;
        row.wall_s += since.elapsed().as_secs_f64();
        self.wall = row.wall_s;
        self.logs.rows.push(row);
        self.logs.write()?;
        if maps.is_some() {
            let (row, step) = (self.logs.rows.last().expect("just pushed").clone(), end_step(&self.sched, epoch));
            let per_class: Vec<PerClassRow> = self.logs.per_class.iter().filter(|p| p.epoch == epoch + 1).cloned().collect();
            self.tensorboard(|tb, _| tb.evaluation(step, &row, &per_class));
        }
        self.ck.remove_partial();
        self.ck.prune(epoch + 1, self.cfg.train.keep_checkpoints);
        self.progressed = true;
        self.obs.epoch_finished(self.logs.rows.last().expect("just pushed"));
        Ok(())
    }

    /// Writes TensorBoard scalars with `f` (given the event file and the class names, background
    /// first). A failure is a warning, once, and the run goes on without them: they duplicate
    /// what `metrics.csv` and the other logs keep.
    fn tensorboard(&mut self, f: impl FnOnce(&mut tensorboard::Events, &[String]) -> Result<()>) {
        let Some(tb) = self.tb.as_mut() else { return };
        let names: Vec<String> = std::iter::once("background".to_string()).chain(self.data.classes.iter().cloned()).collect();
        if let Err(e) = f(tb, &names) {
            eprintln!("warning: no more TensorBoard scalars for this run: {e:#}");
            self.tb = None;
        }
    }

    /// Lets the sampler mine before an iteration, and logs the round it reports.
    fn mine(&mut self, at: Progress, st: &mut EpochStats) -> Result<()> {
        if self.sampler.is_due(at) {
            self.enter(PhaseKind::Mining, at.epoch, 0, 0);
        }
        let (opts, progressed) = (self.opts, self.progressed);
        let stop = move || opts.stopping() && progressed;
        let mut scorer = FrozenScorer { model: &self.model, store: &self.data.train, cfg: self.cfg, device: self.device, stop: &stop };
        if let Some(stats) = self.sampler.before_iteration(at, &mut scorer)? {
            st.mine_s += stats.seconds;
            let round = self.logs.mining.len() + 1;
            self.obs.mined(round, &stats);
            self.tensorboard(|tb, _| {
                // at the step of the iteration it comes before (this process's session starts
                // there at the earliest, so a killed process's round is dropped, not doubled)
                tb.mining(at.iteration as i64 + 1, &stats)?;
                tb.flush()
            });
            self.logs.mining.push(MiningRow { round, epoch: at.epoch + 1, iteration: at.iteration, stats });
            self.progressed = true;
        }
        Ok(())
    }

    /// VOC07 and VOC10 mAP and COCO's box summaries on the test split when
    /// epoch `epoch` (0-based) is due for evaluation (every `test.eval_every`
    /// epochs, and the last), and the seconds it took. A stop asked for during
    /// it returns [`Stopped`].
    fn evaluate(&mut self, epoch: usize) -> Result<(f64, Option<(f64, f64, eval::coco::CocoReport)>)> {
        let (cfg, t) = (self.cfg, Instant::now());
        if !evaluates(&cfg.test, epoch, self.sched.epochs) {
            return Ok((t.elapsed().as_secs_f64(), None));
        }
        self.enter(PhaseKind::Evaluating, epoch, 0, 0);
        let stop = || self.should_stop();
        let dets = detect::detect_until(&self.model, &self.data.test, &cfg.input, &cfg.test, self.device, &stop)?;
        let r07 = eval::evaluate(&self.data.test.anns, &self.data.classes, &dets, VocMetric::Voc07);
        let r10 = eval::evaluate(&self.data.test.anns, &self.data.classes, &dets, VocMetric::Voc10);
        let (m07, m10) = (r07.map, r10.map);
        // each class's AP, kept with the epoch's row (finish_epoch writes them together)
        self.logs.per_class.retain(|p| p.epoch != epoch + 1);
        for (c, (a, b)) in r07.per_class.iter().zip(&r10.per_class).enumerate() {
            self.logs.per_class.push(PerClassRow { epoch: epoch + 1, class: c + 1, name: a.class.clone(), npos: a.npos, ap_voc07: a.ap, ap_voc10: b.ap });
        }
        // COCO's summaries one category at a time: one category's boxes beside the detections
        let d = &self.data;
        let ids = crate::data::coco::image_ids(&d.test.anns);
        let mut dets_of = |cat: i64| d.category_ids.iter().position(|c| *c == cat).map(|c| eval::coco::dets_of_class(&ids, &dets[c], cat)).unwrap_or_default();
        let coco = eval::coco::evaluate_by_category(&ids, &d.category_ids, &d.coco_gt, &mut dets_of);
        if epoch + 1 == self.sched.epochs {
            // the last evaluation's matches, so that the report can resample the test set
            let o = eval::bootstrap::Outcomes::compute(&d.test.anns, &d.classes, &dets, &d.coco_gt, &d.category_ids);
            write_file(&self.logs.outcomes_path, o.to_text().as_bytes())?;
        }
        Ok((t.elapsed().as_secs_f64(), Some((m07, m10, coco))))
    }
}
