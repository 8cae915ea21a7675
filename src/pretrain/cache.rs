//! Where the pre-trained backbone comes from: the cache, the shipped folder, or
//! a training run ([`super`]), and the checks on each.
//!
//! The cache key is a SHA-256 of everything that determines the weights: the
//! `pretrain` config, the model's shape, the input normalisation and scale,
//! the bytes of the source images and annotations, and the code's stamp
//! ([`code_stamp`], a hash of the sources that train them; this file is not
//! among them, since finding, copying and checking weights does not change
//! them).
//!
//! Shipped backbones: `pretrained/<key>/` in the source tree holds the same
//! three files for the default data and recipe, plus the weights' SHA-256 and
//! the machine that made them, so that a first run does not spend its
//! quarter-hour pre-training. [`ensure`] looks in the cache, then there (the
//! file is checked against its SHA-256 and copied into the cache), and only
//! then trains. Because the key holds the code's stamp, a change in the
//! pre-training code changes the key and the shipped file is no longer
//! served; `harness pretrain --verify` trains anew and compares,
//! `harness pretrain --ship` writes the folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::{fingerprint, pretrain_model_cfg, read_log, train_into, LOG, RECORD, WEIGHTS};
use crate::config::TrainConfig;

/// What [`ensure`] found or made. `pretrain.json` beside the weights records
/// the cache key's material and the classes the classifier was trained on.
#[derive(Debug, Clone)]
pub struct Pretrained {
    /// The backbone and fc6/fc7 weights (safetensors), in the cache.
    pub weights: PathBuf,
    /// Per-epoch log.
    pub log: PathBuf,
    /// Whether this call trained them (false: the cache or the shipped folder had them).
    pub computed: bool,
    /// Where they came from.
    pub origin: Origin,
    /// The cache key (16 hex digits, the folder's name).
    pub key: String,
    /// What the key is a hash of (see [`key_of`]).
    pub material: serde_json::Value,
}

/// Where [`ensure`] found the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The cache had them.
    Cache,
    /// Copied from the shipped folder (`pretrained/<key>/`) into the cache.
    Shipped,
    /// Trained by this call.
    Trained,
}

/// The sources whose code determines the pre-trained weights: the pre-training
/// itself ([`super`], not this file), the network, RoI pooling, the losses, the optimiser, box coding, the
/// data it reads and generates, and the helpers they call; the build script
/// (the C++ kernels' flags) and `Cargo.lock` (tch, rand, image and every other
/// dependency's version); [`code_stamp`] adds the libtorch version. Conservative:
/// a change in any of them changes [`code_stamp`], even one that leaves the
/// weights as they were.
const STAMPED_SOURCES: &[(&str, &str)] = &[
    ("src/pretrain/mod.rs", include_str!("mod.rs")),
    ("src/model/mod.rs", include_str!("../model/mod.rs")),
    ("src/model/backbone.rs", include_str!("../model/backbone.rs")),
    ("src/model/roi_pool.rs", include_str!("../model/roi_pool.rs")),
    ("csrc/roi_pool.cpp", include_str!("../../csrc/roi_pool.cpp")),
    ("src/model/loss.rs", include_str!("../model/loss.rs")),
    ("src/model/sgd.rs", include_str!("../model/sgd.rs")),
    ("src/model/box_coder.rs", include_str!("../model/box_coder.rs")),
    ("src/data/mod.rs", include_str!("../data/mod.rs")),
    ("src/data/voc.rs", include_str!("../data/voc.rs")),
    ("src/data/synth.rs", include_str!("../data/synth.rs")),
    ("src/boxes.rs", include_str!("../boxes.rs")),
    ("src/config.rs", include_str!("../config.rs")),
    ("src/lib.rs", include_str!("../lib.rs")),
    ("build.rs", include_str!("../../build.rs")),
    ("Cargo.lock", include_str!("../../Cargo.lock")),
];

/// The code's side of the cache key: a SHA-256 (16 hex digits) of
/// [`STAMPED_SOURCES`] as compiled into this binary, with blank lines, line
/// comments and unit tests left out, so that editing a comment does not call
/// for a new pre-training.
pub fn code_stamp() -> &'static str {
    static STAMP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STAMP.get_or_init(|| {
        let mut h = Sha256::new();
        for (path, text) in STAMPED_SOURCES {
            h.update(path.as_bytes());
            h.update(b"\n");
            h.update(code_only(text).as_bytes());
            h.update(b"\n");
        }
        h.update(concat!("libtorch ", env!("OHEM_LIBTORCH_VERSION")).as_bytes());
        format!("{:x}", h.finalize())[..16].to_string()
    })
}

/// A source without its blank lines, its `//` line comments (doc comments
/// included) and anything from a `#[cfg(test)]` line on; lines trimmed.
pub fn code_only(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .take_while(|l| *l != "#[cfg(test)]")
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The shipped backbones: `pretrained/` in the source tree this binary was built from.
pub fn shipped_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/pretrained"))
}

/// What [`file_digests`] found: each file's SHA-256, and how many files it read to hash them.
#[derive(Debug, Clone)]
pub struct Digests {
    pub sums: Vec<[u8; 32]>,
    pub read: usize,
}

/// A file's identity on disk: device, inode, length, and modification and change times (ns).
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

/// The SHA-256 of each file, from a record of earlier hashes when a file's device, inode,
/// length and modification and change times (to the nanosecond) are those it had when it was
/// hashed, else read and hashed (in parallel), the record then updated. The record is
/// `<cache>/file-hashes/<16 hex digits of the folder>.json`, one per folder of files (its
/// first line names the folder; a record whose folder is gone is removed when another is
/// written). A file modified or changed less than 2 seconds before it was hashed is not
/// recorded: a change in the same clock tick could leave its times as they were (git's
/// "racily clean").
pub fn file_digests(paths: &[PathBuf]) -> Result<Digests> {
    use rayon::prelude::*;
    let dir = paths.first().and_then(|p| std::path::absolute(p).ok()).and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let records = crate::cache_root().join("file-hashes");
    let record = records.join(format!("{}.json", &format!("{:x}", Sha256::digest(dir.to_string_lossy().as_bytes()))[..16]));
    let mut known: std::collections::HashMap<String, (Stamp, String)> =
        std::fs::read_to_string(&record).ok().and_then(|t| t.split_once('\n').and_then(|(_, body)| serde_json::from_str(body).ok())).unwrap_or_default();
    let now = std::time::SystemTime::now();
    let found: Vec<([u8; 32], bool, Option<(String, Stamp)>)> = paths
        .par_iter()
        .map(|p| -> Result<_> {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone()).to_string_lossy().into_owned();
            let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow::Error::from(crate::data::DataError::MissingImage { path: p.clone() }),
                _ => anyhow::anyhow!("{}: {e}", p.display()),
            })?;
            let st = stamp_of(&meta);
            if let Some((s, hex)) = known.get(&abs) {
                let mut d = [0u8; 32];
                if *s == st && hex.len() == 64 && (0..32).all(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map(|b| d[i] = b).is_ok()) {
                    return Ok((d, false, None));
                }
            }
            let d: [u8; 32] = Sha256::digest(crate::data::voc::read_image_bytes(p)?).into();
            // both times: a file whose old modification time was put back has a new change time
            let changed = std::time::UNIX_EPOCH + std::time::Duration::new(st.5.max(0) as u64, st.6.clamp(0, 999_999_999) as u32);
            let age = |t: std::time::SystemTime| now.duration_since(t).unwrap_or_default();
            let settled = meta.modified().is_ok_and(|m| age(m) >= std::time::Duration::from_secs(2)) && age(changed) >= std::time::Duration::from_secs(2);
            Ok((d, true, settled.then_some((abs, st))))
        })
        .collect::<Result<_>>()?;
    let read = found.iter().filter(|f| f.1).count();
    let mut changed = false;
    for (d, _, new) in &found {
        if let Some((abs, st)) = new {
            known.insert(abs.clone(), (*st, d.iter().map(|b| format!("{b:02x}")).collect()));
            changed = true;
        }
    }
    if changed {
        // best effort: a record that cannot be written costs a re-hash next time, nothing else
        if let Ok(body) = serde_json::to_string(&known) {
            let head = serde_json::to_string(&dir.to_string_lossy()).unwrap_or_default();
            let _ = crate::rundir::write_file(&record, format!("{head}\n{body}").as_bytes());
            remove_orphan_records(&records, &record);
        }
    }
    Ok(Digests { sums: found.into_iter().map(|f| f.0).collect(), read })
}

/// Removes the hash records whose folder no longer exists (temporary datasets), `keep` aside.
fn remove_orphan_records(records: &Path, keep: &Path) {
    use std::io::BufRead;
    let Ok(rd) = std::fs::read_dir(records) else { return };
    for e in rd.flatten() {
        let path = e.path();
        if path == keep || path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let mut first = String::new();
        let named = std::fs::File::open(&path).map(std::io::BufReader::new).and_then(|mut r| r.read_line(&mut first)).is_ok();
        let folder: Option<String> = serde_json::from_str(first.trim()).ok();
        if named && folder.is_some_and(|f| !Path::new(&f).is_dir()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A file's SHA-256 (hex).
pub fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The cache key: a SHA-256 of everything that determines the weights.
fn key_material(cfg: &TrainConfig, fingerprint: &str) -> serde_json::Value {
    let m = pretrain_model_cfg(&cfg.model);
    serde_json::json!({
        "version": "pretrain v1",
        "code": code_stamp(),
        "pretrain": cfg.pretrain,
        "model": { "backbone": m.backbone, "stride": m.feature_stride(), "fc_dim": m.fc_width(), "roi_size": m.roi_size, "roi_samples": m.roi_samples, "dropout": m.dropout },
        "input": { "scale": cfg.input.scale, "max_size": cfg.input.max_size, "pixel_mean": cfg.input.pixel_mean, "pixel_std": cfg.input.pixel_std },
        "source": { "split": cfg.pretrain.source.uses_dataset().then(|| cfg.dataset.train_split.clone()),
                     "sha256": fingerprint },
    })
}

/// What determines `cfg`'s pre-trained weights, short of the source's bytes (no I/O): two
/// configs with the same identity share one cache entry while the dataset is unchanged.
pub fn identity(cfg: &TrainConfig) -> String {
    key_material(cfg, &cfg.dataset.root.display().to_string()).to_string()
}

/// The pre-trained weights for `cfg`: from the cache under `cache_dir`, else
/// the shipped folder ([`shipped_dir`]), else trained now (once, under a lock,
/// so that concurrent cells wait for one computation).
pub fn ensure(cfg: &TrainConfig, cache_dir: &Path, progress: bool) -> Result<Pretrained> {
    ensure_with(cfg, cache_dir, Some(&shipped_dir()), progress)
}

/// The cache key of `cfg`'s pre-training (reads the source's bytes), and its material.
pub fn key_of(cfg: &TrainConfig) -> Result<(String, serde_json::Value)> {
    cfg.pretrain.check()?;
    let material = key_material(cfg, &fingerprint(cfg)?);
    let key = format!("{:x}", Sha256::digest(serde_json::to_string(&material)?.as_bytes()));
    Ok((key[..16].to_string(), material))
}

/// [`ensure`] with the shipped folder given (None: none is looked at).
pub fn ensure_with(cfg: &TrainConfig, cache_dir: &Path, shipped: Option<&Path>, progress: bool) -> Result<Pretrained> {
    let (key, material) = key_of(cfg)?;
    let dir = cache_dir.join(&key);
    let found = |origin| Pretrained { weights: dir.join(WEIGHTS), log: dir.join(LOG), computed: origin == Origin::Trained, origin, key: key.clone(), material: material.clone() };
    if dir.join(WEIGHTS).is_file() {
        return Ok(found(Origin::Cache));
    }
    std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let lock_path = cache_dir.join(format!("{key}.lock"));
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).with_context(|| format!("opening {}", lock_path.display()))?;
    fs2::FileExt::lock_exclusive(&lock).with_context(|| format!("locking {}", lock_path.display()))?;
    if dir.join(WEIGHTS).is_file() {
        return Ok(found(Origin::Cache)); // another process made it while we waited
    }
    let tmp = cache_dir.join(format!("{key}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let origin = match shipped.map(|s| s.join(&key)).filter(|s| s.join(WEIGHTS).is_file()) {
        Some(from) => {
            let made_on = copy_shipped(&from, &tmp)?;
            if progress {
                eprintln!("pre-trained backbone: the shipped one in {} (made on {made_on}), copied into {}", from.display(), dir.display());
            }
            Origin::Shipped
        }
        None => {
            if progress {
                eprintln!("pre-training the shared backbone (once; cached in {}): loading the {} source", dir.display(), format!("{:?}", cfg.pretrain.source).to_lowercase());
            }
            train_into(cfg, &material, &tmp, progress)?;
            Origin::Trained
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    Ok(found(origin))
}

/// A folder's `pretrain.json`.
fn read_record(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(RECORD);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Copies the files `names` from the folder `from` into the folder `to`.
fn copy_files(from: &Path, to: &Path, names: &[&str]) -> Result<()> {
    for f in names {
        std::fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {} to {}", from.join(f).display(), to.display()))?;
    }
    Ok(())
}

/// Copies a shipped folder into `to` after checking the weights against the
/// SHA-256 its record names; returns the CPU it names.
fn copy_shipped(from: &Path, to: &Path) -> Result<String> {
    let record = read_record(from)?;
    let record_path = from.join(RECORD);
    let Some(want) = record["weights_sha256"].as_str() else {
        bail!("{}: no weights_sha256; remake the folder with `harness pretrain CONFIG --ship`", record_path.display());
    };
    let got = sha256_of(&from.join(WEIGHTS))?;
    if got != want {
        bail!(
            "{}: SHA-256 {got}, but {} names {want} (a Git LFS pointer or a damaged copy?); remake it with `harness pretrain CONFIG --ship`, or delete the folder to pre-train",
            from.join(WEIGHTS).display(),
            record_path.display()
        );
    }
    copy_files(from, to, &[WEIGHTS, LOG, RECORD])?;
    Ok(record["made_on"].as_str().unwrap_or("an unnamed machine").to_string())
}

/// `harness pretrain --ship`: writes `cfg`'s pre-trained backbone (from the
/// cache, trained first if need be) into `<shipped>/<key>/`, its record
/// extended with the weights' SHA-256 and the CPU that made them.
pub fn ship(cfg: &TrainConfig, cache_dir: &Path, shipped: &Path, progress: bool) -> Result<PathBuf> {
    let p = ensure_with(cfg, cache_dir, None, progress)?;
    let from = p.weights.parent().expect("in a folder").to_path_buf();
    let to = shipped.join(&p.key);
    std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    let mut record = read_record(&from)?;
    record["weights_sha256"] = serde_json::json!(sha256_of(&p.weights)?);
    record["made_on"] = serde_json::json!(crate::rundir::cpu_model().unwrap_or_else(|| "unknown CPU".into()));
    copy_files(&from, &to, &[WEIGHTS, LOG])?;
    std::fs::write(to.join(RECORD), serde_json::to_string_pretty(&record)? + "\n").with_context(|| format!("writing {}", to.join(RECORD).display()))?;
    Ok(to)
}

/// What `harness pretrain --verify` found: the served weights against ones trained anew.
#[derive(Debug, Clone)]
pub struct Verification {
    pub served: Pretrained,
    /// Tensors compared, and how many differ in any element.
    pub tensors: usize,
    pub differing: usize,
    /// The largest absolute difference over every element.
    pub max_abs_diff: f64,
    /// The last epoch's validation accuracy: served, then retrained.
    pub val_accuracy: (f64, f64),
    pub missing: Vec<String>,
}

impl Verification {
    pub fn identical(&self) -> bool {
        self.differing == 0 && self.missing.is_empty()
    }
}

/// `harness pretrain --verify`: trains `cfg`'s backbone anew (cache and shipped
/// folder ignored, into a temporary folder) and compares it, tensor by tensor,
/// with what [`ensure`] serves. Bit-identical weights are expected only on the
/// CPU that made the served ones.
pub fn verify(cfg: &TrainConfig, cache_dir: &Path, shipped: Option<&Path>, progress: bool) -> Result<Verification> {
    let served = ensure_with(cfg, cache_dir, shipped, progress)?;
    let tmp = cache_dir.join(format!("{}.verify{}", served.key, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| {
        if progress {
            eprintln!("pre-training anew to compare with {}", served.weights.display());
        }
        train_into(cfg, &served.material, &tmp, progress)?;
        let a: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&served.weights)?.into_iter().collect();
        let b: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(tmp.join(WEIGHTS))?.into_iter().collect();
        let mut v = Verification { served: served.clone(), tensors: 0, differing: 0, max_abs_diff: 0.0, val_accuracy: (f64::NAN, f64::NAN), missing: Vec::new() };
        for (name, ta) in &a {
            match b.get(name) {
                Some(tb) if tb.size() == ta.size() => {
                    v.tensors += 1;
                    if !ta.equal(tb) {
                        v.differing += 1;
                        let d = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double)).abs().max().double_value(&[]);
                        v.max_abs_diff = v.max_abs_diff.max(d);
                    }
                }
                _ => v.missing.push(name.clone()),
            }
        }
        v.missing.extend(b.keys().filter(|n| !a.contains_key(*n)).cloned());
        let last = |p: &Path| read_log(p).ok().and_then(|r| r.last().map(|r| r.val_accuracy)).unwrap_or(f64::NAN);
        v.val_accuracy = (last(&served.log), last(&tmp.join(LOG)));
        Ok(v)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
