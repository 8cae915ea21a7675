//! The on-disk format of a run directory and of a results directory, in one
//! place. The trainer writes it, the harness and the report read it; nothing
//! here depends on the model or the trainer, so `harness report` draws its
//! charts from these files alone.
//!
//! A results directory of `harness run`:
//! - `grid.json` ([`GridMeta`]): the grid's name, arms and `report:` section;
//! - `cells/<arm>-s<seed>-<id>/`, one run directory per cell:
//!   - `cell.json` ([`CellMeta`]): arm, seed and id;
//!   - `status.json` ([`Status`]): pending, running, done or failed, with the reason;
//!   - `manifest.json` ([`Manifest`]): versions, device, host, start and end;
//!   - `config.yaml`: the exact training config;
//!   - `metrics.csv` ([`EpochRow`]): one row per finished epoch;
//!   - `mining.csv` ([`MiningRow`]): one row per offline mining round (HNM only);
//!   - `checkpoints/`, `train.log` and `lock` (held by the training process).
//!
//! Every file is replaced atomically ([`write_file`]), so a kill never leaves a torn one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};


pub const METRICS: &str = "metrics.csv";
pub const MINING: &str = "mining.csv";
pub const CONFIG: &str = "config.yaml";
pub const CHECKPOINTS: &str = "checkpoints";
pub const CELLS: &str = "cells";
pub const GRID_JSON: &str = "grid.json";
/// The columns of `metrics.csv` and `mining.csv` that are clocks or the machine's load (and
/// how many images a worker decoded ahead, a race against the steps): what `harness run
/// --retime` measures anew. Every other column is the run's deterministic result.
pub const TIMING_COLUMNS: [&str; 11] = ["train_s", "mine_s", "eval_s", "wall_s", "load_s", "cpu_s", "iter_median_s", "iter_iqr_s", "others_cpu_share", "prefetched_images", "seconds"];

/// A run directory's final evaluation as match outcomes ([`crate::eval::bootstrap`]).
pub const OUTCOMES: &str = "outcomes.txt";
/// A run directory's per-class bookkeeping of the sampler's picks ([`ClassRow`]).
pub const CLASSES: &str = "classes.csv";

/// One class (or background) at one bookkeeping iteration, a row of `classes.csv`: over the
/// minibatch's RoIs (every RoI of its images: proposals and ground truth), how many are the
/// class's, how many of them the sampler picked, and the per-RoI loss (classification +
/// smooth L1, Fast R-CNN's, before the step) summed over all of them and over those not picked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassRow {
    /// 1-based epoch, the iteration within it (0-based) and over the run (0-based).
    pub epoch: usize,
    pub iter_in_epoch: usize,
    pub iteration: usize,
    /// 0 is background; 1..=K the dataset's classes.
    pub class: usize,
    pub name: String,
    pub candidates: i64,
    pub selected: i64,
    pub loss_sum: f64,
    pub unpicked_loss_sum: f64,
}

/// A run directory's per-class AP at each evaluation ([`PerClassRow`]).
pub const PER_CLASS: &str = "per_class.csv";

/// One class at one evaluation, a row of `per_class.csv`: its VOC07 and VOC10 AP on the test
/// split (empty: no non-difficult ground truth there) and its count of such boxes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PerClassRow {
    /// The 1-based epoch evaluated.
    pub epoch: usize,
    /// 1..=K, and its name.
    pub class: usize,
    pub name: String,
    pub npos: usize,
    pub ap_voc07: Option<f64>,
    pub ap_voc10: Option<f64>,
}

/// Reads `per_class.csv` (no file: no rows).
pub fn read_per_class(path: &Path) -> Result<Vec<PerClassRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize().enumerate().map(|(i, row)| row.with_context(|| format!("{}: row {}", path.display(), i + 2))).collect()
}

/// Reads `classes.csv` (no file: no rows).
pub fn read_classes(path: &Path) -> Result<Vec<ClassRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize().enumerate().map(|(i, row)| row.with_context(|| format!("{}: row {}", path.display(), i + 2))).collect()
}
pub const STATUS: &str = "status.json";
pub const MANIFEST: &str = "manifest.json";
pub const CELL_JSON: &str = "cell.json";
pub const LOCK: &str = "lock";

/// An accuracy column of `metrics.csv`: VOC mAP (the VOC2007 11-point or the
/// VOC2010+ all-point metric, [`crate::eval`]) or one of COCO's 12 box
/// summaries ([`crate::eval::coco`]). The report works on any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// VOC2007 11-point interpolated AP.
    #[default]
    Voc07,
    /// VOC2010+ all-point (area under the monotone precision envelope).
    Voc10,
    /// COCO's summaries, in pycocotools' order ([`crate::eval::coco::SUMMARY_KEYS`]).
    Coco(usize),
}

impl Metric {
    /// Every metric, VOC's first.
    pub fn all() -> impl Iterator<Item = Metric> {
        [Metric::Voc07, Metric::Voc10].into_iter().chain((0..COCO_COLUMNS.len()).map(Metric::Coco))
    }

    /// The metric's column in `metrics.csv` and its name in grid files:
    /// `map_voc07`, `map_voc10`, or `coco_ap` … `coco_arl`.
    pub fn column(self) -> &'static str {
        match self {
            Metric::Voc07 => "map_voc07",
            Metric::Voc10 => "map_voc10",
            Metric::Coco(i) => COCO_COLUMNS[i],
        }
    }

    /// The metric a [`Metric::column`] name stands for.
    pub fn from_column(name: &str) -> Option<Metric> {
        Metric::all().find(|m| m.column() == name)
    }

    /// Every column name, for error messages.
    pub fn columns() -> String {
        Metric::all().map(|m| m.column()).collect::<Vec<_>>().join(", ")
    }
}

/// Declares [`COCO_COLUMNS`] and [`EpochRow`], whose last 12 fields are the
/// COCO columns, from the one list of the COCO summaries
/// ([`crate::eval::coco::coco_summaries`]).
macro_rules! epoch_row {
    ($($key:ident $column:ident,)*) => {
        /// The COCO columns of `metrics.csv`, in [`crate::eval::coco::SUMMARY_KEYS`] order.
        pub const COCO_COLUMNS: [&str; 12] = [$(stringify!($column)),*];

        /// One row of `metrics.csv`, written after every epoch.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct EpochRow {
            /// 1-based epoch.
            pub epoch: usize,
            /// Iterations in this epoch.
            pub iterations: usize,
            /// Seconds of training (mining excluded).
            pub train_s: f64,
            /// Seconds of offline mining (HNM), with training stalled.
            pub mine_s: f64,
            /// Seconds of test-set evaluation.
            pub eval_s: f64,
            /// Wall-clock seconds since the run started, this epoch included (resumes add up).
            pub wall_s: f64,
            /// Mean training loss, and the head's two terms (Faster R-CNN's RPN terms are
            /// `loss_rpn_obj` and `loss_rpn_box`).
            pub loss: f64,
            pub loss_cls: f64,
            pub loss_bbox: f64,
            /// Mean RoIs backpropagated per iteration.
            pub rois_per_iter: f64,
            /// Foreground fraction among the backpropagated RoIs.
            pub fg_fraction: f64,
            /// Mean per-RoI loss (cls + loc) of the backpropagated RoIs.
            pub sel_loss: f64,
            /// Mean per-RoI loss over all RoIs, when a read-only pass computed it.
            pub all_loss: Option<f64>,
            /// Hard-negative cache size after the epoch (offline mining), else 0.
            pub cache_size: usize,
            pub lr: f64,
            /// VOC2007 11-point and VOC2010 all-point mAP on the test split (empty when not evaluated).
            pub map_voc07: Option<f64>,
            pub map_voc10: Option<f64>,
            /// Mean RoIs per training image before sampling (proposals and ground truth): the
            /// regime a timing was taken in. Absent in logs that predate it.
            #[serde(default)]
            pub rois_per_image: Option<f64>,
            /// Seconds of `train_s` the steps waited for their images (decoding a
            /// streamed image, or waiting for a worker's); absent in logs that predate it.
            #[serde(default)]
            pub load_s: Option<f64>,
            /// Images the epoch's steps read from disk (a split larger than `dataset.cache_mib`;
            /// empty when the split is held in memory), and how many of them a worker had decoded
            /// ahead of their use; absent in logs that predate them.
            #[serde(default)]
            pub streamed_images: Option<f64>,
            #[serde(default)]
            pub prefetched_images: Option<f64>,
            /// The process's CPU seconds (user + system, every thread) over the epoch's training
            /// and mining; absent in logs that predate it and off Linux.
            #[serde(default)]
            pub cpu_s: Option<f64>,
            /// The median and the interquartile range of the epoch's per-iteration seconds
            /// (loading the batch and the step); absent in logs that predate them.
            #[serde(default)]
            pub iter_median_s: Option<f64>,
            #[serde(default)]
            pub iter_iqr_s: Option<f64>,
            /// The share of the machine's CPU time (all cores) that other processes took over the
            /// epoch's training and mining, from `/proc/stat`: how busy the machine was beside
            /// this cell; absent in logs that predate it and off Linux.
            #[serde(default)]
            pub others_cpu_share: Option<f64>,
            $(
                #[doc = concat!("COCO's `", stringify!($key), "` box summary on the test split (column `", stringify!($column), "`); absent in logs that predate it.")]
                #[serde(default)]
                pub $column: Option<f64>,
            )*
            /// Faster R-CNN: the region proposal network's mean objectness and box losses (both
            /// in `loss` too); empty for Fast R-CNN, absent in logs that predate them.
            #[serde(default)]
            pub loss_rpn_obj: Option<f64>,
            #[serde(default)]
            pub loss_rpn_box: Option<f64>,
        }

        impl EpochRow {
            /// The COCO columns, in [`COCO_COLUMNS`] order.
            pub fn coco(&self) -> [Option<f64>; 12] {
                [$(self.$column),*]
            }

            /// Sets the COCO columns from the 12 summaries (pycocotools' −1, nothing measurable, stays empty).
            pub fn set_coco(&mut self, stats: &[f64; 12]) {
                [$(self.$column),*] = stats.map(|s| (s > -1.0).then_some(s));
            }
        }
    };
}
crate::eval::coco::coco_summaries!(epoch_row);

impl EpochRow {
    /// The epoch's mAP by `metric`, when it was evaluated.
    pub fn map(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Voc07 => self.map_voc07,
            Metric::Voc10 => self.map_voc10,
            Metric::Coco(i) => self.coco()[i],
        }
    }
}

/// One row of `mining.csv`: when an offline mining round ran, and what it put
/// in the cache. The columns are `round,epoch,iteration` and then the fields
/// of [`MiningStats`], in that order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MiningRow {
    /// 1-based mining round.
    pub round: usize,
    /// The 1-based epoch the round happened in (before that epoch's iteration `iteration`).
    pub epoch: usize,
    /// Global 0-based iteration before which the round ran.
    pub iteration: usize,
    #[serde(flatten)]
    pub stats: MiningStats,
}

/// What a mining round found: the sampler returns it, and [`MiningRow`] embeds it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MiningStats {
    /// Seconds the round took (training stalled).
    pub seconds: f64,
    /// Training images scored.
    pub images: usize,
    /// Background RoIs eligible as negatives, over all images.
    pub negatives: usize,
    /// Hard negatives in the cache after the round.
    pub mined: usize,
    /// Images whose cache is empty after the round.
    pub empty_images: usize,
    /// Mean per-RoI loss (cls + loc) of the mined negatives, and of all eligible
    /// negatives (what a random negative scores on average).
    pub mined_loss: Option<f64>,
    pub random_loss: Option<f64>,
    /// Mean highest foreground probability of the mined negatives, and of all eligible negatives.
    pub mined_fg_score: Option<f64>,
    pub random_fg_score: Option<f64>,
    /// Of the previous round's cache, the share the current model still rates
    /// hard (by the round's own rule); empty in the first round.
    pub prev_still_hard: Option<f64>,
    /// Where the mined negatives lie, against all eligible negatives (what
    /// mining would pick by chance): mean best IoU with a labelled
    /// (non-difficult) box; share on a difficult box (IoU >= 0.5 with one: a
    /// crown that a tile edge cut, or one its annotator marked); share touching
    /// no box at all (IoU < 0.1 with every box, difficult ones included).
    /// Absent from logs written before these columns.
    #[serde(default)]
    pub mined_gt_iou: Option<f64>,
    #[serde(default)]
    pub random_gt_iou: Option<f64>,
    #[serde(default)]
    pub mined_on_difficult: Option<f64>,
    #[serde(default)]
    pub random_on_difficult: Option<f64>,
    #[serde(default)]
    pub mined_no_box: Option<f64>,
    #[serde(default)]
    pub random_no_box: Option<f64>,
}

/// The `round,epoch,iteration` columns of a [`MiningRow`] (csv writes no nested or flattened struct).
#[derive(serde::Serialize, serde::Deserialize)]
struct MiningWhen {
    round: usize,
    epoch: usize,
    iteration: usize,
}

/// Reads a run directory's `mining.csv` (empty when the file does not exist).
pub fn read_mining(path: &Path) -> Result<Vec<MiningRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = r.headers().with_context(|| format!("reading {}", path.display()))?.clone();
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let at = || format!("{}: row {}", path.display(), i + 2);
        let rec = rec.with_context(at)?;
        let when: MiningWhen = rec.deserialize(Some(&headers)).with_context(at)?;
        let stats: MiningStats = rec.deserialize(Some(&headers)).with_context(at)?;
        rows.push(MiningRow { round: when.round, epoch: when.epoch, iteration: when.iteration, stats });
    }
    Ok(rows)
}

/// Rewrites a run directory's `mining.csv` atomically.
pub fn write_mining(path: &Path, rows: &[MiningRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize((MiningWhen { round: r.round, epoch: r.epoch, iteration: r.iteration }, &r.stats))?;
    }
    let mut bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    if rows.iter().all(|r| r.stats.placement_is_empty()) {
        // a log from before the placement columns (or with nothing mined) keeps its old columns
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes.as_slice());
        let mut w = csv::Writer::from_writer(Vec::new());
        for rec in r.records() {
            let rec = rec?;
            w.write_record(rec.iter().take(rec.len() - PLACEMENT_COLUMNS))?;
        }
        bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    write_file(path, &bytes)?;
    Ok(())
}

/// The last columns of `mining.csv`: where the mined negatives lie.
const PLACEMENT_COLUMNS: usize = 6;

impl MiningStats {
    fn placement_is_empty(&self) -> bool {
        [self.mined_gt_iou, self.random_gt_iou, self.mined_on_difficult, self.random_on_difficult, self.mined_no_box, self.random_no_box].iter().all(Option::is_none)
    }
}

/// Reads a CSV log of a run directory (empty when the file does not exist).
pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize().enumerate().map(|(i, row)| row.with_context(|| format!("{}: row {}", path.display(), i + 2))).collect()
}

/// Rewrites a CSV log atomically, so a kill never leaves a torn row.
pub fn write_csv<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_file(path, &bytes)?;
    Ok(())
}

/// A failed [`write_file`]: the file and the operating system's reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes a file atomically and durably: a temporary file beside it, flushed to
/// the disk (`fsync`), then a rename, then the folder flushed, creating the
/// parent folders. After a crash or a power loss the file is either the old
/// one or the whole new one, never empty or torn. A failed write (a full disk)
/// removes its temporary file and leaves any previous version of `path` as it was.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::result::Result<(), WriteError> {
    use std::io::Write;
    let fail = |source| WriteError { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    // unique per process and per call: threads of one process may write the same path at once
    // (two images with the same bytes share a proposal-cache file)
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Writes a file atomically (a temporary file, then a rename) but not durably: for what a
/// resume does not read (`progress.json`, rewritten up to once a second on the training
/// thread), where an `fsync` would only cost time.
pub fn write_file_volatile(path: &Path, bytes: &[u8]) -> std::result::Result<(), WriteError> {
    let fail = |source| WriteError { path: path.to_path_buf(), source };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

/// Flushes a file that another library wrote (libtorch's `save`) to the disk.
pub fn sync_file(path: &Path) -> std::result::Result<(), WriteError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|source| WriteError { path: path.to_path_buf(), source })
}

/// Flushes a folder's entries (a rename into it, a new file) to the disk. Best effort:
/// a file system that cannot sync a folder loses nothing by it.
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Renames `from` to `to` (a file or a folder) and flushes the folder(s) holding them.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    let (a, b) = (from.parent().unwrap_or(Path::new(".")), to.parent().unwrap_or(Path::new(".")));
    sync_dir(b);
    if a != b {
        sync_dir(a);
    }
    Ok(())
}

/// Reads the finished epochs of a run directory's `metrics.csv` (empty when none).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochRow>> {
    read_csv(path)
}

/// `try_lock` found a run directory locked by another process.
#[derive(Debug, thiserror::Error)]
#[error("run directory {0} is in use by another process")]
pub struct RunDirBusy(pub PathBuf);

/// Takes the run directory's exclusive lock, held until the returned file is dropped.
///
/// A lock just released can still be held for a moment by a process that another thread of
/// this one forked before the release (the child shares the open file until it execs), so a
/// busy lock is tried again for up to a second before the directory is called in use.
pub fn try_lock(run_dir: &Path) -> Result<std::fs::File> {
    let path = run_dir.join(LOCK);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    for attempt in 0..20 {
        if fs2::FileExt::try_lock_exclusive(&lock).is_ok() {
            return Ok(lock);
        }
        if attempt < 19 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Err(RunDirBusy(run_dir.to_path_buf()).into())
}

/// What `cell.json` holds: how the report groups a cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellMeta {
    pub id: String,
    pub arm: String,
    pub seed: u64,
    pub epochs: usize,
    /// The data split the cell trains and tests on, in a grid with `splits:` (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<CellSplit>,
}

/// Which of a grid's resampled splits a cell ran on ([`crate::harness::splits`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct CellSplit {
    /// 0-based, in the grid's order of splits.
    pub index: usize,
    /// `f0`, `f1`, … (folds) or `r0`, … (repeats).
    pub label: String,
    /// Images trained on and tested on, and training-side images left out for overlapping a test tile.
    pub train: usize,
    pub test: usize,
    pub buffered: usize,
}

/// What `grid.json` holds at the top of a results directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GridMeta {
    pub name: String,
    pub arms: Vec<String>,
    pub report: ReportConfig,
}

/// The `report:` section of a grid file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Arms against which speed-ups are computed (the first arm when empty).
    pub baselines: Vec<String>,
    /// The `metrics.csv` column the report reads: `map_voc07`, `map_voc10` or `coco_ap` … `coco_arl`.
    #[serde(with = "metric_column")]
    pub metric: Metric,
    /// Absolute target mAP for time-to-target; default: `target_fraction` × the best final mean mAP.
    pub target_map: Option<f64>,
    pub target_fraction: f64,
    /// Ignored: the report's intervals are t-based ([`crate::report::stats`]); read so that
    /// older grid files and `grid.json` files still load.
    pub bootstrap: usize,
    /// Claims the report gives a verdict on.
    pub verdicts: Vec<VerdictConfig>,
    /// A sensitivity study's methods: each one's arms (its settings), its default setting and
    /// the knobs its arms vary (issue 38: the tuning tax).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<ArmGroup>,
    /// A study of class balance (issue 38's long tail): the report states each arm's
    /// self-balancing feedback and the rarest and most common thirds' AP against each baseline,
    /// each a comparison of the family. Off, the per-class table is still given (it states no
    /// interval), and the family is left as the other sections make it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub balance: bool,
}

/// One method of a sensitivity study: its settings as arms of the grid.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmGroup {
    /// The method's name (e.g. `fixed_ratio`).
    pub name: String,
    /// The arms that are its settings.
    pub arms: Vec<String>,
    /// The arm that is its default setting (one of `arms`).
    pub default: String,
    /// The dotted config keys its arms vary (e.g. `sampler.fg_fraction`): one chart each.
    pub knobs: Vec<String>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig { baselines: Vec::new(), metric: Metric::Voc07, target_map: None, target_fraction: 0.9, bootstrap: 2000, verdicts: Vec::new(), groups: Vec::new(), balance: false }
    }
}

/// A claim "`arm` is about `expected`× faster than `baseline` by `measure`".
/// It is supported when the 95% interval of baseline / arm lies inside
/// `[expected / tolerance, expected × tolerance]`, contradicted when it lies
/// wholly outside, and not resolved otherwise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictConfig {
    /// The claim in words, e.g. "read-only OHEM is 2x faster per iteration than masked OHEM".
    pub claim: String,
    pub baseline: String,
    pub arm: String,
    pub measure: Measure,
    #[serde(default = "default_expected")]
    pub expected: f64,
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// The setting the claim was made in, as far as it is known; the verdict
    /// line says in what the measured regime differs from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regime: Option<Regime>,
}

/// The setting a timing was measured in, or a claim was made in (each field
/// optional: a claim states what it knows).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Regime {
    /// `small`, `vgg16`.
    pub backbone: Option<String>,
    /// Width of fc6/fc7 (the RoI head).
    pub fc_width: Option<i64>,
    /// Mean RoIs per training image before sampling (proposals and ground truth).
    pub rois_per_image: Option<f64>,
    /// Shorter side of the input, in pixels.
    pub input_scale: Option<u32>,
    /// `cpu` or `gpu`.
    pub device: Option<String>,
    /// The CPU or GPU model.
    pub processor: Option<String>,
    pub dataset: Option<String>,
}

impl Regime {
    /// "small backbone, fc 512, 480 RoIs/image, 224 px, cpu (AMD EPYC), dataset default".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = &self.backbone {
            parts.push(format!("{b} backbone"));
        }
        if let Some(f) = self.fc_width {
            parts.push(format!("fc {f}"));
        }
        if let Some(r) = self.rois_per_image {
            parts.push(format!("{r:.0} RoIs/image"));
        }
        if let Some(s) = self.input_scale {
            parts.push(format!("{s} px"));
        }
        match (&self.device, &self.processor) {
            (Some(d), Some(p)) => parts.push(format!("{d} ({p})")),
            (Some(d), None) => parts.push(d.clone()),
            (None, Some(p)) => parts.push(p.clone()),
            (None, None) => {}
        }
        if let Some(d) = &self.dataset {
            parts.push(format!("dataset {d}"));
        }
        parts.join(", ")
    }

    /// What of a claim's regime this (measured) one differs in: the claim's
    /// stated fields only; RoIs per image differ beyond a factor of 1.25.
    pub fn differs_from(&self, claim: &Regime) -> Vec<&'static str> {
        let mut out = Vec::new();
        let lower = |s: &Option<String>| s.as_ref().map(|s| s.to_lowercase());
        if claim.backbone.is_some() && lower(&claim.backbone) != lower(&self.backbone) {
            out.push("backbone");
        }
        if claim.fc_width.is_some() && claim.fc_width != self.fc_width {
            out.push("head width");
        }
        if let Some(c) = claim.rois_per_image {
            if self.rois_per_image.is_none_or(|m| !(c / 1.25..=c * 1.25).contains(&m)) {
                out.push("RoIs per image");
            }
        }
        if claim.input_scale.is_some() && claim.input_scale != self.input_scale {
            out.push("input scale");
        }
        let kind = |d: &Option<String>| d.as_ref().map(|d| if d.starts_with("cuda") || d.starts_with("gpu") { "gpu" } else { "cpu" });
        if claim.device.is_some() && kind(&claim.device) != kind(&self.device) {
            out.push("device");
        }
        if claim.dataset.is_some() && lower(&claim.dataset) != lower(&self.dataset) {
            out.push("dataset");
        }
        out
    }
}

fn default_expected() -> f64 {
    2.0
}

fn default_tolerance() -> f64 {
    1.25
}

/// `report.metric` as grid files and `grid.json` spell it ([`Metric::column`]).
mod metric_column {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use super::Metric;

    pub fn serialize<S: Serializer>(m: &Metric, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.column())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Metric, D::Error> {
        let name = String::deserialize(d)?;
        Metric::from_column(&name).ok_or_else(|| D::Error::custom(format!("unknown metric {name:?}, expected one of {}", Metric::columns())))
    }
}

/// What a speed-up (and a verdict) is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Training seconds (train + mine) to the target mAP.
    TimeToTarget,
    /// Wall-clock seconds of the whole run, evaluation included.
    TotalWallS,
    /// Training seconds per iteration.
    SPerIter,
    /// The process's CPU seconds (user + system) of training and mining per training iteration,
    /// on CPU runs that logged them: the timing that moved least beside a busy process
    /// (docs/benchmarks.md); like time to target, it charges offline mining to the arm.
    CpuSPerIter,
}

impl Measure {
    pub const ALL: [Measure; 4] = [Measure::TimeToTarget, Measure::TotalWallS, Measure::SPerIter, Measure::CpuSPerIter];

    /// The name grid files and the report's tables use.
    pub fn name(self) -> &'static str {
        match self {
            Measure::TimeToTarget => "time_to_target",
            Measure::TotalWallS => "total_wall_s",
            Measure::SPerIter => "s_per_iter",
            Measure::CpuSPerIter => "cpu_s_per_iter",
        }
    }
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub state: State,
    pub reason: Option<String>,
    pub updated: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub harness_version: String,
    pub git_revision: Option<String>,
    pub libtorch: String,
    /// The device the config asks for (`auto`, `cpu`, `cuda:N`), and the one it resolved to.
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_used: Option<String>,
    pub host: String,
    pub started: String,
    pub ended: Option<String>,
    /// The Slurm job (array job id), array task and restart count, when a Slurm task ran the cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmIds>,
    /// The CPU model (`/proc/cpuinfo`) and the cores the process may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    /// The CPU's vector extensions ([`cpu_isa`]): results are bit-exact only on the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_isa: Option<String>,
    /// The 1-minute load average when the cell started and when it ended (see [`Manifest::overloaded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_end: Option<f64>,
}

impl Manifest {
    /// Whether the cell shared the machine: a 1-minute load above the core count
    /// plus one at its start or end. A training process keeps about `cores`
    /// threads busy, so a quiet machine's load sits near the core count while a
    /// cell runs (and just after the one before it); one more whole core of load
    /// means another busy process, and suspect timings.
    pub fn overloaded(&self) -> bool {
        let cores = self.cores.unwrap_or(usize::MAX) as f64;
        self.load_start.into_iter().chain(self.load_end).any(|l| l > cores + 1.0)
    }
}

/// The CPU model as `/proc/cpuinfo` names it (None off Linux).
pub fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string()))
}

/// The vector extensions that decide which kernels libtorch and ours run, from `/proc/cpuinfo`'s
/// flags: e.g. "AVX2 yes, AVX-512 no, AMX no" ("instruction set unknown" off Linux).
pub fn cpu_isa() -> String {
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => isa_of_flags(text.lines().find_map(|l| l.strip_prefix("flags").map(|v| v.trim_start_matches([' ', '\t', ':']))).unwrap_or("")),
        Err(_) => "instruction set unknown".into(),
    }
}

/// [`cpu_isa`] of one `flags` line.
pub fn isa_of_flags(flags: &str) -> String {
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!("AVX2 {}, AVX-512 {}, AMX {}", yes(has("avx2")), yes(has("avx512f")), yes(has("amx_tile")))
}

/// The 1-minute load average (None off Linux).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST)).ok()?).ok()
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlurmIds {
    pub job_id: String,
    pub array_task_id: Option<String>,
    pub restart_count: u32,
}

/// Now, UTC, as ISO 8601.
pub fn now() -> String {
    iso_of(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Seconds since the Unix epoch of an ISO 8601 UTC time as [`now`] writes it
/// (`2026-12-07T13:01:02Z`); None for anything else (days-from-civil, Howard Hinnant's algorithm).
pub fn parse_iso(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let y = y - (m <= 2) as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // an impossible date (February 31st) does not come back as itself
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok().filter(|&s| iso_of(s) == t)
}

/// Seconds since the Unix epoch as ISO 8601 UTC.
pub fn iso_of(s: u64) -> String {
    // seconds since the epoch, UTC, as ISO 8601 (civil-from-days, Howard Hinnant's algorithm)
    let (days, rem) = (s / 86_400, s % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn read_status(dir: &Path) -> Option<Status> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(STATUS)).ok()?).ok()
}

pub fn write_status(dir: &Path, state: State, reason: Option<String>) -> Result<()> {
    let s = Status { state, reason, updated: now() };
    write_file(&dir.join(STATUS), serde_json::to_string_pretty(&s)?.as_bytes())?;
    Ok(())
}

pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    write_file(&dir.join(MANIFEST), serde_json::to_string_pretty(m)?.as_bytes())?;
    Ok(())
}

/// Whether a cell has finished: `done` and every epoch logged.
pub fn is_done(dir: &Path, epochs: usize) -> bool {
    matches!(read_status(dir), Some(Status { state: State::Done, .. })) && read_metrics(&dir.join(METRICS)).map(|r| r.len() >= epochs).unwrap_or(false)
}

/// `cells.json` at the top of a results directory: every cell of the grid,
/// in grid order. `harness cell <results> --index I` runs entry I.
pub const CELLS_JSON: &str = "cells.json";

/// One entry of `cells.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellEntry {
    pub index: usize,
    pub id: String,
    pub arm: String,
    pub seed: u64,
    /// The cell's directory under `cells/`.
    pub dir: String,
    pub epochs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<CellSplit>,
}

pub fn read_cells(results: &Path) -> Result<Vec<CellEntry>> {
    let p = results.join(CELLS_JSON);
    let text = crate::read_text(&p, &format!("is {} a results directory of `harness run`?", results.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// `progress.json` in a run directory: what the training process is doing
/// now, for `harness run`'s cell lines and `harness status`.
pub const PROGRESS: &str = "progress.json";

/// What a training process is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    Pretraining,
    Proposals,
    #[default]
    Training,
    Mining,
    Evaluating,
    Checkpointing,
    /// Stopped by a pre-emption signal after a checkpoint (the last phase of such a process).
    Preempted,
}

impl PhaseKind {
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Pretraining => "pretraining",
            PhaseKind::Proposals => "proposals",
            PhaseKind::Training => "training",
            PhaseKind::Mining => "mining",
            PhaseKind::Evaluating => "evaluating",
            PhaseKind::Checkpointing => "checkpointing",
            PhaseKind::Preempted => "pre-empted",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phase {
    pub phase: PhaseKind,
    /// 1-based epoch and the epochs in all (training, mining, evaluating, pretraining).
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done of the phase's steps (images, iterations), 0 / 0 when not counted.
    pub done: usize,
    pub total: usize,
    /// Seconds since the Unix epoch when written.
    pub updated: u64,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = if self.total > 0 { format!(" {}/{}", self.done, self.total) } else { String::new() };
        match self.phase {
            PhaseKind::Training => write!(f, "epoch {}/{}, iteration{count}", self.epoch, self.epochs),
            PhaseKind::Proposals => write!(f, "proposals{count}"),
            PhaseKind::Pretraining => write!(f, "pre-training epoch {}/{}{}", self.epoch, self.epochs, if self.total > 0 { format!(", step{count}") } else { String::new() }),
            PhaseKind::Preempted => write!(f, "{}", Preempted::at(self).where_),
            p => write!(f, "{}{count} (epoch {}/{})", p.name(), self.epoch, self.epochs),
        }
    }
}

pub fn read_phase(dir: &Path) -> Option<Phase> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(PROGRESS)).ok()?).ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where this process reports its phase (set by `harness train --out DIR`);
/// stages call [`report_phase`], which writes at most once a second unless the
/// phase itself changed.
static PHASE_SINK: std::sync::Mutex<Option<(PathBuf, Option<(PhaseKind, std::time::Instant)>)>> = std::sync::Mutex::new(None);

/// Sends this process's phase reports to `<dir>/progress.json`.
pub fn set_phase_dir(dir: &Path) {
    *PHASE_SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some((dir.join(PROGRESS), None));
}

/// Reports the current phase (a no-op unless [`set_phase_dir`] was called).
pub fn report_phase(phase: PhaseKind, epoch: usize, epochs: usize, done: usize, total: usize) {
    // never block a worker thread on another's write
    let Ok(mut sink) = PHASE_SINK.try_lock() else { return };
    let Some((path, last)) = sink.as_mut() else { return };
    let changed = last.as_ref().is_none_or(|(p, _)| *p != phase);
    let due = last.as_ref().is_none_or(|(_, t)| t.elapsed() >= std::time::Duration::from_secs(1));
    if !(changed || due || done == total) {
        return;
    }
    let p = Phase { phase, epoch, epochs, done, total, updated: unix_now() };
    if let Ok(text) = serde_json::to_string(&p) {
        let _ = write_file_volatile(path, text.as_bytes());
    }
    *last = Some((phase, std::time::Instant::now()));
}

/// Records that this process stopped on a pre-emption signal after a checkpoint
/// (the phase [`PhaseKind::Preempted`], written whatever the rate limit) and
/// returns the error to stop with. `harness run` and `harness cell` read it back
/// from `progress.json` when the process exits with [`EXIT_PREEMPTED`].
/// `total` 0: at the end of epoch `epoch`; else in epoch `epoch` after iteration `done` of `total`.
pub fn preempted(epoch: usize, epochs: usize, done: usize, total: usize) -> Preempted {
    let p = Phase { phase: PhaseKind::Preempted, epoch, epochs, done, total, updated: unix_now() };
    let sink = PHASE_SINK.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some((path, _)), Ok(text)) = (sink.as_ref(), serde_json::to_string(&p)) {
        let _ = write_file(path, text.as_bytes());
    }
    Preempted::at(&p)
}

/// Exit code of `harness train` (and `harness cell`) when a pre-emption signal
/// (SIGUSR1 or SIGTERM) stopped it after a checkpoint; a rerun resumes there.
pub const EXIT_PREEMPTED: i32 = 76;

/// Set by SIGUSR1 / SIGTERM in `harness train` and `harness cell`: finish the
/// current iteration, checkpoint, exit with [`EXIT_PREEMPTED`].
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Routes SIGUSR1 and SIGTERM to [`STOP`] (Slurm's pre-emption warning, `scancel`).
pub fn catch_preemption_signals() -> Result<()> {
    for sig in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, || STOP.store(true, std::sync::atomic::Ordering::SeqCst)) }.context("installing a signal handler")?;
    }
    Ok(())
}

/// The run was stopped by a pre-emption signal after checkpointing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pre-empted by a signal: checkpointed {where_}; a rerun resumes there")]
pub struct Preempted {
    pub where_: String,
}

impl Preempted {
    /// Where a [`PhaseKind::Preempted`] phase says the checkpoint was taken.
    pub fn at(p: &Phase) -> Preempted {
        let where_ = if p.total > 0 { format!("in epoch {}/{} after iteration {}/{}", p.epoch, p.epochs, p.done, p.total) } else { format!("after epoch {} of {}", p.epoch, p.epochs) };
        Preempted { where_ }
    }

    /// What a run directory's `progress.json` says of a process that exited with
    /// [`EXIT_PREEMPTED`]; a bare reason when it recorded nothing.
    pub fn read(dir: &Path) -> Preempted {
        match read_phase(dir) {
            Some(p) if p.phase == PhaseKind::Preempted => Preempted::at(&p),
            _ => Preempted { where_: "at its last checkpoint".into() },
        }
    }
}
