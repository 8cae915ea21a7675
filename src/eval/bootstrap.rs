//! The test set resampled: a run's final evaluation kept as match outcomes (`outcomes.txt` in
//! its run directory), from which VOC07 mAP and COCO AP@[.5:.95] are recomputed exactly for any
//! multiset of the test images, without the detector or the dataset.
//!
//! Resampling images does not change any match: each copy of an image brings its own ground
//! truth. An image drawn w times counts its non-difficult objects w times and each of its
//! detections w times at the same place in the score order, so the curves are the evaluation's
//! own, with weighted counts. With every weight 1 the two numbers are the evaluation's, bit for
//! bit (tested). The report's paired bootstrap ([`crate::report`]) draws the same multisets for
//! every arm of a test split.
//!
//! The file: `# outcomes v1`, then `images N`, then per class `class <k> <category id> <name>`
//! followed by its rows: `n <image> <VOC non-difficult objects> <COCO non-ignored objects>`
//! (images with either above 0), `v <image> <score> <t|f|i>` (VOC's detections in its curve order:
//! true positive, false positive, ignored) and `c <image> <score> <10 digits>` (COCO's detections
//! in its merge order, first 100 of an image; per IoU threshold 0 unmatched, 1 matched,
//! 2 ignored). Images are indices into the test split's annotations.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::coco::{category_outcomes, linspace, GtBox, R, T};
use super::{average_precision, match_class, Detection, Outcome, VocMetric};
use crate::data::Annotation;

/// One class's outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassOutcomes {
    pub name: String,
    pub category_id: i64,
    /// Per image: VOC's non-difficult objects, COCO's non-ignored ones.
    pub npos: Vec<u32>,
    pub npig: Vec<u32>,
    /// (image, score, outcome) in VOC's curve order.
    pub voc: Vec<(u32, f32, Outcome)>,
    /// (image, score, per threshold: 0 unmatched, 1 matched, 2 ignored) in COCO's merge order.
    pub coco: Vec<(u32, f64, [u8; T])>,
}

/// A final evaluation's outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes {
    pub images: usize,
    pub classes: Vec<ClassOutcomes>,
}

impl Outcomes {
    /// The outcomes of `dets` (`dets[c]`: class c's detections) on the test split `anns`, with
    /// COCO's ground truth `coco_gt` and the category id of each class.
    pub fn compute(anns: &[Annotation], classes: &[String], dets: &[Vec<Detection>], coco_gt: &[GtBox], category_ids: &[i64]) -> Outcomes {
        let ids = crate::data::coco::image_ids(anns);
        let mut sorted: Vec<(i64, usize)> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        sorted.sort_unstable();
        sorted.dedup_by_key(|x| x.0);
        let img_index: HashMap<i64, usize> = sorted.iter().enumerate().map(|(p, (id, _))| (*id, p)).collect();
        let out = classes
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let (npos_of, matched) = match_class(anns, c, &dets[c]);
                let voc = matched.iter().map(|&(d, o)| (dets[c][d].image, dets[c][d].score, o)).collect();
                let cat = category_ids[c];
                let gts: Vec<&GtBox> = coco_gt.iter().filter(|g| g.category_id == cat && img_index.contains_key(&g.image_id)).collect();
                let boxes = super::coco::dets_of_class(&ids, &dets[c], cat);
                let per_image = category_outcomes(&img_index, &gts, &boxes);
                let mut npig = vec![0u32; anns.len()];
                // COCO's merge order: by score, stable over image order, each image's by score
                let mut items: Vec<(u32, f64, [u8; T])> = Vec::new();
                for r in &per_image {
                    let img = sorted[r.image].1;
                    npig[img] = r.npig as u32;
                    let d_n = r.scores.len();
                    for (d, &score) in r.scores.iter().enumerate() {
                        let mut f = [0u8; T];
                        for (t, x) in f.iter_mut().enumerate() {
                            let v = r.flags[t * d_n + d];
                            *x = if v & 2 != 0 { 2 } else { v & 1 };
                        }
                        items.push((img as u32, score, f));
                    }
                }
                items.sort_by(|a, b| b.1.total_cmp(&a.1));
                ClassOutcomes { name: name.clone(), category_id: cat, npos: npos_of.iter().map(|&n| n as u32).collect(), npig, voc, coco: items }
            })
            .collect();
        Outcomes { images: anns.len(), classes: out }
    }

    /// VOC07 mAP and COCO AP@[.5:.95] with image i counted `w[i]` times (None where no class has
    /// ground truth). With every weight 1: the evaluation's mAP07 and COCO AP.
    pub fn metrics(&self, w: &[u32]) -> (Option<f64>, Option<f64>) {
        (self.voc07(w), self.coco_box_ap(w))
    }

    /// VOC07 mAP with image i counted `w[i]` times.
    pub fn voc07(&self, w: &[u32]) -> Option<f64> {
        debug_assert_eq!(w.len(), self.images);
        let mut aps = Vec::new();
        let (mut rec, mut prec) = (Vec::new(), Vec::new());
        for c in &self.classes {
            let npos: u64 = c.npos.iter().zip(w).map(|(&n, &w)| n as u64 * w as u64).sum();
            if npos == 0 {
                continue;
            }
            let (mut ctp, mut cfp) = (0.0f64, 0.0f64);
            rec.clear();
            prec.clear();
            for &(i, _, o) in &c.voc {
                let k = w[i as usize] as f64;
                if k == 0.0 || o == Outcome::Ignored {
                    continue; // a point that repeats the previous one: no change to either AP
                }
                if o == Outcome::TruePositive {
                    ctp += k;
                } else {
                    cfp += k;
                }
                rec.push(ctp / npos as f64);
                prec.push(ctp / (ctp + cfp));
            }
            aps.push(average_precision(&rec, &prec, VocMetric::Voc07));
        }
        (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64)
    }

    /// COCO AP@[.5:.95] (all areas, 100 detections) with image i counted `w[i]` times.
    pub fn coco_box_ap(&self, w: &[u32]) -> Option<f64> {
        debug_assert_eq!(w.len(), self.images);
        let rec_thrs = linspace(0.0, 1.0, R);
        let (mut sum, mut n) = (0.0f64, 0usize);
        let (mut rc, mut pr) = (Vec::new(), Vec::new());
        for c in &self.classes {
            let npig: u64 = c.npig.iter().zip(w).map(|(&n, &w)| n as u64 * w as u64).sum();
            if npig == 0 {
                continue;
            }
            for t in 0..T {
                let (mut tp, mut fp) = (0u64, 0u64);
                rc.clear();
                pr.clear();
                for &(i, _, f) in &c.coco {
                    let k = w[i as usize] as u64;
                    if k == 0 {
                        continue;
                    }
                    match f[t] {
                        1 => tp += k,
                        0 => fp += k,
                        _ => {}
                    }
                    let (tpf, fpf) = (tp as f64, fp as f64);
                    rc.push(tpf / npig as f64);
                    pr.push(tpf / (fpf + tpf + f64::EPSILON));
                }
                for i in (1..pr.len()).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                for &r in &rec_thrs {
                    let pi = rc.partition_point(|&x| x < r);
                    sum += pr.get(pi).copied().unwrap_or(0.0);
                    n += 1;
                }
            }
        }
        (n > 0).then(|| sum / n as f64)
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("# outcomes v1: the final evaluation's matches (src/eval/bootstrap.rs)\nimages {}\n", self.images);
        for (k, c) in self.classes.iter().enumerate() {
            s.push_str(&format!("class {k} {} {}\n", c.category_id, c.name));
            for (i, (p, g)) in c.npos.iter().zip(&c.npig).enumerate().filter(|(_, (p, g))| **p > 0 || **g > 0) {
                s.push_str(&format!("n {i} {p} {g}\n"));
            }
            for (i, score, o) in &c.voc {
                s.push_str(&format!("v {i} {score} {}\n", match o {
                    Outcome::TruePositive => 't',
                    Outcome::FalsePositive => 'f',
                    Outcome::Ignored => 'i',
                }));
            }
            for (i, score, f) in &c.coco {
                let digits: String = f.iter().map(|d| char::from(b'0' + d)).collect();
                s.push_str(&format!("c {i} {score} {digits}\n"));
            }
        }
        s
    }

    /// Reads `outcomes.txt`; errors name the file and the line.
    pub fn read(path: &Path) -> Result<Outcomes> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut o = Outcomes::default();
        for (n, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), n + 1);
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(' ').collect();
            let img = |k: usize| -> Result<u32> {
                let i: u32 = f.get(k).and_then(|x| x.parse().ok()).with_context(|| format!("{}: no image index", at()))?;
                if i as usize >= o.images {
                    bail!("{}: image {i} is beyond the {} images", at(), o.images);
                }
                Ok(i)
            };
            let need = |k: usize| if f.len() == k { Ok(()) } else { Err(anyhow::anyhow!("{}: expected {k} fields, found {}", at(), f.len())) };
            let cur = || o.classes.len().checked_sub(1).with_context(|| format!("{}: a row before any class line", at()));
            match f[0] {
                "images" => {
                    need(2)?;
                    o.images = f[1].parse().with_context(|| format!("{}: {:?} is not a count", at(), f[1]))?;
                }
                "class" if f.len() >= 4 => {
                    let category_id = f[2].parse().with_context(|| format!("{}: {:?} is not a category id", at(), f[2]))?;
                    o.classes.push(ClassOutcomes { name: f[3..].join(" "), category_id, npos: vec![0; o.images], npig: vec![0; o.images], ..Default::default() });
                }
                "n" => {
                    need(4)?;
                    let (k, i) = (cur()?, img(1)? as usize);
                    let p = |x: &str| x.parse::<u32>().with_context(|| format!("{}: {x:?} is not a count", at()));
                    o.classes[k].npos[i] = p(f[2])?;
                    o.classes[k].npig[i] = p(f[3])?;
                }
                "v" => {
                    need(4)?;
                    let (k, i) = (cur()?, img(1)?);
                    let score: f32 = f[2].parse().with_context(|| format!("{}: {:?} is not a score", at(), f[2]))?;
                    let out = match f[3] {
                        "t" => Outcome::TruePositive,
                        "f" => Outcome::FalsePositive,
                        "i" => Outcome::Ignored,
                        x => bail!("{}: outcome {x:?} is not t, f or i", at()),
                    };
                    o.classes[k].voc.push((i, score, out));
                }
                "c" => {
                    need(4)?;
                    let (k, i) = (cur()?, img(1)?);
                    let score: f64 = f[2].parse().with_context(|| format!("{}: {:?} is not a score", at(), f[2]))?;
                    let b = f[3].as_bytes();
                    if b.len() != T || b.iter().any(|d| !(b'0'..=b'2').contains(d)) {
                        bail!("{}: {:?} is not {T} digits 0-2", at(), f[3]);
                    }
                    let mut fl = [0u8; T];
                    for (x, d) in fl.iter_mut().zip(b) {
                        *x = d - b'0';
                    }
                    o.classes[k].coco.push((i, score, fl));
                }
                x => bail!("{}: unknown row {x:?}", at()),
            }
        }
        if o.images == 0 {
            bail!("{}: no `images` line", path.display());
        }
        Ok(o)
    }
}

/// A multiset of `n` images drawn with replacement: how often each is drawn.
pub fn draw(n: usize, rng: &mut impl rand::Rng) -> Vec<u32> {
    let mut w = vec![0u32; n];
    for _ in 0..n {
        w[rng.random_range(0..n)] += 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::coco::{evaluate_by_category, random_case};
    use rand::{Rng, SeedableRng};

    /// A random VOC case: `n` images with objects of 3 classes (some difficult), detections
    /// near and far from them with tied scores now and then.
    fn case(seed: u64, n: usize) -> (Vec<Annotation>, Vec<String>, Vec<Vec<Detection>>) {
        case_with(seed, n, true)
    }

    /// [`case`], with scores tied now and then (`tied`) or all distinct.
    fn case_with(seed: u64, n: usize, tied: bool) -> (Vec<Annotation>, Vec<String>, Vec<Vec<Detection>>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut anns = Vec::new();
        let mut dets = vec![Vec::new(); 3];
        for i in 0..n {
            let mut objects = Vec::new();
            for _ in 0..rng.random_range(0..4) {
                let (x, y, s) = (rng.random_range(1.0..200.0f32), rng.random_range(1.0..200.0f32), rng.random_range(10.0..80.0f32));
                let class = rng.random_range(0..3);
                objects.push(crate::data::Object { name: classes[class].clone(), class, bbox: [x, y, x + s, y + s], difficult: rng.random_bool(0.15), truncated: false, pose: "Unspecified".into(), crowd: false, area: None });
            }
            for o in &objects {
                for _ in 0..rng.random_range(0..3) {
                    let j = rng.random_range(-8.0..8.0f32);
                    let score = if tied { (rng.random_range(0..20) as f32) / 20.0 } else { rng.random_range(0.0..1.0) };
                    dets[o.class].push(Detection { image: i as u32, score, bbox: [o.bbox[0] + j, o.bbox[1] + j, o.bbox[2] + j, o.bbox[3] - j] });
                }
            }
            for _ in 0..rng.random_range(0..3) {
                let (x, y) = (rng.random_range(1.0..200.0f32), rng.random_range(1.0..200.0f32));
                dets[rng.random_range(0..3)].push(Detection { image: i as u32, score: rng.random_range(0.0..1.0), bbox: [x, y, x + 30.0, y + 30.0] });
            }
            anns.push(Annotation { id: format!("{i:04}"), filename: format!("{i}.jpg"), width: 300, height: 300, depth: 3, objects });
        }
        (anns, classes, dets)
    }

    /// With every weight 1 the outcomes give the evaluation's own mAP07 and COCO AP, bit for
    /// bit; the file reads back to the same outcomes; and a weight of 2 on every image changes
    /// neither (each curve's points repeat), while a resample changes them.
    #[test]
    fn unit_weights_give_the_evaluation_and_the_file_round_trips() {
        for seed in 0..6 {
            let (anns, classes, dets) = case(seed, 40);
            let gt = crate::eval::coco::gt_of_annotations(&anns);
            let cats: Vec<i64> = (1..=3).collect();
            let o = Outcomes::compute(&anns, &classes, &dets, &gt, &cats);
            let ones = vec![1u32; anns.len()];
            let (m07, ap) = o.metrics(&ones);
            assert_eq!(m07, Some(crate::eval::evaluate(&anns, &classes, &dets, VocMetric::Voc07).map), "seed {seed}");
            let ids = crate::data::coco::image_ids(&anns);
            let mut dets_of = |cat: i64| crate::eval::coco::dets_of_class(&ids, &dets[(cat - 1) as usize], cat);
            let want = evaluate_by_category(&ids, &cats, &gt, &mut dets_of).stats[0];
            assert_eq!(ap, Some(want), "seed {seed}");
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("outcomes.txt");
            std::fs::write(&p, o.to_text()).unwrap();
            assert_eq!(Outcomes::read(&p).unwrap(), o);
            let (d07, dap) = o.metrics(&vec![2u32; anns.len()]);
            assert!((d07.unwrap() - m07.unwrap()).abs() < 1e-12 && (dap.unwrap() - ap.unwrap()).abs() < 1e-12);
            let w = draw(anns.len(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(9));
            assert_ne!(o.metrics(&w), (m07, ap));
        }
    }

    /// A resample is a real test set: the weights of a draw give what evaluating the drawn
    /// images (each copy a new image) gives, exactly where no two detections tie in score.
    #[test]
    fn weights_equal_evaluating_the_copies() {
        let (anns, classes, dets) = case_with(3, 30, false);
        let gt = crate::eval::coco::gt_of_annotations(&anns);
        let o = Outcomes::compute(&anns, &classes, &dets, &gt, &[1, 2, 3]);
        let w = draw(anns.len(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(4));
        let mut anns2 = Vec::new();
        let mut dets2 = vec![Vec::new(); 3];
        for (i, &k) in w.iter().enumerate() {
            for _ in 0..k {
                let j = anns2.len() as u32;
                let mut a = anns[i].clone();
                a.id = format!("{j:05}");
                anns2.push(a);
                for c in 0..3 {
                    dets2[c].extend(dets[c].iter().filter(|d| d.image == i as u32).map(|d| Detection { image: j, ..*d }));
                }
            }
        }
        let (m07, ap) = o.metrics(&w);
        let want = crate::eval::evaluate(&anns2, &classes, &dets2, VocMetric::Voc07).map;
        assert!((m07.unwrap() - want).abs() < 1e-12, "{m07:?} vs {want}");
        let gt2 = crate::eval::coco::gt_of_annotations(&anns2);
        let ids2 = crate::data::coco::image_ids(&anns2);
        let mut dets_of = |cat: i64| crate::eval::coco::dets_of_class(&ids2, &dets2[(cat - 1) as usize], cat);
        let want = evaluate_by_category(&ids2, &[1, 2, 3], &gt2, &mut dets_of).stats[0];
        assert!((ap.unwrap() - want).abs() < 1e-12, "{ap:?} vs {want}");
    }

    /// The COCO side on pycocotools' own random case (crowds, area edges, > 100 detections).
    #[test]
    fn coco_random_case_matches() {
        let (gt_json, dets) = random_case(11, 30, 4);
        let file = crate::data::coco::CocoFile::parse(std::path::Path::new("case.json"), &gt_json.to_string()).unwrap();
        let gt = crate::eval::coco::gt_of_file(&file);
        let cats = file.category_ids();
        let anns = file.annotations(std::path::Path::new("images"));
        let ids = crate::data::coco::image_ids(&anns);
        let classes: Vec<String> = cats.iter().map(|c| format!("c{c}")).collect();
        let index: HashMap<i64, u32> = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        let ours: Vec<Vec<Detection>> = cats
            .iter()
            .map(|c| dets.iter().filter(|d| d.category_id == *c && index.contains_key(&d.image_id)).map(|d| Detection { image: index[&d.image_id], score: d.score as f32, bbox: [d.bbox[0] as f32 + 1.0, d.bbox[1] as f32 + 1.0, (d.bbox[0] + d.bbox[2]) as f32, (d.bbox[1] + d.bbox[3]) as f32] }).collect())
            .collect();
        let o = Outcomes::compute(&anns, &classes, &ours, &gt, &cats);
        let mut dets_of = |cat: i64| crate::eval::coco::dets_of_class(&ids, &ours[cats.iter().position(|c| *c == cat).unwrap()], cat);
        let want = evaluate_by_category(&ids, &cats, &gt, &mut dets_of).stats[0];
        assert_eq!(o.metrics(&vec![1; anns.len()]).1, Some(want));
    }
}
