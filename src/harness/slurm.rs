//! `harness run GRID --executor slurm`: the grid as one Slurm job array.
//!
//! The cells are those of a local run (same ids, same directories); the
//! results directory gets `cells.json` and one array task per cell that is
//! not done yet, each running `harness cell <results> --index $SLURM_ARRAY_TASK_ID`
//! with the local run's skip, resume and lock rules. A report job follows
//! (`--dependency=afterany:<array>`). Tasks ask for a warning signal before
//! their time limit (`--signal=B:USR1@90` by default): the cell checkpoints at
//! the next iteration boundary and stops, and with `--requeue` (the default)
//! the task requeues itself (`scontrol requeue`), resuming from that checkpoint.
//! What was submitted is appended to `slurm/submissions.jsonl`, and the tasks'
//! output goes to `slurm/<array>_<task>.out`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{is_done, prepare, Grid, CELLS};

#[derive(Debug, Clone)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// `--time` of each task, in any format sbatch takes.
    pub time: Option<String>,
    /// Tasks of the array that may run at once (`%K`).
    pub max_parallel: usize,
    /// Passed to sbatch as they are (repeatable `--sbatch-arg`).
    pub sbatch_args: Vec<String>,
    /// The warning signal and its lead time, as sbatch's `--signal` (without `B:`).
    pub signal: WarningSignal,
    /// Requeue a task that a signal stopped.
    pub requeue: bool,
    pub force: bool,
    pub cache_dir: Option<PathBuf>,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions { partition: None, gpus_per_task: None, cpus_per_task: None, time: None, max_parallel: 16, sbatch_args: Vec::new(), signal: WarningSignal { signal: "USR1", lead_s: 90 }, requeue: true, force: false, cache_dir: None }
    }
}

/// Slurm's warning before a task's time limit: a signal the trainer checkpoints
/// on (USR1 or TERM) and its lead in seconds, written `USR1@90` as sbatch's `--signal` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarningSignal {
    /// `USR1` or `TERM`.
    pub signal: &'static str,
    pub lead_s: u32,
}

impl std::str::FromStr for WarningSignal {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let Some((sig, lead)) = s.split_once('@') else { return Err(format!("{s:?}: expected SIGNAL@SECONDS, e.g. USR1@90")) };
        let signal = match sig {
            "USR1" | "SIGUSR1" => "USR1",
            "TERM" | "SIGTERM" => "TERM",
            _ => return Err(format!("{s:?}: expected USR1@SECONDS or TERM@SECONDS (the signals the trainer checkpoints on)")),
        };
        let lead_s = lead.parse().map_err(|_| format!("{s:?}: expected USR1@SECONDS or TERM@SECONDS, SECONDS a whole number"))?;
        Ok(WarningSignal { signal, lead_s })
    }
}

impl std::fmt::Display for WarningSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.signal, self.lead_s)
    }
}

/// What one `harness run --executor slurm` submitted.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Submission {
    pub array_job: String,
    pub report_job: String,
    /// Indices into cells.json of the submitted cells.
    pub cells: Vec<usize>,
    pub submitted: String,
}

/// `0-3,5,7-9` from sorted indices.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", indices[i], indices[j]) } else { indices[i].to_string() });
        i = j + 1;
    }
    parts.join(",")
}

/// A word for /bin/sh, single-quoted.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
}

/// Runs sbatch; returns the job id (`--parsable` prints `id[;cluster]`).
fn sbatch(args: &[String]) -> Result<String> {
    let out = Command::new("sbatch").args(args).output().context("running sbatch")?;
    if !out.status.success() {
        bail!("sbatch refused the job: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed {:?}, not a job id", text.trim());
    }
    Ok(id)
}

/// Checks the results directory, then submits the array of not-done cells and
/// the report job; `None` when every cell is done. The options were validated
/// by the command line (`max_parallel` at least 1).
pub fn submit(grid: &Grid, opts: &SlurmOptions) -> Result<Option<Submission>> {
    if find_on_path("sbatch").is_none() {
        bail!("sbatch is not on PATH: --executor slurm needs the Slurm client commands (or run locally, without --executor)");
    }
    prepare(grid)?;
    let results = std::fs::canonicalize(&grid.results).with_context(|| format!("resolving {}", grid.results.display()))?;
    let todo: Vec<usize> = grid.cells.iter().enumerate().filter(|(_, c)| opts.force || !is_done(&results.join(CELLS).join(&c.dir_name), c.epochs)).map(|(i, _)| i).collect();
    if todo.is_empty() {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let slurm_dir = results.join("slurm");
    std::fs::create_dir_all(&slurm_dir).with_context(|| format!("creating {}", slurm_dir.display()))?;
    let script = write_task_script(&exe, &results, &slurm_dir, opts)?;
    let array_job = sbatch(&array_args(grid, opts, &todo, &slurm_dir, &script))?;
    let mut rargs = vec![
        "--parsable".to_string(),
        format!("--job-name=harness-{}-report", grid.name),
        format!("--dependency=afterany:{array_job}"),
        format!("--output={}/report_%j.out", slurm_dir.display()),
    ];
    rargs.extend(common_args(opts));
    rargs.extend(opts.sbatch_args.iter().cloned());
    rargs.push(format!("--wrap=exec {} report {}", sh_quote(&exe.to_string_lossy()), sh_quote(&results.to_string_lossy())));
    let report_job = sbatch(&rargs)?;
    let sub = Submission { array_job, report_job, cells: todo, submitted: crate::rundir::now() };
    let log = slurm_dir.join("submissions.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&serde_json::to_string(&sub)?);
    text.push('\n');
    crate::rundir::write_file(&log, text.as_bytes())?;
    Ok(Some(sub))
}

/// The batch script of every task: one cell each; `exec`, so Slurm's warning signal reaches the harness.
fn write_task_script(exe: &std::path::Path, results: &std::path::Path, slurm_dir: &std::path::Path, opts: &SlurmOptions) -> Result<PathBuf> {
    let mut cell_cmd = format!("exec {} cell {} --index \"$SLURM_ARRAY_TASK_ID\"", sh_quote(&exe.to_string_lossy()), sh_quote(&results.to_string_lossy()));
    if opts.requeue {
        cell_cmd.push_str(" --requeue");
    }
    if opts.force {
        cell_cmd.push_str(" --force");
    }
    if let Some(c) = &opts.cache_dir {
        cell_cmd.push_str(&format!(" --cache-dir {}", sh_quote(&c.to_string_lossy())));
    }
    let script = slurm_dir.join("cell.sh");
    crate::rundir::write_file(&script, format!("#!/bin/sh\n# Written by `harness run --executor slurm`: one array task runs one cell of cells.json.\n{cell_cmd}\n").as_bytes())?;
    Ok(script)
}

/// The partition and time limit, which the report job shares with the array.
fn common_args(opts: &SlurmOptions) -> Vec<String> {
    let mut common = Vec::new();
    if let Some(p) = &opts.partition {
        common.push(format!("--partition={p}"));
    }
    if let Some(t) = &opts.time {
        common.push(format!("--time={t}"));
    }
    common
}

/// sbatch's arguments for the array of cells `todo`.
fn array_args(grid: &Grid, opts: &SlurmOptions, todo: &[usize], slurm_dir: &std::path::Path, script: &std::path::Path) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name=harness-{}", grid.name),
        format!("--array={}%{}", array_spec(todo), opts.max_parallel),
        format!("--output={}/%A_%a.out", slurm_dir.display()),
        "--open-mode=append".to_string(),
        format!("--signal=B:{}", opts.signal),
    ];
    if opts.requeue {
        args.push("--requeue".into());
    }
    args.extend(common_args(opts));
    if let Some(g) = opts.gpus_per_task {
        args.push(format!("--gpus-per-task={g}"));
    }
    if let Some(c) = opts.cpus_per_task {
        args.push(format!("--cpus-per-task={c}"));
    }
    args.extend(opts.sbatch_args.iter().cloned());
    args.push(script.to_string_lossy().into_owned());
    args
}

/// After a pre-emption: asks Slurm to requeue this array task (it resumes from its checkpoint).
pub fn requeue_self() -> Result<()> {
    let job = match (std::env::var("SLURM_ARRAY_JOB_ID"), std::env::var("SLURM_ARRAY_TASK_ID")) {
        (Ok(j), Ok(t)) => format!("{j}_{t}"),
        _ => std::env::var("SLURM_JOB_ID").context("not inside a Slurm job (no SLURM_JOB_ID): nothing to requeue")?,
    };
    let out = Command::new("scontrol").args(["requeue", &job]).output().context("running scontrol requeue")?;
    if !out.status.success() {
        bail!("scontrol requeue {job}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn array_specs() {
        assert_eq!(super::array_spec(&[0, 1, 2, 3, 5, 7, 8, 9]), "0-3,5,7-9");
        assert_eq!(super::array_spec(&[4]), "4");
        assert_eq!(super::sh_quote("a'b"), r"'a'\''b'");
    }
}

