//! Grid files: a base config, named arms, axes over dotted keys, and seeds,
//! expanded into cells (arms × axes × seeds). Everything is checked before
//! anything runs; errors name the file, the key and the value.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{from_value, parse_override, parse_yaml, set_dotted, TrainConfig};
use crate::harness::splits::{Plan, SplitSpec};
use crate::rundir::CellSplit;

pub use crate::rundir::ReportConfig;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    #[serde(default)]
    name: Option<String>,
    /// Results directory (default `runs/<grid file stem>`), relative to the working directory.
    #[serde(default)]
    results: Option<PathBuf>,
    base: Value,
    #[serde(default)]
    arms: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    axes: Option<serde_json::Map<String, Value>>,
    seeds: Option<Vec<u64>>,
    /// The seed of the run order within each seed block (default 0): the arms of each seed
    /// run in an order shuffled by it, so that a drift of the machine does not land on the
    /// same arm in every block. Part of the grid file, so the order is reproducible.
    #[serde(default)]
    order_seed: u64,
    /// Resampled, grouped splits of a pooled dataset ([`crate::harness::splits`]): every arm and
    /// seed runs on each.
    #[serde(default)]
    splits: Option<SplitSpec>,
    #[serde(default)]
    report: ReportConfig,
}

/// One run of the grid.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Stable id: a hash of the canonical config.
    pub id: String,
    /// The arm label: the arm name plus any axis values (everything but the seed).
    pub arm: String,
    pub seed: u64,
    /// The resampled split it runs on (a grid with `splits:`).
    pub split: Option<CellSplit>,
    pub config: TrainConfig,
    /// Epochs it trains: `train.epochs`, or what `train.iterations` makes of the
    /// training set (0 while the dataset does not exist yet).
    pub epochs: usize,
    /// Directory name under `<results>/cells/`.
    pub dir_name: String,
}

#[derive(Debug, Clone)]
pub struct Grid {
    pub name: String,
    pub results: PathBuf,
    /// In run order: seed-major (each seed of every arm before the next seed).
    pub cells: Vec<Cell>,
    /// Arm labels in grid order.
    pub arms: Vec<String>,
    pub report: ReportConfig,
    /// The split plans of `splits:`, per dataset root (empty without).
    pub plans: Vec<(PathBuf, Plan)>,
}

/// Deep-merges `over` into `base` (maps merge key by key; anything else replaces).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// A JSON value's leaves under their dotted keys (`sampler.fg_fraction`), `prefix` before each.
pub fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, x, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

fn slug(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    s.chars().take(60).collect()
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The stable id of a config: SHA-256 of its canonical JSON, 12 hex digits.
/// `dataset.cache_mib` is left out: how many images are held in memory does
/// not change what a run computes.
pub fn cell_id(cfg: &TrainConfig) -> String {
    let mut cfg = cfg.clone();
    cfg.dataset.cache_mib = None;
    let canon = serde_json::to_vec(&cfg).expect("config serialises");
    Sha256::digest(&canon).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Grid {
    /// Reads and expands a grid file; `overrides` (`key=value`) apply to every cell.
    /// Loads and checks a grid file, its datasets included.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Grid> {
        Self::load_impl(path, overrides, true)
    }

    /// As [`Grid::load`], but a dataset that does not exist yet is no error
    /// (`--dry-run`: list the cells first, make the data later);
    /// [`Grid::missing_datasets`] names them.
    pub fn load_without_data(path: &Path, overrides: &[String]) -> Result<Grid> {
        Self::load_impl(path, overrides, false)
    }

    /// The dataset roots the cells name that do not exist, each once.
    pub fn missing_datasets(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.cells.iter().map(|c| c.config.dataset.root.clone()).filter(|r| !r.is_dir()).collect();
        v.sort();
        v.dedup();
        v
    }

    fn load_impl(path: &Path, overrides: &[String], require_data: bool) -> Result<Grid> {
        let origin = path.display().to_string();
        Self::expand(path, overrides, require_data).map_err(|e| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            grid_line(e, &origin, &text)
        })
    }

    fn expand(path: &Path, overrides: &[String], require_data: bool) -> Result<Grid> {
        let origin = path.display().to_string();
        let file = GridFile::read(path)?;
        let seeds = file.seeds.clone().unwrap_or_default(); // present: checked by GridFile::read
        let arms = file.arms(&origin)?;
        let axes = file.axes(&origin)?;
        let overrides: Vec<(String, Value)> = overrides.iter().map(|o| parse_override(o)).collect::<Result<_>>()?;
        // an unknown key is named where it was written: in base (not against the first arm), or
        // in a --set (not against the grid file)
        let text = std::fs::read_to_string(path).unwrap_or_default();
        unknown_key(&file.base, &format!("{origin}: base")).map_err(|e| crate::config::with_line(e, &text, &[&["base"]]))?;
        for (k, x) in &overrides {
            let mut v = Value::Object(Default::default());
            set_dotted(&mut v, k, x.clone()).with_context(|| format!("--set {k}"))?;
            unknown_key(&v, &format!("--set {k}"))?;
        }
        let mut cells = Vec::new();
        let mut arm_labels = Vec::new();
        let mut plans: Vec<((PathBuf, Vec<String>), Plan)> = Vec::new();
        if let Some(sp) = &file.splits {
            sp.check(&origin)?;
            if let Some(s) = seeds.iter().find(|s| **s >= 1 << 32) {
                bail!("{origin}: key seeds: seed {s} is 2^32 or more; with splits: a seed must be below 2^32 (the report keys a unit by split and seed)");
            }
        }
        let mut trainable: Vec<(TrainingSet, usize)> = Vec::new();
        for (arm, arm_over) in &arms {
            for combo in &combos(&axes) {
                let label = std::iter::once(arm.clone())
                    .chain(combo.iter().map(|(k, v)| format!("{}={}", k.rsplit('.').next().unwrap_or(k), short(v))))
                    .collect::<Vec<_>>()
                    .join(" ");
                arm_labels.push(label.clone());
                // (a grid without arms has one, its base)
                let named = if file.arms.is_none() { format!("{origin}: base") } else { format!("{origin}: arm {arm}") };
                let where_ = if combo.is_empty() { named } else { format!("{named}, axes {}", combo.iter().map(|(k, v)| format!("{k}={}", short(v))).collect::<Vec<_>>().join(", ")) };
                for &seed in &seeds {
                    let mut v = file.base.clone();
                    merge(&mut v, arm_over);
                    for (k, x) in combo {
                        set_dotted(&mut v, k, x.clone()).with_context(|| format!("{origin}: axis {k}"))?;
                    }
                    set_dotted(&mut v, "seed", Value::from(seed))?;
                    for (k, x) in &overrides {
                        set_dotted(&mut v, k, x.clone()).with_context(|| format!("--set {k}"))?;
                    }
                  for (split, v) in split_variants(v, file.splits.as_ref(), &mut plans, &origin, &where_, require_data)? {
                    let config = cell_config(v, &origin, &where_, combo, require_data).map_err(|e| blame(e, &text, &origin, &where_, arm, &overrides, combo))?;
                    let id = cell_id(&config);
                    let epochs = cell_epochs(&config, require_data, &where_, &mut trainable)?;
                    let split_part = split.as_ref().map(|s| format!("-{}", s.label)).unwrap_or_default();
                    cells.push(Cell { dir_name: format!("{}{split_part}-s{seed}-{id}", slug(&label)), id, arm: label.clone(), seed, split, config, epochs });
                  }
                }
            }
        }
        // Seed-major: every arm's seed 0, then every arm's seed 1, …, so that no arm runs all its
        // seeds in one stretch; within each seed the arms in an order shuffled by `order_seed`
        // and the seed, so that no arm always runs first (or after the same neighbour).
        // cells.json and the Slurm array take this order.
        cells.sort_by_key(|c| (seeds.iter().position(|s| *s == c.seed), c.split.as_ref().map(|s| s.index)));
        shuffle_within_seeds(&mut cells, file.order_seed);
        let mut ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != cells.len() {
            bail!("{origin}: two cells have the same config (an arm or axis changes nothing?)");
        }
        check_report(&file.report, &arm_labels, &origin)?;
        check_group_knobs(&file.report, &cells, &origin)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "grid".into());
        Ok(Grid {
            name: file.name.unwrap_or_else(|| stem.clone()),
            results: file.results.unwrap_or_else(|| PathBuf::from("runs").join(stem)),
            cells,
            arms: arm_labels,
            report: file.report,
            plans: plans.into_iter().map(|((root, _), p)| (root, p)).collect(),
        })
    }
}

/// What decides a training set's images: its root, format, split and COCO instances file.
type TrainingSet = (PathBuf, Option<crate::config::DataFormat>, String, Option<PathBuf>);

/// The epochs a cell trains: `train.epochs`, or what `train.iterations` makes of its training
/// set (0 without the data). The annotations are read once per training set (`trainable`, a
/// few entries), whatever the cells' schedules: keyed by all that decides which images it has
/// (a COCO instances file may differ between cells under one root, or the format that reads it).
fn cell_epochs(config: &TrainConfig, require_data: bool, where_: &str, trainable: &mut Vec<(TrainingSet, usize)>) -> Result<usize> {
    match config.train.iterations {
        None => Ok(config.train.epochs),
        Some(_) if !require_data => Ok(0),
        Some(_) => {
            let d = &config.dataset;
            let key = (d.root.clone(), d.format, d.train_split.clone(), d.train_ann.clone());
            let n = match trainable.iter().find(|(k, _)| *k == key) {
                Some(&(_, n)) => n,
                None => {
                    let n = crate::trainer::trainable_images(config).with_context(|| format!("{where_}: the epochs of train.iterations"))?;
                    trainable.push((key, n));
                    n
                }
            };
            Ok(config.train.schedule(n).epochs)
        }
    }
}

/// A cell's config value once per split of `splits:` (with `dataset.train_split` and
/// `test_split` naming the split's files), or once as it is without. The splits are planned once
/// per dataset root and pool, and written into the root when `write` (not for a dry run).
fn split_variants(v: Value, spec: Option<&SplitSpec>, plans: &mut Vec<((PathBuf, Vec<String>), Plan)>, origin: &str, where_: &str, write: bool) -> Result<Vec<(Option<CellSplit>, Value)>> {
    let Some(spec) = spec else { return Ok(vec![(None, v)]) };
    let text = |k: &str| v.get("dataset").and_then(|d| d.get(k)).and_then(|x| x.as_str()).map(str::to_string);
    let root = PathBuf::from(text("root").ok_or_else(|| anyhow!("{where_}: splits: need dataset.root"))?);
    let pool = spec.pool.clone().unwrap_or_else(|| vec![text("train_split").unwrap_or_else(|| "trainval".into()), text("test_split").unwrap_or_else(|| "test".into())]);
    if !root.is_dir() {
        bail!("{origin}: key splits: the dataset {} must exist to plan its splits (make it first; the dry run needs it too)", root.display());
    }
    let key = (root.clone(), pool.clone());
    let plan = match plans.iter().position(|(k, _)| *k == key) {
        Some(i) => &plans[i].1,
        None => {
            let plan = spec.plan(&root, &pool).with_context(|| format!("{origin}: key splits"))?;
            if write {
                plan.write(&root).with_context(|| format!("{origin}: key splits: writing the split files"))?;
            }
            plans.push((key, plan));
            &plans[plans.len() - 1].1
        }
    };
    plan.splits
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let mut v = v.clone();
            set_dotted(&mut v, "dataset.train_split", Value::from(s.train_split()))?;
            set_dotted(&mut v, "dataset.test_split", Value::from(s.test_split()))?;
            Ok((Some(CellSplit { index, label: s.label.clone(), train: s.train.len(), test: s.test.len(), buffered: s.buffered.len() }), v))
        })
        .collect()
}

/// Shuffles the cells of each block (cells sorted seed-major, then by split) with a generator
/// seeded by `order_seed`, the block's seed and its split: the same grid file always gives the
/// same order.
fn shuffle_within_seeds(cells: &mut [Cell], order_seed: u64) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut start = 0;
    while start < cells.len() {
        let (seed, split) = (cells[start].seed, cells[start].split.as_ref().map(|s| s.index));
        let end = start + cells[start..].iter().take_while(|c| c.seed == seed && c.split.as_ref().map(|s| s.index) == split).count();
        let block = split.map_or(0, |i| (i as u64 + 1) << 40);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(order_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed ^ block);
        cells[start..end].shuffle(&mut rng);
        start = end;
    }
}

impl GridFile {
    /// Reads a grid file and checks what needs no expansion: seeds, base and the report's numbers.
    fn read(path: &Path) -> Result<GridFile> {
        let origin = path.display().to_string();
        let text = crate::read_text(path, "a grid file, YAML")?;
        let file: GridFile = from_value(parse_yaml(&text, &origin)?, &origin).map_err(|e| crate::config::with_line(e, &text, &[&[]]))?;
        let seeds = file.seeds.as_ref().ok_or_else(|| anyhow!("{origin}: key seeds is missing: list at least one seed"))?;
        if seeds.is_empty() {
            bail!("{origin}: key seeds is an empty list: list at least one seed");
        }
        let mut uniq = seeds.clone();
        uniq.sort();
        uniq.dedup();
        if uniq.len() != seeds.len() {
            bail!("{origin}: key seeds = {seeds:?} repeats a seed");
        }
        if !file.base.is_object() {
            bail!("{origin}: key base must be a map of config keys (as `harness train` takes)");
        }
        let r = &file.report;
        if !(r.target_fraction > 0.0 && r.target_fraction <= 1.0) {
            bail!("{origin}: key report.target_fraction = {} is outside (0, 1]", r.target_fraction);
        }
        if r.bootstrap == 0 {
            bail!("{origin}: key report.bootstrap = 0: at least one resample");
        }
        Ok(file)
    }

    /// The arms, each a map of config keys over the base (one arm `base` when none is named).
    fn arms(&self, origin: &str) -> Result<Vec<(String, Value)>> {
        let arms: Vec<(String, Value)> = match &self.arms {
            None => vec![("base".to_string(), Value::Object(Default::default()))],
            Some(m) if m.is_empty() => bail!("{origin}: key arms is empty: name at least one arm or leave it out"),
            Some(m) => m.iter().map(|(k, v)| (k.clone(), if v.is_null() { Value::Object(Default::default()) } else { v.clone() })).collect(),
        };
        for (name, v) in &arms {
            if !v.is_object() {
                bail!("{origin}: key arms.{name} must be a map of config keys, found {v}");
            }
            if name.is_empty() || name.contains('/') {
                bail!("{origin}: arm name {name:?} must be non-empty and contain no '/'");
            }
        }
        Ok(arms)
    }

    /// The axes: each a non-empty list of values over a dotted key.
    fn axes(&self, origin: &str) -> Result<Vec<(String, Vec<Value>)>> {
        let mut axes = Vec::new();
        for (k, v) in self.axes.iter().flatten() {
            let vals = v.as_array().ok_or_else(|| anyhow!("{origin}: key axes.{k} must be a list of values, found {v}"))?;
            if vals.is_empty() {
                bail!("{origin}: key axes.{k} is an empty list");
            }
            axes.push((k.clone(), vals.clone()));
        }
        Ok(axes)
    }
}

/// Each group's knobs are keys of its arms' configs: a key some arm of the group has (an arm
/// that leaves an optional key unset does not write it).
fn check_group_knobs(report: &ReportConfig, cells: &[Cell], origin: &str) -> Result<()> {
    for (i, g) in report.groups.iter().enumerate() {
        for k in &g.knobs {
            let known = cells.iter().filter(|c| g.arms.contains(&c.arm)).any(|c| {
                let mut flat = Vec::new();
                flatten("", &serde_json::to_value(&c.config).unwrap_or_default(), &mut flat);
                flat.iter().any(|(f, _)| f == k)
            });
            if !known {
                bail!("{origin}: key report.groups[{i}].knobs names {k:?}, which is not a config key of the group's arms");
            }
        }
    }
    Ok(())
}

/// An unknown key in a partial config (a grid's base, one --set), as an error naming `label`;
/// whatever else the part lacks (keys an arm or the base gives) is no error here. The `sampler`
/// section is left to the cells: which keys it has depends on the kind, which an arm may set.
fn unknown_key(part: &Value, label: &str) -> Result<()> {
    let mut part = part.clone();
    if let Some(m) = part.as_object_mut() {
        m.remove("sampler");
    }
    match TrainConfig::from_value(part, label) {
        Err(e) if e.downcast_ref::<crate::config::KeyError>().is_some_and(|k| k.msg.starts_with("unknown key")) => Err(e),
        _ => Ok(()),
    }
}

/// A grid-level error, "ORIGIN: key K …" (the grid's own keys: seeds, arms, axes, splits,
/// report), with K's line in the grid file: "ORIGIN (line N): key K …". A key inside a list
/// (`report.verdicts[1].arm`) gets its list's line. Other errors as they are.
fn grid_line(e: anyhow::Error, origin: &str, text: &str) -> anyhow::Error {
    if e.downcast_ref::<crate::config::KeyError>().is_some() {
        return e;
    }
    let msg = format!("{e:#}");
    let Some(rest) = msg.strip_prefix(&format!("{origin}: key ")) else { return e };
    let key: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).collect();
    match crate::config::locate_key(text, &[&[]], key.trim_end_matches('.')) {
        Some(line) if !key.is_empty() => anyhow!("{origin} (line {line}): key {rest}"),
        _ => e,
    }
}

/// A cell's config error where its key was written: a `--set` or an axis that set it, else the
/// arm's or the base's line in the grid file (`file`); `where_` names the cell's arm and axes.
/// A failed check can name several keys ([`crate::config::KeyError::keys`]): any of them.
fn blame(e: anyhow::Error, text: &str, file: &str, where_: &str, arm: &str, overrides: &[(String, Value)], combo: &[(String, Value)]) -> anyhow::Error {
    use crate::config::{holds_key, locate_key, KeyError};
    let Some(k) = e.downcast_ref::<KeyError>() else { return e };
    let keys = k.keys();
    let hits = |o: &str| keys.iter().any(|key| key == o || key.starts_with(&format!("{o}.")));
    let keyed = |origin: String, line: Option<usize>| -> anyhow::Error { KeyError { origin, key: k.key.clone(), msg: k.msg.clone(), line }.into() };
    if let Some((o, _)) = overrides.iter().find(|(o, _)| hits(o)) {
        return keyed(format!("--set {o}"), None);
    }
    if let Some((o, _)) = combo.iter().find(|(o, _)| hits(o)) {
        let line = text.lines().position(|l| l.trim_start().starts_with(&format!("{o}:"))).map(|n| n + 1);
        return keyed(format!("{file}: axis {o}"), line);
    }
    let held = |scope: &[&str]| keys.iter().find(|key| holds_key(text, scope, key)).map(|key| locate_key(text, &[scope], key));
    if let Some(line) = held(&["arms", arm]) {
        return keyed(where_.to_string(), line);
    }
    // a key the base wrote and the arm does not is the base's
    if let Some(line) = held(&["base"]) {
        let cell = where_.strip_prefix(&format!("{file}: ")).unwrap_or(where_);
        let origin = if cell.starts_with("base") { where_.to_string() } else { format!("{file}: base (in {cell})") };
        return keyed(origin, line);
    }
    if k.is_check() {
        // a value out of range that the grid file does not write (a default): no line to give
        return e;
    }
    crate::config::with_line(e, text, &[&["arms", arm], &["base"]])
}

/// The cartesian product of the axes' values.
fn combos(axes: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (k, vals) in axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                vals.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

/// A cell's typed, checked config from its merged value. An axis must name a
/// real key: it has to survive the round trip into the typed config.
fn cell_config(v: Value, origin: &str, where_: &str, combo: &[(String, Value)], require_data: bool) -> Result<TrainConfig> {
    let config = TrainConfig::from_value(v, where_)?;
    let mut flat = Vec::new();
    flatten("", &serde_json::to_value(&config)?, &mut flat);
    for (k, _) in combo {
        if !flat.iter().any(|(f, _)| f == k || f.starts_with(&format!("{k}."))) {
            bail!("{origin}: key axes.{k}: no such config key");
        }
    }
    if require_data { config.check() } else { config.check_values() }.map_err(|e| crate::config::check_error(e, where_))?;
    Ok(config)
}

/// The report section against the arms it names: baselines and verdicts.
fn check_report(report: &ReportConfig, arm_labels: &[String], origin: &str) -> Result<()> {
    for b in &report.baselines {
        if !arm_labels.contains(b) {
            bail!("{origin}: key report.baselines names {b:?}, which is not an arm (arms: {})", arm_labels.join(", "));
        }
    }
    for (i, v) in report.verdicts.iter().enumerate() {
        for (k, a) in [("baseline", &v.baseline), ("arm", &v.arm)] {
            if !arm_labels.contains(a) {
                bail!("{origin}: key report.verdicts[{i}].{k} names {a:?}, which is not an arm (arms: {})", arm_labels.join(", "));
            }
        }
        if !(v.expected > 0.0 && v.expected.is_finite()) {
            bail!("{origin}: key report.verdicts[{i}].expected = {}: a speed-up must be positive", v.expected);
        }
        if !(v.tolerance > 1.0 && v.tolerance.is_finite()) {
            bail!("{origin}: key report.verdicts[{i}].tolerance = {}: must be above 1 (the band is [expected / tolerance, expected × tolerance])", v.tolerance);
        }
    }
    let mut grouped: Vec<&String> = Vec::new();
    for (i, g) in report.groups.iter().enumerate() {
        if g.arms.is_empty() {
            bail!("{origin}: key report.groups[{i}] ({}) lists no arms", g.name);
        }
        for a in g.arms.iter().chain(std::iter::once(&g.default)) {
            if !arm_labels.contains(a) {
                bail!("{origin}: key report.groups[{i}] ({}) names {a:?}, which is not an arm (arms: {})", g.name, arm_labels.join(", "));
            }
        }
        if !g.arms.contains(&g.default) {
            bail!("{origin}: key report.groups[{i}].default = {:?} is not one of the group's arms", g.default);
        }
        for (j, a) in g.arms.iter().enumerate() {
            if g.arms[..j].contains(a) {
                bail!("{origin}: key report.groups[{i}] ({}) lists arm {a:?} twice", g.name);
            }
            if grouped.contains(&a) {
                bail!("{origin}: key report.groups: arm {a:?} is in two groups");
            }
            grouped.push(a);
        }
        if g.knobs.is_empty() {
            bail!("{origin}: key report.groups[{i}] ({}) names no knobs (the dotted keys its arms vary)", g.name);
        }
    }
    if let Some(t) = report.target_map {
        if !(t > 0.0 && t <= 1.0) {
            bail!("{origin}: key report.target_map = {t} is outside (0, 1]");
        }
    }
    Ok(())
}
