//! COCO box evaluation, as pycocotools' `COCOeval` (iouType `bbox`) computes it.
//!
//! Definitions kept from pycocotools 2.0.11 (`cocoeval.py`, `maskApi.c`):
//! - IoU thresholds `linspace(0.5, 0.95, 10)` and recall points
//!   `linspace(0, 1, 101)`, computed as numpy computes them (`i * step + start`,
//!   the last point set to the stop), so that a threshold compares equal to
//!   the same IoU on both sides;
//! - boxes are `[x, y, w, h]` in continuous pixels; IoU is `bbIou`: the
//!   intersection over the union, or over the detection's area (`w * h`) when
//!   the ground truth is a crowd region;
//! - per image and category, detections are sorted by score (ties keep input
//!   order) and at most `maxDets[-1] = 100` of them are evaluated; at each IoU
//!   threshold each detection, in that order, takes the ground truth of
//!   highest IoU (not below the threshold, capped at `1 - 1e-10`; a later
//!   one of equal IoU wins) among those not yet matched, where a crowd region
//!   can match many detections, and non-ignored ground truth is preferred to
//!   ignored (crowd, or area outside the range);
//! - a detection matched to ignored ground truth, or unmatched with its area
//!   (`w * h`) outside the range, is ignored; ground-truth areas come from the
//!   annotation's `area` field, and the ranges are closed: an area of exactly
//!   32² is both small and medium;
//! - per category, area range and detection cap (1, 10, 100 per image), the
//!   images' top detections are merged by score (ties: image id order, then
//!   the order within the image), precision is made monotone and read at the
//!   101 recall points (`searchsorted`, side left; 0 past the last recall);
//!   recall is the final recall;
//! - a category without non-ignored ground truth in a range has no value
//!   there (pycocotools' −1) and is left out of the means; a summary with no
//!   value at all is −1.
//!
//! One difference: pycocotools marks a detection as matched by storing the
//! ground truth's annotation id, so a match to an annotation whose id is 0
//! counts as unmatched there; here a match is a match.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rayon::prelude::*;

use crate::data::coco::CocoFile;
use crate::data::Annotation;

/// The names of the 12 summaries, in pycocotools' order (`COCOeval.stats`):
/// each one's key and its `metrics.csv` column. The one list of them:
/// `coco_summaries!(then)` expands to `then! { AP coco_ap, AP50 coco_ap50, … }`,
/// and [`SUMMARY_KEYS`], [`crate::rundir::COCO_COLUMNS`] and the COCO fields of
/// [`crate::rundir::EpochRow`] (so the columns of `metrics.csv`) are all made
/// from it, so that their orders cannot disagree.
macro_rules! coco_summaries {
    ($then:ident) => {
        $then! {
            AP coco_ap,
            AP50 coco_ap50,
            AP75 coco_ap75,
            APs coco_aps,
            APm coco_apm,
            APl coco_apl,
            AR1 coco_ar1,
            AR10 coco_ar10,
            AR100 coco_ar100,
            ARs coco_ars,
            ARm coco_arm,
            ARl coco_arl,
        }
    };
}
pub(crate) use coco_summaries;

macro_rules! summary_keys {
    ($($key:ident $column:ident,)*) => {
        /// The 12 summary numbers' keys, in pycocotools' order (`COCOeval.stats`).
        pub const SUMMARY_KEYS: [&str; 12] = [$(stringify!($key)),*];
    };
}
coco_summaries!(summary_keys);

/// Detections evaluated per image and category (pycocotools' `maxDets`).
pub const MAX_DETS: [usize; 3] = [1, 10, 100];

/// Area ranges `all, small, medium, large` (closed intervals).
pub const AREA_RANGES: [[f64; 2]; 4] = [[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]];

pub(crate) const T: usize = 10;
pub(crate) const R: usize = 101;

/// numpy's `linspace(start, stop, num)`: `i * step + start`, the last point `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// The IoU thresholds 0.50:0.05:0.95.
pub fn iou_thresholds() -> Vec<f64> {
    linspace(0.5, 0.95, T)
}

/// One ground-truth annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct GtBox {
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, w, h]`, continuous 0-based pixels.
    pub bbox: [f64; 4],
    /// The annotation's `area` (what the area ranges test).
    pub area: f64,
    pub iscrowd: bool,
}

/// One detection, in the COCO results format.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetBox {
    pub image_id: i64,
    pub category_id: i64,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// What [`evaluate`] returns.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CocoReport {
    /// [`SUMMARY_KEYS`] in order; −1 where nothing could be measured.
    pub stats: [f64; 12],
    /// Per category (in the order given): AP over the 10 IoU thresholds, all
    /// areas, 100 detections; `None` without non-crowd ground truth.
    pub per_category: Vec<Option<f64>>,
}

impl CocoReport {
    pub fn get(&self, key: &str) -> Option<f64> {
        SUMMARY_KEYS.iter().position(|k| *k == key).map(|i| self.stats[i])
    }
}

/// pycocotools' `bbIou` for one pair.
fn bb_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// `evaluateImg` for one image, category and area range.
struct ImageResult {
    /// Scores of the evaluated detections, in score order.
    scores: Vec<f64>,
    /// `[T × D]`, threshold-major: bit 0 matched, bit 1 ignored (one byte a pair, not a
    /// vector a threshold: the tables of a category of many images stay small).
    flags: Vec<u8>,
    /// Ground truth not ignored in this range.
    npig: usize,
}

const MATCHED: u8 = 1;
const IGNORED: u8 = 2;

impl ImageResult {
    fn matched(&self, t: usize, d: usize) -> bool {
        self.flags[t * self.scores.len() + d] & MATCHED != 0
    }
    fn ignored(&self, t: usize, d: usize) -> bool {
        self.flags[t * self.scores.len() + d] & IGNORED != 0
    }
}

/// `ious` is `[D × G]`, detection-major.
fn evaluate_image(gts: &[&GtBox], dts: &[&DetBox], ious: &[f64], thrs: &[f64], range: [f64; 2]) -> ImageResult {
    let out = |a: f64| a < range[0] || a > range[1];
    let ig: Vec<bool> = gts.iter().map(|g| g.iscrowd || out(g.area)).collect();
    // stable: non-ignored first, each group in annotation order
    let mut order: Vec<usize> = (0..gts.len()).collect();
    order.sort_by_key(|&g| ig[g]);
    let crowd: Vec<bool> = order.iter().map(|&g| gts[g].iscrowd).collect();
    let gig: Vec<bool> = order.iter().map(|&g| ig[g]).collect();
    let d_n = dts.len();
    let g_n = gts.len();
    let mut flags = vec![0u8; T * d_n];
    if !gts.is_empty() && d_n > 0 {
        for (t, &thr) in thrs.iter().enumerate() {
            let mut gt_taken = vec![false; order.len()];
            for d in 0..d_n {
                let mut best = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (gi, &g) in order.iter().enumerate() {
                    if gt_taken[gi] && !crowd[gi] {
                        continue;
                    }
                    if let Some(mm) = m {
                        if !gig[mm] && gig[gi] {
                            break;
                        }
                    }
                    let o = ious[d * g_n + g];
                    if o < best {
                        continue;
                    }
                    best = o;
                    m = Some(gi);
                }
                if let Some(mm) = m {
                    flags[t * d_n + d] = MATCHED | if gig[mm] { IGNORED } else { 0 };
                    gt_taken[mm] = true;
                }
            }
        }
    }
    for d in 0..d_n {
        let b = &dts[d].bbox;
        if out(b[2] * b[3]) {
            for t in 0..T {
                let f = &mut flags[t * d_n + d];
                if *f & MATCHED == 0 {
                    *f |= IGNORED;
                }
            }
        }
    }
    ImageResult { scores: dts.iter().map(|d| d.score).collect(), flags, npig: gig.iter().filter(|i| !**i).count() }
}

/// Precision at the recall points and final recall for one category, range
/// and cap, from its images' results (in image order); `None` without
/// non-ignored ground truth.
fn accumulate(results: &[&ImageResult], max_det: usize, rec_thrs: &[f64]) -> Option<(Vec<Vec<f64>>, Vec<f64>)> {
    let npig: usize = results.iter().map(|r| r.npig).sum();
    if npig == 0 {
        return None;
    }
    // (image, detection) in merge order: by score, stable over image order
    let mut items: Vec<(usize, usize)> = results.iter().enumerate().flat_map(|(i, r)| (0..r.scores.len().min(max_det)).map(move |d| (i, d))).collect();
    items.sort_by(|a, b| results[b.0].scores[b.1].total_cmp(&results[a.0].scores[a.1]));
    let mut precision = Vec::with_capacity(T);
    let mut recall = Vec::with_capacity(T);
    for t in 0..T {
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut rc = Vec::with_capacity(items.len());
        let mut pr = Vec::with_capacity(items.len());
        for &(i, d) in &items {
            let r = results[i];
            if !r.ignored(t, d) {
                if r.matched(t, d) {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
            let (tpf, fpf) = (tp as f64, fp as f64);
            rc.push(tpf / npig as f64);
            pr.push(tpf / (fpf + tpf + f64::EPSILON));
        }
        recall.push(rc.last().copied().unwrap_or(0.0));
        for i in (1..pr.len()).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        let q: Vec<f64> = rec_thrs
            .iter()
            .map(|&r| {
                let pi = rc.partition_point(|&x| x < r);
                pr.get(pi).copied().unwrap_or(0.0)
            })
            .collect();
        precision.push(q);
    }
    Some((precision, recall))
}

/// One category's precision and recall per area range and detection cap.
type Acc = Option<(Vec<Vec<f64>>, Vec<f64>)>;

/// One category's results ([A][M] of [`Acc`]) from its ground truth and detections, each in
/// input order: per image (in image order) the detections by score (stable), the first 100,
/// and their IoUs with the ground truth; then each area range's matches and each cap's curve.
fn category_results(img_index: &HashMap<i64, usize>, gts: &[&GtBox], dets: &[DetBox]) -> Vec<Vec<Acc>> {
    let thrs = iou_thresholds();
    let rec_thrs = linspace(0.0, 1.0, R);
    let prepared = prepare(img_index, gts, dets);
    AREA_RANGES
        .iter()
        .map(|&range| {
            let res: Vec<ImageResult> = prepared.par_iter().map(|(_, g, d, ious)| evaluate_image(g, d, ious, &thrs, range)).collect();
            let refs: Vec<&ImageResult> = res.iter().collect();
            // the caps one after another: each holds a curve as long as the category's detections
            MAX_DETS.iter().map(|&m| accumulate(&refs, m, &rec_thrs)).collect()
        })
        .collect()
}

/// One image of one category, as `evaluateImg` leaves it for AP at every area and 100
/// detections: its non-ignored ground truth, and per detection (by score, stable; the first
/// 100) its score and, per IoU threshold, bit 0 matched, bit 1 ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageOutcomes {
    /// The image's position among the sorted, deduplicated image ids.
    pub image: usize,
    pub npig: usize,
    pub scores: Vec<f64>,
    /// `[T × D]`, threshold-major.
    pub flags: Vec<u8>,
}

/// The per-image matches of one category for area "all" (what AP@[.5:.95] accumulates), in
/// image order: [`evaluate`]'s own steps, so that accumulating them gives its AP.
pub fn category_outcomes(img_index: &HashMap<i64, usize>, gts: &[&GtBox], dets: &[DetBox]) -> Vec<ImageOutcomes> {
    let thrs = iou_thresholds();
    prepare(img_index, gts, dets)
        .par_iter()
        .map(|(i, g, d, ious)| {
            let r = evaluate_image(g, d, ious, &thrs, AREA_RANGES[0]);
            ImageOutcomes { image: *i, npig: r.npig, scores: r.scores, flags: r.flags }
        })
        .collect()
}

/// Per image with ground truth or detections of one category (in image order): its ground
/// truth, its detections by score (stable) cut to the largest cap, and their IoUs `[D × G]`.
#[allow(clippy::type_complexity)]
fn prepare<'a>(img_index: &HashMap<i64, usize>, gts: &[&'a GtBox], dets: &'a [DetBox]) -> Vec<(usize, Vec<&'a GtBox>, Vec<&'a DetBox>, Vec<f64>)> {
    type Cell<'a> = (Vec<&'a GtBox>, Vec<&'a DetBox>);
    let mut cells: HashMap<usize, Cell> = HashMap::new();
    for &g in gts {
        cells.entry(img_index[&g.image_id]).or_default().0.push(g);
    }
    for d in dets {
        if let Some(&i) = img_index.get(&d.image_id) {
            cells.entry(i).or_default().1.push(d);
        }
    }
    let max_det = MAX_DETS[MAX_DETS.len() - 1];
    let mut cells: Vec<(usize, Cell)> = cells.into_iter().collect();
    cells.sort_unstable_by_key(|c| c.0);
    // per image: its IoUs [D × G] in one array
    cells
        .into_par_iter()
        .map(|(i, (g, mut d))| {
            d.sort_by(|a, b| b.score.total_cmp(&a.score));
            d.truncate(max_det);
            let ious = d.iter().flat_map(|dd| g.iter().map(|gg| bb_iou(&dd.bbox, &gg.bbox, gg.iscrowd))).collect();
            (i, g, d, ious)
        })
        .collect()
}

/// Evaluates `dets` against `gts` over `image_ids` and `category_ids` (both
/// are sorted and deduplicated here, as pycocotools does). Ground truth and
/// detections of other images or categories are left out.
pub fn evaluate(image_ids: &[i64], category_ids: &[i64], gts: &[GtBox], dets: &[DetBox]) -> CocoReport {
    let mut by_cat: HashMap<i64, Vec<&DetBox>> = HashMap::new();
    for d in dets {
        by_cat.entry(d.category_id).or_default().push(d);
    }
    evaluate_by_category(image_ids, category_ids, gts, &mut |cat| by_cat.get(&cat).map(|v| v.iter().map(|d| (*d).clone()).collect()).unwrap_or_default())
}

/// [`evaluate`] with the detections asked for one category at a time (`dets_of(category id)`,
/// in input order), each category evaluated and freed before the next: memory holds one
/// category's boxes and tables, not every category's. The same numbers as [`evaluate`].
pub fn evaluate_by_category(image_ids: &[i64], category_ids: &[i64], gts: &[GtBox], dets_of: &mut dyn FnMut(i64) -> Vec<DetBox>) -> CocoReport {
    let mut imgs = image_ids.to_vec();
    imgs.sort_unstable();
    imgs.dedup();
    let mut cats_sorted = category_ids.to_vec();
    cats_sorted.sort_unstable();
    cats_sorted.dedup();
    let img_index: HashMap<i64, usize> = imgs.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let cat_index: HashMap<i64, usize> = cats_sorted.iter().enumerate().map(|(k, id)| (*id, k)).collect();
    let k_n = cats_sorted.len();
    let mut gts_of: Vec<Vec<&GtBox>> = vec![Vec::new(); k_n];
    for g in gts {
        if let (Some(&k), true) = (cat_index.get(&g.category_id), img_index.contains_key(&g.image_id)) {
            gts_of[k].push(g);
        }
    }
    // per category: [A][M] -> Option<(precision [T][R], recall [T])>
    let per_cat: Vec<Vec<Vec<Acc>>> = cats_sorted
        .iter()
        .zip(&gts_of)
        .map(|(&cat, gts)| {
            let dets = dets_of(cat);
            category_results(&img_index, gts, &dets)
        })
        .collect();
    let mean = |vals: &mut dyn Iterator<Item = f64>| {
        let (mut s, mut n) = (0.0, 0usize);
        for v in vals.filter(|v| *v > -1.0) {
            s += v;
            n += 1;
        }
        if n == 0 {
            -1.0
        } else {
            s / n as f64
        }
    };
    let m_last = MAX_DETS.len() - 1;
    let ap = |t: Option<usize>, a: usize| {
        mean(&mut per_cat.iter().flat_map(|c| match &c[a][m_last] {
            Some((p, _)) => p.iter().enumerate().filter(|(ti, _)| t.is_none_or(|t| t == *ti)).flat_map(|(_, q)| q.iter().copied()).collect::<Vec<_>>(),
            None => Vec::new(),
        }))
    };
    let ar = |m: usize, a: usize| mean(&mut per_cat.iter().flat_map(|c| c[a][m].as_ref().map(|(_, r)| r.clone()).unwrap_or_default()));
    let stats = [ap(None, 0), ap(Some(0), 0), ap(Some(5), 0), ap(None, 1), ap(None, 2), ap(None, 3), ar(0, 0), ar(1, 0), ar(2, 0), ar(2, 1), ar(2, 2), ar(2, 3)];
    // per category in the caller's order
    let per_category = category_ids
        .iter()
        .map(|id| {
            let k = cat_index[id];
            per_cat[k][0][m_last].as_ref().map(|(p, _)| p.iter().flatten().sum::<f64>() / (T * R) as f64)
        })
        .collect();
    CocoReport { stats, per_category }
}

/// The 12 summaries as pycocotools prints them.
pub fn format_summary(r: &CocoReport) -> String {
    let rows = [
        ("Average Precision", "(AP)", "0.50:0.95", "all", 100),
        ("Average Precision", "(AP)", "0.50", "all", 100),
        ("Average Precision", "(AP)", "0.75", "all", 100),
        ("Average Precision", "(AP)", "0.50:0.95", "small", 100),
        ("Average Precision", "(AP)", "0.50:0.95", "medium", 100),
        ("Average Precision", "(AP)", "0.50:0.95", "large", 100),
        ("Average Recall", "(AR)", "0.50:0.95", "all", 1),
        ("Average Recall", "(AR)", "0.50:0.95", "all", 10),
        ("Average Recall", "(AR)", "0.50:0.95", "all", 100),
        ("Average Recall", "(AR)", "0.50:0.95", "small", 100),
        ("Average Recall", "(AR)", "0.50:0.95", "medium", 100),
        ("Average Recall", "(AR)", "0.50:0.95", "large", 100),
    ];
    rows.iter().zip(r.stats).map(|((t, ty, iou, area, md), v)| format!(" {t:<18} {ty} @[ IoU={iou:<9} | area={area:>6} | maxDets={md:>3} ] = {v:0.3}\n")).collect()
}

/// A random case with what pycocotools' details hinge on, for the parity test
/// and `harness bench eval --coco`: 1 to `max_images` images (exactly
/// `max_images` when it is above 100), sparse category ids of which the last
/// never has ground truth, crowd regions, `area` fields of exactly 32² and
/// 96², images without ground truth, ties in score (a grid of 19 values), and
/// now and then more than 100 detections for an image and category.
/// Returns the instances JSON and the detections.
pub fn random_case(seed: u64, max_images: usize, n_categories: usize) -> (serde_json::Value, Vec<DetBox>) {
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let cats: Vec<i64> = (0..n_categories.max(2) as i64).map(|k| 1 + 4 * k + k * k % 3).collect();
    let with_gt = cats.len() - 1;
    let n_img = if max_images > 100 { max_images } else { rng.random_range(1..=max_images.max(1)) };
    let (mut images, mut anns, mut dets) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n_img {
        let id = 3 + 11 * i as i64;
        let (w, h) = (rng.random_range(200..640), rng.random_range(200..640));
        images.push(json!({"id": id, "width": w, "height": h, "file_name": format!("{id}.jpg")}));
        let n_gt = if rng.random_bool(0.25) { 0 } else { rng.random_range(1..8) };
        let mut boxes: Vec<(i64, [f64; 4])> = Vec::new();
        for _ in 0..n_gt {
            let cat = cats[rng.random_range(0..with_gt)];
            let (bw, bh): (f64, f64) = match rng.random_range(0..5) {
                0 => (32.0, 32.0),
                1 => (96.0, 96.0),
                2 => (rng.random_range(4.0..30.0), rng.random_range(4.0..30.0)),
                _ => (rng.random_range(10.0..150.0), rng.random_range(10.0..150.0)),
            };
            let (x, y) = (rng.random_range(0.0..(w as f64 - bw).max(1.0)), rng.random_range(0.0..(h as f64 - bh).max(1.0)));
            let crowd = rng.random_bool(0.15);
            // the area field: mostly w*h, sometimes exactly 32² or 96² whatever the box
            let area = match rng.random_range(0..6) {
                0 => 1024.0,
                1 => 9216.0,
                _ => bw * bh,
            };
            anns.push(json!({"id": anns.len() + 1, "image_id": id, "category_id": cat, "bbox": [x, y, bw, bh], "area": area, "iscrowd": crowd as u8}));
            boxes.push((cat, [x, y, bw, bh]));
        }
        // detections for the image's categories and two others (the last, without ground truth, among them now and then)
        let mut det_cats: Vec<i64> = boxes.iter().map(|b| b.0).collect();
        det_cats.push(cats[rng.random_range(0..cats.len())]);
        det_cats.push(cats[rng.random_range(0..cats.len())]);
        det_cats.sort_unstable();
        det_cats.dedup();
        for cat in det_cats {
            let n_det = match rng.random_range(0..12) {
                0 => 0,
                1 => rng.random_range(101..140),
                _ => rng.random_range(1..25),
            };
            let same: Vec<[f64; 4]> = boxes.iter().filter(|b| b.0 == cat).map(|b| b.1).collect();
            for _ in 0..n_det {
                let b = if !same.is_empty() && rng.random_bool(0.6) {
                    let g = same[rng.random_range(0..same.len())];
                    let x = g[0] + rng.random_range(-0.25..0.25) * g[2];
                    let y = g[1] + rng.random_range(-0.25..0.25) * g[3];
                    [x, y, (g[2] * rng.random_range(0.7..1.3)).max(1.0), (g[3] * rng.random_range(0.7..1.3)).max(1.0)]
                } else if rng.random_bool(0.1) {
                    [rng.random_range(0.0..100.0), rng.random_range(0.0..100.0), 32.0, 32.0]
                } else {
                    [rng.random_range(0.0..w as f64), rng.random_range(0.0..h as f64), rng.random_range(2.0..120.0), rng.random_range(2.0..120.0)]
                };
                let score = rng.random_range(1..20) as f64 / 20.0;
                dets.push(DetBox { image_id: id, category_id: cat, bbox: b, score });
            }
        }
    }
    let categories: Vec<serde_json::Value> = cats.iter().map(|c| json!({"id": c, "name": format!("class{c}")})).collect();
    (json!({"images": images, "annotations": anns, "categories": categories}), dets)
}

/// A COCO instances file's ground truth as evaluation reads it (the file's own numbers).
pub fn gt_of_file(f: &CocoFile) -> Vec<GtBox> {
    f.annotations.iter().map(|a| GtBox { image_id: a.image_id, category_id: a.category_id, bbox: a.bbox, area: a.area, iscrowd: a.iscrowd == 1 }).collect()
}

/// VOC annotations as COCO ground truth: image ids as [`crate::data::coco::image_ids`]
/// numbers them, category ids 1.. in class order, difficult boxes counted (pycocotools
/// reads no `ignore`), crowd regions kept as crowd.
pub fn gt_of_annotations(anns: &[Annotation]) -> Vec<GtBox> {
    let ids = crate::data::coco::image_ids(anns);
    anns.iter()
        .zip(&ids)
        .flat_map(|(a, &image_id)| {
            a.objects.iter().map(move |o| {
                let bbox = crate::data::coco::voc_to_coco(o.bbox);
                GtBox { image_id, category_id: o.class as i64 + 1, bbox, area: o.area.unwrap_or(bbox[2] * bbox[3]), iscrowd: o.crowd }
            })
        })
        .collect()
}

/// Detections (per class, VOC boxes) in the COCO results format, with the
/// image ids of [`crate::data::coco::image_ids`] and class `c`'s category id `category_ids[c]`.
pub fn dets_of_annotations(anns: &[Annotation], dets: &[Vec<super::Detection>], category_ids: &[i64]) -> Vec<DetBox> {
    let ids = crate::data::coco::image_ids(anns);
    dets.iter().enumerate().flat_map(|(c, d)| dets_of_class(&ids, d, category_ids[c])).collect()
}

/// One class's detections as COCO results of category `category_id`, the image ids `ids[image]`.
pub fn dets_of_class(ids: &[i64], dets: &[super::Detection], category_id: i64) -> Vec<DetBox> {
    dets.iter().map(|d| DetBox { image_id: ids[d.image as usize], category_id, bbox: crate::data::coco::voc_to_coco(d.bbox), score: d.score as f64 }).collect()
}

/// Writes the COCO results format (`[{image_id, category_id, bbox, score}]`).
pub fn results_json(dets: &[DetBox]) -> String {
    serde_json::to_string(dets).expect("plain numbers serialise")
}

/// What [`read_results`] left out: the results whose category the ground
/// truth lacks (pycocotools' COCOeval evaluates only the ground truth's
/// categories, `params.catIds`, and so never sees them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeftOut {
    /// How many results.
    pub results: usize,
    /// Their category ids, sorted, each once.
    pub category_ids: Vec<i64>,
}

/// Reads the COCO results format. A result whose image the ground truth lacks
/// is an error (pycocotools' `loadRes` asserts on it); results whose category
/// it lacks are left out, as pycocotools leaves them out of the evaluation,
/// and counted in [`LeftOut`]. Errors name the file and the entry.
pub fn read_results(path: &Path, gt: &CocoFile) -> Result<(Vec<DetBox>, LeftOut), crate::data::DataError> {
    let text = crate::data::voc::read_to_string(path)?;
    let err = |msg: String| crate::data::DataError::Coco { path: path.to_path_buf(), msg };
    let dets: Vec<DetBox> = serde_json::from_str(&text).map_err(|e| err(format!("not a COCO results list [{{image_id, category_id, bbox, score}}]: {e}")))?;
    let images: HashSet<i64> = gt.images.iter().map(|i| i.id).collect();
    let cats: HashSet<i64> = gt.categories.iter().map(|c| c.id).collect();
    if let Some((n, d)) = dets.iter().enumerate().find(|(_, d)| !images.contains(&d.image_id)) {
        return Err(err(format!("result [{n}]: image_id {} is not an image of the ground truth", d.image_id)));
    }
    let (kept, other): (Vec<DetBox>, Vec<DetBox>) = dets.into_iter().partition(|d| cats.contains(&d.category_id));
    let mut category_ids: Vec<i64> = other.iter().map(|d| d.category_id).collect();
    category_ids.sort_unstable();
    category_ids.dedup();
    Ok((kept, LeftOut { results: other.len(), category_ids }))
}

/// Reads COCO results against a VOC split's annotations `anns` of `k` classes (what
/// `harness detect --format coco` writes for a VOC dataset): image ids as
/// [`crate::data::coco::image_ids`] numbers the split, category ids 1..=k. Per class, the
/// detections as VOC mAP reads them. An image or category outside the split is an error naming
/// the file and the entry.
pub fn read_results_of_split(path: &Path, anns: &[crate::data::Annotation], k: usize) -> Result<Vec<Vec<super::Detection>>, crate::data::DataError> {
    let text = crate::data::voc::read_to_string(path)?;
    let err = |msg: String| crate::data::DataError::Coco { path: path.to_path_buf(), msg };
    let dets: Vec<DetBox> = serde_json::from_str(&text).map_err(|e| err(format!("not a COCO results list [{{image_id, category_id, bbox, score}}]: {e}")))?;
    // an id listed twice in the split is its first entry
    let index: std::collections::HashMap<i64, u32> = crate::data::coco::image_ids(anns).into_iter().enumerate().rev().map(|(i, id)| (id, i as u32)).collect();
    let mut out = vec![Vec::new(); k];
    for (n, d) in dets.iter().enumerate() {
        let image = *index.get(&d.image_id).ok_or_else(|| err(format!("result [{n}]: image_id {} is not an image of the split", d.image_id)))?;
        if d.category_id < 1 || d.category_id > k as i64 {
            return Err(err(format!("result [{n}]: category_id {} is not one of the dataset's 1..={k}", d.category_id)));
        }
        out[(d.category_id - 1) as usize].push(super::Detection { image, score: d.score as f32, bbox: crate::data::coco::coco_to_voc(d.bbox) });
    }
    Ok(out)
}
