//! `harness run --dry-run --calibrate`: a grid's cost before any of its cells has run,
//! from a short timed run of each arm on this machine.
//!
//! Each arm's first cell trains for real, through the trainer the cells use, in a
//! temporary folder: two epochs of `iterations` iterations each from scratch weights
//! (a pre-trained backbone not yet cached would take minutes to make; a step's time does
//! not depend on the weights), evaluated at the end, and, for a sampler that mines, one
//! mining round in its second epoch. The second epoch gives the seconds per iteration
//! (the first pays the warm-up); the evaluation and the mining round give seconds per
//! test and per training image. Each cell's cost is then its own schedule priced with
//! its arm's figures: its iterations, its evaluations (every `test.eval_every` epochs and
//! the last) over its test images, its mining rounds (as its sampler schedules them) over
//! its training images, and the start-up every cell pays (the calibration's wall clock
//! outside those phases, the least over the arms; proposals missing from the cache are made
//! before the clock starts, as they are made once for the whole grid).
//!
//! What it does not count: pre-training a backbone that is not cached yet, and the
//! evaluation's non-maximum suppression under trained weights (untrained ones score
//! every box alike, so the detections kept can differ in number).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::Grid;
use crate::config::TrainConfig;
use crate::sampler::Progress;

/// What one arm's timed run measured.
#[derive(Debug, Clone)]
pub struct ArmTiming {
    pub arm: String,
    /// Training seconds per iteration (the second epoch's mean).
    pub s_per_iter: f64,
    /// Evaluation seconds per test image.
    pub eval_s_per_image: f64,
    /// Mining seconds per training image (None: the sampler does not mine).
    pub mine_s_per_image: Option<f64>,
    /// The run's wall clock outside training, evaluation and mining (loading the data and the
    /// model, writing checkpoints), the least over the arms.
    pub overhead_s: f64,
}

/// A cell's shape: what its cost is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellWork {
    pub iterations: usize,
    pub evaluations: usize,
    pub mining_rounds: usize,
    pub train_images: usize,
    pub test_images: usize,
}

impl CellWork {
    /// The cell's schedule on its training set: iterations, evaluations and mining rounds.
    pub fn of(cfg: &TrainConfig, train_images: usize, test_images: usize) -> CellWork {
        let s = cfg.train.schedule(train_images);
        let evaluations = (0..s.epochs).filter(|&e| crate::trainer::evaluates(&cfg.test, e, s.epochs)).count();
        let sampler = cfg.sampler.build();
        let mut mining_rounds = 0;
        let mut iteration = 0;
        for epoch in 0..s.epochs {
            for iter_in_epoch in 0..s.iters_in(epoch) {
                mining_rounds += sampler.is_due(Progress { epoch, iter_in_epoch, iteration }) as usize;
                iteration += 1;
            }
        }
        CellWork { iterations: s.total, evaluations, mining_rounds, train_images, test_images }
    }

    /// Seconds it takes at `t`'s rates.
    pub fn seconds(&self, t: &ArmTiming) -> f64 {
        t.overhead_s
            + self.iterations as f64 * t.s_per_iter
            + self.evaluations as f64 * self.test_images as f64 * t.eval_s_per_image
            + self.mining_rounds as f64 * self.train_images as f64 * t.mine_s_per_image.unwrap_or(0.0)
    }
}

/// Training and test images of a cell's data (the training images that have an object).
fn image_counts(cfg: &TrainConfig) -> Result<(usize, usize)> {
    let ds = crate::data::Dataset::from_config(&cfg.dataset)?;
    let test = ds.load_split(&cfg.dataset.test_split)?.len();
    Ok((crate::trainer::trainable_images(cfg)?, test))
}

/// The config of an arm's timed run: its cell's, from scratch weights, two epochs of
/// `iterations`, evaluated at the end, and a sampler that mines doing so once, in the second.
fn calibration_config(cell: &TrainConfig, iterations: usize) -> TrainConfig {
    let mut c = cell.clone();
    // (batch norm stays as the cell has it: frozen under a pre-trained backbone)
    c.model.freeze_bn = Some(cell.model.bn_frozen());
    c.model.init = crate::model::Init::Scratch;
    c.train.iterations = Some(2 * iterations);
    c.train.lr_steps_iters = Some(Vec::new());
    c.train.lr_steps.clear();
    c.train.epochs = 0;
    c.train.iters_per_epoch = Some(iterations);
    c.train.keep_checkpoints = 1;
    c.test.eval_every = usize::MAX;
    if let crate::sampler::SamplerConfig::Hnm(h) = &mut c.sampler {
        h.mine_every_epochs = None;
        h.mine_every_iters = Some(iterations + iterations / 2);
    }
    c
}

/// Times `iterations` × 2 iterations of the first cell of every arm of `g` (see the module).
pub fn calibrate(g: &Grid, iterations: usize, cache_dir: Option<&Path>) -> Result<Vec<ArmTiming>> {
    if iterations < 2 {
        bail!("--calibrate: give at least 2 iterations (got {iterations})");
    }
    let mut out = Vec::new();
    for arm in &g.arms {
        let Some(cell) = g.cells.iter().find(|c| &c.arm == arm) else { continue };
        let cfg = calibration_config(&cell.config, iterations);
        let (n_train, n_test) = image_counts(&cfg).with_context(|| format!("calibrating arm {arm}: reading {}", cfg.dataset.root.display()))?;
        let tmp = tempfile::Builder::new().prefix("ohem-calibrate").tempdir().context("creating a temporary folder")?;
        let opts = crate::trainer::TrainOptions { progress: false, force: true, cache_dir: cache_dir.map(Path::to_path_buf), ..Default::default() };
        eprintln!("calibrating arm {arm}: {} iterations of {} on {n_train} training and {n_test} test images", 2 * iterations, cell.dir_name);
        // proposals missing from the cache are made before the clock starts: once for the grid,
        // not a part of every cell's start-up
        let ds = crate::data::Dataset::from_config(&cfg.dataset)?;
        for (split, file) in [(&cfg.dataset.train_split, &cfg.proposals.train_file), (&cfg.dataset.test_split, &cfg.proposals.test_file)] {
            crate::trainer::load_split(&ds, &cfg, split, file.as_deref(), &opts).with_context(|| format!("calibrating arm {arm}: the proposals of split {split}"))?;
        }
        let started = std::time::Instant::now();
        let rows = crate::trainer::train(&cfg, tmp.path(), &opts).with_context(|| format!("calibrating arm {arm} (cell {})", cell.dir_name))?;
        let wall = started.elapsed().as_secs_f64();
        let (Some(last), false) = (rows.last(), rows.len() < 2) else { bail!("calibrating arm {arm}: the run trained {} epochs, not 2", rows.len()) };
        let mined: f64 = rows.iter().map(|r| r.mine_s).sum();
        let phases: f64 = rows.iter().map(|r| r.train_s + r.mine_s + r.eval_s).sum();
        let mines = CellWork::of(&cfg, n_train, n_test).mining_rounds;
        out.push(ArmTiming {
            arm: arm.clone(),
            s_per_iter: last.train_s / last.iterations.max(1) as f64,
            eval_s_per_image: last.eval_s / n_test.max(1) as f64,
            mine_s_per_image: (mines > 0).then(|| mined / (mines * n_train.max(1)) as f64),
            overhead_s: (wall - phases).max(0.0),
        });
    }
    let least = out.iter().map(|t| t.overhead_s).fold(f64::INFINITY, f64::min);
    for t in &mut out {
        t.overhead_s = least;
    }
    Ok(out)
}

/// The seconds of each cell of `g` still to run (`skip`: those finished), at the arms' timings.
pub fn estimate(g: &Grid, timings: &[ArmTiming], skip: &dyn Fn(&super::Cell) -> bool) -> Result<(f64, f64)> {
    let mut counts: Vec<(crate::config::DatasetConfig, (usize, usize))> = Vec::new();
    let (mut left, mut total) = (0.0, 0.0);
    for c in &g.cells {
        let Some(t) = timings.iter().find(|t| t.arm == c.arm) else { continue };
        let (n_train, n_test) = match counts.iter().find(|(k, _)| *k == c.config.dataset) {
            Some(&(_, n)) => n,
            None => {
                let n = image_counts(&c.config)?;
                counts.push((c.config.dataset.clone(), n));
                n
            }
        };
        let s = CellWork::of(&c.config, n_train, n_test).seconds(t);
        total += s;
        if !skip(c) {
            left += s;
        }
    }
    Ok((left, total))
}
