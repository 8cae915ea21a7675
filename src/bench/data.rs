//! `harness bench data`: the data path at growing dataset sizes, the peak
//! RSS of `harness train` run as a child, the share of its training time
//! spent waiting for images, and images per second through the loader.

use std::time::Instant;

use anyhow::Result;
use tch::Device;

use super::common::{machine_line, run_measured};

/// `bench data`: for each size, a VOC dataset of that many training images
/// (the small default data's 360 images, repeated through links) with 300
/// proposals an image from a binary proposals file (read one image at a time; no selective search runs), and
/// `harness train` run as a child for `iters` iterations (small backbone from
/// scratch, 2 images a step, `dataset.cache_mib` = `cache_mib`): its peak
/// RSS (`wait4`), and from its `metrics.csv` the share of the training time
/// the steps waited for images; then, in this process, images per second
/// through the loader (the first 2,000 images, in order, with its look-ahead;
/// timed from the store's load, which decodes a split that fits the budget).
pub fn data(sizes: &[usize], cache_mib: u64, iters: usize) -> Result<()> {
    use crate::data::{synth, Dataset};
    use crate::trainer::batch::{decoded_bytes, ImageStore, AHEAD};
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("small");
    synth::make_dataset(&src, synth::SynthSize::Small, 0, false)?;
    let sds = Dataset::open(&src)?;
    let ids = sds.split_ids("trainval")?;
    let exe = std::env::current_exe()?;
    println!("{}", machine_line(Device::Cpu));
    println!("bench data: {iters} training iterations (2 images each) per size, dataset.cache_mib {cache_mib}, 300 proposals an image from a binary file");
    println!("| training images | decoded size | streamed | peak RSS | RSS / first row's | steps' wait for images | images/s through the loader |");
    println!("|---|---|---|---|---|---|---|");
    let mut first_rss = None;
    for &n in sizes {
        let root = tmp.path().join(format!("d{n}"));
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
        std::fs::write(root.join("ImageSets/Main/trainval.txt"), names.join("\n") + "\n")?;
        std::fs::write(root.join("ImageSets/Main/test.txt"), names[..8].join("\n") + "\n")?;
        let ds = Dataset::open(&root)?;
        let anns = ds.load_split("trainval")?;
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
        let test_props = root.join("proposals-test.bin");
        crate::proposals::write_proposals_file(&test_props, &id_refs[..8], &boxes[..8])?;
        let cfg = root.join("bench.yaml");
        std::fs::write(
            &cfg,
            format!(
                "seed: 0\ndevice: cpu\ndataset:\n  root: {}\n  cache_mib: {cache_mib}\nmodel:\n  init: scratch\nproposals:\n  train_file: {}\n  test_file: {}\ntrain:\n  iterations: {iters}\n  lr_steps_iters: []\n  warmup_iters: 0\n",
                root.display(),
                props.display(),
                test_props.display()
            ),
        )?;
        let run = root.join("run");
        let (status, rss, err) = run_measured(std::process::Command::new(&exe).args(["train"]).arg(&cfg).arg("--out").arg(&run).arg("--quiet"))?;
        if !status.success() {
            anyhow::bail!("bench data: harness train on {n} images failed: {err}");
        }
        let rows = crate::rundir::read_metrics(&run.join(crate::rundir::METRICS))?;
        let (train_s, load_s): (f64, f64) = rows.iter().fold((0.0, 0.0), |(t, l), r| (t + r.train_s, l + r.load_s.unwrap_or(0.0)));
        // the loader alone: the first 2,000 images in order, asking ahead as the trainer does
        let m = anns.len().min(2000);
        let sub: Vec<_> = anns[..m].to_vec();
        // timed from the load: a split that fits the budget is decoded there
        let t = Instant::now();
        let store = ImageStore::load(&ds, sub.clone(), vec![Vec::new(); m], cache_mib)?;
        for i in 0..m {
            store.ahead(&(i + 1..(i + 1 + AHEAD).min(m)).collect::<Vec<_>>());
            let _ = store.image(i)?;
        }
        let ips = m as f64 / t.elapsed().as_secs_f64();
        let base = *first_rss.get_or_insert(rss);
        println!(
            "| {n} | {:.0} MiB | {} | {rss:.0} MiB | {:.2}x | {:.1}% ({:.1} ms a step) | {ips:.0} |",
            decoded_bytes(&anns) as f64 / (1 << 20) as f64,
            if decoded_bytes(&anns) > (cache_mib as usize) << 20 { "yes" } else { "no" },
            rss / base,
            100.0 * load_s / train_s.max(1e-9),
            1e3 * load_s / iters as f64
        );
    }
    Ok(())
}
