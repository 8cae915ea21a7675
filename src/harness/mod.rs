//! Stage 7 of the pipeline: `harness run grid.yaml`.
//!
//! A grid ([`grid`]) expands into cells; each cell gets its own directory
//! under `<results>/cells/` with the exact config, `cell.json` (arm, seed,
//! id), `status.json` (pending, running, done or failed, with the reason),
//! `manifest.json` (versions, device, host, times), `train.log`, and what
//! `harness train` writes there (metrics.csv, checkpoints).
//!
//! Every cell runs as its own `harness train` process. That isolates
//! libtorch's process-global random generator (so parallel cells stay
//! deterministic), crashes and out-of-memory kills; a failed cell is marked
//! with its reason and the others go on. Status files and metrics are
//! replaced atomically, so even SIGKILL leaves no torn file, and a rerun skips
//! finished cells and resumes interrupted ones from their last checkpoint.
//! `harness train` holds an exclusive lock on its run directory, so two
//! processes never run the same cell.

pub mod grid;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result};

pub use crate::rundir::{is_done, read_status, CellMeta, GridMeta, Manifest, ReportConfig, State, Status, CELLS, GRID_JSON};
use crate::rundir::{now, write_file, write_manifest, write_status, CELL_JSON, CONFIG};
pub use grid::{Cell, Grid};

/// Exit code of `harness train` when its run directory is locked by another process.
pub const EXIT_LOCKED: i32 = 75;

fn git_revision() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub jobs: usize,
    pub force: bool,
    pub progress: bool,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct RunSummary {
    pub done: usize,
    pub skipped: usize,
    pub busy: usize,
    pub failed: Vec<(String, String)>,
}

/// Writes the results directory's grid.json and each cell's directory files.
pub fn prepare(grid: &Grid) -> Result<()> {
    let meta = GridMeta { name: grid.name.clone(), arms: grid.arms.clone(), report: grid.report.clone() };
    write_file(&grid.results.join(GRID_JSON), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    for c in &grid.cells {
        let dir = grid.results.join(CELLS).join(&c.dir_name);
        let meta = CellMeta { id: c.id.clone(), arm: c.arm.clone(), seed: c.seed, epochs: c.config.train.epochs };
        write_file(&dir.join(CELL_JSON), serde_json::to_string_pretty(&meta)?.as_bytes())?;
        if !dir.join(CONFIG).exists() {
            write_file(&dir.join(CONFIG), c.config.to_yaml()?.as_bytes())?;
        }
        if read_status(&dir).is_none() {
            write_status(&dir, State::Pending, None)?;
        }
    }
    Ok(())
}

/// Runs every cell not yet done, `jobs` at a time.
pub fn run(grid: &Grid, opts: &RunOptions) -> Result<RunSummary> {
    prepare(grid)?;
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let cuda = tch::Cuda::device_count().max(0) as usize;
    let mut queue = VecDeque::new();
    let mut summary = RunSummary::default();
    for (i, c) in grid.cells.iter().enumerate() {
        let dir = grid.results.join(CELLS).join(&c.dir_name);
        if !opts.force && is_done(&dir, c.config.train.epochs) {
            summary.skipped += 1;
        } else {
            queue.push_back(i);
        }
    }
    // The shared pre-trained backbones, each made once (per distinct pre-training) before any
    // cell starts; the cells then find them cached. A failure here is left to the cells, which
    // fail with the reason in their status.
    let mut seen = std::collections::HashSet::new();
    let train_opts = crate::trainer::TrainOptions { progress: opts.progress, ..Default::default() };
    for &i in queue.iter() {
        let c = &grid.cells[i].config;
        if seen.insert(crate::pretrain::identity(c)) {
            if let Err(e) = crate::trainer::initial_weights(c, &train_opts) {
                eprintln!("pre-training for cell {} ({} seed {}) failed: {e:#}", grid.cells[i].id, grid.cells[i].arm, grid.cells[i].seed);
            }
        }
    }
    let multi = indicatif::MultiProgress::new();
    if !opts.progress {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let overall = multi.add(indicatif::ProgressBar::new(grid.cells.len() as u64));
    overall.set_style(indicatif::ProgressStyle::with_template("grid {msg} [{bar:30}] {pos}/{len} cells ({elapsed})").expect("template").progress_chars("=> "));
    overall.set_message(grid.name.clone());
    overall.inc(summary.skipped as u64);
    let queue = Mutex::new(queue);
    let summary = Mutex::new(summary);
    let jobs = opts.jobs.max(1);
    std::thread::scope(|s| {
        for worker in 0..jobs {
            let (queue, summary, multi, overall, exe) = (&queue, &summary, &multi, &overall, &exe);
            s.spawn(move || loop {
                let Some(i) = queue.lock().expect("queue").pop_front() else { break };
                let cell = &grid.cells[i];
                let dir = grid.results.join(CELLS).join(&cell.dir_name);
                let line = multi.add(indicatif::ProgressBar::new_spinner());
                line.set_message(format!("{} seed {}: starting", cell.arm, cell.seed));
                line.enable_steady_tick(std::time::Duration::from_millis(500));
                // One GPU per job when several are present and the cell says `auto`.
                let device = (cell.config.device == "auto" && cuda > 1).then(|| format!("cuda:{}", worker % cuda));
                let outcome = run_cell(exe, cell, &dir, device, opts, &line);
                line.finish_and_clear();
                multi.remove(&line);
                overall.inc(1);
                let mut sm = summary.lock().expect("summary");
                match outcome {
                    Ok(CellOutcome::Done) => sm.done += 1,
                    Ok(CellOutcome::Busy) => sm.busy += 1,
                    Ok(CellOutcome::Failed(reason)) => sm.failed.push((cell.dir_name.clone(), reason)),
                    Err(e) => sm.failed.push((cell.dir_name.clone(), format!("{e:#}"))),
                }
            });
        }
    });
    overall.finish_and_clear();
    Ok(summary.into_inner().expect("summary"))
}

enum CellOutcome {
    Done,
    Busy,
    Failed(String),
}

fn run_cell(exe: &Path, cell: &Cell, dir: &Path, device: Option<String>, opts: &RunOptions, line: &indicatif::ProgressBar) -> Result<CellOutcome> {
    let mut cmd = Command::new(exe);
    cmd.arg("train").arg(dir.join(CONFIG)).arg("--out").arg(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(d) = &device {
        cmd.args(["--device", d]);
    }
    if opts.force {
        cmd.arg("--force");
    }
    if let Some(c) = &opts.cache_dir {
        cmd.arg("--cache-dir").arg(c);
    }
    let started = now();
    let manifest = |ended: Option<String>| Manifest {
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: git_revision(),
        libtorch: env!("OHEM_LIBTORCH_VERSION").to_string(),
        device: device.clone().unwrap_or_else(|| cell.config.device.clone()),
        host: host(),
        started: started.clone(),
        ended,
    };
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
    write_status(dir, State::Running, None)?;
    write_manifest(dir, &manifest(None))?;
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("train.log"))?;
    let mut last_error = None;
    let mut tail = VecDeque::new();
    for l in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let l = l.unwrap_or_default();
        let _ = writeln!(log, "{l}");
        if l.starts_with("epoch") {
            line.set_message(format!("{} seed {}: {l}", cell.arm, cell.seed));
        }
        if let Some(e) = l.strip_prefix("error: ") {
            last_error = Some(e.to_string());
        }
        tail.push_back(l);
        if tail.len() > 5 {
            tail.pop_front();
        }
    }
    let status = child.wait()?;
    if status.code() == Some(EXIT_LOCKED) {
        return Ok(CellOutcome::Busy);
    }
    write_manifest(dir, &manifest(Some(now())))?;
    if status.success() {
        write_status(dir, State::Done, None)?;
        Ok(CellOutcome::Done)
    } else {
        let reason = last_error.unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(9) => "killed by SIGKILL (out of memory?)".to_string(),
                Some(sig) => format!("killed by signal {sig}"),
                None => format!("exit status {:?}: {}", status.code(), Vec::from(tail).join(" | ")),
            }
        });
        write_status(dir, State::Failed, Some(reason.clone()))?;
        Ok(CellOutcome::Failed(reason))
    }
}
