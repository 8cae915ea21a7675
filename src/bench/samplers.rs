//! `harness bench samplers`: seconds per training iteration of each sampler
//! through the real `train_step`, same model and data, at each proposal count
//! per image, measured in one run; with `--peer`, the same steps in PyTorch +
//! torchvision and the ratios; and the offline-mining pass of HNM per 100
//! images. With `--profile`, where each kind's step goes, op by op.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use tch::Device;

use super::common::{batch_shapes, bench_config, bench_pair, bench_store, machine_line, measure_peak, median, sync, time_step, PeakMemory, SMALL, VGG16};
use super::peer::{peer_json, peer_python, print_settings, run_peer, shapes_arg, PeerSteps};
use super::profile;
use crate::config::TrainConfig;
use crate::data::synth;
use crate::model::sgd::Sgd;
use crate::sampler::ohem::OhemImpl;
use crate::sampler::{AllConfig, FixedRatioConfig, HnmConfig, Miner, OhemConfig, SamplerConfig};
use crate::trainer::batch::ImageStore;
use crate::trainer::{build_model, FrozenScorer};

/// Seconds per training iteration of each sampler through the real
/// `train_step`, same model and data, at each proposal count per image,
/// measured in one run; with `peer`, the same steps in PyTorch + torchvision
/// (`scripts/bench_peer.py`) and the ratios; and the offline-mining pass of
/// HNM per 100 images.
///
/// `vgg16`: the VGG16 backbone (fc 4096, random weights) at 600 px instead of
/// the small one, and without the all-RoIs step.
///
/// `faster`: Faster R-CNN (`model.detector: faster_rcnn`): the RPN on the same backbone
/// proposes each image's RoIs in training, and the peer is torchvision's
/// `RegionProposalNetwork` in front of the same head. How many proposals survive the RPN's NMS
/// depends on each side's weights and images, so at each of `proposal_counts` the count is
/// pinned: the top `count` by objectness before and after an NMS of 1.0, which suppresses none
/// (the same code runs, the IoUs included), so that both sides' heads see the same shapes. A
/// last pass runs the default `model.rpn` as trained (NMS 0.7), each side's RPN deciding its
/// count, which is printed beside. The HNM, bookkeeping and TensorBoard lines, which time
/// Fast R-CNN's pieces, are left out.
#[allow(clippy::too_many_arguments)]
pub fn samplers(iters: usize, proposal_counts: &[usize], peer: bool, vgg16: bool, rounds: usize, fold_ab: bool, profile: bool, faster: bool) -> Result<()> {
    let device = Device::cuda_if_available();
    let base = bench_config(if vgg16 { VGG16 } else { SMALL })?;
    // (the random proposals per image of the store, the config timed)
    let passes: Vec<(usize, TrainConfig)> = if faster {
        let mut faster = base.clone();
        faster.model.detector = crate::model::Detector::FasterRcnn;
        let pinned = |n: usize| {
            let mut c = faster.clone();
            let n = n as i64;
            c.model.rpn = Some(crate::proposals::rpn::RpnConfig { pre_nms_top_n_train: n, post_nms_top_n_train: n, nms: 1.0, ..Default::default() });
            (FASTER_STORE_PROPOSALS, c)
        };
        proposal_counts.iter().map(|&n| pinned(n)).chain([(FASTER_STORE_PROPOSALS, faster.clone())]).collect()
    } else {
        proposal_counts.iter().map(|&n| (n, base.clone())).collect()
    };
    let arms = sampler_arms(vgg16);
    let kinds: Vec<&str> = arms.iter().map(|a| a.1).collect();
    let peer_python = if peer { Some(peer_python()?) } else { None };
    let rounds = rounds.max(1);
    println!("{}", machine_line(device));
    let mut store_for_mining = None;
    for (n_props, base) in &passes {
        let (n_props, base) = (*n_props, base);
        let store = bench_store(n_props);
        let shapes = batch_shapes(&store, &base.input, iters, device);
        let setup = Setup { base, store: &store, shapes: &shapes, n_props, iters, device };
        print_header(&setup, rounds, peer, profile);
        if profile {
            profile_kinds(&arms, base, &store, iters, device, peer_python.as_deref(), n_props, &shapes)?;
            continue;
        }
        let timed = time_rounds(&setup, &arms, &kinds, rounds, fold_ab, peer_python.as_deref())?;
        let (secs, peer_secs) = print_kinds(&arms, &timed, rounds);
        if fold_ab {
            print_folded(&arms, &timed, &secs);
        }
        print_ratios(&secs, &peer_secs, arms.len());
        store_for_mining = Some((store, n_props));
    }

    if let (Some((store, n_props)), false, false, false) = (store_for_mining, vgg16, profile, faster) {
        time_mining(&base, &store, n_props, device)?;
        time_class_bookkeeping(&base, &store, iters, device)?;
        time_tensorboard(&base, &store, iters, device)?;
    }
    Ok(())
}

/// The random proposals per image of the store that a Faster R-CNN bench draws: its step uses
/// the RPN's instead, and the peer is given as many (unused there too).
const FASTER_STORE_PROPOSALS: usize = 10;

/// The step kinds `bench samplers` times: (name printed, the peer's key, the
/// sampler); VGG16 without the all-RoIs step.
fn sampler_arms(vgg16: bool) -> Vec<(&'static str, &'static str, SamplerConfig)> {
    let mut arms: Vec<(&str, &str, SamplerConfig)> = vec![
        ("fixed-ratio (FRCN)", "fixed_ratio", SamplerConfig::FixedRatio(FixedRatioConfig::default())),
        ("OHEM read-only", "ohem", SamplerConfig::Ohem(OhemConfig::default())),
        ("OHEM masked", "ohem_masked", SamplerConfig::Ohem(OhemConfig { implementation: OhemImpl::Masked, ..Default::default() })),
        ("all RoIs (B=2048)", "all", SamplerConfig::All(AllConfig::default())),
    ];
    if vgg16 {
        arms.pop();
    }
    arms
}

/// What every kind is timed on at one proposal count: the base config, the
/// images with their proposals, the padded batch shapes they give, the
/// iterations and the device.
struct Setup<'a> {
    base: &'a TrainConfig,
    store: &'a ImageStore,
    shapes: &'a [(i64, i64)],
    n_props: usize,
    iters: usize,
    device: Device,
}

/// The header of one proposal count: the model, the threads and rounds, and the batch shapes.
fn print_header(s: &Setup, rounds: usize, peer: bool, profile: bool) {
    let (base, n_props, device) = (s.base, s.n_props, s.device);
    let proposals = match base.model.rpn_config() {
        None => format!("{n_props} proposals per image"),
        Some(r) if r.nms >= 1.0 => format!(
            "Faster R-CNN: the RPN's top {} proposals per image by objectness (anchors {:?} px x ratios {:?}; NMS {}, which suppresses none, so that both sides see {} per image, the ground truth added), {} anchors sampled per image",
            r.post_nms_top_n_train, r.anchor_sizes, r.aspect_ratios, r.nms, r.post_nms_top_n_train, r.batch_per_image
        ),
        Some(r) => format!(
            "Faster R-CNN as trained: the RPN's proposals (anchors {:?} px x ratios {:?}, top {} before and {} after NMS {} in training; how many survive depends on each side's weights and images, so the counts differ), {} anchors sampled per image",
            r.anchor_sizes, r.aspect_ratios, r.pre_nms_top_n_train, r.post_nms_top_n_train, r.nms, r.batch_per_image
        ),
    };
    println!(
        "{} per training iteration, {:?} backbone (fc {}, stride {}, batch norm {}), N = 2 images, {proposals}, device {device:?}, {} libtorch threads{}:",
        if profile { "where the time goes" } else { "seconds" },
        base.model.backbone,
        base.model.fc_width(),
        base.model.feature_stride(),
        if base.model.backbone == crate::model::Backbone::Vgg16 { "none" } else if base.model.bn_frozen() { "frozen" } else { "trained" },
        tch::get_num_threads(),
        if rounds > 1 && !profile { format!(", medians of {rounds} rounds{}", if peer { " (ours and the peer in alternating order)" } else { "" }) } else { String::new() }
    );
    println!("  padded batches [2, 3, H, W], HxW per iteration (the warm-up first), the same for every kind{}: {}", if peer { " and for the peer" } else { "" }, shapes_arg(s.shapes).replace(',', " "));
}

/// The timings of every round at one proposal count.
struct Rounds {
    /// Per kind, per round: (s/iter, RoIs backpropagated, peak memory, RoIs per image before sampling).
    ours: Vec<Vec<(f64, f64, PeakMemory, f64)>>,
    /// `--fold-bn`: the same kinds with model.fold_bn on, in the same rounds (s/iter per round).
    folded: Vec<Vec<f64>>,
    /// The peer's, per round.
    peers: Vec<PeerSteps>,
    /// Faster R-CNN: the RoIs per image come from each side's RPN, and are printed.
    faster: bool,
}

/// Times every kind in each of `rounds` rounds, the peer first in odd rounds
/// and last in even ones, and with `fold_ab` the folded model first in odd rounds.
fn time_rounds(s: &Setup, arms: &[(&str, &str, SamplerConfig)], kinds: &[&str], rounds: usize, fold_ab: bool, peer_python: Option<&Path>) -> Result<Rounds> {
    let (base, store, iters, device, n_props, shapes) = (s.base, s.store, s.iters, s.device, s.n_props, s.shapes);
    let mut ours: Vec<Vec<(f64, f64, PeakMemory, f64)>> = vec![Vec::new(); arms.len()];
    let mut folded: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    let mut peers: Vec<PeerSteps> = Vec::new();
    for round in 0..rounds {
        let peer_first = round % 2 == 0;
        if let (Some(py), true) = (&peer_python, peer_first) {
            peers.push(run_peer(py, n_props, iters, base, device, shapes, kinds, peers.is_empty())?);
        }
        for (k, (_, _, s)) in arms.iter().enumerate() {
            let mut cfg = base.clone();
            cfg.sampler = s.clone();
            let time_folded = || -> Result<f64> {
                let mut c = cfg.clone();
                c.model.fold_bn = true;
                Ok(time_step(&c, store, iters, device)?.0)
            };
            // folded first in odd rounds
            if fold_ab && round % 2 == 1 {
                folded[k].push(time_folded()?);
            }
            let (timed, mem) = measure_peak(device, || time_step(&cfg, store, iters, device));
            let (s, rois, per_image) = timed?;
            ours[k].push((s, rois, mem, per_image));
            if fold_ab && round % 2 == 0 {
                folded[k].push(time_folded()?);
            }
        }
        if let (Some(py), false) = (&peer_python, peer_first) {
            peers.push(run_peer(py, n_props, iters, base, device, shapes, kinds, peers.is_empty())?);
        }
    }
    Ok(Rounds { ours, folded, peers, faster: !base.model.detector.is_fast_rcnn() })
}

/// One line per kind: the median s/iter over rounds, the RoIs backpropagated,
/// the memory, and the peer's beside it when it ran every round; returns the
/// medians, ours and the peer's.
fn print_kinds(arms: &[(&str, &str, SamplerConfig)], t: &Rounds, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let (ours, peers) = (&t.ours, &t.peers);
    let mut secs = Vec::new();
    let mut peer_secs = Vec::new();
    for (k, (name, key, _)) in arms.iter().enumerate() {
        let s = median(&ours[k].iter().map(|o| o.0).collect::<Vec<_>>());
        let rois = ours[k][0].1;
        let mem = ours[k].iter().map(|o| o.2).last().expect("one round at least");
        // Faster R-CNN: how many RoIs each side's RPN left per image (proposals and ground truth)
        let seen = |ours_per_image: f64, peer: Option<f64>| -> String {
            match (t.faster, peer) {
                (false, _) => String::new(),
                (true, Some(p)) => format!(", {ours_per_image:.0} RoIs/image (peer {p:.0})"),
                (true, None) => format!(", {ours_per_image:.0} RoIs/image"),
            }
        };
        let ours_per_image = median(&ours[k].iter().map(|o| o.3).collect::<Vec<_>>());
        let peer_s: Vec<f64> = peers.iter().filter_map(|p| p.secs(key)).collect();
        if peer_s.len() == rounds {
            let p = median(&peer_s);
            let peer_mem = peers.last().and_then(|ps| ps.peak(key)).map(|m| format!(", {m:.0} MiB")).unwrap_or_default();
            // the ratio of each round, ours and the peer's of the same round
            let ratios: Vec<f64> = ours[k].iter().zip(&peer_s).map(|(o, p)| o.0 / p).collect();
            let range = if rounds > 1 { format!(" (rounds {:.2}-{:.2})", ratios.iter().cloned().fold(f64::INFINITY, f64::min), ratios.iter().cloned().fold(0.0, f64::max)) } else { String::new() };
            let peer_per_image: Vec<f64> = peers.iter().filter_map(|p| p.rois_per_image(key)).collect();
            let peer_per_image = (!peer_per_image.is_empty()).then(|| median(&peer_per_image));
            println!("  {name:<20} {s:>7.3} s/iter ({rois:>4.0} RoIs backpropagated{}), {mem}   peer {p:>7.3} s/iter{peer_mem}   ours / peer {:.2}{range}", seen(ours_per_image, peer_per_image), s / p);
            peer_secs.push(p);
        } else {
            println!("  {name:<20} {s:>7.3} s/iter ({rois:>4.0} RoIs backpropagated{}), {mem}", seen(ours_per_image, None));
        }
        secs.push(s);
    }
    (secs, peer_secs)
}

/// `--fold-bn`: each kind's folded s/iter and folded / unfolded, with the range over rounds.
fn print_folded(arms: &[(&str, &str, SamplerConfig)], t: &Rounds, secs: &[f64]) {
    let (ours, folded) = (&t.ours, &t.folded);
    println!("  batch norm folded (model.fold_bn), the same rounds, folded / unfolded:");
    for (k, (name, _, _)) in arms.iter().enumerate() {
        let f = median(&folded[k]);
        let ratios: Vec<f64> = folded[k].iter().zip(&ours[k]).map(|(f, o)| f / o.0).collect();
        let (lo, hi) = (ratios.iter().cloned().fold(f64::INFINITY, f64::min), ratios.iter().cloned().fold(0.0, f64::max));
        println!("    {name:<20} {f:>7.3} s/iter   {:.3} (rounds {lo:.3}-{hi:.3})", f / secs[k]);
    }
}

/// OHEM read-only / fixed-ratio and masked / read-only, the peer's beside them when it ran every kind.
fn print_ratios(secs: &[f64], peer_secs: &[f64], n_arms: usize) {
    print!("  ratio OHEM read-only / fixed-ratio: {:.2}x", secs[1] / secs[0]);
    if peer_secs.len() == n_arms {
        print!(" (peer {:.2}x)", peer_secs[1] / peer_secs[0]);
    }
    print!("\n  ratio OHEM masked / OHEM read-only: {:.2}x", secs[2] / secs[1]);
    if peer_secs.len() == n_arms {
        print!(" (peer {:.2}x)", peer_secs[2] / peer_secs[1]);
    }
    println!(" (the paper reports about 2x for VGG16 at N=2, B=128)");
}

/// HNM's offline-mining pass (a frozen model scoring every proposal) over `store`, per 100 images.
fn time_mining(base: &TrainConfig, store: &ImageStore, n_props: usize, device: Device) -> Result<()> {
    let mut cfg = base.clone();
    cfg.sampler = SamplerConfig::Hnm(HnmConfig::default());
    let (_vs, model) = build_model(&cfg, device, synth::CLASSES.len(), None)?;
    let t = Instant::now();
    let scores = FrozenScorer::new(&model, store, &cfg, device).score_training_set()?;
    sync(device);
    let s = t.elapsed().as_secs_f64();
    println!("HNM mining pass (frozen model, every proposal): {:.1} s per 100 images (measured over {} images, {n_props} proposals each)", s * 100.0 / scores.len() as f64, scores.len());
    Ok(())
}

/// The per-class bookkeeping's cost (`classes.csv`, every [`crate::trainer::CLASS_EVERY`]
/// iterations): fixed ratio's step with and without it (its own read-only forward of the head
/// over all RoIs; OHEM's reuses the losses it ranked by), alternating step by step on one model
/// so that drift lands on both, and its share of training time at the trainer's cadence.
fn time_class_bookkeeping(base: &TrainConfig, store: &ImageStore, iters: usize, device: Device) -> Result<()> {
    use crate::trainer::{train_step_tallied, CLASS_EVERY};
    let mut cfg = base.clone();
    cfg.sampler = SamplerConfig::FixedRatio(Default::default());
    let (vs, model) = build_model(&cfg, device, synth::CLASSES.len(), None)?;
    let mut opt = Sgd::new(&vs, 0.9, 5e-4);
    let mut sampler = cfg.sampler.build();
    let (mut plain, mut tallied) = (Vec::new(), Vec::new());
    for it in 0..2 * iters.max(2) + 2 {
        let pair = bench_pair(store, &cfg.input, it / 2, device);
        let tally = it % 2 == 1;
        let t = Instant::now();
        train_step_tallied(&model, &mut opt, 1e-3, sampler.as_mut(), &pair, &cfg, tally)?;
        sync(device);
        if it >= 2 {
            if tally { tallied.push(t.elapsed().as_secs_f64()) } else { plain.push(t.elapsed().as_secs_f64()) }
        }
    }
    let (p, q) = (super::common::median(&plain), super::common::median(&tallied));
    let share = (q - p).max(0.0) / (CLASS_EVERY as f64 * p);
    println!("per-class bookkeeping (classes.csv), fixed ratio's read-only forward over all RoIs: a step with it {:.1} ms, without {:.1} ms (medians of {} each, alternating); at one step in {CLASS_EVERY}, {:.2}% of training time (OHEM reuses its ranking losses: no extra forward)", q * 1e3, p * 1e3, plain.len(), 100.0 * share);
    Ok(())
}

/// The TensorBoard scalars' cost: fixed ratio's steps as the trainer runs them (the per-class
/// bookkeeping every [`crate::trainer::CLASS_EVERY`]), each followed by the trainer's writes of
/// its scalars to an event file ([`crate::trainer::tensorboard::Events`], flushed every step),
/// the two timed apart; the writes' share of a step.
fn time_tensorboard(base: &TrainConfig, store: &ImageStore, iters: usize, device: Device) -> Result<()> {
    use crate::trainer::{tensorboard::Events, train_step_tallied, CLASS_EVERY};
    let mut cfg = base.clone();
    cfg.sampler = SamplerConfig::FixedRatio(Default::default());
    let (vs, model) = build_model(&cfg, device, synth::CLASSES.len(), None)?;
    let mut opt = Sgd::new(&vs, 0.9, 5e-4);
    let mut sampler = cfg.sampler.build();
    let dir = tempfile::tempdir()?;
    let mut tb = Events::open(dir.path(), 1)?;
    let names: Vec<String> = std::iter::once("background").chain(synth::CLASSES.iter().copied()).map(str::to_string).collect();
    let (mut steps, mut writes) = (Vec::new(), Vec::new());
    let n = (2 * iters).max(CLASS_EVERY + 1);
    for it in 0..n {
        let pair = bench_pair(store, &cfg.input, it, device);
        let t = Instant::now();
        let out = train_step_tallied(&model, &mut opt, 1e-3, sampler.as_mut(), &pair, &cfg, it % CLASS_EVERY == 0)?;
        sync(device);
        let step_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        tb.iteration(it as i64 + 1, &out, 1e-3, step_s)?;
        if let Some(c) = &out.classes {
            tb.classes(it as i64 + 1, c, &names)?;
        }
        tb.flush()?;
        let write_s = t.elapsed().as_secs_f64();
        if it > 0 {
            steps.push(step_s);
            writes.push(write_s);
        }
    }
    let (s, w) = (super::common::median(&steps), writes.iter().sum::<f64>() / writes.len() as f64);
    println!("TensorBoard scalars (every iteration, flushed; per class every {CLASS_EVERY}): {:.1} µs per iteration on average against a {:.1} ms step (median of {}): {:.3}% of training time", w * 1e6, s * 1e3, steps.len(), 100.0 * w / s);
    Ok(())
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
