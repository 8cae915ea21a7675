//! `harness bench train`: ms per training iteration split into backbone, RoI
//! pooling, head and backward (+ SGD step), with B = 128 RoIs sampled from the
//! proposals of N = 2 images; then RoI pooling against the slow per-RoI
//! reference, and RoI pooling alone at the trainer's sizes.

use std::time::Instant;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::common::{bench_config, cuda_state, median, peak_rss_mib, sync, SMALL, VGG16};
use crate::model::sgd::Sgd;
use crate::model::{per_roi_losses, roi_pool, Backbone};
use crate::trainer::{build_model, minibatch_loss};

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
    for c in &cases {
        time_case(c, device)?;
    }
    roi_pool_against_reference(device);
    roi_pool_at_trainer_sizes(device);
    Ok(())
}

/// One case's line: ms per iteration in each stage, the first iteration a warm-up, and the peak RSS.
fn time_case(c: &Case, device: Device) -> Result<()> {
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
    Ok(())
}

/// RoI pooling against the slow per-RoI reference, forward + backward, same inputs.
fn roi_pool_against_reference(device: Device) {
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
}

/// RoI pooling alone at the trainer's sizes, forward, backward and forward without a gradient.
fn roi_pool_at_trainer_sizes(device: Device) {
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
}
