//! The generated default dataset ("shapes-in-clutter"), written in the VOC
//! layout so that the same reader serves it and real VOC.
//!
//! Why it looks the way it does: hard-example mining only matters when most
//! background RoIs are easy and a few are very hard. So the six object classes
//! are defined by *shape alone*: colour and texture are drawn from one palette
//! shared with the background and with many distractors. The distractors are
//! near misses (ellipse vs disc, oblong vs square, 4-point vs 5-point star,
//! T/L vs cross, arc vs ring, pentagon/hexagon, half discs), partial shapes and
//! shapes of no class. Objects span roughly 10-110 px, overlap and occlude each
//! other, and run off the image edge. Boxes cover the visible pixels, as in
//! VOC; the tiniest and most occluded objects are marked `difficult`.
//!
//! Generation is deterministic given the seed: every image has its own
//! ChaCha stream derived from (seed, index), so images are made in parallel.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::voc::{annotation_xml, Annotation, Dataset, Object};
use crate::rundir::write_file;

/// The object classes of the generated data.
pub const CLASSES: [&str; 6] = ["disc", "square", "triangle", "star", "cross", "ring"];

/// Dataset sizes. `Small` keeps tests and the quick demo within minutes on 2
/// CPU cores; `Large` is for the reproduction study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthSize {
    Tiny,
    Small,
    Large,
}

impl SynthSize {
    /// (trainval images, test images)
    pub fn counts(self) -> (usize, usize) {
        match self {
            SynthSize::Tiny => (16, 8),
            SynthSize::Small => (240, 120),
            SynthSize::Large => (1200, 400),
        }
    }
}

/// What `make-dataset` records in `ohem_dataset.json`, to recognise a dataset it made.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthManifest {
    pub generator: String,
    pub size: SynthSize,
    pub seed: u64,
    pub trainval: usize,
    pub test: usize,
    /// `--long-tail R`: the classes' object counts fall geometrically, the last class R times
    /// rarer than the first ([`long_tail_quotas`]); absent: uniform at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_tail: Option<f64>,
}

/// Object counts per class for `n` objects falling geometrically from the first class to the
/// last, which is `ratio` times rarer: the weights `ratio^(-c / (K - 1))`, rounded by largest
/// remainder so that they sum to `n`.
pub fn long_tail_quotas(n: usize, ratio: f64) -> Vec<usize> {
    let k = CLASSES.len();
    let w: Vec<f64> = (0..k).map(|c| ratio.powf(-(c as f64) / (k - 1) as f64)).collect();
    let total: f64 = w.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| n as f64 * x / total).collect();
    let mut q: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|a, b| (exact[*b] - exact[*b].floor()).total_cmp(&(exact[*a] - exact[*a].floor())).then(a.cmp(b)));
    for &c in order.iter().take(n - q.iter().sum::<usize>()) {
        q[c] += 1;
    }
    q
}

/// The classes of every image's objects under `--long-tail ratio`: the objects' count per
/// image is the scene's own (the generator's first draws), the classes the quotas of
/// [`long_tail_quotas`] over all of them, dealt in an order shuffled with `seed`.
fn long_tail_classes(seed: u64, n_images: usize, ratio: f64) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    let counts: Vec<usize> = (0..n_images).into_par_iter().map(|i| {
        let mut rng = scene_rng(seed, i as u64);
        let (w, h) = scene_dims(&mut rng);
        let _ = paint_background(&mut rng, w, h);
        rng.random_range(1..=5usize)
    }).collect();
    let quotas = long_tail_quotas(counts.iter().sum(), ratio);
    let mut deck: Vec<usize> = quotas.iter().enumerate().flat_map(|(c, &q)| std::iter::repeat_n(c, q)).collect();
    deck.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x6c6f_6e67_7461_696c));
    let mut at = 0;
    counts.iter().map(|&n| {
        at += n;
        deck[at - n..at].to_vec()
    }).collect()
}

pub(crate) const GENERATOR: &str = "shapes-in-clutter v1";

/// Writes a generated dataset at `out`. Refuses to touch a non-empty folder it
/// did not make; re-running with the same size and seed is a no-op.
pub fn make_dataset(out: &Path, size: SynthSize, seed: u64, progress: bool) -> Result<SynthManifest> {
    make_dataset_with(out, size, seed, None, progress)
}

/// [`make_dataset`], with `long_tail`: the classes' counts falling geometrically to a last class
/// that many times rarer than the first (the same scenes' layouts, sizes and counts of objects).
pub fn make_dataset_with(out: &Path, size: SynthSize, seed: u64, long_tail: Option<f64>, progress: bool) -> Result<SynthManifest> {
    if let Some(r) = long_tail.filter(|r| !(r.is_finite() && *r >= 1.0)) {
        bail!("--long-tail {r}: the ratio of the most common class to the rarest must be a number at least 1");
    }
    let (n_trainval, n_test) = size.counts();
    let manifest = SynthManifest { generator: GENERATOR.into(), size, seed, trainval: n_trainval, test: n_test, long_tail };
    let manifest_path = out.join("ohem_dataset.json");
    if manifest_path.exists() {
        let text = std::fs::read_to_string(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
        let old: SynthManifest = serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest_path.display()))?;
        if old == manifest {
            return Ok(manifest);
        }
        bail!(
            "{} already holds a generated dataset with different parameters ({:?}, seed {}{}); choose another --out",
            out.display(),
            old.size,
            old.seed,
            old.long_tail.map(|r| format!(", long tail {r}")).unwrap_or_default()
        );
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty; refusing to write a dataset into it", out.display());
    }
    let ds = Dataset { root: out.to_path_buf(), classes: CLASSES.iter().map(|s| s.to_string()).collect(), coco: None };
    ds.write_classes()?;
    let n = n_trainval + n_test;
    let classes = long_tail.map(|r| long_tail_classes(seed, n, r));
    let bar = crate::progress_bar(n as u64, "generating images", progress);
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let id = format!("{:06}", i + 1);
        let (img, ann) = render_scene(seed, i as u64, &id, classes.as_ref().map(|c| c[i].as_slice()));
        let mut jpg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 90)
            .encode_image(&img)
            .with_context(|| format!("encoding image {id}"))?;
        write_file(&ds.image_path(&id), &jpg)?;
        write_file(&ds.annotation_path(&id), annotation_xml(&ann, "ohem-harness shapes-in-clutter").as_bytes())?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    let ids: Vec<String> = (0..n).map(|i| format!("{:06}", i + 1)).collect();
    let (trainval, test) = ids.split_at(n_trainval);
    let (train, val) = trainval.split_at(n_trainval / 2);
    for (split, list) in [("trainval", trainval), ("train", train), ("val", val), ("test", test)] {
        write_file(&ds.split_path(split), (list.join("\n") + "\n").as_bytes())?;
    }
    write_file(&manifest_path, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(manifest)
}

// ---------------------------------------------------------------------------
// Shapes. Each lives in unit coordinates (u, v) in about [-1, 1]^2; an object
// maps pixels into that frame by a rotation and an anisotropic scale.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    // classes
    Disc,
    Square,
    Triangle,
    Star5,
    Cross,
    Ring,
    // distractors: near misses, partial shapes, shapes of no class
    Oblong,
    Star4,
    Pentagon,
    Hexagon,
    TShape,
    LShape,
    Arc,
    HalfDisc,
    Chevron,
    Bar,
}

const DISTRACTORS: [Shape; 10] = [
    Shape::Oblong,
    Shape::Star4,
    Shape::Pentagon,
    Shape::Hexagon,
    Shape::TShape,
    Shape::LShape,
    Shape::Arc,
    Shape::HalfDisc,
    Shape::Chevron,
    Shape::Bar,
];

fn class_shape(class: usize) -> Shape {
    [Shape::Disc, Shape::Square, Shape::Triangle, Shape::Star5, Shape::Cross, Shape::Ring][class]
}

fn regular(n: usize, r_out: f32, r_in: Option<f32>, phase: f32) -> Vec<(f32, f32)> {
    let k = if r_in.is_some() { 2 * n } else { n };
    (0..k)
        .map(|i| {
            let r = if i % 2 == 1 { r_in.unwrap_or(r_out) } else { r_out };
            let a = phase + std::f32::consts::TAU * i as f32 / k as f32;
            (r * a.cos(), r * a.sin())
        })
        .collect()
}

fn in_polygon(poly: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Polygons are computed once per object, not per pixel.
struct ShapeTest {
    shape: Shape,
    poly: Vec<(f32, f32)>,
    arc_span: f32,
}

impl ShapeTest {
    fn new(shape: Shape, rng: &mut ChaCha8Rng) -> Self {
        let up = -std::f32::consts::FRAC_PI_2;
        let poly = match shape {
            Shape::Triangle => regular(3, 1.0, None, up),
            Shape::Star5 => regular(5, 1.0, Some(rng.random_range(0.38..0.5)), up),
            Shape::Star4 => regular(4, 1.0, Some(rng.random_range(0.3..0.45)), up),
            Shape::Pentagon => regular(5, 1.0, None, up),
            Shape::Hexagon => regular(6, 1.0, None, 0.0),
            Shape::Chevron => vec![(-1.0, -0.6), (0.0, 0.4), (1.0, -0.6), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)],
            _ => Vec::new(),
        };
        let arc_span = rng.random_range(3.2..5.2);
        ShapeTest { shape, poly, arc_span }
    }

    fn inside(&self, u: f32, v: f32) -> bool {
        let r2 = u * u + v * v;
        match self.shape {
            Shape::Disc => r2 <= 1.0,
            Shape::Square => u.abs() <= 0.75 && v.abs() <= 0.75,
            Shape::Cross => (u.abs() <= 0.9 && v.abs() <= 0.3) || (u.abs() <= 0.3 && v.abs() <= 0.9),
            Shape::Ring => (0.3..=1.0).contains(&r2),
            Shape::Oblong => u.abs() <= 0.95 && v.abs() <= 0.45,
            Shape::TShape => (u.abs() <= 0.9 && (-0.9..=-0.35).contains(&v)) || (u.abs() <= 0.28 && v.abs() <= 0.9),
            Shape::LShape => (u.abs() <= 0.9 && (0.35..=0.9).contains(&v)) || ((-0.9..=-0.35).contains(&u) && v.abs() <= 0.9),
            Shape::Arc => (0.3..=1.0).contains(&r2) && (v.atan2(u) + std::f32::consts::PI) <= self.arc_span,
            Shape::HalfDisc => r2 <= 1.0 && v >= 0.0,
            Shape::Bar => u.abs() <= 1.0 && v.abs() <= 0.2,
            _ => in_polygon(&self.poly, u, v),
        }
    }
}

// ---------------------------------------------------------------------------
// Colours and textures, shared by objects, distractors and background.

const PALETTE: [[f32; 3]; 10] = [
    [200., 50., 45.],
    [230., 140., 40.],
    [225., 205., 60.],
    [70., 160., 70.],
    [50., 150., 150.],
    [55., 90., 190.],
    [130., 70., 170.],
    [220., 120., 170.],
    [120., 80., 50.],
    [128., 128., 128.],
];

fn palette_colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    let c = PALETTE[rng.random_range(0..PALETTE.len())];
    let j = 30.0;
    [
        (c[0] + rng.random_range(-j..j)).clamp(0.0, 255.0),
        (c[1] + rng.random_range(-j..j)).clamp(0.0, 255.0),
        (c[2] + rng.random_range(-j..j)).clamp(0.0, 255.0),
    ]
}

#[derive(Clone)]
enum Texture {
    Solid([f32; 3]),
    Stripes { a: [f32; 3], b: [f32; 3], dir: (f32, f32), period: f32 },
    Checker { a: [f32; 3], b: [f32; 3], cell: f32 },
    Noise { a: [f32; 3], b: [f32; 3], grid: ValueNoise },
}

impl Texture {
    fn random(rng: &mut ChaCha8Rng, w: u32, h: u32) -> Self {
        let a = palette_colour(rng);
        let b = palette_colour(rng);
        match rng.random_range(0..4) {
            0 => Texture::Solid(a),
            1 => {
                let t: f32 = rng.random_range(0.0..std::f32::consts::PI);
                Texture::Stripes { a, b, dir: (t.cos(), t.sin()), period: rng.random_range(4.0..14.0) }
            }
            2 => Texture::Checker { a, b, cell: rng.random_range(3.0..10.0) },
            _ => {
                let cell = rng.random_range(4.0..16.0);
                Texture::Noise { a, b, grid: ValueNoise::new(rng, w, h, cell) }
            }
        }
    }

    fn at(&self, x: f32, y: f32) -> [f32; 3] {
        let mix = |a: &[f32; 3], b: &[f32; 3], t: f32| [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
        match self {
            Texture::Solid(c) => *c,
            Texture::Stripes { a, b, dir, period } => {
                let s = ((x * dir.0 + y * dir.1) / period).rem_euclid(1.0);
                if s < 0.5 { *a } else { *b }
            }
            Texture::Checker { a, b, cell } => {
                if ((x / cell).floor() as i64 + (y / cell).floor() as i64).rem_euclid(2) == 0 { *a } else { *b }
            }
            Texture::Noise { a, b, grid } => mix(a, b, grid.at(x, y)),
        }
    }
}

/// Bilinear value noise on a coarse random grid.
#[derive(Clone)]
struct ValueNoise {
    gw: usize,
    cell: f32,
    vals: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut ChaCha8Rng, w: u32, h: u32, cell: f32) -> Self {
        let gw = (w as f32 / cell) as usize + 3;
        let gh = (h as f32 / cell) as usize + 3;
        let vals = (0..gw * gh).map(|_| rng.random::<f32>()).collect();
        ValueNoise { gw, cell, vals }
    }
    fn at(&self, x: f32, y: f32) -> f32 {
        let gh = self.vals.len() / self.gw;
        let fx = (x / self.cell).clamp(0.0, (self.gw - 2) as f32);
        let fy = (y / self.cell).clamp(0.0, (gh - 2) as f32);
        let (ix, iy) = (fx.floor() as usize, fy.floor() as usize);
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let g = |i: usize, j: usize| self.vals[j * self.gw + i];
        let top = g(ix, iy) * (1.0 - tx) + g(ix + 1, iy) * tx;
        let bot = g(ix, iy + 1) * (1.0 - tx) + g(ix + 1, iy + 1) * tx;
        top * (1.0 - ty) + bot * ty
    }
}

// ---------------------------------------------------------------------------
// One image.

struct Placed {
    test: ShapeTest,
    texture: Texture,
    cx: f32,
    cy: f32,
    /// pixel radius along u and v
    ru: f32,
    rv: f32,
    cos: f32,
    sin: f32,
    /// Some(class) for an annotated object, None for a distractor
    class: Option<usize>,
}

impl Placed {
    fn extent(&self) -> f32 {
        self.ru.max(self.rv) * 1.05
    }
    /// Coverage of pixel (x, y) (0-based, may lie off the image) with 2x2 supersampling.
    fn coverage(&self, x: i32, y: i32) -> f32 {
        let mut c = 0.0;
        for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
            let dx = x as f32 + ox - self.cx;
            let dy = y as f32 + oy - self.cy;
            let u = (dx * self.cos + dy * self.sin) / self.ru;
            let v = (-dx * self.sin + dy * self.cos) / self.rv;
            if self.test.inside(u, v) {
                c += 0.25;
            }
        }
        c
    }
}

/// The generator of image `index` with this seed.
fn scene_rng(seed: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// The first draws of a scene: its width and height.
fn scene_dims(rng: &mut ChaCha8Rng) -> (u32, u32) {
    let w: u32 = rng.random_range(224..=288);
    let h: u32 = rng.random_range(176..=224);
    (w, h)
}

/// The width and height of image `index` with this seed, without rendering it.
pub(crate) fn scene_size(seed: u64, index: u64) -> (u32, u32) {
    scene_dims(&mut scene_rng(seed, index))
}

/// Renders image `index` of the dataset with this seed. Pure: same inputs, same pixels.
pub(crate) fn render_image(seed: u64, index: u64, id: &str) -> (RgbImage, Annotation) {
    render_scene(seed, index, id, None)
}

/// [`render_image`], the objects' classes given (`--long-tail`) rather than drawn.
fn render_scene(seed: u64, index: u64, id: &str, classes: Option<&[usize]>) -> (RgbImage, Annotation) {
    let mut rng = scene_rng(seed, index);
    let (w, h) = scene_dims(&mut rng);
    let mut canvas = paint_background(&mut rng, w, h);
    let items = place_items(&mut rng, w, h, classes);
    let order = {
        let mut o: Vec<usize> = (0..items.len()).collect();
        for i in (1..o.len()).rev() {
            let j = rng.random_range(0..=i);
            o.swap(i, j);
        }
        o
    };

    let (owner, full_area) = draw_items(&mut rng, &mut canvas, &items, &order, w, h);
    let objects = annotate(&items, &owner, &full_area, w, h);
    let img = quantise(&mut rng, &canvas, w, h);
    let ann = Annotation { id: id.to_string(), filename: format!("{id}.jpg"), width: w, height: h, depth: 3, objects };
    (img, ann)
}

/// The background: low-frequency noise between two palette colours, then
/// textured patches in the same palette. `[h * w]` RGB on a 0-255 scale.
fn paint_background(rng: &mut ChaCha8Rng, w: u32, h: u32) -> Vec<[f32; 3]> {
    let mut canvas = vec![[0f32; 3]; (w * h) as usize];
    let bg_cell = rng.random_range(24.0..64.0);
    let bg = Texture::Noise { a: palette_colour(rng), b: palette_colour(rng), grid: ValueNoise::new(rng, w, h, bg_cell) };
    for y in 0..h {
        for x in 0..w {
            canvas[(y * w + x) as usize] = bg.at(x as f32, y as f32);
        }
    }
    for _ in 0..rng.random_range(2..5) {
        let tex = Texture::random(rng, w, h);
        let (x0, y0) = (rng.random_range(0..w), rng.random_range(0..h));
        let (pw, ph) = (rng.random_range(30..120), rng.random_range(30..120));
        let alpha = rng.random_range(0.3..0.8);
        for y in y0..(y0 + ph).min(h) {
            for x in x0..(x0 + pw).min(w) {
                let p = &mut canvas[(y * w + x) as usize];
                let c = tex.at(x as f32, y as f32);
                for k in 0..3 {
                    p[k] = p[k] * (1.0 - alpha) + c[k] * alpha;
                }
            }
        }
    }

    canvas
}

/// The objects (1 to 5, of the six classes), their near-miss distractors and
/// a few clutter strokes, each placed, sized, turned and textured at random.
fn place_items(rng: &mut ChaCha8Rng, w: u32, h: u32, given: Option<&[usize]>) -> Vec<Placed> {
    let n_obj = rng.random_range(1..=5);
    let n_dis = rng.random_range(3..=9);
    let mut items: Vec<Placed> = Vec::new();
    for k in 0..n_obj + n_dis {
        // the class is drawn either way, and a given class's shape is made from a copy of the
        // generator while the drawn class's consumes the draws: every other draw, and so every
        // object's place, size, turn and texture, is the default scene's
        let drawn = (k < n_obj).then(|| rng.random_range(0..CLASSES.len()));
        let class = drawn.map(|c| given.and_then(|g| g.get(k).copied()).unwrap_or(c));
        let shape = match class {
            Some(c) => class_shape(c),
            None => DISTRACTORS[rng.random_range(0..DISTRACTORS.len())],
        };
        // log-uniform size, 10..110 px across for objects; distractors a bit smaller on average
        let (lo, hi): (f32, f32) = if class.is_some() { (10.0, 110.0) } else { (8.0, 80.0) };
        let diam = (lo.ln() + rng.random::<f32>() * (hi.ln() - lo.ln())).exp();
        let aspect: f32 = if class.is_some() { rng.random_range(0.85..1.18) } else { rng.random_range(0.7..1.4) };
        let theta: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        // allow centres slightly outside the image, so some objects are truncated
        let m = diam * 0.3;
        // where the default scene makes the drawn class's shape: a given class's from a copy
        let test = match (drawn, class) {
            (Some(d), Some(c)) if c != d => {
                let made = ShapeTest::new(shape, &mut rng.clone());
                let _ = ShapeTest::new(class_shape(d), rng);
                made
            }
            _ => ShapeTest::new(shape, rng),
        };
        items.push(Placed {
            test,
            texture: Texture::random(rng, w, h),
            cx: rng.random_range(-m..w as f32 + m),
            cy: rng.random_range(-m..h as f32 + m),
            ru: diam / 2.0 * aspect.sqrt(),
            rv: diam / 2.0 / aspect.sqrt(),
            cos: theta.cos(),
            sin: theta.sin(),
            class,
        });
    }
    // a handful of clutter strokes: thin bars across the image
    for _ in 0..rng.random_range(2..6) {
        let theta: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let len = rng.random_range(30.0..150.0);
        items.push(Placed {
            test: ShapeTest::new(Shape::Bar, rng),
            texture: Texture::random(rng, w, h),
            cx: rng.random_range(0.0..w as f32),
            cy: rng.random_range(0.0..h as f32),
            ru: len / 2.0,
            rv: rng.random_range(4.0..12.0),
            cos: theta.cos(),
            sin: theta.sin(),
            class: None,
        });
    }
    items
}

/// Draws the items in `order` (each can occlude the ones before it), shaded by
/// a gentle light gradient. Returns, per pixel, the item that covers most of
/// it (`usize::MAX`: none), and each item's full area, off the image included.
fn draw_items(rng: &mut ChaCha8Rng, canvas: &mut [[f32; 3]], items: &[Placed], order: &[usize], w: u32, h: u32) -> (Vec<usize>, Vec<f32>) {
    let npx = (w * h) as usize;
    let mut owner = vec![usize::MAX; npx];
    let mut full_area = vec![0f32; items.len()];
    for &idx in order {
        let it = &items[idx];
        let e = it.extent();
        let (x0, x1) = ((it.cx - e).floor() as i64, (it.cx + e).ceil() as i64);
        let (y0, y1) = ((it.cy - e).floor() as i64, (it.cy + e).ceil() as i64);
        // Shading: a gentle linear light gradient over the object, so fills are not flat.
        let shade_dir: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let shade_amt = rng.random_range(0.0..0.25);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let inside_img = x >= 0 && y >= 0 && x < w as i64 && y < h as i64;
                // full area is measured analytically, even off the image (truncation)
                let (xs, ys) = (x.clamp(-10_000, 10_000) as i32, y.clamp(-10_000, 10_000) as i32);
                let c = it.coverage(xs, ys);
                if c <= 0.0 {
                    continue;
                }
                full_area[idx] += c;
                if !inside_img {
                    continue;
                }
                let p = (y as u32 * w + x as u32) as usize;
                let dx = (x as f32 - it.cx) / e;
                let dy = (y as f32 - it.cy) / e;
                let light = 1.0 + shade_amt * (dx * shade_dir.cos() + dy * shade_dir.sin());
                let col = it.texture.at(x as f32, y as f32);
                for k in 0..3 {
                    canvas[p][k] = canvas[p][k] * (1.0 - c) + (col[k] * light).clamp(0.0, 255.0) * c;
                }
                if c >= 0.5 {
                    owner[p] = idx;
                }
            }
        }
    }

    (owner, full_area)
}

/// The annotations, from the visible pixels: a box around what each object
/// owns; hidden objects (under 12 px or 10% visible) are left out, as in VOC,
/// and small or mostly hidden ones are difficult.
fn annotate(items: &[Placed], owner: &[usize], full_area: &[f32], w: u32, h: u32) -> Vec<Object> {
    let mut objects = Vec::new();
    for (idx, it) in items.iter().enumerate() {
        let Some(class) = it.class else { continue };
        let (mut x1, mut y1, mut x2, mut y2, mut vis) = (u32::MAX, u32::MAX, 0u32, 0u32, 0usize);
        for y in 0..h {
            for x in 0..w {
                if owner[(y * w + x) as usize] == idx {
                    x1 = x1.min(x);
                    y1 = y1.min(y);
                    x2 = x2.max(x);
                    y2 = y2.max(y);
                    vis += 1;
                }
            }
        }
        let frac = vis as f32 / full_area[idx].max(1.0);
        if vis < 12 || frac < 0.1 {
            continue; // hidden: not annotated, as in VOC
        }
        let e = it.extent();
        let truncated = it.cx - e < 0.0 || it.cy - e < 0.0 || it.cx + e > w as f32 || it.cy + e > h as f32;
        let truncated = truncated && frac < 0.98 && {
            // truncated only if some of the shape really lies outside
            full_area[idx] > in_image_area(it, w, h) + 0.5
        };
        let side = (x2 - x1 + 1).max(y2 - y1 + 1);
        let difficult = side < 14 || frac < 0.35;
        objects.push(Object {
            name: CLASSES[class].to_string(),
            class,
            bbox: [(x1 + 1) as f32, (y1 + 1) as f32, (x2 + 1) as f32, (y2 + 1) as f32],
            difficult,
            truncated,
            pose: "Unspecified".into(),
            crowd: false,
            area: None,
        });
    }

    objects
}

/// Sensor noise, then 8-bit quantisation.
fn quantise(rng: &mut ChaCha8Rng, canvas: &[[f32; 3]], w: u32, h: u32) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let p = canvas[(y * w + x) as usize];
            let n: f32 = (rng.random::<f32>() - 0.5) * 16.0;
            img.put_pixel(x, y, Rgb([q(p[0] + n), q(p[1] + n), q(p[2] + n)]));
        }
    }
    img
}

fn in_image_area(it: &Placed, w: u32, h: u32) -> f32 {
    let e = it.extent();
    let (x0, x1) = ((it.cx - e).floor().max(0.0) as u32, ((it.cx + e).ceil() as i64).clamp(0, w as i64 - 1) as u32);
    let (y0, y1) = ((it.cy - e).floor().max(0.0) as u32, ((it.cy + e).ceil() as i64).clamp(0, h as i64 - 1) as u32);
    let mut a = 0.0;
    for y in y0..=y1 {
        for x in x0..=x1 {
            a += it.coverage(x as i32, y as i32);
        }
    }
    a
}

fn q(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}
