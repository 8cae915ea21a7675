//! `harness run --executor slurm` against a real single-node Slurm on
//! localhost (scripts/slurm-local.sh starts munged, slurmctld and slurmd, and
//! installs the Debian packages when missing). Skipped, with one line, only
//! when the packages cannot be installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ohem_harness::rundir::{read_metrics, EpochRow};

use crate::util::{harness, tiny_dataset};

/// The local Slurm, stopped (by process id) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh")
}

fn start() -> Option<Cluster> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(script()).arg("start").arg(dir.path()).output().expect("run scripts/slurm-local.sh");
    match out.status.code() {
        Some(0) => Some(Cluster { dir }),
        Some(2) => {
            eprintln!("skipped: Slurm integration test: {}", String::from_utf8_lossy(&out.stderr).trim());
            None
        }
        _ => panic!("scripts/slurm-local.sh start failed:\n{}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// `harness` with SLURM_CONF pointing at the local cluster.
fn harness_slurm(conf: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).args(args).arg("--quiet").env("SLURM_CONF", conf).output().expect("run harness");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn slurm(conf: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).env("SLURM_CONF", conf).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until Slurm has no pending or running job of ours left.
fn wait_idle(conf: &Path, what: &str) {
    let t = Instant::now();
    while !slurm(conf, "squeue", &["-h", "-o", "%i %T"]).trim().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(600), "{what}: Slurm jobs still queued after 10 min: {}", slurm(conf, "squeue", &["-h"]));
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn write_grid(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nresults: {}\nbase:\n  device: cpu\n  dataset:\n    root: {}\n  model:\n    fc_dim: 64\n    init: scratch\n  input:\n    scale: 160\n    max_size: 224\n{body}",
        dir.join(name).display(),
        tiny_dataset().display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn outcome(r: &EpochRow) -> (usize, f64, f64, f64, f64, Option<f64>) {
    (r.epoch, r.loss, r.loss_cls, r.loss_bbox, r.fg_fraction, r.map_voc07)
}

fn cell_dir(results: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(results.join("cells")).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).unwrap()
}

#[test]
fn slurm_array_runs_reports_preempts_and_resumes() {
    let Some(cluster) = start() else { return };
    let conf = cluster.conf();
    let t = tempfile::tempdir().unwrap();
    let cache = crate::util::cache_dir().to_str().unwrap().to_string();

    // bad input is refused before anything is submitted
    let grid = write_grid(t.path(), "tiny", "  train:\n    epochs: 1\n    iters_per_epoch: 2\n    lr_steps: []\narms:\n  frcn:\n    sampler: {kind: fixed_ratio}\n  ohem:\n    sampler: {kind: ohem}\nseeds: [0, 1]\n");
    let g = grid.to_str().unwrap();
    let (ok, _, err) = harness_slurm(&conf, &["run", g, "--executor", "slurm", "--max-parallel", "0"]);
    assert!(!ok && err.contains("--max-parallel 0"), "{err}");
    let (ok, _, err) = harness_slurm(&conf, &["run", g, "--executor", "slurm", "--partition", "nope", "--cache-dir", &cache]);
    assert!(!ok && err.contains("sbatch refused the job") && err.to_lowercase().contains("invalid partition"), "{err}");
    let no_sbatch = Command::new(env!("CARGO_BIN_EXE_harness")).args(["run", g, "--executor", "slurm", "--quiet"]).env("PATH", "/nonexistent").output().unwrap();
    let err = String::from_utf8_lossy(&no_sbatch.stderr);
    assert!(!no_sbatch.status.success() && err.contains("sbatch is not on PATH"), "{err}");
    let other = write_grid(t.path(), "other", "  train:\n    epochs: 1\n    iters_per_epoch: 2\nseeds: [0]\n");
    let (ok, _, err) = harness_slurm(&conf, &["run", other.to_str().unwrap(), "--executor", "slurm", "--out", t.path().join("tiny").to_str().unwrap()]);
    assert!(!ok && err.contains("holds the results of grid \"tiny\""), "{err}");

    // the grid as one array job and a report job after it
    let (ok, out, err) = harness_slurm(&conf, &["run", g, "--executor", "slurm", "--max-parallel", "2", "--cpus-per-task", "1", "--cache-dir", &cache]);
    assert!(ok && out.contains("submitted array job") && out.contains("4 of 4 cells"), "{out}{err}");
    wait_idle(&conf, "the tiny grid");
    let results = t.path().join("tiny");
    let summary = std::fs::read_to_string(results.join("summary.csv")).unwrap_or_else(|e| panic!("no summary.csv from the report job ({e}); logs: {:?}", std::fs::read_dir(results.join("slurm")).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>()));
    assert!(summary.contains("frcn") && summary.contains("ohem"), "{summary}");
    let (ok, status, _) = harness(&["status", results.to_str().unwrap()]);
    assert!(ok && status.contains("4 cells: 4 done, 0 running, 0 pending, 0 failed"), "{status}");
    let manifest = std::fs::read_to_string(cell_dir(&results, "frcn-s0").join("manifest.json")).unwrap();
    assert!(manifest.contains("\"array_task_id\""), "{manifest}");
    // re-submitting a finished grid submits nothing
    let (ok, out, _) = harness_slurm(&conf, &["run", g, "--executor", "slurm", "--cache-dir", &cache]);
    assert!(ok && out.contains("nothing submitted"), "{out}");

    // pre-emption: USR1 to a task in the middle of its cell, then a second submission resumes it
    let body = "  train:\n    epochs: 8\n    lr_steps: [6]\n  test:\n    eval_every: 1\narms:\n  ohem:\n    sampler: {kind: ohem}\nseeds: [0]\n";
    let long = write_grid(t.path(), "long", body);
    let (ok, out, err) = harness_slurm(&conf, &["run", long.to_str().unwrap(), "--executor", "slurm", "--no-requeue", "--cache-dir", &cache]);
    assert!(ok, "{out}{err}");
    let job = out.split("submitted array job ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let lresults = t.path().join("long");
    let dir = cell_dir(&lresults, "ohem-s0");
    let t0 = Instant::now();
    loop {
        let p = ohem_harness::rundir::read_phase(&dir);
        // well inside the cell: training in epoch 2 (phase reports come at most once a second within a phase)
        if p.as_ref().is_some_and(|p| p.phase == ohem_harness::rundir::PhaseKind::Training && p.epoch >= 2) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "the long cell never got to epoch 2: {p:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, status, _) = harness(&["status", lresults.to_str().unwrap()]);
    // (by the time status reads it, a loaded machine may have moved the cell on to evaluating)
    assert!(ok && (status.contains("running: epoch ") || status.contains("running: evaluating (epoch ")), "harness status shows the phase: {status}");
    let sc = Command::new("scancel").args(["--batch", "--signal=USR1", &format!("{job}_0")]).env("SLURM_CONF", &conf).output().unwrap();
    assert!(sc.status.success(), "{}", String::from_utf8_lossy(&sc.stderr));
    wait_idle(&conf, "the pre-empted cell");
    let st = std::fs::read_to_string(dir.join("status.json")).unwrap();
    assert!(st.contains("pending") && st.contains("pre-empted"), "{st}");
    assert!(read_metrics(&dir.join("metrics.csv")).unwrap().len() < 8, "stopped before the end");
    let (ok, out, err) = harness_slurm(&conf, &["run", long.to_str().unwrap(), "--executor", "slurm", "--no-requeue", "--cache-dir", &cache]);
    assert!(ok && out.contains("1 of 1 cells"), "{out}{err}");
    wait_idle(&conf, "the resumed cell");
    let resumed = read_metrics(&dir.join("metrics.csv")).unwrap();
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    assert!(log.contains("pre-empted"), "{log}");

    // the same cell, uninterrupted, locally
    let (ok, out, err) = harness(&["run", long.to_str().unwrap(), "--out", t.path().join("long-local").to_str().unwrap(), "--cache-dir", &cache]);
    assert!(ok, "{out}{err}");
    let whole = read_metrics(&cell_dir(&t.path().join("long-local"), "ohem-s0").join("metrics.csv")).unwrap();
    assert_eq!(resumed.len(), 8);
    assert_eq!(resumed.iter().map(outcome).collect::<Vec<_>>(), whole.iter().map(outcome).collect::<Vec<_>>(), "a pre-empted and resumed Slurm cell differs from an uninterrupted one");
    drop(cluster);
}
