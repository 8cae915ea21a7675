//! `harness bench data`: memory and loading over the whole pipeline at growing
//! dataset sizes. For each size, each stage runs as its own `harness` child
//! process (its peak RSS from `wait4`): pre-training on the training split,
//! training over several epochs, an offline-mining round over every training
//! image, evaluation of a test split as large as the training split, and
//! training again with the split held in memory. From the training stage's
//! `metrics.csv`, per epoch: the images read, those decoded ahead, and the
//! steps' wait for images beside what decoding those images costs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::Device;

use super::common::{machine_line, run_measured};

/// The stages `bench data` can run.
pub const STAGES: [&str; 5] = ["pretrain", "train", "mine", "eval", "held"];

/// What `bench data` runs.
#[derive(Debug, Clone)]
pub struct DataBench {
    /// Training images of each generated dataset.
    pub sizes: Vec<usize>,
    /// `dataset.cache_mib` of every stage but `held`.
    pub cache_mib: u64,
    /// `dataset.cache_mib` of the `held` stage (a budget the split fits).
    pub held_mib: u64,
    /// Iterations per epoch and epochs of the training stage.
    pub iters: usize,
    pub epochs: usize,
    /// Stages to run, of [`STAGES`].
    pub stages: Vec<String>,
}

/// One stage's child process at one size.
struct Measured {
    rss_mib: f64,
    seconds: f64,
}

/// A generated dataset of `n` training images: the small default data's 360 images
/// repeated through links, split `trainval` (all of them), `test` (the first 8) and `all`
/// (all of them, as a test split), with 300 random proposals an image in a binary file.
fn make_data(src: &Path, root: &Path, n: usize) -> Result<PathBuf> {
    use crate::data::Dataset;
    use rand::{Rng, SeedableRng};
    let sds = Dataset::open(src)?;
    let ids = sds.split_ids("trainval")?;
    for d in ["JPEGImages", "Annotations", "ImageSets/Main"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(src.join("classes.txt"), root.join("classes.txt"))?;
    let names: Vec<String> = (0..n).map(|i| format!("{:06}", i + 1)).collect();
    for (i, id) in names.iter().enumerate() {
        let from = &ids[i % ids.len()];
        std::os::unix::fs::symlink(sds.image_path(from), root.join("JPEGImages").join(format!("{id}.jpg")))?;
        std::os::unix::fs::symlink(sds.annotation_path(from), root.join("Annotations").join(format!("{id}.xml")))?;
    }
    for (split, list) in [("trainval", &names[..]), ("all", &names[..]), ("test", &names[..8])] {
        std::fs::write(root.join(format!("ImageSets/Main/{split}.txt")), list.join("\n") + "\n")?;
    }
    let anns = Dataset::open(root)?.load_split("trainval")?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64);
    let boxes: Vec<Vec<crate::boxes::BBox>> = anns
        .iter()
        .map(|a| {
            (0..300)
                .map(|_| {
                    let (w, h) = (a.width as f32, a.height as f32);
                    let (x, y) = (rng.random_range(1.0..w * 0.8), rng.random_range(1.0..h * 0.8));
                    [x, y, (x + rng.random_range(8.0..w * 0.5)).min(w), (y + rng.random_range(8.0..h * 0.5)).min(h)]
                })
                .collect()
        })
        .collect();
    let id_refs: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
    let props = root.join("proposals.bin");
    crate::proposals::write_proposals_file(&props, &id_refs, &boxes)?;
    Ok(props)
}

/// The config of one stage (YAML): the small backbone from scratch (pre-trained for
/// `pretrain`, whose recipe is one epoch of one crop an object from the dataset alone).
fn stage_config(b: &DataBench, stage: &str, root: &Path, props: &Path) -> String {
    let mib = if stage == "held" { b.held_mib } else { b.cache_mib };
    let head = format!("seed: 0\ndevice: cpu\nproposals:\n  train_file: {p}\n  test_file: {p}\n", p = props.display());
    let data = |test: &str| format!("dataset:\n  root: {}\n  cache_mib: {mib}\n  test_split: {test}\n", root.display());
    let train = |epochs: usize, iters: usize| format!("train:\n  epochs: {epochs}\n  iters_per_epoch: {iters}\n  lr_steps: []\n  warmup_iters: 0\ntest:\n  eval_every: 1000\n");
    match stage {
        "pretrain" => format!("{head}{}model:\n  init: pretrained\npretrain:\n  source: dataset\n  epochs: 1\n  crops_per_object: 1\n", data("test")),
        "mine" => format!("{head}{}model:\n  init: scratch\nsampler:\n  kind: hnm\n  mine_every_epochs: 1\n{}", data("test"), train(2, 5)),
        "eval" => format!("{head}{}model:\n  init: scratch\n{}", data("all"), train(1, 5)),
        _ => format!("{head}{}model:\n  init: scratch\n{}", data("test"), train(b.epochs, b.iters)),
    }
}

/// Runs one stage as a child process; its peak RSS and wall-clock seconds.
fn run_stage(exe: &Path, b: &DataBench, stage: &str, dir: &Path, root: &Path, props: &Path) -> Result<Measured> {
    let cfg = dir.join(format!("{stage}.yaml"));
    std::fs::write(&cfg, stage_config(b, stage, root, props))?;
    let mut cmd = std::process::Command::new(exe);
    if stage == "pretrain" {
        cmd.arg("pretrain").arg(&cfg).arg("--pretrain-dir").arg(dir.join("pretrain-cache"));
    } else {
        cmd.arg("train").arg(&cfg).arg("--out").arg(dir.join(stage));
    }
    let t = Instant::now();
    let (status, rss_mib, err) = run_measured(cmd.arg("--quiet"))?;
    if !status.success() {
        bail!("bench data: stage {stage} at {} failed: {err}", root.display());
    }
    Ok(Measured { rss_mib, seconds: t.elapsed().as_secs_f64() })
}

/// Milliseconds to decode one image of the split, by one thread (the mean over up to 300).
fn decode_ms(root: &Path) -> Result<f64> {
    let ds = crate::data::Dataset::open(root)?;
    let anns = ds.load_split("trainval")?;
    let m = anns.len().min(300);
    let t = Instant::now();
    for a in &anns[..m] {
        ds.load_image(a)?;
    }
    Ok(1e3 * t.elapsed().as_secs_f64() / m as f64)
}

/// `bench data` (the module's doc).
pub fn data(b: &DataBench) -> Result<()> {
    use crate::trainer::batch::decoded_bytes;
    if let Some(s) = b.stages.iter().find(|s| !STAGES.contains(&s.as_str())) {
        bail!("--stages: {s:?} is not a stage ({})", STAGES.join(", "));
    }
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("small");
    crate::data::synth::make_dataset(&src, crate::data::synth::SynthSize::Small, 0, false)?;
    let exe = std::env::current_exe()?;
    println!("{}", machine_line(Device::Cpu));
    println!(
        "bench data: dataset.cache_mib {} ({} for `held`); training {} epochs of {} iterations (2 images each); 300 proposals an image from a binary file; small backbone",
        b.cache_mib, b.held_mib, b.epochs, b.iters
    );
    let mut rows: Vec<(usize, f64, String, Measured)> = Vec::new();
    let mut epochs: Vec<(usize, f64, Vec<crate::rundir::EpochRow>)> = Vec::new();
    for &n in &b.sizes {
        let root = tmp.path().join(format!("d{n}"));
        let props = make_data(&src, &root, n)?;
        let decoded = decoded_bytes(&crate::data::Dataset::open(&root)?.load_split("trainval")?) as f64 / (1 << 20) as f64;
        for stage in STAGES.iter().filter(|s| b.stages.iter().any(|x| x == *s)) {
            let m = run_stage(&exe, b, stage, tmp.path().join(format!("d{n}")).as_path(), &root, &props).with_context(|| format!("{n} images"))?;
            eprintln!("bench data: {n} images, stage {stage}: peak RSS {:.0} MiB, {:.0} s", m.rss_mib, m.seconds);
            rows.push((n, decoded, stage.to_string(), m));
        }
        if b.stages.iter().any(|s| s == "train") {
            epochs.push((n, decode_ms(&root)?, crate::rundir::read_metrics(&root.join("train").join(crate::rundir::METRICS))?));
        }
    }
    print_rss(b, &rows);
    print_epochs(&epochs);
    Ok(())
}

/// Peak RSS per stage and size, and its ratio to the first size's.
fn print_rss(b: &DataBench, rows: &[(usize, f64, String, Measured)]) {
    println!("\nPeak RSS of each stage's process:\n");
    println!("| stage | training images | decoded size | cache_mib | peak RSS | / first size's | seconds |");
    println!("|---|---|---|---|---|---|---|");
    for stage in STAGES {
        let of: Vec<&(usize, f64, String, Measured)> = rows.iter().filter(|r| r.2 == stage).collect();
        let Some(first) = of.first() else { continue };
        for (n, decoded, _, m) in &of {
            let mib = if stage == "held" { b.held_mib } else { b.cache_mib };
            println!("| {stage} | {n} | {decoded:.0} MiB | {mib} | {:.0} MiB | {:.2}x | {:.0} |", m.rss_mib, m.rss_mib / first.3.rss_mib, m.seconds);
        }
    }
}

/// The training stage's epochs: images read and prefetched, the steps' wait, and the
/// time those images take to decode by one thread (what the look-ahead had to hide).
fn print_epochs(epochs: &[(usize, f64, Vec<crate::rundir::EpochRow>)]) {
    if epochs.is_empty() {
        return;
    }
    println!("\nThe training stage, per epoch (streamed: the split exceeds cache_mib):\n");
    println!("| training images | epoch | images read | of them decoded ahead | wait for images | share of train_s | decoding them, one thread | hidden by the look-ahead |");
    println!("|---|---|---|---|---|---|---|---|");
    for (n, ms, rows) in epochs {
        for r in rows {
            let (read, ahead, wait) = (r.streamed_images.unwrap_or(0.0), r.prefetched_images.unwrap_or(0.0), r.load_s.unwrap_or(0.0));
            let decode_s = read * ms / 1e3;
            println!(
                "| {n} | {} | {read:.0} | {ahead:.0} | {wait:.2} s | {:.2}% | {decode_s:.2} s ({ms:.1} ms an image) | {:.0}% |",
                r.epoch,
                100.0 * wait / r.train_s.max(1e-9),
                100.0 * (1.0 - wait / decode_s.max(1e-9))
            );
        }
    }
}
