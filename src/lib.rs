//! ohem-harness: offline hard-negative mining vs OHEM on one Fast R-CNN trainer.
//!
//! The modules follow the pipeline, one stage each:
//! [`data`] → [`proposals`] → [`model`] → [`sampler`] → [`trainer`] → [`eval`] → [`harness`] → [`report`].
//! [`boxes`] holds the box geometry every stage shares; [`cli`] is the
//! command line, kept apart from the library.

pub mod bench;
pub mod boxes;
pub mod cli;
pub mod data;
pub mod eval;
pub mod harness;
pub mod model;
pub mod proposals;
pub mod report;
pub mod sampler;
pub mod trainer;

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
