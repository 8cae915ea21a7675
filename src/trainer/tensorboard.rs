//! TensorBoard scalars from every run: `events.out.tfevents.*` files in the run directory, so
//! that `tensorboard --logdir results/<study>` shows every cell (arm × split × seed) as a run,
//! live while the grid trains.
//!
//! The file format is TensorFlow's: a sequence of TFRecords (length, masked CRC-32C of the
//! length, an `Event` protocol buffer, masked CRC-32C of the data), the first event naming the
//! file version. The three messages needed (`Event`, `Summary`, `SessionLog`) are declared
//! here with `prost`, field for field as in tensorflow/core/util/event.proto and
//! tensorflow/core/framework/summary.proto.
//!
//! Steps are iterations trained (1 after the first SGD step): per iteration the loss terms, the
//! learning rate, seconds per iteration and what the sampler picked; every
//! [`super::CLASS_EVERY`] iterations each class's share of the candidates and of the picks; at
//! each evaluation mAP, COCO AP and each class's AP, at the step of the epoch's last iteration.
//!
//! Each process that works on a run opens a new file (later names sort later) and starts it with
//! `SessionLog START` at the first step it will write: TensorBoard's loader then drops the
//! points a killed process wrote past the checkpoint it resumed from (`purge_orphaned_data`).
//! Every write is flushed, so a running cell shows each iteration as it ends.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;

use super::step::{ClassTally, IterOut};
use crate::rundir::{EpochRow, MiningStats, PerClassRow};

/// tensorflow.Event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// The `what` of an [`Event`] (the kinds written here).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// tensorflow.Summary: values, each a tag and a scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// tensorflow.Summary.Value with a `simple_value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// tensorflow.SessionLog (status 1 = START).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// TFRecord's masked CRC-32C (Castagnoli), as tensorflow/core/lib/hash/crc32c.h masks it.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Whether `name` is an event file of this module's (or TensorFlow's) naming.
pub fn is_event_file(name: &str) -> bool {
    name.contains("tfevents")
}

/// An event file being written.
pub struct Events {
    path: PathBuf,
    out: BufWriter<File>,
    /// Scalars of the current step, written as one event by [`Events::flush`].
    pending: Vec<SummaryValue>,
    pending_step: i64,
}

impl Events {
    /// Opens a new event file in `dir` and marks `first_step`, the first step this process
    /// will write, as a session start (points a killed process wrote at or past it are dropped).
    pub fn open(dir: &Path, first_step: i64) -> Result<Events> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = hostname();
        // seconds and nanoseconds in the name: two processes of one run never share a file, and
        // a later one's name sorts after (TensorBoard reads a run's files in name order), even
        // on a host whose clock is behind the last one's: never before an existing file
        let mut at = (now.as_secs(), now.subsec_nanos());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.strip_prefix("events.out.tfevents.").unwrap_or("").split('.');
            if let (Some(Ok(s)), Some(Ok(n))) = (parts.next().map(str::parse::<u64>), parts.next().map(str::parse::<u32>)) {
                if (s, n) >= at {
                    at = if n >= 999_999_999 { (s + 1, 0) } else { (s, n + 1) };
                }
            }
        }
        let name = format!("events.out.tfevents.{:010}.{:09}.{host}.{}", at.0, at.1, std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut ev = Events { path, out: BufWriter::new(file), pending: Vec::new(), pending_step: first_step };
        ev.write_event(Event { wall_time: wall(), step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        ev.write_event(Event { wall_time: wall(), step: first_step, what: Some(What::SessionLog(SessionLog { status: 1 })) })?;
        ev.out.flush().with_context(|| format!("writing {}", ev.path.display()))?;
        Ok(ev)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, e: Event) -> Result<()> {
        self.out.write_all(&record(&e.encode_to_vec())).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Adds scalar `tag` = `v` at `step` (written with the step's others at the next flush;
    /// a non-finite value is written as it is: TensorBoard draws NaN and ±inf).
    pub fn scalar(&mut self, step: i64, tag: &str, v: f64) -> Result<()> {
        if step != self.pending_step && !self.pending.is_empty() {
            self.flush()?;
        }
        self.pending_step = step;
        self.pending.push(SummaryValue { tag: tag.to_string(), simple_value: Some(v as f32) });
        Ok(())
    }

    /// Writes the pending scalars as one event and flushes the file.
    pub fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let value = std::mem::take(&mut self.pending);
            self.write_event(Event { wall_time: wall(), step: self.pending_step, what: Some(What::Summary(Summary { value })) })?;
        }
        self.out.flush().with_context(|| format!("writing {}", self.path.display()))
    }

    /// One training iteration's scalars at `step` (iterations trained): the loss and its terms,
    /// the learning rate, its seconds, and the RoIs the sampler picked.
    pub fn iteration(&mut self, step: i64, out: &IterOut, lr: f64, seconds: f64) -> Result<()> {
        let (rpn_obj, rpn_box) = out.loss_rpn.unwrap_or((0.0, 0.0));
        self.scalar(step, "loss/total", out.loss_cls + out.loss_bbox + rpn_obj + rpn_box)?;
        self.scalar(step, "loss/cls", out.loss_cls)?;
        self.scalar(step, "loss/bbox", out.loss_bbox)?;
        if out.loss_rpn.is_some() {
            self.scalar(step, "loss/rpn_objectness", rpn_obj)?;
            self.scalar(step, "loss/rpn_box", rpn_box)?;
        }
        self.scalar(step, "train/lr", lr)?;
        self.scalar(step, "train/s_per_iter", seconds)?;
        self.scalar(step, "sampler/rois", out.rois as f64)?;
        self.scalar(step, "sampler/fg_fraction", out.fg as f64 / out.rois.max(1) as f64)?;
        self.scalar(step, "sampler/picked_roi_loss", out.sel_loss_sum / out.rois.max(1) as f64)?;
        if let Some((sum, n)) = out.all_loss {
            self.scalar(step, "sampler/all_roi_loss", sum / n.max(1) as f64)?;
        }
        Ok(())
    }

    /// The per-class bookkeeping at `step`: each class's share of the candidate RoIs and of
    /// the picked ones (`names[c]`, 0 background), as `classes.csv` holds it.
    pub fn classes(&mut self, step: i64, t: &ClassTally, names: &[String]) -> Result<()> {
        let (nc, ns) = (t.candidates.iter().sum::<i64>().max(1) as f64, t.selected.iter().sum::<i64>().max(1) as f64);
        for c in 0..t.candidates.len() {
            let name = names.get(c).map(String::as_str).unwrap_or("?");
            self.scalar(step, &format!("class_candidate_share/{name}"), t.candidates[c] as f64 / nc)?;
            self.scalar(step, &format!("class_pick_share/{name}"), t.selected[c] as f64 / ns)?;
        }
        Ok(())
    }

    /// A mining round at `step` (the iteration it comes before): its seconds, the hard negatives
    /// cached and their mean loss.
    pub fn mining(&mut self, step: i64, s: &MiningStats) -> Result<()> {
        self.scalar(step, "mining/seconds", s.seconds)?;
        self.scalar(step, "mining/mined", s.mined as f64)?;
        if let Some(l) = s.mined_loss {
            self.scalar(step, "mining/mined_loss", l)?;
        }
        Ok(())
    }

    /// An evaluated epoch at `step`: its row's mAP and COCO summaries, the run's wall clock,
    /// and each class's AP.
    pub fn evaluation(&mut self, step: i64, row: &EpochRow, per_class: &[PerClassRow]) -> Result<()> {
        for m in crate::rundir::Metric::all() {
            if let Some(v) = row.map(m) {
                self.scalar(step, &format!("eval/{}", m.column()), v)?;
            }
        }
        self.scalar(step, "time/wall_s", row.wall_s)?;
        for p in per_class {
            // a class without test objects has no AP
            for (kind, ap) in [("ap_voc07", p.ap_voc07), ("ap_voc10", p.ap_voc10)] {
                if let Some(ap) = ap {
                    self.scalar(step, &format!("{kind}/{}", p.name), ap)?;
                }
            }
        }
        self.flush()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn wall() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The host's name (for the event file's name, as TensorFlow's writer names its files).
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}
