//! ohem-harness: offline hard-negative mining vs OHEM on one Fast R-CNN trainer.
//!
//! The modules follow the pipeline, one stage each:
//! [`data`] → [`proposals`] → [`model`] → [`pretrain`] → [`sampler`] → [`trainer`] → [`eval`] → [`harness`] → [`report`].
//! Beneath them all: [`config`] (the typed configuration every stage reads),
//! [`boxes`] (the box geometry every stage shares) and [`rundir`] (the
//! on-disk format of run and results directories). [`cli`] is the command
//! line, kept apart from the library.

pub mod bench;
pub mod boxes;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod harness;
pub mod model;
pub mod pretrain;
pub mod proposals;
pub mod report;
pub mod rundir;
pub mod sampler;
pub mod trainer;

/// The project's cache folder: `$OHEM_CACHE`, else `$XDG_CACHE_HOME/ohem-harness`,
/// else `~/.cache/ohem-harness`. Proposals and pre-trained backbones live under it.
pub fn cache_root() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os("OHEM_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("ohem-harness")
}

/// Shuffles `v` in place (Fisher–Yates, from the back), the same draws for the same generator state:
/// the trainer's data order and the pre-training's crops and held-out images.
pub fn shuffle<T>(v: &mut [T], rng: &mut rand_chacha::ChaCha8Rng) {
    use rand::Rng;
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// A progress bar on stderr, or a hidden one when `show` is false (tests, `--quiet`).
pub fn progress_bar(len: u64, msg: &'static str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} ({elapsed} < {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

/// A text file's contents, or an error that says in words what is wrong with `path` (not
/// found, a folder, not text), then `what` it should be; never "(os error N)".
pub fn read_text(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use std::io::ErrorKind::*;
    std::fs::read_to_string(path).map_err(|e| {
        let why = match e.kind() {
            NotFound => "not found".to_string(),
            IsADirectory => "is a folder, not a file".to_string(),
            PermissionDenied => "permission denied".to_string(),
            InvalidData => "is not UTF-8 text".to_string(),
            _ => e.to_string().split(" (os error").next().unwrap_or_default().to_string(),
        };
        anyhow::anyhow!("{}: {why} ({what})", path.display())
    })
}

/// "1m05s", "2h03m".
pub fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Plain progress lines for a process without a terminal (a log file, a Slurm
/// task): [`PlainLines::due`] is true at the first call and then once every
/// `every`, so a watcher sees a line at the start and at that pace after.
pub struct PlainLines {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
}

impl PlainLines {
    /// Lines every `every` when `show` and stderr is not a terminal (a terminal has the bar).
    pub fn new(show: bool, every: std::time::Duration) -> Option<Self> {
        use std::io::IsTerminal;
        (show && !std::io::stderr().is_terminal()).then_some(PlainLines { every, last: None })
    }

    pub fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            self.last = Some(std::time::Instant::now());
        }
        due
    }
}
