//! `harness tile`: cuts large annotated images (aerial and satellite
//! photographs) into fixed-size tiles and writes them as a split of a VOC-layout
//! dataset that the rest of the pipeline reads unchanged.
//!
//! Input: VOC annotation files (one XML per image); each names its image (PNG
//! or JPEG) in `<filename>`, relative to the XML's folder, as labelImg and the
//! `deepforest` package write them.
//!
//! Tiles are `size`×`size` pixels, placed every `size − overlap` pixels from
//! the top-left corner; the last tile of a row (column) is moved left (up) to
//! end at the image's edge, so every tile is whole and every pixel covered. An
//! image smaller than a tile is an error.
//!
//! A box cut by a tile's edge is clipped to the tile and judged by the share
//! of its area that lies inside (the inclusive VOC area, see [`crate::boxes`]):
//! kept when at least `keep` (default 0.7, mmrotate's DOTA splitter's
//! `iof_thr`), kept but marked difficult when at least `drop` (default 0.3),
//! dropped below. Difficult objects are neither trained on nor counted against
//! the detector (VOC's rule), so a tree cut in half is neither a positive nor a
//! background. A box difficult in the source stays difficult.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::voc::{annotation_xml, parse_annotation_open, read_to_string, Annotation, Dataset, Object};
use crate::boxes::{area, BBox};
use crate::rundir::write_file;

/// How to cut and what to keep.
#[derive(Debug, Clone)]
pub struct TileParams {
    /// Tile side in pixels.
    pub size: u32,
    /// Pixels shared by neighbouring tiles.
    pub overlap: u32,
    /// Keep a clipped box when at least this share of its area is inside the tile.
    pub keep: f32,
    /// Drop it below this share; between `drop` and `keep` it is kept, marked difficult.
    pub drop: f32,
    /// Renames applied to the source's class names (`Dead` → `Tree`).
    pub class_map: Vec<(String, String)>,
    /// Leave out tiles with no box at all.
    pub drop_empty: bool,
    /// JPEG quality of the written tiles.
    pub quality: u8,
    /// Put before every tile id (`{dir}`: the name of the source XML's folder), so that sources
    /// with the same file stem (per-site exports named `image.xml`) give distinct ids.
    pub prefix: String,
}

impl Default for TileParams {
    fn default() -> Self {
        TileParams { size: 400, overlap: 0, keep: 0.7, drop: 0.3, class_map: Vec::new(), drop_empty: false, quality: 95, prefix: String::new() }
    }
}

impl TileParams {
    pub fn check(&self) -> Result<()> {
        if self.size < 16 {
            bail!("--size {}: a tile is at least 16 pixels", self.size);
        }
        if self.overlap >= self.size {
            bail!("--overlap {} must be smaller than --size {}", self.overlap, self.size);
        }
        if !(self.drop >= 0.0 && self.drop <= self.keep && self.keep > 0.0 && self.keep <= 1.0) {
            bail!("--keep {} / --drop {}: need 0 <= drop <= keep <= 1 and keep > 0", self.keep, self.drop);
        }
        if !(1..=100).contains(&self.quality) {
            bail!("--quality {}: a JPEG quality is 1-100", self.quality);
        }
        if self.prefix.contains(['/', '\\']) || self.prefix.chars().any(char::is_whitespace) {
            bail!("--prefix {:?}: an id prefix has no slash and no space (ids are file names and split-file entries)", self.prefix);
        }
        Ok(())
    }
}

/// Parses `--class-map Dead=Tree,Alive=Tree`.
pub fn parse_class_map(s: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => Ok((a.trim().to_string(), b.trim().to_string())),
            _ => bail!("--class-map: {p:?} is not FROM=TO"),
        })
        .collect()
}

/// The 0-based left edges of the tiles along a side of `len` pixels.
pub fn positions(len: u32, size: u32, overlap: u32) -> Vec<u32> {
    debug_assert!(size <= len && overlap < size);
    let stride = size - overlap;
    let mut v: Vec<u32> = (0..).map(|k| k * stride).take_while(|&x| x + size < len).collect();
    v.push(len - size); // the last tile ends at the edge
    v
}

/// What becomes of one box in one tile.
#[derive(Debug, Clone, PartialEq)]
pub enum Clipped {
    /// Wholly outside the tile.
    Outside,
    /// Less than `drop` of it inside.
    Dropped,
    /// In the tile's coordinates; `difficult` when less than `keep` of it is inside.
    Kept { bbox: BBox, difficult: bool },
}

/// Clips a 1-based inclusive box of the source image to the tile whose 0-based
/// top-left pixel is (`x0`, `y0`), and returns it in the tile's own 1-based
/// coordinates (the tile's pixel 0 is the source's `x0`, so source x = tile x + x0).
pub fn clip(b: &BBox, x0: u32, y0: u32, size: u32, keep: f32, drop: f32) -> Clipped {
    let (x0, y0, s) = (x0 as f32, y0 as f32, size as f32);
    let t = [b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0];
    let c = [t[0].max(1.0), t[1].max(1.0), t[2].min(s), t[3].min(s)];
    if c[2] < c[0] || c[3] < c[1] {
        return Clipped::Outside;
    }
    let inside = area(&c) / area(b);
    if inside < drop || inside == 0.0 {
        Clipped::Dropped
    } else {
        Clipped::Kept { bbox: c, difficult: inside < keep }
    }
}

/// Counts of one `tile_into` call.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TileSummary {
    pub images: usize,
    pub tiles: usize,
    /// Tiles with no box left out (`drop_empty`).
    pub empty_skipped: usize,
    /// Source boxes.
    pub boxes: usize,
    /// Box instances written (a box in an overlap is written once per tile).
    pub kept: usize,
    pub difficult: usize,
    /// Box pieces dropped for lying less than `drop` inside a tile.
    pub dropped: usize,
    pub classes: Vec<String>,
}

/// Reads a source annotation (classes renamed by `map`, new ones appended to `classes`).
fn read_annotation(xml: &Path, classes: &mut Vec<String>, map: &[(String, String)]) -> Result<Annotation> {
    let text = read_to_string(xml)?;
    let stem = xml.file_stem().and_then(|s| s.to_str()).with_context(|| format!("{}: not a file name", xml.display()))?;
    let mut raw_classes = Vec::new();
    let mut ann = parse_annotation_open(xml, &text, stem, &mut raw_classes)?;
    for o in &mut ann.objects {
        if let Some((_, to)) = map.iter().find(|(from, _)| *from == o.name) {
            o.name = to.clone();
        }
        o.class = classes.iter().position(|c| *c == o.name).unwrap_or_else(|| {
            classes.push(o.name.clone());
            classes.len() - 1
        });
    }
    Ok(ann)
}

/// Decodes the image a source annotation names, with errors that name the files.
fn read_image(xml: &Path, ann: &Annotation) -> Result<image::RgbImage> {
    let img_path = xml.parent().unwrap_or(Path::new(".")).join(&ann.filename);
    let img = image::ImageReader::open(&img_path)
        .with_context(|| format!("{}: its image {} cannot be opened", xml.display(), img_path.display()))?
        .with_guessed_format()
        .with_context(|| format!("image {}: unreadable", img_path.display()))?
        .decode()
        .with_context(|| format!("image {} (of {}): not a decodable image", img_path.display(), xml.display()))?
        .to_rgb8();
    if (img.width(), img.height()) != (ann.width, ann.height) {
        bail!("image {} is {}x{}, but {} says {}x{}", img_path.display(), img.width(), img.height(), xml.display(), ann.width, ann.height);
    }
    Ok(img)
}

/// Checks, from its header alone, that the image a source annotation names opens and has the
/// annotation's size: so that a call fails before it writes anything, not half-way.
fn check_image(xml: &Path, ann: &Annotation) -> Result<()> {
    let img_path = xml.parent().unwrap_or(Path::new(".")).join(&ann.filename);
    let reader = image::ImageReader::open(&img_path).with_context(|| format!("{}: its image {} cannot be opened", xml.display(), img_path.display()))?;
    let (w, h) = reader
        .with_guessed_format()
        .with_context(|| format!("image {}: unreadable", img_path.display()))?
        .into_dimensions()
        .with_context(|| format!("image {} (of {}): not a decodable image", img_path.display(), xml.display()))?;
    if (w, h) != (ann.width, ann.height) {
        bail!("image {} is {w}x{h}, but {} says {}x{}", img_path.display(), xml.display(), ann.width, ann.height);
    }
    Ok(())
}

/// The id prefix of a source: `prefix` with `{dir}` replaced by the name of the folder the XML is in.
fn prefix_of(prefix: &str, xml: &Path) -> Result<String> {
    if !prefix.contains("{dir}") {
        return Ok(prefix.to_string());
    }
    let abs = std::path::absolute(xml).with_context(|| format!("{}: resolving its folder", xml.display()))?;
    let dir = abs.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str()).with_context(|| format!("--prefix {prefix:?}: {} has no named folder for {{dir}}", xml.display()))?;
    Ok(prefix.replace("{dir}", dir))
}

/// One tile to write: its top-left pixel in the source, and its annotation (its id included).
struct PlannedTile {
    x0: u32,
    y0: u32,
    ann: Annotation,
}

/// Where a tile was cut from: one row of the root's `tiles.csv`, which `harness tile` appends to
/// (grid `splits:` group tiles by it, so that tiles of one photograph or one spatial block never
/// straddle training and test).
#[derive(Debug, Clone, PartialEq)]
pub struct TileRecord {
    pub id: String,
    /// The source photograph: the id prefix and the source XML's stem (`<prefix><stem>`).
    pub source: String,
    /// The tile's 0-based top-left pixel in the source, and its size.
    pub x0: u32,
    pub y0: u32,
    pub size: u32,
    pub source_width: u32,
    pub source_height: u32,
}

/// The header of `tiles.csv`.
pub const TILES_HEADER: &str = "id,source,x0,y0,size,source_width,source_height";

/// The tile records of a VOC root (`<root>/tiles.csv`), keyed by tile id; None when the root has
/// no such file (it was not made by `harness tile`). Errors name the file, the line and the value.
pub fn read_tile_records(root: &Path) -> Result<Option<std::collections::HashMap<String, TileRecord>>> {
    let path = root.join("tiles.csv");
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_to_string(&path)?;
    let mut out = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if n == 0 {
            if line != TILES_HEADER {
                bail!("{}:1: expected the header `{TILES_HEADER}`, found {line:?}", path.display());
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 7 {
            bail!("{}:{}: expected 7 fields ({TILES_HEADER}), found {}", path.display(), n + 1, f.len());
        }
        let num = |k: usize| -> Result<u32> { f[k].trim().parse::<u32>().with_context(|| format!("{}:{}: {:?} is not a pixel count", path.display(), n + 1, f[k])) };
        let r = TileRecord { id: f[0].to_string(), source: f[1].to_string(), x0: num(2)?, y0: num(3)?, size: num(4)?, source_width: num(5)?, source_height: num(6)? };
        if out.insert(r.id.clone(), r).is_some() {
            bail!("{}:{}: tile {:?} is listed twice", path.display(), n + 1, f[0]);
        }
    }
    Ok(Some(out))
}

/// Appends the planned tiles' records to the root's `tiles.csv` (written whole, atomically).
fn append_tile_records(root: &Path, plans: &[(PathBuf, Annotation, Vec<PlannedTile>)], prefixes: &[String], p: &TileParams) -> Result<()> {
    let path = root.join("tiles.csv");
    let mut text = if path.is_file() { read_to_string(&path)? } else { format!("{TILES_HEADER}\n") };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    for ((_, ann, tiles), prefix) in plans.iter().zip(prefixes) {
        for t in tiles {
            text.push_str(&format!("{},{prefix}{},{},{},{},{},{}\n", t.ann.id, ann.id, t.x0, t.y0, p.size, ann.width, ann.height));
        }
    }
    Ok(write_file(&path, text.as_bytes())?)
}

/// Cuts one source annotation into tiles (no image is read), counting into `sum`.
fn plan_source(ann: &Annotation, prefix: &str, p: &TileParams, sum: &mut TileSummary) -> Vec<PlannedTile> {
    let mut tiles = Vec::new();
    for &y0 in &positions(ann.height, p.size, p.overlap) {
        for &x0 in &positions(ann.width, p.size, p.overlap) {
            let mut objects = Vec::new();
            for o in &ann.objects {
                match clip(&o.bbox, x0, y0, p.size, p.keep, p.drop) {
                    Clipped::Outside => {}
                    Clipped::Dropped => sum.dropped += 1,
                    Clipped::Kept { bbox, difficult } => {
                        let cut = bbox != [o.bbox[0] - x0 as f32, o.bbox[1] - y0 as f32, o.bbox[2] - x0 as f32, o.bbox[3] - y0 as f32];
                        objects.push(Object { bbox, difficult: difficult || o.difficult, truncated: o.truncated || cut, ..o.clone() });
                    }
                }
            }
            if objects.is_empty() && p.drop_empty {
                sum.empty_skipped += 1;
                continue;
            }
            sum.kept += objects.iter().filter(|o| !o.difficult).count();
            sum.difficult += objects.iter().filter(|o| o.difficult).count();
            let id = format!("{prefix}{}_x{x0}_y{y0}", ann.id);
            tiles.push(PlannedTile { x0, y0, ann: Annotation { id: id.clone(), filename: format!("{id}.jpg"), width: p.size, height: p.size, depth: 3, objects } });
        }
    }
    tiles
}

/// Refuses a tile id that another source of this call, or a file or split already in the
/// root, holds: the error names both (tiling never overwrites an image or an annotation).
fn check_ids(ds: &Dataset, plans: &[(PathBuf, Annotation, Vec<PlannedTile>)]) -> Result<()> {
    let hint = "give each source its own ids with --prefix (e.g. --prefix '{dir}_' for the name of the XML's folder)";
    let mut listed: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    if let Ok(rd) = std::fs::read_dir(ds.root.join("ImageSets").join("Main")) {
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "txt") {
                for id in read_to_string(&path)?.lines().filter_map(|l| l.split_whitespace().next()) {
                    listed.entry(id.to_string()).or_insert_with(|| path.clone());
                }
            }
        }
    }
    let mut ours: std::collections::HashMap<&str, &Path> = std::collections::HashMap::new();
    for (xml, _, tiles) in plans {
        for t in tiles {
            let id = t.ann.id.as_str();
            if id.contains(['/', '\\']) || id.chars().any(char::is_whitespace) {
                bail!("{}: tile id {id:?} has a slash or a space (ids are file names and split-file entries); rename the file", xml.display());
            }
            if let Some(other) = ours.insert(id, xml) {
                bail!("{} and {} both give tile {id:?}; {hint}", other.display(), xml.display());
            }
            for existing in [ds.image_path(id), ds.annotation_path(id)] {
                if existing.exists() {
                    bail!("{}: its tile {id:?} would overwrite {}, already in the root; {hint}", xml.display(), existing.display());
                }
            }
            if let Some(split) = listed.get(id) {
                bail!("{}: its tile {id:?} is already listed in {}; {hint}", xml.display(), split.display());
            }
        }
    }
    Ok(())
}

/// Cuts and writes the planned tiles, source by source; `ids` gets each tile as it is written.
fn write_tiles(ds: &Dataset, plans: &[(PathBuf, Annotation, Vec<PlannedTile>)], p: &TileParams, ids: &mut Vec<String>) -> Result<()> {
    for (xml, ann, tiles) in plans {
        if tiles.is_empty() {
            continue;
        }
        let img = read_image(xml, ann)?;
        for t in tiles {
            let tile = image::imageops::crop_imm(&img, t.x0, t.y0, p.size, p.size).to_image();
            let mut jpg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, p.quality)
                .encode_image(&tile)
                .with_context(|| format!("encoding tile {}", t.ann.id))?;
            // the image first, then its annotation: a tile with an annotation is whole
            write_file(&ds.image_path(&t.ann.id), &jpg)?;
            ids.push(t.ann.id.clone());
            write_file(&ds.annotation_path(&t.ann.id), annotation_xml(&t.ann, &format!("tiled from {}", ann.filename)).as_bytes())?;
        }
    }
    Ok(())
}

/// Tiles every source annotation (`sources`: VOC XML files) into split `split`
/// of the VOC root `out` (created when absent). A root that already has a
/// `classes.txt` keeps it, and a class it lacks is an error; a split that is
/// already written is an error. Tile ids are `<prefix><stem>_x<x0>_y<y0>`
/// (`{dir}` in the prefix is the XML's folder name); an id that another
/// source, a file or a split of the root already holds is refused before
/// anything is written, naming both, so no split can overwrite another's
/// images. The split file is written last, so an interrupted call leaves no
/// split behind. Each tile's source and position are appended to the root's `tiles.csv`
/// ([`read_tile_records`]).
pub fn tile_into(out: &Path, split: &str, sources: &[PathBuf], p: &TileParams) -> Result<TileSummary> {
    p.check()?;
    if sources.is_empty() {
        bail!("no annotation files to tile");
    }
    let existing = out.join("classes.txt").is_file();
    let mut classes = if existing { Dataset::open(out)?.classes } else { Vec::new() };
    let fixed = classes.clone();
    let ds = Dataset { root: out.to_path_buf(), classes: Vec::new(), coco: None };
    if ds.split_path(split).exists() {
        bail!("{}: split {split:?} is already written; tile into another --split or another --out", ds.split_path(split).display());
    }
    // first every tile from the annotations alone, checked; then the images, cut and written
    let mut sum = TileSummary::default();
    let mut plans = Vec::with_capacity(sources.len());
    let mut prefixes = Vec::with_capacity(sources.len());
    for xml in sources {
        let ann = read_annotation(xml, &mut classes, &p.class_map)?;
        if existing && classes.len() > fixed.len() {
            bail!("{}: class {:?} is not in {} ({})", xml.display(), classes[fixed.len()], out.join("classes.txt").display(), fixed.join(", "));
        }
        if p.size > ann.width || p.size > ann.height {
            bail!("{}: the tile ({} px) is larger than the {}x{} image", xml.display(), p.size, ann.width, ann.height);
        }
        check_image(xml, &ann)?;
        sum.images += 1;
        sum.boxes += ann.objects.len();
        let prefix = prefix_of(&p.prefix, xml)?;
        let tiles = plan_source(&ann, &prefix, p, &mut sum);
        if ann.id.contains(',') || prefix.contains(',') {
            bail!("{}: a source name with a comma cannot be recorded in tiles.csv; rename the file", xml.display());
        }
        prefixes.push(prefix);
        plans.push((xml.clone(), ann, tiles));
    }
    if plans.iter().all(|(_, _, t)| t.is_empty()) {
        bail!("no tile written: every tile was empty (--drop-empty)");
    }
    check_ids(&ds, &plans)?;
    let mut ids = Vec::new();
    let written = write_tiles(&ds, &plans, p, &mut ids).and_then(|()| append_tile_records(out, &plans, &prefixes, p));
    if let Err(e) = written {
        // a failure half-way (an image that no longer decodes, a full disk) takes back what this
        // call wrote, so that the same call can run again
        for id in &ids {
            let _ = std::fs::remove_file(ds.image_path(id));
            let _ = std::fs::remove_file(ds.annotation_path(id));
        }
        return Err(e);
    }
    sum.tiles = ids.len();
    if !existing {
        Dataset { root: out.to_path_buf(), classes: classes.clone(), coco: None }.write_classes()?;
    }
    write_file(&ds.split_path(split), (ids.join("\n") + "\n").as_bytes())?;
    sum.classes = classes;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_the_side_and_end_at_the_edge() {
        assert_eq!(positions(400, 400, 0), vec![0]);
        assert_eq!(positions(1000, 400, 0), vec![0, 400, 600]);
        assert_eq!(positions(1000, 400, 100), vec![0, 300, 600]);
        assert_eq!(positions(1249, 400, 0), vec![0, 400, 800, 849]);
        assert_eq!(positions(800, 400, 0), vec![0, 400]);
    }

    #[test]
    fn clip_by_hand() {
        // a 10x10 box (x 101..110) against a tile from x0 = 105 (tile pixels 1.. are source 106..):
        // inside: source 106..110 = 5 of 10 columns: 50% -> difficult at keep 0.7 / drop 0.3
        let b = [101.0, 11.0, 110.0, 20.0];
        assert_eq!(clip(&b, 105, 0, 100, 0.7, 0.3), Clipped::Kept { bbox: [1.0, 11.0, 5.0, 20.0], difficult: true });
        // from x0 = 108: 2 of 10 columns inside (20%) -> dropped
        assert_eq!(clip(&b, 108, 0, 100, 0.7, 0.3), Clipped::Dropped);
        // from x0 = 102: 8 of 10 (80%) -> kept, not difficult
        assert_eq!(clip(&b, 102, 0, 100, 0.7, 0.3), Clipped::Kept { bbox: [1.0, 11.0, 8.0, 20.0], difficult: false });
        // wholly inside a tile at x0 = 100: the same box shifted by 100
        assert_eq!(clip(&b, 100, 0, 100, 0.7, 0.3), Clipped::Kept { bbox: [1.0, 11.0, 10.0, 20.0], difficult: false });
        // cut on both axes: tile x0 = 105, y0 = 15 -> 5 x 5 of 10 x 10 = 25% -> dropped; at drop 0.25 -> difficult
        assert_eq!(clip(&b, 105, 15, 100, 0.7, 0.3), Clipped::Dropped);
        assert_eq!(clip(&b, 105, 15, 100, 0.7, 0.25), Clipped::Kept { bbox: [1.0, 1.0, 5.0, 5.0], difficult: true });
        // the right edge: a tile at x0 = 0 of size 105 holds source 1..105 -> 5 columns of the box
        assert_eq!(clip(&b, 0, 0, 105, 0.5, 0.3), Clipped::Kept { bbox: [101.0, 11.0, 105.0, 20.0], difficult: false });
        // beyond the tile
        assert_eq!(clip(&b, 200, 0, 100, 0.7, 0.3), Clipped::Outside);
        assert_eq!(clip(&b, 0, 0, 100, 0.7, 0.3), Clipped::Outside);
    }

    #[test]
    fn class_map_parses_and_rejects() {
        assert_eq!(parse_class_map("Dead=Tree, Alive=Tree").unwrap(), vec![("Dead".into(), "Tree".into()), ("Alive".into(), "Tree".into())]);
        assert!(parse_class_map("Dead").unwrap_err().to_string().contains("\"Dead\""));
        assert!(parse_class_map("=Tree").is_err());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    /// A 300x200 PNG whose pixel (x, y) (0-based) is (x mod 256, y mod 256, 7), and its XML.
    fn source(dir: &Path, boxes: &[(&str, BBox)]) -> PathBuf {
        let img = image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
        img.save(dir.join("scene.png")).unwrap();
        let objects = boxes.iter().map(|(n, b)| Object { name: n.to_string(), class: 0, bbox: *b, difficult: false, truncated: false, pose: "Unspecified".into(), crowd: false, area: None }).collect();
        let ann = Annotation { id: "scene".into(), filename: "scene.png".into(), width: 300, height: 200, depth: 3, objects };
        let xml = dir.join("scene.xml");
        std::fs::write(&xml, annotation_xml(&ann, "test")).unwrap();
        xml
    }

    #[test]
    fn tiles_read_back_as_a_voc_split() {
        let dir = tempfile::tempdir().unwrap();
        // a box wholly in the first tile, one cut 50/50 by the edge at x = 150, one renamed
        let xml = source(dir.path(), &[("Tree", [11.0, 11.0, 30.0, 30.0]), ("Dead", [141.0, 51.0, 160.0, 70.0])]);
        let out = dir.path().join("out");
        let p = TileParams { size: 150, quality: 100, class_map: parse_class_map("Dead=Tree").unwrap(), ..TileParams::default() };
        let s = tile_into(&out, "trainval", &[xml], &p).unwrap();
        // tiles at x 0 and 150 and, for the 200-px height, y 0 and 50 (the last moved back to the edge):
        // the cut box (y 51..70) lies in all four, half of it each time (difficult); the whole one in (0, 0) only
        assert_eq!((s.images, s.tiles, s.boxes, s.kept, s.difficult, s.dropped), (1, 4, 2, 1, 4, 0));
        assert_eq!(s.classes, vec!["Tree".to_string()]);
        let ds = Dataset::open(&out).unwrap();
        let anns = ds.load_split("trainval").unwrap();
        let ids: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["scene_x0_y0", "scene_x150_y0", "scene_x0_y50", "scene_x150_y50"]);
        // tile (0, 0): the whole box and the cut one's left half (source x 141..150), difficult
        let a = &anns[0];
        assert_eq!(a.objects.len(), 2);
        assert_eq!((a.objects[0].bbox, a.objects[0].difficult), ([11.0, 11.0, 30.0, 30.0], false));
        assert_eq!((a.objects[1].bbox, a.objects[1].difficult, a.objects[1].truncated), ([141.0, 51.0, 150.0, 70.0], true, true));
        // tile (150, 50): the cut box's right half, in the tile's coordinates
        let d = &anns[3];
        assert_eq!(d.objects.len(), 1);
        assert_eq!(d.objects[0].bbox, [1.0, 1.0, 10.0, 20.0]);
        // the pixels are the source's crop (quality 100 keeps this smooth ramp within a few levels)
        let img = ds.load_image(d).unwrap();
        for (x, y) in [(0u32, 0u32), (10, 20), (149, 149)] {
            let px = img.get_pixel(x, y).0;
            let want = [((x + 150) % 256) as i32, ((y + 50) % 256) as i32, 7];
            assert!((0..3).all(|c| (px[c] as i32 - want[c]).abs() <= 3), "pixel ({x}, {y}) = {px:?}, source {want:?}");
        }
        // another photograph with the same file stem, as a second split into the same root: its
        // tiles would overwrite trainval's, so it is refused, naming both files, and nothing changes
        let before: Vec<Vec<u8>> = ids.iter().flat_map(|id| [std::fs::read(ds.image_path(id)).unwrap(), std::fs::read(ds.annotation_path(id)).unwrap()]).collect();
        let b = dir.path().join("b");
        std::fs::create_dir(&b).unwrap();
        let xml2 = source(&b, &[("Tree", [1.0, 1.0, 20.0, 20.0])]);
        let e = format!("{:#}", tile_into(&out, "test", &[xml2.clone()], &p).unwrap_err());
        assert!(e.contains(&*xml2.to_string_lossy()) && e.contains("scene_x0_y0") && e.contains("would overwrite") && e.contains("--prefix"), "{e}");
        let after: Vec<Vec<u8>> = ids.iter().flat_map(|id| [std::fs::read(ds.image_path(id)).unwrap(), std::fs::read(ds.annotation_path(id)).unwrap()]).collect();
        assert!(before == after, "a refused split changed trainval's files");
        assert!(!ds.split_path("test").exists());
        // the same two sources in one call: both XMLs named
        let xml1 = dir.path().join("scene.xml");
        let e = format!("{:#}", tile_into(&dir.path().join("both"), "trainval", &[xml1.clone(), xml2.clone()], &p).unwrap_err());
        assert!(e.contains(&*xml1.to_string_lossy()) && e.contains(&*xml2.to_string_lossy()) && e.contains("both give"), "{e}");
        // with the folder as a prefix the ids differ: the second split goes in beside the first
        let pre = TileParams { prefix: "{dir}_".into(), ..p.clone() };
        tile_into(&out, "test", &[xml2.clone()], &pre).unwrap();
        let test = ds.split_ids("test").unwrap();
        assert_eq!(test[0], "b_scene_x0_y0");
        // both calls' tiles are recorded with their source and position, the first call's kept
        let rec = read_tile_records(&out).unwrap().unwrap();
        assert_eq!(rec.len(), 8);
        assert_eq!(rec["scene_x150_y50"], TileRecord { id: "scene_x150_y50".into(), source: "scene".into(), x0: 150, y0: 50, size: 150, source_width: 300, source_height: 200 });
        assert_eq!(rec["b_scene_x0_y50"].source, "b_scene");
        assert_eq!((rec["b_scene_x0_y50"].x0, rec["b_scene_x0_y50"].y0), (0, 50));
        assert!(test.iter().all(|id| !ids.contains(&id.as_str())), "the splits share ids: {test:?}");
        let after: Vec<Vec<u8>> = ids.iter().flat_map(|id| [std::fs::read(ds.image_path(id)).unwrap(), std::fs::read(ds.annotation_path(id)).unwrap()]).collect();
        assert!(before == after, "the second split changed trainval's files");
        // the same split again is refused; so is a split whose ids another split lists
        let e = tile_into(&out, "test", &[xml2.clone()], &pre).unwrap_err().to_string();
        assert!(e.contains("already written"), "{e}");
        std::fs::remove_file(ds.image_path("b_scene_x0_y0")).unwrap();
        std::fs::remove_file(ds.annotation_path("b_scene_x0_y0")).unwrap();
        let e = format!("{:#}", tile_into(&out, "val", &[xml2], &pre).unwrap_err());
        assert!(e.contains("already listed in") && e.contains("test.txt"), "{e}");
    }

    /// A call that fails half-way (the second photograph's image passes the header check but
    /// does not decode) takes back the tiles it wrote, so that the same call runs again once
    /// the image is mended, and nothing is left for the id check to call another split's.
    #[test]
    fn a_call_that_fails_half_way_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let xa = source(&a, &[("Tree", [11.0, 11.0, 30.0, 30.0])]);
        let xb = source(&b, &[("Tree", [11.0, 11.0, 30.0, 30.0])]);
        let png = std::fs::read(b.join("scene.png")).unwrap();
        std::fs::write(b.join("scene.png"), &png[..png.len() / 2]).unwrap();
        let out = dir.path().join("out");
        let p = TileParams { size: 150, prefix: "{dir}_".into(), ..TileParams::default() };
        let e = format!("{:#}", tile_into(&out, "trainval", &[xa.clone(), xb.clone()], &p).unwrap_err());
        assert!(e.contains("scene.png") && e.contains("not a decodable image"), "{e}");
        let left: Vec<_> = ["JPEGImages", "Annotations"].iter().filter_map(|d| std::fs::read_dir(out.join(d)).ok()).flatten().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "a failed call left {left:?}");
        std::fs::write(b.join("scene.png"), &png).unwrap();
        let s = tile_into(&out, "trainval", &[xa, xb], &p).unwrap();
        assert_eq!(s.tiles, 8);
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // a box outside its image: the XML and the box are named
        let xml = source(dir.path(), &[("Tree", [290.0, 10.0, 310.0, 20.0])]);
        let e = format!("{:#}", tile_into(&out, "trainval", &[xml.clone()], &TileParams::default()).unwrap_err());
        assert!(e.contains("scene.xml") && e.contains("outside the 300x200 image"), "{e}");
        // a tile larger than the image
        let xml = source(dir.path(), &[("Tree", [10.0, 10.0, 20.0, 20.0])]);
        let e = format!("{:#}", tile_into(&out, "trainval", &[xml.clone()], &TileParams { size: 256, ..TileParams::default() }).unwrap_err());
        assert!(e.contains("scene.xml") && e.contains("larger than the 300x200 image"), "{e}");
        // an unreadable image
        std::fs::write(dir.path().join("scene.png"), b"not a png").unwrap();
        let e = format!("{:#}", tile_into(&out, "trainval", &[xml.clone()], &TileParams { size: 100, ..TileParams::default() }).unwrap_err());
        assert!(e.contains("scene.png") && e.contains("not a decodable image"), "{e}");
        // a missing image
        std::fs::remove_file(dir.path().join("scene.png")).unwrap();
        let e = format!("{:#}", tile_into(&out, "trainval", &[xml], &TileParams { size: 100, ..TileParams::default() }).unwrap_err());
        assert!(e.contains("scene.png") && e.contains("cannot be opened"), "{e}");
        // nothing was written by the failed calls
        assert!(!out.join("ImageSets").exists());
    }
}
