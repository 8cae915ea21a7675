//! `harness status DIR`: the state of every cell of a results directory, read
//! from the run directories alone (no Slurm accounting needed), and its
//! printed form: counts per arm, then a line per cell.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::rundir::{read_cells, read_metrics, read_phase, read_status, CellEntry, CellMeta, GridMeta, Phase, State, CELLS, CELLS_JSON, CELL_JSON, GRID_JSON, LOCK, METRICS};

/// The cells of a results directory written before `cells.json` existed: its
/// cell directories, in the grid's arm order, then by seed.
fn cells_from_dirs(results: &Path, arms: &[String]) -> Result<Vec<CellEntry>> {
    let dir = results.join(CELLS);
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let d = e?.path();
        let Ok(text) = std::fs::read_to_string(d.join(CELL_JSON)) else { continue };
        let m: CellMeta = serde_json::from_str(&text).with_context(|| format!("parsing {}", d.join(CELL_JSON).display()))?;
        v.push(CellEntry { index: 0, id: m.id, arm: m.arm, seed: m.seed, dir: d.file_name().unwrap_or_default().to_string_lossy().into_owned(), epochs: m.epochs, split: m.split });
    }
    v.sort_by_key(|c| (arms.iter().position(|a| *a == c.arm).unwrap_or(usize::MAX), c.seed));
    for (i, c) in v.iter_mut().enumerate() {
        c.index = i;
    }
    Ok(v)
}

/// One cell in `harness status`.
#[derive(Debug, Clone)]
pub struct CellState {
    pub index: usize,
    pub arm: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub state: State,
    /// A `running` cell whose lock nobody holds: the process is gone.
    pub stale: bool,
    pub reason: Option<String>,
    pub phase: Option<Phase>,
    pub epochs_done: usize,
    pub epochs: usize,
    pub last_map: Option<f64>,
    /// When the cell's last process started and ended (its manifest, ISO 8601 UTC).
    pub started: Option<String>,
    pub ended: Option<String>,
    /// The cell's wall clock over its finished epochs, every process that worked on it (`metrics.csv`).
    pub wall_s: Option<f64>,
}

/// Whether some process holds a run directory's lock (false when there is no lock file).
fn locked(dir: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(dir.join(LOCK)) else { return false };
    match fs2::FileExt::try_lock_exclusive(&f) {
        Ok(()) => {
            let _ = fs2::FileExt::unlock(&f);
            false
        }
        Err(_) => true,
    }
}

/// What `harness status` shows: the grid's name, its arms in grid order, and every cell.
#[derive(Debug, Clone)]
pub struct GridStatus {
    pub name: String,
    pub arms: Vec<String>,
    pub cells: Vec<CellState>,
}

/// The state of every cell of a results directory, from the run directories alone.
pub fn read(results: &Path) -> Result<GridStatus> {
    let gpath = results.join(GRID_JSON);
    let meta: GridMeta = serde_json::from_str(&crate::read_text(&gpath, &format!("is {} a results directory of `harness run`?", results.display()))?).with_context(|| format!("parsing {}", gpath.display()))?;
    let cells = if results.join(CELLS_JSON).exists() { read_cells(results)? } else { cells_from_dirs(results, &meta.arms)? };
    let mut out = Vec::new();
    for c in cells {
        let dir = results.join(CELLS).join(&c.dir);
        let st = read_status(&dir);
        let state = st.as_ref().map(|s| s.state).unwrap_or(State::Pending);
        let rows = read_metrics(&dir.join(METRICS)).unwrap_or_default();
        let stale = state == State::Running && !locked(&dir);
        out.push(CellState {
            index: c.index,
            arm: c.arm,
            seed: c.seed,
            phase: if state == State::Running && !stale { read_phase(&dir) } else { None },
            dir,
            state,
            stale,
            reason: st.and_then(|s| s.reason),
            epochs_done: rows.len(),
            epochs: c.epochs,
            last_map: rows.iter().rev().find_map(|r| r.map_voc07),
            started: crate::rundir::read_manifest(&results.join(CELLS).join(&c.dir)).map(|m| m.started),
            ended: crate::rundir::read_manifest(&results.join(CELLS).join(&c.dir)).and_then(|m| m.ended),
            wall_s: rows.last().map(|r| r.wall_s),
        });
    }
    Ok(GridStatus { name: meta.name, arms: meta.arms, cells: out })
}

/// A grid's remaining cost, from the wall clock of its finished cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Seconds of the cells still to run, one cell at a time.
    pub remaining_s: f64,
    /// Seconds of the whole grid, one cell at a time.
    pub total_s: f64,
    /// The finished cells it comes from.
    pub from_cells: usize,
}

impl GridStatus {
    /// The cost of the cells not finished, one at a time: each arm's mean wall clock over its
    /// finished cells (the mean over all finished cells for an arm with none), a cell with
    /// epochs done (running, pre-empted or failed: it resumes) by its share of epochs still to
    /// train. None before any cell has finished.
    pub fn estimate(&self) -> Option<Estimate> {
        let done: Vec<&CellState> = self.cells.iter().filter(|c| c.state == State::Done && c.wall_s.is_some()).collect();
        let all = super::super::report::mean_std(&done.iter().filter_map(|c| c.wall_s).collect::<Vec<_>>())?.0;
        let mean_of = |arm: &str| super::super::report::mean_std(&done.iter().filter(|c| c.arm == arm).filter_map(|c| c.wall_s).collect::<Vec<_>>()).map_or(all, |m| m.0);
        let (mut remaining, mut total) = (0.0, 0.0);
        for c in &self.cells {
            let m = mean_of(&c.arm);
            // a cell with epochs done (running, pre-empted, failed) resumes from its checkpoint
            let left = match c.state {
                State::Done => 0.0,
                _ if c.epochs > 0 => m * (1.0 - c.epochs_done.min(c.epochs) as f64 / c.epochs as f64),
                _ => m,
            };
            remaining += left;
            total += if c.state == State::Done { c.wall_s.unwrap_or(m) } else { m };
        }
        Some(Estimate { remaining_s: remaining, total_s: total, from_cells: done.len() })
    }
}

/// "12-07 13:01" of an ISO 8601 time, the time as written when it does not parse.
fn short_time(t: &str) -> String {
    match crate::rundir::parse_iso(t) {
        Some(_) => format!("{} {}", &t[5..10], &t[11..16]),
        None => t.to_string(),
    }
}

impl CellState {
    /// When it ran: its last process's start and end, and its wall clock over its epochs.
    pub fn times(&self) -> String {
        let wall = self.wall_s.map(|w| format!(", {} over its epochs", crate::fmt_duration(w))).unwrap_or_default();
        match (&self.started, &self.ended, self.state) {
            (Some(s), Some(e), State::Done | State::Failed) => format!("{} → {}{wall}", short_time(s), short_time(e)),
            (Some(s), _, State::Running) => {
                let since = crate::rundir::parse_iso(s).zip(crate::rundir::parse_iso(&crate::rundir::now())).map(|(a, b)| format!(", {} ago", crate::fmt_duration(b.saturating_sub(a) as f64))).unwrap_or_default();
                format!("started {}{since}", short_time(s))
            }
            _ => String::new(),
        }
    }

    /// The state in words, with the phase, the mAP or the reason.
    pub fn describe(&self) -> String {
        match (self.state, self.stale) {
            (State::Running, true) => "running? (no process holds the cell: interrupted; a rerun resumes it)".to_string(),
            (State::Running, false) => format!("running: {}", self.phase.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "starting".into())),
            (State::Done, _) => format!("done: mAP07 {}", self.last_map.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into())),
            (State::Failed, _) => format!("failed: {}", self.reason.clone().unwrap_or_default()),
            (State::Pending, _) => match &self.reason {
                Some(r) => format!("pending ({r})"),
                None => "pending".to_string(),
            },
        }
    }
}

impl std::fmt::Display for GridStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use State::*;
        let count = |arm: Option<&str>, s: State| self.cells.iter().filter(|c| arm.is_none_or(|a| c.arm == a) && c.state == s).count();
        writeln!(f, "{}: {} cells: {} done, {} running, {} pending, {} failed", self.name, self.cells.len(), count(None, Done), count(None, Running), count(None, Pending), count(None, Failed))?;
        writeln!(f, "\n{:<24} {:>5} {:>8} {:>8} {:>7}", "arm", "done", "running", "pending", "failed")?;
        for a in &self.arms {
            let a = Some(a.as_str());
            writeln!(f, "{:<24} {:>5} {:>8} {:>8} {:>7}", a.unwrap_or_default(), count(a, Done), count(a, Running), count(a, Pending), count(a, Failed))?;
        }
        match self.estimate() {
            Some(e) => writeln!(f, "\nestimated: {} left of {} in all, one cell at a time (each arm's mean wall clock over the {} finished cells)", crate::fmt_duration(e.remaining_s), crate::fmt_duration(e.total_s), e.from_cells)?,
            None => writeln!(f, "\nno estimate yet: no cell has finished")?,
        }
        writeln!(f)?;
        for c in &self.cells {
            let times = c.times();
            let times = if times.is_empty() { String::new() } else { format!("  [{times}]") };
            writeln!(f, "{:>4}  {:<24} seed {:<4} {}/{} epochs  {}{times}", c.index, c.arm, c.seed, c.epochs_done, c.epochs, c.describe())?;
        }
        Ok(())
    }
}
