//! Stage 7 of the pipeline: `harness run grid.yaml`.
//!
//! A grid ([`grid`]) expands into cells (arms × axes × resampled splits of the data
//! ([`splits`]) × seeds); each cell gets its own directory
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

pub mod calibrate;
pub mod grid;
pub mod slurm;
pub mod splits;
pub mod status;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use crate::rundir::{is_done, read_status, CellMeta, GridMeta, Manifest, ReportConfig, SlurmIds, State, Status, CELLS, EXIT_PREEMPTED, GRID_JSON};
use crate::rundir::{now, read_cells, write_file, write_manifest, write_status, CellEntry, Preempted, CELLS_JSON, CELL_JSON, CONFIG};
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
    /// Cells stopped by a pre-emption signal after a checkpoint (they resume on the next run).
    pub preempted: usize,
    pub failed: Vec<(String, String)>,
}

/// Writes the results directory's grid.json and cells.json, and each cell's directory files.
/// A results directory of another grid (another `name`) is refused.
pub fn prepare(grid: &Grid) -> Result<()> {
    check_results_dir(grid)?;
    let gpath = grid.results.join(GRID_JSON);
    let meta = GridMeta { name: grid.name.clone(), arms: grid.arms.clone(), report: grid.report.clone() };
    write_file(&gpath, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    let entries: Vec<CellEntry> = grid.cells.iter().enumerate().map(|(index, c)| CellEntry { index, id: c.id.clone(), arm: c.arm.clone(), seed: c.seed, dir: c.dir_name.clone(), epochs: c.epochs, split: c.split.clone() }).collect();
    write_file(&grid.results.join(CELLS_JSON), serde_json::to_string_pretty(&entries)?.as_bytes())?;
    // each pool image's group and role in every split, beside the cells (one file per dataset root)
    for (i, (_, plan)) in grid.plans.iter().enumerate() {
        let name = if i == 0 { "splits.csv".to_string() } else { format!("splits-{i}.csv") };
        write_file(&grid.results.join(name), plan.csv().as_bytes())?;
    }
    for c in &grid.cells {
        let dir = grid.results.join(CELLS).join(&c.dir_name);
        let meta = CellMeta { id: c.id.clone(), arm: c.arm.clone(), seed: c.seed, epochs: c.epochs, split: c.split.clone() };
        write_file(&dir.join(CELL_JSON), serde_json::to_string_pretty(&meta)?.as_bytes())?;
        if config_is_stale(&dir.join(CONFIG), c) {
            write_file(&dir.join(CONFIG), c.config.to_yaml()?.as_bytes())?;
        }
        if read_status(&dir).is_none() {
            write_status(&dir, State::Pending, None)?;
        }
    }
    Ok(())
}

/// Refuses a results directory that holds another grid's results (another `name`).
fn check_results_dir(grid: &Grid) -> Result<()> {
    let gpath = grid.results.join(GRID_JSON);
    if let Ok(text) = std::fs::read_to_string(&gpath) {
        if let Ok(old) = serde_json::from_str::<GridMeta>(&text) {
            if old.name != grid.name {
                bail!("{} holds the results of grid {:?}, not {:?}: use another results directory (--out)", grid.results.display(), old.name, grid.name);
            }
        }
    }
    Ok(())
}

/// Whether a cell's `config.yaml` is to be (re)written: absent, or the same cell with another
/// `dataset.cache_mib` (not part of a cell's identity: a budget lowered after a cell ran out of
/// memory must reach it; the trainer accepts the change).
fn config_is_stale(path: &Path, c: &grid::Cell) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return true };
    match serde_saphyr::from_str::<crate::config::TrainConfig>(&text) {
        Ok(old) => old.dataset.cache_mib != c.config.dataset.cache_mib && grid::cell_id(&old) == c.id,
        Err(_) => false,
    }
}

pub use crate::fmt_duration;

/// `harness run --reuse DIR`: each cell of `grid` not yet done whose twin is a finished cell of
/// the results directory `from` (the same cell id, so the same config and seed; the id is
/// recomputed from the twin's own `config.yaml`, and the same epochs) is copied from it
/// instead of trained again: its logs verbatim (the lock and any retime folder left out), and a
/// line in its `train.log` that says where it came from. A cell that has started here (its
/// folder holds metrics or checkpoints) is never replaced. Returns the cells copied (this
/// grid's folder name and the twin's folder).
pub fn reuse(grid: &Grid, from: &Path) -> Result<Vec<(String, PathBuf)>> {
    check_results_dir(grid)?;
    let entries = read_cells(from).with_context(|| format!("--reuse {}", from.display()))?;
    let mut copied = Vec::new();
    for c in &grid.cells {
        let dst = grid.results.join(CELLS).join(&c.dir_name);
        // started here, or running now (maybe still at its proposals): never replaced
        let running = read_status(&dst).is_some_and(|s| s.state != State::Pending);
        if running || dst.join(crate::rundir::METRICS).exists() || dst.join("checkpoints").exists() {
            continue;
        }
        let Some(e) = entries.iter().find(|e| e.id == c.id && e.seed == c.seed && e.epochs == c.epochs) else { continue };
        let src = from.join(CELLS).join(&e.dir);
        if !is_done(&src, e.epochs) {
            continue;
        }
        let cfg_path = src.join(CONFIG);
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
        let cfg: crate::config::TrainConfig = serde_saphyr::from_str(&text).map_err(|err| anyhow::anyhow!("parsing {}: {err}", cfg_path.display()))?;
        if grid::cell_id(&cfg) != c.id {
            bail!("{}: this config gives the cell id {}, not the {} that {} says: the cell is not reused (was its config.yaml edited?)", cfg_path.display(), grid::cell_id(&cfg), c.id, from.join(CELLS_JSON).display());
        }
        // copied into a folder beside, then moved into place: an interrupted copy leaves no
        // half-copied cell that would read as done
        let tmp = grid.results.join(CELLS).join(format!(".{}.reuse", c.dir_name));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        copy_cell(&src, &tmp)?;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(tmp.join("train.log")).with_context(|| format!("writing {}", tmp.join("train.log").display()))?;
        writeln!(log, "{}: copied by `harness run --reuse` from {} (the same cell id {}, so the same config and seed): not trained again here", now(), src.display(), c.id)?;
        drop(log);
        if dst.exists() {
            std::fs::remove_dir_all(&dst).with_context(|| format!("replacing {}", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("moving {} to {}", tmp.display(), dst.display()))?;
        crate::rundir::sync_dir(&grid.results.join(CELLS));
        copied.push((c.dir_name.clone(), src));
    }
    Ok(copied)
}

/// Copies a cell's folder, all but its lock, its progress file and any retime folder.
fn copy_cell(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let name = e.file_name();
        if ["lock", "retime", crate::rundir::PROGRESS].iter().any(|n| name == *n) {
            continue;
        }
        let (from, to) = (e.path(), dst.join(&name));
        if e.file_type()?.is_dir() {
            copy_cell(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            std::fs::File::open(&to).and_then(|f| f.sync_all()).with_context(|| format!("flushing {}", to.display()))?;
        }
    }
    Ok(())
}

/// A cell being run, as the progress watcher sees it.
struct Running {
    dir: PathBuf,
    label: String,
    line: indicatif::ProgressBar,
    started: Instant,
}

/// A running cell as the ETA sees it: seconds since it started, and the share
/// of its training done (from its phase), once known.
#[derive(Debug, Clone, Copy)]
pub struct CellClock {
    pub elapsed: f64,
    pub done: Option<f64>,
}

/// Seconds left in a grid: each running cell's own projection (its elapsed
/// time over the share done, less the elapsed time) once it has trained a
/// tenth of itself, else the mean time of a finished cell less its elapsed
/// time; the queued cells at the mean time of a cell (finished ones, else the
/// running cells' projections); all over the jobs. None while nothing is known.
pub fn eta_seconds(running: &[CellClock], queued: usize, mean_done: Option<f64>, jobs: usize) -> Option<f64> {
    let projected: Vec<f64> = running.iter().filter_map(|c| c.done.filter(|f| *f >= 0.1).map(|f| c.elapsed / f)).collect();
    let per_cell = mean_done.or_else(|| (!projected.is_empty()).then(|| projected.iter().sum::<f64>() / projected.len() as f64))?;
    let left_running: f64 = running
        .iter()
        .map(|c| match c.done.filter(|f| *f >= 0.1) {
            Some(f) => c.elapsed / f - c.elapsed,
            None => per_cell - c.elapsed,
        })
        .map(|s| s.max(0.0))
        .sum();
    let cells = running.len() + queued;
    Some((left_running + queued as f64 * per_cell) / jobs.min(cells.max(1)) as f64)
}

/// The share of a cell's training done, from its phase: epochs done plus the iterations of this one.
fn share_done(p: &crate::rundir::Phase) -> Option<f64> {
    use crate::rundir::PhaseKind::*;
    if p.epochs == 0 || !matches!(p.phase, Training | Mining | Evaluating | Checkpointing) {
        return None;
    }
    let within = if p.phase == Training && p.total > 0 { p.done as f64 / p.total as f64 } else if p.phase == Evaluating { 1.0 } else { 0.0 };
    Some(((p.epoch.saturating_sub(1)) as f64 + within) / p.epochs as f64)
}

/// Runs every cell not yet done, `jobs` at a time.
///
/// On a terminal, a grid bar (elapsed time, and an ETA that counts down, see
/// [`eta_seconds`]) and one line per running cell with its phase, read from the
/// cell's `progress.json`. Without a terminal, plain lines instead: one per
/// cell started and finished, and every 30 s the phase of each running cell.
pub fn run(grid: &Grid, opts: &RunOptions) -> Result<RunSummary> {
    prepare(grid)?;
    crate::rundir::catch_preemption_signals()?;
    let mut summary = RunSummary::default();
    let mut queue = VecDeque::new();
    for (i, c) in grid.cells.iter().enumerate() {
        if !opts.force && is_done(&grid.results.join(CELLS).join(&c.dir_name), c.epochs) {
            summary.skipped += 1;
        } else {
            queue.push_back(i);
        }
    }
    pretrain_once(grid, &queue, opts);
    let pool = Pool::new(grid, opts, queue, summary)?;
    std::thread::scope(|s| {
        s.spawn(|| pool.watch());
        let workers: Vec<_> = (0..pool.jobs).map(|w| (w, &pool)).map(|(w, pool)| s.spawn(move || pool.work(w))).collect();
        for w in workers {
            let _ = w.join();
        }
        pool.finished.store(true, Ordering::SeqCst);
    });
    pool.overall.finish_and_clear();
    Ok(pool.summary.into_inner().expect("summary"))
}

/// The shared pre-trained backbones, each made once (per distinct pre-training)
/// before any cell starts; the cells then find them cached. A failure here is
/// left to the cells, which fail with the reason in their status.
fn pretrain_once(grid: &Grid, queue: &VecDeque<usize>, opts: &RunOptions) {
    let mut seen = std::collections::HashSet::new();
    let train_opts = crate::trainer::TrainOptions { progress: opts.progress, ..Default::default() };
    for &i in queue {
        let c = &grid.cells[i].config;
        if seen.insert(crate::pretrain::identity(c)) {
            if let Err(e) = crate::trainer::initial_weights(c, &train_opts) {
                eprintln!("pre-training for cell {} ({} seed {}) failed: {e:#}", grid.cells[i].id, grid.cells[i].arm, grid.cells[i].seed);
            }
        }
    }
}

/// What the workers and the watcher of a local run share.
struct Pool<'a> {
    grid: &'a Grid,
    opts: &'a RunOptions,
    exe: PathBuf,
    cuda: usize,
    jobs: usize,
    /// Plain progress lines (no terminal).
    plain: bool,
    queue: Mutex<VecDeque<usize>>,
    summary: Mutex<RunSummary>,
    running: Mutex<Vec<Running>>,
    /// Seconds of each cell done.
    durations: Mutex<Vec<f64>>,
    finished: AtomicBool,
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    t0: Instant,
}

impl<'a> Pool<'a> {
    fn new(grid: &'a Grid, opts: &'a RunOptions, queue: VecDeque<usize>, summary: RunSummary) -> Result<Self> {
        let tty = opts.progress && std::io::stderr().is_terminal();
        let multi = indicatif::MultiProgress::new();
        if !tty {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let overall = multi.add(indicatif::ProgressBar::new(grid.cells.len() as u64));
        overall.set_style(indicatif::ProgressStyle::with_template("grid {prefix} [{bar:30}] {pos}/{len} cells ({elapsed}){msg}").expect("template").progress_chars("=> "));
        overall.set_prefix(grid.name.clone());
        overall.inc(summary.skipped as u64);
        overall.enable_steady_tick(Duration::from_secs(1));
        Ok(Pool {
            grid,
            opts,
            exe: std::env::current_exe().context("locating the harness executable")?,
            cuda: tch::Cuda::device_count().max(0) as usize,
            jobs: opts.jobs.max(1),
            plain: opts.progress && !tty,
            queue: Mutex::new(queue),
            summary: Mutex::new(summary),
            running: Mutex::new(Vec::new()),
            durations: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            multi,
            overall,
            t0: Instant::now(),
        })
    }

    /// The estimated time left ([`eta_seconds`]); it counts down as the running cells advance.
    fn eta(&self, running: &[Running]) -> Option<f64> {
        let ds = self.durations.lock().expect("durations");
        let mean = (!ds.is_empty()).then(|| ds.iter().sum::<f64>() / ds.len() as f64);
        let clocks: Vec<CellClock> = running.iter().map(|r| CellClock { elapsed: r.started.elapsed().as_secs_f64(), done: crate::rundir::read_phase(&r.dir).as_ref().and_then(share_done) }).collect();
        eta_seconds(&clocks, self.queue.lock().expect("queue").len(), mean, self.jobs)
    }

    /// The watcher: phases of the running cells, the ETA, plain lines without a terminal.
    fn watch(&self) {
        let mut lines = crate::PlainLines::new(self.plain, Duration::from_secs(30));
        while !self.finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            let run = self.running.lock().expect("running");
            for r in run.iter() {
                if let Some(p) = crate::rundir::read_phase(&r.dir) {
                    r.line.set_message(format!("{}: {p}", r.label));
                }
            }
            let eta = self.eta(&run).map(|e| format!(", ETA {}", fmt_duration(e))).unwrap_or_default();
            self.overall.set_message(eta.clone());
            if lines.as_mut().is_some_and(|l| l.due()) {
                eprintln!("grid {}: {}/{} cells, {} elapsed{eta}", self.grid.name, self.overall.position(), self.grid.cells.len(), fmt_duration(self.t0.elapsed().as_secs_f64()));
                for r in run.iter() {
                    let phase = crate::rundir::read_phase(&r.dir).map(|p| p.to_string()).unwrap_or_else(|| "starting".into());
                    eprintln!("  {}: {phase}", r.label);
                }
            }
        }
    }

    /// A worker: takes cells off the queue until it is empty or a pre-emption signal came.
    fn work(&self, worker: usize) {
        while !crate::rundir::STOP.load(Ordering::SeqCst) {
            let Some(i) = self.queue.lock().expect("queue").pop_front() else { break };
            self.run_one(i, worker);
        }
    }

    fn run_one(&self, i: usize, worker: usize) {
        let cell = &self.grid.cells[i];
        let dir = self.grid.results.join(CELLS).join(&cell.dir_name);
        let label = format!("{} seed {}", cell.arm, cell.seed);
        let line = self.multi.add(indicatif::ProgressBar::new_spinner());
        line.set_message(format!("{label}: starting"));
        line.enable_steady_tick(Duration::from_millis(500));
        if self.plain {
            eprintln!("{label}: started ({})", dir.display());
        }
        self.running.lock().expect("running").push(Running { dir: dir.clone(), label: label.clone(), line: line.clone(), started: Instant::now() });
        // One GPU per job when several are present and the cell says `auto`.
        let device = (cell.config.device == "auto" && self.cuda > 1).then(|| format!("cuda:{}", worker % self.cuda));
        let t = Instant::now();
        let outcome = run_cell(&self.exe, &dir, device, &cell.config.device, self.opts.force, self.opts.cache_dir.as_deref(), &[]);
        self.running.lock().expect("running").retain(|r| r.dir != dir);
        line.finish_and_clear();
        self.multi.remove(&line);
        self.overall.inc(1);
        if self.plain {
            let what = match &outcome {
                Ok(CellOutcome::Done) => "done".to_string(),
                Ok(CellOutcome::Busy) => "busy in another process".to_string(),
                Ok(CellOutcome::Preempted(w)) => format!("pre-empted ({w})"),
                Ok(CellOutcome::Failed(r)) => format!("failed: {r}"),
                Err(e) => format!("failed: {e:#}"),
            };
            eprintln!("{label}: {what} after {}", fmt_duration(t.elapsed().as_secs_f64()));
        }
        let mut sm = self.summary.lock().expect("summary");
        match outcome {
            Ok(CellOutcome::Done) => {
                sm.done += 1;
                self.durations.lock().expect("durations").push(t.elapsed().as_secs_f64());
            }
            Ok(CellOutcome::Busy) => sm.busy += 1,
            Ok(CellOutcome::Preempted(_)) => sm.preempted += 1,
            Ok(CellOutcome::Failed(reason)) => sm.failed.push((cell.dir_name.clone(), reason)),
            Err(e) => sm.failed.push((cell.dir_name.clone(), format!("{e:#}"))),
        }
    }
}

/// How one cell's run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    Done,
    /// Another process holds the cell's lock.
    Busy,
    /// Stopped by a pre-emption signal after a checkpoint, where the training process recorded it.
    Preempted(Preempted),
    Failed(String),
}

/// Slurm's ids of the task running a cell, for its manifest.
fn slurm_ids() -> Option<SlurmIds> {
    let job = std::env::var("SLURM_ARRAY_JOB_ID").or_else(|_| std::env::var("SLURM_JOB_ID")).ok()?;
    Some(SlurmIds { job_id: job, array_task_id: std::env::var("SLURM_ARRAY_TASK_ID").ok(), restart_count: std::env::var("SLURM_RESTART_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(0) })
}

/// Runs one cell as its own `harness train` process and records its status and manifest.
/// SIGUSR1 / SIGTERM to this process ([`crate::rundir::STOP`]) are passed on to the
/// training process, which checkpoints and stops; the cell is then `pending` again.
pub fn run_cell(exe: &Path, dir: &Path, device: Option<String>, cfg_device: &str, force: bool, cache_dir: Option<&Path>, extra_args: &[String]) -> Result<CellOutcome> {
    let mut cmd = Command::new(exe);
    cmd.arg("train").arg(dir.join(CONFIG)).arg("--out").arg(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(d) = &device {
        cmd.args(["--device", d]);
    }
    if force {
        cmd.arg("--force");
    }
    if let Some(c) = cache_dir {
        cmd.arg("--cache-dir").arg(c);
    }
    cmd.args(extra_args);
    let started = now();
    let load_start = crate::rundir::load_average();
    let manifest = |ended: Option<String>, load_end: Option<f64>| Manifest {
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: git_revision(),
        libtorch: env!("OHEM_LIBTORCH_VERSION").to_string(),
        device: device.clone().unwrap_or_else(|| cfg_device.to_string()),
        device_used: crate::config::parse_device(device.as_deref().unwrap_or(cfg_device)).ok().map(|d| match d {
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        }),
        host: host(),
        started: started.clone(),
        ended,
        slurm: slurm_ids(),
        cpu: crate::rundir::cpu_model(),
        cores: std::thread::available_parallelism().ok().map(|n| n.get()),
        cpu_isa: Some(crate::rundir::cpu_isa()),
        load_start,
        load_end,
    };
    let _ = std::fs::remove_file(dir.join(crate::rundir::PROGRESS));
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
    write_status(dir, State::Running, None)?;
    write_manifest(dir, &manifest(None, None))?;
    let pid = child.id() as i32;
    let child_done = std::sync::atomic::AtomicBool::new(false);
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("train.log"))?;
    let mut last_error = None;
    let mut tail = VecDeque::new();
    let stderr = child.stderr.take().expect("piped");
    std::thread::scope(|s| {
        // pass a pre-emption signal on to the training process, once
        s.spawn(|| {
            while !child_done.load(std::sync::atomic::Ordering::SeqCst) {
                if crate::rundir::STOP.load(std::sync::atomic::Ordering::SeqCst) {
                    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
                    unsafe { libc::kill(pid, libc::SIGUSR1) };
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        for l in BufReader::new(stderr).lines() {
            let l = l.unwrap_or_default();
            let _ = writeln!(log, "{l}");
            if let Some(e) = l.strip_prefix("error: ") {
                last_error = Some(e.to_string());
            }
            tail.push_back(l);
            if tail.len() > 5 {
                tail.pop_front();
            }
        }
        child_done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let status = child.wait()?;
    if status.code() == Some(EXIT_LOCKED) {
        return Ok(CellOutcome::Busy);
    }
    write_manifest(dir, &manifest(Some(now()), crate::rundir::load_average()))?;
    if status.success() {
        write_status(dir, State::Done, None)?;
        Ok(CellOutcome::Done)
    } else if status.code() == Some(EXIT_PREEMPTED) {
        let p = Preempted::read(dir);
        write_status(dir, State::Pending, Some(p.to_string()))?;
        Ok(CellOutcome::Preempted(p))
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

/// The field of column `name` in a row `f` under header `h`; empty where the header lacks it.
fn field<'a>(h: &[&str], f: &[&'a str], name: &str) -> &'a str {
    h.iter().position(|c| *c == name).and_then(|i| f.get(i).copied()).unwrap_or("")
}

/// The first difference between two CSV files outside the timing columns
/// ([`crate::rundir::TIMING_COLUMNS`]): None when every deterministic value is the same.
pub fn deterministic_difference(a: &str, b: &str) -> Option<String> {
    // by column name: a column one side lacks (a log written before it existed) reads as empty
    let (mut la, mut lb) = (a.lines(), b.lines());
    let (ha, hb): (Vec<&str>, Vec<&str>) = (la.next().unwrap_or_default().split(',').collect(), lb.next().unwrap_or_default().split(',').collect());
    let mut names: Vec<&str> = ha.clone();
    names.extend(hb.iter().filter(|n| !ha.contains(n)));
    for (n, (x, y)) in la.by_ref().zip(lb.by_ref()).enumerate() {
        let (fx, fy): (Vec<&str>, Vec<&str>) = (x.split(',').collect(), y.split(',').collect());
        for name in names.iter().filter(|n| !crate::rundir::TIMING_COLUMNS.contains(n)) {
            let (vx, vy) = (field(&ha, &fx, name), field(&hb, &fy, name));
            if vx != vy {
                return Some(format!("row {}, column {name}: {vx} against {vy}", n + 1));
            }
        }
    }
    (a.lines().count() != b.lines().count()).then(|| format!("{} rows against {}", a.lines().count() - 1, b.lines().count() - 1))
}

/// `harness run --retime`: trains a finished cell again from scratch in `<cell>/retime/`, and,
/// when every deterministic column of `metrics.csv` and `mining.csv` and the final evaluation's
/// outcomes come out the same (they do on the same CPU model), replaces the cell's timings and
/// manifest with the new run's; else leaves the cell as it was and says what differed. Returns
/// the new run's directory's verdict in words.
pub fn retime_cell(exe: &Path, cell: &Path, cfg_device: &str, cache_dir: Option<&Path>) -> Result<String> {
    use crate::rundir::{MINING, OUTCOMES};
    // the cell's own lock, held throughout: no `harness run` trains it meanwhile
    let _lock = crate::rundir::try_lock(cell).with_context(|| format!("{}: locked by another process (is a grid running?)", cell.display()))?;
    let tmp = cell.join("retime");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing the unfinished {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::copy(cell.join(CONFIG), tmp.join(CONFIG)).with_context(|| format!("copying {}", cell.join(CONFIG).display()))?;
    let outcome = run_cell(exe, &tmp, None, cfg_device, true, cache_dir, &[])?;
    let result = (|| -> Result<String> {
        match outcome {
            CellOutcome::Done => {}
            CellOutcome::Failed(why) => bail!("the rerun failed: {why}"),
            CellOutcome::Busy => bail!("the rerun's directory is locked by another process"),
            CellOutcome::Preempted(p) => bail!("the rerun was pre-empted ({p})"),
        }
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        for f in [crate::rundir::METRICS, MINING] {
            if let Some(d) = deterministic_difference(&read(cell, f), &read(&tmp, f)) {
                bail!("{f} of the rerun differs from the cell's ({d}): on another CPU model the floats move; the cell keeps its timings");
            }
        }
        if cell.join(OUTCOMES).is_file() && read(cell, OUTCOMES) != read(&tmp, OUTCOMES) {
            bail!("{OUTCOMES} of the rerun differs from the cell's; the cell keeps its timings");
        }
        for f in [crate::rundir::METRICS, MINING, crate::rundir::MANIFEST] {
            if tmp.join(f).is_file() {
                crate::rundir::rename_durably(&tmp.join(f), &cell.join(f))?;
            }
        }
        // TensorBoard's timings are the rerun's too: its event files replace the cell's
        let events = |d: &Path| -> Vec<std::path::PathBuf> { std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| crate::trainer::tensorboard::is_event_file(&n.to_string_lossy()))).collect() };
        for old in events(cell) {
            let _ = std::fs::remove_file(old);
        }
        for new in events(&tmp) {
            if let Some(name) = new.file_name() {
                crate::rundir::rename_durably(&new, &cell.join(name))?;
            }
        }
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(cell.join("train.log"))?;
        writeln!(log, "retimed {}: trained again from scratch; every deterministic column identical, the timings and the manifest are the rerun's", now())?;
        Ok("retimed: the accuracy rows came out identical; the timings are the rerun's".into())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// `harness cell <results> --index I`: runs cell I of `cells.json` (one Slurm
/// array task), with the same skip, resume and lock rules as `harness run`.
pub fn run_one(results: &Path, index: usize, force: bool, cache_dir: Option<&Path>) -> Result<CellOutcome> {
    crate::rundir::catch_preemption_signals()?;
    let cells = read_cells(results)?;
    let Some(c) = cells.get(index) else { bail!("{}: no cell with index {index} ({} cells, 0-{})", results.join(CELLS_JSON).display(), cells.len(), cells.len().saturating_sub(1)) };
    let dir = results.join(CELLS).join(&c.dir);
    if !force && is_done(&dir, c.epochs) {
        eprintln!("{} seed {}: already done ({})", c.arm, c.seed, dir.display());
        return Ok(CellOutcome::Done);
    }
    let cfg = crate::config::TrainConfig::load(&dir.join(CONFIG), &[])?;
    eprintln!("{} seed {}: running in {}", c.arm, c.seed, dir.display());
    run_cell(&std::env::current_exe().context("locating the harness executable")?, &dir, None, &cfg.device, force, cache_dir, &[])
}

