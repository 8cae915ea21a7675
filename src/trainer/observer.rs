//! What a training run tells the outside world, kept out of the loop: the
//! phase for `progress.json` (read by `harness run`'s cell lines and
//! `harness status`), a progress bar, and a line per mining round and per
//! epoch on stderr. The loop calls an [`Observer`]; [`Console`] is the one the
//! trainer uses, hidden but for `progress.json` when progress is off.

use crate::rundir::{report_phase, EpochRow, MiningStats, PhaseKind};

/// Receives what the training loop reports.
pub trait Observer {
    /// The current phase (`epoch` 0-based), and its steps done of `total` (0 / 0 when not counted).
    fn phase(&mut self, phase: PhaseKind, epoch: usize, done: usize, total: usize);
    /// A line for whoever watches (images left out, a resumed epoch).
    fn note(&mut self, line: &str);
    /// An epoch of `iters` iterations starts, at iteration `first_iter` (a resumed one later than 0).
    fn epoch_started(&mut self, iters: usize, first_iter: usize);
    /// An iteration of epoch `epoch` (0-based) finished; the epoch's mean loss so far.
    fn iteration_done(&mut self, epoch: usize, mean_loss: f64);
    /// Mining round `round` (1-based) finished.
    fn mined(&mut self, round: usize, stats: &MiningStats);
    /// The epoch's training iterations are over (finished, or stopped for a checkpoint).
    fn epoch_trained(&mut self);
    /// The epoch's row of `metrics.csv` was written.
    fn epoch_finished(&mut self, row: &EpochRow);
}

/// The trainer's observer: `progress.json` always (a no-op unless
/// [`crate::rundir::set_phase_dir`] was called), and with `progress` a bar and
/// lines on stderr.
pub struct Console {
    progress: bool,
    epochs: usize,
    bar: indicatif::ProgressBar,
}

impl Console {
    pub fn new(progress: bool, epochs: usize) -> Self {
        Console { progress, epochs, bar: indicatif::ProgressBar::hidden() }
    }

    /// The epochs of the schedule, once the training set's size has fixed them (`train.iterations`).
    pub fn set_epochs(&mut self, epochs: usize) {
        self.epochs = epochs;
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

impl Observer for Console {
    fn phase(&mut self, phase: PhaseKind, epoch: usize, done: usize, total: usize) {
        report_phase(phase, epoch + 1, self.epochs, done, total);
    }

    fn note(&mut self, line: &str) {
        if self.progress {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }

    fn epoch_started(&mut self, iters: usize, first_iter: usize) {
        self.bar = crate::progress_bar(iters as u64, "training", self.progress);
        self.bar.inc(first_iter as u64);
    }

    fn iteration_done(&mut self, epoch: usize, mean_loss: f64) {
        self.bar.set_message(format!("epoch {}/{} loss {mean_loss:.3}", epoch + 1, self.epochs));
        self.bar.inc(1);
    }

    fn mined(&mut self, round: usize, s: &MiningStats) {
        self.note(&format!(
            "mining round {round}: {} hard negatives in {:.1}s (mean loss {} vs {} for a random negative)",
            s.mined,
            s.seconds,
            opt(s.mined_loss, 3),
            opt(s.random_loss, 3)
        ));
    }

    fn epoch_trained(&mut self) {
        self.bar.finish_and_clear();
    }

    fn epoch_finished(&mut self, r: &EpochRow) {
        let rpn = match (r.loss_rpn_obj, r.loss_rpn_box) {
            (Some(o), Some(b)) => format!(", rpn obj {o:.4}, rpn box {b:.4}"),
            _ => String::new(),
        };
        self.note(&format!(
            "epoch {:>3}: loss {:.4} (cls {:.4}, bbox {:.4}{rpn}), fg {:.2}, train {:.1}s, eval {:.1}s, mAP07 {}",
            r.epoch,
            r.loss,
            r.loss_cls,
            r.loss_bbox,
            r.fg_fraction,
            r.train_s,
            r.eval_s,
            opt(r.map_voc07, 4)
        ));
    }
}
