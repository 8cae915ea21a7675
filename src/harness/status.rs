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
    let meta: GridMeta = serde_json::from_str(&std::fs::read_to_string(&gpath).with_context(|| format!("reading {} (is {} a results directory of `harness run`?)", gpath.display(), results.display()))?).with_context(|| format!("parsing {}", gpath.display()))?;
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
        });
    }
    Ok(GridStatus { name: meta.name, arms: meta.arms, cells: out })
}

impl CellState {
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
        writeln!(f)?;
        for c in &self.cells {
            writeln!(f, "{:>4}  {:<24} seed {:<4} {}/{} epochs  {}", c.index, c.arm, c.seed, c.epochs_done, c.epochs, c.describe())?;
        }
        Ok(())
    }
}
