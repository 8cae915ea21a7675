//! The `harness` command line. Arguments are parsed by clap, validated once
//! here, and handed to the library; `main` only turns the result into an exit
//! code.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::data::synth::{self, SynthSize};
use crate::data::Dataset;
use crate::eval::{self, Metric};
use crate::proposals::{self, SsMode, SsParams};

#[derive(Parser, Debug)]
#[command(name = "harness", version, about = "Offline hard-negative mining vs OHEM on one Fast R-CNN trainer")]
pub struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the generated "shapes-in-clutter" dataset in the PASCAL VOC layout.
    MakeDataset {
        /// Output root (created; must be empty or absent).
        #[arg(long)]
        out: PathBuf,
        /// tiny: 16+8 images (tests); small: 240+120 (default, quick runs); large: 1200+400 (the study).
        #[arg(long, value_enum, default_value_t = SynthSize::Small)]
        size: SynthSize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compute (or load) region proposals for a split and report their recall.
    Proposals {
        /// VOC-layout dataset root.
        dataset: PathBuf,
        #[arg(long, default_value = "trainval")]
        split: String,
        /// Selective-search diversification.
        #[arg(long, value_enum, default_value_t = SsMode::Fast)]
        mode: SsMode,
        /// Keep at most this many boxes per image.
        #[arg(long, default_value_t = SsParams::default().max_boxes)]
        max_boxes: usize,
        /// Drop boxes with a side shorter than this (pixels).
        #[arg(long, default_value_t = SsParams::default().min_side)]
        min_side: u32,
        /// Gaussian pre-smoothing of the segmentation.
        #[arg(long, default_value_t = SsParams::default().sigma)]
        sigma: f32,
        /// Proposal cache folder [default: ~/.cache/ohem-harness/proposals, or $OHEM_CACHE/proposals].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Recompute and do not read or write the cache.
        #[arg(long)]
        no_cache: bool,
        /// Use precomputed proposals from this file instead of selective search.
        #[arg(long, conflicts_with_all = ["no_cache", "cache_dir"])]
        from: Option<PathBuf>,
        /// Also write the proposals to this file (`<image_id> <x1> <y1> <x2> <y2>` lines).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Score detections in the VOC results format against a split.
    Eval {
        /// VOC-layout dataset root.
        dataset: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Folder of comp4_det_test_<class>.txt files.
        #[arg(long)]
        dets: PathBuf,
        #[arg(long, value_enum, default_value_t = Metric::Voc07)]
        metric: Metric,
        /// Print the per-class table and mAP as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: selective-search ms per image and evaluation time for 10,000 detections.
    Bench {
        #[arg(value_enum, default_value_t = BenchWhat::All)]
        what: BenchWhat,
        /// Images for the proposal benchmark.
        #[arg(long, default_value_t = 20)]
        images: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    Proposals,
    Eval,
    All,
}

/// Parses the command line and runs it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let progress = !cli.quiet;
    match cli.command {
        Command::MakeDataset { out, size, seed } => {
            let t = Instant::now();
            let m = synth::make_dataset(&out, size, seed, progress)?;
            let ds = Dataset::open(&out)?;
            let mut counts = vec![(0, 0); ds.classes.len()];
            for split in ["trainval", "test"] {
                for (c, (a, b)) in crate::data::voc::class_counts(&ds.load_split(split)?, ds.classes.len()).into_iter().enumerate() {
                    counts[c].0 += a;
                    counts[c].1 += b;
                }
            }
            println!("dataset {} ({:?}, seed {}): {} trainval + {} test images, {:.1}s", out.display(), m.size, m.seed, m.trainval, m.test, t.elapsed().as_secs_f64());
            for (c, (n, d)) in ds.classes.iter().zip(counts) {
                println!("  {c:<10} {n:>5} objects, {d:>4} difficult");
            }
        }
        Command::Proposals { dataset, split, mode, max_boxes, min_side, sigma, cache_dir, no_cache, from, out, json } => {
            let ds = Dataset::open(&dataset)?;
            let anns = ds.load_split(&split)?;
            let params = SsParams { mode, sigma, min_side, max_boxes };
            let (boxes, stats) = match &from {
                Some(f) => (proposals::from_file(f, &anns)?, proposals::ComputeStats { images: anns.len(), ..Default::default() }),
                None => {
                    let cache = (!no_cache).then(|| cache_dir.unwrap_or_else(proposals::default_cache_dir));
                    proposals::compute(&ds, &anns, &params, cache.as_deref(), progress)?
                }
            };
            if let Some(o) = &out {
                let ids: Vec<&str> = anns.iter().map(|a| a.id.as_str()).collect();
                proposals::write_proposals_file(o, &ids, &boxes)?;
            }
            let r = proposals::recall_report(&anns, &boxes);
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"split": split, "params": params, "source": from, "recall": r, "compute": stats}))?);
            } else {
                println!("proposals for {} / {split}: {} images, {} non-difficult ground-truth boxes", dataset.display(), r.images, r.gt_boxes);
                println!("  recall@0.5  {:.4}", r.recall_at_05);
                println!("  recall@0.7  {:.4}", r.recall_at_07);
                println!("  ABO         {:.4}", r.abo);
                println!("  boxes/image {:.1}", r.mean_boxes_per_image);
                if from.is_none() {
                    println!("  ms/image    {:.1} (computed {}, from cache {})", stats.compute_ms_per_image, stats.computed, stats.from_cache);
                }
                if let Some(o) = &out {
                    println!("  written to  {}", o.display());
                }
            }
        }
        Command::Eval { dataset, split, dets, metric, json } => {
            let ds = Dataset::open(&dataset)?;
            let anns = ds.load_split(&split)?;
            let d = eval::read_results_dir(&dets, &ds.classes, &anns)?;
            let r = eval::evaluate(&anns, &ds.classes, &d, metric);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", eval::format_table(&r));
            }
        }
        Command::Bench { what, images } => {
            if images == 0 {
                bail!("--images must be at least 1");
            }
            if matches!(what, BenchWhat::Proposals | BenchWhat::All) {
                bench_proposals(images)?;
            }
            if matches!(what, BenchWhat::Eval | BenchWhat::All) {
                bench_eval()?;
            }
        }
    }
    Ok(())
}

fn bench_proposals(n: usize) -> Result<()> {
    // Images of the generated default dataset (seed 0), rendered in memory.
    let mut ms = Vec::new();
    let mut px = 0usize;
    for i in 0..n {
        let (img, _) = synth::render_image(0, i as u64, "bench");
        px += (img.width() * img.height()) as usize;
        let p = SsParams::default();
        let t = Instant::now();
        let b = proposals::selective_search::selective_search(&img, p.mode, p.sigma, p.min_side, p.max_boxes);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(b);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "selective search (fast mode, one thread): {n} images of ~{:.0} px: mean {:.1} ms/image, median {:.1} ms",
        px as f64 / n as f64,
        ms.iter().sum::<f64>() / n as f64,
        ms[n / 2]
    );
    Ok(())
}

fn bench_eval() -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let classes: Vec<String> = synth::CLASSES.iter().map(|s| s.to_string()).collect();
    let anns: Vec<crate::data::Annotation> = (0..500)
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
                    }
                })
                .collect(),
        })
        .collect();
    let mut dets = vec![Vec::new(); classes.len()];
    for _ in 0..10_000 {
        let a = &anns[rng.random_range(0..anns.len())];
        let o = &a.objects[rng.random_range(0..a.objects.len())];
        let j = |v: f32, r: &mut rand_chacha::ChaCha8Rng| v + r.random_range(-6.0..6.0f32);
        let c = if rng.random::<f32>() < 0.7 { o.class } else { rng.random_range(0..classes.len()) };
        let b = [j(o.bbox[0], &mut rng), j(o.bbox[1], &mut rng), j(o.bbox[2], &mut rng), j(o.bbox[3], &mut rng)];
        dets[c].push(eval::Detection { image_id: a.id.clone(), score: rng.random(), bbox: b });
    }
    for metric in [Metric::Voc07, Metric::Voc10] {
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
    Ok(())
}
