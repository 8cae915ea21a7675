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
        ("pretrain.epoch=3", &["pretrain.epoch", "unknown field"]),
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
