//! Stage 2 of the pipeline: region proposals.
//!
//! Two sources: computed once per image, offline, by selective search (below), or learned with
//! the detector by a region proposal network over the shared backbone's features ([`rpn`],
//! Faster R-CNN's).
//!
//! Selective search computes them ([`selective_search`]); results are cached
//! per image on disk, keyed by a SHA-256 of the image file's bytes and the
//! parameters, so later runs never recompute them. Users can also bring their
//! own proposals in the documented text format (see [`read_proposals_file`]).
//! [`recall_report`] measures them against non-difficult ground truth.

pub mod binary;
pub mod felzenszwalb;
pub mod rpn;
pub mod selective_search;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::boxes::{iou, BBox};
use crate::data::voc::{read_image_bytes, Annotation, Dataset};
use crate::rundir::{write_file, PhaseKind};
/// Selective search's parameters live in the configuration (which depends on
/// no stage); re-exported here, where they are used.
pub use crate::config::{SsMode, SsParams};

/// The default proposal cache: `$OHEM_CACHE/proposals`, else `$XDG_CACHE_HOME`
/// or `~/.cache`, under `ohem-harness/proposals`.
pub fn default_cache_dir() -> PathBuf {
    crate::cache_root().join("proposals")
}

/// Counters of one proposal computation over a split.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ComputeStats {
    pub images: usize,
    pub computed: usize,
    pub from_cache: usize,
    /// Wall milliseconds per computed image, single-threaded time per image
    /// (the sum of per-image times over images computed).
    pub compute_ms_per_image: f64,
}

fn cache_key(bytes: &[u8], params: &SsParams) -> String {
    let mut h = Sha256::new();
    h.update(b"ohem-harness selective search v1\0");
    h.update(serde_json::to_vec(params).expect("params serialise"));
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn boxes_to_text(boxes: &[BBox]) -> String {
    boxes.iter().map(|b| format!("{} {} {} {}\n", b[0], b[1], b[2], b[3])).collect()
}

fn read_cache(path: &Path) -> Option<Vec<BBox>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(|l| {
            let v: Vec<f32> = l.split_whitespace().map(|t| t.parse().ok()).collect::<Option<_>>()?;
            (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
        })
        .collect()
}

/// Proposals for each image of `anns` (in order), from the cache or computed
/// in parallel. `cache_dir = None` disables the cache.
pub fn compute(
    ds: &Dataset,
    anns: &[Annotation],
    params: &SsParams,
    cache_dir: Option<&Path>,
    progress: bool,
) -> Result<(Vec<Vec<BBox>>, ComputeStats)> {
    params.check()?;
    let bar = crate::progress_bar(anns.len() as u64, "selective search", progress);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = || {
        bar.inc(1);
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        crate::rundir::report_phase(PhaseKind::Proposals, 0, 0, n, anns.len());
    };
    let results: Vec<(Vec<BBox>, Option<f64>)> = anns
        .par_iter()
        .map(|ann| -> Result<(Vec<BBox>, Option<f64>)> {
            let path = ds.image_path_of(ann);
            let bytes = read_image_bytes(&path)?;
            let cache_file = cache_dir.map(|d| {
                let key = cache_key(&bytes, params);
                d.join(&key[..2]).join(format!("{key}.txt"))
            });
            if let Some(boxes) = cache_file.as_deref().and_then(read_cache) {
                tick();
                return Ok((boxes, None));
            }
            let img = ds.decode_bytes(&path, &bytes)?;
            let t = Instant::now();
            let boxes = selective_search::selective_search(&img, params.mode, params.sigma, params.min_side, params.max_boxes);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if let Some(f) = &cache_file {
                write_file(f, boxes_to_text(&boxes).as_bytes())?;
            }
            tick();
            Ok((boxes, Some(ms)))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let computed: Vec<f64> = results.iter().filter_map(|r| r.1).collect();
    let stats = ComputeStats {
        images: anns.len(),
        computed: computed.len(),
        from_cache: anns.len() - computed.len(),
        compute_ms_per_image: if computed.is_empty() { 0.0 } else { computed.iter().sum::<f64>() / computed.len() as f64 },
    };
    Ok((results.into_iter().map(|r| r.0).collect(), stats))
}

/// Reads a proposals file.
///
/// Format (the one `harness proposals --out` writes): UTF-8 text, one box per
/// line, `<image_id> <x1> <y1> <x2> <y2>`, whitespace-separated, coordinates in
/// 1-based inclusive pixels like VOC annotations. Lines of one image appear in
/// rank order (best first). Blank lines and lines starting with `#` are ignored.
pub fn read_proposals_file(path: &Path) -> Result<HashMap<String, Vec<BBox>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading proposals file {}", path.display()))?;
    let mut out: HashMap<String, Vec<BBox>> = HashMap::new();
    for (line, id, b) in crate::data::parse_records::<4>(path, &text, "<image_id> <x1> <y1> <x2> <y2>")? {
        if b[2] < b[0] || b[3] < b[1] {
            bail!("{}:{line}: box {:?} has x2 < x1 or y2 < y1", path.display(), b);
        }
        out.entry(id).or_default().push(b);
    }
    Ok(out)
}

/// Writes proposals: the binary format ([`binary`]) when `path` ends in `.bin`,
/// else the text format [`read_proposals_file`] reads.
pub fn write_proposals_file(path: &Path, ids: &[&str], boxes: &[Vec<BBox>]) -> Result<()> {
    if path.extension().is_some_and(|e| e == "bin") {
        return binary::write(path, ids, boxes);
    }
    let mut s = String::from("# ohem-harness proposals: <image_id> <x1> <y1> <x2> <y2>, 1-based inclusive pixels, rank order\n");
    for (id, bs) in ids.iter().zip(boxes) {
        for b in bs {
            s.push_str(&format!("{id} {} {} {} {}\n", b[0], b[1], b[2], b[3]));
        }
    }
    write_file(path, s.as_bytes())?;
    Ok(())
}

/// Proposals for `anns` taken from a user's file (text or binary); every image
/// must be present and every box must lie inside its image.
pub fn from_file(path: &Path, anns: &[Annotation]) -> Result<Vec<Vec<BBox>>> {
    if binary::is_binary(path) {
        let f = binary::BinaryProposals::open(path)?;
        return anns.iter().map(|a| f.read(&a.id, a.width, a.height)).collect();
    }
    let mut all = read_proposals_file(path)?;
    anns.iter()
        .map(|a| {
            let boxes = all
                .remove(&a.id)
                .with_context(|| format!("{}: no proposals for image {:?}", path.display(), a.id))?;
            if let Some(b) = boxes.iter().find(|b| b[0] < 1.0 || b[1] < 1.0 || b[2] > a.width as f32 || b[3] > a.height as f32) {
                bail!("{}: box {:?} of image {:?} lies outside its {}x{} image", path.display(), b, a.id, a.width, a.height);
            }
            Ok(boxes)
        })
        .collect()
}

/// Proposal quality against non-difficult ground truth.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecallReport {
    pub images: usize,
    pub gt_boxes: usize,
    pub recall_at_05: f64,
    pub recall_at_07: f64,
    /// Mean over ground-truth boxes of the best IoU of any proposal (ABO).
    pub abo: f64,
    pub mean_boxes_per_image: f64,
}

pub fn recall_report(anns: &[Annotation], proposals: &[Vec<BBox>]) -> RecallReport {
    let mut best = Vec::new();
    for (a, ps) in anns.iter().zip(proposals) {
        for o in a.objects.iter().filter(|o| !o.difficult && !o.crowd) {
            best.push(ps.iter().map(|p| iou(p, &o.bbox)).fold(0.0f32, f32::max) as f64);
        }
    }
    let n = best.len().max(1) as f64;
    RecallReport {
        images: anns.len(),
        gt_boxes: best.len(),
        recall_at_05: best.iter().filter(|&&b| b >= 0.5).count() as f64 / n,
        recall_at_07: best.iter().filter(|&&b| b >= 0.7).count() as f64 / n,
        abo: best.iter().sum::<f64>() / n,
        mean_boxes_per_image: proposals.iter().map(|p| p.len()).sum::<usize>() as f64 / anns.len().max(1) as f64,
    }
}
