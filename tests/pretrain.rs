//! The shared pre-trained backbone: determinism, loading into the detector,
//! the cache, and config errors.

use std::path::Path;

use ohem_harness::model::FastRcnn;
use ohem_harness::pretrain::ensure;
use ohem_harness::config::TrainConfig;
use tch::Tensor;

use crate::util::{harness, tiny_config};

/// A pre-training config small enough for a test: one short epoch on the tiny data.
fn tiny_pretrain(dir: &Path, extra: &[&str]) -> TrainConfig {
    // both sources (the default), with 10 generated scenes beside the tiny training split
    let mut o: Vec<String> = ["model.init=pretrained", "pretrain.source=both", "pretrain.synth_images=10", "pretrain.epochs=2", "pretrain.window=48", "pretrain.batch_size=16", "pretrain.crops_per_object=1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(&tiny_config(dir, ""), &o).unwrap()
}

#[test]
fn pretraining_is_deterministic_and_cached() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_pretrain(t.path(), &[]);
    let a = ensure(&cfg, &t.path().join("a"), false).unwrap();
    let b = ensure(&cfg, &t.path().join("b"), false).unwrap();
    assert!(a.computed && b.computed);
    assert_eq!(std::fs::read(&a.weights).unwrap(), std::fs::read(&b.weights).unwrap(), "two runs, same bytes");
    let log = ohem_harness::pretrain::read_log(&a.log).unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.crops > 0 && (0.0..=1.0).contains(&r.accuracy) && r.loss.is_finite()));

    // a cache hit does no work: nothing is trained and nothing is rewritten
    let before = std::fs::metadata(&a.weights).unwrap().modified().unwrap();
    let again = ensure(&cfg, &t.path().join("a"), false).unwrap();
    assert!(!again.computed);
    assert_eq!(again.weights, a.weights);
    assert_eq!(std::fs::metadata(&a.weights).unwrap().modified().unwrap(), before);

    // the cell's own seed and sampler are not part of the key: every arm and seed shares one file
    let other = tiny_pretrain(t.path(), &["seed=7", "sampler.kind=ohem"]);
    assert!(!ensure(&other, &t.path().join("a"), false).unwrap().computed);
    // the pre-training seed is
    let reseeded = tiny_pretrain(t.path(), &["pretrain.seed=1"]);
    let c = ensure(&reseeded, &t.path().join("a"), false).unwrap();
    assert!(c.computed && c.weights != a.weights);
}

#[test]
fn the_pretrained_file_loads_into_the_detector() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    for stride in ["16", "8"] {
        let cfg = tiny_pretrain(t.path(), &[&format!("model.stride={stride}")]);
        let p = ensure(&cfg, &t.path().join("cache"), false).unwrap();
        let saved: Vec<(String, Tensor)> = Tensor::read_safetensors(&p.weights).unwrap();
        let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = FastRcnn::new(&vs.root(), &cfg.model, 6);
        let missing = model.load_from_and_freeze(&mut vs, Some(&p.weights)).unwrap();
        let mut missing_sorted = missing.clone();
        missing_sorted.sort();
        assert_eq!(missing_sorted, ["bbox_pred.bias", "bbox_pred.weight", "cls_score.bias", "cls_score.weight"], "stride {stride}: only the detection head starts fresh");
        let vars = vs.variables();
        let backbone: Vec<&String> = vars.keys().filter(|n| n.starts_with("features.")).collect();
        assert!(backbone.len() >= 8 * 6, "stride {stride}: 8 convs and 8 batch norms");
        for (name, t) in &saved {
            assert!(vars[name].equal(t), "stride {stride}: {name} loaded");
        }
        assert_eq!(saved.len(), vars.len() - 4);
        // batch norm is frozen when fine-tuning from pre-trained weights
        assert!(!vars["features.bn3.weight"].requires_grad() && vars["features.conv3.weight"].requires_grad());
    }
}

#[test]
fn bad_pretrain_configs_name_the_key_and_value() {
    let t = tempfile::tempdir().unwrap();
    let p = tiny_config(t.path(), "");
    let cases: &[(&str, &[&str])] = &[
        ("pretrain.window=50", &["pretrain.window = 50"]),
        ("pretrain.epochs=0", &["pretrain.epochs = 0"]),
        ("pretrain.bg_fraction=1.5", &["pretrain.bg_fraction = 1.5"]),
        ("pretrain.batch_size=1", &["pretrain.batch_size = 1"]),
        ("pretrain.source=imagenet", &["pretrain.source", "imagenet"]),
        ("pretrain.epoch=3", &["pretrain.epoch", "unknown key"]),
        ("model.init=random", &["model.init", "random"]),
        ("model.stride=4", &["model.stride = 4"]),
    ];
    for (o, needles) in cases {
        let err = format!("{:#}", TrainConfig::load(&p, &[o.to_string()]).unwrap_err());
        for n in *needles {
            assert!(err.contains(n), "{o}: {err:?} lacks {n:?}");
        }
        // the command line says the same, exits non-zero, writes nothing
        let cache = t.path().join("cache");
        let (ok, _, stderr) = harness(&["pretrain", p.to_str().unwrap(), "--set", o, "--pretrain-dir", cache.to_str().unwrap()]);
        assert!(!ok && stderr.contains(needles[0]) && !stderr.contains("panicked"), "{o}: {stderr}");
        assert!(!cache.exists());
    }
}

/// With `both`, a dataset's own classes come first and the generated shapes that
/// it lacks are added after them: a dataset of other classes keeps its own.
#[test]
fn both_sources_merge_classes_by_name() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    // the tiny data with "disc" renamed "coin": a class the generator does not have
    let data = crate::util::copy_of(crate::util::tiny_dataset());
    for e in std::fs::read_dir(data.path().join("Annotations")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap().replace("<name>disc</name>", "<name>coin</name>");
        std::fs::write(&p, text).unwrap();
    }
    let classes = std::fs::read_to_string(data.path().join("classes.txt")).unwrap().replace("disc", "coin");
    std::fs::write(data.path().join("classes.txt"), classes).unwrap();
    let cfg = tiny_pretrain(t.path(), &[&format!("dataset.root={}", data.path().display())]);
    let p = ensure(&cfg, &t.path().join("cache"), false).unwrap();
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.weights.with_file_name("pretrain.json")).unwrap()).unwrap();
    assert_eq!(record["classes"], serde_json::json!(["coin", "square", "triangle", "star", "cross", "ring", "disc"]));
}

/// The code's stamp ignores comments, blank lines and unit tests, and nothing else.
#[test]
fn the_code_stamp_sees_code_and_not_comments() {
    use ohem_harness::pretrain::code_only;
    let a = "fn f() -> i32 {\n    // one\n    1\n}\n";
    let commented = "/// f\nfn f() -> i32 {\n\n    // the one\n      1\n}\n#[cfg(test)]\nmod tests { fn g() {} }\n";
    let changed = "fn f() -> i32 {\n    // one\n    2\n}\n";
    assert_eq!(code_only(a), "fn f() -> i32 {\n1\n}");
    assert_eq!(code_only(a), code_only(commented));
    assert_ne!(code_only(a), code_only(changed));
    let stamp = ohem_harness::pretrain::code_stamp();
    assert_eq!(stamp.len(), 16);
    assert!(stamp.chars().all(|c| c.is_ascii_hexdigit()));
}

/// `--ship` writes a folder that a fresh cache is then served from, checked by
/// SHA-256; a damaged file or an unparsable record is refused with its path, and a folder of another
/// key is never served.
#[test]
fn a_shipped_backbone_is_served_checked_and_only_for_its_key() {
    use ohem_harness::pretrain::{ensure_with, ship, Origin};
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_pretrain(t.path(), &[]);
    let shipped = t.path().join("shipped");
    let to = ship(&cfg, &t.path().join("maker"), &shipped, false).unwrap();
    let made = t.path().join("maker").read_dir().unwrap().filter_map(|e| e.ok()).find(|e| e.path().is_dir()).unwrap().path();
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(to.join("pretrain.json")).unwrap()).unwrap();
    assert_eq!(record["code"], ohem_harness::pretrain::code_stamp());
    assert_eq!(record["weights_sha256"].as_str().unwrap(), ohem_harness::pretrain::sha256_of(&to.join("backbone.safetensors")).unwrap());

    // a fresh cache: served from the shipped folder, the same bytes, then from the cache
    let p = ensure_with(&cfg, &t.path().join("fresh"), Some(&shipped), false).unwrap();
    assert_eq!((p.origin, p.computed), (Origin::Shipped, false));
    assert_eq!(std::fs::read(&p.weights).unwrap(), std::fs::read(made.join("backbone.safetensors")).unwrap());
    assert_eq!(ensure_with(&cfg, &t.path().join("fresh"), Some(&shipped), false).unwrap().origin, Origin::Cache);

    // a damaged shipped file: refused, naming it; nothing left in the cache
    let bytes = std::fs::read(to.join("backbone.safetensors")).unwrap();
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(to.join("backbone.safetensors"), &bad).unwrap();
    let err = format!("{:#}", ensure_with(&cfg, &t.path().join("fresh2"), Some(&shipped), false).unwrap_err());
    assert!(err.contains("backbone.safetensors") && err.contains("SHA-256"), "{err}");
    assert!(!t.path().join("fresh2").join(&p.key).exists());
    std::fs::write(to.join("backbone.safetensors"), &bytes).unwrap();

    // an unparsable record: refused, naming it; nothing left in the cache
    let record_text = std::fs::read(to.join("pretrain.json")).unwrap();
    std::fs::write(to.join("pretrain.json"), "{\"weights_sha256\": ").unwrap();
    let err = format!("{:#}", ensure_with(&cfg, &t.path().join("fresh2"), Some(&shipped), false).unwrap_err());
    assert!(err.contains("parsing") && err.contains("pretrain.json"), "{err}");
    assert!(!t.path().join("fresh2").join(&p.key).exists());
    std::fs::write(to.join("pretrain.json"), &record_text).unwrap();

    // another pre-training (another key) does not take this folder: it trains
    let other = tiny_pretrain(t.path(), &["pretrain.seed=3"]);
    let q = ensure_with(&other, &t.path().join("fresh3"), Some(&shipped), false).unwrap();
    assert_eq!(q.origin, Origin::Trained);
    assert_ne!(q.key, p.key);
}

/// `harness pretrain --verify` trains anew and compares: the same code on the
/// same CPU gives the same bits; a changed served file is reported different.
#[test]
fn verify_retrains_and_compares_with_the_served_weights() {
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_config(t.path(), "");
    let cache = t.path().join("cache");
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["pretrain".into(), cfg.to_str().unwrap().into(), "--pretrain-dir".into(), cache.to_str().unwrap().into()];
        for o in ["model.init=pretrained", "pretrain.synth_images=10", "pretrain.epochs=1", "pretrain.window=48", "pretrain.batch_size=16", "pretrain.crops_per_object=1"] {
            v.extend(["--set".to_string(), o.to_string()]);
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        harness(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    };
    let (ok, out, err) = run(&["--verify"]);
    assert!(ok, "{err}");
    assert!(out.contains("identical: all") && out.contains("served (new)"), "{out}");
    // change one weight of the served file: reported, with the size of the difference
    let dir = std::fs::read_dir(&cache).unwrap().filter_map(|e| e.ok()).find(|e| e.path().join("backbone.safetensors").is_file()).unwrap().path();
    let file = dir.join("backbone.safetensors");
    let mut named: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&file).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let _ = named[0].1.view([-1]).get(0).fill_(1000.0);
    tch::Tensor::write_safetensors(&named, &file).unwrap();
    let (ok, out, err) = run(&["--verify"]);
    assert!(ok, "{err}");
    assert!(out.contains("served (cached)") && out.contains("different: 1 of") && out.contains("e3"), "{out}");
}

/// The folder in `pretrained/` is what the main job's cells are served on the
/// bundled default data: made by this code (its stamp), intact (its SHA-256),
/// and under the key of `experiments/quick.yaml` on `make-dataset --size small
/// --seed 0`. When this fails after a change to the pre-training's sources,
/// remake it: `harness pretrain experiments/frcn-quick.yaml --ship`, delete the
/// old folder and commit the new one.
#[test]
fn the_shipped_backbone_is_the_default_datas_and_this_codes() {
    use ohem_harness::pretrain;
    let shipped = pretrain::shipped_dir();
    let folders: Vec<std::path::PathBuf> = std::fs::read_dir(&shipped).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    for f in &folders {
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.join("pretrain.json")).unwrap()).unwrap();
        assert_eq!(record["code"], pretrain::code_stamp(), "{}: made by other code; remake it with `harness pretrain experiments/frcn-quick.yaml --ship`", f.display());
        assert_eq!(record["weights_sha256"].as_str().unwrap(), pretrain::sha256_of(&f.join("backbone.safetensors")).unwrap(), "{}", f.display());
    }
    let data = tempfile::tempdir().unwrap();
    ohem_harness::data::synth::make_dataset(data.path(), ohem_harness::data::synth::SynthSize::Small, 0, false).unwrap();
    let root = format!("dataset.root={}", data.path().display());
    let grid = ohem_harness::harness::Grid::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/quick.yaml"), &[root]).unwrap();
    for c in &grid.cells {
        let (key, _) = pretrain::key_of(&c.config).unwrap();
        assert!(shipped.join(&key).join("backbone.safetensors").is_file(), "cell {}: no shipped backbone for key {key} in {}", c.arm, shipped.display());
    }
}

/// The pre-training key reads the data, not its layout: the tiny dataset as
/// VOC and as COCO (`harness convert`) share one key (so one backbone); a box
/// moved by one pixel, or an object made difficult, changes it.
#[test]
fn the_pretraining_key_is_the_datas_not_the_layouts() {
    use ohem_harness::pretrain::key_of;
    let t = tempfile::tempdir().unwrap();
    let voc = crate::util::copy_of(crate::util::tiny_dataset());
    let coco = t.path().join("coco");
    ohem_harness::data::coco::convert(voc.path(), &coco, &[]).unwrap();
    let root = |p: &Path| format!("dataset.root={}", p.display());
    let k_voc = key_of(&tiny_pretrain(t.path(), &[&root(voc.path())])).unwrap().0;
    let k_coco = key_of(&tiny_pretrain(t.path(), &[&root(&coco)])).unwrap().0;
    assert_eq!(k_voc, k_coco);
    // edit one training annotation's first box
    let ds = ohem_harness::data::Dataset::open(voc.path()).unwrap();
    let id = ds.split_ids("trainval").unwrap()[0].clone();
    let path = ds.annotation_path(&id);
    let xml = std::fs::read_to_string(&path).unwrap();
    let at = xml.find("<xmin>").unwrap() + "<xmin>".len();
    let end = at + xml[at..].find('<').unwrap();
    let x: f32 = xml[at..end].parse().unwrap();
    std::fs::write(&path, format!("{}{}{}", &xml[..at], x + 1.0, &xml[end..])).unwrap();
    assert_ne!(key_of(&tiny_pretrain(t.path(), &[&root(voc.path())])).unwrap().0, k_voc, "a moved box");
    std::fs::write(&path, xml.replacen("<difficult>0</difficult>", "<difficult>1</difficult>", 1)).unwrap();
    assert_ne!(key_of(&tiny_pretrain(t.path(), &[&root(voc.path())])).unwrap().0, k_voc, "a difficult object");
}

/// A source larger than `dataset.cache_mib` (0: nothing held) is read as its crops use it,
/// and trains the same weights, bit for bit, as one held in memory.
#[test]
fn a_streamed_source_pretrains_the_same_backbone() {
    let _rng = crate::util::torch_rng_lock();
    let t = tempfile::tempdir().unwrap();
    let held = tiny_pretrain(t.path(), &[]);
    let streamed = tiny_pretrain(t.path(), &["dataset.cache_mib=0"]);
    use ohem_harness::pretrain;
    assert_eq!(pretrain::key_of(&held).unwrap().0, pretrain::key_of(&streamed).unwrap().0, "the budget is not part of the key");
    let a = pretrain::ensure_with(&held, &t.path().join("a"), None, false).unwrap();
    let b = pretrain::ensure_with(&streamed, &t.path().join("b"), None, false).unwrap();
    assert!(std::fs::read(&a.weights).unwrap() == std::fs::read(&b.weights).unwrap(), "streamed pre-training trained other weights");
}

/// The pre-training key's image hashes are recorded: a second key of the same data reads no
/// image; a file given a new time (its bytes changed) is read again, and the key follows it.
#[test]
fn image_hashes_are_read_once_while_the_files_are_unchanged() {
    use ohem_harness::pretrain::{file_digests, key_of};
    let t = tempfile::tempdir().unwrap();
    let voc = crate::util::copy_of(crate::util::tiny_dataset());
    let ds = ohem_harness::data::Dataset::open(voc.path()).unwrap();
    let paths: Vec<std::path::PathBuf> = ds.split_ids("trainval").unwrap().iter().map(|id| ds.image_path(id)).collect();
    // an hour-old modification time on every image
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let touch = |p: &Path, at: std::time::SystemTime| std::fs::File::options().write(true).open(p).unwrap().set_modified(at).unwrap();
    for p in &paths {
        touch(p, old);
    }
    // and a change time 2 s old: a file changed in the last 2 s is hashed every time
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let first = file_digests(&paths).unwrap();
    assert_eq!(first.read, paths.len(), "the first time every file is read");
    let again = file_digests(&paths).unwrap();
    assert_eq!((again.read, &again.sums), (0, &first.sums), "unchanged files: the record's hashes, nothing read");
    let cfg = tiny_pretrain(t.path(), &[&format!("dataset.root={}", voc.path().display())]);
    let k1 = key_of(&cfg).unwrap().0;
    // one image's bytes changed, its old time put back: its change time still moved
    let mut bytes = std::fs::read(&paths[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&paths[0], &bytes).unwrap();
    touch(&paths[0], old);
    let after = file_digests(&paths).unwrap();
    assert_eq!(after.read, 1, "the changed file alone is read again");
    assert_ne!(after.sums[0], first.sums[0]);
    assert_ne!(key_of(&cfg).unwrap().0, k1, "the key follows the bytes");
}
