//! The COCO layout: one instances JSON per split beside a folder of images.
//!
//! A COCO box is `[x, y, w, h]` in continuous 0-based pixels: the box covers
//! `[x, x + w) × [y, y + h)`. The rest of the code uses VOC's 1-based inclusive
//! pixel boxes, where pixel `i` (1-based) covers `[i - 1, i)`, so
//! `x1 = x + 1`, `y1 = y + 1`, `x2 = x + w`, `y2 = y + h`, and back
//! `x = x1 − 1`, `w = x2 − x1 + 1` (detectron's convention; exact for whole
//! pixels). For training, boxes are clipped to the image and kept at least a
//! pixel wide ([`coco_to_voc_clipped`]); COCO evaluation reads the file's own
//! numbers.
//!
//! Category ids may be sparse: classes are the categories in id order, and
//! names come from `categories`. `iscrowd: 1` regions are kept as crowd
//! objects (never foreground or background in training, crowd regions in COCO
//! evaluation). Images without annotations are kept. Every error names the
//! file and the image or annotation id, and reading writes nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::voc::{Annotation, DataError, Object};
use crate::boxes::BBox;

/// One image entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CocoImage {
    pub id: i64,
    pub width: u32,
    pub height: u32,
    pub file_name: String,
}

/// One annotation entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    pub bbox: [f64; 4],
    pub area: f64,
    pub iscrowd: u8,
    /// mmdetection's `ignore` flag, for VOC's difficult objects: read back as
    /// difficult (left out of training's ground truth, ignored by VOC mAP).
    /// pycocotools reads no such field, so COCO AP counts these boxes.
    #[serde(skip_serializing_if = "is_zero")]
    pub ignore: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CocoCategory {
    pub id: i64,
    pub name: String,
}

/// A validated instances file.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoFile {
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

#[derive(serde::Deserialize)]
struct RawFile {
    images: Option<Vec<RawImage>>,
    annotations: Option<Vec<RawAnnotation>>,
    categories: Option<Vec<RawCategory>>,
}

#[derive(serde::Deserialize)]
struct RawImage {
    id: Option<i64>,
    width: Option<u32>,
    height: Option<u32>,
    file_name: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawAnnotation {
    id: Option<i64>,
    image_id: Option<i64>,
    category_id: Option<i64>,
    bbox: Option<Vec<f64>>,
    area: Option<f64>,
    iscrowd: Option<serde_json::Value>,
    ignore: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct RawCategory {
    id: Option<i64>,
    name: Option<String>,
}

fn need<T>(path: &Path, v: Option<T>, what: &str, field: &str) -> Result<T, DataError> {
    v.ok_or_else(|| DataError::Coco { path: path.to_path_buf(), msg: format!("{what} lacks the required field `{field}`") })
}

impl CocoFile {
    /// Reads and validates an instances JSON (images are not opened).
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let text = super::voc::read_to_string(path)?;
        Self::parse(path, &text)
    }

    /// Parses and validates instances JSON read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, DataError> {
        let err = |msg: String| DataError::Coco { path: path.to_path_buf(), msg };
        let raw: RawFile = serde_json::from_str(text).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let raw_images = need(path, raw.images, "the file", "images")?;
        let raw_cats = need(path, raw.categories, "the file", "categories")?;
        let raw_anns = raw.annotations.unwrap_or_default();

        let mut categories = Vec::with_capacity(raw_cats.len());
        let mut cat_ids = HashSet::new();
        for (n, c) in raw_cats.into_iter().enumerate() {
            let id = need(path, c.id, &format!("categories[{n}]"), "id")?;
            let name = need(path, c.name, &format!("category id {id}"), "name")?;
            if !cat_ids.insert(id) {
                return Err(err(format!("category id {id} appears twice")));
            }
            categories.push(CocoCategory { id, name });
        }
        let mut names = HashSet::new();
        for c in &categories {
            if !names.insert(c.name.as_str()) {
                return Err(err(format!("category name {:?} is used by two ids", c.name)));
            }
        }

        let mut images = Vec::with_capacity(raw_images.len());
        let mut sizes: HashMap<i64, (u32, u32)> = HashMap::with_capacity(raw_images.len());
        for (n, im) in raw_images.into_iter().enumerate() {
            let id = need(path, im.id, &format!("images[{n}]"), "id")?;
            let what = format!("image id {id}");
            let width = need(path, im.width, &what, "width")?;
            let height = need(path, im.height, &what, "height")?;
            let file_name = need(path, im.file_name, &what, "file_name")?;
            if width == 0 || height == 0 {
                return Err(err(format!("{what}: size {width}x{height} must be positive")));
            }
            if sizes.insert(id, (width, height)).is_some() {
                return Err(err(format!("image id {id} appears twice")));
            }
            images.push(CocoImage { id, width, height, file_name });
        }

        let mut annotations = Vec::with_capacity(raw_anns.len());
        let mut ann_ids = HashSet::with_capacity(raw_anns.len());
        for (n, a) in raw_anns.into_iter().enumerate() {
            let id = need(path, a.id, &format!("annotations[{n}]"), "id")?;
            let what = format!("annotation id {id}");
            let image_id = need(path, a.image_id, &what, "image_id")?;
            let category_id = need(path, a.category_id, &what, "category_id")?;
            let bbox = need(path, a.bbox, &what, "bbox")?;
            if !ann_ids.insert(id) {
                return Err(err(format!("annotation id {id} appears twice")));
            }
            let &(w, h) = sizes.get(&image_id).ok_or_else(|| err(format!("{what}: image_id {image_id} is not an image of this file")))?;
            if !cat_ids.contains(&category_id) {
                return Err(err(format!("{what}: category_id {category_id} is not a category of this file")));
            }
            let bbox: [f64; 4] = bbox.try_into().map_err(|b: Vec<f64>| err(format!("{what}: bbox has {} numbers, expected [x, y, w, h]", b.len())))?;
            if !(bbox[2] > 0.0 && bbox[3] > 0.0) {
                return Err(err(format!("{what}: bbox {bbox:?} has a width or height that is not positive")));
            }
            if bbox[0] >= w as f64 || bbox[1] >= h as f64 || bbox[0] + bbox[2] <= 0.0 || bbox[1] + bbox[3] <= 0.0 {
                return Err(err(format!("{what}: bbox {bbox:?} lies wholly outside its {w}x{h} image (image id {image_id})")));
            }
            let flag = |v: &Option<serde_json::Value>, name: &str| match v {
                None => Ok(0),
                Some(v) => match (v.as_u64(), v.as_bool()) {
                    (Some(0), _) | (_, Some(false)) => Ok(0),
                    (Some(1), _) | (_, Some(true)) => Ok(1),
                    _ => Err(err(format!("{what}: {name} is {v}, expected 0 or 1"))),
                },
            };
            let iscrowd = flag(&a.iscrowd, "iscrowd")?;
            let ignore = flag(&a.ignore, "ignore")?;
            let area = a.area.unwrap_or(bbox[2] * bbox[3]);
            if !(area >= 0.0) {
                return Err(err(format!("{what}: area {area} is negative")));
            }
            annotations.push(CocoAnnotation { id, image_id, category_id, bbox, area, iscrowd, ignore });
        }
        Ok(CocoFile { images, annotations, categories })
    }

    /// Class names in category-id order (the class index of a category).
    pub fn classes(&self) -> Vec<String> {
        let mut c: Vec<&CocoCategory> = self.categories.iter().collect();
        c.sort_by_key(|c| c.id);
        c.into_iter().map(|c| c.name.clone()).collect()
    }

    /// One [`Annotation`] per image, in file order, with classes as
    /// [`CocoFile::classes`] orders them and boxes converted to VOC's 1-based
    /// inclusive pixels by [`coco_to_voc_clipped`]. `filename` is `images_dir`
    /// joined with the image's `file_name`; `id` is the image id.
    pub fn annotations(&self, images_dir: &Path) -> Vec<Annotation> {
        let classes = self.classes();
        let class_of: HashMap<i64, usize> = self.categories.iter().map(|c| (c.id, classes.iter().position(|n| *n == c.name).expect("a listed class"))).collect();
        let mut by_image: HashMap<i64, Vec<&CocoAnnotation>> = HashMap::new();
        for a in &self.annotations {
            by_image.entry(a.image_id).or_default().push(a);
        }
        self.images
            .iter()
            .map(|im| {
                let objects = by_image
                    .get(&im.id)
                    .map(|v| v.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        let class = class_of[&a.category_id];
                        let bbox = coco_to_voc_clipped(a.bbox, im.width, im.height);
                        Object { name: classes[class].clone(), class, bbox, difficult: a.ignore == 1 && a.iscrowd == 0, truncated: false, pose: "Unspecified".into(), crowd: a.iscrowd == 1, area: Some(a.area) }
                    })
                    .collect();
                Annotation { id: im.id.to_string(), filename: images_dir.join(&im.file_name).to_string_lossy().into_owned(), width: im.width, height: im.height, depth: 3, objects }
            })
            .collect()
    }

    /// The category ids in id order: class `c`'s id is the `c`-th (see [`CocoFile::classes`]).
    pub fn category_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.categories.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    /// A file from annotations: image `k` gets id `ids[k]`, category ids
    /// are 1.. in class order, annotation ids 1.. in order; `file_name` is
    /// `file_name(annotation)`. A difficult object is written with `ignore: 1`.
    pub fn from_annotations(anns: &[Annotation], ids: &[i64], classes: &[String], file_name: &dyn Fn(&Annotation) -> String) -> Self {
        let categories = classes.iter().enumerate().map(|(k, n)| CocoCategory { id: k as i64 + 1, name: n.clone() }).collect();
        let mut images = Vec::with_capacity(anns.len());
        let mut annotations = Vec::new();
        for (a, &image_id) in anns.iter().zip(ids) {
            images.push(CocoImage { id: image_id, width: a.width, height: a.height, file_name: file_name(a) });
            for o in &a.objects {
                let bbox = voc_to_coco(o.bbox);
                annotations.push(CocoAnnotation {
                    id: annotations.len() as i64 + 1,
                    image_id,
                    category_id: o.class as i64 + 1,
                    bbox,
                    area: o.area.unwrap_or(bbox[2] * bbox[3]),
                    iscrowd: o.crowd as u8,
                    ignore: (o.difficult && !o.crowd) as u8,
                });
            }
        }
        CocoFile { images, annotations, categories }
    }

    /// The file as JSON (`images`, `annotations`, `categories`).
    pub fn to_json(&self) -> String {
        serde_json::json!({ "images": self.images, "annotations": self.annotations, "categories": self.categories }).to_string()
    }
}

/// Image ids for annotations written as COCO: each VOC id that is a decimal
/// number keeps it when all are numbers and distinct; otherwise 1, 2, … in order.
/// (One split as evaluation reads it: an id listed twice is two entries, as it always was.)
pub fn image_ids(anns: &[Annotation]) -> Vec<i64> {
    let parsed: Option<Vec<i64>> = anns.iter().map(|a| a.id.parse::<i64>().ok()).collect();
    if let Some(p) = parsed {
        if p.iter().collect::<HashSet<_>>().len() == p.len() {
            return p;
        }
    }
    (1..=anns.len() as i64).collect()
}

/// COCO image ids for VOC ids, which may repeat (one image in two splits gets one id):
/// the ids themselves when every one is a decimal number and no two distinct ids parse
/// to one number (`7` and `007`); otherwise 1, 2, … in order of first appearance.
pub fn numbering<'a>(ids: &[&'a str]) -> HashMap<&'a str, i64> {
    let mut distinct: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for &id in ids {
        if seen.insert(id) {
            distinct.push(id);
        }
    }
    let parsed: Option<Vec<i64>> = distinct.iter().map(|id| id.parse::<i64>().ok()).collect();
    if let Some(p) = parsed {
        if p.iter().collect::<HashSet<_>>().len() == p.len() {
            return distinct.into_iter().zip(p).collect();
        }
    }
    distinct.into_iter().zip(1..).collect()
}

/// COCO `[x, y, w, h]` → VOC 1-based inclusive `[x1, y1, x2, y2]`.
pub fn coco_to_voc(b: [f64; 4]) -> BBox {
    [(b[0] + 1.0) as f32, (b[1] + 1.0) as f32, (b[0] + b[2]) as f32, (b[1] + b[3]) as f32]
}

/// COCO `[x, y, w, h]` → a VOC box inside a `width` × `height` image, always
/// valid (`1 <= x1 <= x2 <= width`, the same for y): [`coco_to_voc`] clipped to
/// the image, the start kept within the last pixel, and the end raised to the
/// start. So a box that starts in the last column (`x + 1 > width`) is that
/// column, and a box under a pixel wide (`w < 1`, where `x + w < x + 1`) is the
/// pixel it starts in. Every box that clipping alone leaves valid keeps its
/// numbers bit for bit. (detectron and mmdetection leave such sub-pixel boxes
/// out of training instead; here they stay, one pixel wide, so that no
/// annotation is lost and `convert` writes every object as a box that the VOC
/// reader accepts.)
pub fn coco_to_voc_clipped(b: [f64; 4], width: u32, height: u32) -> BBox {
    let [x1, y1, x2, y2] = coco_to_voc(b);
    let (w, h) = (width as f32, height as f32);
    let (x1, y1) = (x1.max(1.0).min(w), y1.max(1.0).min(h));
    [x1, y1, x2.min(w).max(x1), y2.min(h).max(y1)]
}

/// VOC 1-based inclusive `[x1, y1, x2, y2]` → COCO `[x, y, w, h]`.
pub fn voc_to_coco(b: BBox) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0]
}

/// Where a COCO dataset's files are: the instances file of a split and the
/// folder its `file_name`s are relative to; the training split's file, parsed
/// once, is held here while the [`super::Dataset`] lives ([`CocoFile::read_shared`]).
#[derive(Debug, Clone)]
pub struct CocoSplit {
    pub ann: PathBuf,
    pub images: PathBuf,
    pub parsed: Option<std::sync::Arc<CocoFile>>,
}

/// What identifies one version of a file on disk: its device and inode, its length, and its
/// modification and change times (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(u64, u64, u64, i64, i64, i64, i64);

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp(m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
    }
}

impl CocoFile {
    /// [`CocoFile::read`], parsed once while any holder keeps the result: a second read of the
    /// same unchanged file (device, inode, length, modification and change times) by this
    /// process returns the same parse. The memo holds no file itself, so memory is what the
    /// holders keep. The training split's file is read three or four times at a start (the
    /// classes, the annotations, the pre-training's key and its source); it is parsed once.
    pub fn read_shared(path: &Path) -> Result<std::sync::Arc<CocoFile>, DataError> {
        use std::sync::{Arc, Mutex, Weak};
        type Memo = Vec<(PathBuf, FileStamp, Weak<CocoFile>)>;
        static MEMO: Mutex<Memo> = Mutex::new(Vec::new());
        let stamp = FileStamp::of(path);
        if let Some(stamp) = stamp {
            let memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = memo.iter().find(|(p, s, _)| p == path && *s == stamp).and_then(|(_, _, w)| w.upgrade()) {
                return Ok(f);
            }
        }
        let f = Arc::new(Self::read(path)?);
        if let Some(stamp) = stamp.filter(|s| FileStamp::of(path) == Some(*s)) {
            let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
            memo.retain(|(p, _, w)| w.strong_count() > 0 && p != path);
            memo.push((path.to_path_buf(), stamp, Arc::downgrade(&f)));
        }
        Ok(f)
    }
}

/// The default instances file of a split: `<root>/annotations/instances_<split>.json`.
pub fn default_ann_path(root: &Path, split: &str) -> PathBuf {
    root.join("annotations").join(format!("instances_{split}.json"))
}

/// The default image folder of a split: `<root>/<split>` when it exists
/// (COCO 2017's `train2017/`, `val2017/`), else `<root>/images`.
pub fn default_images_dir(root: &Path, split: &str) -> PathBuf {
    let per_split = root.join(split);
    if per_split.is_dir() {
        per_split
    } else {
        root.join("images")
    }
}

/// Whether a root looks like a COCO dataset: an `annotations/instances_*.json`
/// and no VOC `Annotations/` folder.
pub fn looks_like_coco(root: &Path) -> bool {
    if root.join("Annotations").is_dir() {
        return false;
    }
    std::fs::read_dir(root.join("annotations"))
        .map(|rd| rd.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("instances_") && n.ends_with(".json"))))
        .unwrap_or(false)
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, Default)]
pub struct ConvertSummary {
    pub splits: Vec<(String, usize, usize)>,
    /// Images that were not JPEG and were encoded as JPEG (quality 95) for the VOC layout.
    pub reencoded: usize,
}

/// The splits a dataset has: VOC's `ImageSets/Main/*.txt`, COCO's `annotations/instances_*.json`.
pub fn list_splits(root: &Path, coco: bool) -> Vec<String> {
    let (dir, pre, ext) = if coco { (root.join("annotations"), "instances_", ".json") } else { (root.join("ImageSets").join("Main"), "", ".txt") };
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(pre)?.strip_suffix(ext).map(String::from))).filter(|n| !n.contains('_')).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Converts the dataset at `src` (VOC, or COCO with `annotations/instances_<split>.json`
/// and the default image folders) into the other layout at `out`, for `splits`
/// (all when empty). Built in `<out>.partial` and renamed, so a failure leaves
/// nothing at `out`; an `out` that exists is refused. No split's image can
/// replace another's: every split is read first, and ids are given over all of them.
///
/// VOC → COCO: `images/<id>.jpg` (the same bytes), `annotations/instances_<split>.json`
/// with image ids from [`numbering`] over every split's ids (an image in two
/// splits has one id and one file; distinct images never share one), category
/// ids 1.. in class order, difficult objects with `ignore: 1`. COCO → VOC:
/// each image is named by its `file_name`'s stem, `JPEGImages/<stem>.jpg`
/// (JPEG bytes kept, other formats encoded at quality 95), one XML per image,
/// `classes.txt` in category-id order (the ids themselves are not kept),
/// crowd regions as difficult objects with `<iscrowd>1</iscrowd>`. Two
/// different image files with one stem (e.g. `train/0001.jpg` and
/// `val/0001.jpg`) are refused, naming both; the same file in two splits is
/// one image.
pub fn convert(src: &Path, out: &Path, splits: &[String]) -> anyhow::Result<ConvertSummary> {
    use anyhow::{bail, Context};
    use crate::config::{DataFormat, DatasetConfig};
    if out.exists() {
        bail!("{} exists; refusing to write a dataset over it", out.display());
    }
    if !src.is_dir() {
        bail!("{}: not found (a dataset root, VOC or COCO layout)", src.display());
    }
    let to_coco = !looks_like_coco(src);
    let splits: Vec<String> = if splits.is_empty() { list_splits(src, !to_coco) } else { splits.to_vec() };
    if splits.is_empty() {
        bail!("{} has no splits ({})", src.display(), if to_coco { "ImageSets/Main/<split>.txt" } else { "annotations/instances_<split>.json" });
    }
    let tmp = PathBuf::from(format!("{}.partial", out.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let result = (|| -> anyhow::Result<ConvertSummary> {
        let mut loaded = Vec::with_capacity(splits.len());
        for split in &splits {
            let mut cfg = DatasetConfig::voc(src);
            cfg.train_split = split.clone();
            cfg.test_split = split.clone();
            cfg.format = Some(if to_coco { DataFormat::Voc } else { DataFormat::Coco });
            let ds = super::Dataset::from_config(&cfg)?;
            let anns = ds.load_split(split)?;
            if let Some((first, fds, _)) = loaded.first() {
                let fds: &super::Dataset = fds;
                if fds.classes != ds.classes {
                    bail!("{}: split {split:?} has the classes {:?}, split {first:?} {:?}; one dataset has one class list", src.display(), ds.classes, fds.classes);
                }
            }
            loaded.push((split.clone(), ds, anns));
        }
        if to_coco {
            write_as_coco(&loaded, &tmp)
        } else {
            write_as_voc(&loaded, &tmp)
        }
    })();
    match result {
        Ok(sum) => {
            std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            crate::rundir::sync_dir(out.parent().unwrap_or(Path::new(".")));
            Ok(sum)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Every split read by [`convert`]: its name, its dataset and its annotations.
type Loaded = [(String, super::Dataset, Vec<Annotation>)];

fn write_as_coco(loaded: &Loaded, tmp: &Path) -> anyhow::Result<ConvertSummary> {
    let all: Vec<&str> = loaded.iter().flat_map(|(_, _, anns)| anns.iter().map(|a| a.id.as_str())).collect();
    let number = numbering(&all);
    let mut written = HashSet::new();
    let mut sum = ConvertSummary::default();
    for (split, ds, anns) in loaded {
        let ids: Vec<i64> = anns.iter().map(|a| number[a.id.as_str()]).collect();
        let file = CocoFile::from_annotations(anns, &ids, &ds.classes, &|a| format!("{}.jpg", a.id));
        for a in anns {
            if written.insert(a.id.clone()) {
                let bytes = super::voc::read_image_bytes(&ds.image_path_of(a))?;
                crate::rundir::write_file(&tmp.join("images").join(format!("{}.jpg", a.id)), &bytes)?;
            }
        }
        crate::rundir::write_file(&default_ann_path(tmp, split), file.to_json().as_bytes())?;
        sum.splits.push((split.clone(), anns.len(), file.annotations.len()));
    }
    Ok(sum)
}

fn write_as_voc(loaded: &Loaded, tmp: &Path) -> anyhow::Result<ConvertSummary> {
    use anyhow::{bail, Context};
    let voc = super::Dataset { root: tmp.to_path_buf(), classes: loaded[0].1.classes.clone(), coco: None };
    voc.write_classes()?;
    // stem → the image file it came from, its split and id, and its annotation
    let mut seen: HashMap<String, (PathBuf, String, String, Annotation)> = HashMap::new();
    let mut sum = ConvertSummary::default();
    for (split, ds, anns) in loaded {
        let mut ids = Vec::with_capacity(anns.len());
        let mut n_obj = 0;
        for a in anns {
            let path = ds.image_path_of(a);
            let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty() && !s.chars().any(char::is_whitespace));
            let Some(stem) = stem else {
                bail!("{}: image id {} has the file name {:?}, whose stem cannot name a VOC image (empty, not UTF-8, or with a space)", ds.coco_split(split).map_or(ds.root.clone(), |s| s.ann.clone()).display(), a.id, path.display());
            };
            let mut v = a.clone();
            v.id = stem.to_string();
            v.filename = format!("{stem}.jpg");
            if let Some((prev, psplit, pid, pann)) = seen.get(stem) {
                let same_file = prev == &path || matches!((prev.canonicalize(), path.canonicalize()), (Ok(x), Ok(y)) if x == y);
                if !same_file {
                    bail!("{} (split {psplit}, image id {pid}) and {} (split {split}, image id {}) have one file stem, {stem:?}: the VOC layout names an image JPEGImages/{stem}.jpg, so one would replace the other; rename one of the files", prev.display(), path.display(), a.id);
                }
                if pann.objects != v.objects || (pann.width, pann.height) != (v.width, v.height) {
                    bail!("{}: image ids {pid} (split {psplit}) and {} (split {split}) are this one file with different annotations; the VOC layout holds one annotation an image", path.display(), a.id);
                }
                ids.push(v.id.clone());
                n_obj += a.objects.len();
                continue;
            }
            let bytes = super::voc::read_image_bytes(&path)?;
            let jpeg = if image::guess_format(&bytes).ok() == Some(image::ImageFormat::Jpeg) {
                bytes
            } else {
                let img = ds.decode_bytes(&path, &bytes)?;
                let mut jpg = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 95).encode_image(&img).with_context(|| format!("encoding {} as JPEG", path.display()))?;
                sum.reencoded += 1;
                jpg
            };
            crate::rundir::write_file(&voc.image_path(&v.id), &jpeg)?;
            crate::rundir::write_file(&voc.annotation_path(&v.id), super::voc::annotation_xml(&v, "converted from COCO").as_bytes())?;
            ids.push(v.id.clone());
            n_obj += a.objects.len();
            seen.insert(v.id.clone(), (path, split.clone(), a.id.clone(), v));
        }
        crate::rundir::write_file(&voc.split_path(split), (ids.join("\n") + "\n").as_bytes())?;
        sum.splits.push((split.clone(), anns.len(), n_obj));
    }
    Ok(sum)
}
