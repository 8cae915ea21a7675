//! Checkpoints, in one place: the end of every epoch, and inside an epoch on
//! pre-emption (Slurm's warning signal, `scancel`); saving, restoring and
//! pruning them.
//!
//! An epoch's checkpoint, `checkpoints/epoch_NNN.*`: the weights
//! (`.safetensors`, written last: it marks the set complete), the optimiser's
//! momenta (`.sgd.safetensors`) and the sampler's state (`.sampler.json`, a
//! mined cache; absent for samplers without state). The newest
//! `train.keep_checkpoints` are kept.
//!
//! Inside an epoch, the trainer finishes the current iteration, writes
//! everything the rest of the epoch depends on, and exits; a rerun continues
//! at that iteration and produces the same losses and mAP as a run never
//! stopped. What the rest of an epoch depends on: the weights, the optimiser's
//! momenta, the sampler's state, the epoch's running sums, the mining rounds
//! logged so far, the position in the epoch's data-order / flip generator
//! (ChaCha, by word position), and the state of libtorch's default
//! generators, which the samplers draw from (read and restored through
//! `csrc/rng_state.cpp`, since tch can only seed them). Files, in the folder
//! `checkpoints/partial/`: `partial.safetensors`, `partial.sgd.safetensors`,
//! `partial.sampler.json`, `partial.rng.safetensors` and `partial.json`.
//!
//! A mid-epoch checkpoint is used whole or not at all. It is written into a
//! fresh folder, `partial.tmp/`, and only once every file is there does it
//! replace the previous one, by renames: the previous folder to `partial.old/`,
//! then `partial.tmp/` to `partial/`, then `partial.old/` removed. A kill at any
//! point leaves either the previous checkpoint or the new one complete under
//! `partial/`, or no `partial/` and a complete `partial.tmp/` (its
//! `partial.json`, written last, present), which a resume swaps in; an
//! incomplete `partial.tmp/` is never read. (Runs from before this layout kept
//! the files directly in `checkpoints/`; a resume still reads them.)

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Tensor};

use super::step::IterOut;
use crate::model::sgd::Sgd;
use crate::rundir::{write_file, EpochRow, MiningRow, CHECKPOINTS};
use crate::sampler::Sampler;

extern "C" {
    fn ohem_rng_get_state(result: *mut *mut torch_sys::C_tensor, cuda: i32, index: i64) -> *mut std::ffi::c_char;
    fn ohem_rng_set_state(state: *const torch_sys::C_tensor, cuda: i32, index: i64) -> *mut std::ffi::c_char;
    fn ohem_free_message(m: *mut std::ffi::c_char);
}

fn take_message(err: *mut std::ffi::c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a malloc'ed C string from csrc/, ours to free.
    let msg = unsafe {
        let m = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
        ohem_free_message(err);
        m
    };
    bail!("libtorch random generator: {msg}")
}

/// The generators a run on `device` draws from: the CPU's, and the GPU's when on one.
fn generators(device: Device) -> Vec<(&'static str, i32, i64)> {
    let mut v = vec![("cpu", 0, 0)];
    if let Device::Cuda(i) = device {
        v.push(("cuda", 1, i as i64));
    }
    v
}

/// The states of the default generators a run on `device` draws from.
pub fn rng_states(device: Device) -> Result<Vec<(String, Tensor)>> {
    generators(device)
        .into_iter()
        .map(|(name, cuda, index)| {
            let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
            // SAFETY: on success `out` is a new tensor that we own.
            take_message(unsafe { ohem_rng_get_state(&mut out, cuda, index) })?;
            Ok((name.to_string(), unsafe { Tensor::from_ptr(out) }))
        })
        .collect()
}

/// Restores states that [`rng_states`] returned.
pub fn set_rng_states(device: Device, states: &[(String, Tensor)]) -> Result<()> {
    for (name, cuda, index) in generators(device) {
        let Some((_, t)) = states.iter().find(|(n, _)| n == name) else { bail!("the checkpoint lacks the {name} generator's state") };
        // SAFETY: `t` is a live tensor for the whole call.
        take_message(unsafe { ohem_rng_set_state(t.as_ptr(), cuda, index) })?;
    }
    Ok(())
}

/// The running sums of an epoch, turned into a row of metrics.csv at its end.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    pub iterations: usize,
    pub loss_cls: f64,
    pub loss_bbox: f64,
    pub rois: f64,
    pub fg: f64,
    pub sel_loss_sum: f64,
    pub all_loss_sum: f64,
    pub all_rois: f64,
    pub mine_s: f64,
    /// Images and RoIs (before sampling) seen; absent in checkpoints that predate them.
    #[serde(default)]
    pub images: f64,
    #[serde(default)]
    pub rois_all: f64,
    /// Seconds the training steps waited for their images (absent in checkpoints that predate it).
    #[serde(default)]
    pub load_s: f64,
}

impl EpochStats {
    /// Adds one iteration's figures.
    pub fn add(&mut self, out: &IterOut) {
        self.iterations += 1;
        self.loss_cls += out.loss_cls;
        self.loss_bbox += out.loss_bbox;
        self.rois += out.rois as f64;
        self.fg += out.fg as f64;
        self.sel_loss_sum += out.sel_loss_sum;
        if let Some((s, n)) = out.all_loss {
            self.all_loss_sum += s;
            self.all_rois += n as f64;
        }
        self.images += out.images as f64;
        self.rois_all += out.rois_all as f64;
    }

    /// Mean training loss so far.
    pub fn mean_loss(&self) -> f64 {
        (self.loss_cls + self.loss_bbox) / self.iterations as f64
    }

    /// The epoch's row of `metrics.csv`; the caller fills in what happened after training.
    pub fn row(&self, epoch: usize, train_s: f64, cache_size: usize, lr: f64) -> EpochRow {
        let n = self.iterations.max(1) as f64;
        EpochRow {
            epoch: epoch + 1,
            iterations: self.iterations,
            train_s,
            mine_s: self.mine_s,
            eval_s: 0.0,
            wall_s: 0.0,
            loss: (self.loss_cls + self.loss_bbox) / n,
            loss_cls: self.loss_cls / n,
            loss_bbox: self.loss_bbox / n,
            rois_per_iter: self.rois / n,
            fg_fraction: self.fg / self.rois.max(1.0),
            sel_loss: self.sel_loss_sum / self.rois.max(1.0),
            all_loss: (self.all_rois > 0.0).then(|| self.all_loss_sum / self.all_rois),
            cache_size,
            lr,
            map_voc07: None,
            map_voc10: None,
            rois_per_image: (self.images > 0.0).then(|| self.rois_all / self.images),
            load_s: Some(self.load_s),
            // the COCO columns: empty until the epoch is evaluated
            ..EpochRow::default()
        }
    }
}

/// `partial.json`: where in the epoch the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    /// 0-based epoch in progress, and the iterations of it already done.
    pub epoch: usize,
    pub next_iter: usize,
    pub stats: EpochStats,
    /// Seconds of this epoch so far (training and mining), and the run's wall clock at the checkpoint.
    pub elapsed_s: f64,
    pub wall_s: f64,
    /// Word position of the epoch's ChaCha generator (u128, as a decimal string).
    pub rng_word_pos: String,
    /// Mining rounds of this epoch so far.
    pub mining: Vec<MiningRow>,
}

/// The checkpoints of one run directory.
pub struct Checkpoints {
    dir: PathBuf,
    /// For tests: a mid-epoch checkpoint stops with an error after this many of its writes
    /// and renames, leaving the files as a kill at that point would.
    pub kill_after_writes: Option<usize>,
}

/// The files of a mid-epoch checkpoint (`partial.<ext>`), in the order they are written.
const PARTIAL_FILES: [&str; 5] = ["sampler.json", "sgd.safetensors", "safetensors", "rng.safetensors", "json"];

impl Checkpoints {
    pub fn new(run_dir: &Path) -> Self {
        Checkpoints { dir: run_dir.join(CHECKPOINTS), kill_after_writes: None }
    }

    /// The weights file of the checkpoint after `epoch` (1-based) epochs.
    pub fn epoch_path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("epoch_{epoch:03}.safetensors"))
    }

    /// The folder of the current mid-epoch checkpoint, and of one being written or replaced.
    fn partial_dir(&self, which: &str) -> PathBuf {
        self.dir.join(which)
    }

    /// `partial.<ext>` of the current mid-epoch checkpoint: in `partial/`, or where runs
    /// from before that layout left it (directly in `checkpoints/`).
    fn partial_path(&self, ext: &str) -> PathBuf {
        let name = format!("partial.{ext}");
        let legacy = self.dir.join(&name);
        if !self.partial_dir("partial").is_dir() && legacy.is_file() {
            legacy
        } else {
            self.partial_dir("partial").join(name)
        }
    }

    /// Called before each write or rename of a mid-epoch checkpoint: stops there once
    /// `kill_after_writes` of them are done.
    fn step(&self, done: &mut usize) -> Result<()> {
        if self.kill_after_writes == Some(*done) {
            bail!("simulated kill after {done} writes of a mid-epoch checkpoint");
        }
        *done += 1;
        Ok(())
    }

    /// Finishes a swap that a kill interrupted: with no `partial/`, a `partial.tmp/` that holds
    /// `partial.json` (written last, itself by an atomic rename) is a complete checkpoint, and
    /// becomes `partial/`; one without it is incomplete and left for the next save to remove.
    fn finish_swap(&self) -> Result<()> {
        let (cur, tmp, old) = (self.partial_dir("partial"), self.partial_dir("partial.tmp"), self.partial_dir("partial.old"));
        if !cur.exists() && tmp.join("partial.json").is_file() {
            std::fs::rename(&tmp, &cur).with_context(|| format!("renaming {} to {}", tmp.display(), cur.display()))?;
        }
        if cur.is_dir() {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    /// Removes every checkpoint (starting over).
    pub fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Saves the checkpoint after `epoch` (1-based) epochs: the sampler's and
    /// optimiser's state first, the weights last (each replaced atomically).
    pub fn save_epoch(&self, epoch: usize, vs: &nn::VarStore, opt: &Sgd, sampler: &dyn Sampler) -> Result<()> {
        let ck = self.epoch_path(epoch);
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        save_sampler(&ck.with_extension("sampler.json"), sampler)?;
        let sgd_ck = ck.with_extension("sgd.safetensors");
        opt.save(&sgd_ck.with_extension("tmp"))?;
        std::fs::rename(sgd_ck.with_extension("tmp"), &sgd_ck).with_context(|| format!("writing {}", sgd_ck.display()))?;
        let tmp = ck.with_extension("tmp.safetensors");
        vs.save(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &ck).with_context(|| format!("writing {}", ck.display()))?;
        Ok(())
    }

    /// Saves a checkpoint inside an epoch: every file into a fresh `partial.tmp/`, which then
    /// replaces `partial/` by renames (the module's doc), so that a resume reads one whole checkpoint.
    pub fn save_partial(&self, partial: &Partial, vs: &nn::VarStore, opt: &Sgd, sampler: &dyn Sampler, device: Device) -> Result<()> {
        let (cur, tmp, old) = (self.partial_dir("partial"), self.partial_dir("partial.tmp"), self.partial_dir("partial.old"));
        self.finish_swap()?;
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let p = |e: &str| tmp.join(format!("partial.{e}"));
        let mut done = 0;
        self.step(&mut done)?;
        save_sampler(&p("sampler.json"), sampler)?;
        self.step(&mut done)?;
        opt.save(&p("sgd.safetensors"))?;
        self.step(&mut done)?;
        vs.save(p("safetensors")).with_context(|| format!("writing {}", p("safetensors").display()))?;
        self.step(&mut done)?;
        let states = rng_states(device)?;
        let rng = p("rng.safetensors");
        Tensor::write_safetensors(&states.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect::<Vec<_>>(), &rng).with_context(|| format!("writing {}", rng.display()))?;
        self.step(&mut done)?;
        write_file(&p("json"), serde_json::to_string_pretty(partial)?.as_bytes())?;
        // the swap: the previous checkpoint aside, the new one in, the previous one removed
        self.remove_legacy_partial();
        self.step(&mut done)?;
        if cur.exists() {
            std::fs::rename(&cur, &old).with_context(|| format!("renaming {} to {}", cur.display(), old.display()))?;
        }
        self.step(&mut done)?;
        std::fs::rename(&tmp, &cur).with_context(|| format!("renaming {} to {}", tmp.display(), cur.display()))?;
        self.step(&mut done)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Restores a run that finished `start_epoch` epochs: the epoch's
    /// checkpoint, then a checkpoint inside the next epoch when there is one,
    /// which it returns (a stale one, of another epoch, is removed).
    pub fn restore(&self, start_epoch: usize, vs: &mut nn::VarStore, opt: &mut Sgd, sampler: &mut dyn Sampler) -> Result<Option<Partial>> {
        if start_epoch > 0 {
            let ck = self.epoch_path(start_epoch);
            vs.load(&ck).with_context(|| format!("resuming from {}", ck.display()))?;
            opt.load(&ck.with_extension("sgd.safetensors"))?;
            restore_sampler(&ck.with_extension("sampler.json"), sampler)?;
        }
        let Some(partial) = self.read_partial(start_epoch)? else { return Ok(None) };
        let p = |e: &str| self.partial_path(e);
        vs.load(p("safetensors")).with_context(|| format!("resuming from {}", p("safetensors").display()))?;
        opt.load(&p("sgd.safetensors"))?;
        restore_sampler(&p("sampler.json"), sampler)?;
        Ok(Some(partial))
    }

    /// Reads `partial.json` if there is one for `epoch` (0-based); a stale one (of another epoch) is removed.
    fn read_partial(&self, epoch: usize) -> Result<Option<Partial>> {
        self.finish_swap()?;
        let p = self.partial_path("json");
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let partial: Partial = serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        if partial.epoch != epoch {
            self.remove_partial();
            return Ok(None);
        }
        Ok(Some(partial))
    }

    /// The epoch generator's word position of a mid-epoch checkpoint, and libtorch's generators restored.
    pub fn restore_rngs(&self, partial: &Partial, device: Device) -> Result<u128> {
        let pos = partial.rng_word_pos.parse::<u128>().with_context(|| format!("{}: rng_word_pos", self.partial_path("json").display()))?;
        let rng = self.partial_path("rng.safetensors");
        let states = Tensor::read_safetensors(&rng).with_context(|| format!("reading {}", rng.display()))?;
        set_rng_states(device, &states)?;
        Ok(pos)
    }

    /// Removes a mid-epoch checkpoint (after its epoch finished, or when starting over), with
    /// any half-written or half-swapped one.
    pub fn remove_partial(&self) {
        for which in ["partial", "partial.tmp", "partial.old"] {
            let _ = std::fs::remove_dir_all(self.partial_dir(which));
        }
        self.remove_legacy_partial();
    }

    /// The files of a mid-epoch checkpoint written directly in `checkpoints/` (the layout before `partial/`).
    fn remove_legacy_partial(&self) {
        for ext in PARTIAL_FILES {
            let _ = std::fs::remove_file(self.dir.join(format!("partial.{ext}")));
        }
    }

    /// Keeps the newest `keep` epoch checkpoints of the `newest` written.
    pub fn prune(&self, newest: usize, keep: usize) {
        for old in 1..=newest.saturating_sub(keep) {
            let ck = self.epoch_path(old);
            let _ = std::fs::remove_file(&ck);
            let _ = std::fs::remove_file(ck.with_extension("sgd.safetensors"));
            let _ = std::fs::remove_file(ck.with_extension("sampler.json"));
        }
    }
}

/// Writes a sampler's state beside a checkpoint (nothing for a sampler without state).
fn save_sampler(path: &Path, sampler: &dyn Sampler) -> Result<()> {
    let state = sampler.state();
    if !state.is_null() {
        write_file(path, serde_json::to_string(&state)?.as_bytes())?;
    }
    Ok(())
}

/// Restores a sampler's state from beside a checkpoint, when one was written.
fn restore_sampler(path: &Path, sampler: &mut dyn Sampler) -> Result<()> {
    if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sampler.restore(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)?;
    }
    Ok(())
}
