//! Checkpoints inside an epoch, for pre-emption (Slurm's warning signal,
//! `scancel`): the trainer finishes the current iteration, writes everything
//! the rest of the epoch depends on, and exits; a rerun continues at that
//! iteration and produces the same losses and mAP as a run never stopped.
//!
//! What the rest of an epoch depends on: the weights, the optimiser's momenta,
//! the sampler's state (a mined cache), the epoch's running sums, the mining
//! rounds logged so far, the position in the epoch's data-order / flip
//! generator (ChaCha, by word position), and the state of libtorch's default
//! generators, which the samplers draw from (read and restored through
//! `csrc/rng_state.cpp`, since tch can only seed them).
//!
//! Files, in `checkpoints/`: `partial.safetensors` (weights),
//! `partial.sgd.safetensors`, `partial.sampler.json`, `partial.rng.safetensors`,
//! and `partial.json`, written last, which marks the set complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

use crate::rundir::{write_file, MiningRow, CHECKPOINTS};

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

pub fn partial_path(run_dir: &Path, ext: &str) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(format!("partial.{ext}"))
}

/// Removes a mid-epoch checkpoint (after its epoch finished, or when starting over).
pub fn remove_partial(run_dir: &Path) {
    for ext in ["json", "safetensors", "sgd.safetensors", "sampler.json", "rng.safetensors"] {
        let _ = std::fs::remove_file(partial_path(run_dir, ext));
    }
}

/// Reads `partial.json` if there is one for `epoch` (0-based); a stale one (of another epoch) is removed.
pub fn read_partial(run_dir: &Path, epoch: usize) -> Result<Option<Partial>> {
    let p = partial_path(run_dir, "json");
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let partial: Partial = serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    if partial.epoch != epoch {
        remove_partial(run_dir);
        return Ok(None);
    }
    Ok(Some(partial))
}

/// Writes the small files of a mid-epoch checkpoint; the caller has written the
/// weights, optimiser and sampler files. `partial.json` goes last.
pub fn write_partial(run_dir: &Path, partial: &Partial, device: Device) -> Result<()> {
    let states = rng_states(device)?;
    let rng = partial_path(run_dir, "rng.safetensors");
    Tensor::write_safetensors(&states.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect::<Vec<_>>(), &rng).with_context(|| format!("writing {}", rng.display()))?;
    write_file(&partial_path(run_dir, "json"), serde_json::to_string_pretty(partial)?.as_bytes())?;
    Ok(())
}

/// Restores the generators of a mid-epoch checkpoint.
pub fn restore_rng(run_dir: &Path, device: Device) -> Result<()> {
    let rng = partial_path(run_dir, "rng.safetensors");
    let states = Tensor::read_safetensors(&rng).with_context(|| format!("reading {}", rng.display()))?;
    set_rng_states(device, &states)
}
