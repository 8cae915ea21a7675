//! Selective search (Uijlings, van de Sande, Gevers & Smeulders, IJCV 2013).
//!
//! For each strategy (colour space x FH threshold k x similarity set) the image
//! is over-segmented with Felzenszwalb-Huttenlocher, then neighbouring regions
//! are merged greedily by the highest similarity until one region is left.
//! Every region of the hierarchy is a proposal. Similarities (all in [0, 1]):
//! colour = histogram intersection of 25-bin/channel colour histograms,
//! texture = intersection of 8-orientation x 10-bin/channel gradient
//! histograms, size = 1 - (|ri|+|rj|)/|im|, fill = 1 - (|BBij|-|ri|-|rj|)/|im|.
//!
//! Ranking follows the paper: within a strategy a region created at step t of
//! an n-step hierarchy gets position n - t (the whole image is 1), multiplied
//! by a random number in (0, 1); all strategies are pooled, sorted by that
//! value, and exact duplicates are dropped. The random numbers come from a
//! generator seeded by the image's pixels, so a given image always gets the
//! same list.

use std::collections::{BinaryHeap, HashSet};

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::felzenszwalb::{gaussian_blur, segment, Planes};
use crate::boxes::BBox;
pub use crate::config::SsMode;

/// Colour spaces of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColourSpace {
    Rgb,
    Hsv,
    Lab,
    RgI,
}

/// Which similarities a strategy sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sims {
    pub colour: bool,
    pub texture: bool,
    pub size: bool,
    pub fill: bool,
}

pub const CTSF: Sims = Sims { colour: true, texture: true, size: true, fill: true };
pub const TSF: Sims = Sims { colour: false, texture: true, size: true, fill: true };

impl SsMode {
    /// The strategies a mode runs: (colour space, k, similarities).
    pub fn strategies(self) -> Vec<(ColourSpace, f32, Sims)> {
        let (spaces, ks): (&[ColourSpace], &[f32]) = match self {
            SsMode::Single => return vec![(ColourSpace::Hsv, 100.0, CTSF)],
            SsMode::Fast => (&[ColourSpace::Hsv, ColourSpace::Lab], &[50.0, 100.0]),
            SsMode::Quality => (&[ColourSpace::Hsv, ColourSpace::Lab, ColourSpace::RgI, ColourSpace::Rgb], &[50.0, 100.0, 150.0, 300.0]),
        };
        let mut out = Vec::new();
        for &cs in spaces {
            for &k in ks {
                for sims in [CTSF, TSF] {
                    out.push((cs, k, sims));
                }
            }
        }
        out
    }
}

/// Converts to planar channels in [0, 1].
pub fn convert(img: &RgbImage, cs: ColourSpace) -> Planes {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut ch = vec![vec![0f32; w * h]; 3];
    for (i, p) in img.pixels().enumerate() {
        let [r, g, b] = [p[0] as f32 / 255.0, p[1] as f32 / 255.0, p[2] as f32 / 255.0];
        let v = match cs {
            ColourSpace::Rgb => [r, g, b],
            ColourSpace::Hsv => {
                let mx = r.max(g).max(b);
                let mn = r.min(g).min(b);
                let d = mx - mn;
                let hue = if d <= 0.0 {
                    0.0
                } else if mx == r {
                    ((g - b) / d).rem_euclid(6.0) / 6.0
                } else if mx == g {
                    ((b - r) / d + 2.0) / 6.0
                } else {
                    ((r - g) / d + 4.0) / 6.0
                };
                let s = if mx <= 0.0 { 0.0 } else { d / mx };
                [hue, s, mx]
            }
            ColourSpace::Lab => {
                let lin = |c: f32| if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) };
                let (rl, gl, bl) = (lin(r), lin(g), lin(b));
                let x = (0.412_456_4 * rl + 0.357_576_1 * gl + 0.180_437_5 * bl) / 0.950_47;
                let y = 0.212_672_9 * rl + 0.715_152_2 * gl + 0.072_175 * bl;
                let z = (0.019_333_9 * rl + 0.119_192 * gl + 0.950_304_1 * bl) / 1.088_83;
                let f = |t: f32| if t > 0.008_856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
                let (fx, fy, fz) = (f(x), f(y), f(z));
                let l = 116.0 * fy - 16.0;
                let a = 500.0 * (fx - fy);
                let bb = 200.0 * (fy - fz);
                [(l / 100.0).clamp(0.0, 1.0), ((a + 128.0) / 255.0).clamp(0.0, 1.0), ((bb + 128.0) / 255.0).clamp(0.0, 1.0)]
            }
            ColourSpace::RgI => {
                let s = r + g + b;
                if s <= 0.0 {
                    [1.0 / 3.0, 1.0 / 3.0, 0.0]
                } else {
                    [r / s, g / s, s / 3.0]
                }
            }
        };
        for c in 0..3 {
            ch[c][i] = v[c];
        }
    }
    Planes { w, h, ch }
}

const COLOUR_BINS: usize = 25;
const TEX_BINS: usize = 10;
const TEX_ORIENT: usize = 8;
const COL_DIM: usize = 3 * COLOUR_BINS;
const TEX_DIM: usize = 3 * TEX_ORIENT * TEX_BINS;

/// Per-pixel bin indices: colour bins `[3][px]`, texture bins `[3*8][px]`.
struct PixelBins {
    colour: Vec<[u8; 3]>,
    texture: Vec<[u8; 3 * TEX_ORIENT]>,
}

fn pixel_bins(p: &Planes) -> PixelBins {
    let n = p.w * p.h;
    let mut colour = vec![[0u8; 3]; n];
    for (i, c) in colour.iter_mut().enumerate() {
        for k in 0..3 {
            c[k] = ((p.ch[k][i] * COLOUR_BINS as f32) as usize).min(COLOUR_BINS - 1) as u8;
        }
    }
    // Texture: gradients of the Gaussian-smoothed (sigma 1) channel, projected on
    // 4 axes, positive and negative parts = 8 orientations, each scaled to [0, 1].
    let sm = gaussian_blur(p, 1.0);
    let (w, h) = (p.w as i64, p.h as i64);
    let mut texture = vec![[0u8; 3 * TEX_ORIENT]; n];
    let axes: [(f32, f32); 4] = [(1.0, 0.0), (0.707_106_8, 0.707_106_8), (0.0, 1.0), (-0.707_106_8, 0.707_106_8)];
    for c in 0..3 {
        let src = &sm.ch[c];
        let at = |x: i64, y: i64| src[(y.clamp(0, h - 1) * w + x.clamp(0, w - 1)) as usize];
        let mut resp = vec![[0f32; TEX_ORIENT]; n];
        let mut maxv = [1e-12f32; TEX_ORIENT];
        for y in 0..h {
            for x in 0..w {
                let gx = (at(x + 1, y) - at(x - 1, y)) * 0.5;
                let gy = (at(x, y + 1) - at(x, y - 1)) * 0.5;
                let r = &mut resp[(y * w + x) as usize];
                for (a, (cx, cy)) in axes.iter().enumerate() {
                    let d = gx * cx + gy * cy;
                    r[2 * a] = d.max(0.0);
                    r[2 * a + 1] = (-d).max(0.0);
                }
                for o in 0..TEX_ORIENT {
                    maxv[o] = maxv[o].max(r[o]);
                }
            }
        }
        for (i, r) in resp.iter().enumerate() {
            for o in 0..TEX_ORIENT {
                texture[i][c * TEX_ORIENT + o] = ((r[o] / maxv[o] * TEX_BINS as f32) as usize).min(TEX_BINS - 1) as u8;
            }
        }
    }
    PixelBins { colour, texture }
}

#[derive(Clone)]
struct Region {
    /// 0-based inclusive
    bbox: [u32; 4],
    size: f32,
    col: Vec<f32>,
    tex: Vec<f32>,
}

fn intersect(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x.min(*y)).sum()
}

fn similarity(a: &Region, b: &Region, sims: Sims, im_size: f32) -> f32 {
    let mut s = 0.0;
    if sims.colour {
        s += intersect(&a.col, &b.col);
    }
    if sims.texture {
        s += intersect(&a.tex, &b.tex);
    }
    if sims.size {
        s += 1.0 - (a.size + b.size) / im_size;
    }
    if sims.fill {
        let bb = [a.bbox[0].min(b.bbox[0]), a.bbox[1].min(b.bbox[1]), a.bbox[2].max(b.bbox[2]), a.bbox[3].max(b.bbox[3])];
        let bb_size = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)) as f32;
        s += 1.0 - (bb_size - a.size - b.size) / im_size;
    }
    s
}

fn merge(a: &Region, b: &Region) -> Region {
    let size = a.size + b.size;
    let mix = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p * a.size + q * b.size) / size).collect();
    Region {
        bbox: [a.bbox[0].min(b.bbox[0]), a.bbox[1].min(b.bbox[1]), a.bbox[2].max(b.bbox[2]), a.bbox[3].max(b.bbox[3])],
        size,
        col: mix(&a.col, &b.col),
        tex: mix(&a.tex, &b.tex),
    }
}

/// Heap entry, ordered by similarity (ties: larger indices first, deterministic).
#[derive(PartialEq)]
struct Cand(f32, usize, usize);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1)).then(self.2.cmp(&o.2))
    }
}

/// Initial regions and their adjacency from a label image.
fn initial_regions(labels: &[u32], n: usize, w: usize, h: usize, bins: &PixelBins) -> (Vec<Region>, Vec<HashSet<usize>>) {
    let mut regs: Vec<Region> = (0..n)
        .map(|_| Region { bbox: [u32::MAX, u32::MAX, 0, 0], size: 0.0, col: vec![0.0; COL_DIM], tex: vec![0.0; TEX_DIM] })
        .collect();
    let mut nbrs = vec![HashSet::new(); n];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = labels[i] as usize;
            let r = &mut regs[l];
            r.bbox = [r.bbox[0].min(x as u32), r.bbox[1].min(y as u32), r.bbox[2].max(x as u32), r.bbox[3].max(y as u32)];
            r.size += 1.0;
            for c in 0..3 {
                r.col[c * COLOUR_BINS + bins.colour[i][c] as usize] += 1.0;
            }
            for (o, &b) in bins.texture[i].iter().enumerate() {
                r.tex[o * TEX_BINS + b as usize] += 1.0;
            }
            if x + 1 < w && labels[i + 1] as usize != l {
                let m = labels[i + 1] as usize;
                nbrs[l].insert(m);
                nbrs[m].insert(l);
            }
            if y + 1 < h && labels[i + w] as usize != l {
                let m = labels[i + w] as usize;
                nbrs[l].insert(m);
                nbrs[m].insert(l);
            }
        }
    }
    for r in &mut regs {
        // L1-normalise each histogram as a whole (paper: n=75 and n=240 dims).
        let (sc, st) = (r.col.iter().sum::<f32>(), r.tex.iter().sum::<f32>());
        r.col.iter_mut().for_each(|v| *v /= sc);
        r.tex.iter_mut().for_each(|v| *v /= st);
    }
    (regs, nbrs)
}

/// Greedy hierarchical grouping; returns all regions' boxes in creation order
/// (initial regions first, the whole image last).
fn hierarchy(mut regs: Vec<Region>, mut nbrs: Vec<HashSet<usize>>, sims: Sims, im_size: f32) -> Vec<[u32; 4]> {
    let mut heap = BinaryHeap::new();
    for (i, ns) in nbrs.iter().enumerate() {
        for &j in ns {
            if i < j {
                heap.push(Cand(similarity(&regs[i], &regs[j], sims, im_size), i, j));
            }
        }
    }
    let mut alive = vec![true; regs.len()];
    while let Some(Cand(_, i, j)) = heap.pop() {
        if !alive[i] || !alive[j] {
            continue;
        }
        let t = regs.len();
        regs.push(merge(&regs[i], &regs[j]));
        alive[i] = false;
        alive[j] = false;
        alive.push(true);
        let mut tn: HashSet<usize> = nbrs[i].union(&nbrs[j]).copied().collect();
        tn.remove(&i);
        tn.remove(&j);
        for &n in &tn {
            nbrs[n].remove(&i);
            nbrs[n].remove(&j);
            nbrs[n].insert(t);
            heap.push(Cand(similarity(&regs[t], &regs[n], sims, im_size), n, t));
        }
        nbrs[i].clear();
        nbrs[j].clear();
        nbrs.push(tn);
    }
    regs.into_iter().map(|r| r.bbox).collect()
}

/// Runs selective search on one image. Boxes are 1-based inclusive, in rank
/// order, deduplicated, at least `min_side` px on each side, at most `max_boxes`.
pub fn selective_search(img: &RgbImage, mode: SsMode, sigma: f32, min_side: u32, max_boxes: usize) -> Vec<BBox> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let im_size = (w * h) as f32;
    let seed = img.as_raw().iter().fold(0xcbf2_9ce4_8422_2325u64, |a, &b| (a ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ranked: Vec<(f32, [u32; 4])> = Vec::new();
    let strategies = mode.strategies();
    // Segmentation and pixel bins depend only on (colour space, k): share them.
    let mut cache: Vec<((ColourSpace, u32), (Vec<u32>, usize, PixelBins))> = Vec::new();
    for (cs, k, sims) in strategies {
        let key = (cs, k as u32);
        if !cache.iter().any(|(kk, _)| *kk == key) {
            let planes = convert(img, cs);
            let bins = pixel_bins(&planes);
            let scaled = Planes { w, h, ch: planes.ch.iter().map(|c| c.iter().map(|v| v * 255.0).collect()).collect() };
            let (labels, n) = segment(&scaled, sigma, k, k as usize);
            cache.push((key, (labels, n, bins)));
        }
        let (labels, n, bins) = &cache.iter().find(|(kk, _)| *kk == key).expect("just inserted").1;
        let (regs, nbrs) = initial_regions(labels, *n, w, h, bins);
        let boxes = hierarchy(regs, nbrs, sims, im_size);
        let total = boxes.len();
        for (t, b) in boxes.into_iter().enumerate() {
            let pos = (total - t) as f32;
            ranked.push((pos * rng.random::<f32>(), b));
        }
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (_, b) in ranked {
        if b[2] - b[0] + 1 < min_side || b[3] - b[1] + 1 < min_side || !seen.insert(b) {
            continue;
        }
        out.push([(b[0] + 1) as f32, (b[1] + 1) as f32, (b[2] + 1) as f32, (b[3] + 1) as f32]);
        if out.len() >= max_boxes {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_square_on_a_plain_background() {
        let mut img = RgbImage::from_pixel(64, 48, image::Rgb([30, 90, 200]));
        for y in 10..30 {
            for x in 20..44 {
                img.put_pixel(x, y, image::Rgb([230, 200, 40]));
            }
        }
        let boxes = selective_search(&img, SsMode::Fast, 0.8, 2, 1000);
        let gt = [21.0, 11.0, 44.0, 30.0];
        let best = boxes.iter().map(|b| crate::boxes::iou(b, &gt)).fold(0.0, f32::max);
        assert!(best > 0.9, "best IoU {best}, boxes {boxes:?}");
        // the whole image is among the proposals, and there are no duplicates
        assert!(boxes.contains(&[1.0, 1.0, 64.0, 48.0]));
        let set: HashSet<[u32; 4]> = boxes.iter().map(|b| b.map(|v| v as u32)).collect();
        assert_eq!(set.len(), boxes.len());
    }

    #[test]
    fn hsv_and_lab_of_known_colours() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([255, 255, 255]));
        let hsv = convert(&img, ColourSpace::Hsv);
        assert_eq!([hsv.ch[0][0], hsv.ch[1][0], hsv.ch[2][0]], [0.0, 1.0, 1.0]);
        let lab = convert(&img, ColourSpace::Lab);
        // white: L = 100, a = b = 0 -> (1, 128/255, 128/255)
        assert!((lab.ch[0][1] - 1.0).abs() < 1e-3);
        assert!((lab.ch[1][1] - 128.0 / 255.0).abs() < 1e-3 && (lab.ch[2][1] - 128.0 / 255.0).abs() < 1e-3);
        // red: L = 53.24, a = 80.09, b = 67.20 (standard sRGB/D65 values)
        assert!((lab.ch[0][0] * 100.0 - 53.24).abs() < 0.1);
        assert!((lab.ch[1][0] * 255.0 - 128.0 - 80.09).abs() < 0.2);
        assert!((lab.ch[2][0] * 255.0 - 128.0 - 67.20).abs() < 0.2);
    }
}
