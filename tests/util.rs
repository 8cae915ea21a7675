//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ohem_harness::data::synth::{make_dataset, SynthSize};

/// The tiny generated dataset, made once per test binary run.
pub fn tiny_dataset() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ohem-test-tiny-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        make_dataset(&dir, SynthSize::Tiny, 0, false).expect("tiny dataset");
        dir
    })
}

/// Copies a dataset root into a fresh temporary folder, for tests that break it.
pub fn copy_of(src: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(src, t.path());
    t
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// Runs the `harness` binary; returns (exit success, stdout, stderr).
pub fn harness(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).args(args).arg("--quiet").output().expect("run harness");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A proposal cache shared by the tests of one run.
pub fn cache_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| std::env::temp_dir().join(format!("ohem-test-cache-{}", std::process::id())))
}

/// A small, fast training config on the tiny dataset; `extra` is appended YAML.
pub fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let yaml = format!(
        "seed: 1\ndevice: cpu\ndataset:\n  root: {}\nmodel:\n  fc_dim: 64\n  init: scratch\ninput:\n  scale: 160\n  max_size: 224\ntrain:\n  epochs: 2\n  iters_per_epoch: 3\n  lr: 0.01\n  warmup_iters: 0\n  lr_steps: [1]\n{extra}",
        tiny_dataset().display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Training options for tests: no progress bars, the shared cache.
pub fn test_opts() -> ohem_harness::trainer::TrainOptions {
    ohem_harness::trainer::TrainOptions { progress: false, force: false, cache_dir: Some(cache_dir().to_path_buf()), pretrain_dir: Some(cache_dir().join("pretrain")), stop: None, kill_checkpoint_after: None, stop_in: None, warnings: None, class_every: None }
}

/// libtorch's CPU random generator is global to the process; tests whose
/// outcome depends on seeding it hold this lock so parallel tests cannot draw
/// from it in between.
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The peer venv's python (scripts/peer-venv.sh): `OHEM_PEER_PYTHON`, else the venv's usual place.
pub fn peer_python() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("OHEM_PEER_PYTHON") {
        return Some(p.into());
    }
    let cache = std::env::var_os("OHEM_CACHE").map(std::path::PathBuf::from).or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| std::path::PathBuf::from(x).join("ohem-harness"))).unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ohem-harness"));
    let p = cache.join("peer-venv/bin/python");
    p.exists().then_some(p)
}
