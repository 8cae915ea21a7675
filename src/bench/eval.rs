//! `harness bench eval`: VOC evaluation (the VOC07 and VOC10 metrics) of
//! 10,000 generated detections on 500 images, in ms per evaluation, and the
//! report's test-set bootstrap (1,000 resamples of 1,000 images); with
//! `--coco`, COCO evaluation timed against pycocotools ([`eval_coco`]).

use std::time::Instant;

use anyhow::Result;

use super::common::venv_python;
use crate::data::synth;
use crate::eval::{self, VocMetric};

pub fn eval() -> Result<()> {
    let (anns, classes, dets) = case(500, 10_000);
    for metric in [VocMetric::Voc07, VocMetric::Voc10] {
        let reps = 20;
        let t = Instant::now();
        let mut map = 0.0;
        for _ in 0..reps {
            map = eval::evaluate(&anns, &classes, &dets, metric).map;
        }
        println!(
            "VOC evaluation ({metric:?}): 10,000 detections, 500 images, 6 classes: {:.2} ms per evaluation (mAP {map:.3})",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        );
    }
    bootstrap()
}

/// The report's test-set bootstrap ([`eval::bootstrap`]): 1,000 resamples of a 1,000-image
/// test split with 20,000 detections, VOC07 mAP and COCO AP each, on one thread (the report
/// runs cells in parallel). Issue 37 asks for at most 10 s.
fn bootstrap() -> Result<()> {
    use rand::SeedableRng;
    let (anns, classes, dets) = case(1000, 20_000);
    let gt = eval::coco::gt_of_annotations(&anns);
    let cats: Vec<i64> = (1..=classes.len() as i64).collect();
    let t = Instant::now();
    let o = eval::bootstrap::Outcomes::compute(&anns, &classes, &dets, &gt, &cats);
    let compute_s = t.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let draws: Vec<Vec<u32>> = (0..1000).map(|_| eval::bootstrap::draw(anns.len(), &mut rng)).collect();
    let t = Instant::now();
    let voc: f64 = draws.iter().filter_map(|w| o.voc07(w)).sum::<f64>() / draws.len() as f64;
    let voc_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let coco: f64 = draws.iter().filter_map(|w| o.coco_box_ap(w)).sum::<f64>() / draws.len() as f64;
    let coco_s = t.elapsed().as_secs_f64();
    println!("test-set bootstrap: 1,000 images, 20,000 detections, 1,000 resamples on one thread: outcomes {compute_s:.2} s once, VOC07 mAP {voc_s:.2} s (mean {voc:.3}), COCO AP {coco_s:.2} s (mean {coco:.3})");
    Ok(())
}

/// A generated evaluation case: `images` images of 4 objects each (the default data's 6
/// classes, a tenth difficult) and `n_dets` detections, 70% near an object of their class.
fn case(images: usize, n_dets: usize) -> (Vec<crate::data::Annotation>, Vec<String>, Vec<Vec<eval::Detection>>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let classes: Vec<String> = synth::CLASSES.iter().map(|s| s.to_string()).collect();
    let anns: Vec<crate::data::Annotation> = (0..images)
        .map(|i| crate::data::Annotation {
            id: format!("{i:06}"),
            filename: String::new(),
            width: 256,
            height: 256,
            depth: 3,
            objects: (0..4)
                .map(|_| {
                    let (x, y) = (rng.random_range(1.0..200.0f32), rng.random_range(1.0..200.0f32));
                    crate::data::Object {
                        name: String::new(),
                        class: rng.random_range(0..classes.len()),
                        bbox: [x, y, x + rng.random_range(10.0..55.0), y + rng.random_range(10.0..55.0)],
                        difficult: rng.random::<f32>() < 0.1,
                        truncated: false,
                        pose: String::new(),
                        crowd: false,
                        area: None,
                    }
                })
                .collect(),
        })
        .collect();
    let mut dets = vec![Vec::new(); classes.len()];
    for _ in 0..n_dets {
        let image = rng.random_range(0..anns.len());
        let a = &anns[image];
        let o = &a.objects[rng.random_range(0..a.objects.len())];
        let j = |v: f32, r: &mut rand_chacha::ChaCha8Rng| v + r.random_range(-6.0..6.0f32);
        let c = if rng.random::<f32>() < 0.7 { o.class } else { rng.random_range(0..classes.len()) };
        let b = [j(o.bbox[0], &mut rng), j(o.bbox[1], &mut rng), j(o.bbox[2], &mut rng), j(o.bbox[3], &mut rng)];
        dets[c].push(eval::Detection { image: image as u32, score: rng.random(), bbox: b });
    }
    (anns, classes, dets)
}

/// COCO evaluation against pycocotools 2.0.11 on one generated case of
/// `images` images and 80 categories ([`eval::coco::random_case`]): ours is
/// timed over `evaluate` (grouping, matching, accumulating, summarising; the
/// JSON already parsed), pycocotools over `loadRes`, `evaluate`, `accumulate`
/// and `summarize` (its JSON already loaded), each the median of 3 runs in this
/// one process pair. The 12 summaries must agree within 1e-6.
pub fn eval_coco(images: usize) -> Result<()> {
    let (gt, dets) = eval::coco::random_case(11, images, 80);
    let dir = tempfile::tempdir()?;
    let case = dir.path().join("case");
    std::fs::create_dir_all(&case)?;
    std::fs::write(case.join("gt.json"), gt.to_string())?;
    std::fs::write(case.join("dets.json"), eval::coco::results_json(&dets))?;
    let f = crate::data::coco::CocoFile::read(&case.join("gt.json"))?;
    let (imgs, cats, gts): (Vec<i64>, Vec<i64>, _) = (f.images.iter().map(|i| i.id).collect(), f.category_ids(), eval::coco::gt_of_file(&f));
    let mut ours = Vec::new();
    let mut r = None;
    for _ in 0..3 {
        let t = Instant::now();
        r = Some(eval::coco::evaluate(&imgs, &cats, &gts, &dets));
        ours.push(t.elapsed().as_secs_f64());
    }
    let r = r.expect("three runs");
    let python = coco_python()?;
    let script = std::path::Path::new("scripts/coco_reference.py");
    let out = std::process::Command::new(&python).arg(script).args([&case, &case, &case]).output()?;
    if !out.status.success() {
        anyhow::bail!("{} {} failed: {}", python.display(), script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let runs = v["cases"].as_array().cloned().unwrap_or_default();
    let mut theirs: Vec<f64> = runs.iter().filter_map(|c| c["seconds"].as_f64()).collect();
    let stats: Vec<f64> = runs.first().and_then(|c| c["stats"].as_array()).map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
    let diff = stats.iter().zip(r.stats).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, t) = (med(&mut ours), med(&mut theirs));
    println!(
        "COCO evaluation: {} images, {} categories, {} ground-truth boxes, {} detections: ours {:.3} s, pycocotools {} {:.2} s (median of 3 each): {:.4}x its time (target <= 0.1x); largest difference in the 12 summaries {diff:.1e}{}",
        f.images.len(), cats.len(), gts.len(), dets.len(), o, v["version"].as_str().unwrap_or("?"), t, o / t,
        if stats.len() == 12 && diff <= 1e-6 { "" } else { "  ** DISAGREE **" }
    );
    Ok(())
}

/// The python of the pycocotools venv: `OHEM_COCO_PYTHON`, else what
/// `scripts/coco-venv.sh` installs under the cache.
fn coco_python() -> Result<std::path::PathBuf> {
    venv_python("OHEM_COCO_PYTHON", "scripts/coco-venv.sh", "--coco")
}
