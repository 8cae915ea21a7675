//! Checkpoints, in one place: the end of every epoch, and inside an epoch on
//! pre-emption (Slurm's warning signal, `scancel`); saving, restoring and
//! pruning them.
//!
//! An epoch's checkpoint, `checkpoints/epoch_NNN.*`: the sampler's state
//! (`.sampler.json`, a mined cache; absent for samplers without state), the
//! optimiser's momenta (`.sgd.safetensors`), the weights (`.safetensors`) and,
//! written last, `epoch_NNN.json`: the SHA-256 of each of those files, the
//! epoch's row of `metrics.csv` as it stood before evaluation and the epoch's
//! mining rounds. The manifest marks the set complete. The newest
//! `train.keep_checkpoints` are kept.
//!
//! Every file is flushed to the disk (`fsync`) before it is renamed into
//! place, and its folder after, so a power loss leaves the previous state or
//! the new one. A checkpoint is used only if every file matches its
//! checksum and loads: [`Checkpoints::restore`] tries, newest first, an
//! epoch that was checkpointed but not yet evaluated (a stop during the
//! evaluation), the mid-epoch checkpoint, then each epoch checkpoint back to
//! the first, and at last the initial weights, with a warning naming each
//! file it passes over. A damaged checkpoint costs the work since the
//! previous one, never the cell.
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
//! `partial.sampler.json`, `partial.rng.safetensors` and `partial.json`
//! (written last, with the others' checksums).
//!
//! A mid-epoch checkpoint is used whole or not at all. It is written into a
//! fresh folder, `partial.tmp/`, and only once every file is there does it
//! replace the previous one, by renames: the previous folder to `partial.old/`,
//! then `partial.tmp/` to `partial/`, then `partial.old/` removed. A kill at any
//! point leaves either the previous checkpoint or the new one complete under
//! `partial/`, or no `partial/` and a complete `partial.tmp/` (its
//! `partial.json`, written last, present), which a resume swaps in; an
//! incomplete `partial.tmp/` is never read. (Runs from before this layout kept
//! the files directly in `checkpoints/`, and epoch checkpoints without a
//! manifest; a resume still reads them.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Tensor};

use super::step::IterOut;
use crate::model::sgd::Sgd;
use crate::rundir::{rename_durably, sync_file, write_file, EpochRow, MiningRow, CHECKPOINTS};
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
    /// Streamed images read from disk by the steps, and those a worker decoded ahead (0 when held).
    #[serde(default)]
    pub streamed: f64,
    #[serde(default)]
    pub prefetched: f64,
    /// Seconds of each iteration (the batch's images and the step); this process's CPU seconds,
    /// other processes' busy seconds and every core's seconds over the epoch so far (absent in
    /// checkpoints that predate them).
    #[serde(default)]
    pub iter_s: Vec<f64>,
    #[serde(default)]
    pub cpu_s: f64,
    #[serde(default)]
    pub others_cpu_s: f64,
    #[serde(default)]
    pub machine_cpu_s: f64,
    /// Faster R-CNN: the RPN's losses summed over the iterations (absent in checkpoints that
    /// predate them, and 0 for Fast R-CNN).
    #[serde(default)]
    pub loss_rpn_obj: f64,
    #[serde(default)]
    pub loss_rpn_box: f64,
    #[serde(default)]
    pub rpn: bool,
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
        if let Some((o, b)) = out.loss_rpn {
            self.loss_rpn_obj += o;
            self.loss_rpn_box += b;
            self.rpn = true;
        }
    }

    /// Mean training loss so far (the RPN's included).
    pub fn mean_loss(&self) -> f64 {
        (self.loss_cls + self.loss_bbox + self.loss_rpn_obj + self.loss_rpn_box) / self.iterations as f64
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
            loss: (self.loss_cls + self.loss_bbox + self.loss_rpn_obj + self.loss_rpn_box) / n,
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
            streamed_images: (self.streamed > 0.0).then_some(self.streamed),
            prefetched_images: (self.streamed > 0.0).then_some(self.prefetched),
            cpu_s: (self.machine_cpu_s > 0.0).then_some(self.cpu_s),
            iter_median_s: super::cpu::median_iqr(&self.iter_s).map(|m| m.0),
            iter_iqr_s: super::cpu::median_iqr(&self.iter_s).map(|m| m.1),
            others_cpu_share: (self.machine_cpu_s > 0.0).then(|| self.others_cpu_s / self.machine_cpu_s),
            loss_rpn_obj: self.rpn.then(|| self.loss_rpn_obj / n),
            loss_rpn_box: self.rpn.then(|| self.loss_rpn_box / n),
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
    /// The SHA-256 of each other file of the checkpoint, by name (absent in checkpoints that predate it).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// `epoch_NNN.json`, written after the epoch's other files: it marks the checkpoint complete.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochManifest {
    /// Epochs trained (1-based: the checkpoint after epoch `epoch`).
    pub epoch: usize,
    /// The SHA-256 of each file of the checkpoint, by name.
    pub files: BTreeMap<String, String>,
    /// The epoch's row of `metrics.csv` before evaluation (its `wall_s`: the run's wall clock at the checkpoint).
    pub row: EpochRow,
    /// The epoch's mining rounds.
    pub mining: Vec<MiningRow>,
}

/// Where a resumed run starts ([`Checkpoints::restore`]).
#[derive(Debug)]
pub enum Resume {
    /// From the initial weights: no checkpoint, or none that could be used.
    Fresh,
    /// After `done` whole epochs (their rows are kept, any later ones dropped).
    Epoch(usize),
    /// After epoch `manifest.epoch`, trained and checkpointed but not evaluated: evaluate it first.
    Evaluate(EpochManifest),
    /// Inside epoch `partial.epoch` (0-based), after `partial.next_iter` iterations.
    Partial(Partial),
}

/// The SHA-256 (hex) of a file's bytes.
fn digest(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Checks every file a manifest names against its checksum (the files beside `dir`'s entries).
fn check_files(dir: &Path, files: &BTreeMap<String, String>) -> Result<()> {
    for (name, want) in files {
        let path = dir.join(name);
        let got = digest(&path)?;
        if &got != want {
            bail!("{}: its SHA-256 is not the one its checkpoint recorded (damaged or replaced)", path.display());
        }
    }
    Ok(())
}

/// Saves with `save` into a temporary file beside `path`, flushes it, and renames it into place;
/// returns the file's SHA-256. The temporary file keeps the extension (`epoch_001.tmp.safetensors`):
/// libtorch picks the format from it.
fn save_durably(path: &Path, save: impl FnOnce(&Path) -> Result<()>) -> Result<String> {
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_extension(format!("tmp.{ext}"));
    save(&tmp).with_context(|| format!("writing {}", path.display()))?;
    sync_file(&tmp)?;
    let sum = digest(&tmp)?;
    rename_durably(&tmp, path)?;
    Ok(sum)
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
            rename_durably(&tmp, &cur)?;
        }
        if cur.is_dir() {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    /// Whether the run directory has a checkpoints folder.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Removes every checkpoint (starting over).
    pub fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The manifest of the checkpoint after `epoch` (1-based) epochs.
    pub fn manifest_path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("epoch_{epoch:03}.json"))
    }

    /// Saves the checkpoint after `epoch` (1-based) epochs: the sampler's and
    /// optimiser's state, the weights, then the manifest with their checksums,
    /// `row` (the epoch's row before evaluation) and the epoch's `mining` rounds.
    pub fn save_epoch(&self, epoch: usize, vs: &nn::VarStore, opt: &Sgd, sampler: &dyn Sampler, row: &EpochRow, mining: &[MiningRow]) -> Result<()> {
        let ck = self.epoch_path(epoch);
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let mut files = BTreeMap::new();
        let name = |p: &Path| p.file_name().expect("a file").to_string_lossy().into_owned();
        let sampler_file = ck.with_extension("sampler.json");
        if save_sampler(&sampler_file, sampler)? {
            files.insert(name(&sampler_file), digest(&sampler_file)?);
        } else {
            let _ = std::fs::remove_file(&sampler_file);
        }
        let sgd_ck = ck.with_extension("sgd.safetensors");
        files.insert(name(&sgd_ck), save_durably(&sgd_ck, |t| opt.save(t))?);
        files.insert(name(&ck), save_durably(&ck, |t| Ok(vs.save(t)?))?);
        let m = EpochManifest { epoch, files, row: row.clone(), mining: mining.to_vec() };
        write_file(&self.manifest_path(epoch), serde_json::to_string_pretty(&m)?.as_bytes())?;
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
        let mut files = BTreeMap::new();
        self.step(&mut done)?;
        if save_sampler(&p("sampler.json"), sampler)? {
            files.insert("partial.sampler.json".to_string(), digest(&p("sampler.json"))?);
        }
        self.step(&mut done)?;
        files.insert("partial.sgd.safetensors".into(), save_durably(&p("sgd.safetensors"), |t| opt.save(t))?);
        self.step(&mut done)?;
        files.insert("partial.safetensors".into(), save_durably(&p("safetensors"), |t| Ok(vs.save(t)?))?);
        self.step(&mut done)?;
        let states = rng_states(device)?;
        let named: Vec<(&str, Tensor)> = states.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect();
        files.insert("partial.rng.safetensors".into(), save_durably(&p("rng.safetensors"), |t| Ok(Tensor::write_safetensors(&named, t)?))?);
        self.step(&mut done)?;
        let partial = Partial { files, ..partial.clone() };
        write_file(&p("json"), serde_json::to_string_pretty(&partial)?.as_bytes())?;
        // the swap: the previous checkpoint aside, the new one in, the previous one removed
        self.remove_legacy_partial();
        self.step(&mut done)?;
        if cur.exists() {
            rename_durably(&cur, &old)?;
        }
        self.step(&mut done)?;
        rename_durably(&tmp, &cur)?;
        self.step(&mut done)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Restores a run whose `metrics.csv` holds `rows` finished epochs into `vs`, `opt` and
    /// `sampler`: from the newest checkpoint that is whole (see the module's doc), passing over
    /// a damaged one with a warning (`warn`) that names its file. `fresh` makes a new optimiser
    /// and sampler: each candidate loads into fresh ones. On [`Resume::Fresh`] after a failed
    /// candidate, `vs` may hold part of one: the caller rebuilds the model.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(&self, rows: usize, vs: &mut nn::VarStore, opt: &mut Sgd, sampler: &mut Box<dyn Sampler>, fresh: &dyn Fn(&nn::VarStore) -> (Sgd, Box<dyn Sampler>), device: Device, warn: &mut dyn FnMut(String)) -> Result<Resume> {
        // an epoch trained and checkpointed whose evaluation did not finish
        if let Some(m) = self.read_manifest(rows + 1, warn) {
            let (mut o, mut s) = fresh(vs);
            match self.load_epoch(rows + 1, Some(&m), vs, &mut o, s.as_mut()) {
                Ok(()) => {
                    (*opt, *sampler) = (o, s);
                    self.remove_partial();
                    return Ok(Resume::Evaluate(m));
                }
                Err(e) => warn(format!("{e:#}; evaluating epoch {} from it is not possible, so it is trained again", rows + 1)),
            }
        }
        match self.read_partial(rows) {
            Ok(None) => {}
            Ok(Some(p)) => {
                let (mut o, mut s) = fresh(vs);
                match self.load_partial(&p, vs, &mut o, s.as_mut(), device) {
                    Ok(()) => {
                        (*opt, *sampler) = (o, s);
                        return Ok(Resume::Partial(p));
                    }
                    Err(e) => warn(format!("{e:#}; the mid-epoch checkpoint is passed over (epoch {} is trained again from its start)", rows + 1)),
                }
                self.remove_partial();
            }
            Err(e) => {
                warn(format!("{e:#}; the mid-epoch checkpoint is passed over (epoch {} is trained again from its start)", rows + 1));
                self.remove_partial();
            }
        }
        for k in (1..=rows).rev() {
            let m = self.read_manifest(k, warn);
            // a checkpoint without a manifest predates manifests; one with a manifest that could
            // not be read is damaged (read_manifest said so) and is not loaded unchecked
            if m.is_none() && (self.manifest_path(k).exists() || !self.epoch_path(k).exists()) {
                continue;
            }
            let (mut o, mut s) = fresh(vs);
            match self.load_epoch(k, m.as_ref(), vs, &mut o, s.as_mut()) {
                Ok(()) => {
                    if k + 1 == rows {
                        warn(format!("resuming after epoch {k}: epoch {rows} is trained again"));
                    } else if k < rows {
                        warn(format!("resuming after epoch {k}: epochs {} to {rows} are trained again", k + 1));
                    }
                    (*opt, *sampler) = (o, s);
                    return Ok(Resume::Epoch(k));
                }
                Err(e) => warn(format!("{e:#}; the checkpoint after epoch {k} is passed over")),
            }
        }
        if rows > 0 {
            warn(format!("no checkpoint of the {rows} finished epochs could be used: training again from the initial weights"));
        }
        (*opt, *sampler) = fresh(vs);
        Ok(Resume::Fresh)
    }

    /// The manifest of the checkpoint after `epoch` epochs, if there is a readable one
    /// (an unreadable one is reported and passed over).
    fn read_manifest(&self, epoch: usize, warn: &mut dyn FnMut(String)) -> Option<EpochManifest> {
        let path = self.manifest_path(epoch);
        if !path.exists() {
            return None;
        }
        let parsed = std::fs::read_to_string(&path).map_err(anyhow::Error::from).and_then(|t| Ok(serde_json::from_str::<EpochManifest>(&t)?));
        match parsed {
            Ok(m) if m.epoch == epoch => Some(m),
            Ok(m) => {
                warn(format!("{}: names epoch {}, not {epoch}; passed over", path.display(), m.epoch));
                None
            }
            Err(e) => {
                warn(format!("{}: unreadable ({e}); passed over", path.display()));
                None
            }
        }
    }

    /// Loads the checkpoint after `epoch` epochs, its files checked against `manifest` when
    /// there is one (a checkpoint from before manifests is loaded as it is).
    fn load_epoch(&self, epoch: usize, manifest: Option<&EpochManifest>, vs: &mut nn::VarStore, opt: &mut Sgd, sampler: &mut dyn Sampler) -> Result<()> {
        let ck = self.epoch_path(epoch);
        if let Some(m) = manifest {
            check_files(&self.dir, &m.files)?;
        }
        vs.load(&ck).with_context(|| format!("{}: the weights do not load", ck.display()))?;
        opt.load(&ck.with_extension("sgd.safetensors"))?;
        restore_sampler(&ck.with_extension("sampler.json"), sampler)
    }

    /// Loads a mid-epoch checkpoint (it holds everything: the weights, the momenta, the
    /// sampler's state and the generators), its files checked against their checksums, and
    /// checks that its generators are those a run on `device` draws from.
    fn load_partial(&self, p: &Partial, vs: &mut nn::VarStore, opt: &mut Sgd, sampler: &mut dyn Sampler, device: Device) -> Result<()> {
        let path = |e: &str| self.partial_path(e);
        let dir = path("json").parent().expect("in a folder").to_path_buf();
        check_files(&dir, &p.files)?;
        vs.load(path("safetensors")).with_context(|| format!("{}: the weights do not load", path("safetensors").display()))?;
        opt.load(&path("sgd.safetensors"))?;
        restore_sampler(&path("sampler.json"), sampler)?;
        let rng = path("rng.safetensors");
        let states = Tensor::read_safetensors(&rng).with_context(|| format!("reading {}", rng.display()))?;
        for (name, _, _) in generators(device) {
            if !states.iter().any(|(n, _)| n == name) {
                bail!("{}: no state of the {name} generator (the checkpoint was taken on another device)", rng.display());
            }
        }
        p.rng_word_pos.parse::<u128>().with_context(|| format!("{}: rng_word_pos {:?} is not a number", path("json").display(), p.rng_word_pos))?;
        Ok(())
    }

    /// Reads `partial.json` if there is one for `epoch` (0-based); a stale one (of another epoch) is removed.
    fn read_partial(&self, epoch: usize) -> Result<Option<Partial>> {
        self.finish_swap()?;
        let p = self.partial_path("json");
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let partial: Partial = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", p.display()))?;
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

    /// Keeps the newest `keep` epoch checkpoints of the `newest` written (each manifest removed
    /// before its files, so that no manifest names files that are gone), and removes the
    /// temporary files a kill in the middle of a save left behind.
    pub fn prune(&self, newest: usize, keep: usize) {
        for old in 1..=newest.saturating_sub(keep) {
            let ck = self.epoch_path(old);
            let _ = std::fs::remove_file(self.manifest_path(old));
            let _ = std::fs::remove_file(&ck);
            let _ = std::fs::remove_file(ck.with_extension("sgd.safetensors"));
            let _ = std::fs::remove_file(ck.with_extension("sampler.json"));
        }
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.ends_with(".tmp.safetensors")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Writes a sampler's state beside a checkpoint (nothing for a sampler without state);
/// returns whether it wrote a file.
fn save_sampler(path: &Path, sampler: &dyn Sampler) -> Result<bool> {
    let state = sampler.state();
    if state.is_null() {
        return Ok(false);
    }
    write_file(path, serde_json::to_string(&state)?.as_bytes())?;
    Ok(true)
}

/// Restores a sampler's state from beside a checkpoint, when one was written.
fn restore_sampler(path: &Path, sampler: &mut dyn Sampler) -> Result<()> {
    if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sampler.restore(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?).with_context(|| format!("{}: not this sampler's state", path.display()))?;
    }
    Ok(())
}
