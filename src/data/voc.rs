//! The PASCAL VOC on-disk layout: reading and writing annotations, split files
//! and images.
//!
//! A root holds `Annotations/<id>.xml`, `JPEGImages/<id>.jpg` and
//! `ImageSets/Main/<split>.txt`. A root may declare its class list in
//! `classes.txt` (one name a line, the generated datasets do); otherwise the 20
//! VOC classes apply. Every problem is reported as a [`DataError`] that names
//! the file, and the line for XML.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use rayon::prelude::*;

use crate::boxes::BBox;

/// The 20 PASCAL VOC classes, in the devkit's order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
];

/// What can be wrong with a dataset on disk. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{0}: not found, or not a folder (a dataset root: a VOC or COCO layout folder)")]
    MissingRoot(PathBuf),
    #[error("split file {path} not found (expected ImageSets/Main/<split>.txt)")]
    MissingSplit { path: PathBuf },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("{path}:{line}: malformed XML: {msg}")]
    Xml { path: PathBuf, line: usize, msg: String },
    #[error("{path}:{line}: <{element}> lacks the field <{field}>")]
    MissingField { path: PathBuf, line: usize, element: String, field: String },
    #[error("{path}:{line}: <{field}> has value {value:?}: {msg}")]
    BadValue { path: PathBuf, line: usize, field: String, value: String, msg: String },
    #[error("{path}:{line}: bad box {bbox:?}: {msg}")]
    BadBox { path: PathBuf, line: usize, bbox: BBox, msg: String },
    #[error("{path}:{line}: unknown class {name:?} (classes: {known})")]
    UnknownClass { path: PathBuf, line: usize, name: String, known: String },
    #[error("image {path} is missing")]
    MissingImage { path: PathBuf },
    #[error("image {path} is not a decodable image: {msg}")]
    BadImage { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    BadClassList { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Coco { path: PathBuf, msg: String },
}

/// One annotated object. `bbox` is 1-based inclusive (see [`crate::boxes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub name: String,
    /// Index into the dataset's class list (0-based; the model adds background).
    pub class: usize,
    pub bbox: BBox,
    pub difficult: bool,
    pub truncated: bool,
    pub pose: String,
    /// A COCO crowd region (`iscrowd: 1`): never foreground or background in
    /// training, no pre-training sample, ignored by VOC mAP, a crowd region in
    /// COCO evaluation. VOC XML has no such field: written as
    /// `<iscrowd>1</iscrowd>` beside `<difficult>1</difficult>`. A crowd region
    /// is never also `difficult` (both readers see to it), so that the same
    /// data reads the same in both layouts.
    pub crowd: bool,
    /// COCO's `area` (what COCO AP's size ranges test); `None`: the box's.
    pub area: Option<f64>,
}

/// One image's annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub id: String,
    pub filename: String,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub objects: Vec<Object>,
}

/// A dataset root and its class list: the VOC layout, or COCO instances
/// files ([`super::coco`]) when `coco` is set.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// COCO: each split's instances file and image folder.
    pub coco: Option<Vec<(String, super::coco::CocoSplit)>>,
}

impl Dataset {
    /// Opens a root: checks it exists and reads `classes.txt` when present.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(DataError::MissingRoot(root));
        }
        let classes_path = root.join("classes.txt");
        let classes = if classes_path.exists() {
            let text = read_to_string(&classes_path)?;
            let classes: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if classes.is_empty() {
                return Err(DataError::BadClassList { path: classes_path, msg: "no class names".into() });
            }
            let mut seen = std::collections::HashSet::new();
            for c in &classes {
                if !seen.insert(c) {
                    return Err(DataError::BadClassList {
                        path: classes_path,
                        msg: format!("class {c:?} is listed twice"),
                    });
                }
            }
            classes
        } else {
            VOC_CLASSES.iter().map(|s| s.to_string()).collect()
        };
        Ok(Self { root, classes, coco: None })
    }

    /// Opens the dataset a config names, in its format (given, or detected
    /// from the root). A COCO dataset takes its classes from the training
    /// split's categories, in id order.
    pub fn from_config(cfg: &crate::config::DatasetConfig) -> Result<Self, DataError> {
        use super::coco::{self, CocoSplit};
        use crate::config::DataFormat;
        let root = &cfg.root;
        if !root.is_dir() {
            return Err(DataError::MissingRoot(root.clone()));
        }
        let format = cfg.format.unwrap_or(if coco::looks_like_coco(root) || cfg.train_ann.is_some() { DataFormat::Coco } else { DataFormat::Voc });
        if format == DataFormat::Voc {
            return Self::open(root);
        }
        let split = |name: &str, ann: &Option<PathBuf>| {
            let ann = ann.clone().unwrap_or_else(|| coco::default_ann_path(root, name));
            let images = cfg.images.clone().unwrap_or_else(|| coco::default_images_dir(root, name));
            (name.to_string(), CocoSplit { ann, images, parsed: None })
        };
        let mut splits = vec![split(&cfg.train_split, &cfg.train_ann), split(&cfg.test_split, &cfg.test_ann)];
        let train = coco::CocoFile::read_shared(&splits[0].1.ann)?;
        let classes = train.classes();
        splits[0].1.parsed = Some(train);
        Ok(Self { root: root.clone(), classes, coco: Some(splits) })
    }

    /// The dataset without the parsed instances file it holds: what a loader that lives as long
    /// as the run needs (where the files are and how to decode them), so that the parse is freed
    /// once the run's start is done with it.
    pub fn without_parses(&self) -> Dataset {
        let coco = self.coco.as_ref().map(|v| v.iter().map(|(n, s)| (n.clone(), super::coco::CocoSplit { parsed: None, ..s.clone() })).collect());
        Dataset { root: self.root.clone(), classes: self.classes.clone(), coco }
    }

    /// A COCO dataset's files for a split.
    pub fn coco_split(&self, split: &str) -> Option<&super::coco::CocoSplit> {
        self.coco.as_ref().and_then(|s| s.iter().find(|(n, _)| n == split).map(|(_, s)| s))
    }

    /// A COCO split's instances file, read and checked against the dataset's
    /// classes (the same category names in the same id order as training's).
    pub fn coco_file(&self, split: &str) -> Result<std::sync::Arc<super::coco::CocoFile>, DataError> {
        let s = self.coco_split(split).ok_or_else(|| DataError::MissingSplit { path: self.root.join(format!("annotations/instances_{split}.json")) })?;
        let f = super::coco::CocoFile::read_shared(&s.ann)?;
        if f.classes() != self.classes {
            return Err(DataError::Coco {
                path: s.ann.clone(),
                msg: format!("its categories {:?} differ from the training split's {:?}", f.classes(), self.classes),
            });
        }
        Ok(f)
    }

    /// Where an image is: `JPEGImages/<id>.jpg` (VOC), or the annotation's
    /// `filename`, which a COCO split resolves against its image folder.
    pub fn image_path_of(&self, ann: &Annotation) -> PathBuf {
        if self.coco.is_some() {
            PathBuf::from(&ann.filename)
        } else {
            self.image_path(&ann.id)
        }
    }

    pub fn annotation_path(&self, id: &str) -> PathBuf {
        self.root.join("Annotations").join(format!("{id}.xml"))
    }

    pub fn image_path(&self, id: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{id}.jpg"))
    }

    pub fn split_path(&self, split: &str) -> PathBuf {
        self.root.join("ImageSets").join("Main").join(format!("{split}.txt"))
    }

    /// The image ids of a split, in file order.
    pub fn split_ids(&self, split: &str) -> Result<Vec<String>, DataError> {
        if self.coco.is_some() {
            return Ok(self.coco_file(split)?.images.iter().map(|i| i.id.to_string()).collect());
        }
        let path = self.split_path(split);
        if !path.is_file() {
            return Err(DataError::MissingSplit { path });
        }
        let text = read_to_string(&path)?;
        // VOC's per-class split files carry a second column (1/-1/0); the id is the first.
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect())
    }

    /// Reads and validates one annotation file.
    pub fn annotation(&self, id: &str) -> Result<Annotation, DataError> {
        let path = self.annotation_path(id);
        let text = read_to_string(&path)?;
        parse_annotation(&path, &text, id, &self.classes)
    }

    /// Reads every annotation of a split (in parallel), in split order.
    pub fn load_split(&self, split: &str) -> Result<Vec<Annotation>, DataError> {
        if self.coco.is_some() {
            let f = self.coco_file(split)?;
            let s = self.coco_split(split).expect("coco_file found the split");
            return Ok(f.annotations(&s.images));
        }
        let ids = self.split_ids(split)?;
        ids.par_iter().map(|id| self.annotation(id)).collect()
    }

    /// Decodes an image as RGB8 and checks its size against the annotation.
    pub fn load_image(&self, ann: &Annotation) -> Result<image::RgbImage, DataError> {
        self.load_image_file(&self.image_path_of(ann), ann.width, ann.height)
    }

    /// Decodes the image file `path` as RGB8 and checks that it is `width` × `height`.
    pub fn load_image_file(&self, path: &Path, width: u32, height: u32) -> Result<image::RgbImage, DataError> {
        let path = path.to_path_buf();
        let img = self.decode_bytes(&path, &read_image_bytes(&path)?)?;
        if img.width() != width || img.height() != height {
            return Err(DataError::BadImage {
                path,
                msg: format!(
                    "decoded size {}x{} differs from the annotation's {}x{}",
                    img.width(),
                    img.height(),
                    width,
                    height
                ),
            });
        }
        Ok(img)
    }

    /// Writes `classes.txt`, an annotation and its image. Used by the generator.
    pub fn write_classes(&self) -> Result<(), DataError> {
        let path = self.root.join("classes.txt");
        Ok(crate::rundir::write_file(&path, (self.classes.join("\n") + "\n").as_bytes())?)
    }
}

impl Dataset {
    /// Decodes an image file's bytes: JPEG for VOC, JPEG or PNG (by content) for COCO.
    pub fn decode_bytes(&self, path: &Path, bytes: &[u8]) -> Result<image::RgbImage, DataError> {
        if self.coco.is_none() {
            return decode_jpeg_bytes(path, bytes);
        }
        let img = image::load_from_memory(bytes).map_err(|e| DataError::BadImage { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(img.to_rgb8())
    }
}

/// Reads an image file's bytes; a missing file is [`DataError::MissingImage`].
pub fn read_image_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::MissingImage { path: path.to_path_buf() },
        _ => DataError::Io { path: path.to_path_buf(), msg: e.to_string() },
    })
}

/// Decodes a JPEG file into RGB8, with errors that name the file.
pub fn decode_jpeg(path: &Path) -> Result<image::RgbImage, DataError> {
    decode_jpeg_bytes(path, &read_image_bytes(path)?)
}

/// Decodes JPEG bytes read from `path` (named in errors) into RGB8.
pub fn decode_jpeg_bytes(path: &Path, bytes: &[u8]) -> Result<image::RgbImage, DataError> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
        .map_err(|e| DataError::BadImage { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok(img.to_rgb8())
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path)
        .map_err(|e| DataError::Io { path: path.to_path_buf(), msg: e.to_string() })
}

impl From<crate::rundir::WriteError> for DataError {
    fn from(e: crate::rundir::WriteError) -> Self {
        DataError::Io { path: e.path, msg: e.source.to_string() }
    }
}

// ---------------------------------------------------------------------------
// XML: a small element tree that remembers the line of every element, so that
// each validation error can point at it.

#[derive(Debug, Default)]
struct Element {
    name: String,
    line: usize,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    1 + text.as_bytes()[..byte.min(text.len())].iter().filter(|&&b| b == b'\n').count()
}

fn parse_tree(path: &Path, text: &str) -> Result<Element, DataError> {
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let xml_err = |pos: usize, msg: String| DataError::Xml { path: path.to_path_buf(), line: line_of(text, pos), msg };
    let mut stack: Vec<Element> = vec![Element::default()];
    loop {
        let pos = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| {
            let at_end = reader.buffer_position() as usize >= text.len();
            let hint = if at_end { " (the file ends early: truncated?)" } else { "" };
            xml_err(reader.error_position() as usize, format!("{e}{hint}"))
        })?;
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                stack.push(Element { name, line: line_of(text, pos), ..Default::default() });
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let el = Element { name, line: line_of(text, pos), ..Default::default() };
                stack.last_mut().expect("stack holds the document").children.push(el);
            }
            Event::End(_) => {
                let el = stack.pop().expect("quick-xml checks end names");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Err(xml_err(pos, "unbalanced end tag".into())),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| xml_err(pos, e.to_string()))?;
                stack.last_mut().expect("stack holds the document").text.push_str(&s);
            }
            Event::CData(t) => {
                let s = String::from_utf8_lossy(&t).into_owned();
                stack.last_mut().expect("stack holds the document").text.push_str(&s);
            }
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref().map_err(|e| xml_err(pos, e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| xml_err(pos, e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| xml_err(pos, format!("unknown entity &{name};")))?
                            .to_string()
                    }
                };
                stack.last_mut().expect("stack holds the document").text.push_str(&s);
            }
            Event::Eof => {
                if stack.len() != 1 {
                    let open = &stack[stack.len() - 1];
                    return Err(xml_err(
                        text.len(),
                        format!("file ends inside <{}> opened at line {} (truncated?)", open.name, open.line),
                    ));
                }
                let doc = stack.pop().expect("document");
                return doc
                    .children
                    .into_iter()
                    .next()
                    .ok_or_else(|| xml_err(0, "no root element (empty file?)".into()));
            }
            _ => {}
        }
    }
}

fn field<'a>(path: &Path, el: &'a Element, name: &str) -> Result<&'a Element, DataError> {
    el.child(name).ok_or_else(|| DataError::MissingField {
        path: path.to_path_buf(),
        line: el.line,
        element: el.name.clone(),
        field: name.to_string(),
    })
}

fn number<T: std::str::FromStr>(path: &Path, el: &Element, name: &str) -> Result<T, DataError> {
    let f = field(path, el, name)?;
    f.text.trim().parse::<T>().map_err(|_| DataError::BadValue {
        path: path.to_path_buf(),
        line: f.line,
        field: name.to_string(),
        value: f.text.trim().to_string(),
        msg: "not a number".into(),
    })
}

fn flag(path: &Path, el: &Element, name: &str) -> Result<bool, DataError> {
    // Optional in real VOC files (some omit <truncated>); absent means 0.
    match el.child(name) {
        None => Ok(false),
        Some(f) => match f.text.trim() {
            "0" | "" => Ok(false),
            "1" => Ok(true),
            v => Err(DataError::BadValue {
                path: path.to_path_buf(),
                line: f.line,
                field: name.to_string(),
                value: v.to_string(),
                msg: "expected 0 or 1".into(),
            }),
        },
    }
}

/// Parses and validates one VOC annotation. `path` is used only in errors.
pub fn parse_annotation(path: &Path, text: &str, id: &str, classes: &[String]) -> Result<Annotation, DataError> {
    parse_with(path, text, id, &mut |name| classes.iter().position(|c| c == name).ok_or_else(|| classes.join(", ")))
}

/// [`parse_annotation`] for a file whose classes are not known beforehand
/// (what `harness tile` reads): a name not in `classes` is appended to it.
pub fn parse_annotation_open(path: &Path, text: &str, id: &str, classes: &mut Vec<String>) -> Result<Annotation, DataError> {
    parse_with(path, text, id, &mut |name| {
        Ok(classes.iter().position(|c| c == name).unwrap_or_else(|| {
            classes.push(name.to_string());
            classes.len() - 1
        }))
    })
}

/// `class_of` maps a name to its index, or to the list of known names for the error.
fn parse_with(path: &Path, text: &str, id: &str, class_of: &mut dyn FnMut(&str) -> Result<usize, String>) -> Result<Annotation, DataError> {
    let root = parse_tree(path, text)?;
    if root.name != "annotation" {
        return Err(DataError::Xml {
            path: path.to_path_buf(),
            line: root.line,
            msg: format!("root element is <{}>, expected <annotation>", root.name),
        });
    }
    let filename = root.child("filename").map(|f| f.text.trim().to_string()).unwrap_or_else(|| format!("{id}.jpg"));
    let size = field(path, &root, "size")?;
    let width: u32 = number(path, size, "width")?;
    let height: u32 = number(path, size, "height")?;
    let depth: u32 = size.child("depth").map(|_| number(path, size, "depth")).transpose()?.unwrap_or(3);
    if width == 0 || height == 0 {
        return Err(DataError::BadValue {
            path: path.to_path_buf(),
            line: size.line,
            field: "size".into(),
            value: format!("{width}x{height}"),
            msg: "image size must be positive".into(),
        });
    }
    let mut objects = Vec::new();
    for obj in root.children("object") {
        let name_el = field(path, obj, "name")?;
        let name = name_el.text.trim().to_string();
        let class = class_of(&name).map_err(|known| DataError::UnknownClass { path: path.to_path_buf(), line: name_el.line, name: name.clone(), known })?;
        let bb = field(path, obj, "bndbox")?;
        let bbox: BBox = [
            number(path, bb, "xmin")?,
            number(path, bb, "ymin")?,
            number(path, bb, "xmax")?,
            number(path, bb, "ymax")?,
        ];
        let bad = |msg: String| DataError::BadBox { path: path.to_path_buf(), line: bb.line, bbox, msg };
        if bbox.iter().any(|v| !v.is_finite()) {
            return Err(bad("coordinates must be finite".into()));
        }
        if bbox[2] < bbox[0] || bbox[3] < bbox[1] {
            return Err(bad("xmax < xmin or ymax < ymin".into()));
        }
        if bbox[0] < 1.0 || bbox[1] < 1.0 || bbox[2] > width as f32 || bbox[3] > height as f32 {
            return Err(bad(format!("outside the {width}x{height} image (VOC boxes are 1-based, inclusive)")));
        }
        // a crowd region is a crowd whatever <difficult> says (written 1 for tools that know no
        // crowds): one object means one thing in both layouts ([`Object::crowd`])
        let crowd = obj.child("iscrowd").map(|_| flag(path, obj, "iscrowd")).transpose()?.unwrap_or(false);
        objects.push(Object {
            name,
            class,
            bbox,
            difficult: flag(path, obj, "difficult")? && !crowd,
            truncated: flag(path, obj, "truncated")?,
            pose: obj.child("pose").map(|p| p.text.trim().to_string()).unwrap_or_else(|| "Unspecified".into()),
            crowd,
            area: None,
        });
    }
    Ok(Annotation { id: id.to_string(), filename, width, height, depth, objects })
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// Renders an annotation in the VOC XML schema.
pub fn annotation_xml(ann: &Annotation, database: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<annotation>");
    let _ = writeln!(s, "\t<folder>{}</folder>", esc(database));
    let _ = writeln!(s, "\t<filename>{}</filename>", esc(&ann.filename));
    let _ = writeln!(s, "\t<source>\n\t\t<database>{}</database>\n\t</source>", esc(database));
    let _ = writeln!(
        s,
        "\t<size>\n\t\t<width>{}</width>\n\t\t<height>{}</height>\n\t\t<depth>{}</depth>\n\t</size>",
        ann.width, ann.height, ann.depth
    );
    let _ = writeln!(s, "\t<segmented>0</segmented>");
    for o in &ann.objects {
        let _ = writeln!(s, "\t<object>");
        let _ = writeln!(s, "\t\t<name>{}</name>", esc(&o.name));
        let _ = writeln!(s, "\t\t<pose>{}</pose>", esc(&o.pose));
        let _ = writeln!(s, "\t\t<truncated>{}</truncated>", o.truncated as u8);
        let _ = writeln!(s, "\t\t<difficult>{}</difficult>", (o.difficult || o.crowd) as u8);
        if o.crowd {
            let _ = writeln!(s, "\t\t<iscrowd>1</iscrowd>");
        }
        let _ = writeln!(
            s,
            "\t\t<bndbox>\n\t\t\t<xmin>{}</xmin>\n\t\t\t<ymin>{}</ymin>\n\t\t\t<xmax>{}</xmax>\n\t\t\t<ymax>{}</ymax>\n\t\t</bndbox>",
            o.bbox[0], o.bbox[1], o.bbox[2], o.bbox[3]
        );
        let _ = writeln!(s, "\t</object>");
    }
    let _ = writeln!(s, "</annotation>");
    s
}

/// Counts objects per class over a split's annotations (difficult ones apart).
pub fn class_counts(anns: &[Annotation], n_classes: usize) -> Vec<(usize, usize)> {
    let mut counts = vec![(0usize, 0usize); n_classes];
    for a in anns {
        for o in &a.objects {
            if o.difficult || o.crowd {
                counts[o.class].1 += 1;
            } else {
                counts[o.class].0 += 1;
            }
        }
    }
    counts
}

/// Index of annotations by image id.
pub fn by_id(anns: &[Annotation]) -> HashMap<&str, &Annotation> {
    anns.iter().map(|a| (a.id.as_str(), a)).collect()
}
