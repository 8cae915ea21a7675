//! The project's benchmarks (`harness bench`): figures, never assertions.
//! Speed-ups are ratios measured in the same run, since these machines are noisy.

pub mod profile;

use std::time::Instant;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::data::synth;
use crate::eval::{self, VocMetric};
use crate::config::TrainConfig;
use crate::model::sgd::Sgd;
use crate::model::{per_roi_losses, roi_pool, Backbone, FastRcnn};
use crate::trainer::{build_model, minibatch_loss};
use crate::proposals::{self, SsParams};

pub fn proposals(n: usize) -> Result<()> {
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

pub fn eval() -> Result<()> {
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
                        crowd: false,
                        area: None,
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
    Ok(())
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

/// A Python: `$env` when set, else the one that `script` (a venv installer,
/// run from the repository root) prints; `flag` names what needs it in errors.
fn venv_python(env: &str, script: &str, flag: &str) -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(p.into());
    }
    let path = std::path::Path::new(script);
    if !path.is_file() {
        anyhow::bail!("{flag} needs {script}: run `harness bench` from the repository root, or set {env}");
    }
    let out = std::process::Command::new("bash").arg(path).stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("{script} failed (exit {:?})", out.status.code());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}

/// What libtorch reports about CUDA, for the bench headers (a CUDA build on a machine without a GPU says so here).
pub fn cuda_state() -> String {
    // libtorch_cuda mapped into this process: a CUDA build, whatever the machine has
    let cuda_build = std::fs::read_to_string("/proc/self/maps").map(|m| m.contains("libtorch_cuda")).unwrap_or(false);
    match tch::Cuda::device_count() {
        0 if cuda_build => "libtorch with CUDA, but no GPU is present".into(),
        0 => "a CPU-only libtorch".into(),
        n => format!("{n} CUDA device(s)"),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Current resident memory of this process (VmRSS), in MiB.
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak resident memory (VmHWM) to the current one, by writing 5 to
/// /proc/self/clear_refs (Linux 4.0 on), so that a peak can be taken per step
/// kind within one process. False where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak memory of one step kind, in MiB: the process's peak RSS while it
/// ran (what `bench samplers` prints: the paper's Table 5 gives a process's
/// memory too), and that peak less the RSS just before. The second is not the
/// kind's own working set: the RSS at its start holds the libtorch runtime and
/// what earlier kinds left in the allocator. On the CPU only: on CUDA the
/// tensors live in the device allocator, which this build cannot query, so
/// both are `None` there.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakMemory {
    pub peak_mib: Option<f64>,
    pub above_start_mib: Option<f64>,
}

impl std::fmt::Display for PeakMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.peak_mib, self.above_start_mib) {
            (Some(p), _) => write!(f, "peak RSS {p:.0} MiB"),
            (None, _) => write!(f, "peak RSS —"),
        }
    }
}

/// Runs `f` and measures its [`PeakMemory`] (CPU only).
pub fn measure_peak<T>(device: Device, f: impl FnOnce() -> T) -> (T, PeakMemory) {
    let ok = device == Device::Cpu && reset_peak_rss();
    let start = if ok { rss_mib() } else { None };
    let out = f();
    let peak = if ok { proc_status_mib("VmHWM:") } else { None };
    (out, PeakMemory { peak_mib: peak, above_start_mib: peak.zip(start).map(|(p, s)| (p - s).max(0.0)) })
}

/// Random proposal boxes `[n, 4]` inside an `h x w` image, 16 px or larger.
pub fn random_rois(n: i64, h: i64, w: i64, device: Device) -> Tensor {
    let x1 = Tensor::rand([n], (Kind::Float, device)) * (w - 17) as f64;
    let y1 = Tensor::rand([n], (Kind::Float, device)) * (h - 17) as f64;
    let bw = (Tensor::rand([n], (Kind::Float, device)) * (w as f64 * 0.5) + 16.0).minimum(&(-&x1 + (w - 1) as f64));
    let bh = (Tensor::rand([n], (Kind::Float, device)) * (h as f64 * 0.5) + 16.0).minimum(&(-&y1 + (h - 1) as f64));
    Tensor::stack(&[x1.shallow_clone(), y1.shallow_clone(), x1 + bw, y1 + bh], 1)
}

struct Case {
    name: &'static str,
    backbone: Backbone,
    h: i64,
    w: i64,
    proposals_per_image: i64,
    iters: usize,
}

/// ms per training iteration split into backbone, RoI pooling, head and
/// backward (+ SGD step), with B = 128 RoIs sampled from the proposals of N = 2 images.
/// The model, its frozen layers, the loss and the optimiser are the trainer's
/// ([`build_model`], [`minibatch_loss`], [`Sgd`]); the weights are random.
pub fn train(iters: usize, vgg16: bool) -> Result<()> {
    let device = Device::cuda_if_available();
    tch::manual_seed(0);
    let mut cases = vec![Case { name: "small @ 224x288 (default)", backbone: Backbone::Small, h: 224, w: 288, proposals_per_image: 500, iters }];
    if vgg16 {
        cases.push(Case { name: "vgg16 @ 600x800", backbone: Backbone::Vgg16, h: 600, w: 800, proposals_per_image: 2000, iters: iters.min(3) });
    }
    println!("training iteration, N = 2 images, B = 128 RoIs, device {device:?} ({}):", cuda_state());
    for c in cases {
        let mut cfg = bench_config(if c.backbone == Backbone::Vgg16 { VGG16 } else { SMALL })?;
        cfg.model.fc_dim = None; // the backbone's own width (512 small, 4096 VGG16)
        let (vs, model) = build_model(&cfg, device, 20, None)?;
        let mut opt = Sgd::new(&vs, cfg.train.momentum, cfg.train.weight_decay);
        let images = Tensor::randn([2, 3, c.h, c.w], (Kind::Float, device));
        let props: Vec<Tensor> = (0..2).map(|_| random_rois(c.proposals_per_image, c.h, c.w, device)).collect();
        // 64 RoIs per image, as the fixed-ratio sampler would pick
        let rois = Tensor::cat(&props.iter().enumerate().map(|(b, p)| roi_pool::with_batch_index(b as i64, &p.narrow(0, 0, 64))).collect::<Vec<_>>(), 0);
        let labels = Tensor::randint(21, [128], (Kind::Int64, device));
        let targets = Tensor::randn([128, 4], (Kind::Float, device)) * 0.5;
        let mut t = [0f64; 4];
        for i in 0..c.iters + 1 {
            let t0 = Instant::now();
            let feats = model.features(&images, true);
            sync(device);
            let t1 = Instant::now();
            let pooled = model.pool(&feats, &rois);
            sync(device);
            let t2 = Instant::now();
            let (logits, deltas) = model.head_from_pooled(&pooled, true);
            let (cls, loc) = per_roi_losses(&logits, &deltas, &labels, &targets, 20);
            let (loss_cls, loss_bbox) = minibatch_loss(&cls, &loc, 128);
            sync(device);
            let t3 = Instant::now();
            (loss_cls + loss_bbox).backward();
            opt.step(1e-3);
            sync(device);
            let t4 = Instant::now();
            if i > 0 {
                // the first iteration is a warm-up
                for (k, (a, b)) in [(t0, t1), (t1, t2), (t2, t3), (t3, t4)].into_iter().enumerate() {
                    t[k] += (b - a).as_secs_f64() * 1e3 / c.iters as f64;
                }
            }
        }
        println!(
            "  {:<28} {:>8.1} ms/iter = backbone {:.1} + RoI pooling {:.1} + head {:.1} + backward/step {:.1}; peak RSS {:.0} MiB",
            c.name,
            t.iter().sum::<f64>(),
            t[0],
            t[1],
            t[2],
            t[3],
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }

    // RoI pooling against the slow per-RoI reference, forward + backward, same inputs.
    let feats = Tensor::randn([2, 128, 14, 18], (Kind::Float, device)).set_requires_grad(true);
    let rois = Tensor::cat(&(0..2).map(|b| roi_pool::with_batch_index(b, &random_rois(64, 224, 288, device))).collect::<Vec<_>>(), 0);
    let time = |f: &dyn Fn() -> Tensor, reps: usize| {
        let t = Instant::now();
        for _ in 0..reps {
            f().sum(Kind::Float).backward();
        }
        sync(device);
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    };
    let fast = time(&|| roi_pool::roi_pool(&feats, &rois, 7, 2, 1.0 / 16.0), 20);
    let slow = time(&|| roi_pool::roi_pool_reference(&feats, &rois, 7, 2, 1.0 / 16.0), 3);
    println!("RoI pooling, 128 RoIs on [2, 128, 14, 18], forward + backward: {fast:.2} ms vs per-RoI reference {slow:.1} ms: {:.1}x faster", slow / fast);

    // RoI pooling alone at the trainer's sizes: the default model's features (stride 8 on
    // 224x288), as many RoIs as fixed ratio, the default proposals plus ground truth, and all RoIs
    let feats = Tensor::randn([2, 128, 28, 36], (Kind::Float, device)).set_requires_grad(true);
    println!("RoI pooling on [2, 128, 28, 36] (the default model's features), medians of 7:");
    for per_image in [64, 500, 1024] {
        let rois = Tensor::cat(&(0..2).map(|b| roi_pool::with_batch_index(b, &random_rois(per_image, 224, 288, device))).collect::<Vec<_>>(), 0);
        let grad = Tensor::randn([2 * per_image, 128, 7, 7], (Kind::Float, device));
        let (mut fwd, mut fwd_only, mut both) = (Vec::<f64>::new(), Vec::<f64>::new(), Vec::<f64>::new());
        for _ in 0..8 {
            let t = Instant::now();
            let y = roi_pool::roi_pool(&feats, &rois, 7, 2, 1.0 / 8.0);
            sync(device);
            fwd.push(t.elapsed().as_secs_f64() * 1e3);
            // a weighted sum: the gradient arrives [R, C, 7, 7], contiguous, as the head hands it over
            (y * &grad).sum(Kind::Float).backward();
            sync(device);
            both.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let _ = std::hint::black_box(tch::no_grad(|| roi_pool::roi_pool(&feats, &rois, 7, 2, 1.0 / 8.0)));
            sync(device);
            fwd_only.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let m = |v: &Vec<f64>| median(&v[1..]); // the first round warms up
        let (f, b) = (m(&fwd), m(&both));
        println!("  {:>5} RoIs: forward {f:.1} ms, then a weighted sum and the backward {:.1} ms; forward without a gradient {:.1} ms", 2 * per_image, b - f, m(&fwd_only));
    }
    Ok(())
}

/// Seconds per training iteration of each sampler through the real
/// `train_step`, same model and data, at each proposal count per image,
/// measured in one run; with `peer`, the same steps in PyTorch + torchvision
/// (`scripts/bench_peer.py`) and the ratios; and the offline-mining pass of
/// HNM per 100 images.
///
/// `vgg16`: the VGG16 backbone (fc 4096, random weights) at 600 px instead of
/// the small one, and without the all-RoIs step.
pub fn samplers(iters: usize, proposal_counts: &[usize], peer: bool, vgg16: bool, rounds: usize, fold_ab: bool, profile: bool) -> Result<()> {
    use crate::sampler::ohem::OhemImpl;
    use crate::sampler::{AllConfig, FixedRatioConfig, HnmConfig, Miner, OhemConfig, SamplerConfig};
    use crate::trainer::FrozenScorer;

    let device = Device::cuda_if_available();
    let base = bench_config(if vgg16 { VGG16 } else { SMALL })?;
    let mut arms: Vec<(&str, &str, SamplerConfig)> = vec![
        ("fixed-ratio (FRCN)", "fixed_ratio", SamplerConfig::FixedRatio(FixedRatioConfig::default())),
        ("OHEM read-only", "ohem", SamplerConfig::Ohem(OhemConfig::default())),
        ("OHEM masked", "ohem_masked", SamplerConfig::Ohem(OhemConfig { implementation: OhemImpl::Masked, ..Default::default() })),
        ("all RoIs (B=2048)", "all", SamplerConfig::All(AllConfig::default())),
    ];
    if vgg16 {
        arms.pop();
    }
    let kinds: Vec<&str> = arms.iter().map(|a| a.1).collect();
    let peer_python = if peer { Some(peer_python()?) } else { None };
    let rounds = rounds.max(1);
    println!("{}", machine_line(device));
    let mut store_for_mining = None;
    for &n_props in proposal_counts {
        let store = bench_store(n_props);
        let shapes = batch_shapes(&store, &base.input, iters, device);
        println!(
            "{} per training iteration, {:?} backbone (fc {}, stride {}, batch norm {}), N = 2 images, {n_props} proposals per image, device {device:?}, {} libtorch threads{}:",
            if profile { "where the time goes" } else { "seconds" },
            base.model.backbone,
            base.model.fc_width(),
            base.model.feature_stride(),
            if base.model.backbone == crate::model::Backbone::Vgg16 { "none" } else if base.model.bn_frozen() { "frozen" } else { "trained" },
            tch::get_num_threads(),
            if rounds > 1 && !profile { format!(", medians of {rounds} rounds{}", if peer { " (ours and the peer in alternating order)" } else { "" }) } else { String::new() }
        );
        println!("  padded batches [2, 3, H, W], HxW per iteration (the warm-up first), the same for every kind{}: {}", if peer { " and for the peer" } else { "" }, shapes_arg(&shapes).replace(',', " "));
        if profile {
            profile_kinds(&arms, &base, &store, iters, device, peer_python.as_deref(), n_props, &shapes)?;
            continue;
        }
        // per kind, per round: (s/iter, RoIs backpropagated, peak memory); the peer's per round
        let mut ours: Vec<Vec<(f64, f64, PeakMemory)>> = vec![Vec::new(); arms.len()];
        // --fold-bn: the same kinds with model.fold_bn on, in the same rounds (s/iter per round)
        let mut folded: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
        let mut peers: Vec<PeerSteps> = Vec::new();
        for round in 0..rounds {
            let peer_first = round % 2 == 0;
            if let (Some(py), true) = (&peer_python, peer_first) {
                peers.push(run_peer(py, n_props, iters, &base, device, &shapes, &kinds, peers.is_empty())?);
            }
            for (k, (_, _, s)) in arms.iter().enumerate() {
                let mut cfg = base.clone();
                cfg.sampler = s.clone();
                let time_folded = || -> Result<f64> {
                    let mut c = cfg.clone();
                    c.model.fold_bn = true;
                    Ok(time_step(&c, &store, iters, device)?.0)
                };
                // folded first in odd rounds
                if fold_ab && round % 2 == 1 {
                    folded[k].push(time_folded()?);
                }
                let (timed, mem) = measure_peak(device, || time_step(&cfg, &store, iters, device));
                let (s, rois, _) = timed?;
                ours[k].push((s, rois, mem));
                if fold_ab && round % 2 == 0 {
                    folded[k].push(time_folded()?);
                }
            }
            if let (Some(py), false) = (&peer_python, peer_first) {
                peers.push(run_peer(py, n_props, iters, &base, device, &shapes, &kinds, peers.is_empty())?);
            }
        }
        let mut secs = Vec::new();
        let mut peer_secs = Vec::new();
        for (k, (name, key, _)) in arms.iter().enumerate() {
            let s = median(&ours[k].iter().map(|o| o.0).collect::<Vec<_>>());
            let rois = ours[k][0].1;
            let mem = ours[k].iter().map(|o| o.2).last().expect("one round at least");
            let peer_s: Vec<f64> = peers.iter().filter_map(|p| p.secs(key)).collect();
            if peer_s.len() == rounds {
                let p = median(&peer_s);
                let peer_mem = peers.last().and_then(|ps| ps.peak(key)).map(|m| format!(", {m:.0} MiB")).unwrap_or_default();
                // the ratio of each round, ours and the peer's of the same round
                let ratios: Vec<f64> = ours[k].iter().zip(&peer_s).map(|(o, p)| o.0 / p).collect();
                let range = if rounds > 1 { format!(" (rounds {:.2}-{:.2})", ratios.iter().cloned().fold(f64::INFINITY, f64::min), ratios.iter().cloned().fold(0.0, f64::max)) } else { String::new() };
                println!("  {name:<20} {s:>7.3} s/iter ({rois:>4.0} RoIs backpropagated), {mem}   peer {p:>7.3} s/iter{peer_mem}   ours / peer {:.2}{range}", s / p);
                peer_secs.push(p);
            } else {
                println!("  {name:<20} {s:>7.3} s/iter ({rois:>4.0} RoIs backpropagated), {mem}");
            }
            secs.push(s);
        }
        if fold_ab {
            println!("  batch norm folded (model.fold_bn), the same rounds, folded / unfolded:");
            for (k, (name, _, _)) in arms.iter().enumerate() {
                let f = median(&folded[k]);
                let ratios: Vec<f64> = folded[k].iter().zip(&ours[k]).map(|(f, o)| f / o.0).collect();
                let (lo, hi) = (ratios.iter().cloned().fold(f64::INFINITY, f64::min), ratios.iter().cloned().fold(0.0, f64::max));
                println!("    {name:<20} {f:>7.3} s/iter   {:.3} (rounds {lo:.3}-{hi:.3})", f / secs[k]);
            }
        }
        print!("  ratio OHEM read-only / fixed-ratio: {:.2}x", secs[1] / secs[0]);
        if peer_secs.len() == arms.len() {
            print!(" (peer {:.2}x)", peer_secs[1] / peer_secs[0]);
        }
        print!("\n  ratio OHEM masked / OHEM read-only: {:.2}x", secs[2] / secs[1]);
        if peer_secs.len() == arms.len() {
            print!(" (peer {:.2}x)", peer_secs[2] / peer_secs[1]);
        }
        println!(" (the paper reports about 2x for VGG16 at N=2, B=128)");
        store_for_mining = Some((store, n_props));
    }

    if let (Some((store, n_props)), false, false) = (store_for_mining, vgg16, profile) {
        let mut cfg = base.clone();
        cfg.sampler = SamplerConfig::Hnm(HnmConfig::default());
        let (_vs, model) = build_model(&cfg, device, synth::CLASSES.len(), None)?;
        let t = Instant::now();
        let scores = FrozenScorer::new(&model, &store, &cfg, device).score_training_set()?;
        sync(device);
        let s = t.elapsed().as_secs_f64();
        println!("HNM mining pass (frozen model, every proposal): {:.1} s per 100 images (measured over {} images, {n_props} proposals each)", s * 100.0 / scores.len() as f64, scores.len());
    }
    Ok(())
}

/// The median of a non-empty sample (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Seconds per iteration of `cfg`'s sampler through the trainer's own model and
/// step, over `iters` iterations after one warm-up, with the RoIs backpropagated
/// and the RoIs per image before sampling (proposals and ground truth), per iteration.
fn time_step(cfg: &TrainConfig, store: &crate::trainer::batch::ImageStore, iters: usize, device: Device) -> Result<(f64, f64, f64)> {
    use crate::trainer::train_step;
    let (vs, model) = build_model(cfg, device, synth::CLASSES.len(), None)?;
    let mut opt = Sgd::new(&vs, 0.9, 5e-4);
    let mut sampler = cfg.sampler.build();
    let (mut total, mut rois, mut per_image) = (0.0, 0.0, 0.0);
    for it in 0..iters + 1 {
        let pair = bench_pair(store, &cfg.input, it, device);
        let t = Instant::now();
        let out = train_step(&model, &mut opt, 1e-3, sampler.as_mut(), &pair, cfg)?;
        sync(device);
        if it > 0 {
            total += t.elapsed().as_secs_f64();
            rois += out.rois as f64;
            per_image += out.rois_all as f64 / out.images as f64;
        }
    }
    let n = iters as f64;
    Ok((total / n, rois / n, per_image / n))
}

/// One point of the claim-(a) sweep: masked against read-only OHEM at one RoI count.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClaimAPoint {
    pub backbone: String,
    pub fc_width: i64,
    pub input_scale: u32,
    pub proposals: usize,
    pub rois_per_image: f64,
    /// Seconds per iteration, the mean over rounds.
    pub read_only_s: f64,
    pub masked_s: f64,
    /// Mean masked over mean read-only seconds, with the report's 95% interval
    /// (paired by round, log scale) when there are 2 or more rounds.
    pub ratio: f64,
    pub ratio_lo: Option<f64>,
    pub ratio_hi: Option<f64>,
    /// The band rule's word for "about 2x" ([1.6, 2.5]): supported, contradicted,
    /// not resolved; empty with one round.
    pub word: String,
    pub rounds: usize,
    pub peer_read_only_s: Option<f64>,
    pub peer_masked_s: Option<f64>,
    pub peer_ratio: Option<f64>,
    pub peer_ratio_lo: Option<f64>,
    pub peer_ratio_hi: Option<f64>,
    pub peer_word: String,
    pub device: String,
    pub processor: String,
    pub threads: i32,
}

/// Claim (a) across regimes (`harness bench claim-a`): masked / read-only OHEM
/// seconds per iteration against RoIs per image, for the small backbone at each
/// head width in `fc_widths` and, with `vgg16`, VGG16 (fc 4096) at 600 px; with
/// `peer`, PyTorch + torchvision on the same shapes in the same run. Writes
/// `claim_a.csv`, `claim_a.md` and `claim_a.png`/`.svg` (the [1.6, 2.5] band
/// of "about 2x" drawn) into `out`.
/// masked / read-only over rounds: the ratio of the mean times, its interval
/// (paired by round) and the band rule's word ("" with one round).
pub fn claim_a_ratio(read_only: &[f64], masked: &[f64]) -> (f64, Option<(f64, f64)>, String) {
    use crate::report::stats::{compare, Scale};
    let seeded = |v: &[f64]| v.iter().enumerate().map(|(i, x)| (i as u64, *x)).collect::<Vec<_>>();
    let est = compare(&seeded(masked), &seeded(read_only), Scale::Ratio).expect("positive times");
    let word = match est.ci {
        Some((lo, hi)) if lo == hi => "no spread across rounds: not resolved".to_string(),
        Some((lo, hi)) => crate::report::judge(lo, hi, 2.0, 1.25).to_string(),
        None => String::new(),
    };
    (est.value, est.ci, word)
}

/// The small backbone's head widths that `bench claim-a` sweeps: those given
/// (`--fc`), else 512 and 4096, or none when `--vgg16` asks for VGG16's points alone.
pub fn claim_a_widths(given: &[i64], vgg16: bool) -> Vec<i64> {
    match (given.is_empty(), vgg16) {
        (true, false) => vec![512, 4096],
        _ => given.to_vec(),
    }
}

pub fn claim_a(out: &std::path::Path, iters: usize, proposal_counts: &[usize], fc_widths: &[i64], vgg16: Option<&[usize]>, peer: bool, rounds: usize) -> Result<()> {
    let rounds = rounds.max(1);
    use crate::sampler::ohem::OhemImpl;
    use crate::sampler::{OhemConfig, SamplerConfig};
    let device = Device::cuda_if_available();
    let peer_python = if peer { Some(peer_python()?) } else { None };
    let mut configs: Vec<TrainConfig> = fc_widths.iter().map(|&fc| bench_config(SMALL).map(|mut c| { c.model.fc_dim = Some(fc); c })).collect::<Result<_>>()?;
    if vgg16.is_some() {
        configs.push(bench_config(VGG16)?);
    }
    let processor = crate::rundir::cpu_model().filter(|_| !device.is_cuda()).unwrap_or_else(|| "GPU".into());
    let mut points = Vec::new();
    for base in &configs {
        let counts = match vgg16 {
            Some(v) if base.model.backbone == Backbone::Vgg16 => v,
            _ => proposal_counts,
        };
        for &n_props in counts {
            let store = bench_store(n_props);
            let shapes = batch_shapes(&store, &base.input, iters, device);
            // rounds: ours and the peer alternate which goes first (the peer in odd rounds), and
            // within ours, masked goes first in odd rounds, so that a machine's drift falls on both
            let (mut ro, mut ma, mut pro, mut pma, mut rois) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0.0);
            for round in 0..rounds {
                let mut ours = |ro: &mut Vec<f64>, ma: &mut Vec<f64>| -> Result<()> {
                    let order = if round % 2 == 1 { [OhemImpl::Masked, OhemImpl::ReadOnly] } else { [OhemImpl::ReadOnly, OhemImpl::Masked] };
                    for imp in order {
                        let cfg = TrainConfig { sampler: SamplerConfig::Ohem(OhemConfig { implementation: imp, ..Default::default() }), ..base.clone() };
                        let s = time_step(&cfg, &store, iters, device)?;
                        rois = s.2;
                        if imp == OhemImpl::ReadOnly { ro.push(s.0) } else { ma.push(s.0) }
                    }
                    Ok(())
                };
                let theirs = |pro: &mut Vec<f64>, pma: &mut Vec<f64>| -> Result<()> {
                    if let Some(py) = &peer_python {
                        let s = run_peer(py, n_props, iters, base, device, &shapes, &["ohem", "ohem_masked"], round == 0)?;
                        if let (Some(r), Some(m)) = (s.secs("ohem"), s.secs("ohem_masked")) {
                            pro.push(r);
                            pma.push(m);
                        }
                    }
                    Ok(())
                };
                if round % 2 == 1 {
                    theirs(&mut pro, &mut pma)?;
                    ours(&mut ro, &mut ma)?;
                } else {
                    ours(&mut ro, &mut ma)?;
                    theirs(&mut pro, &mut pma)?;
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (ratio, ci, word) = claim_a_ratio(&ro, &ma);
            let peer = (!pro.is_empty()).then(|| claim_a_ratio(&pro, &pma));
            let point = ClaimAPoint {
                backbone: format!("{:?}", base.model.backbone).to_lowercase(),
                fc_width: base.model.fc_width(),
                input_scale: base.input.scale,
                proposals: n_props,
                rois_per_image: rois,
                read_only_s: mean(&ro),
                masked_s: mean(&ma),
                ratio,
                ratio_lo: ci.map(|c| c.0),
                ratio_hi: ci.map(|c| c.1),
                word,
                rounds,
                peer_read_only_s: (!pro.is_empty()).then(|| mean(&pro)),
                peer_masked_s: (!pma.is_empty()).then(|| mean(&pma)),
                peer_ratio: peer.as_ref().map(|p| p.0),
                peer_ratio_lo: peer.as_ref().and_then(|p| p.1.map(|c| c.0)),
                peer_ratio_hi: peer.as_ref().and_then(|p| p.1.map(|c| c.1)),
                peer_word: peer.map(|p| p.2).unwrap_or_default(),
                device: if device.is_cuda() { "gpu".into() } else { "cpu".into() },
                processor: processor.clone(),
                threads: tch::get_num_threads(),
            };
            let ci = |lo: Option<f64>, hi: Option<f64>| lo.zip(hi).map(|(l, h)| format!(" [{l:.2}, {h:.2}]")).unwrap_or_default();
            println!(
                "{} fc {} at {} px, {:.0} RoIs/image ({} rounds): read-only {:.3} s/iter, masked {:.3}: masked / read-only {:.2}x{} {}{}",
                point.backbone,
                point.fc_width,
                point.input_scale,
                point.rois_per_image,
                rounds,
                point.read_only_s,
                point.masked_s,
                point.ratio,
                ci(point.ratio_lo, point.ratio_hi),
                point.word,
                point.peer_ratio.map(|r| format!(" (peer {r:.2}x{} {})", ci(point.peer_ratio_lo, point.peer_ratio_hi), point.peer_word)).unwrap_or_default()
            );
            points.push(point);
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = csv::Writer::from_writer(Vec::new());
    for p in &points {
        w.serialize(p)?;
    }
    crate::rundir::write_file(&out.join("claim_a.csv"), &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    draw_claim_a(out, &points)?;
    println!("wrote {}/claim_a.csv, claim_a.md, claim_a.png", out.display());
    Ok(())
}

/// Redraws `claim_a.md` and the chart of a sweep from its `claim_a.csv` alone
/// (`harness bench claim-a --replot --out DIR`); times nothing.
pub fn replot_claim_a(dir: &std::path::Path) -> Result<()> {
    let path = dir.join("claim_a.csv");
    let mut r = csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let points: Vec<ClaimAPoint> = r.deserialize().collect::<Result<_, _>>().with_context(|| format!("reading {}", path.display()))?;
    if points.is_empty() {
        anyhow::bail!("{} has no points", path.display());
    }
    draw_claim_a(dir, &points)?;
    println!("wrote {}/claim_a.md, claim_a.png from claim_a.csv", dir.display());
    Ok(())
}

/// `claim_a.md` and `claim_a.png`/`.svg`: one series per backbone, head width
/// and scale (ours, and the peer's dashed), each point with its interval.
fn draw_claim_a(out: &std::path::Path, points: &[ClaimAPoint]) -> Result<()> {
    let rounds = points.iter().map(|p| p.rounds).max().unwrap_or(1);
    let mut md = format!("Masked / read-only OHEM seconds per iteration: the ratio of the means over {rounds} round(s), with the 95% interval paired by round (log scale), and the band rule's word for \"about 2x\" (the interval inside [1.6, 2.5]: supported; wholly outside: contradicted; else not resolved).\n\n| backbone | fc | px | RoIs/image | read-only s/iter | masked s/iter | masked / read-only | 95% CI | about 2x | peer ratio | peer 95% CI | peer: about 2x |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let ci = |lo: Option<f64>, hi: Option<f64>| lo.zip(hi).map(|(l, h)| format!("[{l:.2}, {h:.2}]")).unwrap_or_else(|| "—".into());
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.2}x | {} | {} | {} | {} | {} |\n",
            p.backbone, p.fc_width, p.input_scale, p.rois_per_image, p.read_only_s, p.masked_s, p.ratio, ci(p.ratio_lo, p.ratio_hi), if p.word.is_empty() { "—" } else { &p.word },
            p.peer_ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "—".into()), ci(p.peer_ratio_lo, p.peer_ratio_hi), if p.peer_word.is_empty() { "—" } else { &p.peer_word }
        ));
    }
    crate::rundir::write_file(&out.join("claim_a.md"), md.as_bytes())?;
    // one series per regime (backbone, head width, scale), in the order the points came
    let mut regimes: Vec<(&str, i64, u32)> = Vec::new();
    for p in points {
        let k = (p.backbone.as_str(), p.fc_width, p.input_scale);
        if !regimes.contains(&k) {
            regimes.push(k);
        }
    }
    let mut series = Vec::new();
    for (backbone, fc, scale) in regimes {
        let label = format!("{backbone} fc {fc}");
        let mine: Vec<&ClaimAPoint> = points.iter().filter(|p| p.backbone == backbone && p.fc_width == fc && p.input_scale == scale).collect();
        series.push((format!("{label} (ours)"), mine.iter().map(|p| (p.rois_per_image, p.ratio, p.ratio_lo.zip(p.ratio_hi))).collect::<Vec<_>>(), false));
        let theirs: Vec<_> = mine.iter().filter_map(|p| p.peer_ratio.map(|r| (p.rois_per_image, r, p.peer_ratio_lo.zip(p.peer_ratio_hi)))).collect();
        if !theirs.is_empty() {
            series.push((format!("{label} (PyTorch + torchvision)"), theirs, true));
        }
    }
    crate::report::charts::draw_sweep(out, "claim_a", "Masked / read-only OHEM, seconds per iteration (N = 2, B = 128; 95% intervals)", "RoIs per image (log scale)", "masked / read-only (x)", &series, (1.6, 2.5))
}

/// Images of the default dataset (rendered in memory) with `n_props` random proposals each.
fn bench_store(n_props: usize) -> crate::trainer::batch::ImageStore {
    let make = |i: u64| {
        let (img, ann) = synth::render_image(0, i, &format!("{i:06}"));
        let (w, h) = (img.width() as f32, img.height() as f32);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(i);
        let props: Vec<[f32; 4]> = (0..n_props)
            .map(|_| {
                use rand::Rng;
                let (x, y) = (rng.random_range(1.0..w - 8.0), rng.random_range(1.0..h - 8.0));
                [x, y, (x + rng.random_range(8.0..w * 0.6)).min(w), (y + rng.random_range(8.0..h * 0.6)).min(h)]
            })
            .collect();
        (img, ann, props)
    };
    let parts: Vec<_> = (0..20u64).map(make).filter(|p| p.1.objects.iter().any(|o| !o.difficult)).collect();
    crate::trainer::batch::ImageStore::from_parts(parts.iter().map(|p| p.1.clone()).collect(), &parts.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), &parts.iter().map(|p| p.2.clone()).collect::<Vec<_>>())
}

/// The peer's Python: `$OHEM_PEER_PYTHON` (a machine's own PyTorch), else the venv that
/// `scripts/peer-venv.sh` installs under the cache.
fn peer_python() -> Result<std::path::PathBuf> {
    venv_python("OHEM_PEER_PYTHON", "scripts/peer-venv.sh", "--peer")
}

/// What the peer measured per step kind: seconds per iteration and peak memory (MiB).
struct PeerSteps {
    steps: serde_json::Map<String, serde_json::Value>,
    peak_mib: serde_json::Map<String, serde_json::Value>,
}

impl PeerSteps {
    fn secs(&self, kind: &str) -> Option<f64> {
        self.steps.get(kind).and_then(|v| v.as_f64())
    }
    fn peak(&self, kind: &str) -> Option<f64> {
        self.peak_mib.get(kind).and_then(|v| v.as_f64())
    }
}

/// Runs `scripts/bench_peer.py` with the same shapes; returns its `steps` (kind → s/iter) and `peak_mib`.
fn run_peer(python: &std::path::Path, n_props: usize, iters: usize, cfg: &crate::config::TrainConfig, device: Device, shapes: &[(i64, i64)], kinds: &[&str], announce: bool) -> Result<PeerSteps> {
    let v = peer_json(python, n_props, iters, cfg, device, shapes, kinds, false)?;
    if announce {
        println!("  peer: PyTorch {} + torchvision {}, {} threads, roi_pool 7x7, nms", v["torch"].as_str().unwrap_or("?"), v["torchvision"].as_str().unwrap_or("?"), v["threads"]);
        print_settings(&v);
    }
    let steps = v["steps"].as_object().cloned().ok_or_else(|| anyhow::anyhow!("the peer's JSON has no steps"))?;
    Ok(PeerSteps { steps, peak_mib: v["peak_mib"].as_object().cloned().unwrap_or_default() })
}

/// Runs `scripts/bench_peer.py` on `shapes` (one per iteration, the warm-up first), `--profile` when `profile`; its JSON.
#[allow(clippy::too_many_arguments)]
fn peer_json(python: &std::path::Path, n_props: usize, iters: usize, cfg: &crate::config::TrainConfig, device: Device, shapes: &[(i64, i64)], kinds: &[&str], profile: bool) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new(python);
    let backbone = if cfg.model.backbone == crate::model::Backbone::Vgg16 { "vgg16" } else { "small" };
    cmd.arg("scripts/bench_peer.py")
        .args(["--backbone", backbone, "--shapes", &shapes_arg(shapes), "--kinds", &kinds.join(",")])
        .args(["--proposals", &n_props.to_string(), "--iters", &iters.to_string(), "--stride", &cfg.model.feature_stride().to_string(), "--fc-dim", &cfg.model.fc_width().to_string()])
        .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }]);
    if cfg.model.bn_frozen() {
        cmd.arg("--freeze-bn");
    }
    if profile {
        cmd.arg("--profile");
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("running {} scripts/bench_peer.py", python.display()))?;
    if !out.status.success() {
        anyhow::bail!("scripts/bench_peer.py failed (exit {:?})", out.status.code());
    }
    serde_json::from_slice(&out.stdout).context("parsing the peer's JSON")
}

/// Whether libtorch runs with the peer's settings (threads, OpenMP, MKL, oneDNN): "the same", or the lines that differ.
fn print_settings(peer: &serde_json::Value) {
    let Some(theirs) = peer["settings"].as_str() else { return };
    let diff = profile::settings_differences(&profile::torch_settings(), theirs);
    if diff.is_empty() {
        println!("  libtorch settings (torch.__config__.parallel_info(): threads, OpenMP, MKL, oneDNN; mkldnn enabled): identical to the peer's");
    } else {
        println!("  libtorch settings that differ from the peer's (ours | peer's):");
        for (o, p) in diff {
            println!("    {o:<50} | {p}");
        }
    }
}

/// Iteration `it`'s minibatch of the timed steps: images `2·it` and `2·it + 1` of `store`, unflipped.
fn bench_pair(store: &crate::trainer::batch::ImageStore, input: &crate::config::InputConfig, it: usize, device: Device) -> Vec<crate::trainer::batch::Prepared> {
    // a store made by from_parts holds its images: prepare cannot fail on I/O
    (0..2).map(|j| crate::trainer::batch::prepare(store, (2 * it + j) % store.len(), input, false, device).expect("images in memory")).collect()
}

/// `HxW,HxW,...`, as `bench_peer.py --shapes` reads it.
fn shapes_arg(shapes: &[(i64, i64)]) -> String {
    shapes.iter().map(|(h, w)| format!("{h}x{w}")).collect::<Vec<_>>().join(",")
}

/// The padded batch's `(H, W)` of each iteration that [`time_step`] runs (the warm-up first):
/// [`bench_pair`]'s images, rescaled and zero-padded to the larger of each side.
fn batch_shapes(store: &crate::trainer::batch::ImageStore, input: &crate::config::InputConfig, iters: usize, device: Device) -> Vec<(i64, i64)> {
    use crate::trainer::batch;
    (0..iters + 1)
        .map(|it| {
            let s = batch::collate(&bench_pair(store, input, it, device)).size();
            (s[2], s[3])
        })
        .collect()
}

/// The bench header's machine line: the CPU model and its vector extensions, the libtorch version and threads.
pub fn machine_line(device: Device) -> String {
    format!("machine: {} ({}), libtorch {}, {} threads, device {device:?}", crate::rundir::cpu_model().unwrap_or_else(|| "unknown CPU".into()), crate::rundir::cpu_isa(), env!("OHEM_LIBTORCH_VERSION"), tch::get_num_threads())
}

/// `bench samplers --profile`: each kind's step recorded op by op, ours (libtorch's profiler)
/// and, with `peer`, the peer's (torch.profiler) on the same shapes, in one table per kind.
#[allow(clippy::too_many_arguments)]
fn profile_kinds(arms: &[(&str, &str, crate::sampler::SamplerConfig)], base: &TrainConfig, store: &crate::trainer::batch::ImageStore, iters: usize, device: Device, peer: Option<&std::path::Path>, n_props: usize, shapes: &[(i64, i64)]) -> Result<()> {
    let kinds: Vec<&str> = arms.iter().map(|a| a.1).collect();
    let peer = match peer {
        Some(py) => Some(peer_json(py, n_props, iters, base, device, shapes, &kinds, true)?),
        None => None,
    };
    if let Some(v) = &peer {
        println!("  peer: PyTorch {} + torchvision {}, {} threads, torch.profiler (CPU ops)", v["torch"].as_str().unwrap_or("?"), v["torchvision"].as_str().unwrap_or("?"), v["threads"]);
        print_settings(v);
    }
    for (name, key, s) in arms {
        let mut cfg = base.clone();
        cfg.sampler = s.clone();
        let (wall, events) = profile_step(&cfg, store, iters, device)?;
        let ours = profile::breakdown(&events, wall);
        let theirs = match &peer {
            Some(v) => {
                let p = &v["profile"][*key];
                let wall = p["wall_s"].as_f64().ok_or_else(|| anyhow::anyhow!("the peer's profile has no wall_s for {key}"))?;
                Some(profile::breakdown(&profile::peer_events(&p["events"])?, wall))
            }
            None => None,
        };
        print!("{}", profile::table(&format!("{name}: ms per iteration, self time by family, {iters} iterations"), &ours, theirs.as_deref(), iters as f64));
    }
    println!("  families: an op's self time goes to the innermost of it and its enclosing ops or scopes that names a kind of work; the rest by its own name; host code is the wall time outside every op (src/bench/profile.rs)");
    Ok(())
}

/// [`time_step`]'s iterations with each timed step recorded by libtorch's profiler: the steps' wall seconds and events.
fn profile_step(cfg: &TrainConfig, store: &crate::trainer::batch::ImageStore, iters: usize, device: Device) -> Result<(f64, Vec<profile::Event>)> {
    use crate::trainer::train_step;
    let (vs, model) = build_model(cfg, device, synth::CLASSES.len(), None)?;
    let mut opt = Sgd::new(&vs, 0.9, 5e-4);
    let mut sampler = cfg.sampler.build();
    let (mut wall, mut events) = (0.0, Vec::new());
    for it in 0..iters + 1 {
        let pair = bench_pair(store, &cfg.input, it, device);
        if it == 0 {
            train_step(&model, &mut opt, 1e-3, sampler.as_mut(), &pair, cfg)?;
            continue;
        }
        let (s, ev) = profile::record(|| {
            let t = Instant::now();
            train_step(&model, &mut opt, 1e-3, sampler.as_mut(), &pair, cfg)?;
            sync(device);
            Ok(t.elapsed().as_secs_f64())
        })?;
        wall += s;
        events.extend(ev);
    }
    Ok((wall, events))
}

/// Evaluation against training, in one run: trains `config` for `epochs`
/// epochs (evaluating after each), then prints each epoch's training and
/// evaluation seconds with their ratio, and a per-stage breakdown of one more
/// evaluation pass with the final weights.
pub fn epoch(config: &std::path::Path, epochs: usize) -> Result<()> {
    use crate::config::TrainConfig;
    use crate::trainer::{self, detect, load_split, TrainOptions};
    let mut cfg = TrainConfig::load(config, &[format!("train.epochs={epochs}"), "test.eval_every=1".into()])?;
    cfg.train.lr_steps.clear();
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

/// The training config the benches time: the default data's small backbone
/// (batch norm frozen, as the pre-trained trainer runs it), or VGG16 at 600 px
/// (conv1_x and conv2_x frozen), with random weights (no pre-training file).
pub const SMALL: &str = "dataset:\n  root: .\nmodel:\n  fc_dim: 512\n  dropout: 0.0\n";
pub const VGG16: &str = "dataset:\n  root: .\nmodel:\n  backbone: vgg16\n  fc_dim: 4096\n  dropout: 0.0\ninput:\n  scale: 600\n  max_size: 1000\n";

pub fn bench_config(yaml: &str) -> Result<TrainConfig> {
    crate::config::from_value(crate::config::parse_yaml(yaml, "bench")?, "bench")
}


/// Peak resident memory (MiB) of a child process, from `wait4`.
fn run_measured(cmd: &mut std::process::Command) -> Result<(std::process::ExitStatus, f64, String)> {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let out = child.wait_with_output_rusage(pid)?;
    Ok((std::process::ExitStatus::from_raw(out.0), out.1 as f64 / 1024.0, out.2))
}

trait WaitRusage {
    /// Reads the child's output, then reaps it with `wait4`: (raw status, ru_maxrss in KiB, stderr).
    fn wait_with_output_rusage(self, pid: libc::pid_t) -> Result<(i32, i64, String)>;
}

impl WaitRusage for std::process::Child {
    fn wait_with_output_rusage(mut self, pid: libc::pid_t) -> Result<(i32, i64, String)> {
        use std::io::Read;
        let mut err = String::new();
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        if let Some(mut s) = self.stderr.take() {
            s.read_to_string(&mut err)?;
        }
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid, and wait4 writes it for our own child's pid
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r != pid {
            anyhow::bail!("wait4 on the training process failed: {}", std::io::Error::last_os_error());
        }
        Ok((status, ru.ru_maxrss, err))
    }
}

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
