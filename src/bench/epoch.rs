//! `harness bench epoch`: evaluation against training in one run, each
//! epoch's training and evaluation seconds and their ratio, and the stages of
//! one more evaluation pass.

use std::time::Instant;

use anyhow::{Context, Result};
use tch::nn;

use crate::model::FastRcnn;

/// Evaluation against training, in one run: trains `config` for `epochs`
/// epochs (evaluating after each), then prints each epoch's training and
/// evaluation seconds with their ratio, and a per-stage breakdown of one more
/// evaluation pass with the final weights.
pub fn epoch(config: &std::path::Path, epochs: usize) -> Result<()> {
    use crate::config::TrainConfig;
    use crate::trainer::{self, detect, load_split, TrainOptions};
    let mut cfg = TrainConfig::load(config, &[format!("train.epochs={epochs}"), "test.eval_every=1".into()])?;
    cfg.train.lr_steps.clear();
    if cfg.model.rpn_config().is_some() {
        anyhow::bail!("{}: model.detector = faster_rcnn; this bench times Fast R-CNN's epoch against its evaluation over given proposals, and does not time the RPN yet", config.display());
    }
    let tmp = tempfile::Builder::new().prefix("ohem-bench-epoch").tempdir().context("creating a temporary folder")?;
    let dir = tmp.path().to_path_buf();
    let opts = TrainOptions { progress: false, force: true, ..Default::default() };
    let rows = trainer::train(&cfg, &dir, &opts)?;
    println!("training epoch against test-split evaluation, {} (device {:?}):", config.display(), crate::config::parse_device(&cfg.device)?);
    for r in &rows {
        println!("  epoch {}: train {:.2} s ({} iterations), evaluation {:.2} s: evaluation / training = {:.2}", r.epoch, r.train_s, r.iterations, r.eval_s, r.eval_s / r.train_s);
    }
    // the stages of one more pass with the last weights
    let device = crate::config::parse_device(&cfg.device)?;
    let ds = crate::data::Dataset::from_config(&cfg.dataset)?;
    let test_set = load_split(&ds, &cfg, &cfg.dataset.test_split, cfg.proposals.test_file.as_deref(), &opts)?;
    let mut vs = nn::VarStore::new(device);
    let model = FastRcnn::new(&vs.root(), &cfg.model, ds.classes.len());
    vs.load(dir.join(crate::rundir::CHECKPOINTS).join(format!("epoch_{epochs:03}.safetensors")))?;
    let mut t = detect::DetectTimes::default();
    let start = Instant::now();
    let dets = detect::detect_timed(&model, &test_set, &cfg.input, &cfg.test, device, Some(&mut t))?;
    let total = start.elapsed().as_secs_f64();
    let n = test_set.len() as f64;
    let rois: i64 = (0..test_set.len()).map(|i| test_set.n_proposals(i)).sum::<Result<i64>>()?;
    println!(
        "  evaluation pass: {:.1} ms/image ({:.0} RoIs/image, {} detections) = backbone {:.1} + RoI pooling {:.1} + head {:.1} + host {:.1}",
        total * 1e3 / n,
        rois as f64 / n,
        dets.iter().map(|d| d.len()).sum::<usize>(),
        t.backbone * 1e3 / n,
        t.roi_pool * 1e3 / n,
        t.head * 1e3 / n,
        t.host * 1e3 / n
    );
    Ok(())
}
