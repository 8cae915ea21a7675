//! Stage 6 of the pipeline: PASCAL VOC detection evaluation.
//!
//! This follows the VOC devkit (`VOCevaldet.m`) and py-faster-rcnn's
//! `voc_eval.py`: per class, detections of all images are sorted by
//! confidence (descending; ties keep input order), each is matched greedily to
//! the single ground-truth box of its image with the highest IoU (inclusive
//! pixel convention), and:
//! - if that IoU is `>= 0.5` (the devkit's test; py-faster-rcnn uses `>`):
//!   a difficult box makes the detection *ignored*; an unmatched box makes it a
//!   true positive and marks the box; an already matched box makes it a false
//!   positive (duplicate);
//! - otherwise it is a false positive.
//!
//! `npos` counts non-difficult boxes. Precision/recall are cumulative, and AP
//! is the VOC2007 11-point interpolation or the VOC2010+ all-point area. A
//! class with no non-difficult ground truth has no AP (`None`) and is left out
//! of the mAP.

pub mod bootstrap;
pub mod coco;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::boxes::{iou, BBox};
use crate::data::voc::Annotation;

/// IoU needed for a match; the comparison is `>=`.
pub const MIN_OVERLAP: f32 = 0.5;

/// A `metrics.csv` accuracy column (VOC mAP or a COCO summary), as the report reads it.
pub use crate::rundir::Metric;

/// Which VOC AP: the VOC2007 11-point interpolation or the VOC2010+ all-point area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VocMetric {
    /// VOC2007 11-point interpolated AP.
    #[default]
    Voc07,
    /// VOC2010+ all-point (area under the monotone precision envelope).
    Voc10,
}

/// One detection of one class: 24 bytes, so that an evaluation's detections (up to
/// `test.max_per_image` an image) stay small beside the images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// The image: its index in the evaluated split's annotations.
    pub image: u32,
    pub score: f32,
    pub bbox: BBox,
}

/// The result for one class.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassAp {
    pub class: String,
    /// `None` when the class has no non-difficult ground truth.
    pub ap: Option<f64>,
    pub npos: usize,
    pub detections: usize,
    pub true_positives: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub metric: VocMetric,
    pub per_class: Vec<ClassAp>,
    pub map: f64,
}

/// AP from cumulative recall and precision (in detection order).
pub fn average_precision(rec: &[f64], prec: &[f64], metric: VocMetric) -> f64 {
    match metric {
        VocMetric::Voc07 => {
            let mut ap = 0.0;
            for t in 0..=10 {
                let t = t as f64 / 10.0;
                let p = rec.iter().zip(prec).filter(|(r, _)| **r >= t).map(|(_, p)| *p).fold(0.0, f64::max);
                ap += p / 11.0;
            }
            ap
        }
        VocMetric::Voc10 => {
            let mut mrec = Vec::with_capacity(rec.len() + 2);
            mrec.push(0.0);
            mrec.extend_from_slice(rec);
            mrec.push(1.0);
            let mut mpre = Vec::with_capacity(prec.len() + 2);
            mpre.push(0.0);
            mpre.extend_from_slice(prec);
            mpre.push(0.0);
            for i in (0..mpre.len() - 1).rev() {
                mpre[i] = mpre[i].max(mpre[i + 1]);
            }
            (1..mrec.len()).filter(|&i| mrec[i] != mrec[i - 1]).map(|i| (mrec[i] - mrec[i - 1]) * mpre[i]).sum()
        }
    }
}

/// Ground truth of one class in one image.
#[derive(Default)]
struct ImageGt {
    boxes: Vec<BBox>,
    difficult: Vec<bool>,
    matched: Vec<bool>,
}

/// What VOC's matching makes of one detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    TruePositive,
    FalsePositive,
    /// Matched a difficult (or crowd) object: counted as neither.
    Ignored,
}

/// VOC's matching of one class: the non-difficult objects of each image, and each detection's
/// outcome in the order the curve takes them (by score, stable).
pub fn match_class(anns: &[Annotation], class: usize, dets: &[Detection]) -> (Vec<usize>, Vec<(usize, Outcome)>) {
    let mut gt: Vec<ImageGt> = Vec::with_capacity(anns.len());
    let mut npos_of = Vec::with_capacity(anns.len());
    for a in anns {
        gt.push(ImageGt::default());
        let e = gt.last_mut().expect("pushed");
        for o in a.objects.iter().filter(|o| o.class == class) {
            e.boxes.push(o.bbox);
            // a COCO crowd region counts as VOC's difficult: a detection on it is ignored
            let difficult = o.difficult || o.crowd;
            e.difficult.push(difficult);
            e.matched.push(false);
        }
        npos_of.push(e.difficult.iter().filter(|d| !**d).count());
    }
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&i, &j| dets[j].score.total_cmp(&dets[i].score));
    let mut out = Vec::with_capacity(dets.len());
    for &d in &order {
        let det = &dets[d];
        let (mut is_tp, mut is_fp) = (false, true);
        if let Some(g) = gt.get_mut(det.image as usize) {
            let mut ovmax = f32::NEG_INFINITY;
            let mut jmax = 0;
            for (j, b) in g.boxes.iter().enumerate() {
                let o = iou(&det.bbox, b);
                if o > ovmax {
                    ovmax = o;
                    jmax = j;
                }
            }
            if ovmax >= MIN_OVERLAP {
                if g.difficult[jmax] {
                    is_fp = false; // ignored
                } else if !g.matched[jmax] {
                    g.matched[jmax] = true;
                    is_tp = true;
                    is_fp = false;
                }
            }
        }
        out.push((d, if is_tp { Outcome::TruePositive } else if is_fp { Outcome::FalsePositive } else { Outcome::Ignored }));
    }
    (npos_of, out)
}

/// Evaluates one class. `class` indexes `Object::class`; a detection's `image` indexes `anns`.
pub fn eval_class(anns: &[Annotation], class: usize, dets: &[Detection], metric: VocMetric) -> (Option<f64>, usize, usize) {
    let (npos_of, matched) = match_class(anns, class, dets);
    let npos: usize = npos_of.iter().sum();
    // an ignored detection (difficult match) counts as neither
    let tp: Vec<f64> = matched.iter().map(|m| (m.1 == Outcome::TruePositive) as u32 as f64).collect();
    let fp: Vec<f64> = matched.iter().map(|m| (m.1 == Outcome::FalsePositive) as u32 as f64).collect();
    let ntp = tp.iter().sum::<f64>() as usize;
    if npos == 0 {
        return (None, npos, ntp);
    }
    let (mut ctp, mut cfp) = (0.0, 0.0);
    let (mut rec, mut prec) = (Vec::with_capacity(tp.len()), Vec::with_capacity(tp.len()));
    for (t, f) in tp.iter().zip(&fp) {
        ctp += t;
        cfp += f;
        rec.push(ctp / npos as f64);
        // an ignored detection leaves tp+fp unchanged; guard 0/0 before the first counted one
        prec.push(if ctp + cfp > 0.0 { ctp / (ctp + cfp) } else { 0.0 });
    }
    (Some(average_precision(&rec, &prec, metric)), npos, ntp)
}

/// Evaluates all classes. `dets[c]` holds the detections of class `c`.
pub fn evaluate(anns: &[Annotation], classes: &[String], dets: &[Vec<Detection>], metric: VocMetric) -> EvalReport {
    assert_eq!(classes.len(), dets.len(), "one detection list per class");
    let per_class: Vec<ClassAp> = classes
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let (ap, npos, ntp) = eval_class(anns, c, &dets[c], metric);
            ClassAp { class: name.clone(), ap, npos, detections: dets[c].len(), true_positives: ntp }
        })
        .collect();
    let aps: Vec<f64> = per_class.iter().filter_map(|c| c.ap).collect();
    let map = if aps.is_empty() { 0.0 } else { aps.iter().sum::<f64>() / aps.len() as f64 };
    EvalReport { metric, per_class, map }
}

/// File name of one class's results in the VOC results format.
pub fn results_file_name(class: &str) -> String {
    format!("comp4_det_test_{class}.txt")
}

/// Reads `comp4_det_test_<class>.txt` files (lines `<image_id> <score> <x1>
/// <y1> <x2> <y2>`, 1-based pixels). A missing file means no detections for
/// that class. Image ids must belong to `anns`.
pub fn read_results_dir(dir: &Path, classes: &[String], anns: &[Annotation]) -> Result<Vec<Vec<Detection>>> {
    read_results_dir_of(dir, "test", classes, anns)
}

/// [`read_results_dir`] for the split `split`: the devkit's `comp4_det_<split>_<class>.txt`,
/// else (for a split other than `test`, where no such file exists) `comp4_det_test_<class>.txt`.
/// A results file of that set for a class the dataset does not have is an error naming it.
pub fn read_results_dir_of(dir: &Path, split: &str, classes: &[String], anns: &[Annotation]) -> Result<Vec<Vec<Detection>>> {
    if !dir.exists() {
        bail!("{}: not found (a folder of comp4_det_<split>_<class>.txt files, or a COCO results JSON)", dir.display());
    }
    if !dir.is_dir() {
        bail!("{}: not a folder of comp4_det_<split>_<class>.txt files", dir.display());
    }
    let files: Vec<String> = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let set = if split != "test" && !files.iter().any(|f| f.starts_with(&format!("comp4_det_{split}_")) && f.ends_with(".txt")) { "test" } else { split };
    let prefix = format!("comp4_det_{set}_");
    for f in files.iter().filter(|f| f.starts_with(&prefix) && f.ends_with(".txt")) {
        let class = &f[prefix.len()..f.len() - 4];
        if !classes.iter().any(|c| c == class) {
            bail!("{}: class {class:?} is not one of the dataset's classes ({})", dir.join(f).display(), classes.join(", "));
        }
    }
    // an id listed twice in the split is its first entry
    let index: HashMap<&str, u32> = anns.iter().enumerate().rev().map(|(i, a)| (a.id.as_str(), i as u32)).collect();
    let mut found_any = false;
    let mut out = Vec::new();
    for class in classes {
        let path = dir.join(format!("{prefix}{class}.txt"));
        let mut dets = Vec::new();
        if path.exists() {
            found_any = true;
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            for (line, id, v) in crate::data::parse_records::<5>(&path, &text, "<image_id> <score> <x1> <y1> <x2> <y2>")? {
                let Some(&image) = index.get(id.as_str()) else {
                    bail!("{}:{line}: image id {id:?} is not in the evaluated split", path.display());
                };
                dets.push(Detection { image, score: v[0], bbox: [v[1], v[2], v[3], v[4]] });
            }
        }
        out.push(dets);
    }
    if !found_any {
        let names = if split == "test" { "comp4_det_test_<class>.txt".to_string() } else { format!("comp4_det_{split}_<class>.txt nor comp4_det_test_<class>.txt") };
        bail!("{} holds no {names} file for any of the classes {}", dir.display(), classes.join(", "));
    }
    Ok(out)
}

/// Writes detections in the VOC results format, one file per class (the images named by their ids in `anns`).
pub fn write_results_dir(dir: &Path, classes: &[String], anns: &[Annotation], dets: &[Vec<Detection>]) -> Result<()> {
    write_results_dir_of(dir, "test", classes, anns, dets)
}

/// [`write_results_dir`] for the split `split`: the devkit's `comp4_det_<split>_<class>.txt`.
/// Scores and corners are written as the shortest decimals that read back to the same float32,
/// so that scoring the files gives what scoring the detections gave, to the last bit.
pub fn write_results_dir_of(dir: &Path, split: &str, classes: &[String], anns: &[Annotation], dets: &[Vec<Detection>]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (class, ds) in classes.iter().zip(dets) {
        let mut s = String::new();
        for d in ds {
            s.push_str(&format!("{} {} {} {} {} {}\n", anns[d.image as usize].id, d.score, d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]));
        }
        crate::rundir::write_file(&dir.join(format!("comp4_det_{split}_{class}.txt")), s.as_bytes())?;
    }
    Ok(())
}

/// A per-class table for the terminal.
pub fn format_table(r: &EvalReport) -> String {
    let mut s = format!("{:<16} {:>8} {:>6} {:>8} {:>6}\n", "class", "AP", "npos", "dets", "TP");
    for c in &r.per_class {
        let ap = c.ap.map(|a| format!("{:.4}", a)).unwrap_or_else(|| "-".into());
        s.push_str(&format!("{:<16} {:>8} {:>6} {:>8} {:>6}\n", c.class, ap, c.npos, c.detections, c.true_positives));
    }
    s.push_str(&format!("{:<16} {:>8.4}   ({:?})\n", "mAP", r.map, r.metric));
    s
}
