//! The `harness` command line. Arguments are parsed by clap, validated once
//! here, and handed to the library; `main` only turns the result into an exit
//! code.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::data::synth::{self, SynthSize};
use crate::data::Dataset;
use crate::eval::{self, Metric};
use crate::proposals::{self, SsMode, SsParams};

#[derive(Parser, Debug)]
#[command(name = "harness", version = concat!(env!("CARGO_PKG_VERSION"), " (libtorch ", env!("OHEM_LIBTORCH_VERSION"), ")"), about = "Offline hard-negative mining vs OHEM on one Fast R-CNN trainer")]
pub struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the generated "shapes-in-clutter" dataset in the PASCAL VOC layout.
    MakeDataset {
        /// Output root (created; must be empty or absent).
        #[arg(long)]
        out: PathBuf,
        /// tiny: 16+8 images (tests); small: 240+120 (default, quick runs); large: 1200+400 (the study).
        #[arg(long, value_enum, default_value_t = SynthSize::Small)]
        size: SynthSize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compute (or load) region proposals for a split and report their recall.
    Proposals {
        /// VOC-layout dataset root.
        dataset: PathBuf,
        #[arg(long, default_value = "trainval")]
        split: String,
        /// Selective-search diversification.
        #[arg(long, value_enum, default_value_t = SsMode::Fast)]
        mode: SsMode,
        /// Keep at most this many boxes per image.
        #[arg(long, default_value_t = SsParams::default().max_boxes)]
        max_boxes: usize,
        /// Drop boxes with a side shorter than this (pixels).
        #[arg(long, default_value_t = SsParams::default().min_side)]
        min_side: u32,
        /// Gaussian pre-smoothing of the segmentation.
        #[arg(long, default_value_t = SsParams::default().sigma)]
        sigma: f32,
        /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals, or $OHEM_CACHE/proposals].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Recompute and do not read or write the cache.
        #[arg(long)]
        no_cache: bool,
        /// Use precomputed proposals from this file instead of selective search.
        #[arg(long, conflicts_with_all = ["no_cache", "cache_dir"])]
        from: Option<PathBuf>,
        /// Also write the proposals to this file (`<image_id> <x1> <y1> <x2> <y2>` lines).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Score detections in the VOC results format against a split.
    Eval {
        /// VOC-layout dataset root.
        dataset: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Folder of comp4_det_test_<class>.txt files.
        #[arg(long)]
        dets: PathBuf,
        #[arg(long, value_enum, default_value_t = Metric::Voc07)]
        metric: Metric,
        /// Print the per-class table and mAP as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Train one configuration; a rerun resumes after the last finished epoch.
    Train {
        /// The config file (YAML; see README "Config reference").
        config: PathBuf,
        /// Run directory [default: runs/<config file stem>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a config key, e.g. `--set sampler.fg_fraction=0.5` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Discard what the run directory holds and train from scratch.
        #[arg(long)]
        force: bool,
        /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Run on this device (auto, cpu, cuda:N), whatever the config says; not part of the run's identity.
        #[arg(long)]
        device: Option<String>,
    },
    /// Pre-train the shared backbone of a training config (`model.init: pretrained`), or find it in the cache.
    Pretrain {
        /// A training config (its dataset, model, input and pretrain sections are used).
        config: PathBuf,
        /// Override a config key, e.g. `--set pretrain.epochs=4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Pre-trained backbone cache [default: ~/.cache/ohem-harness/pretrain, or $OHEM_CACHE/pretrain].
        #[arg(long)]
        pretrain_dir: Option<PathBuf>,
    },
    /// Run a grid of configs x seeds; skips finished cells, resumes interrupted ones, then reports.
    Run {
        /// The grid file (YAML; see README "Grid files").
        grid: PathBuf,
        /// Override a config key in every cell, e.g. `--set train.epochs=2` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print the expanded cells and their ids; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Cells run at once (one GPU each when several are present).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Rerun finished cells from scratch.
        #[arg(long)]
        force: bool,
        /// Results directory [default: the grid's `results`, else runs/<grid file stem>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Where the cells run: here (`local`), or as one Slurm job array (`slurm`; README "Running on a cluster").
        #[arg(long, value_enum, default_value_t = Executor::Local)]
        executor: Executor,
        /// slurm: the partition of every task.
        #[arg(long)]
        partition: Option<String>,
        /// slurm: GPUs per task.
        #[arg(long)]
        gpus_per_task: Option<u32>,
        /// slurm: CPUs per task.
        #[arg(long)]
        cpus_per_task: Option<u32>,
        /// slurm: time limit per task, as sbatch takes it (e.g. 2:00:00).
        #[arg(long)]
        time: Option<String>,
        /// slurm: tasks of the array running at once.
        #[arg(long, default_value_t = 16)]
        max_parallel: usize,
        /// slurm: an extra sbatch argument, passed as it is (repeatable), e.g. `--sbatch-arg=--account=vision`.
        #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
        sbatch_args: Vec<String>,
        /// slurm: the warning signal before the time limit, SIGNAL@SECONDS; the cell checkpoints and stops on it.
        #[arg(long, default_value = "USR1@90")]
        signal: String,
        /// slurm: do not requeue a task that the warning signal stopped (re-submit the grid instead).
        #[arg(long)]
        no_requeue: bool,
    },
    /// Run one cell of a results directory (what each Slurm array task runs).
    Cell {
        /// A results directory prepared by `harness run` (it holds cells.json).
        results: PathBuf,
        /// The cell's index in cells.json ($SLURM_ARRAY_TASK_ID).
        #[arg(long)]
        index: usize,
        /// Rerun the cell from scratch even if it is done.
        #[arg(long)]
        force: bool,
        /// Requeue this Slurm task (scontrol requeue) when a signal stops it after a checkpoint.
        #[arg(long)]
        requeue: bool,
        /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Pending, running, done and failed cells of a results directory, per arm and per cell (local and Slurm runs).
    Status {
        /// A results directory written by `harness run`.
        results: PathBuf,
    },
    /// Aggregate a results directory into summary.csv, summary.md and charts, from the logs alone.
    Report {
        /// A results directory written by `harness run`.
        results: PathBuf,
    },
    /// Benchmarks: selective-search ms per image and evaluation time for 10,000 detections.
    Bench {
        #[arg(value_enum, default_value_t = BenchWhat::All)]
        what: BenchWhat,
        /// Images for the proposal benchmark.
        #[arg(long, default_value_t = 20)]
        images: usize,
        /// Timed iterations per configuration of the training benchmark.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also benchmark vgg16 at 600 px with 2000 RoIs per image (slow on CPU).
        #[arg(long)]
        vgg16: bool,
        /// The training config of `bench epoch`.
        #[arg(long, default_value = "experiments/frcn-quick.yaml")]
        config: PathBuf,
        /// Epochs trained (and evaluated) by `bench epoch`.
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// Proposals per image of `bench samplers` (comma-separated counts).
        #[arg(long, value_delimiter = ',', default_value = "500,2000")]
        proposals: Vec<usize>,
        /// `bench samplers`: also time the same steps in PyTorch + torchvision (scripts/bench_peer.py) and print the ratios.
        #[arg(long)]
        peer: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    Proposals,
    Eval,
    /// ms per training iteration split by stage, peak memory, RoI pooling vs the per-RoI reference.
    Train,
    /// s per iteration of each sampler (fixed-ratio, OHEM read-only and masked, all RoIs), HNM mining time.
    Samplers,
    /// Test-split evaluation against a training epoch of a config, in one run (not part of `all`: it needs the data).
    Epoch,
    All,
}

/// Parses the command line and runs it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let progress = !cli.quiet;
    match cli.command {
        Command::MakeDataset { out, size, seed } => {
            let t = Instant::now();
            let m = synth::make_dataset(&out, size, seed, progress)?;
            let ds = Dataset::open(&out)?;
            let mut counts = vec![(0, 0); ds.classes.len()];
            for split in ["trainval", "test"] {
                for (c, (a, b)) in crate::data::voc::class_counts(&ds.load_split(split)?, ds.classes.len()).into_iter().enumerate() {
                    counts[c].0 += a;
                    counts[c].1 += b;
                }
            }
            println!("dataset {} ({:?}, seed {}): {} trainval + {} test images, {:.1}s", out.display(), m.size, m.seed, m.trainval, m.test, t.elapsed().as_secs_f64());
            for (c, (n, d)) in ds.classes.iter().zip(counts) {
                println!("  {c:<10} {n:>5} objects, {d:>4} difficult");
            }
        }
        Command::Proposals { dataset, split, mode, max_boxes, min_side, sigma, cache_dir, no_cache, from, out, json } => {
            let ds = Dataset::open(&dataset)?;
            let anns = ds.load_split(&split)?;
            if anns.is_empty() {
                bail!("split file {} lists no images", ds.split_path(&split).display());
            }
            let params = SsParams { mode, sigma, min_side, max_boxes };
            let (boxes, stats) = match &from {
                Some(f) => (proposals::from_file(f, &anns)?, proposals::ComputeStats { images: anns.len(), ..Default::default() }),
                None => {
                    let cache = (!no_cache).then(|| cache_dir.unwrap_or_else(proposals::default_cache_dir));
                    proposals::compute(&ds, &anns, &params, cache.as_deref(), progress)?
                }
            };
            if let Some(o) = &out {
                let ids: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
                proposals::write_proposals_file(o, &ids, &boxes)?;
            }
            let r = proposals::recall_report(&anns, &boxes);
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"split": split, "params": params, "source": from, "recall": r, "compute": stats}))?);
            } else {
                println!("proposals for {} / {split}: {} images, {} non-difficult ground-truth boxes", dataset.display(), r.images, r.gt_boxes);
                println!("  recall@0.5  {:.4}", r.recall_at_05);
                println!("  recall@0.7  {:.4}", r.recall_at_07);
                println!("  ABO         {:.4}", r.abo);
                println!("  boxes/image {:.1}", r.mean_boxes_per_image);
                if from.is_none() {
                    println!("  ms/image    {:.1} (computed {}, from cache {})", stats.compute_ms_per_image, stats.computed, stats.from_cache);
                }
                if let Some(o) = &out {
                    println!("  written to  {}", o.display());
                }
            }
        }
        Command::Eval { dataset, split, dets, metric, json } => {
            let ds = Dataset::open(&dataset)?;
            let anns = ds.load_split(&split)?;
            let d = eval::read_results_dir(&dets, &ds.classes, &anns)?;
            let r = eval::evaluate(&anns, &ds.classes, &d, metric);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", eval::format_table(&r));
            }
        }
        Command::Train { config, out, overrides, force, cache_dir, device } => {
            let mut cfg = crate::trainer::TrainConfig::load(&config, &overrides)?;
            if let Some(d) = device {
                crate::trainer::config::parse_device(&d)?;
                cfg.device = d;
            }
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(config.file_stem().unwrap_or_default()));
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            crate::rundir::set_phase_dir(&out);
            crate::rundir::catch_preemption_signals()?;
            let opts = crate::trainer::TrainOptions { progress, force, cache_dir, pretrain_dir: None, stop: Some(&crate::rundir::STOP) };
            let rows = crate::trainer::train(&cfg, &out, &opts)?;
            if let Some(r) = rows.last() {
                println!(
                    "{}: {} epochs, mAP VOC07 {}, VOC10 {}, {:.1}s wall; metrics in {}",
                    out.display(),
                    r.epoch,
                    r.map_voc07.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into()),
                    r.map_voc10.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into()),
                    r.wall_s,
                    out.join(crate::rundir::METRICS).display()
                );
            }
        }
        Command::Pretrain { config, overrides, pretrain_dir } => {
            let cfg = crate::trainer::TrainConfig::load(&config, &overrides)?;
            let dir = pretrain_dir.unwrap_or_else(crate::pretrain::default_cache_dir);
            let p = crate::pretrain::ensure(&cfg, &dir, progress)?;
            let rows = crate::pretrain::read_log(&p.log)?;
            println!("{} pre-trained backbone: {}", if p.computed { "new" } else { "cached" }, p.weights.display());
            println!("epoch  crops  loss    accuracy  val_accuracy  seconds");
            for r in &rows {
                println!("{:>5}  {:>5}  {:.4}  {:.3}     {:.3}         {:.1}", r.epoch, r.crops, r.loss, r.accuracy, r.val_accuracy, r.seconds);
            }
            println!("log: {}", p.log.display());
        }
        Command::Run { grid, overrides, dry_run, jobs, force, out, cache_dir, executor, partition, gpus_per_task, cpus_per_task, time, max_parallel, sbatch_args, signal, no_requeue } => {
            if jobs == 0 {
                bail!("--jobs must be at least 1");
            }
            let mut g = if dry_run { crate::harness::Grid::load_without_data(&grid, &overrides)? } else { crate::harness::Grid::load(&grid, &overrides)? };
            if let Some(o) = out {
                g.results = o;
            }
            if dry_run {
                println!("{}: {} cells in {}", g.name, g.cells.len(), g.results.display());
                for c in &g.cells {
                    println!("  {}  {:<40} seed {:<4} {}", c.id, c.arm, c.seed, g.results.join(crate::harness::CELLS).join(&c.dir_name).display());
                }
                for root in g.missing_datasets() {
                    let size = match root.file_name().and_then(|n| n.to_str()) {
                        Some("tiny") => "tiny",
                        Some("large") => "large",
                        _ => "small",
                    };
                    eprintln!("warning: dataset.root = {} does not exist yet; make it (a generated dataset) with `harness make-dataset --out {} --size {size}`, or point dataset.root at a VOC-layout root", root.display(), root.display());
                }
                return Ok(());
            }
            if executor == Executor::Slurm {
                let opts = crate::harness::slurm::SlurmOptions { partition, gpus_per_task, cpus_per_task, time, max_parallel, sbatch_args, signal, requeue: !no_requeue, force, cache_dir };
                match crate::harness::slurm::submit(&g, &opts)? {
                    None => println!("{}: all {} cells are done; nothing submitted (report: harness report {})", g.name, g.cells.len(), g.results.display()),
                    Some(sub) => {
                        println!("{}: submitted array job {} ({} of {} cells, at most {} at a time) and report job {} (afterany:{})", g.name, sub.array_job, sub.cells.len(), g.cells.len(), max_parallel, sub.report_job, sub.array_job);
                        println!("watch: harness status {}", g.results.display());
                        println!("logs:  {}/slurm/", g.results.display());
                    }
                }
                return Ok(());
            }
            let opts = crate::harness::RunOptions { jobs, force, progress, cache_dir };
            let s = crate::harness::run(&g, &opts)?;
            let rep = crate::report::generate(&g.results)?;
            for n in &rep.notes {
                println!("{n}");
            }
            println!(
                "{}: {} cells: {} run, {} already done, {} busy elsewhere, {} pre-empted, {} failed",
                g.name,
                g.cells.len(),
                s.done,
                s.skipped,
                s.busy,
                s.preempted,
                s.failed.len()
            );
            for (cell, reason) in &s.failed {
                println!("  failed: {cell}: {reason}");
            }
            println!("report: {}", rep.summary.display());
            if !s.failed.is_empty() {
                bail!("{} of {} cells failed (see status.json and train.log in each)", s.failed.len(), g.cells.len());
            }
            if s.preempted > 0 {
                return Err(crate::rundir::Preempted { where_: format!("{} cells at their last iteration; rerun the same command to resume them", s.preempted) }.into());
            }
        }
        Command::Cell { results, index, force, requeue, cache_dir } => match crate::harness::run_one(&results, index, force, cache_dir.as_deref())? {
            crate::harness::CellOutcome::Done => {}
            crate::harness::CellOutcome::Busy => bail!("cell {index} of {} is running in another process", results.display()),
            crate::harness::CellOutcome::Failed(reason) => bail!("cell {index} of {} failed: {reason}", results.display()),
            crate::harness::CellOutcome::Preempted(reason) => {
                if requeue {
                    crate::harness::slurm::requeue_self()?;
                    eprintln!("requeued: the cell resumes from its checkpoint");
                }
                // the trainer's own message, without its frame (the error adds it back)
                let where_ = reason.strip_prefix("pre-empted by a signal: checkpointed ").and_then(|r| r.strip_suffix("; a rerun resumes there")).unwrap_or(&reason).to_string();
                return Err(crate::rundir::Preempted { where_ }.into());
            }
        },
        Command::Status { results } => {
            let (name, arms, cells) = crate::harness::status(&results)?;
            let count = |v: &[&crate::harness::CellState], s: crate::rundir::State| v.iter().filter(|c| c.state == s).count();
            let all: Vec<&crate::harness::CellState> = cells.iter().collect();
            use crate::rundir::State::*;
            println!("{name}: {} cells: {} done, {} running, {} pending, {} failed", cells.len(), count(&all, Done), count(&all, Running), count(&all, Pending), count(&all, Failed));
            println!("\n{:<24} {:>5} {:>8} {:>8} {:>7}", "arm", "done", "running", "pending", "failed");
            for a in &arms {
                let v: Vec<&crate::harness::CellState> = cells.iter().filter(|c| &c.arm == a).collect();
                println!("{:<24} {:>5} {:>8} {:>8} {:>7}", a, count(&v, Done), count(&v, Running), count(&v, Pending), count(&v, Failed));
            }
            println!();
            for c in &cells {
                let what = match (c.state, c.stale) {
                    (Running, true) => "running? (no process holds the cell: interrupted; a rerun resumes it)".to_string(),
                    (Running, false) => format!("running: {}", c.phase.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "starting".into())),
                    (Done, _) => format!("done: mAP07 {}", c.last_map.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into())),
                    (Failed, _) => format!("failed: {}", c.reason.clone().unwrap_or_default()),
                    (Pending, _) => match &c.reason {
                        Some(r) => format!("pending ({r})"),
                        None => "pending".to_string(),
                    },
                };
                println!("{:>4}  {:<24} seed {:<4} {}/{} epochs  {what}", c.index, c.arm, c.seed, c.epochs_done, c.epochs);
            }
        }
        Command::Report { results } => {
            let rep = crate::report::generate(&results)?;
            for n in &rep.notes {
                println!("{n}");
            }
            println!("report: {}", rep.summary.display());
        }
        Command::Bench { what, images, iters, vgg16, config, epochs, proposals, peer } => {
            if images == 0 || iters == 0 || epochs == 0 || proposals.iter().any(|&p| p == 0) {
                bail!("--images, --iters, --epochs and --proposals must be at least 1");
            }
            if matches!(what, BenchWhat::Epoch) {
                crate::bench::epoch(&config, epochs)?;
            }
            if matches!(what, BenchWhat::Proposals | BenchWhat::All) {
                crate::bench::proposals(images)?;
            }
            if matches!(what, BenchWhat::Eval | BenchWhat::All) {
                crate::bench::eval()?;
            }
            if matches!(what, BenchWhat::Train | BenchWhat::All) {
                crate::bench::train(iters, vgg16)?;
            }
            if matches!(what, BenchWhat::Samplers | BenchWhat::All) {
                crate::bench::samplers(if vgg16 { iters.min(2) } else { iters }, if vgg16 { &[2000] } else { &proposals }, peer, vgg16)?;
            }
        }
    }
    Ok(())
}
