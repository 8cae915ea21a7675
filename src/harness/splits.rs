//! Resampled splits of a pooled dataset, an axis of the grid (a grid's `splits:` key): k folds, or R repeated random
//! partitions, of the images of one or more splits of a VOC root, **grouped** so that images that
//! share content never straddle training and test.
//!
//! - **Groups** (`group_by`). `image`: every image its own group. `source`: the tiles of one
//!   source photograph (the root's `tiles.csv`, which `harness tile` writes). `{block: P}`: the
//!   tiles of one P×P-pixel block of one photograph, a tile belonging to the block that holds its
//!   centre (spatial block cross-validation, Roberts et al., Ecography 2017). `{file: PATH}`: a
//!   text file of `<image id> <group>` lines, one per image of the pool.
//! - **Partitions.** `folds: k`: the groups are shuffled (ChaCha8, `seed`) and dealt, largest
//!   first, each to the fold with the fewest images so far; fold i is the test set of split i.
//!   `repeats: R` with `test_fraction: f`: for each r, the groups shuffled with (`seed`, r) are
//!   taken into the test set in that order until it holds at least f of the images.
//! - **The buffer.** Where the root has tile records, a training tile that overlaps a test tile
//!   of the same photograph (tiles overlap at a photograph's right and bottom edges, where the
//!   last tile is moved back, and wherever tiling used `--overlap`) leaves that split's training
//!   set, so no test pixel is ever trained on. How many left is recorded.
//! - **On disk.** Each split is written into the root as `ImageSets/Main/<name>-train.txt` and
//!   `-test.txt`, where `<name>` is `cv-<hash>-<label>` and the hash covers the plan's every
//!   membership: the same spec on the same pool writes the same files (written atomically, and
//!   only when absent), and a changed pool or spec writes new ones and so makes new cells.
//!   Nothing of the root is overwritten.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::data::tile::{read_tile_records, TileRecord};
use crate::data::Dataset;

/// How images are grouped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GroupBy {
    Image,
    Source,
    Block(u32),
    File(PathBuf),
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy::Source
    }
}

/// A grid's `splits:` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// The splits of the root whose images are pooled [default: the config's train and test split].
    #[serde(default)]
    pub pool: Option<Vec<String>>,
    /// k-fold: each group is in the test set of exactly one of `folds` splits.
    #[serde(default)]
    pub folds: Option<usize>,
    /// Repeated random partitions: this many, each with `test_fraction` of the images in test.
    #[serde(default)]
    pub repeats: Option<usize>,
    #[serde(default)]
    pub test_fraction: Option<f64>,
    #[serde(default)]
    pub group_by: GroupBy,
    /// The seed of the shuffles.
    #[serde(default)]
    pub seed: u64,
}

/// One planned split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPlan {
    /// `f0`, `f1`, … (folds) or `r0`, `r1`, … (repeats).
    pub label: String,
    /// The split name in the root: `cv-<hash>-<label>` (files `<name>-train.txt`, `<name>-test.txt`).
    pub name: String,
    pub train: Vec<String>,
    pub test: Vec<String>,
    /// Training-side images left out because they overlap a test tile of the same photograph.
    pub buffered: Vec<String>,
}

impl SplitPlan {
    pub fn train_split(&self) -> String {
        format!("{}-train", self.name)
    }
    pub fn test_split(&self) -> String {
        format!("{}-test", self.name)
    }
}

/// The plan of a spec on a root: the splits, and each pool image's group.
#[derive(Debug, Clone)]
pub struct Plan {
    pub splits: Vec<SplitPlan>,
    /// (image id, group) in pool order.
    pub groups: Vec<(String, String)>,
    /// Whether the root's tile records let the buffer check overlaps (a root without
    /// `tiles.csv` holds separate photographs, or its overlaps are not known).
    pub overlap_checked: bool,
}

impl SplitSpec {
    /// Checks the numbers (before any data is read); `origin` names the grid file.
    pub fn check(&self, origin: &str) -> Result<()> {
        match (self.folds, self.repeats) {
            (Some(_), Some(_)) => bail!("{origin}: key splits: give folds or repeats, not both"),
            (None, None) => bail!("{origin}: key splits: give folds (k-fold) or repeats (with test_fraction)"),
            (Some(k), None) => {
                if k < 2 {
                    bail!("{origin}: key splits.folds = {k}: at least 2 folds");
                }
                if self.test_fraction.is_some() {
                    bail!("{origin}: key splits.test_fraction goes with repeats; folds set the test share (1/k)");
                }
            }
            (None, Some(r)) => {
                if r < 1 {
                    bail!("{origin}: key splits.repeats = {r}: at least 1");
                }
                match self.test_fraction {
                    Some(f) if f > 0.0 && f < 1.0 => {}
                    Some(f) => bail!("{origin}: key splits.test_fraction = {f} is outside (0, 1)"),
                    None => bail!("{origin}: key splits.test_fraction is missing: repeats need the test share, e.g. 0.2"),
                }
            }
        }
        if let GroupBy::Block(0) = self.group_by {
            bail!("{origin}: key splits.group_by.block = 0: a block is at least 1 pixel");
        }
        if let Some(p) = &self.pool {
            if p.is_empty() {
                bail!("{origin}: key splits.pool is an empty list");
            }
        }
        Ok(())
    }

    /// How many splits the spec makes.
    pub fn count(&self) -> usize {
        self.folds.or(self.repeats).unwrap_or(0)
    }

    /// Plans the splits of the pooled images of `root` (`pool`: the split names). Errors name
    /// the root, the file or the key.
    pub fn plan(&self, root: &Path, pool: &[String]) -> Result<Plan> {
        let ds = Dataset::open(root)?;
        if ds.coco.is_some() {
            bail!("{}: splits: need a VOC-layout root (convert a COCO root with `harness convert --to voc`)", root.display());
        }
        let mut ids: Vec<String> = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for s in pool {
            for id in ds.split_ids(s).with_context(|| format!("splits.pool: split {s:?} of {}", root.display()))? {
                if let Some(other) = seen.insert(id.clone(), s.clone()) {
                    if other != *s {
                        bail!("{}: image {id:?} is in both pooled splits {other:?} and {s:?}", root.display());
                    }
                    continue;
                }
                ids.push(id);
            }
        }
        let tiles = read_tile_records(root)?;
        if let Some(t) = &tiles {
            // the buffer needs every pooled tile's position: a tile without a row could overlap a test tile unseen
            let missing: Vec<&String> = ids.iter().filter(|id| !t.contains_key(*id)).collect();
            if let Some(first) = missing.first() {
                bail!("{}: {} of the {} pooled images have no row ({first:?} the first), so overlaps between training and test tiles cannot be checked; tile them with `harness tile`, or pool only tiled splits", root.join("tiles.csv").display(), missing.len(), ids.len());
            }
        }
        let groups = self.groups_of(root, &ids, tiles.as_ref())?;
        let test_sets = self.test_sets(root, ids.len(), &groups)?;
        let mut splits = Vec::new();
        for (label, is_test) in test_sets {
            let test: Vec<usize> = (0..ids.len()).filter(|&i| is_test[i]).collect();
            let mut train = Vec::new();
            let mut buffered = Vec::new();
            for i in (0..ids.len()).filter(|&i| !is_test[i]) {
                let overlaps = tiles.as_ref().is_some_and(|t| test.iter().any(|&j| tiles_overlap(t.get(&ids[i]), t.get(&ids[j]))));
                if overlaps { &mut buffered } else { &mut train }.push(ids[i].clone());
            }
            let test: Vec<String> = test.into_iter().map(|i| ids[i].clone()).collect();
            if train.is_empty() || test.is_empty() {
                bail!("{}: split {label} of splits: has an empty {} set; use fewer folds or smaller groups", root.display(), if train.is_empty() { "training" } else { "test" });
            }
            splits.push(SplitPlan { label, name: String::new(), train, test, buffered });
        }
        // the name: a hash of every split's membership, so the same plan always writes the same files
        let mut h = Sha256::new();
        for s in &splits {
            for (role, v) in [("train", &s.train), ("test", &s.test), ("buffered", &s.buffered)] {
                h.update(format!("{} {role} {}\n", s.label, v.join(" ")).as_bytes());
            }
        }
        let hash: String = h.finalize().iter().take(4).map(|b| format!("{b:02x}")).collect();
        for s in &mut splits {
            s.name = format!("cv-{hash}-{}", s.label);
        }
        Ok(Plan { splits, groups: ids.into_iter().zip(groups).collect(), overlap_checked: tiles.is_some() })
    }

    /// Each split's label and, per pooled image, whether it is in that split's test set: the
    /// groups (`groups`, one per image) dealt into folds or drawn into repeated partitions.
    fn test_sets(&self, root: &Path, n_images: usize, groups: &[String]) -> Result<Vec<(String, Vec<bool>)>> {
        let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            by_group.entry(g.as_str()).or_default().push(i);
        }
        let mut keys: Vec<&str> = by_group.keys().copied().collect();
        let sets: Vec<(String, Vec<bool>)> = match (self.folds, self.repeats) {
            (Some(k), _) => {
                if keys.len() < k {
                    bail!("{}: splits.folds = {k}, but the pool has only {} groups ({:?}); use fewer folds or smaller groups", root.display(), keys.len(), self.group_by);
                }
                shuffle(&mut keys, self.seed);
                // largest first (stable: ties keep the shuffled order), each to the emptiest fold
                keys.sort_by_key(|g| std::cmp::Reverse(by_group[g].len()));
                let mut fold_of: HashMap<&str, usize> = HashMap::new();
                let mut sizes = vec![0usize; k];
                for g in &keys {
                    let f = (0..k).min_by_key(|&f| (sizes[f], f)).unwrap_or(0);
                    sizes[f] += by_group[g].len();
                    fold_of.insert(g, f);
                }
                (0..k).map(|f| (format!("f{f}"), groups.iter().map(|g| fold_of[g.as_str()] == f).collect())).collect()
            }
            (None, Some(r)) => {
                let frac = self.test_fraction.unwrap_or(0.2);
                if keys.len() < 2 {
                    bail!("{}: splits.repeats: the pool has one group only ({:?}); nothing to hold out", root.display(), self.group_by);
                }
                let want = ((n_images as f64) * frac).ceil() as usize;
                (0..r)
                    .map(|rep| {
                        let mut order = keys.clone();
                        shuffle(&mut order, self.seed ^ ((rep as u64 + 1) << 32));
                        let mut test: Vec<&str> = Vec::new();
                        let mut n = 0;
                        for g in &order[..order.len() - 1] {
                            if n >= want {
                                break;
                            }
                            n += by_group[g].len();
                            test.push(g);
                        }
                        (format!("r{rep}"), groups.iter().map(|g| test.contains(&g.as_str())).collect())
                    })
                    .collect()
            }
            _ => bail!("splits: give folds or repeats"),
        };
        Ok(sets)
    }

    /// Each image's group, in `ids` order.
    fn groups_of(&self, root: &Path, ids: &[String], tiles: Option<&HashMap<String, TileRecord>>) -> Result<Vec<String>> {
        let record = |id: &String| -> Result<&TileRecord> {
            let t = tiles.ok_or_else(|| anyhow!("{}: splits.group_by {:?} needs the tile records {} (written by `harness tile`); group by image or by a group file instead", root.display(), self.group_by, root.join("tiles.csv").display()))?;
            t.get(id).ok_or_else(|| anyhow!("{}: image {id:?} has no row (group it by a group file, or re-tile)", root.join("tiles.csv").display()))
        };
        match &self.group_by {
            GroupBy::Image => Ok(ids.to_vec()),
            GroupBy::Source => ids.iter().map(|id| Ok(record(id)?.source.clone())).collect(),
            GroupBy::Block(b) => ids
                .iter()
                .map(|id| {
                    let t = record(id)?;
                    Ok(format!("{}@{},{}", t.source, (t.x0 + t.size / 2) / b, (t.y0 + t.size / 2) / b))
                })
                .collect(),
            GroupBy::File(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("splits.group_by.file: reading {}", path.display()))?;
                let mut map = HashMap::new();
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() != 2 {
                        bail!("{}:{}: expected `<image id> <group>`, found {} fields", path.display(), n + 1, f.len());
                    }
                    map.insert(f[0].to_string(), f[1].to_string());
                }
                ids.iter().map(|id| map.get(id).cloned().ok_or_else(|| anyhow!("{}: image {id:?} of the pool has no group", path.display()))).collect()
            }
        }
    }
}

/// Whether two tiles of one photograph share a pixel.
fn tiles_overlap(a: Option<&TileRecord>, b: Option<&TileRecord>) -> bool {
    let (Some(a), Some(b)) = (a, b) else { return false };
    a.source == b.source && a.x0 < b.x0 + b.size && b.x0 < a.x0 + a.size && a.y0 < b.y0 + b.size && b.y0 < a.y0 + a.size
}

fn shuffle<T>(v: &mut [T], seed: u64) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
}

impl Plan {
    /// Writes each split's two files into `root` where absent. A file of the same name with
    /// other content (edited by hand) is an error naming it: the name is the content's hash.
    pub fn write(&self, root: &Path) -> Result<()> {
        let ds = Dataset { root: root.to_path_buf(), classes: Vec::new(), coco: None };
        for s in &self.splits {
            for (name, ids) in [(s.train_split(), &s.train), (s.test_split(), &s.test)] {
                let path = ds.split_path(&name);
                let text = ids.join("\n") + "\n";
                match std::fs::read_to_string(&path) {
                    Ok(old) if old == text => {}
                    Ok(_) => bail!("{}: a split file of this name holds other images than splits: plans (edited by hand?); remove it to have it rewritten", path.display()),
                    Err(_) => crate::rundir::write_file(&path, text.as_bytes())?,
                }
            }
        }
        Ok(())
    }

    /// `splits.csv`: each pool image's group and, per split, its role (`train`, `test` or
    /// `buffer`: left out of training for overlapping a test tile).
    pub fn csv(&self) -> String {
        let mut out = String::from("id,group");
        for s in &self.splits {
            out.push_str(&format!(",{}", s.label));
        }
        out.push('\n');
        let roles: Vec<HashMap<&str, &str>> = self
            .splits
            .iter()
            .map(|s| s.train.iter().map(|i| (i.as_str(), "train")).chain(s.test.iter().map(|i| (i.as_str(), "test"))).chain(s.buffered.iter().map(|i| (i.as_str(), "buffer"))).collect())
            .collect();
        // RFC 4180: a field with a comma or a quote is quoted (a block group is `<photo>@<bx>,<by>`)
        let field = |f: &str| if f.contains([',', '"']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.to_string() };
        for (id, g) in &self.groups {
            out.push_str(&format!("{},{}", field(id), field(g)));
            for r in &roles {
                out.push_str(&format!(",{}", r.get(id.as_str()).copied().unwrap_or("")));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::voc::{annotation_xml, Annotation};

    /// A VOC root of tiles of two photographs: `a` 3×2 tiles of 100 px (the last column moved
    /// back to overlap the second by 50 px), `b` one tile; a tile record each; split `all`.
    fn root(dir: &Path) -> PathBuf {
        let root = dir.join("r");
        let ds = Dataset { root: root.clone(), classes: vec!["Tree".into()], coco: None };
        ds.write_classes().unwrap();
        let mut csv = String::from(crate::data::tile::TILES_HEADER) + "\n";
        let mut ids = Vec::new();
        for (src, x0, y0) in [("a", 0, 0), ("a", 100, 0), ("a", 150, 0), ("a", 0, 100), ("a", 100, 100), ("a", 150, 100), ("b", 0, 0)] {
            let id = format!("{src}_x{x0}_y{y0}");
            let ann = Annotation { id: id.clone(), filename: format!("{id}.jpg"), width: 100, height: 100, depth: 3, objects: Vec::new() };
            crate::rundir::write_file(&ds.annotation_path(&id), annotation_xml(&ann, "t").as_bytes()).unwrap();
            csv.push_str(&format!("{id},{src},{x0},{y0},100,250,200\n"));
            ids.push(id);
        }
        std::fs::write(root.join("tiles.csv"), csv).unwrap();
        crate::rundir::write_file(&ds.split_path("all"), (ids.join("\n") + "\n").as_bytes()).unwrap();
        root
    }

    fn spec(folds: usize, group_by: GroupBy) -> SplitSpec {
        SplitSpec { pool: None, folds: Some(folds), repeats: None, test_fraction: None, group_by, seed: 0 }
    }

    #[test]
    fn folds_partition_the_groups_and_the_buffer_keeps_test_pixels_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let pool = vec!["all".to_string()];
        // blocks of 100 px: a tile's centre decides; a has blocks (0,0), (1,0), (2,0)... by centre
        // x 50 -> 0, 150 -> 1, 200 -> 2; y 50 -> 0, 150 -> 1: six blocks, b one: 7 groups
        let plan = spec(3, GroupBy::Block(100)).plan(&root, &pool).unwrap();
        assert_eq!(plan.splits.len(), 3);
        let mut tested: Vec<&String> = plan.splits.iter().flat_map(|s| &s.test).collect();
        tested.sort();
        assert_eq!(tested.len(), 7, "each image is tested exactly once");
        tested.dedup();
        assert_eq!(tested.len(), 7);
        let tiles = read_tile_records(&root).unwrap().unwrap();
        for s in &plan.splits {
            // no training tile shares a pixel with a test tile: checked against a slow rule
            for tr in &s.train {
                for te in &s.test {
                    let (a, b) = (&tiles[tr], &tiles[te]);
                    let share = a.source == b.source && (a.x0.max(b.x0) < (a.x0 + 100).min(b.x0 + 100)) && (a.y0.max(b.y0) < (a.y0 + 100).min(b.y0 + 100));
                    assert!(!share, "{}: {tr} (train) overlaps {te} (test)", s.label);
                }
            }
            // every image is in exactly one role
            assert_eq!(s.train.len() + s.test.len() + s.buffered.len(), 7);
            // a tile buffered out overlaps some test tile
            for b in &s.buffered {
                assert!(s.test.iter().any(|t| tiles_overlap(tiles.get(b), tiles.get(t))), "{b} buffered for nothing");
            }
        }
        // by source: 2 groups, the 6 tiles of a always together
        let plan = spec(2, GroupBy::Source).plan(&root, &pool).unwrap();
        for s in &plan.splits {
            let a_in_test = s.test.iter().filter(|i| i.starts_with("a_")).count();
            assert!(a_in_test == 0 || a_in_test == 6, "{}: a split by source cuts photograph a: {:?}", s.label, s.test);
        }
        // 3 folds of 2 groups is refused, naming the counts
        let e = spec(3, GroupBy::Source).plan(&root, &pool).unwrap_err().to_string();
        assert!(e.contains("folds = 3") && e.contains("only 2 groups"), "{e}");
        // splits.csv reads back with a CSV reader: a block group's comma is quoted
        let plan = spec(3, GroupBy::Block(100)).plan(&root, &pool).unwrap();
        let text = plan.csv();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 7);
        assert!(rows.iter().all(|x| x.len() == 5 && x[1].contains('@') && (2..5).filter(|&k| &x[k] == "test").count() == 1), "{rows:?}");
        // the same spec plans the same names; another seed other memberships and names
        let a = spec(3, GroupBy::Image).plan(&root, &pool).unwrap();
        let b = spec(3, GroupBy::Image).plan(&root, &pool).unwrap();
        assert_eq!(a.splits, b.splits);
        let c = SplitSpec { seed: 5, ..spec(3, GroupBy::Image) }.plan(&root, &pool).unwrap();
        assert_ne!(a.splits[0].name, c.splits[0].name);
    }

    #[test]
    fn repeats_hold_out_the_share_and_files_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let s = SplitSpec { pool: None, folds: None, repeats: Some(4), test_fraction: Some(0.3), group_by: GroupBy::Image, seed: 1 };
        s.check("g.yaml").unwrap();
        let plan = s.plan(&root, &["all".to_string()]).unwrap();
        assert_eq!(plan.splits.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["r0", "r1", "r2", "r3"]);
        for sp in &plan.splits {
            assert_eq!(sp.test.len(), 3, "ceil(0.3 * 7) images held out: {:?}", sp.test);
        }
        plan.write(&root).unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.split_ids(&plan.splits[2].test_split()).unwrap(), plan.splits[2].test);
        plan.write(&root).unwrap(); // the second time: the same files, nothing to do
        std::fs::write(ds.split_path(&plan.splits[0].train_split()), "x\n").unwrap();
        let e = plan.write(&root).unwrap_err().to_string();
        assert!(e.contains(&plan.splits[0].train_split()) && e.contains("other images"), "{e}");
        // specs that cannot work are named
        let e = SplitSpec { test_fraction: None, ..s.clone() }.check("g.yaml").unwrap_err().to_string();
        assert!(e.contains("g.yaml") && e.contains("test_fraction"), "{e}");
        let e = SplitSpec { folds: Some(1), repeats: None, test_fraction: None, ..s.clone() }.check("g.yaml").unwrap_err().to_string();
        assert!(e.contains("folds = 1"), "{e}");
        // a group file that misses an image
        let gf = dir.path().join("groups.txt");
        std::fs::write(&gf, "a_x0_y0 g1\n").unwrap();
        let e = SplitSpec { group_by: GroupBy::File(gf), ..s }.plan(&root, &["all".to_string()]).unwrap_err().to_string();
        assert!(e.contains("groups.txt") && e.contains("has no group"), "{e}");
    }
}
